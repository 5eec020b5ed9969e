//! Reference-counted file descriptors whose `close(2)` waits for in-flight ops.
//!
//! Every op holds a clone of the [`SharedFd`] it works on, inside the op data
//! the driver keeps until the op's final completion (also after its future
//! was dropped). So the last reference, and with it the real `close(2)`, goes
//! only when no op on the fd is in flight any more: a reused fd number is
//! never hit by a stale submission (DESIGN.md invariant 3). Each `SharedFd`
//! also has a process-unique id, which the selector's registration table and
//! the receive stash use to tell a reused fd number from the old one.

use std::fmt;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Inner {
    fd: RawFd,
    id: u64,
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
        }))
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
