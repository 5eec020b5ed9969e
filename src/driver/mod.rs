//! The driver layer: owned-buffer operations and `wait(timeout)`, on io_uring
//! (proactor) or epoll (selector).
//!
//! Everything above this module sees one API: `Driver::submit` moves an op
//! (with its fd and buffers) in and returns a key; `Op` is the future that
//! hands the op back with its result; `Driver::turn` is the one blocking
//! call per loop iteration. Which kernel interface runs underneath is an enum
//! tag, chosen at run time.

pub mod buf;
pub(crate) mod epoll;
pub(crate) mod fd;
pub(crate) mod ops;
pub(crate) mod pool;
pub(crate) mod probe;
pub(crate) mod sys;
pub(crate) mod uring;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use slab::Slab;

use ops::{OpAble, Stash};

/// Which kernel interface a loop runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// io_uring: operations are submitted and complete (asyncio's proactor model).
    Proactor,
    /// epoll: operations are tried, parked on `EAGAIN`, retried on readiness.
    Selector,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Proactor => "proactor (io_uring)",
            Backend::Selector => "selector (epoll)",
        })
    }
}

/// Counters a loop's driver keeps; they show which kernel interface did the work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Loop iterations (one driver turn per `run_once`); on the proactor an
    /// iteration with nothing to submit or reap makes no `io_uring_enter`.
    pub turns: u64,
    /// Operations submitted to the driver.
    pub ops_submitted: u64,
    /// `io_uring_enter` calls (proactor only).
    pub uring_enters: u64,
    /// Completion queue entries reaped (proactor only).
    pub uring_cqes: u64,
    /// `epoll_wait` calls (selector only).
    pub epoll_waits: u64,
    /// Non-blocking syscalls tried by the selector on behalf of ops.
    pub syscalls_tried: u64,
    /// Ops completed from data a cancelled receive had kept.
    pub stash_hits: u64,
    /// Ops still in flight at shutdown and deliberately leaked.
    pub leaked_at_close: u64,
}

/// Wakes a driver blocked in [`Driver::turn`] from any thread (an eventfd).
#[derive(Debug)]
pub(crate) struct Notifier {
    fd: OwnedFd,
    pending: AtomicBool,
}

impl Notifier {
    fn new() -> io::Result<Arc<Notifier>> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(Notifier {
            // SAFETY: eventfd returned a fresh descriptor we now own.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            pending: AtomicBool::new(false),
        }))
    }

    /// Makes the next (or current) `turn` return. Cheap when already pending.
    pub(crate) fn notify(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
            unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Called by the loop before it drains its remote queue.
    /// SeqCst with the pusher's `has_items` store and `pending` swap: either
    /// the loop then sees the item, or the pusher sees the flag cleared and
    /// writes the eventfd.
    pub(crate) fn clear(&self) {
        if self.pending.load(Ordering::Acquire) {
            self.pending.swap(false, Ordering::SeqCst);
        }
    }
}

/// Who hears of an op's completion.
pub(crate) enum Waiter {
    /// Nobody yet (a future that has not polled).
    None,
    /// The task polling the op's future.
    Task(Waker),
    /// A callback object, told through the loop's ready queue (transports:
    /// no task, no poll on the data path).
    Handler(Rc<dyn Notify>),
    /// The handler of a [`ReusableOp`]: told with the result, and the op
    /// goes back to `Idle`.
    Reuse(Rc<dyn Notify>),
    /// The handler of a multishot [`MultiOp::submit_stream`]: told with each
    /// result (nothing is queued in the slot).
    Stream(Rc<dyn Notify>),
}

/// Names one op for its handler: the slab key in the low 32 bits and the
/// slot's generation in the high ones. A slab key is reused as soon as an
/// op is freed, so a completion still queued for a freed op (a receive the
/// transport gave up in the same turn) must never match the op that took
/// its key next (the transport's send): the generation tells them apart.
pub(crate) type Token = u64;

/// The token [`Notify::notify`] gets from a turn-end call (no op has it).
pub(crate) const TURN_END: Token = u64::MAX;

fn token(key: usize, generation: u32) -> Token {
    (u64::from(generation) << 32) | key as u64
}

/// A result handed to a handler with its notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Done {
    /// The value (bytes, or a pool-buffer completion value), or an errno.
    pub(crate) res: Result<u32, i32>,
    /// The op's final completion (a multishot op has ended).
    pub(crate) last: bool,
}

impl Done {
    fn from_result(r: &io::Result<u32>, last: bool) -> Done {
        Done {
            res: match r {
                Ok(v) => Ok(*v),
                // Errors without an OS code (the closed loop's) as ENOTCONN.
                Err(e) => Err(e.raw_os_error().unwrap_or(libc::ENOTCONN)),
            },
            last,
        }
    }
}

/// A completion callback: [`Notify::notify`] runs from the loop's ready
/// queue (never inside the driver), with the key of the op that completed.
/// For a [`ReusableOp`] or a stream [`MultiOp`] the result comes with it
/// (`Some`); for other ops it is `None` and the handler takes what is
/// there: it may then run more than once per completion.
/// `Core::call_at_turn_end` calls it with [`TURN_END`] and `None`.
pub(crate) trait Notify {
    fn notify(self: Rc<Self>, token: Token, done: Option<Done>);
}

/// Lifecycle of one op in the slab (tokio-uring's `Lifecycle`, both backends).
enum State {
    /// In flight; who waits on it.
    Waiting(Waiter),
    /// In flight, but its future is gone: keep the buffers until the final
    /// completion, then salvage what it got and free it.
    Ignored,
    /// Finished (single-shot ops).
    Done(io::Result<u32>),
    /// A [`ReusableOp`] between uses: not in flight, its result delivered.
    Idle,
}

