//! Loop lifecycle, callback ordering, timers, thread-safe wakeups, the
//! exception handler and debug mode, on both backends.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{YieldOnce, capture_handler};
use ringloop::ExceptionContext;
use ringloop::prelude::*;

type Log = Rc<RefCell<Vec<&'static str>>>;

fn push(log: &Log, s: &'static str) -> impl FnOnce() + 'static {
    let log = log.clone();
    move || log.borrow_mut().push(s)
}

both_backends! {
    fn call_soon_runs_fifo(lp) {
        let log: Log = Rc::default();
        for s in ["a", "b", "c", "d"] {
            lp.call_soon(push(&log, s)).unwrap();
        }
        let l2 = lp.clone();
        lp.call_soon(move || l2.stop()).unwrap();
        lp.run_forever().unwrap();
        assert_eq!(*log.borrow(), ["a", "b", "c", "d"]);
    }
}

both_backends! {
    fn callbacks_scheduled_during_an_iteration_wait_for_the_next(lp) {
        // cb1 schedules cb3; cb2 was ready before: order cb1, cb2, cb3, and
        // stop() in cb2 ends run_forever before cb3 runs (asyncio's rule).
        let log: Log = Rc::default();
        let (l, lp2) = (log.clone(), lp.clone());
        lp.call_soon(move || {
            l.borrow_mut().push("cb1");
            let l3 = l.clone();
            lp2.call_soon(move || l3.borrow_mut().push("cb3")).unwrap();
        })
        .unwrap();
        let (l, lp2) = (log.clone(), lp.clone());
        lp.call_soon(move || {
            l.borrow_mut().push("cb2");
            lp2.stop();
        })
        .unwrap();
        lp.run_forever().unwrap();
        assert_eq!(*log.borrow(), ["cb1", "cb2"]);
        // The callback scheduled by that batch runs on the next run.
        lp.stop();
        lp.run_forever().unwrap();
        assert_eq!(*log.borrow(), ["cb1", "cb2", "cb3"]);
    }
}

both_backends! {
    fn stop_before_run_forever_runs_one_iteration(lp) {
        let log: Log = Rc::default();
        lp.call_soon(push(&log, "ready")).unwrap();
        lp.call_later(Duration::from_secs(3600), push(&log, "far timer")).unwrap();
        lp.stop();
        let turns0 = lp.driver_stats().turns;
        let t0 = Instant::now();
        lp.run_forever().unwrap();
        assert_eq!(lp.driver_stats().turns - turns0, 1, "exactly one iteration");
        // (A hang guard: a blocking poll would wait for the hour's timer.)
        assert!(t0.elapsed() < Duration::from_secs(10), "stop-before-run must poll with timeout 0");
        assert_eq!(*log.borrow(), ["ready"]);
        assert!(!lp.is_running());
    }
}

both_backends! {
    fn timers_run_by_deadline_ties_in_scheduling_order(lp) {
        // Each timer logs its name and whether it ran at or after its
        // deadline (timers never run early; how late they run under load
        // does not matter, nor does their order change).
        let log: Rc<RefCell<Vec<(&str, bool)>>> = Rc::default();
        let at = |when: Instant, name: &'static str| {
            let l = log.clone();
            lp.call_at(when, move || l.borrow_mut().push((name, Instant::now() >= when))).unwrap();
        };
        let base = lp.time() + Duration::from_millis(30);
        at(base + Duration::from_millis(20), "late");
        at(base, "tie1");
        at(base, "tie2");
        at(lp.time() + Duration::from_millis(1), "first");
        at(base, "tie3");
        let l2 = lp.clone();
        lp.call_at(base + Duration::from_millis(40), move || l2.stop()).unwrap();
        lp.run_forever().unwrap();
        let names: Vec<&str> = log.borrow().iter().map(|e| e.0).collect();
        assert_eq!(names, ["first", "tie1", "tie2", "tie3", "late"]);
        assert!(log.borrow().iter().all(|e| e.1), "a timer ran before its deadline: {:?}", log.borrow());
        assert!(Instant::now() >= base + Duration::from_millis(40));
    }
}

