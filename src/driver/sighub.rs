//! The process-wide signal hub (DESIGN.md, "The OS edges").
//!
//! One `sigaction` handler for every signal some subscriber asked for. In
//! signal context it only does async-signal-safe work: it bumps the
//! signal's counter, writes 1 to the eventfd of every subscriber that asked
//! for that signal, and calls the handler that was installed before it (if
//! that was a function, not `SIG_DFL` / `SIG_IGN`). Subscribers (a loop's
//! signal handlers, the Runner's Ctrl-C watch) watch their eventfd with the
//! loop's own fd watchers and compare the counters with what they saw last:
//! a burst of signals is seen at least once, and a signal that comes after
//! a subscriber looked always makes its eventfd readable again, so none is
//! missed after the last one.
//!
//! Not `signalfd`: it needs the signal blocked in every thread, and the
//! blocked mask is inherited by child processes.
//!
//! Subscribers live in a fixed table of slots the handler reads without a
//! lock. A slot's eventfd is closed only after the slot is cleared and no
//! handler is inside it (`busy`), so the handler never writes to a closed
//! or reused fd number. The last subscriber of a signal leaving puts back
//! the disposition the hub replaced.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Signal numbers are 1..NSIG on Linux (64 signals).
pub(crate) const NSIG: usize = 65;
/// At most this many subscribers (loops with signal handlers, runners) at once.
const SLOTS: usize = 256;

struct Slot {
    efd: AtomicI32,
    /// Bit `sig - 1` set: this slot wants `sig`.
    mask: AtomicU64,
    /// Handlers inside this slot right now.
    busy: AtomicU32,
}

#[allow(clippy::declare_interior_mutable_const)]
const SLOT: Slot = Slot {
    efd: AtomicI32::new(-1),
    mask: AtomicU64::new(0),
    busy: AtomicU32::new(0),
};
static TABLE: [Slot; SLOTS] = [SLOT; SLOTS];
/// Slots `0..HIGH` may be in use (the handler looks at no more).
static HIGH: AtomicUsize = AtomicUsize::new(0);

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
/// Signals received by the hub's handler, per signal number.
static COUNTS: [AtomicU64; NSIG] = [ZERO; NSIG];
#[allow(clippy::declare_interior_mutable_const)]
const NO_FN: AtomicUsize = AtomicUsize::new(0);
/// The function installed before the hub's handler (0: none to chain to).
static CHAIN: [AtomicUsize; NSIG] = [NO_FN; NSIG];
#[allow(clippy::declare_interior_mutable_const)]
const NO: AtomicBool = AtomicBool::new(false);
/// Whether [`CHAIN`]'s function takes `SA_SIGINFO` arguments.
static CHAIN_INFO: [AtomicBool; NSIG] = [NO; NSIG];
/// The next signal takes the default action ([`default_action_next`]).
static DEFAULT_NEXT: [AtomicBool; NSIG] = [NO; NSIG];

/// What only non-signal code touches, under a lock.
struct State {
    used: [bool; SLOTS],
    /// Subscribers per signal.
    subs: [u32; NSIG],
    /// The disposition the hub replaced, per signal it handles.
    saved: [Option<libc::sigaction>; NSIG],
}

// SAFETY: `libc::sigaction` is plain data (a function address, flags and a
// mask); it is only moved between threads under the mutex.
unsafe impl Send for State {}

