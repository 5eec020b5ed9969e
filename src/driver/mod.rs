//! The driver layer: owned-buffer operations and `turn(timeout)`, on
//! io_uring (proactor) or epoll (selector).
//!
//! Everything above this module sees one API: `Driver::submit` moves an op
//! (with its fd and buffers) in and returns a key; the handles in
//! `handles.rs` (`Op`, the future that hands the op back with its result,
//! and the handler forms) hold it; `Driver::turn` is the one blocking call
//! per loop iteration. The state both backends share (the op table, the
//! cross-thread notifier, the receive pool) is held here once; the backend
//! enum holds only kernel state, chosen at run time.
//!
//! - `notify.rs`: the notifier, waiters, tokens and the typed event a
//!   handler is told;
//! - `lifecycle.rs`: one op's lifecycle enum and its transitions;
//! - `table.rs`: the op slab and what completions do there (stash, read
//!   gate, poison quarantine);
//! - `handles.rs`: `Op`, `HandlerOp`, `ReusableOp`, `MultiOp`;
//! - `ops.rs`: the operations, one struct each (`OpAble`);
//! - `uring.rs`, `epoll.rs`: the two kernel interfaces;
//! - `pool.rs`, `fd.rs`, `buf.rs`, `probe.rs`, `sys.rs`: receive pool,
//!   shared fds, buffer traits, the io_uring probe, small syscalls.

pub mod buf;
pub(crate) mod epoll;
pub(crate) mod fd;
pub(crate) mod handles;
pub(crate) mod lifecycle;
pub(crate) mod notify;
pub(crate) mod ops;
pub(crate) mod pool;
pub(crate) mod probe;
pub(crate) mod sighub;
pub(crate) mod sys;
pub(crate) mod table;
pub(crate) mod uring;

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub(crate) use handles::{HandlerOp, MultiOp, Op, ReusableOp};
use notify::Waiter;
pub(crate) use notify::{Done, Event, Notified, Notifier, Notify, Token};
use ops::OpAble;
use table::{Cancel, Ops};

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
    /// Proactor: receive completions that filled more than one pool buffer
    /// (a bundle, Linux 6.10+), each handed on as one result per buffer.
    pub recv_bundles: u64,
    /// Proactor: the most pool buffers one receive bundle filled (0 while
    /// no completion filled more than one): at most 4 (64 KiB) while the
    /// loop has one socket receive, 8 (128 KiB) with more (see *Receive
    /// bundles* in docs/design.md).
    pub recv_bundle_max: u64,
    /// Proactor: enters made mid-turn because a layer asked for its writes
    /// to leave at once (a TLS handshake flight).
    pub mid_turn_submits: u64,
    /// Readiness events on which a layer read its socket itself (TLS in
    /// readiness mode, where a transport would receive into the pool).
    pub readiness_reads: u64,
}

/// The kernel side of a driver: the backend chosen at run time.
enum Kernel {
    Uring(uring::Uring),
    Epoll(epoll::Epoll),
}

/// The driver of one loop.
pub(crate) struct Driver {
    pub(crate) ops: Ops,
    notifier: Arc<Notifier>,
    pool: pool::PoolRef,
    kernel: Kernel,
}

/// Shared handle through which op handles reach their loop's driver.
pub(crate) type DriverRef = Rc<RefCell<Driver>>;

/// Runs `$e` with `$k` bound to the backend, and `$o`/`$p` to the op table
/// and the pool (disjoint borrows of the driver's fields).
macro_rules! each {
    ($self:expr, $k:ident, $o:ident, $p:ident => $e:expr) => {{
        let d = &mut *$self;
        let ($o, $p) = (&mut d.ops, &d.pool);
        match &mut d.kernel {
            Kernel::Uring($k) => $e,
            Kernel::Epoll($k) => {
                let _ = $p;
                $e
            }
        }
    }};
}