impl State {
    /// Not in the kernel (or parked) any more.
    fn at_rest(&self) -> bool {
        matches!(self, State::Done(_) | State::Idle)
    }
}

struct Slot {
    op: Box<dyn OpAble>,
    /// Tells this op from earlier ones that had the same key ([`Token`]).
    generation: u32,
    state: State,
    /// Results of a multishot op not yet taken; `None` for single-shot ops.
    multi: Option<VecDeque<io::Result<u32>>>,
    /// A multishot op posted its final completion.
    finished: bool,
    /// Proactor: the op got `EAGAIN` and waits on a `POLL_ADD` before retrying.
    polling: bool,
    /// A receive waiting for its fd's earlier receives to be settled
    /// ([`fd::SharedFd::gate_enter`]): not submitted yet.
    deferred: bool,
    /// A receive whose data may go to the stash (cancelled in flight, or
    /// finished and not handed back): its fd's gate counts it.
    holds: bool,
    /// A receive in flight asked back because data for its fd was kept
    /// meanwhile: it is served from that data first.
    recalled: bool,
}

/// What the backend must do after a future gave up on its op.
#[derive(PartialEq, Eq)]
enum Dropped {
    /// The op was not in flight any more; its slot is free.
    Freed,
    /// The op is in flight: the backend cancels it; the slot stays `Ignored`.
    InFlight,
}

/// Buffers of released ops, overwritten with a pattern and kept to catch any
/// kernel write after the driver let go of them (tests only).
#[derive(Default)]
struct Quarantine {
    held: Vec<ops::Released>,
}

const POISON: u8 = 0xA5;

/// A completion for a handler: who, which op, and the result if it is
/// handed over (see [`Notify`]).
pub(crate) type Notified = (Rc<dyn Notify>, Token, Option<Done>);

/// The slab of ops and the rules of their lifecycle, shared by both backends.
pub(crate) struct Ops {
    slab: Slab<Slot>,
    /// Handlers of completed ops, for the loop to call: (handler, key, res).
    notified: Vec<Notified>,
    stash: Stash,
    quarantine: Option<Quarantine>,
    stats: DriverStats,
    next_generation: u32,
    /// Deferred receives whose turn has come, to be started by the driver.
    to_start: Vec<usize>,
    /// Fds (by `SharedFd::id`) that got kept data while other receives on
    /// them may be in flight: the driver recalls those.
    recall: Vec<u64>,
}

impl Ops {
    fn new() -> Ops {
        Ops {
            slab: Slab::with_capacity(256),
            next_generation: 0,
            to_start: Vec::new(),
            recall: Vec::new(),
            notified: Vec::new(),
            stash: Stash::default(),
            quarantine: None,
            stats: DriverStats::default(),
        }
    }

    fn insert(&mut self, op: Box<dyn OpAble>, state: State) -> usize {
        self.stats.ops_submitted += 1;
        let multi = op.is_multishot().then(VecDeque::new);
        self.next_generation = self.next_generation.wrapping_add(1);
        self.slab.insert(Slot {
            op,
            generation: self.next_generation,
            state,
            multi,
            finished: false,
            polling: false,
            deferred: false,
            holds: false,
            recalled: false,
        })
    }

    /// Records a completion given as the kernel's raw result, for the
    /// common cases of a handler that takes its results with the
    /// notification: a reusable op (a stream's send; it goes back to
    /// `Idle`) and a stream multishot op (a stream's receive). `value` makes
    /// the result value from the non-negative `res` (naming a pool buffer).
    /// False for any other op: the caller goes through
    /// [`complete`](Self::complete).
    #[inline]
    fn complete_direct(
        &mut self,
        key: usize,
        res: i32,
        more: bool,
        value: impl FnOnce() -> u32,
    ) -> bool {
        self.hand_over(key, more, |last| Done {
            res: if res < 0 { Err(-res) } else { Ok(value()) },
            last,
        })
    }

    /// Takes an op out of the slab. A receive that was its fd's active one
    /// hands the turn to the next one waiting (started by the driver).
    fn remove(&mut self, key: usize) -> Slot {
        let slot = self.slab.remove(key);
        if let Some(fd) = slot.op.read_gate() {
            if slot.deferred {
                fd.gate_forget(key);
                if !self.to_start.is_empty() {
                    self.to_start.retain(|&k| k != key);
                }
            } else if slot.holds {
                self.to_start.extend(fd.gate_release());
            }
        }
        slot
    }

    /// A receive's data may go to the stash from now on (see `holds`).
    fn hold(&mut self, key: usize) {
        let slot = &mut self.slab[key];
        if !slot.holds {
            if let Some(fd) = slot.op.read_gate() {
                fd.gate_hold();
                slot.holds = true;
            }
        }
    }

    /// Op `key` salvaged what it got: if that left data kept for its fd,
    /// receives in flight on the fd are recalled to take it.
    fn salvaged(&mut self, key: usize) {
        if let Some(fd) = self.slab[key].op.read_gate() {
            if self.stash.has(fd) {
                self.recall.push(fd.id());
            }
        }
    }

