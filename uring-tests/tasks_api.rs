//! The high-level task API: sleep, gather, shield, wait_for, wait,
//! as_completed, timeout scopes, TaskGroup and eager tasks — with the
//! cancellation edge cases — on both backends.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{DropFlag, turns};
use ringloop::prelude::*;
use ringloop::{ReturnWhen, as_completed, gather_all, shield, timeout_at, wait, wait_for_task};

const LIMIT: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Schedules a callback, then awaits `wait` and logs `after`: the order in
/// which the two ran.
fn callback_then(
    lp: &EventLoop,
    wait: impl std::future::Future<Output = Result<()>> + 'static,
    after: &'static str,
) -> Vec<&'static str> {
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    common::run_bounded(lp, LIMIT, async move {
        let lp = get_running_loop().unwrap();
        let l2 = l.clone();
        lp.call_soon(move || l2.borrow_mut().push("callback"))
            .unwrap();
        wait.await.unwrap();
        l.borrow_mut().push(after);
    });
    log.take()
}

both_backends! {
    fn sleep_zero_yields_once_and_sleep_waits(lp) {
        let log = callback_then(lp, sleep(Duration::ZERO), "after sleep(0)");
        assert_eq!(log, ["callback", "after sleep(0)"]);
        common::run_bounded(lp, LIMIT, async {
            let t0 = Instant::now();
            sleep(ms(15)).await.unwrap();
            assert!(t0.elapsed() >= ms(15));
        });
    }
}

both_backends! {
    fn sleep_rejects_a_delay_past_the_clock_and_needs_a_running_loop(lp) {
        let r = common::run_bounded(lp, LIMIT, sleep(Duration::MAX));
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
        // Polled with no loop running on the thread: a clear error, for a
        // zero delay and for a real one.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for d in [Duration::ZERO, ms(5)] {
            let mut f = std::pin::pin!(sleep(d));
            let p = f.as_mut().poll(&mut cx);
            assert!(matches!(p, std::task::Poll::Ready(Err(Error::InvalidState(_)))), "{p:?}");
        }
    }
}

both_backends! {
    fn sleep_until_a_past_deadline_yields_once_and_a_dropped_sleep_leaves_no_timer(lp) {
        // A deadline already past still goes through the loop once
        // (asyncio's sleep yields at least once), so the callback
        // scheduled before it runs first.
        let past = ringloop::sleep_until(Instant::now() - ms(50));
        let log = callback_then(lp, past, "after the past deadline");
        assert_eq!(log, ["callback", "after the past deadline"]);

        // Each sleep polled once holds one timer in the heap; dropping it
        // (its task cancelled) cancels the timer and tells the heap, which
        // lets all of them go once more than half are cancelled. (A turn
        // first, so the cancelled bound timer of `run_bounded` is gone.)
        turns(lp, 1);
        let before = lp.scheduled_timers();
        let tasks: Vec<_> = (0..300)
            .map(|_| lp.create_task(async { sleep(Duration::from_secs(3600)).await }))
            .collect();
        turns(lp, 2);
        assert_eq!(lp.scheduled_timers(), before + 300);
        for t in &tasks {
            t.cancel(None);
        }
        turns(lp, 2);
        assert!(tasks.iter().all(|t| t.cancelled()));
        assert_eq!(lp.scheduled_timers(), before);
    }
}

both_backends! {
    fn cancelled_sleep_ends_promptly(lp) {
        let t = lp.create_task(async { sleep(Duration::from_secs(3600)).await });
        turns(lp, 1);
        assert!(!t.done());
        t.cancel(None);
        // Promptly: in the very next turn, not at the hour's deadline.
        turns(lp, 1);
        assert!(t.cancelled());
        let r = common::run_bounded(lp, LIMIT, t);
        assert!(matches!(r, Err(Error::Cancelled(_))));
    }
}

both_backends! {
    fn gather_keeps_input_order_and_returns_the_first_error(lp) {
        let r = common::run_bounded(lp, LIMIT, async {
            gather([30u64, 10, 20].map(|d| async move {
                sleep(ms(d)).await?;
                Ok(d)
            }))
            .await
        });
        assert_eq!(r.unwrap(), vec![30, 10, 20]);

        // The first error is returned at once; the other children go on.
        // The sibling waits for `release`, set only after gather returned:
        // had gather waited for it, it would never return (and the bound
        // fails the test).
        let sibling_done = Rc::new(Cell::new(false));
        let s = sibling_done.clone();
        let release = lp.create_future::<()>();
        let r2 = release.clone();
        let r: Result<Vec<u32>> = common::run_bounded(lp, LIMIT, async move {
            let futs: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Result<u32>>>>> = vec![
                Box::pin(async { sleep(ms(5)).await?; Err(Error::InvalidArgument("child failed".into())) }),
                Box::pin(async move { r2.await?; s.set(true); Ok(2) }),
            ];
            gather(futs).await
        });
        assert!(matches!(r, Err(Error::InvalidArgument(m)) if m == "child failed"));
        assert!(!sibling_done.get(), "gather waited for the slow sibling");
        release.set_result(()).unwrap();
        assert!(
            common::run_until(lp, LIMIT, || sibling_done.get()),
            "the sibling was cancelled by the error"
        );
    }
}

