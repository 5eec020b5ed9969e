//! Runners: `run(fut)` and [`Runner`], which own a loop, run futures on it,
//! handle Ctrl-C like asyncio, and clean up (leftover tasks cancelled, the
//! default executor shut down, the loop closed).
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use crate::base_loop::EventLoop;
use crate::driver::Backend;
use crate::driver::sighub::{self, Subscription};
use crate::error::{Error, Result};
use crate::events::AbstractEventLoop;

/// How long [`Runner::close`] (and [`run`]) wait for the default executor's
/// threads by default: asyncio's `THREAD_JOIN_TIMEOUT`, 300 s.
pub const EXECUTOR_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `fut` on a new loop (see [`EventLoop::new`]) and returns its output.
///
/// Equivalent to `asyncio.run`: when `fut` is done, the tasks it left behind
/// are cancelled and allowed to finish, the default executor is shut down
/// (waiting at most [`EXECUTOR_SHUTDOWN_TIMEOUT`] for its threads, then
/// warning through `log` and going on), and the loop is closed. Ctrl-C is handled as [`Runner::run`] does.
///
/// # Errors
///
/// Errors creating the loop, or the error that ended `fut` ([`Error::Cancelled`],
/// [`Error::Panic`], [`Error::Interrupted`]); [`Error::InvalidState`] if a
/// loop already runs on this thread.
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
    let mut r = Runner::new();
    let out = r.run(fut);
    r.close()?;
    out
}

/// Whether a runner installs its SIGINT handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigintHandling {
    /// On the process's main thread, when SIGINT has its default action (asyncio's rule).
    Auto,
    /// Always (when SIGINT has its default action).
    Always,
    /// Never.
    Never,
}

/// Runs several futures on one loop it owns, then cleans up.
///
/// Equivalent to `asyncio.Runner`. The loop is made on first use (on
/// [`EventLoop::new`]'s backend unless [`with_backend`](Self::with_backend)),
/// and [`close`](Self::close) (or dropping the runner) cancels leftover
/// tasks, shuts the default executor down and closes the loop.
///
/// Ctrl-C while [`run`](Self::run) waits: the first SIGINT cancels the main
/// task, and `run` returns [`Error::Interrupted`]; a second SIGINT before
/// that takes the default action and ends the process at once (asyncio's
/// second Ctrl-C raises `KeyboardInterrupt` immediately; a Rust program
/// cannot unwind out of a signal handler).
///
/// # Examples
///
/// ```
/// use ringloop::Runner;
/// let mut r = Runner::new();
/// assert_eq!(r.run(async { 1 }).unwrap(), 1);
/// assert_eq!(r.run(async { 2 }).unwrap(), 2);
/// r.close().unwrap();
/// ```
pub struct Runner {
    lp: Option<EventLoop>,
    backend: Option<Backend>,
    debug: Option<bool>,
    sigint: SigintHandling,
    executor_timeout: Duration,
    closed: bool,
}

impl Default for Runner {
    fn default() -> Self {
        Runner::new()
    }
}

impl Runner {
    /// A runner on the default backend.
    pub fn new() -> Runner {
        Runner {
            lp: None,
            backend: None,
            debug: None,
            sigint: SigintHandling::Auto,
            executor_timeout: EXECUTOR_SHUTDOWN_TIMEOUT,
            closed: false,
        }
    }

    /// A runner on the given backend.
    pub fn with_backend(backend: Backend) -> Runner {
        let mut r = Runner::new();
        r.backend = Some(backend);
        r
    }

    /// Sets the loop's debug mode (asyncio's `Runner(debug=...)`).
    pub fn debug(mut self, on: bool) -> Runner {
        self.debug = Some(on);
        self
    }

    /// Sets how long [`close`](Self::close) waits for the default
    /// executor's threads ([`EXECUTOR_SHUTDOWN_TIMEOUT`] unless set). Past
    /// it a warning is logged and closing goes on; a job still running is
    /// left to finish on its own thread. (asyncio has the 300 s as a
    /// constant, not a `Runner` argument.)
    pub fn executor_shutdown_timeout(mut self, timeout: Duration) -> Runner {
        self.executor_timeout = timeout;
        self
    }

    /// Sets when the SIGINT handler is installed.
    pub fn sigint(mut self, how: SigintHandling) -> Runner {
        self.sigint = how;
        self
    }

    /// The runner's loop, made on first use. Equivalent to `Runner.get_loop`.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`close`](Self::close); loop creation errors.
    pub fn get_loop(&mut self) -> Result<EventLoop> {
        if self.closed {
            return Err(Error::closed("the runner is closed"));
        }
        if self.lp.is_none() {
            let lp = match self.backend {
                Some(b) => EventLoop::with_backend(b)?,
                None => EventLoop::new()?,
            };
            if let Some(d) = self.debug {
                lp.set_debug(d);
            }
            self.lp = Some(lp);
        }
        Ok(self.lp.clone().expect("set above"))
    }