    /// A receive in flight completes while data is kept for its fd (a
    /// receive cancelled meanwhile): the kept data comes first, what this
    /// one got goes behind it. `None`: a recalled receive whose cancel
    /// found the data gone (another took it): it is started again.
    fn settle_kept(&mut self, key: usize, res: io::Result<u32>) -> Option<io::Result<u32>> {
        let slot = &mut self.slab[key];
        let recalled = std::mem::take(&mut slot.recalled);
        let Some(fd) = slot.op.read_gate() else {
            return Some(res);
        };
        if self.stash.has(fd) {
            if let Ok(n) = &res {
                slot.op.salvage(*n as i32, &mut self.stash);
            }
            // (EOF or an error is seen again by the next receive.)
            return slot.op.take_stashed(&mut self.stash).or(Some(res));
        }
        if recalled
            && res
                .as_ref()
                .is_err_and(|e| e.raw_os_error() == Some(libc::ECANCELED))
        {
            slot.deferred = true;
            self.to_start.push(key);
            return None;
        }
        Some(res)
    }

    /// Receives to start or recall (see `Driver::start_deferred`)?
    #[inline]
    fn has_pending(&self) -> bool {
        !self.to_start.is_empty() || !self.recall.is_empty()
    }

    /// The token naming the op at `key` now.
    fn token(&self, key: usize) -> Token {
        token(key, self.slab[key].generation)
    }

    /// Hands a result to a handler that takes it with the notification (a
    /// reusable op, which goes back to `Idle`; a stream multishot op);
    /// `done(last)` makes the result. False for any other waiter.
    #[inline]
    fn hand_over(&mut self, key: usize, more: bool, done: impl FnOnce(bool) -> Done) -> bool {
        let slot = &mut self.slab[key];
        let tok = token(key, slot.generation);
        match &slot.state {
            State::Waiting(Waiter::Reuse(_)) if !more => {
                let State::Waiting(Waiter::Reuse(h)) =
                    std::mem::replace(&mut slot.state, State::Idle)
                else {
                    unreachable!()
                };
                self.notified.push((h, tok, Some(done(true))));
                true
            }
            State::Waiting(Waiter::Stream(h)) => {
                let h = h.clone();
                slot.finished |= !more;
                self.notified.push((h, tok, Some(done(!more))));
                true
            }
            _ => false,
        }
    }

    /// Records a completion. `more` is false for the op's final completion.
    fn complete(&mut self, key: usize, res: io::Result<u32>, more: bool) {
        if !self.slab.contains(key) {
            panic!("ringloop driver: completion for unknown op {key}");
        }
        if self.hand_over(key, more, |last| Done::from_result(&res, last)) {
            return;
        }
        let slot = &mut self.slab[key];
        match &mut slot.state {
            State::Ignored => {
                let raw = res.as_ref().map_or(-1, |&n| n as i32);
                slot.op.salvage(raw, &mut self.stash);
                self.salvaged(key);
                if !more {
                    let slot = self.remove(key);
                    self.release(slot.op);
                }
            }
            State::Waiting(_) if slot.multi.is_none() && slot.op.read_gate().is_some() => {
                // A receive: kept data first; it holds its fd's gate
                // until it is handed back.
                if let Some(res) = self.settle_kept(key, res) {
                    self.hold(key);
                    self.finish_waiting(key, res, more);
                }
            }
            State::Waiting(_) => self.finish_waiting(key, res, more),
            State::Done(_) | State::Idle => {
                panic!("ringloop driver: completion for op {key}, which is not in flight")
            }
        }
    }

    /// Records a result for whoever waits on op `key`.
    fn finish_waiting(&mut self, key: usize, res: io::Result<u32>, more: bool) {
        let slot = &mut self.slab[key];
        match &mut slot.state {
            State::Waiting(waiter) => {
                let waker = if let Waiter::Handler(h) = waiter {
                    // A handler stays for what follows (multishot).
                    self.notified
                        .push((h.clone(), token(key, slot.generation), None));
                    None
                } else if let Waiter::Task(w) = std::mem::replace(waiter, Waiter::None) {
                    Some(w)
                } else {
                    None
                };
                if let Some(q) = &mut slot.multi {
                    q.push_back(res);
                    slot.finished = !more;
                } else {
                    slot.state = State::Done(res);
                }
                if let Some(w) = waker {
                    w.wake();
                }
            }
            _ => unreachable!("checked by the caller"),
        }
    }

    fn poll(
        &mut self,
        key: usize,
        cx: &mut Context<'_>,
    ) -> Poll<(io::Result<u32>, Box<dyn OpAble>)> {
        if let Some(done) = self.take_done(key) {
            return Poll::Ready(done);
        }
        match &mut self.slab[key].state {
            State::Done(_) | State::Idle => unreachable!("taken above; futures never idle"),
            State::Waiting(w) => {
                match w {
                    Waiter::Task(w) if w.will_wake(cx.waker()) => {}
                    _ => *w = Waiter::Task(cx.waker().clone()),
                }
                Poll::Pending
            }
            State::Ignored => panic!("ringloop driver: polled an abandoned op"),
        }
    }

    /// Next result of a multishot op; `None` once it has finished. Without
    /// a context (handler ops), `Pending` leaves the waiter as it is.
    fn poll_multi(
        &mut self,
        key: usize,
        cx: Option<&mut Context<'_>>,
    ) -> Poll<Option<io::Result<u32>>> {
        let slot = &mut self.slab[key];
        if let Some(r) = slot.multi.as_mut().and_then(|q| q.pop_front()) {
            return Poll::Ready(Some(r));
        }
        if slot.finished {
            return Poll::Ready(None);
        }
        if let Some(cx) = cx {
            match &mut slot.state {
                State::Waiting(Waiter::Task(w)) if w.will_wake(cx.waker()) => {}
                _ => slot.state = State::Waiting(Waiter::Task(cx.waker().clone())),
            }
        }
        Poll::Pending
    }