both_backends! {
    fn gather_all_collects_errors_and_cancelled_children(lp) {
        let r = common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let victim = lp.create_task(async { sleep(Duration::from_secs(60)).await.map(|_| 0u32) });
            let v2 = victim.clone();
            lp.call_later(ms(5), move || { v2.cancel(None); }).unwrap();
            let futs: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Result<u32>>>>> = vec![
                Box::pin(async { Ok(1) }),
                Box::pin(async { Err(Error::Timeout) }),
                Box::pin(async move { victim.await? }),
            ];
            gather_all(futs).await.unwrap()
        });
        assert!(matches!(r[0], Ok(1)));
        assert!(matches!(r[1], Err(Error::Timeout)));
        // A cancelled child is its result, not the gather's cancellation.
        assert!(matches!(r[2], Err(Error::Cancelled(_))));
    }
}

both_backends! {
    fn cancelling_a_gather_cancels_its_children(lp) {
        let flags: Vec<Rc<Cell<bool>>> = (0..3).map(|_| Rc::new(Cell::new(false))).collect();
        let fl = flags.clone();
        let t = lp.create_task(async move {
            gather(fl.into_iter().map(|f| async move {
                let _g = DropFlag(f);
                sleep(Duration::from_secs(60)).await?;
                Ok(())
            }))
            .await
        });
        turns(lp, 3);
        t.cancel(None);
        turns(lp, 3);
        assert!(t.cancelled());
        assert!(flags.iter().all(|f| f.get()), "children were not cancelled");
    }
}

both_backends! {
    fn shield_protects_the_inner_task(lp) {
        let inner_done = Rc::new(Cell::new(false));
        let d = inner_done.clone();
        let outer = lp.create_task(async move {
            shield(async move {
                sleep(ms(20)).await.unwrap();
                d.set(true);
                7
            })
            .await
        });
        turns(lp, 2);
        outer.cancel(None);
        turns(lp, 1);
        assert!(outer.cancelled());
        assert!(
            common::run_until(lp, LIMIT, || inner_done.get()),
            "shielded work did not go on after the waiter was cancelled"
        );
        // An inner task that is cancelled itself cancels the shield.
        let r = common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let inner = lp.create_task(async { sleep(Duration::from_secs(60)).await });
            let i2 = inner.clone();
            lp.call_later(ms(5), move || { i2.cancel(None); }).unwrap();
            ringloop::shield_task(&inner).await
        });
        assert!(matches!(r, Err(Error::Cancelled(_))));
    }
}

both_backends! {
    fn wait_for_times_out_cancels_inner_and_lets_a_ready_result_win(lp) {
        let dropped = Rc::new(Cell::new(false));
        let d = dropped.clone();
        let r = common::run_bounded(lp, LIMIT, async move {
            let d2 = d.clone();
            let r = wait_for(async move {
                let _g = DropFlag(d2);
                sleep(Duration::from_secs(60)).await.unwrap();
            }, ms(10)).await;
            // The inner work finished cancelling before wait_for returned.
            assert!(d.get());
            r
        });
        assert!(matches!(r, Err(Error::Timeout)));
        assert!(dropped.get());
        assert_eq!(common::run_bounded(lp, LIMIT, async { wait_for(async { 3 }, ms(50)).await.unwrap() }), 3);

        // The inner future completes in the same loop turn as the deadline:
        // its result wins.
        let r = common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let fut = lp.create_future::<u32>();
            let f2 = fut.clone();
            let when = lp.time() + ms(10);
            lp.call_at(when, move || { f2.set_result(99).unwrap(); }).unwrap();
            timeout_at(Some(when)).run(fut).await
        });
        assert_eq!(r.unwrap().unwrap(), 99);
    }
}

