//! The event loop: ready queue, timer heap, tasks, `run_once`, lifecycle,
//! exception handling and debug mode (asyncio's `BaseEventLoop`).
#![forbid(unsafe_code)]

mod api;
pub(crate) mod io;
pub(crate) mod pipes;
mod readers;
mod remote;
mod sendfile;
mod signals;
pub(crate) mod sock;
mod timers;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::os::fd::RawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use slab::Slab;

pub use remote::LoopHandle;
use remote::RemoteQueue;
pub(crate) use remote::{Remote, TaskWaker};
use timers::TimerHeap;

use crate::driver::{Backend, Driver, DriverRef, DriverStats, probe};
use crate::error::{Error, Result, panic_message};
use crate::events::{
    CallOnce, CbSlot, ExceptionContext, ExceptionHandler, Handle, HandleInner, TimerHandle, ticks,
};
use crate::tasks::{RawTask, Task, TaskCell, TaskHeader, TaskRef};

/// How long `close` waits for cancelled io_uring ops before leaking them.
const CLOSE_DRAIN_BOUND: Duration = Duration::from_secs(1);

pub(crate) enum Ready {
    Callback(Handle),
    Task(u32, u32),
}

/// What a loop does when a callback, a protocol callback or a task panics.
///
/// asyncio logs an exception that escapes a callback and goes on; so does
/// ringloop by default ([`Ignore`](Self::Ignore)), reporting the panic
/// through the exception handler. A program whose callback was to call
/// `stop()` then runs on; [`StopLoop`](Self::StopLoop) (tokio's
/// `unhandled_panic = "shutdown_runtime"`) stops the loop at the first
/// panic and returns it from `run_forever` / `run_until_complete` as
/// [`Error::Panic`]. A panic in a task counts even if its handle is kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnhandledPanic {
    /// Report the panic through the exception handler and go on (asyncio's way).
    #[default]
    Ignore,
    /// Report it, stop the loop, and return it from the call that runs the loop.
    StopLoop,
}

/// A transport, told when its loop closes under it: it lets go of its
/// protocol, its ops and its socket without callbacks (the peer sees EOF),
/// which also breaks the protocol ⇄ transport cycle of a connection nobody
/// closed.
pub(crate) trait LoopClosing {
    fn loop_closing(self: Rc<Self>);
}

/// An fd watcher of `add_reader` / `add_writer`: its task and its live flag.
pub(crate) type Watcher = (TaskRef, Rc<Cell<bool>>);

/// A task slot's reusable waker and the `Arc` behind it (to set its generation).
type SlotWaker = (Arc<TaskWaker>, Waker);

pub(crate) struct TaskSlot {
    task: Rc<dyn RawTask>,
    generation: u32,
    scheduled: bool,
}

/// The loop's state, shared by its handles (`EventLoop` is an `Rc` of it).
pub(crate) struct Core {
    id: u64,
    driver: DriverRef,
    backend: Backend,
    ready: RefCell<VecDeque<Ready>>,
    /// Tasks to step once more at the end of this turn (transport writers:
    /// what a turn wrote is queued for the very next driver wait).
    turn_end: RefCell<Vec<Rc<dyn crate::driver::Notify>>>,
    /// `turn_end`'s other buffer (swapped in each turn, so no allocation).
    turn_end_spare: RefCell<Vec<Rc<dyn crate::driver::Notify>>>,
    /// Buffer for the driver's completed handlers (reused each turn).
    notified: RefCell<Vec<crate::driver::Notified>>,
    timers: RefCell<TimerHeap>,
    tasks: RefCell<Slab<TaskSlot>>,
    /// The waker of each task slot, reused by the slot's tasks.
    slot_wakers: RefCell<Vec<Option<SlotWaker>>>,
    next_generation: Cell<u32>,
    next_task_id: Cell<u64>,
    remote: Arc<Remote>,
    running: Cell<bool>,
    stopping: Cell<bool>,
    closed: Cell<bool>,
    debug: Cell<bool>,
    eager: Cell<bool>,
    /// Called with each new (non-internal) task before its first step.
    task_hook: RefCell<Option<crate::tasks::TaskHook>>,
    executor: RefCell<Option<crate::executor::ThreadPool>>,
    executor_shut: Cell<bool>,
    slow_callback: Cell<Duration>,
    handler: RefCell<Option<ExceptionHandler>>,
    current: RefCell<Option<TaskRef>>,
    /// fd watchers of `add_reader` / `add_writer`: (fd, writable) -> task.
    watchers: RefCell<HashMap<(RawFd, bool), Watcher>>,
    /// Live transports, told at close ([`LoopClosing`]).
    transports: RefCell<Slab<Weak<dyn LoopClosing>>>,
    unhandled_panic: Cell<UnhandledPanic>,
    /// The first panic that stops the loop ([`UnhandledPanic::StopLoop`]).
    panicked: RefCell<Option<String>>,
    /// `add_signal_handler`'s handlers and hub subscription (`signals.rs`).
    signals: RefCell<Option<signals::LoopSignals>>,
    me: Weak<Core>,
}