    /// The result of a finished single-shot handler op, freeing its slot.
    fn take_done(&mut self, key: usize) -> Option<(io::Result<u32>, Box<dyn OpAble>)> {
        if !matches!(self.slab.get(key)?.state, State::Done(_)) {
            return None;
        }
        let slot = self.remove(key);
        let State::Done(res) = slot.state else {
            unreachable!()
        };
        Some((res, slot.op))
    }

    /// An op finished before it was submitted (stash hit, closed driver):
    /// a handler waiting on it is told at once (through the loop).
    fn insert_done(&mut self, op: Box<dyn OpAble>, res: io::Result<u32>, w: Waiter) -> usize {
        match w {
            Waiter::Stream(h) => {
                // Handed over at once; the slot only waits to be dropped.
                let done = Done::from_result(&res, true);
                let key = self.insert(op, State::Waiting(Waiter::None));
                self.slab[key].finished = true;
                self.notified.push((h, self.token(key), Some(done)));
                key
            }
            Waiter::Handler(h) => {
                let key = self.insert(op, State::Done(res));
                self.hold(key);
                self.notified.push((h, self.token(key), None));
                key
            }
            Waiter::Reuse(_) => unreachable!("reusable ops are resubmitted, not inserted"),
            _ => {
                let key = self.insert(op, State::Done(res));
                self.hold(key);
                key
            }
        }
    }

    fn is_finished(&self, key: usize) -> bool {
        self.slab.get(key).is_some_and(|s| s.finished)
    }

    /// The future of `key` is gone.
    fn drop_op(&mut self, key: usize) -> Dropped {
        let slot = &mut self.slab[key];
        if slot.deferred {
            // Never submitted: nothing to cancel.
            let slot = self.remove(key);
            self.release(slot.op);
            return Dropped::Freed;
        }
        // Results nobody will take: keep data, close accepted fds.
        if let Some(q) = slot.multi.take() {
            for r in q {
                let raw = r.map_or(-1, |n| n as i32);
                slot.op.salvage(raw, &mut self.stash);
            }
            if slot.finished {
                let slot = self.remove(key);
                self.release(slot.op);
                return Dropped::Freed;
            }
            slot.multi = Some(VecDeque::new());
        }
        match std::mem::replace(&mut slot.state, State::Ignored) {
            State::Done(res) => {
                let raw = res.map_or(-1, |n| n as i32);
                // A finished receive's data is older than anything kept for
                // its fd (what was kept when it completed came first, see
                // `settle_kept`; what came later is newer): it goes first.
                let before = slot.op.read_gate().map(|fd| self.stash.items(fd));
                slot.op.salvage(raw, &mut self.stash);
                if let (Some(n), Some(fd)) = (before, slot.op.read_gate()) {
                    if self.stash.items(fd) > n {
                        self.stash.last_to_front(fd);
                    }
                }
                self.salvaged(key);
                let slot = self.remove(key);
                self.release(slot.op);
                Dropped::Freed
            }
            State::Idle => {
                let slot = self.remove(key);
                self.release(slot.op);
                Dropped::Freed
            }
            _ => {
                self.hold(key);
                Dropped::InFlight
            }
        }
    }

    /// Frees an op the driver no longer needs (poisoning its buffer in tests).
    fn release(&mut self, op: Box<dyn OpAble>) {
        if let Some(q) = &mut self.quarantine {
            if let Some(r) = op.into_buffer() {
                // SAFETY: the region is the op's own writable buffer, and the
                // op has had its final completion, so nothing else writes it.
                unsafe { std::ptr::write_bytes(r.ptr, POISON, r.len) };
                q.held.push(r);
            }
        }
    }

    fn check_poison(&self) -> Result<usize, String> {
        let Some(q) = &self.quarantine else {
            return Err("poison checking was not enabled on this loop".into());
        };
        for (i, r) in q.held.iter().enumerate() {
            let len = r.len;
            // SAFETY: the quarantined owner keeps the buffer at `ptr` alive.
            let bytes = unsafe { std::slice::from_raw_parts(r.ptr, len) };
            if let Some(pos) = bytes.iter().position(|&b| b != POISON) {
                return Err(format!(
                    "buffer {i} ({len} bytes) was written at offset {pos} after the driver released it"
                ));
            }
        }
        Ok(q.held.len())
    }

    /// Ops in the slab, idle reusable ones (a transport's send between
    /// sends) excepted.
    fn in_flight(&self) -> usize {
        self.slab
            .iter()
            .filter(|(_, s)| !matches!(s.state, State::Idle))
            .count()
    }
}

/// The driver of one loop: the backend chosen at run time.
pub(crate) enum Driver {
    Uring(uring::Uring),
    Epoll(epoll::Epoll),
}

/// Shared handle through which op futures reach their loop's driver.
pub(crate) type DriverRef = Rc<RefCell<Driver>>;

macro_rules! each {
    ($self:expr, $d:ident => $e:expr) => {
        match $self {
            Driver::Uring($d) => $e,
            Driver::Epoll($d) => $e,
        }
    };
}

impl Driver {
    pub(crate) fn new(backend: Backend) -> io::Result<Driver> {
        Ok(match backend {
            Backend::Proactor => Driver::Uring(uring::Uring::new()?),
            Backend::Selector => Driver::Epoll(epoll::Epoll::new()?),
        })
    }

    pub(crate) fn backend(&self) -> Backend {
        match self {
            Driver::Uring(_) => Backend::Proactor,
            Driver::Epoll(_) => Backend::Selector,
        }
    }