both_backends! {
    fn wait_for_task_cancels_and_awaits_the_task(lp) {
        let r = common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let t = lp.create_task(async { sleep(Duration::from_secs(60)).await });
            let t2 = t.clone();
            let r = wait_for_task(t, ms(10)).await;
            assert!(t2.done() && t2.cancelled(), "the task finished cancelling first");
            r
        });
        assert!(matches!(r, Err(Error::Timeout)));
    }
}

both_backends! {
    fn wait_modes_and_a_timeout_that_cancels_nothing(lp) {
        common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            // Each task ends (with `v`, or failing) once its gate is set:
            // which are done is the test's choice, never the clock's.
            let mk = |v: u64, fail: bool| {
                let gate = lp.create_future::<()>();
                let g = gate.clone();
                let t = lp.create_task(async move {
                    g.await?;
                    if fail { Err(Error::InvalidArgument(format!("{v}"))) } else { Ok(v) }
                });
                (t, gate)
            };
            let open = |gate: &LoopFuture<()>| gate.set_result(()).unwrap();
            let ((a, ga), (b, _)) = (mk(5, false), mk(200, false));
            open(&ga);
            let (done, pending) = wait(vec![a, b], None, ReturnWhen::FirstCompleted).await.unwrap();
            assert_eq!((done.len(), pending.len()), (1, 1));
            for t in &pending { t.cancel(None); }
            let ((a, _), (b, gb), (c, _)) = (mk(30, false), mk(5, true), mk(200, false));
            open(&gb);
            let (done, pending) = wait(vec![a, b, c], None, ReturnWhen::FirstException).await.unwrap();
            assert_eq!((done.len(), pending.len()), (1, 2));
            for t in &pending { t.cancel(None); }
            let ((a, ga), (b, gb)) = (mk(5, false), mk(10, true));
            open(&ga);
            open(&gb);
            let (done, pending) = wait(vec![a, b], None, ReturnWhen::AllCompleted).await.unwrap();
            assert_eq!((done.len(), pending.len()), (2, 0));
            // A timeout returns what is done; nothing is cancelled. (The
            // quick task is done before the wait starts, so however late
            // the loop runs, the timeout cannot come first.)
            let ((quick, gq), (slow, gs)) = (mk(1, false), mk(40, false));
            open(&gq);
            while !quick.done() {
                sleep(Duration::ZERO).await.unwrap();
            }
            let (done, pending) = wait(vec![quick, slow.clone()], Some(ms(15)), ReturnWhen::AllCompleted).await.unwrap();
            assert_eq!((done.len(), pending.len()), (1, 1));
            assert!(!slow.done() && !slow.cancelled(), "the timeout cancelled nothing");
            open(&gs);
            assert_eq!(slow.await.unwrap().unwrap(), 40);
            assert!(matches!(wait(Vec::<Task<Result<()>>>::new(), None, ReturnWhen::AllCompleted).await, Err(Error::InvalidArgument(_))));
        });
    }
}

both_backends! {
    fn as_completed_in_completion_order_with_timeout(lp) {
        common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            // Task `d` ends when a timer at base + d ms sets its gate. All
            // three deadlines are fixed before any task runs, from one
            // instant, and due timers run in deadline order however late
            // the loop gets to them: completion order 10, 20, 30 by
            // construction. (Sleeps of 30, 10 and 20 ms, each timed from
            // its task's first step, came out [10, 30, 20] under load.)
            let base = lp.time();
            let mk = |d: u64| {
                let gate = lp.create_future::<()>();
                let g = gate.clone();
                lp.call_at(base + ms(d), move || { let _ = g.set_result(()); }).unwrap();
                lp.create_task(async move { gate.await?; Ok(d) })
            };
            let mut it = as_completed(vec![mk(30), mk(10), mk(20)], None);
            let mut order = Vec::new();
            while let Some(r) = it.next().await {
                order.push(r.unwrap());
            }
            assert_eq!(order, [10, 20, 30]);
            // With a timeout: what is done comes first, then one Timeout
            // for the rest. The quick task is done before as_completed
            // starts, and the slow one waits for a gate set only at the
            // end, so the timeout cannot come first or find it done.
            let quick = lp.create_task(async { Ok::<u64, Error>(1) });
            while !quick.done() {
                sleep(Duration::ZERO).await.unwrap();
            }
            let gate = lp.create_future::<()>();
            let g = gate.clone();
            let slow = lp.create_task(async move { g.await?; Ok(200) });
            let mut it = as_completed(vec![quick, slow.clone()], Some(ms(20)));
            assert_eq!(it.next().await.unwrap().unwrap(), 1);
            assert!(matches!(it.next().await, Some(Err(Error::Timeout))));
            assert!(it.next().await.is_none());
            assert!(!slow.done(), "as_completed's timeout cancels nothing");
            gate.set_result(()).unwrap();
            assert_eq!(slow.await.unwrap().unwrap(), 200);
        });
    }
}