thread_local! {
    static RUNNING: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

static NEXT_LOOP_ID: AtomicU64 = AtomicU64::new(1);

/// The core of the loop running on this thread.
pub(crate) fn running_core() -> Option<Rc<Core>> {
    RUNNING.try_with(|r| r.borrow().clone()).ok().flatten()
}

pub(crate) fn running_loop() -> Option<EventLoop> {
    running_core().map(EventLoop::from_core)
}

/// True on the thread where loop `loop_id` is running.
pub(crate) fn on_loop_thread(loop_id: u64) -> bool {
    RUNNING
        .try_with(|r| r.borrow().as_ref().is_some_and(|c| c.id == loop_id))
        .unwrap_or(false)
}

/// Schedules a task if loop `loop_id` is running on this thread; false otherwise.
pub(crate) fn schedule_local(loop_id: u64, idx: u32, generation: u32) -> bool {
    RUNNING
        .try_with(|r| match &*r.borrow() {
            Some(core) if core.id == loop_id => {
                core.schedule_task(idx, generation);
                true
            }
            _ => false,
        })
        .unwrap_or(false)
}

impl Core {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// What other threads reach (task wakers carry it).
    pub(crate) fn remote(&self) -> &Arc<Remote> {
        &self.remote
    }

    pub(crate) fn is_closed_flag(&self) -> bool {
        self.closed.get()
    }

    pub(crate) fn timer_cancelled(&self) {
        if let Ok(mut t) = self.timers.try_borrow_mut() {
            t.note_cancelled();
        }
    }

    pub(crate) fn call_soon<F: FnOnce() + 'static>(
        &self,
        cb: F,
        label: &'static &'static str,
    ) -> Handle {
        let h = Handle::new(cb, label);
        self.ready
            .borrow_mut()
            .push_back(Ready::Callback(h.clone()));
        h
    }

    pub(crate) fn schedule_task(&self, idx: u32, generation: u32) {
        let mut tasks = self.tasks.borrow_mut();
        if let Some(slot) = tasks.get_mut(idx as usize) {
            if slot.generation == generation && !slot.scheduled {
                slot.scheduled = true;
                self.ready
                    .borrow_mut()
                    .push_back(Ready::Task(idx, generation));
            }
        }
    }

    pub(crate) fn current_task(&self) -> Option<TaskRef> {
        self.current.borrow().clone()
    }

    pub(crate) fn all_tasks(&self) -> Vec<TaskRef> {
        self.tasks
            .borrow()
            .iter()
            .filter(|(_, s)| !s.task.header().internal)
            .map(|(_, s)| TaskRef(s.task.clone()))
            .collect()
    }

    fn spawn<F>(&self, fut: F, name: Option<String>, internal: bool) -> Task<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let generation = self.next_generation.get();
        self.next_generation.set(generation.wrapping_add(1));
        let id = self.next_task_id.get();
        self.next_task_id.set(id + 1);
        let mut tasks = self.tasks.borrow_mut();
        let idx = tasks.vacant_key() as u32;
        let header = TaskHeader::new(id, name, (idx, generation), self.me.clone(), internal);
        let cell = TaskCell::new(header, fut);
        // Eager start (asyncio's eager_task_factory): the first step runs
        // now, inside create_task, when this loop is the one running.
        let eager = self.eager.get() && !internal && self.running.get();
        tasks.insert(TaskSlot {
            task: cell.clone(),
            generation,
            scheduled: !eager,
        });
        drop(tasks);
        // The task hook (`set_task_factory`): one branch when none is set.
        if !internal {
            let hook = self.task_hook.borrow().clone();
            if let Some(hook) = hook {
                hook(&TaskRef(cell.clone()));
            }
        }
        if eager {
            self.run_task(idx, generation);
        } else {
            self.ready
                .borrow_mut()
                .push_back(Ready::Task(idx, generation));
        }
        Task::from_cell(cell)
    }

    /// A panic was caught (callback, protocol, task): with
    /// [`UnhandledPanic::StopLoop`] the loop stops and returns the first one.
    pub(crate) fn note_panic(&self, msg: &str) {
        if self.unhandled_panic.get() == UnhandledPanic::StopLoop {
            let mut p = self.panicked.borrow_mut();
            if p.is_none() {
                *p = Some(msg.to_owned());
            }
            self.stopping.set(true);
        }
    }

    /// Registers a live transport, to be told if the loop closes under it;
    /// returns the key for [`unregister_transport`](Self::unregister_transport).
    pub(crate) fn register_transport(&self, t: Weak<dyn LoopClosing>) -> usize {
        self.transports.borrow_mut().insert(t)
    }

    /// The transport is gone (connection lost): the loop need not tell it.
    pub(crate) fn unregister_transport(&self, key: usize) {
        self.transports.borrow_mut().try_remove(key);
    }

    /// Tells `h` [`Event::TurnEnd`](crate::driver::Event) at the end of this
    /// loop turn (the caller keeps its own flag so it asks once per turn):
    /// the one turn-end mechanism, which writers flush through.
    pub(crate) fn call_at_turn_end(&self, h: Rc<dyn crate::driver::Notify>) {
        self.turn_end.borrow_mut().push(h);
    }

    /// Makes room for `n` more tasks (a `gather` spawning its children):
    /// the task table, the ready queue and the slot wakers grow once
    /// instead of doubling their way up, copying as they go.
    pub(crate) fn reserve_tasks(&self, n: usize) {
        self.tasks.borrow_mut().reserve(n);
        self.ready.borrow_mut().reserve(n);
        self.slot_wakers.borrow_mut().reserve(n);
    }

    /// The waker of task slot `idx`, now carrying `generation` (made on the
    /// slot's first use; the tasks that occupy the slot in turn reuse it).
    /// Called at a task's first step.
    pub(crate) fn slot_waker(&self, idx: u32, generation: u32) -> Waker {
        let mut wakers = self.slot_wakers.borrow_mut();
        if wakers.len() <= idx as usize {
            wakers.resize_with(idx as usize + 1, || None);
        }
        let entry = wakers[idx as usize].get_or_insert_with(|| {
            let tw = Arc::new(TaskWaker {
                idx,
                generation: std::sync::atomic::AtomicU32::new(generation),
                remote: self.remote.clone(),
            });
            (tw.clone(), Waker::from(tw))
        });
        entry.0.generation.store(generation, Ordering::Release);
        entry.1.clone()
    }

    fn run_task(&self, idx: u32, generation: u32) {
        let task = {
            let mut tasks = self.tasks.borrow_mut();
            match tasks.get_mut(idx as usize) {
                Some(s) if s.generation == generation => {
                    s.scheduled = false;
                    s.task.clone()
                }
                _ => return,
            }
        };
        let prev = self.current.replace(Some(TaskRef(task.clone())));
        let t0 = self.debug.get().then(Instant::now);
        let finished = task.clone().step(self);
        self.current.replace(prev);
        if let Some(t0) = t0 {
            self.warn_if_slow(t0, || format!("{:?}", TaskRef(task.clone())));
        }
        if finished {
            let mut tasks = self.tasks.borrow_mut();
            if tasks
                .get(idx as usize)
                .is_some_and(|s| s.generation == generation)
            {
                tasks.remove(idx as usize);
            }
        }
    }

    fn warn_if_slow(&self, t0: Instant, what: impl FnOnce() -> String) {
        let dt = t0.elapsed();
        if dt >= self.slow_callback.get() {
            log::warn!("Executing {} took {:.3} seconds", what(), dt.as_secs_f64());
        }
    }

    fn drain_remote(&self, lp: &EventLoop) {
        // Clear the notifier's flag before looking at the queue, every turn:
        // a notify that raced with the last drain left it set with nothing
        // queued, and the next pusher would then skip the eventfd write
        // while this loop blocks (a lost wake-up).
        self.remote.notifier.clear();
        // A plain load first: the locked swap only when there is work.
        if !self.remote.has_items.load(Ordering::SeqCst)
            || !self.remote.has_items.swap(false, Ordering::AcqRel)
        {
            return;
        }
        let RemoteQueue {
            callbacks, wakes, ..
        } = self.remote.take();
        for (idx, generation) in wakes {
            self.schedule_task(idx, generation);
        }
        for cb in callbacks {
            lp.call_soon_impl(cb, &"threadsafe callback");
        }
    }
}