    fn ops(&mut self) -> &mut Ops {
        each!(self, d => &mut d.ops)
    }

    fn ops_ref(&self) -> &Ops {
        each!(self, d => &d.ops)
    }

    pub(crate) fn submit(&mut self, op: Box<dyn OpAble>) -> usize {
        self.submit_for(op, Waiter::None)
    }

    /// Submits an op whose completions go to `h` (see [`Notify`]).
    pub(crate) fn submit_notify(&mut self, op: Box<dyn OpAble>, h: Rc<dyn Notify>) -> usize {
        self.submit_for(op, Waiter::Handler(h))
    }

    fn submit_for(&mut self, mut op: Box<dyn OpAble>, w: Waiter) -> usize {
        let ops = self.ops();
        if op.read_gate().is_some() {
            // Receives on one fd take their turns: one waits in the slab
            // while an earlier one is not over.
            let key = ops.slab.vacant_key();
            if !op.read_gate().is_some_and(|fd| fd.gate_enter(key)) {
                let k = ops.insert(op, State::Waiting(w));
                debug_assert_eq!(k, key);
                ops.slab[k].deferred = true;
                return k;
            }
        }
        if let Some(res) = op.take_stashed(&mut ops.stash) {
            ops.stats.stash_hits += 1;
            return ops.insert_done(op, res, w);
        }
        each!(self, d => d.submit(op, w))
    }

    /// Starts the receives whose turn came (their fd's earlier receives
    /// are settled): from the data those kept, if any, else in the kernel;
    /// and recalls receives in flight on fds that got kept data.
    fn start_deferred(&mut self) {
        while !self.ops().recall.is_empty() {
            let fds = std::mem::take(&mut self.ops().recall);
            let keys: Vec<usize> = self
                .ops()
                .slab
                .iter()
                .filter(|(_, s)| {
                    matches!(s.state, State::Waiting(_))
                        && !s.deferred
                        && !s.recalled
                        && s.multi.is_none()
                        && s.op.read_gate().is_some_and(|fd| fds.contains(&fd.id()))
                })
                .map(|(k, _)| k)
                .collect();
            for key in keys {
                self.ops().slab[key].recalled = true;
                each!(self, d => d.recall(key));
            }
        }
        while !self.ops().to_start.is_empty() {
            let keys = std::mem::take(&mut self.ops().to_start);
            for key in keys {
                let ops = self.ops();
                let slot = &mut ops.slab[key];
                slot.deferred = false;
                if let Some(res) = slot.op.take_stashed(&mut ops.stash) {
                    // (Served from the kept data: not `complete`, which
                    // would put it behind what is left of that data.)
                    ops.stats.stash_hits += 1;
                    ops.hold(key);
                    ops.finish_waiting(key, res, false);
                    continue;
                }
                each!(self, d => d.resubmit(key));
            }
        }
    }

    /// Polls op `key` for its future.
    fn poll_op(
        &mut self,
        key: usize,
        cx: &mut Context<'_>,
    ) -> Poll<(io::Result<u32>, Box<dyn OpAble>)> {
        let r = self.ops().poll(key, cx);
        if r.is_ready() && self.ops().has_pending() {
            self.start_deferred();
        }
        r
    }

    /// Moves the handlers of completed ops into `out` (for the loop).
    pub(crate) fn take_notified(&mut self, out: &mut Vec<Notified>) {
        std::mem::swap(out, &mut self.ops().notified);
    }

    /// Unhooks every handler (the loop is closing) and returns them, for
    /// the caller to drop once the driver is no longer borrowed.
    pub(crate) fn take_handlers(&mut self) -> Vec<Rc<dyn Notify>> {
        let ops = self.ops();
        let mut out: Vec<Rc<dyn Notify>> = ops.notified.drain(..).map(|(h, _, _)| h).collect();
        for (_, slot) in ops.slab.iter_mut() {
            if let State::Waiting(w) = &mut slot.state {
                if let Waiter::Handler(h) | Waiter::Reuse(h) | Waiter::Stream(h) =
                    std::mem::replace(w, Waiter::None)
                {
                    out.push(h);
                }
            }
        }
        out
    }

    /// Handlers wait to be told of completions (the loop must not block).
    pub(crate) fn has_notified(&self) -> bool {
        !self.ops_ref().notified.is_empty()
    }

    pub(crate) fn drop_op(&mut self, key: usize) {
        if self.is_shut() && !self.ops().slab.contains(key) {
            return; // leaked or cleared at shutdown
        }
        if self.ops().drop_op(key) == Dropped::InFlight {
            each!(self, d => d.cancel(key))
        }
        if self.ops().has_pending() {
            self.start_deferred();
        }
    }

    /// Waits for I/O at most `timeout` (`None`: until something happens) and
    /// records completions, waking their futures.
    pub(crate) fn turn(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.ops().stats.turns += 1;
        let r = each!(self, d => d.turn(timeout));
        // Receives cancelled in flight ended in this turn: the ones
        // issued after them start now.
        if self.ops().has_pending() {
            self.start_deferred();
        }
        r
    }

    pub(crate) fn notifier(&self) -> Arc<Notifier> {
        each!(self, d => d.notifier.clone())
    }

    pub(crate) fn stats(&self) -> DriverStats {
        self.ops_ref().stats
    }

    /// The loop's receive-buffer pool.
    pub(crate) fn pool(&self) -> pool::PoolRef {
        each!(self, d => d.pool.clone())
    }

