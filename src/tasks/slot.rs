//! A task's future and then its result, stored in place inside its task
//! allocation (one allocation per task instead of a task plus a
//! `Pin<Box<F>>`, and one place for the future and the result, which are
//! never alive together: the task cell is smaller by the result's size).

use std::cell::{Cell, UnsafeCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::Result;

/// The future of a task, polled and dropped where it lies, then the task's
/// result.
///
/// Pinning: the slot lives inside the task's `Rc` allocation, which never
/// moves and is never unwrapped, so once polled the future stays at one
/// address until it is dropped in place (`drop_future`); the result is
/// written only after that.
pub(crate) struct FutureSlot<F: Future> {
    stage: UnsafeCell<Stage<F>>,
    /// A reference into `stage` is live (inside `poll`, `drop_future` or
    /// `with_result`): re-entrant calls do not touch it.
    busy: Cell<bool>,
}

enum Stage<F: Future> {
    Running(F),
    Done(Result<F::Output>),
    /// The future is gone and no result is stored (not yet, or taken).
    Empty,
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
            stage: UnsafeCell::new(Stage::Running(fut)),
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
        // guard drops (every other access checks it too).
        let Stage::Running(fut) = (unsafe { &mut *self.stage.get() }) else {
            return None;
        };
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
        // SAFETY: not borrowed (checked above), so no other reference into
        // the cell exists; assigning drops the pinned future in place (and
        // stores `Empty` even if its destructor panics).
        let stage = unsafe { &mut *self.stage.get() };
        if !matches!(stage, Stage::Running(_)) {
            return false;
        }
        *stage = Stage::Empty;
        true
    }

    /// Stores the task's result (its future was dropped before).
    pub(crate) fn set_result(&self, r: Result<F::Output>) {
        debug_assert!(
            !self.busy.get(),
            "a task's result is set while its slot is in use"
        );
        if self.busy.get() {
            return;
        }
        // SAFETY: not borrowed (checked above); the future is gone, so
        // nothing pinned is overwritten.
        let stage = unsafe { &mut *self.stage.get() };
        debug_assert!(!matches!(stage, Stage::Running(_)));
        *stage = Stage::Done(r);
    }

    /// Takes the stored result, if there is one.
    pub(crate) fn take_result(&self) -> Option<Result<F::Output>> {
        if self.busy.get() {
            return None;
        }
        // SAFETY: not borrowed (checked above), and nothing below calls out.
        let stage = unsafe { &mut *self.stage.get() };
        if !matches!(stage, Stage::Done(_)) {
            // (A running future must not be moved out.)
            return None;
        }
        match std::mem::replace(stage, Stage::Empty) {
            Stage::Done(r) => Some(r),
            _ => None,
        }
    }

    /// Calls `f` with the stored result, if there is one (`None` while the
    /// future runs, once the result is taken, or from inside another look).
    pub(crate) fn with_result<R>(&self, f: impl FnOnce(Option<&Result<F::Output>>) -> R) -> R {
        if self.busy.get() {
            return f(None);
        }
        // SAFETY: not borrowed (checked above); a shared look, and `busy`
        // keeps every mutation out while `f` runs.
        let Stage::Done(r) = (unsafe { &*self.stage.get() }) else {
            return f(None);
        };
        self.busy.set(true);
        let _unbusy = Unbusy(&self.busy);
        f(Some(r))
    }

    /// The stored result, through exclusive access (the cell's `Drop`).
    pub(crate) fn result_mut(&mut self) -> Option<&mut Result<F::Output>> {
        match self.stage.get_mut() {
            Stage::Done(r) => Some(r),
            _ => None,
        }
    }
}
