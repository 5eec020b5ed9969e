//! The high-level task functions of asyncio's `tasks.py`: `sleep`, `gather`,
//! `shield`, `wait_for`, `wait` and `as_completed`.
//!
//! Futures that can fail return [`Result`]; these functions take such
//! futures (wrap an infallible one in `async { Ok(v) }`). Cancelling means
//! dropping: dropping a `gather` cancels its children, dropping `wait_for`'s
//! future cancels the inner work, dropping a `shield` leaves the shielded
//! task running.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::base_loop::EventLoop;
use crate::error::{Error, Result};
use crate::events::{AbstractEventLoop, CallOnce, HandleInner, get_running_loop};
use crate::tasks::Task;

/// Shared between a waiting future and the callbacks that wake it.
#[derive(Default)]
struct Signal {
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// A sleep's timer runs its signal (the signal is the timer's callback
/// slot: one allocation per sleep).
impl CallOnce for Signal {
    fn call(&self) -> bool {
        if self.fired.get() {
            return false;
        }
        self.fire();
        true
    }
    fn clear(&self) -> bool {
        drop(self.waker.take());
        !self.fired.get()
    }
}

impl Signal {
    fn fire(&self) {
        self.fired.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn register(&self, cx: &Context<'_>) {
        let mut w = self.waker.borrow_mut();
        match &*w {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => *w = Some(cx.waker().clone()),
        }
    }
}

/// Waits until `deadline` on the running loop (a `call_at` timer that wakes
/// the waiting task); dropping it cancels the timer.
struct Sleep {
    when: When,
    timer: Option<Rc<HandleInner<Signal>>>,
}

/// What a sleep waits for: a delay (its deadline is taken at the first
/// poll, where asyncio's `sleep` calls `call_later`), a deadline, or, for a
/// zero delay, one pass through the loop (already yielded).
#[derive(Debug)]
enum When {
    After(Duration),
    At(Instant),
    Yielded,
}

impl std::fmt::Debug for Sleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<Sleep {:?}>", self.when)
    }
}

/// Suspends the current task for `delay`.
///
/// Equivalent to `asyncio.sleep`. `sleep(Duration::ZERO)` yields to the loop
/// once (the task runs again after the callbacks ready now). Dropping the
/// future (cancelling its task) cancels the timer.
///
/// # Errors
///
/// [`Error::InvalidState`] when no loop is running on this thread;
/// [`Error::Closed`] if the loop is closed.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// ringloop::run(async {
///     let t0 = Instant::now();
///     ringloop::sleep(Duration::from_millis(10)).await.unwrap();
///     assert!(t0.elapsed() >= Duration::from_millis(10));
/// }).unwrap();
/// ```
pub fn sleep(delay: Duration) -> impl Future<Output = Result<()>> {
    // (A future of its own, not an `async fn`: 32 bytes, where the async
    // state machine held the delay, the deadline and the inner sleep.)
    SleepFut(Sleep {
        when: When::After(delay),
        timer: None,
    })
}

/// Suspends the current task until `deadline` on the loop's clock.
///
/// # Errors
///
/// As [`sleep`].
pub fn sleep_until(deadline: Instant) -> impl Future<Output = Result<()>> {
    SleepFut(Sleep {
        when: When::At(deadline),
        timer: None,
    })
}

struct SleepFut(Sleep);