    /// Data cancelled receives kept for `fd`, in order.
    pub(crate) fn take_stashed(&mut self, fd: &fd::SharedFd) -> Vec<Vec<u8>> {
        let ops = self.ops();
        let v = ops.stash.take_all(fd);
        ops.stats.stash_hits += v.len() as u64;
        v
    }

    /// Keeps received bytes for the next receive on `fd` (a handler got
    /// them for a receive it had already given up).
    pub(crate) fn stash_data(&mut self, fd: &fd::SharedFd, data: Vec<u8>) {
        self.ops().stash.push_data(fd, data);
    }

    /// Pool buffers handed out and not back yet.
    pub(crate) fn pool_buffers_out(&self) -> usize {
        each!(self, d => d.pool.borrow().out)
    }

    /// Proactor: (receive-ring size now, times the ring ran dry).
    pub(crate) fn recv_ring_stats(&self) -> Option<(usize, u64)> {
        each!(self, d => d.pool.borrow().ring_stats())
    }

    /// User ops in the slab (the proactor's own eventfd read excluded).
    pub(crate) fn in_flight(&self) -> usize {
        let internal = match self {
            Driver::Uring(d) => usize::from(d.wake_key.is_some()),
            Driver::Epoll(_) => 0,
        };
        self.ops_ref().in_flight() - internal
    }

    /// Cancels everything in flight, drains completions for at most `bound`,
    /// and leaks (never frees) whatever the kernel still holds.
    pub(crate) fn shutdown(&mut self, bound: Duration) {
        each!(self, d => d.shutdown(bound))
    }

    pub(crate) fn enable_poison(&mut self) {
        self.ops()
            .quarantine
            .get_or_insert_with(Quarantine::default);
    }

    pub(crate) fn check_poison(&self) -> Result<usize, String> {
        self.ops_ref().check_poison()
    }

    pub(crate) fn stashed(&self, fd: std::os::fd::RawFd) -> usize {
        self.ops_ref().stash.held(fd)
    }

    fn is_shut(&self) -> bool {
        each!(self, d => d.shut)
    }
}

/// Takes ownership of the descriptor an accept op returned.
pub(crate) fn owned_from_accept(fd: u32) -> OwnedFd {
    // SAFETY: the kernel just created this descriptor for us; nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// The typed op back from the slab (the key was issued for a `T`).
fn downcast_op<T: OpAble>(op: Box<dyn OpAble>) -> Box<T> {
    op.into_any()
        .downcast::<T>()
        .expect("ringloop driver: op type mismatch")
}

/// A submitted op, as a future: resolves to the op's result and the op itself
/// (its fd and buffers), whether it succeeded or failed. Dropping it before
/// completion cancels the op without freeing anything the kernel still uses.
pub(crate) struct Op<T> {
    driver: DriverRef,
    key: Option<usize>,
    _t: PhantomData<fn() -> T>,
}

impl<T: OpAble> Op<T> {
    pub(crate) fn submit(driver: &DriverRef, op: T) -> Op<T> {
        let key = driver.borrow_mut().submit(Box::new(op));
        Self::with_key(driver, key)
    }

    fn with_key(driver: &DriverRef, key: usize) -> Op<T> {
        Op {
            driver: driver.clone(),
            key: Some(key),
            _t: PhantomData,
        }
    }
}

impl<T: OpAble> std::future::Future for Op<T> {
    type Output = (io::Result<u32>, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let key = self.key.expect("ringloop: Op polled after completion");
        let r = self.driver.borrow_mut().poll_op(key, cx);
        r.map(|(res, op)| {
            self.key = None;
            (res, *downcast_op::<T>(op))
        })
    }
}

impl<T> Drop for Op<T> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.driver.borrow_mut().drop_op(key);
        }
    }
}

/// A submitted single-shot op whose completion goes to a [`Notify`]
/// handler; the handler takes the result with [`HandlerOp::take`].
/// Dropping it before completion cancels the op, as for [`Op`] (whose
/// key and drop it uses).
pub(crate) struct HandlerOp<T>(Op<T>, Token);

impl<T: OpAble> HandlerOp<T> {
    pub(crate) fn submit(driver: &DriverRef, op: Box<T>, h: Rc<dyn Notify>) -> HandlerOp<T> {
        let mut d = driver.borrow_mut();
        let key = d.submit_notify(op, h);
        let tok = d.ops().token(key);
        drop(d);
        HandlerOp(Op::with_key(driver, key), tok)
    }

    /// Is this notification for this op?
    pub(crate) fn is(&self, token: Token) -> bool {
        self.0.key.is_some() && self.1 == token
    }

    /// The result and the op back, once it completed.
    pub(crate) fn take(&mut self) -> Option<(io::Result<u32>, Box<T>)> {
        let key = self.0.key?;
        let mut d = self.0.driver.borrow_mut();
        let (res, op) = d.ops().take_done(key)?;
        if d.ops().has_pending() {
            d.start_deferred();
        }
        drop(d);
        self.0.key = None;
        Some((res, downcast_op(op)))
    }
}