/// A ringloop event loop, on the proactor or the selector backend.
///
/// Equivalent to asyncio's event loop (`asyncio.EventLoop`); its API is the
/// [`AbstractEventLoop`](crate::AbstractEventLoop) trait (import
/// `ringloop::prelude::*`). Clones are handles to the same loop. A loop
/// belongs to the thread that made it: it is neither `Send` nor `Sync`, so a
/// call from the wrong thread does not compile; other threads use
/// [`LoopHandle`].
///
/// ```compile_fail
/// fn needs_send<T: Send>(_: T) {}
/// needs_send(ringloop::EventLoop::new().unwrap());
/// ```
///
/// Tasks and futures hold handles to their loop, so a loop is not freed by
/// dropping it while tasks exist: call [`close`](crate::AbstractEventLoop::close)
/// (or use [`run`](crate::run), which does).
#[derive(Clone)]
pub struct EventLoop {
    core: Rc<Core>,
}

/// Whether io_uring can run the proactor here, probed once per process.
fn uring_probe() -> &'static std::result::Result<(), String> {
    static PROBE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(probe::probe_uring)
}

/// The backend `EventLoop::new()` uses: `RINGLOOP_BACKEND` if set, else the
/// proactor where io_uring works, else the selector (said once through `log`).
///
/// # Errors
///
/// [`Error::InvalidArgument`] for an unknown `RINGLOOP_BACKEND`;
/// [`Error::Unsupported`] when it forces the proactor and io_uring is unavailable.
pub fn default_backend() -> Result<Backend> {
    match std::env::var("RINGLOOP_BACKEND").as_deref() {
        Ok("proactor") => match uring_probe() {
            Ok(()) => Ok(Backend::Proactor),
            Err(why) => Err(Error::Unsupported(format!(
                "RINGLOOP_BACKEND=proactor, but io_uring is unavailable: {why}"
            ))),
        },
        Ok("selector") => Ok(Backend::Selector),
        Ok("") | Ok("auto") | Err(_) => match uring_probe() {
            Ok(()) => Ok(Backend::Proactor),
            Err(why) => {
                static SAID: AtomicBool = AtomicBool::new(false);
                if !SAID.swap(true, Ordering::Relaxed) {
                    log::info!("ringloop: io_uring unavailable ({why}); using the epoll selector");
                }
                Ok(Backend::Selector)
            }
        },
        Ok(other) => Err(Error::InvalidArgument(format!(
            "RINGLOOP_BACKEND must be proactor, selector or auto, not {other:?}"
        ))),
    }
}

