//! Running blocking work off the loop thread: the default thread pool,
//! `run_in_executor`, `to_thread`, `getaddrinfo` / `getnameinfo`, and
//! `run_coroutine_threadsafe` for submitting work to a loop from elsewhere.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::base_loop::{EventLoop, LoopHandle};
use crate::error::{Error, Result, panic_message};
use crate::events::{AbstractEventLoop, get_running_loop};

type Job = Box<dyn FnOnce() + Send>;

struct PoolState {
    jobs: VecDeque<Job>,
    idle: usize,
    threads: Vec<JoinHandle<()>>,
    shutdown: bool,
}

struct PoolInner {
    state: Mutex<PoolState>,
    cv: Condvar,
    max: usize,
}

/// A bounded pool of worker threads, started lazily as work arrives.
///
/// Equivalent to `concurrent.futures.ThreadPoolExecutor`, the kind of
/// executor asyncio's `run_in_executor` uses by default.
#[derive(Clone)]
pub struct ThreadPool {
    inner: Arc<PoolInner>,
}

impl ThreadPool {
    /// A pool of at most `max_workers` threads.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for zero workers.
    pub fn new(max_workers: usize) -> Result<ThreadPool> {
        if max_workers == 0 {
            return Err(Error::InvalidArgument(
                "max_workers must be at least 1".into(),
            ));
        }
        Ok(ThreadPool {
            inner: Arc::new(PoolInner {
                state: Mutex::new(PoolState {
                    jobs: VecDeque::new(),
                    idle: 0,
                    threads: Vec::new(),
                    shutdown: false,
                }),
                cv: Condvar::new(),
                max: max_workers,
            }),
        })
    }

    /// Python's default size: `min(32, cpus + 4)`.
    pub fn default_size() -> usize {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cpus + 4).min(32)
    }

    /// Worker threads started so far.
    pub fn threads(&self) -> usize {
        self.lock().threads.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn submit(&self, job: Job) -> Result<()> {
        let mut st = self.lock();
        if st.shutdown {
            return Err(Error::state("the executor is shut down"));
        }
        st.jobs.push_back(job);
        if st.idle == 0 && st.threads.len() < self.inner.max {
            let inner = self.inner.clone();
            let n = st.threads.len();
            let t = std::thread::Builder::new()
                .name(format!("ringloop-executor-{n}"))
                .spawn(move || worker(&inner))
                .map_err(Error::from)?;
            st.threads.push(t);
        } else {
            self.inner.cv.notify_one();
        }
        Ok(())
    }

    /// Stops accepting work; queued work still runs. With `wait`, joins the
    /// workers. Equivalent to `ThreadPoolExecutor.shutdown(wait)`.
    pub fn shutdown(&self, wait: bool) {
        let threads = {
            let mut st = self.lock();
            st.shutdown = true;
            self.inner.cv.notify_all();
            if wait {
                std::mem::take(&mut st.threads)
            } else {
                Vec::new()
            }
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

fn worker(inner: &PoolInner) {
    loop {
        let job = {
            let mut st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(j) = st.jobs.pop_front() {
                    break j;
                }
                if st.shutdown {
                    return;
                }
                st.idle += 1;
                st = inner.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                st.idle -= 1;
            }
        };
        job();
    }
}

impl fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<ThreadPool max={} threads={}>",
            self.inner.max,
            self.threads()
        )
    }
}

/// One result handed from a worker thread to a loop task.
struct Oneshot<T> {
    slot: Mutex<(Option<Result<T>>, Option<Waker>)>,
}

impl<T> Oneshot<T> {
    fn new() -> Arc<Self> {
        Arc::new(Oneshot {
            slot: Mutex::new((None, None)),
        })
    }

    fn set(&self, r: Result<T>) {
        let w = {
            let mut s = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            s.0 = Some(r);
            s.1.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }
}

struct Receive<T>(Arc<Oneshot<T>>);

impl<T> Future for Receive<T> {
    type Output = Result<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let mut s = self.0.slot.lock().unwrap_or_else(|p| p.into_inner());
        match s.0.take() {
            Some(r) => Poll::Ready(r),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

fn run_on_pool<F, T>(pool: &ThreadPool, f: F) -> Result<Receive<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let shot = Oneshot::new();
    let s2 = shot.clone();
    pool.submit(Box::new(move || {
        let r = catch_unwind(AssertUnwindSafe(f)).map_err(|p| Error::Panic(panic_message(&*p)));
        s2.set(r);
    }))?;
    Ok(Receive(shot))
}

impl EventLoop {
    fn default_executor(&self) -> Result<ThreadPool> {
        if self.executor_shut_flag().get() {
            return Err(Error::state(
                "the default executor was shut down (shutdown_default_executor)",
            ));
        }
        let mut ex = self.executor_cell().borrow_mut();
        if ex.is_none() {
            *ex = Some(ThreadPool::new(ThreadPool::default_size())?);
        }
        Ok(ex.clone().expect("set above"))
    }

