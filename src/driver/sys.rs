//! The few raw syscalls the layers above need that no dependency wraps:
//! `getnameinfo` (signals: `sighub.rs`).

use std::ffi::CStr;
use std::io;

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

/// True on the process's main thread (its thread id is the process id).
pub(crate) fn on_main_thread() -> bool {
    // SAFETY: plain syscalls without arguments.
    unsafe { libc::gettid() == libc::getpid() }
}
