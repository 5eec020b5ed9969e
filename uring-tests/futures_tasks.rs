//! Loop futures and tasks: state rules, done callbacks, drop-based
//! cancellation, names, current/all tasks, panics and unretrieved errors.

mod common;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::{DropFlag, YieldOnce, capture_handler, turns};
use ringloop::prelude::*;

both_backends! {
    fn future_state_rules(lp) {
        let f = lp.create_future::<u32>();
        assert!(!f.done() && !f.cancelled());
        assert!(matches!(f.result(), Err(Error::InvalidState(_))));
        assert!(matches!(f.exception(), Err(Error::InvalidState(_))));
        f.set_result(5).unwrap();
        assert!(f.done());
        assert_eq!(f.result().unwrap(), 5);
        assert!(f.exception().unwrap().is_none());
        assert!(matches!(f.set_result(6), Err(Error::InvalidState(_))));
        assert!(matches!(f.set_error(Error::Timeout), Err(Error::InvalidState(_))));
        assert!(!f.cancel(None), "cancel of a done future is refused");

        let g = lp.create_future::<u32>();
        assert!(g.cancel(Some("bye")));
        assert!(g.cancelled() && g.done());
        assert!(matches!(g.result(), Err(Error::Cancelled(Some(m))) if m == "bye"));
        assert!(matches!(g.exception(), Err(Error::Cancelled(_))));
        assert!(!g.cancel(None));

        let e = lp.create_future::<u32>();
        assert!(matches!(e.set_error(Error::Cancelled(None)), Err(Error::InvalidArgument(_))));
        e.set_error(Error::Timeout).unwrap();
        assert!(matches!(e.exception(), Ok(Some(Error::Timeout))));
        assert!(matches!(e.result(), Err(Error::Timeout)));
        assert!(format!("{e:?}").contains("failed"));
        assert!(e.get_loop().backend() == lp.backend());
        // The done callbacks those completions scheduled run on the loop.
        turns(lp, 1);
    }
}

both_backends! {
    fn future_done_callbacks_are_never_synchronous(lp) {
        let f = lp.create_future::<&'static str>();
        let calls = Rc::new(RefCell::new(Vec::new()));
        let c = calls.clone();
        f.add_done_callback(move |fut| c.borrow_mut().push(fut.result().unwrap()));
        let c = calls.clone();
        let id = f.add_done_callback(move |_| c.borrow_mut().push("removed"));
        assert_eq!(f.remove_done_callback(id), 1);
        assert_eq!(f.remove_done_callback(id), 0);
        f.set_result("v").unwrap();
        assert!(calls.borrow().is_empty(), "done callback ran synchronously");
        // Added after done: scheduled with call_soon, still not synchronous.
        let c = calls.clone();
        f.add_done_callback(move |_| c.borrow_mut().push("late"));
        assert_eq!(calls.borrow().len(), 0);
        turns(lp, 1);
        assert_eq!(*calls.borrow(), ["v", "late"]);
    }
}

both_backends! {
    fn future_awaited_many_times(lp) {
        let f = lp.create_future::<String>();
        let f2 = f.clone();
        lp.call_later(Duration::from_millis(2), move || f2.set_result("x".into()).unwrap()).unwrap();
        let (a, b) = (f.clone(), f.clone());
        let lp2 = lp.clone();
        let out = common::run_bounded(lp, Duration::from_secs(5), async move {
            let t1 = lp2.create_task(async move { a.await.unwrap() });
            let t2 = lp2.create_task(async move { b.await.unwrap() });
            (t1.await.unwrap(), t2.await.unwrap(), f.await.unwrap())
        });
        assert_eq!(out, ("x".to_string(), "x".to_string(), "x".to_string()));
    }
}