impl Future for SleepFut {
    type Output = Result<()>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let s = &mut self.0;
        match &s.timer {
            Some(t) if t.callback().fired.get() => Poll::Ready(Ok(())),
            Some(t) => {
                t.callback().register(cx);
                Poll::Pending
            }
            None => {
                let deadline = match s.when {
                    When::Yielded => return Poll::Ready(Ok(())),
                    When::After(d) if d.is_zero() => {
                        // sleep(0): one pass through the loop, no timer.
                        get_running_loop()?;
                        s.when = When::Yielded;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    When::After(d) => Instant::now().checked_add(d).ok_or_else(|| {
                        Error::InvalidArgument(format!("delay {d:?} overflows the clock"))
                    })?,
                    When::At(t) => t,
                };
                // As `call_at`: a deadline already past fires at the next
                // turn (asyncio's sleep yields at least once), so no clock
                // read here.
                let lp = get_running_loop()?;
                lp.check_open()?;
                let sig = Signal::default();
                sig.register(cx);
                s.when = When::At(deadline);
                s.timer = Some(lp.call_at_slot(deadline, sig));
                Poll::Pending
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(t) = &self.timer {
            t.cancel();
        }
    }
}

/// Runs `fut` to completion, giving up after `timeout`.
///
/// Equivalent to `asyncio.wait_for` for a coroutine: on timeout the inner
/// future is dropped (which cancels whatever it was doing, synchronously) and
/// the result is [`Error::Timeout`]. If the inner future is ready when the
/// deadline hits, its output wins. For a spawned [`Task`], use
/// [`wait_for_task`], which cancels the task and waits for it to end.
///
/// # Errors
///
/// [`Error::Timeout`]; [`Error::InvalidState`] without a running loop.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ringloop::{Error, sleep, wait_for};
/// ringloop::run(async {
///     let slow = async { sleep(Duration::from_secs(10)).await.unwrap(); 1 };
///     assert!(matches!(wait_for(slow, Duration::from_millis(5)).await, Err(Error::Timeout)));
///     assert_eq!(wait_for(async { 2 }, Duration::from_millis(5)).await.unwrap(), 2);
/// }).unwrap();
/// ```
pub async fn wait_for<F: Future>(fut: F, timeout: Duration) -> Result<F::Output> {
    crate::timeouts::timeout(Some(timeout)).run(fut).await
}

/// [`wait_for`] for a task: on timeout the task is cancelled and awaited
/// until it has finished cancelling, then [`Error::Timeout`] is returned.
///
/// # Errors
///
/// [`Error::Timeout`], or the task's own error.
pub async fn wait_for_task<T: 'static>(task: Task<T>, timeout: Duration) -> Result<T> {
    let t2 = task.clone();
    match crate::timeouts::timeout(Some(timeout)).run(t2).await {
        Ok(r) => r,
        Err(Error::Timeout) => {
            task.cancel(None);
            // Wait for the cancellation to take effect (its next turn).
            let _ = task.await;
            Err(Error::Timeout)
        }
        Err(e) => Err(e),
    }
}

/// Runs `fut` as a task that the caller's cancellation does not cancel.
///
/// Equivalent to `asyncio.shield`: dropping the returned future (cancelling
/// the awaiting task) leaves the inner task running to completion; if the
/// inner task is cancelled itself, the shield yields [`Error::Cancelled`].
///
/// # Errors
///
/// The inner task's error.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ringloop::{Error, shield, sleep, wait_for};
/// ringloop::run(async {
///     let done = std::rc::Rc::new(std::cell::Cell::new(false));
///     let d = done.clone();
///     // The waiter gives up, the shielded work goes on.
///     let r = wait_for(shield(async move {
///         sleep(Duration::from_millis(20)).await.unwrap();
///         d.set(true);
///     }), Duration::from_millis(1)).await;
///     assert!(matches!(r, Err(Error::Timeout)));
///     sleep(Duration::from_millis(40)).await.unwrap();
///     assert!(done.get());
/// }).unwrap();
/// ```
pub fn shield<F>(fut: F) -> impl Future<Output = Result<F::Output>>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let task = get_running_loop().map(|lp| lp.create_task(fut));
    async move { task?.await }
}

/// Awaits a task without cancelling it when the waiter is cancelled.
///
/// # Errors
///
/// The task's error.
pub fn shield_task<T: 'static>(task: &Task<T>) -> impl Future<Output = Result<T>> + use<T> {
    task.clone()
}

/// Tracks which children of a multi-task wait have finished, in order.
struct Tracker {
    done: RefCell<VecDeque<usize>>,
    signal: Signal,
}

fn track<T: 'static>(tasks: &[Task<T>]) -> Rc<Tracker> {
    let tr = Rc::new(Tracker {
        done: RefCell::new(VecDeque::new()),
        signal: Signal::default(),
    });
    for (i, t) in tasks.iter().enumerate() {
        let tr2 = tr.clone();
        t.add_done_callback(move |_| {
            tr2.done.borrow_mut().push_back(i);
            tr2.signal.fire();
        });
    }
    tr
}

/// Records that gather child `idx` ended when its task drops the future,
/// whatever ended it (result, error, cancel, panic, loop close): a task
/// drops its future right before it stores its result, and the gather reads
/// results only when it runs again. No done callback, handle or boxed
/// closure per child, as asyncio's done callbacks would cost.
struct ChildGuard {
    idx: usize,
    tracker: Rc<Tracker>,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.tracker.done.borrow_mut().push_back(self.idx);
        self.tracker.signal.fire();
    }
}

/// Spawns gather's children, each reporting to the returned tracker.
fn spawn_all<F, T>(
    lp: &EventLoop,
    futs: impl IntoIterator<Item = F>,
) -> (Vec<Task<Result<T>>>, Rc<Tracker>)
where
    F: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    let futs = futs.into_iter();
    let n = futs.size_hint().0;
    lp.reserve_tasks(n);
    let tracker = Rc::new(Tracker {
        done: RefCell::new(VecDeque::with_capacity(n)),
        signal: Signal::default(),
    });
    let tasks = futs
        .enumerate()
        .map(|(idx, f)| {
            // Moved in (not made inside), so it drops even if the task is
            // cancelled before it first runs.
            let guard = ChildGuard {
                idx,
                tracker: tracker.clone(),
            };
            lp.create_task(async move {
                let _guard = guard;
                f.await
            })
        })
        .collect();
    (tasks, tracker)
}