/// Why io_uring cannot run the proactor here, or `Ok` if it can.
pub fn proactor_available() -> std::result::Result<(), String> {
    uring_probe().clone()
}

impl EventLoop {
    /// A loop on the best backend here: see [`default_backend`].
    ///
    /// Equivalent to `asyncio.new_event_loop`.
    ///
    /// # Errors
    ///
    /// As [`default_backend`], or [`Error::Io`] if the kernel refuses the
    /// ring, epoll instance or eventfd.
    pub fn new() -> Result<EventLoop> {
        EventLoop::with_backend(default_backend()?)
    }

    /// A loop on the io_uring proactor.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] if io_uring is unavailable or lacks an opcode or
    /// feature the proactor uses; never falls back to the selector.
    pub fn proactor() -> Result<EventLoop> {
        EventLoop::with_backend(Backend::Proactor)
    }

    /// A loop on the epoll selector.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if epoll or eventfd creation fails.
    pub fn selector() -> Result<EventLoop> {
        EventLoop::with_backend(Backend::Selector)
    }

    /// A loop on the given backend.
    ///
    /// # Errors
    ///
    /// As [`proactor`](Self::proactor) / [`selector`](Self::selector).
    pub fn with_backend(backend: Backend) -> Result<EventLoop> {
        if backend == Backend::Proactor {
            if let Err(why) = uring_probe() {
                return Err(Error::Unsupported(format!(
                    "io_uring is unavailable: {why}"
                )));
            }
        }
        let driver = Driver::new(backend)?;
        let id = NEXT_LOOP_ID.fetch_add(1, Ordering::Relaxed);
        let remote = Arc::new(Remote {
            loop_id: id,
            queue: Mutex::new(RemoteQueue::default()),
            has_items: AtomicBool::new(false),
            notifier: driver.notifier(),
        });
        let debug = std::env::var("RINGLOOP_DEBUG").is_ok_and(|v| !v.is_empty() && v != "0");
        let core = Rc::new_cyclic(|me| Core {
            id,
            driver: Rc::new(RefCell::new(driver)),
            backend,
            ready: RefCell::new(VecDeque::with_capacity(256)),
            turn_end: RefCell::new(Vec::new()),
            turn_end_spare: RefCell::new(Vec::new()),
            notified: RefCell::new(Vec::new()),
            timers: RefCell::new(TimerHeap::default()),
            tasks: RefCell::new(Slab::with_capacity(64)),
            slot_wakers: RefCell::new(Vec::new()),
            next_generation: Cell::new(1),
            next_task_id: Cell::new(1),
            remote,
            running: Cell::new(false),
            stopping: Cell::new(false),
            closed: Cell::new(false),
            debug: Cell::new(debug),
            eager: Cell::new(false),
            task_hook: RefCell::new(None),
            executor: RefCell::new(None),
            executor_shut: Cell::new(false),
            slow_callback: Cell::new(Duration::from_millis(100)),
            handler: RefCell::new(None),
            current: RefCell::new(None),
            watchers: RefCell::new(HashMap::new()),
            transports: RefCell::new(Slab::new()),
            unhandled_panic: Cell::new(UnhandledPanic::Ignore),
            panicked: RefCell::new(None),
            signals: RefCell::new(None),
            me: me.clone(),
        });
        Ok(EventLoop { core })
    }

