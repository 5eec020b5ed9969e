//! The proactor backend: io_uring.
//!
//! Ops become SQEs as they are submitted; at most one `io_uring_enter` per
//! loop turn (none when the ring is idle and the turn must not wait) submits
//! them all and reaps completions (always with `GETEVENTS`, which
//! `DEFER_TASKRUN` needs to post them), blocking with an `EXT_ARG` timeout
//! only when the loop has nothing ready. The ring is made on the loop's
//! thread with `SINGLE_ISSUER | DEFER_TASKRUN` where the kernel has them.
//! This holds only the kernel's side; the op table and the pool are the
//! driver's, lent to each call.

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::fd::SharedFd;
use super::lifecycle::Lifecycle;
use super::notify::{Notifier, Waiter};
use super::ops::{Interest, Read};
use super::pool::PoolRef;
use super::table::Ops;

/// User data of SQEs whose completions nobody waits for.
const TAG_CANCEL: u64 = u64::MAX - 1;
/// Set on the user data of the `POLL_ADD` an op waits on after `EAGAIN`.
const POLL_BIT: u64 = 1 << 62;

const ENTER_GETEVENTS: u32 = 1 << 0;
const ENTER_EXT_ARG: u32 = 1 << 3;

const RING_ENTRIES: u32 = 1024;

pub(crate) struct Uring {
    ring: ManuallyDrop<IoUring>,
    /// The slab key of the read that waits on the notifier's eventfd.
    pub(super) wake_key: Option<usize>,
    /// Keeps the eventfd open for the wake read's SharedFd.
    wake_fd: Option<SharedFd>,
    /// Completions copied out of the ring, reused each reap.
    cqes: Vec<(u64, i32, u32)>,
    /// The kernel has multishot `read` (6.7+: pipe transports use it).
    pub(super) read_multishot: bool,
}

/// Builds a ring with the flags the proactor wants, falling back to fewer
/// flags on kernels that lack them.
pub(crate) fn build_ring() -> io::Result<IoUring> {
    let mut b = IoUring::builder();
    b.setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(RING_ENTRIES * 4);
    match b.build(RING_ENTRIES) {
        Ok(r) => Ok(r),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            log::debug!("ringloop: SINGLE_ISSUER|DEFER_TASKRUN unavailable ({e}); plain ring");
            IoUring::builder()
                .setup_cqsize(RING_ENTRIES * 4)
                .build(RING_ENTRIES)
        }
        Err(e) => Err(e),
    }
}

/// Does the kernel take a byte cap on a multishot receive bundle? Bundles
/// came in Linux 6.10, a cap on a multishot receive later (before that the
/// kernel refuses one with `EINVAL`); uncapped, one receive could take the
/// whole buffer ring for a single connection, so bundles are used only
/// with the cap. Asked once per ring, before any op: a capped bundle on an
/// idle socket pair either fails at once or waits, and is then cancelled.
fn takes_capped_bundles(ring: &mut IoUring) -> bool {
    const TAG: u64 = u64::MAX - 2;
    let Ok((a, b)) = std::os::unix::net::UnixStream::pair() else {
        return false;
    };
    let entry = super::pool::bundle_entry(a.as_raw_fd(), super::pool::BUNDLE_MAX).user_data(TAG);
    let cancel = opcode::AsyncCancel::new(TAG).build().user_data(TAG_CANCEL);
    // SAFETY: the entries point at nothing of ours (no buffer: the kernel
    // would pick one from the registered ring); the socket outlives the
    // op, which ends below (failed, or cancelled and reaped).
    if unsafe { ring.submission().push(&entry) }.is_err() {
        return false;
    }
    // (A refusal is posted while the submission is processed.)
    let ts = types::Timespec::from(Duration::from_millis(10));
    let args = types::SubmitArgs::new().timespec(&ts);
    let _ = ring.submitter().submit_with_args(0, &args);
    if ring.completion().any(|c| c.user_data() == TAG) {
        drop((a, b));
        return false;
    }
    // Waiting for data: the kernel took the cap. End it.
    // SAFETY: as above; the cancel names the probe by its tag.
    if unsafe { ring.submission().push(&cancel) }.is_err() {
        std::mem::forget((a, b));
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let _ = ring.submitter().submit_with_args(1, &args);
        if let Some(c) = ring.completion().find(|c| c.user_data() == TAG) {
            drop((a, b));
            return c.result() == -libc::ECANCELED;
        }
    }
    // (Not reaped within a second: leave bundles off. The socket pair is
    // leaked with the op, which may still hold it.)
    std::mem::forget((a, b));
    false
}