    /// Runs `fut` as the main task until it is done and returns its output.
    ///
    /// Equivalent to `Runner.run`.
    ///
    /// # Errors
    ///
    /// [`Error::Interrupted`] after Ctrl-C; the main task's error;
    /// [`Error::InvalidState`] if a loop already runs on this thread.
    pub fn run<F>(&mut self, fut: F) -> Result<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        if crate::base_loop::running_core().is_some() {
            return Err(Error::state(
                "Runner.run() cannot be called while another loop is running on this thread",
            ));
        }
        let lp = self.get_loop()?;
        let task = lp.create_task(fut);
        let interrupted = Rc::new(Cell::new(false));
        // Ctrl-C through the signal hub, as any signal handler: the hub
        // writes this subscription's eventfd, which the loop watches.
        let guard = self.install_sigint().map(Rc::new);
        if let Some(g) = &guard {
            let (g2, t2, int2, lp2) = (g.clone(), task.as_ref(), interrupted.clone(), lp.clone());
            let seen = Cell::new(sighub::count(libc::SIGINT));
            lp.add_reader(g.fd(), move || {
                g2.drain();
                let n = sighub::count(libc::SIGINT);
                if n == seen.replace(n) {
                    return;
                }
                // A program that handles SIGINT on this loop itself
                // (`add_signal_handler`) takes Ctrl-C over, as in asyncio.
                if lp2.has_signal_handler(libc::SIGINT) {
                    return;
                }
                if !int2.get() && !t2.done() {
                    int2.set(true);
                    // The next SIGINT ends the process at once.
                    sighub::default_action_next(libc::SIGINT);
                    t2.cancel(Some("KeyboardInterrupt"));
                }
            })?;
        }
        let out = lp.run_until_complete(task);
        if let Some(g) = &guard {
            lp.remove_reader(g.fd());
            if interrupted.get() {
                // (Only matters while other subscribers keep the hub's
                // handler; after the last one SIGINT's old disposition is back.)
                sighub::clear_default_action_next(libc::SIGINT);
            }
        }
        drop(guard);
        match out {
            Ok(Err(Error::Cancelled(_))) if interrupted.get() => Err(Error::Interrupted),
            Ok(r) => r,
            Err(e) => Err(e),
        }
    }

    /// Subscribes to SIGINT on the hub when the runner should handle it:
    /// only while SIGINT has its default action (a program that set its
    /// own handler keeps it, as with asyncio).
    fn install_sigint(&self) -> Option<Subscription> {
        let want = match self.sigint {
            SigintHandling::Never => false,
            SigintHandling::Always => true,
            SigintHandling::Auto => crate::driver::sys::on_main_thread(),
        };
        if !want || !sighub::is_default(libc::SIGINT) {
            return None;
        }
        let sub = Subscription::new().ok()?;
        sub.add(libc::SIGINT).ok()?;
        Some(sub)
    }

    /// Cancels the tasks left on the loop (and lets them finish), shuts the
    /// default executor down (waiting for its threads at most the
    /// [`executor_shutdown_timeout`](Self::executor_shutdown_timeout), then
    /// warning and going on, as asyncio), and closes the loop. Idempotent.
    ///
    /// Equivalent to `Runner.close`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] if called while the loop runs.
    pub fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let Some(lp) = self.lp.take() else {
            return Ok(());
        };
        cancel_all_tasks(&lp);
        let l2 = lp.clone();
        let t = self.executor_timeout;
        let _ = lp.run_until_complete(async move { l2.shutdown_default_executor(Some(t)).await });
        lp.close()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if !self.closed && crate::base_loop::running_core().is_none() {
            let _ = self.close();
        }
    }
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<Runner loop={:?} closed={}>", self.lp, self.closed)
    }
}

/// Cancels every task left on `lp` and runs the loop until they are done
/// (asyncio's `_cancel_all_tasks`); their errors go to the exception handler
/// when their handles are dropped unretrieved.
pub(crate) fn cancel_all_tasks(lp: &EventLoop) {
    let tasks = lp.pending_tasks();
    if tasks.is_empty() {
        return;
    }
    for t in &tasks {
        t.cancel(None);
    }
    let _ = lp.run_until_complete(async move {
        for t in tasks {
            std::future::poll_fn(|cx| {
                if t.done() {
                    std::task::Poll::Ready(())
                } else {
                    // Cancelled tasks finish at their next turn; look again then.
                    cx.waker().wake_by_ref();
                    std::task::Poll::Pending
                }
            })
            .await;
        }
    });
}