    pub(crate) fn from_core(core: Rc<Core>) -> EventLoop {
        EventLoop { core }
    }

    /// What the loop does when a callback, a protocol callback or a task
    /// panics (default [`UnhandledPanic::Ignore`], asyncio's behaviour).
    ///
    /// ```
    /// use ringloop::prelude::*;
    /// use ringloop::UnhandledPanic;
    /// let lp = EventLoop::new().unwrap();
    /// lp.set_unhandled_panic(UnhandledPanic::StopLoop);
    /// lp.set_exception_handler(Some(std::rc::Rc::new(|_, _| {}))); // quiet
    /// lp.call_soon(|| panic!("boom"));
    /// let err = lp.run_forever().unwrap_err();
    /// assert!(matches!(err, Error::Panic(m) if m == "boom"));
    /// lp.close().unwrap();
    /// ```
    pub fn set_unhandled_panic(&self, policy: UnhandledPanic) {
        self.core.unhandled_panic.set(policy);
    }

    /// See [`set_unhandled_panic`](Self::set_unhandled_panic).
    pub fn unhandled_panic(&self) -> UnhandledPanic {
        self.core.unhandled_panic.get()
    }

    /// The minimum duration of a callback that debug mode reports as slow
    /// (default 100 ms). Equivalent to `loop.slow_callback_duration`.
    pub fn slow_callback_duration(&self) -> Duration {
        self.core.slow_callback.get()
    }

    /// Sets [`slow_callback_duration`](Self::slow_callback_duration).
    pub fn set_slow_callback_duration(&self, d: Duration) {
        self.core.slow_callback.set(d)
    }

    /// Starts new tasks eagerly: `create_task` runs the task's first step at
    /// once (when called on the running loop), so a task that finishes
    /// without waiting is done when `create_task` returns and is never
    /// scheduled. Equivalent to `loop.set_task_factory(asyncio.eager_task_factory)`;
    /// a general task factory does not fit Rust's generic futures, so this
    /// flag is the one factory offered.
    ///
    /// # Examples
    ///
    /// ```
    /// use ringloop::prelude::*;
    /// let lp = EventLoop::new().unwrap();
    /// lp.set_eager_task_start(true);
    /// lp.run_until_complete(async {
    ///     let t = get_running_loop().unwrap().create_task(async { 5 });
    ///     assert!(t.done(), "it ran to completion inside create_task");
    /// }).unwrap();
    /// lp.close().unwrap();
    /// ```
    pub fn set_eager_task_start(&self, on: bool) {
        self.core.eager.set(on);
    }

    /// Whether tasks start eagerly; see [`set_eager_task_start`](Self::set_eager_task_start).
    pub fn eager_task_start(&self) -> bool {
        self.core.eager.get()
    }

    /// Timers in the heap, cancelled ones not yet removed included. Cancelled
    /// timers are dropped lazily, and the heap is rebuilt once more than half
    /// of at least 100 are cancelled, so this stays bounded.
    ///
    /// A diagnostics hook: only with the `diagnostics` cargo feature.
    #[cfg(feature = "diagnostics")]
    pub fn scheduled_timers(&self) -> usize {
        self.core.timers.borrow().len()
    }

    /// Receive-pool buffers handed to receivers and not given back yet
    /// (0 whenever no data is being delivered).
    ///
    /// A diagnostics hook: only with the `diagnostics` cargo feature.
    #[cfg(feature = "diagnostics")]
    pub fn pool_buffers_out(&self) -> usize {
        self.core.driver.borrow().pool_buffers_out()
    }

    /// Proactor only (`None` on the selector): how many receive-pool buffers
    /// the kernel's provided-buffer ring is sized to hold now, and how many
    /// times it ran dry. The ring starts at 64 buffers so the ones in use
    /// stay in cache, doubles whenever a receive finds it empty (`ENOBUFS`:
    /// that receive falls back to a plain one, nothing is lost), up to the
    /// whole pool of 1,024, and shrinks back once the traffic needs fewer.
    ///
    /// A diagnostics hook: only with the `diagnostics` cargo feature.
    #[cfg(feature = "diagnostics")]
    pub fn recv_ring_stats(&self) -> Option<(usize, u64)> {
        self.core.driver.borrow().recv_ring_stats()
    }