both_backends! {
    fn timer_handles_cancel_and_report_when(lp) {
        let fired = Rc::new(Cell::new(0));
        let f = fired.clone();
        let when = lp.time() + Duration::from_millis(5);
        let th = lp.call_at(when, move || f.set(f.get() + 1)).unwrap();
        assert_eq!(th.when(), when);
        assert!(!th.cancelled());
        th.cancel();
        th.cancel(); // a no-op the second time
        assert!(th.cancelled());
        let h = lp.call_soon(|| panic!("cancelled handle ran")).unwrap();
        h.cancel();
        assert!(h.cancelled());
        let l2 = lp.clone();
        lp.call_later(Duration::from_millis(20), move || l2.stop()).unwrap();
        lp.run_forever().unwrap();
        assert_eq!(fired.get(), 0);
        // Cancelling after it ran is a no-op too.
        let f = fired.clone();
        let l2 = lp.clone();
        let th = lp.call_later(Duration::ZERO, move || { f.set(1); l2.stop(); }).unwrap();
        lp.run_forever().unwrap();
        th.cancel();
        assert_eq!(fired.get(), 1);
    }
}

both_backends! {
    fn a_million_cancelled_timers_cost_no_memory(lp) {
        let n = 1_000_000;
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            handles.push(lp.call_later(Duration::from_secs(3600 + (i % 1000) as u64), || {}).unwrap());
        }
        assert_eq!(lp.scheduled_timers(), n);
        for h in &handles {
            h.cancel();
        }
        drop(handles);
        // The next turn rebuilds the heap (more than half are cancelled).
        lp.stop();
        lp.run_forever().unwrap();
        assert!(lp.scheduled_timers() <= 101, "heap still holds {}", lp.scheduled_timers());
    }
}

both_backends! {
    fn timers_cancelled_after_entering_the_heap_are_compacted(lp) {
        let n = 10_000;
        let handles: Vec<_> = (0..n)
            .map(|i| lp.call_later(Duration::from_secs(3600 + (i % 100) as u64), || {}).unwrap())
            .collect();
        // One turn moves them into the heap; then cancel all but one.
        lp.stop();
        lp.run_forever().unwrap();
        assert_eq!(lp.scheduled_timers(), n);
        for h in &handles[1..] {
            h.cancel();
        }
        lp.stop();
        lp.run_forever().unwrap();
        assert_eq!(lp.scheduled_timers(), 1, "the turn rebuilt the heap");
        assert!(!handles[0].cancelled());
    }
}

both_backends! {
    fn equal_deadlines_run_in_scheduling_order_across_turns(lp) {
        let when = lp.time() + Duration::from_millis(30);
        let order = Rc::new(RefCell::new(Vec::new()));
        let o = order.clone();
        lp.call_at(when, move || o.borrow_mut().push("first")).unwrap();
        // A turn later (the first timer is in the heap by then), a second
        // timer for the same instant, and a cancelled one before it.
        let (o, l2) = (order.clone(), lp.clone());
        lp.call_soon(move || {
            let l3 = l2.clone();
            l2.call_at(when, || panic!("cancelled timer ran")).unwrap().cancel();
            l2.call_at(when, move || {
                o.borrow_mut().push("second");
                l3.stop();
            })
            .unwrap();
        })
        .unwrap();
        lp.run_forever().unwrap();
        assert_eq!(*order.borrow(), ["first", "second"]);
        assert_eq!(lp.scheduled_timers(), 0);
    }
}

both_backends! {
    fn call_soon_threadsafe_wakes_a_blocked_loop(lp) {
        let h = lp.handle();
        let from_thread = Arc::new(Mutex::new(false));
        let f2 = from_thread.clone();
        // Nothing is scheduled: the loop blocks in the driver until the
        // thread's callback wakes it (the watchdog only guards the test).
        let l2 = lp.clone();
        let fired = Rc::new(Cell::new(false));
        let f = fired.clone();
        let watchdog = lp
            .call_later(Duration::from_secs(10), move || {
                f.set(true);
                l2.stop();
            })
            .unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            h.call_soon_threadsafe(move || {
                *f2.lock().unwrap() = true;
                get_running_loop().unwrap().stop();
            })
            .unwrap();
        });
        lp.run_forever().unwrap();
        t.join().unwrap();
        watchdog.cancel();
        assert!(*from_thread.lock().unwrap());
        // Had the wake-up been lost, only the watchdog's timer would have
        // ended the wait (running the queued callback in that same turn).
        assert!(!fired.get(), "the thread's callback did not wake the loop");
    }
}

