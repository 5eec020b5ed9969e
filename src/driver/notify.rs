//! Who hears of a completion: the cross-thread wake-up (`Notifier`), the
//! waiter an op has, and the typed event a handler is told.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Waker;

/// Wakes a driver blocked in its turn from any thread (an eventfd).
#[derive(Debug)]
pub(crate) struct Notifier {
    pub(super) fd: OwnedFd,
    pending: AtomicBool,
}

impl Notifier {
    pub(super) fn new() -> io::Result<Arc<Notifier>> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(Notifier {
            // SAFETY: eventfd returned a fresh descriptor we now own.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            pending: AtomicBool::new(false),
        }))
    }

    /// Makes the next (or current) turn return. Cheap when already pending.
    pub(crate) fn notify(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
            unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Called by the loop before it drains its remote queue.
    /// SeqCst with the pusher's `has_items` store and `pending` swap: either
    /// the loop then sees the item, or the pusher sees the flag cleared and
    /// writes the eventfd.
    pub(crate) fn clear(&self) {
        if self.pending.load(Ordering::Acquire) {
            self.pending.swap(false, Ordering::SeqCst);
        }
    }
}

/// Names one op for its handler: the slab key in the low 32 bits and the
/// slot's generation in the high ones. A slab key is reused as soon as an
/// op is freed, so a completion still queued for a freed op (a receive the
/// transport gave up in the same turn) must never match the op that took
/// its key next (the transport's send): the generation tells them apart.
pub(crate) type Token = u64;

pub(super) fn token(key: usize, generation: u32) -> Token {
    (u64::from(generation) << 32) | key as u64
}

/// A result handed to a handler with its notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Done {
    /// The value (bytes, or a pool-buffer completion value), or an errno.
    pub(crate) res: Result<u32, i32>,
    /// The op's final completion (a multishot op has ended).
    pub(crate) last: bool,
}

impl Done {
    pub(super) fn from_result(r: &io::Result<u32>, last: bool) -> Done {
        Done {
            res: match r {
                Ok(v) => Ok(*v),
                // Errors without an OS code (the closed loop's) as ENOTCONN.
                Err(e) => Err(e.raw_os_error().unwrap_or(libc::ENOTCONN)),
            },
            last,
        }
    }
}

/// What a handler is told ([`Notify::notify`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// An op's result, handed over with the notification (a reusable op,
    /// which is idle again; a stream receive).
    Completed(Token, Done),
    /// A single-shot handler op finished: its handle takes the result
    /// (`HandlerOp::take`).
    Ready(Token),
    /// The end-of-turn call the handler asked for (`Core::call_at_turn_end`).
    TurnEnd,
}

/// A completion callback: [`Notify::notify`] runs from the loop's ready
/// queue (never inside the driver). Spurious events are harmless: a handler
/// acts only on the tokens of its own ops.
pub(crate) trait Notify {
    fn notify(self: Rc<Self>, ev: Event);
}

/// A completion for a handler: who, and what.
pub(crate) type Notified = (Rc<dyn Notify>, Event);

/// Who hears of an op's completion.
pub(crate) enum Waiter {
    /// Nobody yet (a future that has not polled).
    None,
    /// The task polling the op's future.
    Task(Waker),
    /// A callback object, told [`Event::Ready`] through the loop (a
    /// single-shot op whose result it takes).
    Handler(Rc<dyn Notify>),
    /// The handler of a stream multishot op: told [`Event::Completed`] with
    /// each result (nothing is queued in the slot).
    Stream(Rc<dyn Notify>),
}