/// Flattens a task's result: its own failure, or the body's `Result`.
fn flatten<T>(r: Result<Result<T>>) -> Result<T> {
    r.and_then(|x| x)
}

/// Runs futures concurrently (each as a task) and returns their results in
/// input order.
///
/// Equivalent to `asyncio.gather(*aws)`: the first error is returned at once
/// and the other children keep running; dropping the gather before it is
/// done (cancelling its task) cancels every child not yet done; a child that
/// is cancelled by itself counts as its error ([`Error::Cancelled`]) and does
/// not cancel the gather. See [`gather_all`] for `return_exceptions=True`.
///
/// # Errors
///
/// The first child error; [`Error::InvalidState`] without a running loop.
///
/// # Examples
///
/// ```
/// use ringloop::gather;
/// ringloop::run(async {
///     let r = gather((1..=3).map(|i| async move { Ok(i * 10) })).await.unwrap();
///     assert_eq!(r, vec![10, 20, 30]);
/// }).unwrap();
/// ```
pub async fn gather<F, T>(futs: impl IntoIterator<Item = F>) -> Result<Vec<T>>
where
    F: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    let lp = get_running_loop()?;
    let (tasks, tracker) = spawn_all(&lp, futs);
    let results = Gather::new(tasks).run(tracker, false).await?;
    results.into_iter().collect()
}

/// Like [`gather`], but collects every child's result, errors included
/// (`asyncio.gather(*aws, return_exceptions=True)`).
///
/// # Errors
///
/// [`Error::InvalidState`] without a running loop.
///
/// # Examples
///
/// ```
/// use ringloop::{Error, gather_all};
/// ringloop::run(async {
///     let futs: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ringloop::Result<u8>>>>> =
///         vec![Box::pin(async { Ok(1) }), Box::pin(async { Err(Error::Timeout) })];
///     let r = gather_all(futs).await.unwrap();
///     assert!(matches!(r[0], Ok(1)) && matches!(r[1], Err(Error::Timeout)));
/// }).unwrap();
/// ```
pub async fn gather_all<F, T>(futs: impl IntoIterator<Item = F>) -> Result<Vec<Result<T>>>
where
    F: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    let lp = get_running_loop()?;
    let (tasks, tracker) = spawn_all(&lp, futs);
    Gather::new(tasks).run(tracker, true).await
}

struct Gather<T: 'static> {
    tasks: Vec<Task<Result<T>>>,
    finished: bool,
}

impl<T: 'static> Gather<T> {
    fn new(tasks: Vec<Task<Result<T>>>) -> Self {
        Gather {
            tasks,
            finished: false,
        }
    }

    async fn run(mut self, tracker: Rc<Tracker>, return_all: bool) -> Result<Vec<Result<T>>> {
        let n = self.tasks.len();
        let mut results: Vec<Option<Result<T>>> = (0..n).map(|_| None).collect();
        let mut left = n;
        while left > 0 {
            std::future::poll_fn(|cx| {
                if tracker.done.borrow().is_empty() {
                    tracker.signal.register(cx);
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            loop {
                let next = tracker.done.borrow_mut().pop_front();
                let Some(i) = next else { break };
                let r = flatten(self.tasks[i].try_take().expect("done task has a result"));
                left -= 1;
                if r.is_err() && !return_all {
                    // Done: the other children keep running (asyncio).
                    self.finished = true;
                    return Err(r.err().expect("is_err"));
                }
                results[i] = Some(r);
            }
        }
        self.finished = true;
        Ok(results
            .into_iter()
            .map(|r| r.expect("every child reported"))
            .collect())
    }
}

impl<T: 'static> Drop for Gather<T> {
    fn drop(&mut self) {
        if !self.finished {
            for t in &self.tasks {
                t.cancel(None);
            }
        }
    }
}

/// When [`wait`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnWhen {
    /// As soon as any task finishes (`asyncio.FIRST_COMPLETED`).
    FirstCompleted,
    /// As soon as any task fails, else when all finish (`asyncio.FIRST_EXCEPTION`).
    FirstException,
    /// When all tasks finish (`asyncio.ALL_COMPLETED`).
    AllCompleted,
}