impl Uring {
    /// A ring, and the receive pool registered on it.
    pub(crate) fn new(notifier: &Arc<Notifier>) -> io::Result<(Uring, PoolRef)> {
        let mut ring = build_ring()?;
        let pool = super::pool::BufPool::new_ring(&ring.submitter())?;
        // The wake read holds a dup of the eventfd in a SharedFd of its own,
        // so the notifier's descriptor outlives any in-flight read.
        // SAFETY: dup of a valid fd; checked below.
        let dup = unsafe { libc::fcntl(notifier.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `dup` is a fresh descriptor we own.
        let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) };
        let mut probe = io_uring::Probe::new();
        let read_multishot = ring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(io_uring::opcode::ReadMulti::CODE)
            && std::env::var_os("RINGLOOP_NO_READ_MULTISHOT").is_none();
        pool.borrow_mut().bundle = ring.params().is_feature_recvsend_bundle()
            && std::env::var_os("RINGLOOP_NO_RECV_BUNDLE").is_none()
            && takes_capped_bundles(&mut ring);
        let u = Uring {
            read_multishot,
            ring: ManuallyDrop::new(ring),
            wake_fd: Some(SharedFd::new(owned)),
            wake_key: None,
            cqes: Vec::with_capacity(256),
        };
        Ok((u, pool))
    }

    /// Submits the read that wakes the ring when another thread notifies.
    pub(super) fn arm_wake(&mut self, ops: &mut Ops, pool: &PoolRef) {
        let fd = self.wake_fd.clone().expect("wake fd");
        let op = Box::new(Read::new(fd, Vec::<u8>::with_capacity(8)));
        let key = ops.insert(op, Lifecycle::in_flight(Waiter::None));
        ops.stats.ops_submitted -= 1; // internal, not a user op
        self.wake_key = Some(key);
        self.push_key(ops, pool, key);
    }

    fn push_key(&mut self, ops: &mut Ops, pool: &PoolRef, key: usize) {
        let entry = ops.op(key).uring_entry().user_data(key as u64);
        self.push(ops, pool, entry);
    }

    /// Queues an SQE built by the caller (a reusable op's).
    #[inline]
    pub(super) fn push_entry(&mut self, ops: &mut Ops, pool: &PoolRef, entry: squeue::Entry) {
        self.push(ops, pool, entry);
    }

    /// Queues an SQE. When the submission queue is full, submits it (an
    /// extra `io_uring_enter`, counted) and reaps what completed, which also
    /// clears an `EBUSY` from a full completion queue, then retries.
    #[inline]
    fn push(&mut self, ops: &mut Ops, pool: &PoolRef, entry: squeue::Entry) {
        loop {
            // SAFETY: every pointer in the entry refers to op data boxed in
            // the slab, which stays put until the op's final completion
            // (`OpAble`'s contract).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            self.enter(ops, 0, None);
            self.reap(ops, pool);
        }
    }

    /// Submits op `key`, just inserted in the table.
    pub(super) fn submit(&mut self, ops: &mut Ops, pool: &PoolRef, key: usize) {
        self.push_key(ops, pool, key);
    }

