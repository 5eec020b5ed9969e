//! The op table both backends share: the slab of ops (each with its
//! [`Lifecycle`]), what completions do there (salvage into the stash, the
//! read gate, waking, the handlers to tell), and the poison quarantine.

use std::io;
use std::task::{Context, Poll, Waker};

use slab::Slab;

use super::DriverStats;
use super::lifecycle::{Completed, Dropped, Lifecycle, Slot, Wake};
use super::notify::{Done, Event, Notified, Token, Waiter, token};
use super::ops::{self, OpAble, Stash};

/// Buffers of released ops, overwritten with a pattern and kept to catch any
/// kernel write after the driver let go of them (tests only).
#[derive(Default)]
struct Quarantine {
    held: Vec<ops::Released>,
}

const POISON: u8 = 0xA5;

/// What the backend must do after a future gave up on its op.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cancel {
    /// The op was not in flight any more; its slot is free.
    Freed,
    /// The op is in flight: the backend cancels it (targeting its poll if
    /// `poll`); the slot stays `Cancelled` until the final completion.
    InFlight { poll: bool },
}

/// The slab of ops and the rules of their lifecycle, shared by both backends.
pub(crate) struct Ops {
    pub(super) slab: Slab<Slot>,
    /// Handlers to tell, for the loop to call.
    pub(super) notified: Vec<Notified>,
    pub(super) stash: Stash,
    quarantine: Option<Quarantine>,
    pub(super) stats: DriverStats,
    next_generation: u32,
    /// Deferred receives whose turn has come, to be started by the driver.
    pub(super) to_start: Vec<usize>,
    /// Fds (by `SharedFd::id`) that got kept data while other receives on
    /// them may be in flight: the driver recalls those.
    pub(super) recall: Vec<u64>,
    /// The loop closed: nothing is submitted any more.
    pub(super) shut: bool,
}

impl Ops {
    pub(super) fn new() -> Ops {
        Ops {
            slab: Slab::with_capacity(256),
            notified: Vec::new(),
            stash: Stash::default(),
            quarantine: None,
            stats: DriverStats::default(),
            next_generation: 0,
            to_start: Vec::new(),
            recall: Vec::new(),
            shut: false,
        }
    }

    pub(super) fn insert(&mut self, op: Box<dyn OpAble>, life: Lifecycle) -> usize {
        self.stats.ops_submitted += 1;
        self.next_generation = self.next_generation.wrapping_add(1);
        self.slab.insert(Slot {
            op,
            generation: self.next_generation,
            life,
        })
    }

    /// Inserts an op about to be submitted, in the state its kind starts in.
    pub(super) fn insert_submitted(&mut self, op: Box<dyn OpAble>, w: Waiter) -> usize {
        let life = if op.is_multishot() {
            Lifecycle::streaming(w)
        } else {
            Lifecycle::in_flight(w)
        };
        self.insert(op, life)
    }

    /// The token naming the op at `key` now.
    pub(super) fn token(&self, key: usize) -> Token {
        token(key, self.slab[key].generation)
    }

    pub(super) fn op(&mut self, key: usize) -> &mut dyn OpAble {
        &mut *self.slab[key].op
    }

    pub(super) fn life(&self, key: usize) -> &Lifecycle {
        &self.slab[key].life
    }

    pub(super) fn life_mut(&mut self, key: usize) -> &mut Lifecycle {
        &mut self.slab[key].life
    }

    /// Records a completion given as the kernel's raw result, for the
    /// common cases of a handler that takes its results with the
    /// notification: a reusable op (a stream's send; it goes back to
    /// `Idle`) and a stream multishot op (a stream's receive). `value` makes
    /// the result value from the non-negative `res` (naming a pool buffer).
    /// False for any other op: the caller goes through
    /// [`complete`](Self::complete).
    #[inline]
    pub(super) fn complete_direct(
        &mut self,
        key: usize,
        res: i32,
        more: bool,
        value: impl FnOnce() -> u32,
    ) -> bool {
        let slot = &mut self.slab[key];
        let tok = token(key, slot.generation);
        match slot.life.hand_over(more, |last| Done {
            res: if res < 0 { Err(-res) } else { Ok(value()) },
            last,
        }) {
            Some((h, done)) => {
                self.notified.push((h, Event::Completed(tok, done)));
                true
            }
            None => false,
        }
    }