both_backends! {
    fn task_names_results_and_callbacks(lp) {
        let t1 = lp.create_task(async { 1 });
        let t2 = lp.create_task(async { 2 });
        let n1: u64 = t1.get_name().strip_prefix("Task-").unwrap().parse().unwrap();
        let n2: u64 = t2.get_name().strip_prefix("Task-").unwrap().parse().unwrap();
        assert!(n2 > n1);
        let named = lp.create_named_task("worker", async { 3 });
        assert_eq!(named.get_name(), "worker");
        named.set_name("renamed");
        assert_eq!(named.get_name(), "renamed");
        assert!(matches!(t1.result(), Err(Error::InvalidState(_))));
        let seen = Rc::new(Cell::new(0));
        let s = seen.clone();
        named.add_done_callback(move |t| s.set(t.result().unwrap()));
        assert!(!t1.done());
        let r = lp.run_until_complete(async move { t1.await.unwrap() + t2.await.unwrap() }).unwrap();
        assert_eq!(r, 3);
        turns(lp, 2);
        assert!(named.done() && !named.cancelled());
        assert_eq!(named.result().unwrap(), 3);
        assert_eq!(seen.get(), 3);
        assert!(named.exception().unwrap().is_none());
    }
}

both_backends! {
    fn cancel_drops_the_future_and_ends_cancelled(lp) {
        let dropped = Rc::new(Cell::new(false));
        let d = dropped.clone();
        let never = lp.create_future::<()>();
        let n2 = never.clone();
        let t = lp.create_task(async move {
            let _guard = DropFlag(d);
            n2.await.unwrap();
            unreachable!("the awaited future never completes");
        });
        turns(lp, 2);
        assert!(!t.done());
        assert!(t.cancel(Some("stop it")));
        assert_eq!(t.cancelling(), 1);
        assert!(!t.cancelled(), "cancelled() is not true right after cancel()");
        turns(lp, 1);
        assert!(dropped.get(), "cleanup runs in Drop");
        assert!(t.done() && t.cancelled());
        assert!(!t.cancel(None), "cancel of a done task is refused");
        let t2 = t.clone();
        let r = lp.run_until_complete(t2).unwrap();
        assert!(matches!(r, Err(Error::Cancelled(Some(m))) if m == "stop it"));
        assert!(!never.done(), "dropping a waiter does not cancel the future itself");
    }
}

both_backends! {
    fn cancel_before_first_step_never_polls(lp) {
        let polled = Rc::new(Cell::new(false));
        let p = polled.clone();
        let t = lp.create_task(async move { p.set(true) });
        t.cancel(None);
        turns(lp, 1);
        assert!(!polled.get());
        assert!(t.cancelled());
    }
}

both_backends! {
    fn uncancel_to_zero_forgets_the_request(lp) {
        let t = lp.create_task(async { YieldOnce(false).await; 7 });
        t.cancel(None);
        t.cancel(None);
        assert_eq!(t.cancelling(), 2);
        assert_eq!(t.uncancel(), 1);
        assert_eq!(t.uncancel(), 0);
        assert_eq!(t.uncancel(), 0);
        let r = lp.run_until_complete(t).unwrap();
        assert_eq!(r.unwrap(), 7);
    }
}

both_backends! {
    fn current_and_all_tasks(lp) {
        assert!(current_task().is_none());
        let lp2 = lp.clone();
        lp.run_until_complete(async move {
            let me = current_task().expect("inside a task");
            let child = lp2.create_named_task("child", async {
                let c = current_task().unwrap();
                assert_eq!(c.get_name(), "child");
                YieldOnce(false).await;
            });
            let all = all_tasks();
            assert!(all.iter().any(|t| t.same(&me)));
            assert!(all.iter().any(|t| t.get_name() == "child"));
            assert!(!me.done());
            child.await.unwrap();
            assert!(!all_tasks().iter().any(|t| t.get_name() == "child"), "done tasks leave all_tasks");
        })
        .unwrap();
        assert!(all_tasks().is_empty());
    }
}

