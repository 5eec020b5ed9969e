//! One loop per core in one call: [`run_per_core`] runs a main task on each
//! of N threads, each with a loop of its own, and [`serve_per_core`] /
//! [`serve_per_core_streams`] serve one port from every loop with
//! `SO_REUSEPORT` (DESIGN.md invariant 6: more cores = more loops).
//!
//! The loops stay independent (each is `!Send`, on its own thread); what
//! they share is `Send + Sync`: their [`LoopHandle`]s, a [`PerCoreStop`],
//! and the first error. A stop, an error, a panic or Ctrl-C on one loop
//! reaches every other through its handle (`call_soon_threadsafe`), where
//! it cancels that loop's main task, as asyncio's runner does, or resolves
//! [`PerCoreContext::stopped`] for a main task that shuts down by itself.
#![forbid(unsafe_code)]

mod serve;
pub use serve::{serve_per_core, serve_per_core_streams};

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::base_loop::{EventLoop, LoopHandle, default_backend};
use crate::driver::Backend;
use crate::driver::sighub::{self, Subscription};
use crate::error::{Error, Result, panic_message};
use crate::events::AbstractEventLoop;
use crate::futures::LoopFuture;
use crate::runners::{EXECUTOR_SHUTDOWN_TIMEOUT, SigintHandling, cancel_all_tasks};
use crate::tasks::TaskRef;