/// A single-shot op that stays in the driver between uses (a transport's
/// send): no slab insert or remove and no box per use. Each completion goes
/// to the handler with its result (`Notify::notify(key, Some(done))`), and
/// the op is idle again: [`completed`](Self::completed) reaches its
/// buffers, [`submit_with`](Self::submit_with) loads and sends it again.
/// Dropping it while in flight cancels it as for [`Op`]: the driver keeps
/// the buffers until the kernel lets go.
pub(crate) struct ReusableOp<T> {
    driver: DriverRef,
    key: usize,
    token: Token,
    /// Weak: the handler (a transport) owns this op, so a strong reference
    /// would be a cycle that outlives the connection.
    handler: std::rc::Weak<dyn Notify>,
    in_flight: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T: OpAble> ReusableOp<T> {
    /// Puts `op` in the driver, idle (not submitted).
    pub(crate) fn new(driver: &DriverRef, op: Box<T>, handler: &Rc<dyn Notify>) -> Self {
        let mut d = driver.borrow_mut();
        let key = d.ops().insert(op, State::Idle);
        let token = d.ops().token(key);
        drop(d);
        ReusableOp {
            driver: driver.clone(),
            key,
            token,
            handler: Rc::downgrade(handler),
            in_flight: false,
            _t: PhantomData,
        }
    }

    /// Is this notification for this op?
    pub(crate) fn is(&self, token: Token) -> bool {
        self.token == token
    }

    /// Submitted and its result not delivered yet?
    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// The op itself, to be changed only while idle (the kernel never
    /// sees an op being changed).
    fn op_mut(d: &mut Driver, key: usize) -> &mut T {
        Self::typed(&mut d.ops().slab[key].op)
    }

    /// The boxed op as the type its key was issued for.
    fn typed(op: &mut Box<dyn OpAble>) -> &mut T {
        op.as_any_mut()
            .downcast_mut::<T>()
            .expect("ringloop driver: op type mismatch")
    }

    /// The handler got this op's result: the op is idle again, and `f`
    /// runs on it (to take back what the kernel is done with). `f` must not
    /// call into the loop (the driver is borrowed).
    pub(crate) fn completed<R>(&mut self, f: impl FnOnce(&mut T) -> R) -> R {
        assert!(self.in_flight, "ringloop driver: completion of an idle op");
        self.in_flight = false;
        f(Self::op_mut(&mut self.driver.borrow_mut(), self.key))
    }

    /// Runs `f` on the idle op (to load it), then submits it. `f` must not
    /// call into the loop (the driver is borrowed).
    pub(crate) fn submit_with(&mut self, f: impl FnOnce(&mut T)) {
        assert!(!self.in_flight, "ringloop driver: op submitted twice");
        let handler = self
            .handler
            .upgrade()
            .expect("ringloop driver: a reusable op outlived its handler");
        self.in_flight = true;
        let mut d = self.driver.borrow_mut();
        let uring = matches!(&*d, Driver::Uring(u) if !u.shut);
        let ops = d.ops();
        ops.stats.ops_submitted += 1;
        // One lookup: load the typed op, build its SQE (no vtable call),
        // and mark the slot in flight.
        let slot = &mut ops.slab[self.key];
        let op = Self::typed(&mut slot.op);
        f(op);
        let entry = uring.then(|| op.uring_entry().user_data(self.key as u64));
        let idle = std::mem::replace(&mut slot.state, State::Waiting(Waiter::Reuse(handler)));
        assert!(matches!(idle, State::Idle), "ringloop driver: op not idle");
        std::mem::forget(idle); // `Idle` owns nothing: no drop call
        match (&mut *d, entry) {
            (Driver::Uring(u), Some(e)) => u.push(e),
            (d, _) => each!(d, b => b.resubmit(self.key)),
        }
    }
}

impl<T> Drop for ReusableOp<T> {
    fn drop(&mut self) {
        self.driver.borrow_mut().drop_op(self.key);
    }
}

/// A submitted multishot op, as a stream of results.
pub(crate) struct MultiOp {
    driver: DriverRef,
    key: Option<usize>,
    token: Token,
}

impl MultiOp {
    pub(crate) fn submit(driver: &DriverRef, op: Box<dyn OpAble>) -> MultiOp {
        Self::submit_for(driver, op, Waiter::None)
    }

    fn submit_for(driver: &DriverRef, op: Box<dyn OpAble>, w: Waiter) -> MultiOp {
        let mut d = driver.borrow_mut();
        let key = d.submit_for(op, w);
        let token = d.ops().token(key);
        drop(d);
        MultiOp {
            driver: driver.clone(),
            key: Some(key),
            token,
        }
    }

    /// Submits a multishot op whose results go to `h`, each with its
    /// notification (nothing is queued for [`poll_next`](Self::poll_next)).
    pub(crate) fn submit_stream(
        driver: &DriverRef,
        op: Box<dyn OpAble>,
        h: Rc<dyn Notify>,
    ) -> MultiOp {
        Self::submit_for(driver, op, Waiter::Stream(h))
    }

    /// Is this notification for this op?
    pub(crate) fn is(&self, token: Token) -> bool {
        self.key.is_some() && self.token == token
    }

    /// Ends the op but keeps its handler: results already on their way
    /// still arrive, then a final one (`ECANCELED` if the cancel ended it).
    /// Nothing newer can arrive after that, so a reader that waits for it
    /// before it receives again keeps every byte in order.
    pub(crate) fn cancel(&self) {
        let Some(key) = self.key else { return };
        let mut d = self.driver.borrow_mut();
        if d.ops().is_finished(key) || d.is_shut() {
            return;
        }
        each!(&mut *d, b => b.cancel_keep(key));
    }

    /// True once the kernel posted the op's final completion (results may
    /// still be queued).
    pub(crate) fn is_finished(&self) -> bool {
        self.key
            .is_none_or(|k| self.driver.borrow().ops_ref().is_finished(k))
    }

    /// Next result; `None` when the op has ended (submit a new one to go on).
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<u32>>> {
        self.next_inner(Some(cx))
    }

