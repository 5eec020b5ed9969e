//! The timer heap: deadline order, ties in scheduling order, lazy removal of
//! cancelled timers with compaction (CPython's `_run_once` rule: rebuild when
//! more than half of at least 100 scheduled timers are cancelled).
//!
//! Deadlines are kept as [`ticks`] (a `u64`), so an entry is 24 bytes.
//!
//! A new timer waits in an unsorted list until the next loop turn
//! ([`TimerHeap::settle`]); one cancelled before then (a timeout around an
//! operation that was ready at once, say) never enters the heap, and its
//! cancel does not touch the loop.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Instant;

use crate::events::{Handle, ticks};

const MIN_SCHEDULED_FOR_COMPACTION: usize = 100;

struct Entry {
    when: u64,
    seq: u64,
    handle: Handle,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.when == o.when && self.seq == o.seq
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.when, self.seq).cmp(&(o.when, o.seq))
    }
}

/// Scheduled timers, earliest first.
#[derive(Default)]
pub(crate) struct TimerHeap {
    heap: BinaryHeap<Reverse<Entry>>,
    /// Scheduled since the last turn, not in `heap` yet (not `IN_HEAP`).
    fresh: Vec<Entry>,
    seq: u64,
    /// Cancelled timers still in the heap.
    cancelled: usize,
}

impl TimerHeap {
    /// Schedules `handle` at `when` (in [`ticks`]).
    pub(crate) fn push(&mut self, when: u64, handle: Handle) {
        self.seq += 1;
        self.fresh.push(Entry {
            when,
            seq: self.seq,
            handle,
        });
    }

    /// Moves the timers scheduled since the last turn into the heap,
    /// dropping those already cancelled; then compacts the heap if needed.
    /// Called at the start of every loop turn.
    pub(crate) fn settle(&mut self) {
        if !self.fresh.is_empty() {
            self.heap.extend(
                self.fresh
                    .drain(..)
                    .filter(|e| !e.handle.cancelled())
                    .map(|e| {
                        e.handle.set_in_heap(true);
                        Reverse(e)
                    }),
            );
        }
        self.compact_if_needed();
    }

    /// A timer in the heap was cancelled (the heap is compacted at the
    /// next loop turn, as CPython's `_run_once` does, so cancelling many
    /// timers in one callback costs one rebuild).
    pub(crate) fn note_cancelled(&mut self) {
        self.cancelled += 1;
    }

    /// Rebuilds the heap without its cancelled timers when they are more
    /// than half of over 100 (CPython's rule; once per loop turn).
    fn compact_if_needed(&mut self) {
        let n = self.heap.len();
        if n > MIN_SCHEDULED_FOR_COMPACTION && self.cancelled * 2 > n {
            let entries = std::mem::take(&mut self.heap).into_vec();
            self.heap = entries
                .into_iter()
                .filter(|e| !e.0.handle.cancelled())
                .collect();
            for e in self.heap.iter() {
                e.0.handle.set_in_heap(true);
            }
            self.cancelled = 0;
        }
    }

    /// Drops cancelled timers at the front, then returns the next deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        if !self.fresh.is_empty() {
            self.settle();
        }
        while let Some(top) = self.heap.peek() {
            if top.0.handle.cancelled() {
                self.heap.pop();
                self.cancelled = self.cancelled.saturating_sub(1);
            } else {
                return Some(ticks::to_instant(top.0.when));
            }
        }
        None
    }

    /// Pops the next timer due at `now`, skipping cancelled ones.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Handle> {
        if !self.fresh.is_empty() {
            self.settle();
        }
        let now = ticks::from_instant(now);
        loop {
            let top = self.heap.peek()?;
            if top.0.handle.cancelled() {
                self.heap.pop();
                self.cancelled = self.cancelled.saturating_sub(1);
                continue;
            }
            if top.0.when > now {
                return None;
            }
            let e = self.heap.pop().expect("peeked").0;
            e.handle.set_in_heap(false);
            return Some(e.handle);
        }
    }

    /// Timers scheduled and not run, cancelled ones not dropped yet included.
    pub(crate) fn len(&self) -> usize {
        self.heap.len() + self.fresh.len()
    }

    pub(crate) fn clear(&mut self) {
        self.heap.clear();
        self.fresh.clear();
        self.cancelled = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    use super::TimerHeap;
    use crate::events::{Handle, ticks};

    fn handle(log: &Rc<RefCell<Vec<u32>>>, v: u32) -> Handle {
        let log = log.clone();
        Handle::new(Box::new(move || log.borrow_mut().push(v)), &"t")
    }

    fn run_due(heap: &mut TimerHeap, now: Instant) {
        while let Some(h) = heap.pop_due(now) {
            assert!(h.run());
        }
    }

    #[test]
    fn deadline_order_then_scheduling_order() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut heap = TimerHeap::default();
        let t0 = Instant::now();
        heap.push(
            ticks::from_instant(t0 + Duration::from_millis(5)),
            handle(&log, 3),
        );
        heap.push(ticks::from_instant(t0), handle(&log, 1));
        heap.push(ticks::from_instant(t0), handle(&log, 2));
        heap.push(
            ticks::from_instant(t0 + Duration::from_millis(9)),
            handle(&log, 4),
        );
        assert_eq!(heap.next_deadline(), Some(t0));
        run_due(&mut heap, t0 + Duration::from_millis(5));
        assert_eq!(*log.borrow(), [1, 2, 3]);
        assert_eq!(heap.next_deadline(), Some(t0 + Duration::from_millis(9)));
        run_due(&mut heap, t0 + Duration::from_millis(9));
        assert_eq!(*log.borrow(), [1, 2, 3, 4]);
        assert_eq!(heap.next_deadline(), None);
    }

    #[test]
    fn cancelled_timers_are_skipped_and_compacted() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut heap = TimerHeap::default();
        let t0 = Instant::now();
        let hs: Vec<Handle> = (0..1000)
            .map(|i| {
                let h = handle(&log, i);
                heap.push(
                    ticks::from_instant(t0 + Duration::from_millis(u64::from(i))),
                    h.clone(),
                );
                h
            })
            .collect();
        heap.settle();
        // Cancel through the heap's bookkeeping, as Handle::cancel does.
        for h in &hs[..600] {
            h.cancel();
            heap.note_cancelled();
        }
        assert_eq!(heap.len(), 1000, "no rebuild inside cancel");
        heap.settle();
        assert_eq!(heap.next_deadline(), Some(t0 + Duration::from_millis(600)));
        assert_eq!(
            heap.len(),
            400,
            "the turn rebuilt the heap without the cancelled"
        );
        run_due(&mut heap, t0 + Duration::from_secs(5));
        assert_eq!(log.borrow().len(), 400);
        assert_eq!(log.borrow()[0], 600);
        assert_eq!(heap.len(), 0);
    }

    #[test]
    fn timers_cancelled_before_the_turn_never_enter_the_heap() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut heap = TimerHeap::default();
        let t0 = Instant::now();
        let hs: Vec<Handle> = (0..10)
            .map(|i| {
                let h = handle(&log, i);
                heap.push(ticks::from_instant(t0), h.clone());
                h
            })
            .collect();
        for h in hs.iter().step_by(2) {
            h.cancel();
        }
        assert_eq!(heap.len(), 10);
        heap.settle();
        assert_eq!(heap.len(), 5, "cancelled fresh timers are dropped");
        assert_eq!(heap.cancelled, 0);
        run_due(&mut heap, t0);
        assert_eq!(*log.borrow(), [1, 3, 5, 7, 9], "scheduling order kept");
    }
}
