//! The lifecycle of one op in the driver's slab (tokio-uring's `Lifecycle`,
//! for both backends): one enum, and the transitions a completion and a
//! dropped future make. The effects (salvaging data, waking, the read gate)
//! are the op table's (`table.rs`); here is only which state follows which.

use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::task::Waker;

use super::notify::{Done, Notify, Waiter};
use super::ops::OpAble;

/// Where one op is.
pub(crate) enum Lifecycle {
    /// A receive that waits for its fd's earlier receives to be settled
    /// (the read gate, `SharedFd::gate_enter`): not submitted yet.
    Deferred(Waiter),
    /// Submitted: in the kernel, or parked on readiness (selector).
    InFlight {
        waiter: Waiter,
        /// Proactor: it got `EAGAIN` and waits on a `POLL_ADD` before the
        /// retry (a cancel must target the poll).
        poll: bool,
        /// Asked back because data for its fd was kept meanwhile: served
        /// from that data first.
        recalled: bool,
    },
    /// A reusable op (a transport's send) in flight: its handler is told
    /// the result, and it is idle again. (The data path's states are
    /// variants of their own, so a completion finds them in one match.)
    Reusing { h: Rc<dyn Notify>, poll: bool },
    /// A stream multishot op (a transport's receive): each result goes to
    /// its handler with the notification.
    StreamTo {
        h: Rc<dyn Notify>,
        /// The kernel posted its final completion.
        finished: bool,
    },
    /// A multishot op submitted for a task: results queue here.
    Streaming {
        waiter: Waiter,
        /// (Boxed on first use: most multishot ops are stream receives,
        /// which queue nothing, and a small `Lifecycle` keeps the slab's
        /// slots small on the data path.)
        #[allow(clippy::box_collection)]
        queue: Option<Box<VecDeque<io::Result<u32>>>>,
        /// The kernel posted its final completion.
        finished: bool,
    },
    /// In the kernel, but its future is gone: the buffers stay until the
    /// final completion, then what it got is salvaged and it is freed.
    Cancelled { poll: bool },
    /// A finished single-shot op; its result waits to be taken.
    Done(io::Result<u32>),
    /// A reusable op between uses: not in flight, its result delivered.
    Idle,
}

/// One op in the slab.
pub(crate) struct Slot {
    pub(crate) op: Box<dyn OpAble>,
    /// Tells this op from earlier ones that had the same key (`Token`).
    pub(crate) generation: u32,
    pub(crate) life: Lifecycle,
}

/// What a completion does to an op (`Lifecycle::complete`).
pub(crate) enum Completed {
    /// Tell this handler the result now (a reusable op: idle again; a
    /// stream receive: goes on unless it was the last).
    HandOver(Rc<dyn Notify>, Done),
    /// Recorded (`Done`, or queued for the task); then wake this.
    Recorded(Wake),
    /// The op was cancelled: salvage what it got, and free it if this was
    /// its final completion.
    Salvage { free: bool },
}

/// Who to tell that a result was recorded.
pub(crate) enum Wake {
    Nobody,
    Task(Waker),
    /// A handler that takes the result itself (`Event::Ready`).
    Handler(Rc<dyn Notify>),
}

/// What dropping an op's future does (`Lifecycle::drop_future`).
pub(crate) enum Dropped {
    /// Nothing in flight: free the slot now. `salvage` is what it got that
    /// nobody took (a finished result, queued multishot results).
    Free { salvage: Vec<io::Result<u32>> },
    /// In flight: now `Cancelled`; the backend cancels it. `salvage` as
    /// above (queued multishot results).
    Cancel {
        poll: bool,
        salvage: Vec<io::Result<u32>>,
    },
}

impl Lifecycle {
    /// Submitted, someone waits.
    pub(crate) fn in_flight(waiter: Waiter) -> Lifecycle {
        Lifecycle::InFlight {
            waiter,
            poll: false,
            recalled: false,
        }
    }

    /// Submitted multishot.
    pub(crate) fn streaming(waiter: Waiter) -> Lifecycle {
        match waiter {
            Waiter::Stream(h) => Lifecycle::StreamTo { h, finished: false },
            waiter => Lifecycle::Streaming {
                waiter,
                queue: None,
                finished: false,
            },
        }
    }

    /// Not in the kernel (or parked) any more, nor waiting to be.
    pub(crate) fn at_rest(&self) -> bool {
        match self {
            Lifecycle::Done(_) | Lifecycle::Idle => true,
            Lifecycle::Streaming { finished, .. } | Lifecycle::StreamTo { finished, .. } => {
                *finished
            }
            _ => false,
        }
    }