    fn next_inner(&mut self, cx: Option<&mut Context<'_>>) -> Poll<Option<io::Result<u32>>> {
        let Some(key) = self.key else {
            return Poll::Ready(None);
        };
        let mut d = self.driver.borrow_mut();
        let r = d.ops().poll_multi(key, cx);
        if let Poll::Ready(None) = r {
            if d.ops().is_finished(key) {
                d.drop_op(key);
                self.key = None;
            }
        }
        r
    }
}

impl Drop for MultiOp {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.driver.borrow_mut().drop_op(key);
        }
    }
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Driver({})", self.backend())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io;
    use std::os::fd::RawFd;
    use std::rc::Rc;
    use std::task::{Context, Poll, Waker};

    use io_uring::{opcode, squeue};

    use super::ops::{Interest, OpAble, Released, Stash};
    use super::{Dropped, Ops, State, Waiter};

    /// A fake op: counts salvages, owns a buffer for the poison checker.
    struct Fake {
        salvaged: Rc<Cell<i32>>,
        buf: Vec<u8>,
        multishot: bool,
    }

    impl OpAble for Fake {
        fn uring_entry(&mut self) -> squeue::Entry {
            opcode::Nop::new().build()
        }
        fn interest(&self) -> (RawFd, Interest) {
            (-1, Interest::Read)
        }
        fn fd_id(&self) -> u64 {
            0
        }
        fn legacy_call(&mut self) -> io::Result<u32> {
            Err(io::ErrorKind::WouldBlock.into())
        }
        fn salvage(&mut self, res: i32, _stash: &mut Stash) {
            self.salvaged.set(self.salvaged.get() + res.max(0));
        }
        fn into_buffer(mut self: Box<Self>) -> Option<Released> {
            let ptr = self.buf.as_mut_ptr();
            let len = self.buf.capacity();
            Some(Released {
                _owner: Box::new(std::mem::take(&mut self.buf)),
                ptr,
                len,
            })
        }
        fn is_multishot(&self) -> bool {
            self.multishot
        }
    }

    fn fake(multishot: bool) -> (Box<Fake>, Rc<Cell<i32>>) {
        let s = Rc::new(Cell::new(0));
        let op = Box::new(Fake {
            salvaged: s.clone(),
            buf: Vec::with_capacity(16),
            multishot,
        });
        (op, s)
    }

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    #[test]
    fn completed_op_is_handed_back_once() {
        let mut ops = Ops::new();
        let (op, _) = fake(false);
        let k = ops.insert(op, State::Waiting(Waiter::None));
        assert!(ops.poll(k, &mut cx()).is_pending());
        ops.complete(k, Ok(5), false);
        match ops.poll(k, &mut cx()) {
            Poll::Ready((Ok(5), _op)) => {}
            _ => panic!("expected the op back with its result"),
        }
        assert_eq!(ops.in_flight(), 0);
    }

    #[test]
    fn dropped_in_flight_op_waits_for_its_completion_then_salvages() {
        let mut ops = Ops::new();
        ops.quarantine = Some(Default::default());
        let (op, salvaged) = fake(false);
        let k = ops.insert(op, State::Waiting(Waiter::None));
        assert!(ops.drop_op(k) == Dropped::InFlight);
        assert_eq!(
            ops.in_flight(),
            1,
            "buffers stay with the driver until the CQE"
        );
        ops.complete(k, Ok(9), false);
        assert_eq!(salvaged.get(), 9);
        assert_eq!(ops.in_flight(), 0);
        assert_eq!(ops.check_poison().unwrap(), 1);
    }

    #[test]
    fn dropped_after_completion_but_before_poll_salvages_at_once() {
        let mut ops = Ops::new();
        let (op, salvaged) = fake(false);
        let k = ops.insert(op, State::Waiting(Waiter::None));
        ops.complete(k, Ok(3), false);
        assert!(ops.drop_op(k) == Dropped::Freed);
        assert_eq!(salvaged.get(), 3);
    }

    #[test]
    fn multishot_results_queue_and_the_final_one_ends_it() {
        let mut ops = Ops::new();
        let (op, salvaged) = fake(true);
        let k = ops.insert(op, State::Waiting(Waiter::None));
        ops.complete(k, Ok(10), true);
        ops.complete(k, Ok(11), true);
        assert!(matches!(
            ops.poll_multi(k, Some(&mut cx())),
            Poll::Ready(Some(Ok(10)))
        ));
        // Dropped with a queued result and more to come: the queued one is
        // salvaged now, later ones when they arrive.
        assert!(ops.drop_op(k) == Dropped::InFlight);
        assert_eq!(salvaged.get(), 11);
        ops.complete(k, Ok(12), true);
        assert_eq!(salvaged.get(), 23);
        ops.complete(k, Err(io::Error::from_raw_os_error(libc::ECANCELED)), false);
        assert_eq!(ops.in_flight(), 0);
    }

    #[test]
    fn poison_check_catches_a_write_after_release() {
        let mut ops = Ops::new();
        ops.quarantine = Some(Default::default());
        let (op, _) = fake(false);
        let k = ops.insert(op, State::Waiting(Waiter::None));
        ops.drop_op(k);
        ops.complete(k, Ok(0), false);
        let q = ops.quarantine.as_ref().unwrap();
        // Simulate a late kernel write into the released buffer.
        // SAFETY: the quarantine owns the buffer; the test writes one byte in it.
        unsafe { *q.held[0].ptr.add(3) = 0 };
        let err = ops.check_poison().unwrap_err();
        assert!(err.contains("offset 3"), "{err}");
    }
}