/// The CPUs this process may run on (`sched_getaffinity(2)` of the calling
/// thread), in ascending order.
///
/// # Errors
///
/// [`Error::Io`] if `sched_getaffinity` fails.
///
/// # Examples
///
/// ```
/// let cpus = ringloop::allowed_cpus().unwrap();
/// assert!(!cpus.is_empty());
/// ```
pub fn allowed_cpus() -> Result<Vec<usize>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map_err(std::io::Error::from)?;
    Ok((0..nix::sched::CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

/// Pins the calling thread to `cpu`.
fn pin_current_thread(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(std::io::Error::from)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(|e| {
        Error::from(std::io::Error::other(format!(
            "cannot pin a loop thread to CPU {cpu}: {e}"
        )))
    })
}

/// Options of [`run_per_core`] and [`serve_per_core`].
///
/// asyncio has no counterpart (one loop per thread is the rule there too,
/// but starting them is left to the program).
#[derive(Debug, Clone)]
pub struct PerCoreOptions {
    /// How many loops (threads); 0 (the default): one per CPU in
    /// [`cpus`](Self::cpus).
    pub threads: usize,
    /// The CPUs to use; empty (the default): every CPU this process may run
    /// on ([`allowed_cpus`]). Loop `i` gets `cpus[i % cpus.len()]`. A CPU
    /// outside the allowed set is an [`Error::InvalidArgument`].
    pub cpus: Vec<usize>,
    /// Pin each loop's thread to its CPU (default: off, the scheduler
    /// places the threads within the allowed set).
    pub pin: bool,
    /// The backend of every loop; `None`: [`default_backend`] (the usual
    /// probe and `RINGLOOP_BACKEND`), decided once for all loops.
    pub backend: Option<Backend>,
    /// Debug mode of every loop (`None`: as `RINGLOOP_DEBUG` says).
    pub debug: Option<bool>,
    /// When Ctrl-C is handled (as [`Runner::sigint`](crate::Runner::sigint);
    /// `Auto`: when called on the process's main thread).
    pub sigint: SigintHandling,
    /// A stop handle made beforehand (for another thread to stop the run
    /// or wait until it serves); `None`: a fresh one, reachable through
    /// [`PerCoreContext::stop_handle`].
    pub stop: Option<PerCoreStop>,
    /// [`serve_per_core`] only: the `listen()` backlog of each loop's
    /// socket (default 100, asyncio's).
    pub backlog: i32,
    /// [`serve_per_core`] only: after a stop, how long each loop lets its
    /// clients finish (their buffered data sent) before it aborts them
    /// (default 5 s).
    pub shutdown_grace: Duration,
}

impl Default for PerCoreOptions {
    fn default() -> Self {
        PerCoreOptions {
            threads: 0,
            cpus: Vec::new(),
            pin: false,
            backend: None,
            debug: None,
            sigint: SigintHandling::Auto,
            stop: None,
            backlog: 100,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Why a run is stopping.
#[derive(Clone)]
pub(super) enum Reason {
    /// [`PerCoreStop::stop`].
    Stop,
    /// A loop failed (error, panic, Ctrl-C as [`Error::Interrupted`]).
    Failed(Error),
}

#[derive(Default)]
struct StopState {
    reason: Option<Reason>,
    /// The loops of the run this handle serves (empty before they exist
    /// and after the run).
    handles: Vec<LoopHandle>,
    /// A run took this handle.
    used: bool,
    /// The run is over.
    ended: bool,
    /// Loops that serve (`serve_per_core`), and their addresses.
    serving: usize,
    addrs: Vec<SocketAddr>,
    loops: usize,
}

#[derive(Default)]
struct StopInner {
    st: Mutex<StopState>,
    changed: Condvar,
}

/// A `Send + Sync` handle that stops a [`run_per_core`] /
/// [`serve_per_core`] run from anywhere (another thread, a signal handler
/// callback, a main task).
///
/// [`stop`](Self::stop) cancels every loop's main task (or resolves
/// [`PerCoreContext::stopped`] for one that awaits it); `run_per_core` then
/// returns the cancellations' [`Error::Cancelled`] (unless every main task
/// had finished), `serve_per_core` returns `Ok` after its graceful
/// shutdown. One handle serves one run; once stopped it stays stopped.
///
/// # Examples
///
/// ```
/// use ringloop::{PerCoreOptions, PerCoreStop, run_per_core};
/// let stop = PerCoreStop::new();
/// let s2 = stop.clone();
/// std::thread::spawn(move || s2.stop());
/// let opts = PerCoreOptions { threads: 2, stop: Some(stop), ..Default::default() };
/// let r = run_per_core(opts, |_ctx| async {
///     ringloop::sleep(std::time::Duration::from_secs(60)).await?;
///     Ok(())
/// });
/// assert!(matches!(r, Err(ringloop::Error::Cancelled(_))));
/// ```
#[derive(Clone, Default)]
pub struct PerCoreStop(Arc<StopInner>);

impl PerCoreStop {
    /// A handle, not stopped, for one run.
    pub fn new() -> PerCoreStop {
        PerCoreStop::default()
    }

    fn lock(&self) -> MutexGuard<'_, StopState> {
        self.0.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the run (now, or at its start if it has not started).
    /// Idempotent; after the run it does nothing.
    pub fn stop(&self) {
        self.begin_stop(Reason::Stop);
    }

    /// True once [`stop`](Self::stop) was called or a loop failed.
    pub fn is_stopped(&self) -> bool {
        self.lock().reason.is_some()
    }

    /// Waits (blocking the calling thread, at most `timeout`) until every
    /// loop of a [`serve_per_core`] run listens, and returns the addresses
    /// they share; `None` if the time passed or the run ended first. Not
    /// for a loop thread (it would block the loop).
    pub fn wait_serving(&self, timeout: Duration) -> Option<Vec<SocketAddr>> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if st.loops > 0 && st.serving == st.loops {
                return Some(st.addrs.clone());
            }
            if st.ended {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = self
                .0
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Records the first reason and tells every loop (the first reason
    /// wins; later ones are ignored).
    fn begin_stop(&self, why: Reason) {
        let handles = {
            let mut st = self.lock();
            if st.reason.is_some() || st.ended {
                return;
            }
            st.reason = Some(why);
            self.0.changed.notify_all();
            st.handles.clone()
        };
        broadcast(&handles);
    }

    fn fail(&self, e: Error) {
        self.begin_stop(Reason::Failed(e));
    }

    /// Takes the handle for a run of `loops` loops.
    fn claim(&self, loops: usize) -> Result<()> {
        let mut st = self.lock();
        if st.used {
            return Err(Error::InvalidArgument(
                "this PerCoreStop already served a run; make a new one".into(),
            ));
        }
        st.used = true;
        st.loops = loops;
        Ok(())
    }

    /// Every loop exists: a stop from now on reaches them (one that came
    /// before is sent now).
    fn attach(&self, handles: &[LoopHandle]) {
        let stopping = {
            let mut st = self.lock();
            st.handles = handles.to_vec();
            st.reason.is_some()
        };
        if stopping {
            broadcast(handles);
        }
    }

    pub(super) fn serving(&self, addrs: &[SocketAddr]) {
        let mut st = self.lock();
        st.serving += 1;
        st.addrs = addrs.to_vec();
        self.0.changed.notify_all();
    }

    fn end(&self) -> Option<Reason> {
        let mut st = self.lock();
        st.ended = true;
        st.handles.clear();
        self.0.changed.notify_all();
        st.reason.clone()
    }
}

impl fmt::Debug for PerCoreStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        write!(
            f,
            "PerCoreStop(stopped={}, loops={}, ended={})",
            st.reason.is_some(),
            st.handles.len(),
            st.ended
        )
    }
}

/// Asks every loop to stop, on its own thread.
fn broadcast(handles: &[LoopHandle]) {
    for h in handles {
        // (A loop that already finished is closed: nothing to stop.)
        let _ = h.call_soon_threadsafe(apply_stop);
    }
}

/// What a loop thread of a run keeps for the stop callback.
struct LoopSlot {
    lp: EventLoop,
    main: Option<TaskRef>,
    /// Made by [`PerCoreContext::stopped`]: a stop resolves it instead of
    /// cancelling the main task.
    stopped: Option<LoopFuture<()>>,
    stop_seen: bool,
}

thread_local! {
    /// The per-core run this thread's loop belongs to (one loop per thread).
    static SLOT: RefCell<Option<LoopSlot>> = const { RefCell::new(None) };
}

/// On a loop thread: the run is stopping.
fn apply_stop() {
    let (main, fut) = SLOT.with_borrow_mut(|s| match s {
        Some(s) if !s.stop_seen => {
            s.stop_seen = true;
            match &s.stopped {
                Some(f) => (None, Some(f.clone())),
                None => (s.main.clone(), None),
            }
        }
        _ => (None, None),
    });
    if let Some(f) = fut {
        let _ = f.set_result(());
    }
    if let Some(t) = main {
        t.cancel(Some("per-core run stopping"));
    }
}

/// What each main task is given: its index, its CPU, every loop's
/// [`LoopHandle`], and the run's [`PerCoreStop`].
pub struct PerCoreContext {
    index: usize,
    cpu: Option<usize>,
    handles: Arc<[LoopHandle]>,
    stop: PerCoreStop,
}

impl PerCoreContext {
    /// This loop's index, `0..count()`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many loops the run has.
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// The CPU this loop's thread is pinned to (`None` unless
    /// [`PerCoreOptions::pin`]).
    pub fn cpu(&self) -> Option<usize> {
        self.cpu
    }

    /// Every loop's handle, in index order (this loop's own included, at
    /// [`index`](Self::index)). A sibling whose main task has finished
    /// closes its loop (the others run on): its handle then gives
    /// [`Error::Closed`].
    pub fn handles(&self) -> &[LoopHandle] {
        &self.handles
    }

    /// The other loops' handles, with their indexes.
    pub fn siblings(&self) -> impl Iterator<Item = (usize, &LoopHandle)> {
        let me = self.index;
        self.handles
            .iter()
            .enumerate()
            .filter(move |(i, _)| *i != me)
    }

    /// The run's stop handle (`Send`: give it to any thread).
    pub fn stop_handle(&self) -> PerCoreStop {
        self.stop.clone()
    }

    /// Resolves when the run stops (a [`PerCoreStop::stop`], another
    /// loop's failure, Ctrl-C). Once a main task has asked for it, a stop
    /// no longer cancels that main task: it resolves this future and the
    /// task shuts down in its own time (as [`serve_per_core`] does: close
    /// the server, let the clients finish).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] outside the loop thread of a per-core run
    /// (in `make_main` or the main task, or what they run).
    pub fn stopped(&self) -> Result<LoopFuture<()>> {
        SLOT.with_borrow_mut(|s| {
            let Some(s) = s else {
                return Err(Error::state(
                    "PerCoreContext::stopped() is for a loop thread of a per-core run",
                ));
            };
            let lp = s.lp.clone();
            let f = s.stopped.get_or_insert_with(|| lp.create_future()).clone();
            if s.stop_seen && !f.done() {
                let _ = f.set_result(());
            }
            Ok(f)
        })
    }
}

impl fmt::Debug for PerCoreContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PerCoreContext(index={} of {}, cpu={:?})",
            self.index,
            self.handles.len(),
            self.cpu
        )
    }
}

/// What one run's loops are given, fixed before any thread starts.
pub(super) struct Plan {
    /// Per loop: the CPU it is pinned to.
    pub(super) cpus: Vec<Option<usize>>,
    backend: Backend,
    debug: Option<bool>,
    sigint: bool,
    stop: PerCoreStop,
}

pub(super) fn plan(opts: &PerCoreOptions) -> Result<Plan> {
    if crate::base_loop::running_core().is_some() {
        return Err(Error::state(
            "a per-core run cannot be started from a running loop",
        ));
    }
    let allowed = allowed_cpus()?;
    let cpus = if opts.cpus.is_empty() {
        allowed.clone()
    } else {
        for c in &opts.cpus {
            if !allowed.contains(c) {
                return Err(Error::InvalidArgument(format!(
                    "CPU {c} is not one this process may run on (sched_getaffinity: {allowed:?})"
                )));
            }
        }
        opts.cpus.clone()
    };
    let n = if opts.threads == 0 {
        cpus.len()
    } else {
        opts.threads
    };
    let backend = match opts.backend {
        Some(b) => b,
        None => default_backend()?,
    };
    let want = match opts.sigint {
        SigintHandling::Never => false,
        SigintHandling::Always => true,
        SigintHandling::Auto => crate::driver::sys::on_main_thread(),
    };
    let stop = opts.stop.clone().unwrap_or_default();
    Ok(Plan {
        cpus: (0..n)
            .map(|i| opts.pin.then(|| cpus[i % cpus.len()]))
            .collect(),
        backend,
        debug: opts.debug,
        // (Decided once: the loops' own subscriptions make the hub handle
        // SIGINT, which `is_default` would then deny to the next loop.)
        sigint: want && sighub::is_default(libc::SIGINT),
        stop,
    })
}

/// Runs one main task per loop, each loop on a thread of its own, and
/// returns their results in index order.
///
/// `make_main` is called on each loop's thread, with that loop running
/// nowhere yet and every loop already made, so its [`PerCoreContext`] has
/// every sibling's [`LoopHandle`]; the future it returns is that loop's main
/// task (it may be `!Send`: it is made where it runs). Each loop is closed
/// as [`Runner::close`](crate::Runner::close) closes its loop (leftover tasks
/// cancelled, the default executor shut down).
///
/// The first error a main task returns (or its panic, as
/// [`Error::Panic`]) stops the others: through their handles, each main
/// task is cancelled (see [`PerCoreContext::stopped`] for one that would
/// rather shut down by itself), and that first error is returned. Ctrl-C
/// (SIGINT, handled as [`PerCoreOptions::sigint`] says, through the
/// process's signal hub) stops every loop the same way and returns
/// [`Error::Interrupted`]; a second Ctrl-C meanwhile ends the process, as
/// with [`Runner`](crate::Runner). A loop that handles SIGINT itself
/// (`add_signal_handler`) leaves Ctrl-C to its handler, but the other
/// loops still stop the run on it: a program that handles Ctrl-C itself
/// sets `sigint: SigintHandling::Never` and calls [`PerCoreStop::stop`].
///
/// asyncio has no counterpart; each loop is what `asyncio.run` would make.
///
/// # Errors
///
/// [`Error::InvalidArgument`] for a CPU outside the allowed set or a
/// reused [`PerCoreStop`]; errors making a loop, pinning a thread or
/// starting it; the first failure of a main task; [`Error::Interrupted`]
/// after Ctrl-C; [`Error::Cancelled`] after [`PerCoreStop::stop`] if a
/// main task had not finished.
///
/// # Examples
///
/// ```
/// use ringloop::{PerCoreOptions, run_per_core};
/// let opts = PerCoreOptions { threads: 2, ..Default::default() };
/// let out = run_per_core(opts, |ctx| async move {
///     // Made on its own loop's thread, knowing every sibling's handle.
///     assert!(ringloop::get_running_loop().is_ok());
///     Ok((ctx.index(), ctx.siblings().count()))
/// })?;
/// assert_eq!(out, [(0, 1), (1, 1)]);
/// # Ok::<(), ringloop::Error>(())
/// ```
pub fn run_per_core<T, M, Fut>(opts: PerCoreOptions, make_main: M) -> Result<Vec<T>>
where
    M: Fn(PerCoreContext) -> Fut + Send + Sync,
    Fut: Future<Output = Result<T>> + 'static,
    T: Send + 'static,
{
    let plan = plan(&opts)?;
    let (results, reason) = run_planned(plan, &make_main)?;
    if let Some(Reason::Failed(e)) = reason {
        return Err(e);
    }
    results.into_iter().collect()
}

/// Runs the loops of `plan`; their results, and why the run stopped if it
/// was stopped.
pub(super) fn run_planned<T, M, Fut>(
    plan: Plan,
    make_main: &M,
) -> Result<(Vec<Result<T>>, Option<Reason>)>
where
    M: Fn(PerCoreContext) -> Fut + Send + Sync,
    Fut: Future<Output = Result<T>> + 'static,
    T: Send + 'static,
{
    plan.stop.claim(plan.cpus.len())?;
    let results = run_threads(&plan, make_main);
    let reason = plan.stop.end();
    if matches!(reason, Some(Reason::Failed(Error::Interrupted))) {
        sighub::clear_default_action_next(libc::SIGINT);
    }
    Ok((results, reason))
}

type Ready = (usize, Result<LoopHandle>);

fn run_threads<T, M, Fut>(plan: &Plan, make_main: &M) -> Vec<Result<T>>
where
    M: Fn(PerCoreContext) -> Fut + Send + Sync,
    Fut: Future<Output = Result<T>> + 'static,
    T: Send + 'static,
{
    let n = plan.cpus.len();
    std::thread::scope(|s| {
        let (ready_tx, ready_rx) = mpsc::channel::<Ready>();
        let mut gos = Vec::with_capacity(n);
        let mut joins = Vec::with_capacity(n);
        let mut spawn_error = None;
        for i in 0..n {
            let (go_tx, go_rx) = mpsc::channel::<Option<Arc<[LoopHandle]>>>();
            let ready = ready_tx.clone();
            let (cpu, backend, debug, sigint, stop) = (
                plan.cpus[i],
                plan.backend,
                plan.debug,
                plan.sigint,
                plan.stop.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("ringloop-core-{i}"))
                .spawn_scoped(s, move || {
                    let body = std::panic::AssertUnwindSafe(|| {
                        loop_thread(
                            i, cpu, backend, debug, sigint, &ready, go_rx, &stop, make_main,
                        )
                    });
                    let r = std::panic::catch_unwind(body)
                        .unwrap_or_else(|p| Err(Error::Panic(panic_message(&*p))));
                    if let Err(e) = &r {
                        stop.fail(e.clone());
                        // (Read only if it failed before it said it was
                        // ready: the others wait for this loop until then.)
                        let _ = ready.send((i, Err(e.clone())));
                    }
                    r
                });
            match spawned {
                Ok(j) => {
                    gos.push(go_tx);
                    joins.push(j);
                }
                Err(e) => {
                    spawn_error = Some(Error::from(e));
                    break;
                }
            }
        }
        drop(ready_tx);
        // Every loop made (or the first failure): only then do the main
        // tasks start, each knowing all its siblings.
        let mut handles: Vec<Option<LoopHandle>> = vec![None; joins.len()];
        let mut failed = spawn_error;
        while failed.is_none() && handles.iter().any(Option::is_none) {
            match ready_rx.recv() {
                Ok((i, Ok(h))) => handles[i] = Some(h),
                Ok((_, Err(e))) => failed = Some(e),
                Err(_) => failed = Some(Error::state("a loop thread ended early")),
            }
        }
        let go = match failed {
            None => {
                let hs: Arc<[LoopHandle]> = handles.into_iter().map(Option::unwrap).collect();
                plan.stop.attach(&hs);
                Some(hs)
            }
            Some(e) => {
                plan.stop.fail(e);
                None
            }
        };
        for g in &gos {
            let _ = g.send(go.clone());
        }
        joins
            .into_iter()
            .map(|j| {
                j.join()
                    .unwrap_or_else(|p| Err(Error::Panic(panic_message(&*p))))
            })
            .collect()
    })
}

#[allow(clippy::too_many_arguments)]
fn loop_thread<T, M, Fut>(
    index: usize,
    cpu: Option<usize>,
    backend: Backend,
    debug: Option<bool>,
    sigint: bool,
    ready: &mpsc::Sender<Ready>,
    go: mpsc::Receiver<Option<Arc<[LoopHandle]>>>,
    stop: &PerCoreStop,
    make_main: &M,
) -> Result<T>
where
    M: Fn(PerCoreContext) -> Fut,
    Fut: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    // Pinned before the loop is made: the ring and its buffers are set up
    // (and first touched) on the CPU that will use them.
    if let Some(c) = cpu {
        pin_current_thread(c)?;
    }
    let lp = EventLoop::with_backend(backend)?;
    if let Some(d) = debug {
        lp.set_debug(d);
    }
    let _ = ready.send((index, Ok(lp.handle())));
    let Ok(Some(handles)) = go.recv() else {
        lp.close()?;
        return Err(Error::Cancelled(Some(
            "a sibling loop failed to start".into(),
        )));
    };
    SLOT.set(Some(LoopSlot {
        lp: lp.clone(),
        main: None,
        stopped: None,
        stop_seen: false,
    }));
    let out = run_main(&lp, index, cpu, handles, sigint, stop, make_main);
    close_loop(&lp);
    SLOT.set(None);
    let closed = lp.close();
    out.and_then(|v| closed.map(|()| v))
}

fn run_main<T, M, Fut>(
    lp: &EventLoop,
    index: usize,
    cpu: Option<usize>,
    handles: Arc<[LoopHandle]>,
    sigint: bool,
    stop: &PerCoreStop,
    make_main: &M,
) -> Result<T>
where
    M: Fn(PerCoreContext) -> Fut,
    Fut: Future<Output = Result<T>> + 'static,
    T: 'static,
{
    let ctx = PerCoreContext {
        index,
        cpu,
        handles,
        stop: stop.clone(),
    };
    // (A panic here fails the run as a main task's panic would, and this
    // loop is still closed properly.)
    let fut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| make_main(ctx)))
        .map_err(|p| Error::Panic(panic_message(&*p)))?;
    let task = lp.create_task(fut);
    SLOT.with_borrow_mut(|s| {
        if let Some(s) = s {
            s.main = Some(task.as_ref());
        }
    });
    let guard = if sigint {
        watch_sigint(lp, stop)?
    } else {
        None
    };
    let out = lp.run_until_complete(task);
    if let Some(g) = &guard {
        lp.remove_reader(g.fd());
    }
    drop(guard);
    out.and_then(|r| r).and_then(|r| r)
}