    /// Proactor: stream receives are bundles (Linux 6.10+, unless
    /// `RINGLOOP_NO_RECV_BUNDLE` is set when the loop is made): one
    /// completion may fill several pool buffers, each delivered as its own
    /// `data_received`. False on the selector.
    ///
    /// A diagnostics hook: only with the `diagnostics` cargo feature.
    #[cfg(feature = "diagnostics")]
    pub fn uses_recv_bundles(&self) -> bool {
        self.core.driver.borrow().uses_recv_bundles()
    }

    /// Ops submitted to the driver and not yet handed back (tests, stats).
    ///
    /// A diagnostics hook: only with the `diagnostics` cargo feature.
    #[cfg(feature = "diagnostics")]
    pub fn ops_in_flight(&self) -> usize {
        self.core.driver.borrow().in_flight()
    }

    /// From now on, buffers the driver frees after a cancelled op are
    /// overwritten with a poison pattern and kept, so that
    /// [`check_poison`](Self::check_poison) can prove the kernel never wrote
    /// into them after release. For tests: it keeps those buffers alive.
    ///
    /// A diagnostics hook: only with the `diagnostics` cargo feature.
    #[cfg(feature = "diagnostics")]
    pub fn enable_poison_check(&self) {
        self.core.driver.borrow_mut().enable_poison();
    }

    /// Checks every poisoned buffer; returns how many were checked.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] naming the first buffer written after release,
    /// or when poison checking was not enabled.
    ///
    /// A diagnostics hook: only with the `diagnostics` cargo feature.
    #[cfg(feature = "diagnostics")]
    pub fn check_poison(&self) -> Result<usize> {
        self.core
            .driver
            .borrow()
            .check_poison()
            .map_err(Error::InvalidState)
    }

    /// Bytes that cancelled receives took off `fd` and keep for the next receive.
    ///
    /// A diagnostics hook: only with the `diagnostics` cargo feature.
    #[cfg(feature = "diagnostics")]
    pub fn stashed_bytes(&self, fd: RawFd) -> usize {
        self.core.driver.borrow().stashed(fd)
    }

    /// Children started on this thread so far (one loop a thread): how
    /// many through `posix_spawn`, how many through fork + exec (the
    /// fallback: `pass_fds`, or a glibc older than 2.34).
    ///
    /// A diagnostics hook: only with the `diagnostics` cargo feature.
    #[cfg(feature = "diagnostics")]
    pub fn subprocess_spawns(&self) -> (u64, u64) {
        crate::subprocess::spawn_counts()
    }

    /// The default executor (`executor.rs` keeps its policy).
    pub(crate) fn executor_cell(&self) -> &RefCell<Option<crate::executor::ThreadPool>> {
        &self.core.executor
    }

    /// Set once `shutdown_default_executor` ran.
    pub(crate) fn executor_shut_flag(&self) -> &Cell<bool> {
        &self.core.executor_shut
    }

    /// The loop's tasks not done yet.
    pub(crate) fn pending_tasks(&self) -> Vec<TaskRef> {
        self.core.all_tasks()
    }

    pub(crate) fn driver(&self) -> &DriverRef {
        &self.core.driver
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.core.closed.get() {
            Err(Error::closed("the event loop is closed"))
        } else {
            Ok(())
        }
    }