impl Driver {
    pub(crate) fn new(backend: Backend) -> io::Result<Driver> {
        let notifier = Notifier::new()?;
        let (kernel, pool) = match backend {
            Backend::Proactor => {
                let (u, pool) = uring::Uring::new(&notifier)?;
                (Kernel::Uring(u), pool)
            }
            Backend::Selector => (
                Kernel::Epoll(epoll::Epoll::new(&notifier)?),
                pool::BufPool::new_free_list(),
            ),
        };
        let mut d = Driver {
            ops: Ops::new(),
            notifier,
            pool,
            kernel,
        };
        if let Kernel::Uring(u) = &mut d.kernel {
            u.arm_wake(&mut d.ops, &d.pool);
        }
        Ok(d)
    }

    /// Pipes can take a multishot read (the selector emulates it; the
    /// proactor needs Linux 6.7, else each read is a plain one).
    pub(crate) fn read_multishot(&self) -> bool {
        match &self.kernel {
            Kernel::Uring(u) => u.read_multishot,
            Kernel::Epoll(_) => true,
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        match self.kernel {
            Kernel::Uring(_) => Backend::Proactor,
            Kernel::Epoll(_) => Backend::Selector,
        }
    }

    /// Submits an op: `w` hears of its completion (see [`Waiter`]).
    pub(crate) fn submit(&mut self, mut op: Box<dyn OpAble>, w: Waiter) -> usize {
        let ops = &mut self.ops;
        if ops.shut {
            return ops.insert_done(op, Err(closed_error()), w);
        }
        if op.read_gate().is_some() {
            // Receives on one fd take their turns: one waits in the slab
            // while an earlier one's data may still go to the stash.
            let key = ops.slab.vacant_key();
            if !op.read_gate().is_some_and(|fd| fd.gate_enter(key)) {
                let k = ops.insert(op, lifecycle::Lifecycle::Deferred(w));
                debug_assert_eq!(k, key);
                return k;
            }
        }
        if let Some(res) = op.take_stashed(&mut ops.stash) {
            ops.stats.stash_hits += 1;
            return ops.insert_done(op, res, w);
        }
        let key = ops.insert_submitted(op, w);
        each!(self, k, o, p => k.submit(o, p, key));
        key
    }

    /// Loads an idle reusable op (of type `T`) with `load` and submits it
    /// again; its completion goes to `h` with the result. One slab lookup:
    /// the SQE is built from the typed op (no vtable call).
    #[inline]
    pub(crate) fn submit_reusable<T: OpAble>(
        &mut self,
        key: usize,
        token: notify::Token,
        h: Rc<dyn Notify>,
        load: impl FnOnce(&mut T),
    ) {
        let ops = &mut self.ops;
        ops.stats.ops_submitted += 1;
        let shut = ops.shut;
        let slot = &mut ops.slab[key];
        assert!(
            notify::token(key, slot.generation) == token,
            "ringloop driver: a reusable op's slot was taken by another op"
        );
        debug_assert!(
            slot.op.as_any_mut().is::<T>(),
            "ringloop driver: op type mismatch"
        );
        let p: *mut dyn OpAble = &mut *slot.op;
        // SAFETY: the caller's handle put a `T` at `key` and the slot's
        // generation is still that op's, so the box holds that `T`; the
        // reference lives while the driver is borrowed here.
        let op = unsafe { &mut *p.cast::<T>() };
        load(op);
        let entry = match (&self.kernel, shut) {
            (Kernel::Uring(_), false) => Some(op.uring_entry().user_data(key as u64)),
            _ => None,
        };
        slot.life.resume(h);
        if shut {
            ops.complete(key, Err(closed_error()), false);
            return;
        }
        match (&mut self.kernel, entry) {
            (Kernel::Uring(u), Some(e)) => u.push_entry(ops, &self.pool, e),
            _ => each!(self, k, o, p => k.resubmit(o, p, key)),
        }
    }

    /// Starts the receives whose turn came (their fd's earlier receives
    /// are settled): from the data those kept, if any, else in the kernel;
    /// and recalls receives in flight on fds that got kept data.
    fn start_deferred(&mut self) {
        while !self.ops.recall.is_empty() {
            let fds = std::mem::take(&mut self.ops.recall);
            let keys: Vec<usize> = self
                .ops
                .slab
                .iter()
                .filter(|(_, s)| {
                    matches!(
                        s.life,
                        lifecycle::Lifecycle::InFlight {
                            recalled: false,
                            ..
                        }
                    ) && s.op.read_gate().is_some_and(|fd| fds.contains(&fd.id()))
                })
                .map(|(k, _)| k)
                .collect();
            for key in keys {
                self.ops.life_mut(key).recall();
                each!(self, k, o, p => k.recall(o, p, key));
            }
        }
        while !self.ops.to_start.is_empty() {
            let keys = std::mem::take(&mut self.ops.to_start);
            for key in keys {
                let ops = &mut self.ops;
                let slot = &mut ops.slab[key];
                if let Some(res) = slot.op.take_stashed(&mut ops.stash) {
                    ops.finish_from_stash(key, res);
                    continue;
                }
                slot.life.start();
                if ops.shut {
                    ops.complete(key, Err(closed_error()), false);
                    continue;
                }
                each!(self, k, o, p => k.resubmit(o, p, key));
            }
        }
    }

    /// Polls op `key` for its future.
    pub(crate) fn poll_op(
        &mut self,
        key: usize,
        cx: &mut Context<'_>,
    ) -> Poll<(io::Result<u32>, Box<dyn OpAble>)> {
        let r = self.ops.poll(key, cx);
        if r.is_ready() && self.ops.has_pending() {
            self.start_deferred();
        }
        r
    }

    /// The result of a finished handler op, freeing its slot.
    pub(crate) fn take_done(&mut self, key: usize) -> Option<(io::Result<u32>, Box<dyn OpAble>)> {
        let r = self.ops.take_done(key);
        if self.ops.has_pending() {
            self.start_deferred();
        }
        r
    }

    /// Moves the handlers to tell into `out` (for the loop).
    pub(crate) fn take_notified(&mut self, out: &mut Vec<Notified>) {
        std::mem::swap(out, &mut self.ops.notified);
    }

    /// Unhooks every handler (the loop is closing) and returns them, for
    /// the caller to drop once the driver is no longer borrowed.
    pub(crate) fn take_handlers(&mut self) -> Vec<Rc<dyn Notify>> {
        let ops = &mut self.ops;
        let mut out: Vec<Rc<dyn Notify>> = ops.notified.drain(..).map(|(h, _)| h).collect();
        for (_, slot) in ops.slab.iter_mut() {
            out.extend(slot.life.unhook());
        }
        out
    }

    /// Handlers wait to be told of completions (the loop must not block).
    pub(crate) fn has_notified(&self) -> bool {
        !self.ops.notified.is_empty()
    }

    /// The handle of op `key` is gone: free it, or cancel it in flight.
    pub(crate) fn drop_op(&mut self, key: usize) {
        if self.ops.shut && !self.ops.slab.contains(key) {
            return; // leaked or cleared at shutdown
        }
        if let Cancel::InFlight { poll } = self.ops.drop_op(key) {
            each!(self, k, o, p => k.cancel(o, p, key, poll));
        }
        if self.ops.has_pending() {
            self.start_deferred();
        }
    }

    /// Ends a multishot op but keeps its handler (see `MultiOp::cancel`).
    pub(crate) fn cancel_keep(&mut self, key: usize) {
        if self.ops.shut || self.ops.is_finished(key) {
            return;
        }
        let poll = self.ops.life(key).polling();
        each!(self, k, o, p => k.cancel_keep(o, p, key, poll));
    }

    /// Hands the kernel what is queued now, without waiting or reaping
    /// (the proactor's mid-turn flush; the selector made its syscalls
    /// already).
    pub(crate) fn submit_queued(&mut self) {
        if let Kernel::Uring(u) = &mut self.kernel {
            u.submit_queued(&mut self.ops);
        }
    }

    /// Waits for I/O at most `timeout` (`None`: until something happens) and
    /// records completions, waking their futures.
    pub(crate) fn turn(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.ops.stats.turns += 1;
        // (Disjoint borrows of the fields: no notifier clone per turn.)
        let (ops, pool, notifier) = (&mut self.ops, &self.pool, &*self.notifier);
        let r = match &mut self.kernel {
            Kernel::Uring(u) => u.turn(ops, pool, notifier, timeout),
            Kernel::Epoll(e) => e.turn(ops, pool, notifier, timeout),
        };
        // Receives cancelled in flight ended in this turn: the ones
        // issued after them start now.
        if self.ops.has_pending() {
            self.start_deferred();
        }
        r
    }

    pub(crate) fn notifier(&self) -> Arc<Notifier> {
        self.notifier.clone()
    }

    pub(crate) fn stats(&self) -> DriverStats {
        self.ops.stats
    }

    /// A layer is about to read its socket itself (readiness mode).
    pub(crate) fn count_readiness_read(&mut self) {
        self.ops.stats.readiness_reads += 1;
    }

    /// The loop's receive-buffer pool.
    pub(crate) fn pool(&self) -> pool::PoolRef {
        self.pool.clone()
    }

    /// Data cancelled receives kept for `fd`, in order.
    pub(crate) fn take_stashed(&mut self, fd: &fd::SharedFd) -> Vec<Vec<u8>> {
        let v = self.ops.stash.take_all(fd);
        self.ops.stats.stash_hits += v.len() as u64;
        v
    }

    /// Keeps received bytes for the next receive on `fd` (a handler got
    /// them for a receive it had already given up).
    pub(crate) fn stash_data(&mut self, fd: &fd::SharedFd, data: Vec<u8>) {
        self.ops.stash.push_data(fd, data);
    }

    /// Pool buffers handed out and not back yet.
    #[cfg_attr(not(feature = "diagnostics"), allow(dead_code))]
    pub(crate) fn pool_buffers_out(&self) -> usize {
        self.pool.borrow().out
    }

    /// Proactor: (receive-ring size now, times the ring ran dry).
    #[cfg_attr(not(feature = "diagnostics"), allow(dead_code))]
    #[cfg_attr(not(feature = "diagnostics"), allow(dead_code))]
    pub(crate) fn uses_recv_bundles(&self) -> bool {
        matches!(self.kernel, Kernel::Uring(_)) && self.pool.borrow().bundle
    }

    #[cfg_attr(not(feature = "diagnostics"), allow(dead_code))]
    pub(crate) fn recv_ring_stats(&self) -> Option<(usize, u64)> {
        self.pool.borrow().ring_stats()
    }

    /// User ops in the slab (the proactor's own eventfd read excluded).
    #[cfg_attr(not(feature = "diagnostics"), allow(dead_code))]
    pub(crate) fn in_flight(&self) -> usize {
        let internal = match &self.kernel {
            Kernel::Uring(u) => usize::from(u.wake_key.is_some()),
            Kernel::Epoll(_) => 0,
        };
        self.ops.in_flight() - internal
    }

    /// Cancels everything in flight, drains completions for at most `bound`,
    /// and leaks (never frees) whatever the kernel still holds.
    pub(crate) fn shutdown(&mut self, bound: Duration) {
        if self.ops.shut {
            return;
        }
        self.ops.shut = true;
        each!(self, k, o, p => k.shutdown(o, p, bound));
    }

    #[cfg_attr(not(feature = "diagnostics"), allow(dead_code))]
    pub(crate) fn enable_poison(&mut self) {
        self.ops.enable_poison();
    }

    #[cfg_attr(not(feature = "diagnostics"), allow(dead_code))]
    pub(crate) fn check_poison(&self) -> Result<usize, String> {
        self.ops.check_poison()
    }

    #[cfg_attr(not(feature = "diagnostics"), allow(dead_code))]
    pub(crate) fn stashed(&self, fd: std::os::fd::RawFd) -> usize {
        self.ops.stash.held(fd)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(1));
    }
}

/// The error of an op submitted to (or left in) a closed loop's driver.
pub(crate) fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the event loop is closed")
}

/// Takes ownership of the descriptor an accept op returned.
pub(crate) fn owned_from_accept(fd: u32) -> OwnedFd {
    // SAFETY: the kernel just created this descriptor for us; nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Driver({})", self.backend())
    }
}