    /// [`AbstractEventLoop::run_in_executor`].
    pub(crate) async fn run_in_executor_impl<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.default_executor()?;
        run_on_pool(&pool, f)?.await
    }

    /// [`AbstractEventLoop::run_in_executor_on`].
    pub(crate) async fn run_in_executor_on_impl<F, T>(&self, pool: &ThreadPool, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        run_on_pool(pool, f)?.await
    }

    /// [`AbstractEventLoop::set_default_executor`].
    pub(crate) fn set_default_executor_impl(&self, pool: ThreadPool) {
        *self.executor_cell().borrow_mut() = Some(pool);
    }

    /// [`AbstractEventLoop::shutdown_default_executor`].
    pub(crate) async fn shutdown_default_executor_impl(
        &self,
        timeout: Option<Duration>,
    ) -> Result<()> {
        self.executor_shut_flag().set(true);
        let Some(pool) = self.executor_cell().borrow_mut().take() else {
            return Ok(());
        };
        let shot = Oneshot::new();
        let s2 = shot.clone();
        std::thread::Builder::new()
            .name("ringloop-executor-join".into())
            .spawn(move || {
                pool.shutdown(true);
                s2.set(Ok(()));
            })
            .map_err(Error::from)?;
        match timeout {
            None => Receive(shot).await,
            Some(t) => match crate::wait_for(Receive(shot), t).await {
                Ok(r) => r,
                Err(_) => {
                    log::warn!(
                        "the default executor did not finish joining its threads within {t:?}"
                    );
                    Ok(())
                }
            },
        }
    }

    /// [`AbstractEventLoop::getaddrinfo`].
    pub(crate) async fn getaddrinfo_impl(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>> {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let host = host.to_owned();
        let addrs = self
            .run_in_executor_impl(move || {
                (host.as_str(), port).to_socket_addrs().map(Vec::from_iter)
            })
            .await??;
        Ok(addrs)
    }

    /// [`AbstractEventLoop::getnameinfo`].
    pub(crate) async fn getnameinfo_impl(
        &self,
        addr: SocketAddr,
        flags: i32,
    ) -> Result<(String, String)> {
        let sa = socket2::SockAddr::from(addr);
        Ok(self
            .run_in_executor_impl(move || crate::driver::sys::getnameinfo(&sa, flags))
            .await??)
    }

    pub(crate) fn shutdown_executor_nowait(&self) {
        if let Some(pool) = self.executor_cell().borrow_mut().take() {
            pool.shutdown(false);
        }
    }
}

/// Runs `f` in a worker thread of the running loop's default executor.
///
/// Equivalent to `asyncio.to_thread`.
///
/// # Errors
///
/// As [`AbstractEventLoop::run_in_executor`]; [`Error::InvalidState`] without a
/// running loop.
///
/// # Examples
///
/// ```
/// ringloop::run(async {
///     let n = ringloop::to_thread(|| std::fs::read_dir(".").map(|d| d.count()).unwrap_or(0))
///         .await
///         .unwrap();
///     assert!(n > 0);
/// }).unwrap();
/// ```
pub async fn to_thread<F, T>(f: F) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    get_running_loop()?.run_in_executor(f).await
}

struct CfState<T> {
    result: Option<Result<T>>,
    /// Set with the result; stays set after `result()` took it.
    finished: bool,
    cancel_requested: bool,
    cancel_waker: Option<Waker>,
}

struct CfShared<T> {
    state: Mutex<CfState<T>>,
    cv: Condvar,
}

impl<T> CfShared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, CfState<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn finish(&self, r: Result<T>) {
        let mut st = self.lock();
        if !st.finished {
            st.finished = true;
            st.result = Some(r);
        }
        self.cv.notify_all();
    }
}

/// The result of [`LoopHandle::run_coroutine_threadsafe`], for the thread
/// that submitted the work: wait on it, poll it, or cancel it.
///
/// Equivalent to the `concurrent.futures.Future` asyncio returns.
pub struct ConcurrentFuture<T> {
    shared: Arc<CfShared<T>>,
}