    /// In the kernel (or parked): a final completion is still to come.
    pub(crate) fn in_kernel(&self) -> bool {
        match self {
            Lifecycle::InFlight { .. }
            | Lifecycle::Reusing { .. }
            | Lifecycle::Cancelled { .. } => true,
            Lifecycle::Streaming { finished, .. } | Lifecycle::StreamTo { finished, .. } => {
                !finished
            }
            _ => false,
        }
    }

    /// A multishot op whose kernel side is over.
    pub(crate) fn finished(&self) -> bool {
        matches!(
            self,
            Lifecycle::Streaming { finished: true, .. }
                | Lifecycle::StreamTo { finished: true, .. }
        )
    }

    /// The fast path: a handler that takes the result with its
    /// notification (a reusable op's final completion, a stream receive).
    /// `None` for any other op (then [`complete`](Self::complete)).
    #[inline]
    pub(crate) fn hand_over(
        &mut self,
        more: bool,
        done: impl FnOnce(bool) -> Done,
    ) -> Option<(Rc<dyn Notify>, Done)> {
        match self {
            Lifecycle::StreamTo { h, finished } => {
                *finished |= !more;
                Some((h.clone(), done(!more)))
            }
            Lifecycle::Reusing { .. } if !more => {
                let Lifecycle::Reusing { h, .. } = std::mem::replace(self, Lifecycle::Idle) else {
                    unreachable!()
                };
                Some((h, done(true)))
            }
            _ => None,
        }
    }

    /// A completion (`more`: not the op's final one).
    ///
    /// # Panics
    ///
    /// For an op that is not in flight (a driver bug, never a peer's doing).
    pub(crate) fn complete(&mut self, res: io::Result<u32>, more: bool) -> Completed {
        if let Some((h, d)) = self.hand_over(more, |last| Done::from_result(&res, last)) {
            return Completed::HandOver(h, d);
        }
        match self {
            Lifecycle::Cancelled { .. } => Completed::Salvage { free: !more },
            Lifecycle::InFlight { waiter, .. } => {
                let wake = take_wake(waiter);
                *self = Lifecycle::Done(res);
                Completed::Recorded(wake)
            }
            Lifecycle::Streaming {
                waiter,
                queue,
                finished,
            } => {
                queue.get_or_insert_with(Default::default).push_back(res);
                *finished = !more;
                Completed::Recorded(take_wake(waiter))
            }
            Lifecycle::Reusing { .. }
            | Lifecycle::StreamTo { .. }
            | Lifecycle::Deferred(_)
            | Lifecycle::Done(_)
            | Lifecycle::Idle => {
                panic!("ringloop driver: a completion for an op that is not in flight")
            }
        }
    }

    /// The op's future (or handle) is gone.
    pub(crate) fn drop_future(&mut self) -> Dropped {
        match std::mem::replace(self, Lifecycle::Cancelled { poll: false }) {
            Lifecycle::Done(res) => Dropped::Free { salvage: vec![res] },
            Lifecycle::Idle | Lifecycle::Deferred(_) => Dropped::Free {
                salvage: Vec::new(),
            },
            Lifecycle::StreamTo { finished: true, .. } => Dropped::Free {
                salvage: Vec::new(),
            },
            Lifecycle::StreamTo { .. } => Dropped::Cancel {
                poll: false,
                salvage: Vec::new(),
            },
            Lifecycle::Reusing { poll, .. } => {
                *self = Lifecycle::Cancelled { poll };
                Dropped::Cancel {
                    poll,
                    salvage: Vec::new(),
                }
            }
            Lifecycle::Streaming {
                queue, finished, ..
            } => {
                let salvage = queue.map_or_else(Vec::new, |q| q.into_iter().collect());
                if finished {
                    Dropped::Free { salvage }
                } else {
                    Dropped::Cancel {
                        poll: false,
                        salvage,
                    }
                }
            }
            Lifecycle::InFlight { poll, .. } => {
                *self = Lifecycle::Cancelled { poll };
                Dropped::Cancel {
                    poll,
                    salvage: Vec::new(),
                }
            }
            Lifecycle::Cancelled { poll } => {
                *self = Lifecycle::Cancelled { poll };
                Dropped::Cancel {
                    poll,
                    salvage: Vec::new(),
                }
            }
        }
    }

    /// Proactor: the op waits on a `POLL_ADD` (or not any more).
    pub(crate) fn set_poll(&mut self, on: bool) {
        if let Lifecycle::InFlight { poll, .. }
        | Lifecycle::Reusing { poll, .. }
        | Lifecycle::Cancelled { poll } = self
        {
            *poll = on;
        }
    }