both_backends! {
    fn many_threads_many_threadsafe_callbacks_all_run(lp) {
        let count = Arc::new(Mutex::new(0u32));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = lp.handle();
                let c = count.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        let c = c.clone();
                        h.call_soon_threadsafe(move || *c.lock().unwrap() += 1).unwrap();
                    }
                })
            })
            .collect();
        let c = count.clone();
        common::run_bounded(lp, Duration::from_secs(10), async move {
            loop {
                if *c.lock().unwrap() == 2000 {
                    return;
                }
                YieldOnce(false).await;
            }
        });
        for t in threads {
            t.join().unwrap();
        }
    }
}

both_backends! {
    fn close_rules(lp) {
        let h = lp.handle();
        // close refuses while running
        let l2 = lp.clone();
        let inner = Rc::new(RefCell::new(None));
        let i2 = inner.clone();
        lp.call_soon(move || {
            *i2.borrow_mut() = Some(l2.close());
            l2.stop();
        })
        .unwrap();
        lp.run_forever().unwrap();
        assert!(matches!(inner.borrow_mut().take(), Some(Err(Error::InvalidState(_)))));
        assert!(!lp.is_closed());
        lp.call_soon(|| panic!("pending callbacks are discarded at close")).unwrap();
        lp.close().unwrap();
        assert!(lp.is_closed());
        lp.close().unwrap(); // idempotent
        assert!(matches!(lp.run_forever(), Err(Error::Closed(_))));
        assert!(matches!(lp.run_until_complete(async {}), Err(Error::Closed(_))));
        assert!(matches!(lp.call_soon(|| {}), Err(Error::Closed(_))));
        assert!(matches!(lp.call_later(Duration::ZERO, || {}), Err(Error::Closed(_))));
        assert!(matches!(h.call_soon_threadsafe(|| {}), Err(Error::Closed(_))));
        assert!(h.is_closed());
        // From another thread too.
        let r = std::thread::spawn(move || h.call_soon_threadsafe(|| {}).is_err()).join().unwrap();
        assert!(r);
    }
}

both_backends! {
    fn run_until_complete_and_running_loop(lp) {
        assert!(get_running_loop().is_err());
        assert!(!lp.is_running());
        let v = lp
            .run_until_complete(async {
                let lp = get_running_loop().unwrap();
                assert!(lp.is_running());
                // Re-entrant runs are refused, as asyncio's RuntimeError.
                let again = lp.run_until_complete(async { 1 });
                assert!(matches!(again, Err(Error::InvalidState(_))));
                assert!(matches!(lp.run_forever(), Err(Error::InvalidState(_))));
                // Another loop cannot run on this thread meanwhile.
                let other = EventLoop::selector().unwrap();
                assert!(matches!(other.run_forever(), Err(Error::InvalidState(_))));
                other.close().unwrap();
                21 * 2
            })
            .unwrap();
        assert_eq!(v, 42);
        assert!(get_running_loop().is_err());
        assert!(!lp.is_running());
    }
}

both_backends! {
    fn panicking_callback_goes_to_the_exception_handler(lp) {
        let seen = capture_handler(lp);
        assert!(lp.get_exception_handler().is_some());
        let after = Rc::new(Cell::new(false));
        let a = after.clone();
        lp.call_soon(|| panic!("boom in callback")).unwrap();
        lp.call_soon(move || a.set(true)).unwrap();
        let l2 = lp.clone();
        lp.call_later(Duration::from_millis(5), move || {
            // A handler that panics itself falls back to the default one.
            l2.set_exception_handler(Some(Rc::new(|_, _| panic!("handler broken"))));
            l2.call_exception_handler(ExceptionContext::new("reported to a broken handler"));
            l2.set_exception_handler(None);
            l2.default_exception_handler(&ExceptionContext::new("default handler works"));
            l2.stop();
        })
        .unwrap();
        lp.run_forever().unwrap();
        assert!(after.get(), "the loop kept running after the panic");
        let seen = seen.borrow();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(seen[0].message.starts_with("Exception in callback"), "{}", seen[0].message);
        assert!(matches!(&seen[0].exception, Some(Error::Panic(m)) if m.contains("boom in callback")));
        assert!(seen[0].get("handle").is_some());
        assert!(lp.get_exception_handler().is_none());
    }
}