/// Ctrl-C on this loop: the hub writes this subscription's eventfd, and the
/// first SIGINT stops the whole run (the next one ends the process).
fn watch_sigint(lp: &EventLoop, stop: &PerCoreStop) -> Result<Option<Rc<Subscription>>> {
    let Ok(sub) = Subscription::new() else {
        return Ok(None);
    };
    if sub.add(libc::SIGINT).is_err() {
        return Ok(None);
    }
    let sub = Rc::new(sub);
    let (s2, lp2, stop2) = (sub.clone(), lp.clone(), stop.clone());
    let seen = Cell::new(sighub::count(libc::SIGINT));
    lp.add_reader(sub.fd(), move || {
        s2.drain();
        let n = sighub::count(libc::SIGINT);
        if n == seen.replace(n) || lp2.has_signal_handler(libc::SIGINT) {
            return;
        }
        if !stop2.is_stopped() {
            sighub::default_action_next(libc::SIGINT);
            stop2.fail(Error::Interrupted);
        }
    })?;
    Ok(Some(sub))
}

/// As [`Runner::close`](crate::Runner::close), before `lp.close()`.
fn close_loop(lp: &EventLoop) {
    cancel_all_tasks(lp);
    let l2 = lp.clone();
    let _ = lp.run_until_complete(async move {
        l2.shutdown_default_executor(Some(EXECUTOR_SHUTDOWN_TIMEOUT))
            .await
    });
}