both_backends! {
    fn timeout_scopes_reschedule_and_nest(lp) {
        common::run_bounded(lp, LIMIT, async {
            let t = timeout(Some(ms(10)));
            assert!(t.when().is_some());
            let t2 = t.clone();
            let r = t.run(async move {
                t2.reschedule(None).unwrap(); // disabled
                sleep(ms(25)).await.unwrap();
                "no deadline"
            }).await;
            assert_eq!(r.unwrap(), "no deadline");
            assert!(!t.expired());
            assert!(matches!(t.reschedule(None), Err(Error::InvalidState(_))), "finished scope");

            let t = timeout(Some(ms(10)));
            assert!(matches!(t.run(sleep(Duration::from_secs(60))).await, Err(Error::Timeout)));
            assert!(t.expired());
            assert!(matches!(t.reschedule(Some(Instant::now())), Err(Error::InvalidState(_))));

            // Inner scope expires first: the outer body sees it and goes on.
            // (The outer deadline is far: it must not be the one that fires,
            // however late the loop runs.)
            let outer = timeout(Some(Duration::from_secs(3600)));
            let r = outer.run(async {
                let inner = timeout(Some(ms(5))).run(sleep(Duration::from_secs(60))).await;
                assert!(matches!(inner, Err(Error::Timeout)));
                "outer body continued"
            }).await;
            assert_eq!(r.unwrap(), "outer body continued");
            assert!(!outer.expired());

            // Outer scope expires first: the inner scope is dropped whole.
            let inner_dropped = Rc::new(Cell::new(false));
            let d = inner_dropped.clone();
            let outer = timeout(Some(ms(5)));
            let r = outer.run(async move {
                let _g = DropFlag(d);
                timeout(Some(Duration::from_secs(3600))).run(sleep(Duration::from_secs(60))).await
            }).await;
            assert!(matches!(r, Err(Error::Timeout)));
            assert!(outer.expired() && inner_dropped.get());

            // `timeout(delay)` fixes its deadline when first needed: `when`
            // reads the clock then, and a scope created early and run
            // later counts from its first wait (it never expires early).
            let before = Instant::now();
            let t = timeout(Some(ms(200)));
            sleep(ms(250)).await.unwrap();
            let r = t.run(async {
                ringloop::sleep(Duration::ZERO).await.unwrap();
                "counted from the first wait"
            }).await;
            let after = Instant::now();
            assert_eq!(r.unwrap(), "counted from the first wait");
            let w = t.when().unwrap();
            assert!(w >= before + ms(450), "counted from the run, not the creation");
            assert!(w <= after + ms(200), "fixed during the run, not by this when()");
            let t = timeout(Some(ms(200)));
            let (a, w, b) = (Instant::now(), t.when().unwrap(), Instant::now());
            assert!(a + ms(200) <= w && w <= b + ms(200));
            assert_eq!(t.when().unwrap(), w, "fixed once");
            // A deadline fixed in advance stays put.
            let at = Instant::now() + ms(100);
            let t = timeout_at(Some(at));
            sleep(ms(150)).await.unwrap();
            assert!(matches!(t.run(sleep(Duration::from_secs(60))).await, Err(Error::Timeout)));
        });
    }
}

both_backends! {
    fn task_group_awaits_every_child(lp) {
        let r = common::run_bounded(lp, LIMIT, async {
            let sum = Rc::new(Cell::new(0));
            let s = sum.clone();
            TaskGroup::run(|tg| async move {
                for i in 1..=10u64 {
                    let s = s.clone();
                    tg.create_task(async move {
                        sleep(ms(i)).await?;
                        s.set(s.get() + i);
                        Ok(())
                    })?;
                }
                Ok(())
            })
            .await
            .unwrap();
            sum.get()
        });
        assert_eq!(r, 55);
    }
}

