//! What other threads can reach: the remote queue, task wakers, and
//! [`LoopHandle`] (`call_soon_threadsafe`).
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

use crate::driver::Notifier;
use crate::error::{Error, Result};

type RemoteCallback = Box<dyn FnOnce() + Send>;

#[derive(Default)]
pub(crate) struct RemoteQueue {
    pub(crate) callbacks: Vec<RemoteCallback>,
    pub(crate) wakes: Vec<(u32, u32)>,
    pub(crate) closed: bool,
}

/// The part of a loop that is `Send + Sync`.
pub(crate) struct Remote {
    pub(crate) loop_id: u64,
    pub(crate) queue: Mutex<RemoteQueue>,
    /// Set when the queue has items; lets the loop skip the lock.
    pub(crate) has_items: AtomicBool,
    pub(crate) notifier: Arc<Notifier>,
}

impl Remote {
    fn push(&self, f: impl FnOnce(&mut RemoteQueue)) -> Result<()> {
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.closed {
                return Err(Error::closed("the event loop is closed"));
            }
            f(&mut q);
        }
        self.has_items.store(true, Ordering::SeqCst);
        self.notifier.notify();
        Ok(())
    }

    pub(crate) fn take(&self) -> RemoteQueue {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        RemoteQueue {
            callbacks: std::mem::take(&mut q.callbacks),
            wakes: std::mem::take(&mut q.wakes),
            closed: q.closed,
        }
    }

    pub(crate) fn close(&self) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.closed = true;
        q.callbacks.clear();
        q.wakes.clear();
    }
}

/// A task's waker: wakes on the loop thread go straight to the ready queue;
/// from elsewhere they go through the remote queue and the eventfd.
///
/// One per task slot, reused by the tasks that occupy the slot in turn (the
/// generation says which one): a waker kept by a finished task can only
/// cause a spurious wake-up of its successor, which futures must tolerate.
pub(crate) struct TaskWaker {
    pub(crate) idx: u32,
    pub(crate) generation: AtomicU32,
    pub(crate) remote: Arc<Remote>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let generation = self.generation.load(Ordering::Acquire);
        TaskWaker::wake_task(&self.remote, self.idx, generation);
    }
}

impl TaskWaker {
    /// Wakes task `(idx, generation)` of `remote`'s loop, from any thread.
    pub(crate) fn wake_task(remote: &Remote, idx: u32, generation: u32) {
        if !super::schedule_local(remote.loop_id, idx, generation) {
            // Closed loop: nothing will ever run the task again; dropping the
            // wake is right.
            let _ = remote.push(|q| q.wakes.push((idx, generation)));
        }
    }

    /// A waker of its own for task `(idx, generation)` (not the slot's):
    /// a task's lent first-poll waker cloned on another thread.
    pub(crate) fn fresh(remote: &Arc<Remote>, idx: u32, generation: u32) -> Waker {
        Waker::from(Arc::new(TaskWaker {
            idx,
            generation: AtomicU32::new(generation),
            remote: remote.clone(),
        }))
    }
}

/// A `Send + Sync` handle to a loop, for other threads.
///
/// It offers what asyncio allows from other threads: `call_soon_threadsafe`
/// (and, through it, anything the callback does on the loop thread).
///
/// # Examples
///
/// ```
/// use ringloop::prelude::*;
/// let lp = EventLoop::new().unwrap();
/// let h = lp.handle();
/// std::thread::spawn(move || {
///     h.call_soon_threadsafe(|| get_running_loop().unwrap().stop()).unwrap();
/// });
/// lp.run_forever().unwrap();
/// lp.close().unwrap();
/// ```
#[derive(Clone)]
pub struct LoopHandle {
    pub(crate) remote: Arc<Remote>,
}

impl LoopHandle {
    /// Schedules `cb` on the loop's thread and wakes the loop if it is waiting.
    ///
    /// Equivalent to `loop.call_soon_threadsafe`.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the loop is closed.
    pub fn call_soon_threadsafe(&self, cb: impl FnOnce() + Send + 'static) -> Result<()> {
        self.remote.push(|q| q.callbacks.push(Box::new(cb)))
    }

    /// True once the loop is closed.
    pub fn is_closed(&self) -> bool {
        self.remote
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed
    }
}

impl std::fmt::Debug for LoopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoopHandle(loop {})", self.remote.loop_id)
    }
}
