//! A task's future stored in place inside its task allocation (one
//! allocation per task instead of a task plus a `Pin<Box<F>>`).

use std::cell::{Cell, UnsafeCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The future of a task, polled and dropped where it lies.
///
/// Pinning: the slot lives inside the task's `Rc` allocation, which never
/// moves and is never unwrapped, so once polled the future stays at one
/// address until it is dropped in place (`drop_future`).
pub(crate) struct FutureSlot<F> {
    fut: UnsafeCell<Option<F>>,
    /// Inside `poll`: re-entrant calls do nothing.
    busy: Cell<bool>,
}

struct Unbusy<'a>(&'a Cell<bool>);

impl Drop for Unbusy<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl<F: Future> FutureSlot<F> {
    pub(crate) fn new(fut: F) -> Self {
        FutureSlot {
            fut: UnsafeCell::new(Some(fut)),
            busy: Cell::new(false),
        }
    }

    /// Polls the future in place; `None` if there is none (finished,
    /// dropped) or if called from inside its own poll.
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Option<Poll<F::Output>> {
        if self.busy.replace(true) {
            return None;
        }
        let _unbusy = Unbusy(&self.busy);
        // SAFETY: `busy` makes this the only access to the cell until the
        // guard drops (drop_future checks it too).
        let fut = unsafe { (*self.fut.get()).as_mut()? };
        // SAFETY: the future never moves until dropped in place: see the
        // type's doc.
        Some(unsafe { Pin::new_unchecked(fut) }.poll(cx))
    }

    /// Drops the future in place (its destructor may panic: the caller
    /// catches). False if there was none or it is being polled.
    pub(crate) fn drop_future(&self) -> bool {
        if self.busy.replace(true) {
            return false;
        }
        let _unbusy = Unbusy(&self.busy);
        // SAFETY: not polling (checked above), so no other reference into
        // the cell exists; assigning drops the pinned future in place.
        let slot = unsafe { &mut *self.fut.get() };
        let had = slot.is_some();
        *slot = None;
        had
    }
}