    /// Records a completion. `more` is false for the op's final completion.
    ///
    /// # Panics
    ///
    /// For an unknown op or one not in flight: a broken driver invariant.
    pub(super) fn complete(&mut self, key: usize, res: io::Result<u32>, more: bool) {
        let Some(slot) = self.slab.get_mut(key) else {
            panic!("ringloop driver: completion for unknown op {key}");
        };
        // A receive completing while data is kept for its fd: that data
        // first (see `settle_kept`).
        let res =
            if matches!(slot.life, Lifecycle::InFlight { .. }) && slot.op.read_gate().is_some() {
                match self.settle_kept(key, res) {
                    Some(res) => res,
                    None => return,
                }
            } else {
                res
            };
        let slot = &mut self.slab[key];
        let tok = token(key, slot.generation);
        let raw = res.as_ref().map_or(-1, |&n| n as i32);
        match slot.life.complete(res, more) {
            Completed::HandOver(h, done) => self.notified.push((h, Event::Completed(tok, done))),
            Completed::Recorded(wake) => {
                // A receive's result may still go to the stash (its
                // future may drop it unseen): its fd's gate counts it.
                if matches!(slot.life, Lifecycle::Done(_)) {
                    if let Some(fd) = slot.op.read_gate() {
                        fd.gate_hold();
                    }
                }
                self.tell(tok, wake);
            }
            Completed::Salvage { free } => self.salvage_late(key, raw, free),
        }
    }

    fn tell(&mut self, tok: Token, wake: Wake) {
        match wake {
            Wake::Nobody => {}
            Wake::Task(w) => w.wake(),
            Wake::Handler(h) => self.notified.push((h, Event::Ready(tok))),
        }
    }

    /// A cancelled op's completion: what the kernel produced is kept (the
    /// op knows how: data to the stash, accepted fds closed); freed if it
    /// was the final completion.
    fn salvage_late(&mut self, key: usize, raw: i32, free: bool) {
        let slot = &mut self.slab[key];
        slot.op.salvage(raw, &mut self.stash);
        self.salvaged(key);
        if free {
            let slot = self.remove(key);
            self.release(slot.op);
        }
    }

    /// Takes an op out of the slab. A receive whose result could still go
    /// to the stash (finished unseen, or cancelled in flight) settles its
    /// fd's gate: the receives that waited start (`to_start`).
    pub(super) fn remove(&mut self, key: usize) -> Slot {
        let slot = self.slab.remove(key);
        let deferred = slot.life.is_deferred();
        let holds = matches!(slot.life, Lifecycle::Done(_) | Lifecycle::Cancelled { .. });
        self.settle_gate(key, &slot, deferred, holds);
        slot
    }