    pub(crate) fn call_soon_impl<F: FnOnce() + 'static>(
        &self,
        cb: F,
        label: &'static &'static str,
    ) -> Handle {
        self.core.call_soon(cb, label)
    }

    pub(crate) fn spawn_internal<F>(&self, fut: F) -> Task<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.core.spawn(fut, None, true)
    }

    /// See [`Core::reserve_tasks`].
    pub(crate) fn reserve_tasks(&self, n: usize) {
        self.core.reserve_tasks(n);
    }

    pub(crate) fn spawn_task<F>(&self, fut: F, name: Option<String>) -> Task<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.core.spawn(fut, name, false)
    }

    pub(crate) fn call_at_impl<F: FnOnce() + 'static>(&self, when: Instant, cb: F) -> TimerHandle {
        TimerHandle(Handle(self.call_at_slot(when, CbSlot::new(cb))))
    }

    /// `call_at` with a typed callback slot (see [`Handle::timer_with`]);
    /// `call_at_impl` is this with a closure's slot.
    pub(crate) fn call_at_slot<C: CallOnce + 'static>(
        &self,
        when: Instant,
        slot: C,
    ) -> Rc<HandleInner<C>> {
        let when = ticks::from_instant(when);
        let h = Handle::timer_with(slot, when, Rc::downgrade(&self.core));
        self.core.timers.borrow_mut().push(when, Handle(h.clone()));
        h
    }

    fn run_forever_impl(&self) -> Result<()> {
        self.check_open()?;
        if self.core.running.get() {
            return Err(Error::state("this event loop is already running"));
        }
        if running_core().is_some() {
            return Err(Error::state(
                "cannot run the event loop while another loop is running on this thread",
            ));
        }
        struct Guard<'a>(&'a EventLoop);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                self.0.core.stopping.set(false);
                self.0.core.running.set(false);
                let _ = RUNNING.try_with(|r| r.borrow_mut().take());
            }
        }
        RUNNING.with(|r| *r.borrow_mut() = Some(self.core.clone()));
        self.core.running.set(true);
        let _guard = Guard(self);
        loop {
            self.run_once()?;
            if self.core.stopping.get() {
                break;
            }
        }
        match self.core.panicked.borrow_mut().take() {
            Some(msg) => Err(Error::Panic(msg)),
            None => Ok(()),
        }
    }

    /// One iteration, as CPython's `BaseEventLoop._run_once`.
    fn run_once(&self) -> Result<()> {
        let core = &*self.core;
        // Flushes asked for while the loop was not running (a write or a
        // close between two runs) go out before this turn's driver wait.
        self.run_turn_end();
        core.timers.borrow_mut().settle();
        let timeout = if !core.ready.borrow().is_empty()
            || core.stopping.get()
            || core.driver.borrow().has_notified()
            || core.remote.has_items.load(Ordering::SeqCst)
        {
            Some(Duration::ZERO)
        } else {
            core.timers
                .borrow_mut()
                .next_deadline()
                .map(|when| when.saturating_duration_since(Instant::now()))
        };
        core.driver.borrow_mut().turn(timeout)?;
        // The ready queue in asyncio's order is: what was ready before the
        // turn, then I/O completions, then threadsafe calls and due timers.
        // Completions for handlers run from their own list in that place
        // (no round trip through the queue).
        let mut notified = Vec::new();
        if core.driver.borrow().has_notified() {
            notified = std::mem::take(&mut *core.notified.borrow_mut());
            core.driver.borrow_mut().take_notified(&mut notified);
        }
        let before = core.ready.borrow().len();
        core.drain_remote(self);
        // (No clock read when no timer is scheduled.)
        if core.timers.borrow().len() > 0 {
            let now = Instant::now();
            loop {
                let due = core.timers.borrow_mut().pop_due(now);
                match due {
                    Some(h) => core.ready.borrow_mut().push_back(Ready::Callback(h)),
                    None => break,
                }
            }
        }
        // Run only what is ready now; what these schedule waits a turn.
        let ntodo = core.ready.borrow().len();
        if notified.is_empty() {
            self.run_ready(ntodo);
        } else {
            self.run_ready(before);
            for (h, ev) in notified.drain(..) {
                h.notify(ev);
            }
            *core.notified.borrow_mut() = notified;
            self.run_ready(ntodo - before);
        }
        // Writers asked for a flush during the turn: step them now so their
        // sends go out with the next driver wait.
        self.run_turn_end();
        Ok(())
    }

    /// Runs what was queued for the end of the turn (writers' flushes),
    /// and what those queue in turn.
    #[inline]
    fn run_turn_end(&self) {
        let core = &*self.core;
        if core.turn_end.borrow().is_empty() {
            return;
        }
        let mut list = std::mem::take(&mut *core.turn_end_spare.borrow_mut());
        loop {
            std::mem::swap(&mut list, &mut *core.turn_end.borrow_mut());
            if list.is_empty() {
                break;
            }
            for h in list.drain(..) {
                h.notify(crate::driver::Event::TurnEnd);
            }
        }
        *core.turn_end_spare.borrow_mut() = list;
    }

    /// Runs the first `n` items of the ready queue.
    #[inline]
    fn run_ready(&self, n: usize) {
        let core = &*self.core;
        for _ in 0..n {
            let item = core.ready.borrow_mut().pop_front();
            match item {
                Some(Ready::Callback(h)) => self.run_handle(&h),
                Some(Ready::Task(idx, generation)) => core.run_task(idx, generation),
                None => break,
            }
        }
    }

    fn run_handle(&self, h: &Handle) {
        if !h.is_pending() {
            return;
        }
        let t0 = self.core.debug.get().then(Instant::now);
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| h.run())) {
            self.call_exception_handler_impl(ExceptionContext {
                message: format!("Exception in callback {h:?}"),
                exception: Some(Error::Panic(panic_message(&*p))),
                handle: Some(format!("{h:?}")),
                ..Default::default()
            });
        }
        if let Some(t0) = t0 {
            self.core.warn_if_slow(t0, || format!("{h:?}"));
        }
    }

    fn close_impl(&self) -> Result<()> {
        let core = &*self.core;
        if core.running.get() {
            return Err(Error::state("cannot close a running event loop"));
        }
        if core.closed.replace(true) {
            return Ok(());
        }
        core.remote.close();
        // Drop every task's future; the ones not done are reported, as
        // asyncio's "Task was destroyed but it is pending!".
        let slots: Vec<TaskSlot> = core.tasks.borrow_mut().drain().collect();
        for slot in slots {
            let internal = slot.task.header().internal;
            let desc = format!("{:?}", TaskRef(slot.task.clone()));
            slot.task.destroy();
            if !internal {
                self.call_exception_handler_impl(ExceptionContext {
                    message: "Task was destroyed but it is pending!".into(),
                    task: Some(desc),
                    ..Default::default()
                });
            }
        }
        // Signal handlers go, their dispositions are put back.
        self.close_signals();
        core.watchers.borrow_mut().clear();
        core.turn_end.borrow_mut().clear();
        core.slot_wakers.borrow_mut().clear();
        // asyncio: close() shuts the default executor down without waiting.
        self.shutdown_executor_nowait();
        core.ready.borrow_mut().clear();
        core.timers.borrow_mut().clear();
        core.turn_end_spare.borrow_mut().clear();
        core.notified.borrow_mut().clear();
        // Live transports let go of their protocols, ops and sockets first,
        // so the drain below sees their cancellations (and no cycle of a
        // protocol and its transport outlives the loop).
        let live: Vec<_> = core.transports.borrow_mut().drain().collect();
        for t in live.into_iter().filter_map(|w| w.upgrade()) {
            t.loop_closing();
        }
        // Handlers still hooked to ops are unhooked and dropped here, with
        // the driver not borrowed (a last reference may drop ops).
        let handlers = core.driver.borrow_mut().take_handlers();
        drop(handlers);
        core.driver.borrow_mut().shutdown(CLOSE_DRAIN_BOUND);
        Ok(())
    }

    /// A panic was caught and handed on (not reported): with
    /// [`UnhandledPanic::StopLoop`] the loop still stops at it.
    pub(crate) fn note_panic(&self, msg: &str) {
        self.core.note_panic(msg);
    }

    pub(crate) fn call_exception_handler_impl(&self, ctx: ExceptionContext) {
        if let Some(Error::Panic(msg)) = &ctx.exception {
            self.core.note_panic(msg);
        }
        self.report_exception(ctx);
    }

    /// Calls the exception handler (a panic in `ctx` was noted already).
    pub(crate) fn report_exception(&self, ctx: ExceptionContext) {
        let handler = self.core.handler.borrow().clone();
        match handler {
            None => default_handler(&ctx),
            Some(h) => {
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| h(self, &ctx))) {
                    log::error!(
                        "Unhandled error in exception handler: {}",
                        panic_message(&*p)
                    );
                    default_handler(&ctx);
                }
            }
        }
    }

    pub(crate) fn driver_stats_impl(&self) -> DriverStats {
        self.core.driver.borrow().stats()
    }
}