    /// Submits op `key` again (a reusable op loaded anew, a deferred
    /// receive whose turn came): its state is set by the caller.
    pub(super) fn resubmit(&mut self, ops: &mut Ops, pool: &PoolRef, key: usize) {
        self.push_key(ops, pool, key);
    }

    /// Asks the kernel to end op `key` (its poll, if it waits on one).
    pub(super) fn cancel(&mut self, ops: &mut Ops, pool: &PoolRef, key: usize, poll: bool) {
        // (At shutdown a push may reap, and so free, other ops.)
        if !ops.slab.contains(key) {
            return;
        }
        let target = if poll {
            key as u64 | POLL_BIT
        } else {
            key as u64
        };
        self.push(
            ops,
            pool,
            opcode::AsyncCancel::new(target)
                .build()
                .user_data(TAG_CANCEL),
        );
    }

    /// Asks the kernel to end an op that stays with its handler: its
    /// final completion (`ECANCELED`, or whatever came first) follows.
    pub(super) fn cancel_keep(&mut self, ops: &mut Ops, pool: &PoolRef, key: usize, poll: bool) {
        self.cancel(ops, pool, key, poll);
    }

    /// Asks a receive back from the kernel (data for its fd was kept
    /// meanwhile): its completion, `ECANCELED` or data, is then served from
    /// the kept data first (`Ops::settle_kept`).
    pub(super) fn recall(&mut self, ops: &mut Ops, pool: &PoolRef, key: usize) {
        let poll = ops.life(key).polling();
        self.cancel(ops, pool, key, poll);
    }

    /// Submits what is queued, if anything, with no wait: completions are
    /// reaped by the turn as usual.
    pub(super) fn submit_queued(&mut self, ops: &mut Ops) {
        if !self.ring.submission().is_empty() {
            ops.stats.mid_turn_submits += 1;
            self.enter(ops, 0, None);
        }
    }

    /// One `io_uring_enter`: submits what is queued, posts completions, and
    /// waits for one if `min_complete` is 1 (bounded by `timeout`).
    fn enter(&mut self, ops: &mut Ops, min_complete: u32, timeout: Option<Duration>) {
        ops.stats.uring_enters += 1;
        let to_submit = self.ring.submission().len() as u32;
        let ts;
        let args;
        let r = match timeout {
            Some(t) if min_complete > 0 => {
                ts = types::Timespec::from(t);
                args = types::SubmitArgs::new().timespec(&ts);
                // SAFETY: `args` lives across the call and matches EXT_ARG.
                unsafe {
                    self.ring.submitter().enter(
                        to_submit,
                        min_complete,
                        ENTER_GETEVENTS | ENTER_EXT_ARG,
                        Some(&args),
                    )
                }
            }
            _ => {
                // SAFETY: no argument is passed, matching the flags.
                unsafe {
                    self.ring.submitter().enter::<libc::sigset_t>(
                        to_submit,
                        min_complete,
                        ENTER_GETEVENTS,
                        None,
                    )
                }
            }
        };
        match r {
            Ok(_) => {}
            Err(e) => match e.raw_os_error() {
                // Timed out, interrupted, or the CQ is full (EBUSY): in every
                // case reaping is what comes next.
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                _ => panic!("ringloop: io_uring_enter failed: {e}"),
            },
        }
    }

    pub(super) fn turn(
        &mut self,
        ops: &mut Ops,
        pool: &PoolRef,
        _notifier: &Notifier,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let wait = timeout != Some(Duration::ZERO);
        if !wait && self.idle(ops) {
            // Nothing queued, nothing in flight but the loop's own eventfd
            // read, nothing posted: an enter would do nothing, so this turn
            // makes none (tasks and callbacks that only compute run without
            // syscalls). Wake-ups from other threads do not depend on it: the
            // loop checks its remote queue every turn.
            return Ok(());
        }
        pool.borrow_mut().turn();
        // Completions may already be posted (a previous turn's overflow): then
        // do not block.
        let ready = !self.ring.completion().is_empty();
        self.enter(ops, u32::from(wait && !ready), timeout);
        self.reap(ops, pool);
        Ok(())
    }