    /// Proactor: does it wait on a `POLL_ADD`?
    pub(crate) fn polling(&self) -> bool {
        matches!(
            self,
            Lifecycle::InFlight { poll: true, .. }
                | Lifecycle::Reusing { poll: true, .. }
                | Lifecycle::Cancelled { poll: true }
        )
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        matches!(self, Lifecycle::Cancelled { .. })
    }

    pub(crate) fn is_deferred(&self) -> bool {
        matches!(self, Lifecycle::Deferred(_))
    }

    pub(crate) fn is_recalled(&self) -> bool {
        matches!(self, Lifecycle::InFlight { recalled: true, .. })
    }

    /// A deferred op is submitted now.
    pub(crate) fn start(&mut self) {
        if let Lifecycle::Deferred(w) = std::mem::replace(self, Lifecycle::Idle) {
            *self = Lifecycle::in_flight(w);
        } else {
            panic!("ringloop driver: started an op that was not deferred");
        }
    }

    /// An op in flight goes back to waiting for its turn (a recalled
    /// receive whose kept data another took).
    pub(crate) fn defer(&mut self) {
        if let Lifecycle::InFlight { waiter, .. } = std::mem::replace(self, Lifecycle::Idle) {
            *self = Lifecycle::Deferred(waiter);
        } else {
            panic!("ringloop driver: deferred an op that was not in flight");
        }
    }

    /// Marks a receive in flight as asked back; false if it is not one.
    pub(crate) fn recall(&mut self) -> bool {
        match self {
            Lifecycle::InFlight { recalled, .. } if !*recalled => {
                *recalled = true;
                true
            }
            _ => false,
        }
    }

    /// Clears the recall mark; true if it was set.
    pub(crate) fn take_recalled(&mut self) -> bool {
        match self {
            Lifecycle::InFlight { recalled, .. } => std::mem::take(recalled),
            _ => false,
        }
    }

    /// A reusable op is loaded and submitted again.
    pub(crate) fn resume(&mut self, h: Rc<dyn Notify>) {
        let idle = std::mem::replace(self, Lifecycle::Reusing { h, poll: false });
        assert!(
            matches!(idle, Lifecycle::Idle),
            "ringloop driver: op not idle"
        );
        std::mem::forget(idle); // `Idle` owns nothing: no drop call
    }

    /// The loop is closing: the handler lets go of the op (which stays
    /// until its final completion, told to nobody).
    pub(crate) fn unhook(&mut self) -> Option<Rc<dyn Notify>> {
        match self {
            Lifecycle::Reusing { poll, .. } => {
                let poll = *poll;
                match std::mem::replace(
                    self,
                    Lifecycle::InFlight {
                        waiter: Waiter::None,
                        poll,
                        recalled: false,
                    },
                ) {
                    Lifecycle::Reusing { h, .. } => Some(h),
                    _ => unreachable!(),
                }
            }
            Lifecycle::StreamTo { finished, .. } => {
                let finished = *finished;
                match std::mem::replace(
                    self,
                    Lifecycle::Streaming {
                        waiter: Waiter::None,
                        queue: None,
                        finished,
                    },
                ) {
                    Lifecycle::StreamTo { h, .. } => Some(h),
                    _ => unreachable!(),
                }
            }
            _ => match self
                .waiter_mut()
                .map(|w| std::mem::replace(w, Waiter::None))
            {
                Some(Waiter::Handler(h)) => Some(h),
                _ => None,
            },
        }
    }

    /// The waiter's slot, for an op someone polls (in flight or deferred).
    pub(crate) fn waiter_mut(&mut self) -> Option<&mut Waiter> {
        match self {
            Lifecycle::Deferred(w)
            | Lifecycle::InFlight { waiter: w, .. }
            | Lifecycle::Streaming { waiter: w, .. } => Some(w),
            _ => None,
        }
    }
}