/// Waits for tasks until `return_when` holds or `timeout` passes, and returns
/// `(done, pending)`. Nothing is cancelled, also not on timeout.
///
/// Equivalent to `asyncio.wait`. A task counts as failed if it ended with an
/// error itself or its body returned `Err`; for
/// [`ReturnWhen::FirstException`] a cancelled task is not a failure (as
/// asyncio, which asks `not t.cancelled() and t.exception() is not None`).
///
/// # Errors
///
/// [`Error::InvalidArgument`] for an empty task list (as asyncio's ValueError).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ringloop::prelude::*;
/// use ringloop::{ReturnWhen, sleep, wait};
/// ringloop::run(async {
///     let lp = get_running_loop().unwrap();
///     let fast = lp.create_task(async { Ok(1) });
///     let slow = lp.create_task(async { sleep(Duration::from_secs(5)).await?; Ok(2) });
///     let (done, pending) = wait(vec![fast, slow], None, ReturnWhen::FirstCompleted).await.unwrap();
///     assert_eq!((done.len(), pending.len()), (1, 1));
///     pending[0].cancel(None);
/// }).unwrap();
/// ```
pub async fn wait<T: 'static>(
    tasks: Vec<Task<Result<T>>>,
    timeout: Option<Duration>,
    return_when: ReturnWhen,
) -> Result<(Vec<Task<Result<T>>>, Vec<Task<Result<T>>>)> {
    if tasks.is_empty() {
        return Err(Error::InvalidArgument(
            "wait() needs at least one task".into(),
        ));
    }
    // As CPython's `not f.cancelled() and f.exception() is not None`: a
    // cancelled task (or a body that returned `Err(Cancelled)`, which
    // counts as cancelled) is no exception.
    let failed = |t: &Task<Result<T>>| {
        t.peek(|r| matches!(r, Some(Err(e)) | Some(Ok(Err(e))) if !e.is_cancelled()))
    };
    let tracker = track(&tasks);
    let body = async {
        let mut finished = 0;
        loop {
            let satisfied = match return_when {
                ReturnWhen::FirstCompleted => finished > 0,
                ReturnWhen::FirstException => {
                    finished == tasks.len() || tasks.iter().any(|t| t.done() && failed(t))
                }
                ReturnWhen::AllCompleted => finished == tasks.len(),
            };
            if satisfied {
                return;
            }
            std::future::poll_fn(|cx| {
                let n = tracker.done.borrow().len();
                if n > finished {
                    finished = n;
                    Poll::Ready(())
                } else {
                    tracker.signal.register(cx);
                    Poll::Pending
                }
            })
            .await;
        }
    };
    match timeout {
        Some(d) => {
            // A timeout ends the wait; it cancels nothing.
            let _ = wait_for(body, d).await;
        }
        None => body.await,
    }
    let (done, pending) = tasks.into_iter().partition(|t| t.done());
    Ok((done, pending))
}

/// Yields task results in completion order; see [`as_completed`].
pub struct AsCompleted<T: 'static> {
    tasks: Vec<Option<Task<Result<T>>>>,
    tracker: Rc<Tracker>,
    deadline: Option<Instant>,
    left: usize,
}

impl<T: 'static> std::fmt::Debug for AsCompleted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<AsCompleted left={}>", self.left)
    }
}

/// Iterates over tasks in the order they complete.
///
/// Equivalent to `asyncio.as_completed`: each [`next`](AsCompleted::next)
/// gives the next finished task's result; after `timeout`, `next` gives
/// [`Error::Timeout`] once (cancelling nothing) and then `None`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ringloop::prelude::*;
/// use ringloop::{as_completed, sleep};
/// ringloop::run(async {
///     let lp = get_running_loop().unwrap();
///     let slow = lp.create_task(async { sleep(Duration::from_millis(20)).await?; Ok("slow") });
///     let fast = lp.create_task(async { Ok("fast") });
///     let mut it = as_completed(vec![slow, fast], None);
///     assert_eq!(it.next().await.unwrap().unwrap(), "fast");
///     assert_eq!(it.next().await.unwrap().unwrap(), "slow");
///     assert!(it.next().await.is_none());
/// }).unwrap();
/// ```
pub fn as_completed<T: 'static>(
    tasks: Vec<Task<Result<T>>>,
    timeout: Option<Duration>,
) -> AsCompleted<T> {
    let tracker = track(&tasks);
    AsCompleted {
        left: tasks.len(),
        tasks: tasks.into_iter().map(Some).collect(),
        tracker,
        deadline: timeout.map(|d| Instant::now() + d),
    }
}

impl<T: 'static> AsCompleted<T> {
    /// The next result in completion order; `None` when all were given.
    pub async fn next(&mut self) -> Option<Result<T>> {
        if self.left == 0 {
            return None;
        }
        let tracker = self.tracker.clone();
        let ready = std::future::poll_fn(|cx| {
            if tracker.done.borrow().is_empty() {
                tracker.signal.register(cx);
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        });
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if wait_for(ready, left).await.is_err() {
                self.left = 0;
                return Some(Err(Error::Timeout));
            }
        } else {
            ready.await;
        }
        let i = self.tracker.done.borrow_mut().pop_front()?;
        self.left -= 1;
        let t = self.tasks[i].take()?;
        Some(flatten(t.try_take()?))
    }
}