impl<T> ConcurrentFuture<T> {
    /// Blocks until the result is there, at most `timeout`, and takes it (a
    /// second call gets [`Error::InvalidState`]).
    ///
    /// Must not be called on the loop's own thread (it would wait forever).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if the timeout passed (the work goes on); the
    /// work's own error; [`Error::Cancelled`] after [`cancel`](Self::cancel);
    /// [`Error::Closed`] if the loop closed before running it.
    pub fn result(&self, timeout: Option<Duration>) -> Result<T> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.shared.lock();
        loop {
            if let Some(r) = st.result.take() {
                return r;
            }
            if st.finished {
                return Err(Error::state("the result was already taken"));
            }
            match deadline {
                None => st = self.shared.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(Error::Timeout);
                    }
                    st = self
                        .shared
                        .cv
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    /// True once the work finished, failed or was cancelled.
    pub fn done(&self) -> bool {
        self.shared.lock().finished
    }

    /// Cancels the work: its future is dropped on the loop at its next turn.
    /// False if it is already done.
    pub fn cancel(&self) -> bool {
        let w = {
            let mut st = self.shared.lock();
            if st.finished {
                return false;
            }
            st.cancel_requested = true;
            st.cancel_waker.take()
        };
        if let Some(w) = w {
            w.wake();
        }
        true
    }
}

impl<T> fmt::Debug for ConcurrentFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<ConcurrentFuture done={}>", self.done())
    }
}

/// Completes the shared state with `Closed` if the submitted callback is
/// dropped without running (the loop closed first).
struct CloseGuard<T>(Arc<CfShared<T>>);

impl<T> Drop for CloseGuard<T> {
    fn drop(&mut self) {
        self.0.finish(Err(Error::closed(
            "the event loop closed before running the work",
        )));
    }
}

impl LoopHandle {
    /// Runs the future that `make` builds as a task on the loop, from any
    /// thread, and returns a handle to wait on or cancel it.
    ///
    /// Equivalent to `asyncio.run_coroutine_threadsafe`. `make` runs on the
    /// loop's thread, so the future itself need not be `Send`.
    ///
    /// A panic in the work (in `make` or while polling its future) is
    /// the concurrent future's result, [`Error::Panic`] with the message;
    /// it is not reported to the loop's exception handler as well (as in
    /// asyncio, where the exception moves to the concurrent future), but
    /// with [`UnhandledPanic::StopLoop`](crate::UnhandledPanic::StopLoop)
    /// it stops the loop, as a task's panic does.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the loop is closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use ringloop::prelude::*;
    /// let lp = EventLoop::new().unwrap();
    /// let h = lp.handle();
    /// let t = std::thread::spawn(move || {
    ///     let f = h.run_coroutine_threadsafe(|| async { 6 * 7 }).unwrap();
    ///     let v = f.result(None).unwrap();
    ///     h.call_soon_threadsafe(|| get_running_loop().unwrap().stop()).unwrap();
    ///     v
    /// });
    /// lp.run_forever().unwrap();
    /// assert_eq!(t.join().unwrap(), 42);
    /// lp.close().unwrap();
    /// ```
    pub fn run_coroutine_threadsafe<M, Fut>(&self, make: M) -> Result<ConcurrentFuture<Fut::Output>>
    where
        M: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        let shared = Arc::new(CfShared {
            state: Mutex::new(CfState {
                result: None,
                finished: false,
                cancel_requested: false,
                cancel_waker: None,
            }),
            cv: Condvar::new(),
        });
        let guard = CloseGuard(shared.clone());
        self.call_soon_threadsafe(move || {
            let shared = guard.0.clone();
            let lp = match get_running_loop() {
                Ok(lp) => lp,
                Err(e) => {
                    shared.finish(Err(e));
                    return;
                }
            };
            let fut = match catch_unwind(AssertUnwindSafe(make)) {
                Ok(fut) => fut,
                Err(p) => {
                    let msg = panic_message(&*p);
                    lp.note_panic(&msg);
                    shared.finish(Err(Error::Panic(msg)));
                    return;
                }
            };
            lp.create_task(async move {
                let mut fut = pin!(Some(fut));
                let r = std::future::poll_fn(|cx| {
                    {
                        let mut st = shared.lock();
                        if st.cancel_requested {
                            return Poll::Ready(Err(Error::Cancelled(None)));
                        }
                        st.cancel_waker = Some(cx.waker().clone());
                    }
                    // A panic in the work is its result (asyncio sets the
                    // exception on the concurrent future), not a closed loop.
                    let polled = catch_unwind(AssertUnwindSafe(|| {
                        fut.as_mut().as_pin_mut().map(|f| f.poll(cx))
                    }));
                    match polled {
                        Ok(Some(Poll::Ready(v))) => Poll::Ready(Ok(v)),
                        Ok(_) => Poll::Pending,
                        Err(p) => {
                            let msg = panic_message(&*p);
                            if let Ok(lp) = get_running_loop() {
                                lp.note_panic(&msg);
                            }
                            Poll::Ready(Err(Error::Panic(msg)))
                        }
                    }
                })
                .await;
                fut.set(None);
                shared.finish(r);
                drop(guard);
            });
        })?;
        Ok(ConcurrentFuture { shared })
    }
}