both_backends! {
    fn task_group_first_failure_cancels_siblings_and_body(lp) {
        let sibling_dropped = Rc::new(Cell::new(false));
        let body_dropped = Rc::new(Cell::new(false));
        let (s, b) = (sibling_dropped.clone(), body_dropped.clone());
        let r: Result<()> = common::run_bounded(lp, LIMIT, async move {
            TaskGroup::run(|tg| async move {
                let _g = DropFlag(b);
                tg.create_task(async move {
                    let _g = DropFlag(s);
                    sleep(Duration::from_secs(60)).await
                })?;
                // Both fail in their first step, in the same turn: done
                // callbacks run through call_soon, so both errors are in
                // before the group cancels anyone. (Two 5 ms sleeps, each
                // timed from its own first step, could end a turn apart,
                // and the second child was then cancelled, not failed.)
                tg.create_task(async { Err::<(), _>(Error::InvalidArgument("one".into())) })?;
                tg.create_task(async { Err::<(), _>(Error::InvalidArgument("two".into())) })?;
                let tg2 = tg.clone();
                sleep(Duration::from_secs(60)).await?;
                drop(tg2);
                Ok(())
            })
            .await
        });
        assert!(sibling_dropped.get() && body_dropped.get());
        match r {
            Err(Error::Group(es)) => {
                let mut msgs: Vec<String> = es.iter().map(|e| e.to_string()).collect();
                msgs.sort();
                assert_eq!(msgs, ["invalid argument: one", "invalid argument: two"]);
            }
            other => panic!("expected a group error, got {other:?}"),
        }
    }
}

both_backends! {
    fn task_group_refuses_new_tasks_while_shutting_down(lp) {
        let refused = common::run_bounded(lp, LIMIT, async {
            let kept = Rc::new(RefCell::new(None));
            let k = kept.clone();
            let r = TaskGroup::run(|tg| async move {
                *k.borrow_mut() = Some(tg.clone());
                tg.create_task(async { Err::<(), _>(Error::Timeout) })?;
                sleep(Duration::from_secs(60)).await?;
                Ok(())
            })
            .await;
            assert!(matches!(r, Err(Error::Group(_))));
            let tg = kept.borrow_mut().take().unwrap();
            tg.create_task(async { Ok(()) }).err()
        });
        assert!(matches!(refused, Some(Error::InvalidState(_))));
    }
}

both_backends! {
    fn task_group_with_inner_failure_and_outer_cancel(lp) {
        // A child fails (the group starts cancelling) and, in the same turn,
        // the task running the group is cancelled from outside: every child
        // ends, nothing hangs, the outer task ends cancelled.
        let child_dropped = Rc::new(Cell::new(false));
        let c = child_dropped.clone();
        let outer = lp.create_task(async move {
            TaskGroup::run(|tg| async move {
                tg.create_task(async move {
                    let _g = DropFlag(c);
                    sleep(Duration::from_secs(60)).await
                })?;
                tg.create_task(async { sleep(ms(5)).await?; Err::<(), _>(Error::Timeout) })?;
                sleep(Duration::from_secs(60)).await?;
                Ok(())
            })
            .await
        });
        let o2 = outer.clone();
        lp.call_later(ms(5), move || { o2.cancel(Some("outer")); }).unwrap();
        let r = common::run_bounded(lp, LIMIT, outer);
        turns(lp, 3);
        assert!(child_dropped.get());
        match r {
            Err(Error::Cancelled(_)) | Ok(Err(Error::Group(_))) => {}
            other => panic!("unexpected outcome {other:?}"),
        }
        assert!(ringloop::all_tasks().is_empty());
    }
}

both_backends! {
    fn outer_cancel_of_a_task_group_cancels_children(lp) {
        let flags: Vec<Rc<Cell<bool>>> = (0..3).map(|_| Rc::new(Cell::new(false))).collect();
        let fl = flags.clone();
        let outer = lp.create_task(async move {
            TaskGroup::run(|tg| async move {
                for f in fl {
                    tg.create_task(async move {
                        let _g = DropFlag(f);
                        sleep(Duration::from_secs(60)).await
                    })?;
                }
                Ok(())
            })
            .await
        });
        turns(lp, 3);
        outer.cancel(None);
        turns(lp, 3);
        assert!(outer.cancelled());
        assert!(flags.iter().all(|f| f.get()));
    }
}

both_backends! {
    fn eager_tasks_run_their_first_step_in_create_task(lp) {
        lp.set_eager_task_start(true);
        assert!(lp.eager_task_start());
        common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let quick = lp.create_task(async { 5 });
            assert!(quick.done(), "an eager task that does not wait is done at once");
            assert_eq!(quick.result().unwrap(), 5);
            let steps = Rc::new(Cell::new(0));
            let s = steps.clone();
            let slow = lp.create_task(async move {
                s.set(1);
                sleep(ms(2)).await.unwrap();
                s.set(2);
            });
            assert_eq!(steps.get(), 1, "the first step ran inside create_task");
            slow.await.unwrap();
            assert_eq!(steps.get(), 2);
        });
        lp.set_eager_task_start(false);
        let t = lp.create_task(async { 1 });
        assert!(!t.done());
        turns(lp, 1);
    }
}