both_backends! {
    fn panicking_task_reports_and_loop_survives(lp) {
        let seen = capture_handler(lp);
        let t = lp.create_task(async { panic!("task boom") });
        let r = lp.run_until_complete(t).unwrap();
        assert!(matches!(r, Err(Error::Panic(m)) if m.contains("task boom")));
        // Retrieved: nothing reported.
        assert!(seen.borrow().is_empty());
        // Never retrieved: reported when the task is dropped.
        let t = lp.create_task(async { panic!("unobserved") });
        turns(lp, 2);
        assert!(t.done());
        drop(t);
        let seen = seen.borrow();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].message, "Task exception was never retrieved");
        assert!(matches!(&seen[0].exception, Some(Error::Panic(m)) if m.contains("unobserved")));
        assert!(seen[0].task.is_some());
    }
}

both_backends! {
    fn dropping_a_task_handle_detaches_it(lp) {
        let done = Rc::new(Cell::new(false));
        let d = done.clone();
        drop(lp.create_task(async move { YieldOnce(false).await; YieldOnce(false).await; d.set(true) }));
        turns(lp, 4);
        assert!(done.get());
    }
}

both_backends! {
    fn non_send_futures_and_cross_thread_wakeups(lp) {
        // The body holds an Rc (not Send) and is woken from another thread.
        let slot: Arc<Mutex<(bool, Option<Waker>)>> = Arc::default();
        struct External(Arc<Mutex<(bool, Option<Waker>)>>);
        impl Future for External {
            type Output = ();
            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                let mut s = self.0.lock().unwrap();
                if s.0 {
                    Poll::Ready(())
                } else {
                    s.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
        let s2 = slot.clone();
        let th = std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(10));
                let mut s = s2.lock().unwrap();
                if let Some(w) = s.1.take() {
                    s.0 = true;
                    w.wake();
                    return;
                }
            }
        });
        let rc = Rc::new(5);
        let out = common::run_bounded(lp, Duration::from_secs(5), async move {
            External(slot).await;
            *rc + 1
        });
        th.join().unwrap();
        assert_eq!(out, 6);
    }
}

both_backends! {
    fn close_destroys_pending_tasks_and_reports_them(lp) {
        let seen = capture_handler(lp);
        let dropped = Rc::new(Cell::new(false));
        let d = dropped.clone();
        let fut = lp.create_future::<()>();
        let t = lp.create_named_task("stuck", async move {
            let _g = DropFlag(d);
            fut.await.unwrap();
        });
        turns(lp, 1);
        lp.close().unwrap();
        assert!(dropped.get());
        assert!(t.done() && t.cancelled());
        let seen = seen.borrow();
        assert!(seen.iter().any(|c| c.message == "Task was destroyed but it is pending!"
            && c.task.as_deref().is_some_and(|d| d.contains("stuck"))), "{seen:?}");
    }
}

/// `run` cancels leftover tasks (their cleanup runs) and closes the loop.
/// On the default backend only: `ringloop::run` takes no backend, by
/// definition (asyncio's `run`); the same cleanup through a Runner made on
/// each backend is `executor_runner::runner_runs_several_futures_and_cleans_up`.
#[test]
fn run_cancels_leftover_tasks() {
    let dropped = Rc::new(Cell::new(false));
    let d = dropped.clone();
    let out = ringloop::run(async move {
        let lp = get_running_loop().unwrap();
        let fut = lp.create_future::<()>();
        lp.create_task(async move {
            let _g = DropFlag(d);
            fut.await.unwrap();
        });
        YieldOnce(false).await;
        "main done"
    })
    .unwrap();
    assert_eq!(out, "main done");
    assert!(dropped.get());
    assert!(get_running_loop().is_err());
}