    fn reap(&mut self, ops: &mut Ops, pool: &PoolRef) {
        let mut cqes = std::mem::take(&mut self.cqes);
        loop {
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if cqes.is_empty() {
                break;
            }
            ops.stats.uring_cqes += cqes.len() as u64;
            for &(ud, res, flags) in &cqes {
                self.dispatch(ops, pool, ud, res, flags);
            }
        }
        self.cqes = cqes;
    }

    fn dispatch(&mut self, ops: &mut Ops, pool: &PoolRef, ud: u64, res: i32, flags: u32) {
        if ud == TAG_CANCEL {
            return;
        }
        if ud & POLL_BIT != 0 {
            let key = (ud & !POLL_BIT) as usize;
            let life = ops.life_mut(key);
            life.set_poll(false);
            if life.is_cancelled() || life.is_recalled() {
                ops.complete(
                    key,
                    Err(io::Error::from_raw_os_error(libc::ECANCELED)),
                    false,
                );
            } else if res < 0 && res != -libc::ECANCELED {
                ops.complete(key, Err(io::Error::from_raw_os_error(-res)), false);
            } else {
                self.push_key(ops, pool, key);
            }
            return;
        }
        let key = ud as usize;
        let more = cqueue::more(flags);

        if Some(key) == self.wake_key {
            if ops.shut {
                drop(ops.slab.remove(key));
                self.wake_key = None;
            } else {
                // Rearm the same read; the counter value itself is not needed.
                self.push_key(ops, pool, key);
            }
            return;
        }
        // A receive bundle that filled more than one buffer: one result
        // per buffer, as if each had its own completion.
        if res > super::pool::POOL_BUF_SIZE as i32 {
            if let Some(first) = cqueue::buffer_select(flags) {
                return self.dispatch_bundle(ops, pool, key, first, res as usize, more);
            }
        }
        // The common case first: a handler that takes its result with the
        // notification (EAGAIN and EINTR are retried below instead).
        if res != -libc::EAGAIN && res != -libc::EINTR {
            let value = || match cqueue::buffer_select(flags) {
                // A provided buffer was used: name it in the result.
                Some(bid) => {
                    pool.borrow_mut().note_out();
                    super::pool::encode(bid, res as usize)
                }
                None => res as u32,
            };
            if ops.complete_direct(key, res, more, value) {
                return;
            }
        }
        let cancelled = ops.life(key).is_cancelled();
        if res == -libc::EAGAIN && !cancelled && !ops.op(key).is_multishot() {
            // A non-blocking file answered EAGAIN: wait for readiness, retry.
            let (fd, interest) = ops.op(key).interest();
            ops.life_mut(key).set_poll(true);
            self.push(
                ops,
                pool,
                poll_entry(fd, interest).user_data(key as u64 | POLL_BIT),
            );
            return;
        }
        if res == -libc::EINTR && !cancelled {
            self.push_key(ops, pool, key);
            return;
        }
        let r = if res < 0 {
            Err(io::Error::from_raw_os_error(-res))
        } else if let Some(bid) = cqueue::buffer_select(flags) {
            // A provided buffer was used: name it in the result.
            pool.borrow_mut().note_out();
            Ok(super::pool::encode(bid, res as usize))
        } else {
            Ok(res as u32)
        };
        ops.complete(key, r, more);
    }

