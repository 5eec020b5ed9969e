//! `run(fut)`: make a loop, run a future to completion, clean up, close.
#![forbid(unsafe_code)]

use std::future::Future;

use crate::base_loop::EventLoop;
use crate::error::Result;
use crate::events::AbstractEventLoop;

/// Runs `fut` on a new loop (see [`EventLoop::new`]) and returns its output.
///
/// Equivalent to `asyncio.run`: when `fut` is done, the tasks it left behind
/// are cancelled and allowed to finish, then the loop is closed.
///
/// # Errors
///
/// Errors creating the loop, or the error that ended `fut` ([`Error::Cancelled`],
/// [`Error::Panic`]); [`Error::InvalidState`] if a loop already runs on this thread.
///
/// [`Error::Cancelled`]: crate::Error::Cancelled
/// [`Error::Panic`]: crate::Error::Panic
/// [`Error::InvalidState`]: crate::Error::InvalidState
///
/// # Examples
///
/// ```
/// let v = ringloop::run(async { 40 + 2 }).unwrap();
/// assert_eq!(v, 42);
/// ```
pub fn run<F>(fut: F) -> Result<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    if crate::base_loop::running_core().is_some() {
        return Err(crate::Error::state(
            "run() cannot be called while another loop is running on this thread",
        ));
    }
    let lp = EventLoop::new()?;
    let out = lp.run_until_complete(fut);
    cancel_all_tasks(&lp);
    lp.close()?;
    out
}

/// Cancels every task left on `lp` and runs the loop until they are done,
/// reporting the ones that ended in error (asyncio's `_cancel_all_tasks`).
pub(crate) fn cancel_all_tasks(lp: &EventLoop) {
    let tasks = lp.core.all_tasks();
    if tasks.is_empty() {
        return;
    }
    for t in &tasks {
        t.cancel(None);
    }
    let pending = tasks.clone();
    let _ = lp.run_until_complete(async move {
        for t in pending {
            WaitDone(t).await;
        }
    });
}

/// Waits for an untyped task to be done.
struct WaitDone(crate::tasks::TaskRef);

impl Future for WaitDone {
    type Output = ();
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0.done() {
            std::task::Poll::Ready(())
        } else {
            // Cancelled tasks finish at their next turn; poll again then.
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
}