both_backends! {
    fn debug_mode_and_slow_callbacks(lp) {
        assert_eq!(lp.slow_callback_duration(), Duration::from_millis(100));
        lp.set_debug(true);
        assert!(lp.get_debug());
        lp.set_slow_callback_duration(Duration::from_millis(5));
        common::install_logger();
        lp.call_soon(|| std::thread::sleep(Duration::from_millis(15))).unwrap();
        let l2 = lp.clone();
        lp.call_soon(move || l2.stop()).unwrap();
        lp.run_forever().unwrap();
        assert!(
            common::logged("Executing <Handle callback> took"),
            "no slow-callback warning in {:?}",
            common::log_lines()
        );
        lp.set_debug(false);
        assert!(!lp.get_debug());
    }
}

both_backends! {
    fn call_at_in_the_past_runs_promptly(lp) {
        let ran = Rc::new(Cell::new(false));
        let (r, l2) = (ran.clone(), lp.clone());
        let past = lp.time() - Duration::from_millis(50);
        lp.call_at(past, move || { r.set(true); l2.stop(); }).unwrap();
        let turns0 = lp.driver_stats().turns;
        lp.run_forever().unwrap();
        assert!(ran.get());
        // Promptly: in the first iteration (had it waited, it would wait
        // forever: nothing else is scheduled).
        assert_eq!(lp.driver_stats().turns - turns0, 1);
    }
}

const DEBUG_ENV: common::child::ChildTest =
    common::child::ChildTest::new("ringloop_debug_env_enables_debug_mode");

/// RINGLOOP_DEBUG=1 turns debug mode on for new loops (checked in a child
/// process, since the environment is process-wide; the child makes one
/// loop of each backend, so this is not generated for both).
#[test]
fn ringloop_debug_env_enables_debug_mode() {
    if DEBUG_ENV.child_side(|_| {
        for lp in [
            EventLoop::proactor().unwrap(),
            EventLoop::selector().unwrap(),
        ] {
            assert!(lp.get_debug(), "{} loop not in debug mode", lp.backend());
            lp.close().unwrap();
        }
    }) {
        return;
    }
    DEBUG_ENV.run("debug", &[("RINGLOOP_DEBUG", "1")]);
    // This process's own loops follow its own environment.
    let lp = EventLoop::selector().unwrap();
    assert_eq!(
        lp.get_debug(),
        std::env::var("RINGLOOP_DEBUG").is_ok_and(|v| v == "1")
    );
    lp.close().unwrap();
}

both_backends! {
    fn one_driver_wait_per_iteration(lp) {
        // Every turn submits what the previous one queued and reaps in one
        // io_uring_enter (or one epoll_wait), however many ops are queued.
        let (r, w) = ringloop::pipe().unwrap();
        let r = Rc::new(r);
        for _ in 0..50 {
            let r2 = r.clone();
            lp.create_task(async move {
                let lp = get_running_loop().unwrap();
                lp.pipe_read_into(&r2, Vec::with_capacity(1)).await.0.unwrap()
            });
        }
        let before = lp.driver_stats();
        for _ in 0..20 {
            lp.stop();
            lp.run_forever().unwrap();
        }
        nix::unistd::write(&w, &[7u8; 50]).unwrap();
        for _ in 0..20 {
            lp.stop();
            lp.run_forever().unwrap();
        }
        let after = lp.driver_stats();
        let turns = after.turns - before.turns;
        assert_eq!(turns, 40);
        match lp.backend() {
            // At most one enter per turn; an idle turn (nothing to submit,
            // nothing pending) makes none.
            Backend::Proactor => {
                let enters = after.uring_enters - before.uring_enters;
                assert!(enters >= 2 && enters <= turns, "{enters} enters in {turns} turns: {after:?}");
            }
            // At most one epoll_wait per turn; none when nothing is parked.
            Backend::Selector => {
                let waits = after.epoll_waits - before.epoll_waits;
                assert!(waits >= 1 && waits <= turns, "{waits} waits in {turns} turns: {after:?}");
            }
        }
        assert_eq!(lp.ops_in_flight(), 0, "all 50 reads completed");
    }
}

