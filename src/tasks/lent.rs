//! The waker lent to a task's first poll: made on the stack, so a task
//! that finishes in its first step (a `gather` child, a spawned
//! computation) never fetches its slot's waker, which in a fresh slot is
//! an `Arc` allocation.
//!
//! The lent waker is only ever reached through the `&Waker` of the poll's
//! `Context`, which cannot outlive the poll. Waking it schedules the task
//! as its slot waker would. Cloning it on the loop's thread hands out the
//! slot waker (stored in the header, so later polls use it directly);
//! cloning it on another thread (a scoped thread inside the poll) makes a
//! waker of its own for the same task, touching nothing but `Sync` data.

use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::task::{Context, RawWaker, RawWakerVTable, Waker};

use super::TaskHeader;
use crate::base_loop::{Core, Remote, TaskWaker, on_loop_thread};

/// What the lent waker points to, on the stack of [`with_lent_waker`].
struct Lent {
    /// Dereferenced only on the loop's thread (`!Sync` data).
    header: *const TaskHeader,
    /// Dereferenced only on the loop's thread (`!Sync` data).
    core: *const Core,
    /// `Sync`: read from any thread.
    remote: *const Arc<Remote>,
    loop_id: u64,
    idx: u32,
    generation: u32,
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop);

/// Runs `f` with a context whose waker is lent for this call only.
pub(super) fn with_lent_waker<R>(
    header: &TaskHeader,
    core: &Core,
    f: impl FnOnce(&mut Context<'_>) -> R,
) -> R {
    let lent = Lent {
        header,
        core,
        remote: core.remote(),
        loop_id: core.id(),
        idx: header.idx,
        generation: header.generation,
    };
    let raw = RawWaker::new((&raw const lent).cast(), &VTABLE);
    // SAFETY: the vtable's functions keep `RawWaker`'s contract for data
    // pointing to a live `Lent`, and `lent` outlives every use: the waker
    // is only lent by reference to `f` (a `Context` cannot outlive it, and
    // a clone is a waker of its own), and it is never dropped (so `drop`
    // never runs for it; it would do nothing anyway).
    let waker = ManuallyDrop::new(unsafe { Waker::from_raw(raw) });
    f(&mut Context::from_waker(&waker))
}

/// # Safety
///
/// `p` points to the live `Lent` of a [`with_lent_waker`] call.
unsafe fn lent<'a>(p: *const ()) -> &'a Lent {
    // SAFETY: the caller's contract.
    unsafe { &*p.cast::<Lent>() }
}

unsafe fn clone(p: *const ()) -> RawWaker {
    // SAFETY: the lent waker's data is a live `Lent` (see `with_lent_waker`).
    let l = unsafe { lent(p) };
    let waker = if on_loop_thread(l.loop_id) {
        // SAFETY: on the loop's thread, inside the task's step: the header
        // and the core outlive the step, and this thread owns them.
        let (header, core) = unsafe { (&*l.header, &*l.core) };
        header
            .waker
            .get_or_init(|| core.slot_waker(l.idx, l.generation))
            .clone()
    } else {
        // SAFETY: the `Arc<Remote>` field is not written during the step
        // and `Remote` is `Sync`: reading it from this thread is sound.
        TaskWaker::fresh(unsafe { &*l.remote }, l.idx, l.generation)
    };
    let waker = ManuallyDrop::new(waker);
    RawWaker::new(waker.data(), waker.vtable())
}

unsafe fn wake(p: *const ()) {
    // SAFETY: as `wake_by_ref` (the lent waker owns nothing to release).
    unsafe { wake_by_ref(p) }
}

unsafe fn wake_by_ref(p: *const ()) {
    // SAFETY: the lent waker's data is a live `Lent` (see `with_lent_waker`).
    let l = unsafe { lent(p) };
    // SAFETY: as in `clone`: the `Arc<Remote>` is read only, and `Sync`.
    TaskWaker::wake_task(unsafe { &*l.remote }, l.idx, l.generation);
}

unsafe fn drop(_: *const ()) {}