/// Who to tell once a result is recorded: a task once (its waker is
/// taken), a handler every time (multishot).
fn take_wake(w: &mut Waiter) -> Wake {
    match w {
        Waiter::Handler(h) => Wake::Handler(h.clone()),
        Waiter::Task(_) => match std::mem::replace(w, Waiter::None) {
            Waiter::Task(t) => Wake::Task(t),
            _ => unreachable!(),
        },
        _ => Wake::Nobody,
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::rc::Rc;

    use super::super::notify::{Event, Notify, Waiter};
    use super::{Completed, Dropped, Lifecycle, Wake};

    struct H;
    impl Notify for H {
        fn notify(self: Rc<Self>, _: Event) {}
    }

    fn err(code: i32) -> io::Result<u32> {
        Err(io::Error::from_raw_os_error(code))
    }

    #[test]
    fn single_shot_in_flight_completes_to_done_and_wakes_its_task() {
        let mut l = Lifecycle::in_flight(Waiter::Task(std::task::Waker::noop().clone()));
        assert!(l.in_kernel() && !l.at_rest());
        assert!(matches!(
            l.complete(Ok(5), false),
            Completed::Recorded(Wake::Task(_))
        ));
        assert!(matches!(l, Lifecycle::Done(Ok(5))));
        assert!(l.at_rest() && !l.in_kernel());
    }

    #[test]
    fn a_reusable_op_hands_over_and_is_idle_again() {
        let h: Rc<dyn Notify> = Rc::new(H);
        let mut l = Lifecycle::Idle;
        l.resume(h);
        match l.complete(Ok(7), false) {
            Completed::HandOver(_, d) => assert_eq!((d.res, d.last), (Ok(7), true)),
            _ => panic!("not handed over"),
        }
        assert!(matches!(l, Lifecycle::Idle));
    }

    #[test]
    #[should_panic(expected = "op not idle")]
    fn a_reusable_op_in_flight_cannot_be_resumed() {
        let h: Rc<dyn Notify> = Rc::new(H);
        let mut l = Lifecycle::Reusing {
            h: h.clone(),
            poll: false,
        };
        l.resume(h);
    }

    #[test]
    fn a_stream_receive_hands_over_each_result_and_finishes_on_the_last() {
        let h: Rc<dyn Notify> = Rc::new(H);
        let mut l = Lifecycle::streaming(Waiter::Stream(h));
        assert!(matches!(l.complete(Ok(1), true), Completed::HandOver(_, d) if !d.last));
        assert!(!l.finished());
        assert!(matches!(l.complete(Ok(0), false), Completed::HandOver(_, d) if d.last));
        assert!(l.finished() && l.at_rest());
    }

    #[test]
    fn a_task_multishot_queues_results_and_its_drop_salvages_them() {
        let mut l = Lifecycle::streaming(Waiter::None);
        assert!(matches!(
            l.complete(Ok(3), true),
            Completed::Recorded(Wake::Nobody)
        ));
        assert!(matches!(
            l.complete(Ok(4), true),
            Completed::Recorded(Wake::Nobody)
        ));
        match l.drop_future() {
            Dropped::Cancel { salvage, .. } => assert_eq!(salvage.len(), 2),
            Dropped::Free { .. } => panic!("still in the kernel"),
        }
        assert!(l.is_cancelled());
        assert!(matches!(
            l.complete(Ok(5), true),
            Completed::Salvage { free: false }
        ));
        assert!(matches!(
            l.complete(err(libc::ECANCELED), false),
            Completed::Salvage { free: true }
        ));
    }

    #[test]
    fn dropping_in_flight_cancels_and_keeps_the_poll_target() {
        let mut l = Lifecycle::in_flight(Waiter::None);
        l.set_poll(true);
        assert!(matches!(
            l.drop_future(),
            Dropped::Cancel { poll: true, .. }
        ));
        assert!(l.is_cancelled() && l.polling() && l.in_kernel());
        // Dropped again (loop close after a drop): still cancelling.
        assert!(matches!(
            l.drop_future(),
            Dropped::Cancel { poll: true, .. }
        ));
    }

    #[test]
    fn dropping_a_finished_result_frees_it_for_salvage() {
        let mut l = Lifecycle::Done(Ok(9));
        match l.drop_future() {
            Dropped::Free { salvage } => assert!(matches!(salvage[..], [Ok(9)])),
            Dropped::Cancel { .. } => panic!("nothing in flight"),
        }
    }

    #[test]
    fn a_deferred_op_starts_or_is_freed_when_dropped() {
        let mut l = Lifecycle::Deferred(Waiter::None);
        assert!(!l.in_kernel() && !l.at_rest());
        l.start();
        assert!(l.in_kernel());
        assert!(l.recall());
        assert!(!l.recall(), "recalled once");
        assert!(l.take_recalled());
        l.defer();
        assert!(l.is_deferred());
        assert!(matches!(l.drop_future(), Dropped::Free { .. }));
    }

    #[test]
    #[should_panic(expected = "not in flight")]
    fn a_completion_for_a_finished_op_is_a_driver_bug() {
        let mut l = Lifecycle::Done(Ok(1));
        let _ = l.complete(Ok(2), false);
    }
}