    /// Hands on a bundle of `len` bytes starting in buffer `first`: every
    /// buffer but the last is full, and each is one result of the op (the
    /// last one carries the completion's `more`), so receivers, the stash
    /// and the cancel paths see single-buffer results only.
    #[cold]
    #[inline(never)]
    fn dispatch_bundle(
        &mut self,
        ops: &mut Ops,
        pool: &PoolRef,
        key: usize,
        first: u16,
        len: usize,
        more: bool,
    ) {
        use super::pool::POOL_BUF_SIZE;
        ops.stats.recv_bundles += 1;
        let bufs = len.div_ceil(POOL_BUF_SIZE) as u64;
        ops.stats.recv_bundle_max = ops.stats.recv_bundle_max.max(bufs);
        let mut at = pool.borrow().bundle_start(first);
        let mut left = len;
        while left > 0 {
            let n = left.min(POOL_BUF_SIZE);
            left -= n;
            let v = {
                let mut p = pool.borrow_mut();
                let bid = p.bid_at(at);
                p.note_out();
                super::pool::encode(bid, n)
            };
            at += 1;
            let m = more || left > 0;
            if !ops.complete_direct(key, n as i32, m, || v) {
                ops.complete(key, Ok(v), m);
            }
        }
    }

    /// Cancels everything in flight, drains for at most `bound`, and leaks
    /// what the kernel still holds (`ops.shut` is already set).
    pub(super) fn shutdown(&mut self, ops: &mut Ops, pool: &PoolRef, bound: Duration) {
        let keys: Vec<usize> = ops.slab.iter().map(|(k, _)| k).collect();
        for key in keys {
            // Each cancel may fill the submission queue, whose flush reaps
            // completions and frees their ops: skip keys gone meanwhile.
            let Some(slot) = ops.slab.get(key) else {
                continue;
            };
            if slot.life.at_rest() && !slot.op.is_multishot() {
                continue;
            }
            // As if its handle were dropped: what it got is salvaged, a
            // finished one freed, one in flight cancelled.
            if let super::table::Cancel::InFlight { poll } = ops.drop_op(key) {
                self.cancel(ops, pool, key, poll);
            }
        }
        let deadline = Instant::now() + bound;
        while ops.any_in_kernel() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.enter(
                ops,
                1,
                Some((deadline - now).min(Duration::from_millis(50))),
            );
            self.reap(ops, pool);
        }
        // Anything still held by the kernel is leaked, never freed: the kernel
        // may write into it after we return (DESIGN.md invariant 2).
        let leaked: Vec<usize> = ops
            .slab
            .iter()
            .filter(|(_, s)| s.life.in_kernel())
            .map(|(k, _)| k)
            .collect();
        for key in &leaked {
            let slot = ops.slab.remove(*key);
            std::mem::forget(slot);
        }
        ops.stats.leaked_at_close = leaked.len() as u64;
        // The wake read is over (or leaked with its own reference): its dup
        // of the eventfd closes with the loop.
        self.wake_fd = None;
        if leaked.is_empty() {
            let _ = self.ring.submitter().unregister_buf_ring(super::pool::BGID);
            // SAFETY: nothing is in flight any more, so no kernel access to
            // our memory can follow the ring's teardown. Never used again.
            unsafe { ManuallyDrop::drop(&mut self.ring) };
        } else {
            // The kernel may still pick pool buffers: keep the pool forever.
            std::mem::forget(pool.clone());
            log::warn!(
                "ringloop: {} io_uring ops still in flight at close; their buffers and the ring are leaked",
                leaked.len()
            );
        }
    }

    /// No user op in the slab, nothing queued, nothing posted.
    fn idle(&mut self, ops: &Ops) -> bool {
        let internal = usize::from(self.wake_key.is_some());
        if ops.slab.len() > internal {
            return false;
        }
        let sq = self.ring.submission();
        let quiet = sq.is_empty() && !sq.cq_overflow();
        drop(sq);
        quiet && self.ring.completion().is_empty()
    }
}

fn poll_entry(fd: RawFd, interest: Interest) -> squeue::Entry {
    let events = match interest {
        Interest::Read => libc::POLLIN,
        Interest::Write => libc::POLLOUT,
    };
    opcode::PollAdd::new(types::Fd(fd), events as u32).build()
}
