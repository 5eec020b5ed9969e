//! Reference-counted file descriptors whose `close(2)` waits for in-flight ops.
//!
//! Every op holds a clone of the [`SharedFd`] it works on, inside the op data
//! the driver keeps until the op's final completion (also after its future
//! was dropped). So the last reference, and with it the real `close(2)`, goes
//! only when no op on the fd is in flight any more: a reused fd number is
//! never hit by a stale submission (DESIGN.md invariant 3). Each `SharedFd`
//! also has a process-unique id, which the selector's registration table and
//! the receive stash use to tell a reused fd number from the old one.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Inner {
    fd: RawFd,
    id: u64,
    gate: RefCell<ReadGate>,
}

/// The receives on one fd whose data may still be kept for the next
/// receive (see [`SharedFd::gate_enter`]), and the receives issued
/// meanwhile, by slab key, in order.
#[derive(Default)]
struct ReadGate {
    held: u32,
    waiting: VecDeque<usize>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        close_now(self.fd);
    }
}

pub(crate) fn close_now(fd: RawFd) {
    // SAFETY: called for a descriptor whose only owner is going away, so
    // nothing else on our side uses this number any more.
    unsafe { libc::close(fd) };
}

/// An owned fd shared by its socket object and the ops in flight on it.
#[derive(Clone)]
pub(crate) struct SharedFd(Rc<Inner>);

impl SharedFd {
    pub(crate) fn new(fd: OwnedFd) -> SharedFd {
        SharedFd(Rc::new(Inner {
            fd: fd.into_raw_fd(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            gate: RefCell::new(ReadGate::default()),
        }))
    }

    /// A receive (op `key`) wants to start. True: it may. False: an
    /// earlier receive on this fd was cancelled in flight, or finished and
    /// was not handed back yet, so its data may still go to the stash;
    /// this one waits until that is settled, and then takes the kept data
    /// first: a cancelled receive's data always reaches the receive issued
    /// after it, before anything newer.
    pub(crate) fn gate_enter(&self, key: usize) -> bool {
        let mut g = self.0.gate.borrow_mut();
        if g.held > 0 {
            g.waiting.push_back(key);
            false
        } else {
            true
        }
    }

    /// An earlier receive's data may still go to the stash (a new
    /// receive would wait for it).
    pub(crate) fn gate_held(&self) -> bool {
        self.0.gate.borrow().held > 0
    }

    /// A receive on this fd became one whose data may go to the stash.
    pub(crate) fn gate_hold(&self) {
        self.0.gate.borrow_mut().held += 1;
    }

    /// Such a receive is settled; once none is left, the receives that
    /// waited are returned (to be started, in order).
    pub(crate) fn gate_release(&self) -> VecDeque<usize> {
        let mut g = self.0.gate.borrow_mut();
        g.held -= 1;
        if g.held == 0 {
            std::mem::take(&mut g.waiting)
        } else {
            VecDeque::new()
        }
    }

    /// A waiting receive was dropped before its turn.
    pub(crate) fn gate_forget(&self, key: usize) {
        self.0.gate.borrow_mut().waiting.retain(|&k| k != key);
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.0.fd
    }

    /// Process-unique identity of this descriptor (not of its number).
    pub(crate) fn id(&self) -> u64 {
        self.0.id
    }
}

impl std::os::fd::AsFd for SharedFd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the descriptor stays open while any SharedFd clone lives,
        // and the borrow cannot outlive `self`.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0.fd) }
    }
}

impl AsRawFd for SharedFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.fd
    }
}

impl fmt::Debug for SharedFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedFd({})", self.0.fd)
    }
}
