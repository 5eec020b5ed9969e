//! The proactor backend: io_uring.
//!
//! Ops become SQEs as they are submitted; at most one `io_uring_enter` per
//! loop turn (none when the ring is idle and the turn must not wait) submits
//! them all and reaps completions (always with `GETEVENTS`, which
//! `DEFER_TASKRUN` needs to post them), blocking with an `EXT_ARG` timeout
//! only when the loop has nothing ready. The ring is made on the loop's
//! thread with `SINGLE_ISSUER | DEFER_TASKRUN` where the kernel has them.

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::fd::SharedFd;
use super::ops::{Interest, OpAble, Read};
use super::{Notifier, Ops, State, Waiter};

/// User data of SQEs whose completions nobody waits for.
const TAG_CANCEL: u64 = u64::MAX - 1;
/// Set on the user data of the `POLL_ADD` an op waits on after `EAGAIN`.
const POLL_BIT: u64 = 1 << 62;

const ENTER_GETEVENTS: u32 = 1 << 0;
const ENTER_EXT_ARG: u32 = 1 << 3;

const RING_ENTRIES: u32 = 1024;

pub(crate) struct Uring {
    ring: ManuallyDrop<IoUring>,
    pub(super) ops: Ops,
    pub(super) notifier: Arc<Notifier>,
    pub(super) pool: super::pool::PoolRef,
    /// The slab key of the read that waits on the notifier's eventfd.
    pub(super) wake_key: Option<usize>,
    /// Keeps the eventfd open for the wake read's SharedFd.
    wake_fd: Option<SharedFd>,
    pub(super) shut: bool,
    /// Completions copied out of the ring, reused each reap.
    cqes: Vec<(u64, i32, u32)>,
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

impl Uring {
    pub(crate) fn new() -> io::Result<Uring> {
        let ring = build_ring()?;
        let notifier = Notifier::new()?;
        let pool = super::pool::BufPool::new_ring(&ring.submitter())?;
        let mut u = Uring {
            pool,
            ring: ManuallyDrop::new(ring),
            ops: Ops::new(),
            notifier,
            wake_fd: None,
            wake_key: None,
            shut: false,
            cqes: Vec::with_capacity(256),
        };
        // The wake read holds a dup of the eventfd in a SharedFd of its own,
        // so the notifier's descriptor outlives any in-flight read.
        // SAFETY: dup of a valid fd; checked below.
        let dup = unsafe { libc::fcntl(u.notifier.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `dup` is a fresh descriptor we own.
        let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) };
        u.wake_fd = Some(SharedFd::new(owned));
        u.arm_wake();
        Ok(u)
    }

    fn arm_wake(&mut self) {
        let fd = self.wake_fd.clone().expect("wake fd");
        let op = Box::new(Read::new(fd, Vec::<u8>::with_capacity(8)));
        let key = self.ops.insert(op, State::Waiting(Waiter::None));
        self.ops.stats.ops_submitted -= 1; // internal, not a user op
        self.wake_key = Some(key);
        self.push_key(key);
    }

    fn push_key(&mut self, key: usize) {
        let entry = self.ops.slab[key].op.uring_entry().user_data(key as u64);
        self.push(entry);
    }