both_backends! {
    fn more_ops_than_ring_entries_all_complete(lp) {
        // 5000 reads on one pipe: more than the SQ (1024) and the CQ (4096)
        // hold; the driver flushes a full SQ and nothing is lost.
        let (rfd, wfd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let r = Rc::new(ringloop::Pipe::from_owned(rfd).unwrap());
        let got = Rc::new(Cell::new(0usize));
        let n = 5000;
        for _ in 0..n {
            let (r2, g) = (r.clone(), got.clone());
            lp.create_task(async move {
                let lp = get_running_loop().unwrap();
                let (res, _) = lp.pipe_read_into(&r2, Vec::with_capacity(1)).await;
                g.set(g.get() + res.unwrap());
            });
        }
        lp.stop();
        lp.run_forever().unwrap();
        assert_eq!(lp.ops_in_flight(), n);
        let w = std::thread::spawn(move || {
            let mut f = std::fs::File::from(wfd);
            std::io::Write::write_all(&mut f, &vec![1u8; n]).unwrap();
            f
        });
        let g = got.clone();
        common::run_bounded(lp, Duration::from_secs(20), async move {
            while g.get() < n {
                YieldOnce(false).await;
            }
        });
        drop(w.join().unwrap());
        assert_eq!(got.get(), n);
        assert_eq!(lp.ops_in_flight(), 0);
    }
}

both_backends! {
    fn a_panicking_callback_is_reported_and_the_loop_goes_on_by_default(lp) {
        // asyncio's behaviour: the panic is reported, later callbacks run.
        let seen = capture_handler(lp);
        let log: Log = Rc::new(RefCell::new(Vec::new()));
        assert_eq!(lp.unhandled_panic(), ringloop::UnhandledPanic::Ignore);
        lp.call_soon(|| panic!("boom")).unwrap();
        lp.call_soon(push(&log, "after")).unwrap();
        let l2 = lp.clone();
        lp.call_soon(move || l2.stop()).unwrap();
        lp.run_forever().unwrap();
        assert_eq!(*log.borrow(), ["after"]);
        assert_eq!(seen.borrow().len(), 1);
        assert!(matches!(&seen.borrow()[0].exception, Some(Error::Panic(m)) if m == "boom"));
    }
}

both_backends! {
    fn stop_loop_policy_returns_the_first_panic_from_run_forever(lp) {
        // The callback that would have stopped the loop never runs: the
        // panic stops it instead (`timeout 5 hello | head -1` no longer hangs).
        let seen = capture_handler(lp);
        lp.set_unhandled_panic(ringloop::UnhandledPanic::StopLoop);
        let log: Log = Rc::new(RefCell::new(Vec::new()));
        lp.call_soon(push(&log, "first")).unwrap();
        lp.call_soon(|| panic!("boom")).unwrap();
        lp.call_later(Duration::from_secs(3600), || unreachable!("the loop stopped")).unwrap();
        let err = lp.run_forever().unwrap_err();
        assert!(matches!(&err, Error::Panic(m) if m == "boom"), "{err:?}");
        assert_eq!(*log.borrow(), ["first"]);
        assert_eq!(seen.borrow().len(), 1, "still reported");
        // The panic is returned once; the loop runs again afterwards.
        let r = lp.run_until_complete(async { 7 });
        assert_eq!(r.unwrap(), 7);
    }
}

both_backends! {
    fn stop_loop_policy_stops_on_a_task_panic_even_with_its_handle_kept(lp) {
        lp.set_unhandled_panic(ringloop::UnhandledPanic::StopLoop);
        lp.set_exception_handler(Some(Rc::new(|_, _| {})));
        let r = lp.run_until_complete(async {
            let lp = get_running_loop().unwrap();
            let t = lp.create_task(async { panic!("task boom") });
            // Would wait forever: the task's panic stops the loop first.
            sleep(Duration::from_secs(3600)).await.unwrap();
            drop(t);
        });
        assert!(matches!(&r, Err(Error::Panic(m)) if m == "task boom"), "{r:?}");
    }
}