static STATE: Mutex<State> = Mutex::new(State {
    used: [false; SLOTS],
    subs: [0; NSIG],
    saved: [None; NSIG],
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

fn bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

type InfoFn = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
type PlainFn = extern "C" fn(libc::c_int);

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // Only async-signal-safe work: atomics, write(2), sigaction(2), raise(3).
    // SAFETY: errno is thread-local; saved and restored around our calls.
    let errno = unsafe { *libc::__errno_location() };
    let s = sig as usize;
    if s == 0 || s >= NSIG {
        return;
    }
    if DEFAULT_NEXT[s].load(Ordering::SeqCst) {
        // Back to the default action, which this very signal then takes: it
        // is blocked while its handler runs, so the raise waits until then.
        // SAFETY: a zeroed sigaction with SIG_DFL is valid.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = libc::SIG_DFL;
        // SAFETY: valid sigaction struct; sigaction and raise are async-signal-safe.
        unsafe {
            libc::sigaction(sig, &sa, std::ptr::null_mut());
            libc::raise(sig);
        }
    } else {
        COUNTS[s].fetch_add(1, Ordering::SeqCst);
        let b = bit(sig);
        let high = HIGH.load(Ordering::SeqCst).min(SLOTS);
        for slot in &TABLE[..high] {
            if slot.mask.load(Ordering::SeqCst) & b == 0 {
                continue;
            }
            slot.busy.fetch_add(1, Ordering::SeqCst);
            let fd = slot.efd.load(Ordering::SeqCst);
            if fd >= 0 {
                let one: u64 = 1;
                // SAFETY: writes 8 bytes from a valid u64 to the slot's
                // eventfd, which stays open while `busy` is raised.
                unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
            }
            slot.busy.fetch_sub(1, Ordering::SeqCst);
        }
        let f = CHAIN[s].load(Ordering::SeqCst);
        if f != 0 {
            if CHAIN_INFO[s].load(Ordering::SeqCst) {
                // SAFETY: `f` is the SA_SIGINFO handler that was installed
                // for this signal before ours; it gets what the kernel gave us.
                let f: InfoFn = unsafe { std::mem::transmute::<usize, InfoFn>(f) };
                f(sig, info, ctx);
            } else {
                // SAFETY: `f` is the plain handler installed before ours.
                let f: PlainFn = unsafe { std::mem::transmute::<usize, PlainFn>(f) };
                f(sig);
            }
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn handler_addr() -> libc::sighandler_t {
    on_signal as *const () as libc::sighandler_t
}

/// Why `sig` cannot be handled through the hub, if it cannot.
pub(crate) fn check_signal(sig: i32) -> Result<(), String> {
    if sig < 1 || sig as usize >= NSIG {
        return Err(format!(
            "signal number {sig} out of range (1..{})",
            NSIG - 1
        ));
    }
    match sig {
        libc::SIGKILL | libc::SIGSTOP => Err(format!("signal {sig} cannot be caught")),
        // A handler that only counts and returns would re-run the faulting
        // instruction forever.
        libc::SIGSEGV | libc::SIGBUS | libc::SIGFPE | libc::SIGILL => Err(format!(
            "signal {sig} is a synchronous fault signal; it cannot be handled by a loop"
        )),
        // glibc keeps the signals below SIGRTMIN for its threads.
        s if s > libc::SIGSYS && s < libc::SIGRTMIN() => Err(format!(
            "signal {sig} is reserved by the C library (below SIGRTMIN)"
        )),
        _ => Ok(()),
    }
}

/// How many times the hub's handler ran for `sig` in this process.
pub(crate) fn count(sig: i32) -> u64 {
    COUNTS[sig as usize].load(Ordering::SeqCst)
}

/// From now on the next `sig` takes its default action at once (the
/// Runner's second Ctrl-C), until the hub stops handling `sig` or
/// [`clear_default_action_next`] is called.
pub(crate) fn default_action_next(sig: i32) {
    DEFAULT_NEXT[sig as usize].store(true, Ordering::SeqCst);
}

/// Undoes [`default_action_next`].
pub(crate) fn clear_default_action_next(sig: i32) {
    DEFAULT_NEXT[sig as usize].store(false, Ordering::SeqCst);
}

fn current_action(sig: i32) -> io::Result<libc::sigaction> {
    // SAFETY: zeroed sigaction is valid output storage.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only queries.
    if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(old)
}

/// True if `sig` has its default action and the hub does not handle it
/// (the Runner installs its Ctrl-C handling only then, as asyncio does).
pub(crate) fn is_default(sig: i32) -> bool {
    let st = state();
    st.subs[sig as usize] == 0 && current_action(sig).is_ok_and(|a| a.sa_sigaction == libc::SIG_DFL)
}

/// One subscriber: a slot of the hub's table and its eventfd. Dropping it
/// unsubscribes from every signal and closes the eventfd.
pub(crate) struct Subscription {
    slot: usize,
    efd: OwnedFd,
}

impl Subscription {
    /// A new subscriber, wanting no signal yet.
    ///
    /// # Errors
    ///
    /// `eventfd(2)` errors; an error if every slot is taken.
    pub(crate) fn new() -> io::Result<Subscription> {
        // SAFETY: plain syscall; checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let efd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut st = state();
        let Some(slot) = st.used.iter().position(|u| !u) else {
            return Err(io::Error::other(format!(
                "more than {SLOTS} loops handle signals at once"
            )));
        };
        st.used[slot] = true;
        let t = &TABLE[slot];
        t.mask.store(0, Ordering::SeqCst);
        t.efd.store(raw, Ordering::SeqCst);
        HIGH.fetch_max(slot + 1, Ordering::SeqCst);
        Ok(Subscription { slot, efd })
    }

    /// The eventfd that becomes readable when a wanted signal comes.
    pub(crate) fn fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    /// Empties the eventfd (before the counters are looked at).
    pub(crate) fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from our non-blocking eventfd.
        unsafe { libc::read(self.efd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    /// Wants `sig` from now on; the first subscriber of a signal installs
    /// the hub's handler for it (keeping the old disposition to chain to
    /// and to put back).
    ///
    /// # Errors
    ///
    /// `sigaction(2)` errors (the caller checked the number already).
    pub(crate) fn add(&self, sig: i32) -> io::Result<()> {
        let s = sig as usize;
        let mut st = state();
        let t = &TABLE[self.slot];
        if t.mask.load(Ordering::SeqCst) & bit(sig) != 0 {
            return Ok(());
        }
        if st.subs[s] == 0 {
            let old = current_action(sig)?;
            let f = old.sa_sigaction;
            let chain = if f == libc::SIG_DFL || f == libc::SIG_IGN || f == handler_addr() {
                0
            } else {
                f
            };
            CHAIN_INFO[s].store(old.sa_flags & libc::SA_SIGINFO != 0, Ordering::SeqCst);
            CHAIN[s].store(chain, Ordering::SeqCst);
            DEFAULT_NEXT[s].store(false, Ordering::SeqCst);
            // SAFETY: zeroed sigaction is valid; the mask is emptied below.
            let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
            sa.sa_sigaction = handler_addr();
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
            // SAFETY: valid sigset storage; valid sigaction struct; the
            // handler does only async-signal-safe work.
            let r = unsafe {
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut())
            };
            if r != 0 {
                CHAIN[s].store(0, Ordering::SeqCst);
                return Err(io::Error::last_os_error());
            }
            st.saved[s] = Some(old);
        }
        st.subs[s] += 1;
        t.mask.fetch_or(bit(sig), Ordering::SeqCst);
        Ok(())
    }

    /// No longer wants `sig`; true if it did. The last subscriber of a
    /// signal puts back the disposition the hub replaced.
    pub(crate) fn remove(&self, sig: i32) -> bool {
        let mut st = state();
        self.remove_locked(&mut st, sig)
    }

    fn remove_locked(&self, st: &mut State, sig: i32) -> bool {
        let s = sig as usize;
        let t = &TABLE[self.slot];
        if t.mask.fetch_and(!bit(sig), Ordering::SeqCst) & bit(sig) == 0 {
            return false;
        }
        st.subs[s] -= 1;
        if st.subs[s] == 0 {
            if let Some(old) = st.saved[s].take() {
                // Put back what was there, unless someone replaced the hub's
                // handler meanwhile (then theirs stays).
                let ours = current_action(sig).is_ok_and(|a| a.sa_sigaction == handler_addr());
                if ours {
                    // SAFETY: restores the disposition saved at install.
                    unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
                }
            }
            CHAIN[s].store(0, Ordering::SeqCst);
            DEFAULT_NEXT[s].store(false, Ordering::SeqCst);
        }
        true
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut st = state();
        for sig in 1..NSIG as i32 {
            self.remove_locked(&mut st, sig);
        }
        let t = &TABLE[self.slot];
        t.efd.store(-1, Ordering::SeqCst);
        // A handler that read the fd before the store is still writing to
        // it: the fd closes (with `self.efd`) only after it left.
        while t.busy.load(Ordering::SeqCst) != 0 {
            std::hint::spin_loop();
        }
        st.used[self.slot] = false;
    }
}