    /// Queues an SQE. When the submission queue is full, submits it (an
    /// extra `io_uring_enter`, counted) and reaps what completed, which also
    /// clears an `EBUSY` from a full completion queue, then retries.
    pub(super) fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every pointer in the entry refers to op data boxed in
            // the slab, which stays put until the op's final completion.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            self.enter(0, None);
            self.reap();
        }
    }

    pub(super) fn submit(&mut self, op: Box<dyn OpAble>, w: Waiter) -> usize {
        if self.shut {
            return self
                .ops
                .insert_done(op, Err(super::epoll::closed_error()), w);
        }
        let key = self.ops.insert(op, State::Waiting(w));
        self.push_key(key);
        key
    }

    /// Submits an idle reusable op again (its state is set by the caller).
    pub(super) fn resubmit(&mut self, key: usize) {
        if self.shut {
            self.ops
                .complete(key, Err(super::epoll::closed_error()), false);
        } else {
            self.push_key(key);
        }
    }

    pub(super) fn cancel(&mut self, key: usize) {
        // (At shutdown a push below may reap, and so free, other ops.)
        let Some(slot) = self.ops.slab.get(key) else {
            return;
        };
        let target = if slot.polling {
            key as u64 | POLL_BIT
        } else {
            key as u64
        };
        self.push(
            opcode::AsyncCancel::new(target)
                .build()
                .user_data(TAG_CANCEL),
        );
    }

    /// Asks a receive back from the kernel (data for its fd was kept
    /// meanwhile): its completion, `ECANCELED` or data, is then served from
    /// the kept data first (`Ops::settle_kept`).
    pub(super) fn recall(&mut self, key: usize) {
        self.cancel(key);
    }

    /// Asks the kernel to end an op that stays with its handler: its
    /// final completion (`ECANCELED`, or whatever came first) follows.
    pub(super) fn cancel_keep(&mut self, key: usize) {
        self.cancel(key);
    }

    /// One `io_uring_enter`: submits what is queued, posts completions, and
    /// waits for one if `min_complete` is 1 (bounded by `timeout`).
    fn enter(&mut self, min_complete: u32, timeout: Option<Duration>) {
        self.ops.stats.uring_enters += 1;
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

    pub(super) fn turn(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let wait = timeout != Some(Duration::ZERO);
        if !wait && self.idle() {
            // Nothing queued, nothing in flight but the loop's own eventfd
            // read, nothing posted: an enter would do nothing, so this turn
            // makes none (tasks and callbacks that only compute run without
            // syscalls). Wake-ups from other threads do not depend on it: the
            // loop checks its remote queue every turn.
            return Ok(());
        }
        self.pool.borrow_mut().turn();
        // Completions may already be posted (a previous turn's overflow): then
        // do not block.
        let ready = !self.ring.completion().is_empty();
        self.enter(u32::from(wait && !ready), timeout);
        self.reap();
        Ok(())
    }

    fn reap(&mut self) {
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
            self.ops.stats.uring_cqes += cqes.len() as u64;
            for &(ud, res, flags) in &cqes {
                self.dispatch(ud, res, flags);
            }
        }
        self.cqes = cqes;
    }

    fn dispatch(&mut self, ud: u64, res: i32, flags: u32) {
        if ud == TAG_CANCEL {
            return;
        }
        if ud & POLL_BIT != 0 {
            let key = (ud & !POLL_BIT) as usize;
            let slot = &mut self.ops.slab[key];
            slot.polling = false;
            if matches!(slot.state, State::Ignored) || slot.recalled {
                self.ops.complete(
                    key,
                    Err(io::Error::from_raw_os_error(libc::ECANCELED)),
                    false,
                );
            } else if res < 0 && res != -libc::ECANCELED {
                self.ops
                    .complete(key, Err(io::Error::from_raw_os_error(-res)), false);
            } else {
                self.push_key(key);
            }
            return;
        }
        let key = ud as usize;
        let more = cqueue::more(flags);

        if Some(key) == self.wake_key {
            if self.shut {
                let slot = self.ops.slab.remove(key);
                drop(slot);
                self.wake_key = None;
            } else {
                // Rearm the same read; the counter value itself is not needed.
                self.push_key(key);
            }
            return;
        }
        // The common case first: a handler that takes its result with the
        // notification (EAGAIN and EINTR are retried below instead).
        if res != -libc::EAGAIN && res != -libc::EINTR {
            let pool = &self.pool;
            let value = || match cqueue::buffer_select(flags) {
                // A provided buffer was used: name it in the result.
                Some(bid) => {
                    pool.borrow_mut().note_out();
                    super::pool::encode(bid, res as usize)
                }
                None => res as u32,
            };
            if self.ops.complete_direct(key, res, more, value) {
                return;
            }
        }
        let slot = &mut self.ops.slab[key];
        let ignored = matches!(slot.state, State::Ignored);
        if res == -libc::EAGAIN && !ignored && !slot.op.is_multishot() {
            // A non-blocking file answered EAGAIN: wait for readiness, retry.
            let (fd, interest) = slot.op.interest();
            slot.polling = true;
            self.push(poll_entry(fd, interest).user_data(key as u64 | POLL_BIT));
            return;
        }
        if res == -libc::EINTR && !ignored {
            self.push_key(key);
            return;
        }
        let r = if res < 0 {
            Err(io::Error::from_raw_os_error(-res))
        } else if let Some(bid) = cqueue::buffer_select(flags) {
            // A provided buffer was used: name it in the result.
            self.pool.borrow_mut().note_out();
            Ok(super::pool::encode(bid, res as usize))
        } else {
            Ok(res as u32)
        };
        self.ops.complete(key, r, more);
    }

    pub(super) fn shutdown(&mut self, bound: Duration) {
        if self.shut {
            return;
        }
        self.shut = true;
        let keys: Vec<usize> = self.ops.slab.iter().map(|(k, _)| k).collect();
        for key in keys {
            // Each cancel may fill the submission queue, whose flush reaps
            // completions and frees their ops: skip keys gone meanwhile.
            let Some(slot) = self.ops.slab.get_mut(key) else {
                continue;
            };
            if slot.state.at_rest() && slot.multi.is_none() {
                continue;
            }
            // As if its future were dropped: what it got is salvaged, a
            // finished one freed, one in flight cancelled.
            if self.ops.drop_op(key) == super::Dropped::InFlight {
                self.cancel(key);
            }
        }
        let deadline = Instant::now() + bound;
        while self.has_in_flight() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.enter(1, Some((deadline - now).min(Duration::from_millis(50))));
            self.reap();
        }
        // Anything still held by the kernel is leaked, never freed: the kernel
        // may write into it after we return (DESIGN.md invariant 2).
        let leaked: Vec<usize> = self
            .ops
            .slab
            .iter()
            .filter(|(_, s)| !s.state.at_rest())
            .map(|(k, _)| k)
            .collect();
        for key in &leaked {
            let slot = self.ops.slab.remove(*key);
            std::mem::forget(slot);
        }
        self.ops.stats.leaked_at_close = leaked.len() as u64;
        if leaked.is_empty() {
            let _ = self.ring.submitter().unregister_buf_ring(super::pool::BGID);
            // SAFETY: nothing is in flight any more, so no kernel access to
            // our memory can follow the ring's teardown. Never used again.
            unsafe { ManuallyDrop::drop(&mut self.ring) };
        } else {
            // The kernel may still pick pool buffers: keep the pool forever.
            std::mem::forget(self.pool.clone());
            log::warn!(
                "ringloop: {} io_uring ops still in flight at close; their buffers and the ring are leaked",
                leaked.len()
            );
        }
    }

    /// No user op in the slab, nothing queued, nothing posted.
    fn idle(&mut self) -> bool {
        let internal = usize::from(self.wake_key.is_some());
        if self.ops.slab.len() > internal {
            return false;
        }
        let sq = self.ring.submission();
        let quiet = sq.is_empty() && !sq.cq_overflow();
        drop(sq);
        quiet && self.ring.completion().is_empty()
    }

    fn has_in_flight(&self) -> bool {
        self.ops.slab.iter().any(|(_, s)| !s.state.at_rest())
    }
}

fn poll_entry(fd: RawFd, interest: Interest) -> squeue::Entry {
    let events = match interest {
        Interest::Read => libc::POLLIN,
        Interest::Write => libc::POLLOUT,
    };
    opcode::PollAdd::new(types::Fd(fd), events as u32).build()
}

impl Drop for Uring {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(1));
    }
}