both_backends! {
    /// A task's waiters: the first awaiter is kept inline; a done callback
    /// added after it, a second awaiter and a removed callback all move to
    /// the boxed form, and finishing runs the awaiters and the callback
    /// still registered in the order they came (asyncio's order: an await
    /// is a done callback too).
    fn a_task_with_two_awaiters_and_done_callbacks(lp) {
        let gate = lp.create_future::<u32>();
        let g = gate.clone();
        let t = lp.create_task(async move { g.await.unwrap() });
        let log = Rc::new(RefCell::new(Vec::new()));
        let (l1, l2) = (log.clone(), log.clone());
        let (ta, tb) = (t.clone(), t.clone());
        let a = lp.create_task(async move {
            let r = ta.await;
            l1.borrow_mut().push(format!("a {:?}", r.ok()));
        });
        turns(lp, 2);
        let (l3, l4) = (log.clone(), log.clone());
        let removed = t.add_done_callback(move |_| l3.borrow_mut().push("removed cb".into()));
        let kept = t.add_done_callback(move |t| l4.borrow_mut().push(format!("cb done={}", t.done())));
        assert!(removed != 0 && kept != 0 && removed != kept);
        let b = lp.create_task(async move {
            let r = tb.await;
            l2.borrow_mut().push(format!("b invalid={}", matches!(r, Err(Error::InvalidState(_)))));
        });
        turns(lp, 2);
        assert_eq!(t.remove_done_callback(removed), 1);
        assert_eq!(t.remove_done_callback(removed), 0);
        assert!(log.borrow().is_empty());
        gate.set_result(7).unwrap();
        turns(lp, 4);
        assert!(a.done() && b.done());
        // In registration order: awaiter a (it took the result), the kept
        // callback, awaiter b (it saw the result taken).
        assert_eq!(
            *log.borrow(),
            ["a Some(7)", "cb done=true", "b invalid=true"]
        );
    }
}

both_backends! {
    /// A task whose await was taken once reports InvalidState to a second await.
    fn second_await_of_a_task_gets_invalid_state(lp) {
        common::run_bounded(lp, Duration::from_secs(5), async {
            let lp = get_running_loop().unwrap();
            let t = lp.create_task(async { vec![1, 2, 3] });
            let t2 = t.clone();
            assert_eq!(t.await.unwrap(), vec![1, 2, 3]);
            assert!(matches!(t2.await, Err(Error::InvalidState(_))));
        });
    }
}

both_backends! {
    fn a_first_poll_waker_wakes_from_any_thread(lp) {
        // The waker of a task's first poll is lent (no slot waker yet):
        // woken by reference from a scoped thread, and cloned there and
        // woken later from a plain thread, it runs the task again each
        // time; cloned on the loop thread, the clone outlives the poll.
        struct Poke {
            polls: u32,
            kept: Arc<Mutex<Option<Waker>>>,
        }
        impl Future for Poke {
            type Output = u32;
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
                self.polls += 1;
                match self.polls {
                    1 => {
                        let (w, kept) = (cx.waker(), self.kept.clone());
                        std::thread::scope(|s| {
                            s.spawn(move || {
                                w.wake_by_ref();
                                *kept.lock().unwrap() = Some(w.clone());
                            });
                        });
                        Poll::Pending
                    }
                    2 => {
                        let w = self.kept.lock().unwrap().take().expect("kept");
                        std::thread::spawn(move || w.wake());
                        Poll::Pending
                    }
                    n => Poll::Ready(n),
                }
            }
        }
        let kept = Arc::new(Mutex::new(None));
        let t = lp.create_task(Poke { polls: 0, kept });
        let local = Rc::new(RefCell::new(None::<Waker>));
        let l2 = local.clone();
        let u = lp.create_task(std::future::poll_fn(move |cx| {
            if l2.borrow().is_some() {
                return Poll::Ready("woken");
            }
            *l2.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }));
        let l3 = local.clone();
        lp.call_later(Duration::from_millis(1), move || {
            l3.borrow().as_ref().expect("cloned at first poll").wake_by_ref();
        })
        .unwrap();
        let out = common::run_bounded(lp, Duration::from_secs(5), async move {
            (t.await.unwrap(), u.await.unwrap())
        });
        assert_eq!(out, (3, "woken"), "one poll per wake, none lost");
    }
}
