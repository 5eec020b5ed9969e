//! The few raw syscalls the layers above need that no dependency wraps:
//! `getnameinfo`, and a SIGINT handler that only writes to an eventfd.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use socket2::SockAddr;

/// `getnameinfo(3)`: the host and service names of an address.
pub(crate) fn getnameinfo(addr: &SockAddr, flags: i32) -> io::Result<(String, String)> {
    let mut host = [0 as libc::c_char; 1025];
    let mut serv = [0 as libc::c_char; 32];
    // SAFETY: the address pointer/length come from a valid SockAddr, and the
    // output buffers are writable for the lengths passed.
    let r = unsafe {
        libc::getnameinfo(
            addr.as_ptr().cast(),
            addr.len(),
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            serv.as_mut_ptr(),
            serv.len() as libc::socklen_t,
            flags,
        )
    };
    if r != 0 {
        // SAFETY: gai_strerror returns a static C string for any code.
        let msg = unsafe { CStr::from_ptr(libc::gai_strerror(r)) };
        return Err(io::Error::other(format!(
            "getnameinfo: {}",
            msg.to_string_lossy()
        )));
    }
    // SAFETY: getnameinfo NUL-terminated both buffers on success.
    let h = unsafe { CStr::from_ptr(host.as_ptr()) };
    // SAFETY: as above.
    let s = unsafe { CStr::from_ptr(serv.as_ptr()) };
    Ok((
        h.to_string_lossy().into_owned(),
        s.to_string_lossy().into_owned(),
    ))
}

/// The eventfd the SIGINT handler writes to (-1: none installed).
static SIGINT_FD: AtomicI32 = AtomicI32::new(-1);
/// SIGINTs received since the handler was installed.
static SIGINT_COUNT: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_sigint(_: libc::c_int) {
    // Only async-signal-safe work: an atomic add and a write(2).
    SIGINT_COUNT.fetch_add(1, Ordering::SeqCst);
    let fd = SIGINT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an eventfd.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// An installed SIGINT handler; dropping it restores the previous one.
pub(crate) struct SigintGuard {
    old: libc::sigaction,
    fd: OwnedFd,
}

impl SigintGuard {
    /// Installs the handler; `None` if one is installed already (a nested
    /// runner) or the process does not let us.
    pub(crate) fn install() -> Option<SigintGuard> {
        // SAFETY: plain syscall; checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return None;
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(efd) };
        if SIGINT_FD
            .compare_exchange(-1, efd, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return None;
        }
        SIGINT_COUNT.store(0, Ordering::SeqCst);
        // SAFETY: sigaction is plain data; zeroed is a valid empty mask.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_sigint as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        // SAFETY: zeroed sigaction is valid output storage.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: valid sigaction structs; the handler is async-signal-safe.
        if unsafe { libc::sigaction(libc::SIGINT, &sa, &mut old) } != 0 {
            SIGINT_FD.store(-1, Ordering::SeqCst);
            return None;
        }
        if old.sa_sigaction != libc::SIG_DFL {
            // Someone else handles SIGINT: leave it to them (asyncio does too).
            // SAFETY: puts back the handler we just replaced.
            unsafe { libc::sigaction(libc::SIGINT, &old, std::ptr::null_mut()) };
            SIGINT_FD.store(-1, Ordering::SeqCst);
            return None;
        }
        Some(SigintGuard { old, fd })
    }

    /// The eventfd that becomes readable on each SIGINT.
    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// SIGINTs seen so far (the eventfd is drained too).
    pub(crate) fn take_count(&self) -> u32 {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from our non-blocking eventfd.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        SIGINT_COUNT.load(Ordering::SeqCst)
    }

    /// After the first SIGINT: the next one gets the default action
    /// (terminate at once), as asyncio's second Ctrl-C interrupts at once.
    pub(crate) fn restore_default(&self) {
        // SAFETY: zeroed sigaction with SIG_DFL is valid.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = libc::SIG_DFL;
        // SAFETY: valid sigaction struct.
        unsafe { libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut()) };
    }
}

impl Drop for SigintGuard {
    fn drop(&mut self) {
        // SAFETY: restores the handler saved at install.
        unsafe { libc::sigaction(libc::SIGINT, &self.old, std::ptr::null_mut()) };
        SIGINT_FD.store(-1, Ordering::SeqCst);
    }
}

/// True on the process's main thread (its thread id is the process id).
pub(crate) fn on_main_thread() -> bool {
    // SAFETY: plain syscalls without arguments.
    unsafe { libc::gettid() == libc::getpid() }
}