fn default_handler(ctx: &ExceptionContext) {
    let mut msg = ctx.message.clone();
    if msg.is_empty() {
        msg = "Unhandled exception in event loop".into();
    }
    for key in [
        "exception",
        "handle",
        "task",
        "future",
        "protocol",
        "transport",
        "socket",
    ] {
        if let Some(v) = ctx.get(key) {
            msg.push_str(&format!("\n{key}: {v}"));
        }
    }
    log::error!("{msg}");
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<EventLoop {} running={} closed={} debug={}>",
            self.core.backend,
            self.core.running.get(),
            self.core.closed.get(),
            self.core.debug.get()
        )
    }
}

/// Constructor of io_uring loops: asyncio's `ProactorEventLoop`.
#[derive(Debug)]
pub struct ProactorEventLoop;

impl ProactorEventLoop {
    /// Same as [`EventLoop::proactor`].
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] where io_uring cannot run the proactor.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> Result<EventLoop> {
        EventLoop::proactor()
    }
}

/// Constructor of epoll loops: asyncio's `SelectorEventLoop`.
#[derive(Debug)]
pub struct SelectorEventLoop;

impl SelectorEventLoop {
    /// Same as [`EventLoop::selector`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if epoll cannot be set up.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> Result<EventLoop> {
        EventLoop::selector()
    }
}