    /// The read-gate side of freeing op `key`: a receive that waited its
    /// turn leaves the queue; one that held the gate lets it go.
    fn settle_gate(&mut self, key: usize, slot: &Slot, deferred: bool, holds: bool) {
        let Some(fd) = slot.op.read_gate() else {
            return;
        };
        if deferred {
            fd.gate_forget(key);
            if !self.to_start.is_empty() {
                self.to_start.retain(|&k| k != key);
            }
        } else if holds {
            self.to_start.extend(fd.gate_release());
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
    /// found the data gone (another took it): it waits to start again.
    fn settle_kept(&mut self, key: usize, res: io::Result<u32>) -> Option<io::Result<u32>> {
        let slot = &mut self.slab[key];
        let recalled = slot.life.take_recalled();
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
            slot.life.defer();
            self.to_start.push(key);
            return None;
        }
        Some(res)
    }

    /// Receives to start or recall (see `Driver::start_deferred`)?
    #[inline]
    pub(super) fn has_pending(&self) -> bool {
        !self.to_start.is_empty() || !self.recall.is_empty()
    }

    /// A deferred receive's turn came and data was kept for it: it
    /// finishes with that (not through `complete`, which would put it
    /// behind what is left of that data).
    pub(super) fn finish_from_stash(&mut self, key: usize, res: io::Result<u32>) {
        self.stats.stash_hits += 1;
        let slot = &mut self.slab[key];
        slot.life.start();
        let tok = token(key, slot.generation);
        if let Completed::Recorded(wake) = slot.life.complete(res, false) {
            if let Some(fd) = slot.op.read_gate() {
                fd.gate_hold();
            }
            self.tell(tok, wake);
        }
    }

    pub(super) fn poll(
        &mut self,
        key: usize,
        cx: &mut Context<'_>,
    ) -> Poll<(io::Result<u32>, Box<dyn OpAble>)> {
        if let Some(done) = self.take_done(key) {
            return Poll::Ready(done);
        }
        let slot = &mut self.slab[key];
        if slot.life.is_cancelled() {
            panic!("ringloop driver: polled an abandoned op");
        }
        match slot.life.waiter_mut() {
            Some(w) => {
                set_task(w, cx.waker());
                Poll::Pending
            }
            None => unreachable!("taken above; futures never idle"),
        }
    }

    /// Next result of a multishot op; `None` once it has finished. Without
    /// a context (handler ops), `Pending` leaves the waiter as it is.
    pub(super) fn poll_multi(
        &mut self,
        key: usize,
        cx: Option<&mut Context<'_>>,
    ) -> Poll<Option<io::Result<u32>>> {
        let Lifecycle::Streaming {
            waiter,
            queue,
            finished,
        } = &mut self.slab[key].life
        else {
            return Poll::Ready(None);
        };
        if let Some(r) = queue.as_mut().and_then(|q| q.pop_front()) {
            return Poll::Ready(Some(r));
        }
        if *finished {
            return Poll::Ready(None);
        }
        if let Some(cx) = cx {
            set_task(waiter, cx.waker());
        }
        Poll::Pending
    }

    /// The result of a finished single-shot op, freeing its slot.
    pub(super) fn take_done(&mut self, key: usize) -> Option<(io::Result<u32>, Box<dyn OpAble>)> {
        if !matches!(self.slab.get(key)?.life, Lifecycle::Done(_)) {
            return None;
        }
        let slot = self.remove(key);
        let Lifecycle::Done(res) = slot.life else {
            unreachable!()
        };
        Some((res, slot.op))
    }

    /// An op finished before it was submitted (stash hit, closed driver):
    /// a handler waiting on it is told at once (through the loop).
    pub(super) fn insert_done(
        &mut self,
        op: Box<dyn OpAble>,
        res: io::Result<u32>,
        w: Waiter,
    ) -> usize {
        match w {
            Waiter::Stream(h) => {
                // Handed over at once; the slot only waits to be dropped.
                let done = Done::from_result(&res, true);
                let key = self.insert(
                    op,
                    Lifecycle::Streaming {
                        waiter: Waiter::None,
                        queue: None,
                        finished: true,
                    },
                );
                let tok = self.token(key);
                self.notified.push((h, Event::Completed(tok, done)));
                key
            }
            w => {
                let key = self.insert(op, Lifecycle::Done(res));
                if let Some(fd) = self.slab[key].op.read_gate() {
                    fd.gate_hold();
                }
                if let Waiter::Handler(h) = w {
                    let tok = self.token(key);
                    self.notified.push((h, Event::Ready(tok)));
                }
                key
            }
        }
    }

    pub(super) fn is_finished(&self, key: usize) -> bool {
        self.slab.get(key).is_some_and(|s| s.life.finished())
    }

    /// The future of `key` is gone.
    pub(super) fn drop_op(&mut self, key: usize) -> Cancel {
        let slot = &mut self.slab[key];
        let deferred = slot.life.is_deferred();
        let was_done = matches!(slot.life, Lifecycle::Done(_));
        let was_cancelled = slot.life.is_cancelled();
        let (salvage, cancel) = match slot.life.drop_future() {
            Dropped::Free { salvage } => (salvage, Cancel::Freed),
            Dropped::Cancel { poll, salvage } => (salvage, Cancel::InFlight { poll }),
        };
        // Results nobody will take: keep data, close accepted fds.
        if !salvage.is_empty() {
            let before = slot.op.read_gate().map(|fd| self.stash.items(fd));
            for r in salvage {
                let raw = r.map_or(-1, |n| n as i32);
                slot.op.salvage(raw, &mut self.stash);
            }
            // A finished receive's data is older than anything kept for
            // its fd (what was kept when it completed came first, see
            // `settle_kept`; what came later is newer): it goes first.
            if let (true, Some(n), Some(fd)) = (was_done, before, slot.op.read_gate()) {
                if self.stash.items(fd) > n {
                    self.stash.last_to_front(fd);
                }
            }
            self.salvaged(key);
        }
        match cancel {
            Cancel::Freed => {
                let slot = self.slab.remove(key);
                self.settle_gate(key, &slot, deferred, was_done);
                self.release(slot.op);
            }
            Cancel::InFlight { .. } if !was_cancelled => {
                // A cancelled receive's late data may still go to the stash.
                if let Some(fd) = self.slab[key].op.read_gate() {
                    fd.gate_hold();
                }
            }
            Cancel::InFlight { .. } => {}
        }
        cancel
    }

    /// Frees an op the driver no longer needs (poisoning its buffer in tests).
    pub(super) fn release(&mut self, op: Box<dyn OpAble>) {
        if let Some(q) = &mut self.quarantine {
            if let Some(r) = op.into_buffer() {
                // SAFETY: the region is the op's own writable buffer, and the
                // op has had its final completion, so nothing else writes it.
                unsafe { std::ptr::write_bytes(r.ptr, POISON, r.len) };
                q.held.push(r);
            }
        }
    }

    #[cfg_attr(not(feature = "diagnostics"), allow(dead_code))]
    pub(super) fn enable_poison(&mut self) {
        self.quarantine.get_or_insert_with(Quarantine::default);
    }

    #[cfg_attr(not(feature = "diagnostics"), allow(dead_code))]
    pub(super) fn check_poison(&self) -> Result<usize, String> {
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
    #[cfg_attr(not(feature = "diagnostics"), allow(dead_code))]
    pub(super) fn in_flight(&self) -> usize {
        self.slab
            .iter()
            .filter(|(_, s)| !matches!(s.life, Lifecycle::Idle))
            .count()
    }

    /// Any op still in the kernel (or parked)?
    pub(super) fn any_in_kernel(&self) -> bool {
        self.slab.iter().any(|(_, s)| s.life.in_kernel())
    }
}

/// Makes `w` the task's waker (cheaply, if it already is).
fn set_task(w: &mut Waiter, waker: &Waker) {
    match w {
        Waiter::Task(t) if t.will_wake(waker) => {}
        _ => *w = Waiter::Task(waker.clone()),
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

    use super::super::notify::Waiter;
    use super::super::ops::{Interest, OpAble, Released, Stash};
    use super::{Cancel, Ops};

    /// A fake op: counts salvages, owns a buffer for the poison checker.
    struct Fake {
        salvaged: Rc<Cell<i32>>,
        buf: Vec<u8>,
        multishot: bool,
    }

    // SAFETY: a NOP carries no pointers.
    unsafe impl OpAble for Fake {
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
        let k = ops.insert_submitted(op, Waiter::None);
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
        ops.enable_poison();
        let (op, salvaged) = fake(false);
        let k = ops.insert_submitted(op, Waiter::None);
        assert!(matches!(ops.drop_op(k), Cancel::InFlight { .. }));
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
        let k = ops.insert_submitted(op, Waiter::None);
        ops.complete(k, Ok(3), false);
        assert!(ops.drop_op(k) == Cancel::Freed);
        assert_eq!(salvaged.get(), 3);
    }

    #[test]
    fn multishot_results_queue_and_the_final_one_ends_it() {
        let mut ops = Ops::new();
        let (op, salvaged) = fake(true);
        let k = ops.insert_submitted(op, Waiter::None);
        ops.complete(k, Ok(10), true);
        ops.complete(k, Ok(11), true);
        assert!(matches!(
            ops.poll_multi(k, Some(&mut cx())),
            Poll::Ready(Some(Ok(10)))
        ));
        // Dropped with a queued result and more to come: the queued one is
        // salvaged now, later ones when they arrive.
        assert!(matches!(ops.drop_op(k), Cancel::InFlight { .. }));
        assert_eq!(salvaged.get(), 11);
        ops.complete(k, Ok(12), true);
        assert_eq!(salvaged.get(), 23);
        ops.complete(k, Err(io::Error::from_raw_os_error(libc::ECANCELED)), false);
        assert_eq!(ops.in_flight(), 0);
    }

    #[test]
    fn poison_check_catches_a_write_after_release() {
        let mut ops = Ops::new();
        ops.enable_poison();
        let (op, _) = fake(false);
        let k = ops.insert_submitted(op, Waiter::None);
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
