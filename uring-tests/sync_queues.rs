//! Locks, events, conditions, semaphores, barriers and queues, with the
//! cancellation edge cases, on both backends.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use common::turns;
use ringloop::locks::{Barrier, BoundedSemaphore, Condition, Event, Lock, Semaphore};
use ringloop::prelude::*;
use ringloop::queues::{LifoQueue, PriorityQueue, Queue};

const LIMIT: Duration = Duration::from_secs(10);

both_backends! {
    fn lock_is_fifo_fair_and_release_unlocked_fails(lp) {
        let order = common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let lock = Lock::new();
            let order = Rc::new(RefCell::new(Vec::new()));
            lock.acquire().await;
            let mut ts = Vec::new();
            for i in 0..5 {
                let (l, o) = (lock.clone(), order.clone());
                ts.push(lp.create_task(async move {
                    l.acquire().await;
                    o.borrow_mut().push(i);
                    ringloop::sleep(Duration::ZERO).await.unwrap();
                    l.release().unwrap();
                }));
                ringloop::sleep(Duration::ZERO).await.unwrap();
            }
            // A newcomer does not barge ahead of the queued waiters.
            lock.release().unwrap();
            assert!(lock.locked(), "handed straight to the first waiter");
            let (l, o) = (lock.clone(), order.clone());
            let late = lp.create_task(async move {
                let _g = l.lock().await;
                o.borrow_mut().push(99);
            });
            for t in ts {
                t.await.unwrap();
            }
            late.await.unwrap();
            assert!(!lock.locked());
            assert!(matches!(lock.release(), Err(Error::InvalidState(_))));
            order.borrow().clone()
        });
        assert_eq!(order, [0, 1, 2, 3, 4, 99]);
    }
}

both_backends! {
    fn cancelled_lock_waiters_never_lose_the_lock(lp) {
        let lock = Lock::new();
        let got = Rc::new(RefCell::new(Vec::new()));
        let l0 = lock.clone();
        lp.run_until_complete(async move { l0.acquire().await }).unwrap();
        let mk = |i: u32| {
            let (l, g) = (lock.clone(), got.clone());
            lp.create_task(async move {
                l.acquire().await;
                g.borrow_mut().push(i);
                l.release().unwrap();
            })
        };
        let (a, b, c) = (mk(1), mk(2), mk(3));
        turns(lp, 2);
        // A waiter cancelled while queued is skipped.
        a.cancel(None);
        turns(lp, 1);
        // A waiter cancelled after being handed the lock, before it ran:
        // release and cancel in the same callback.
        let (l2, b2) = (lock.clone(), b.clone());
        lp.call_soon(move || {
            l2.release().unwrap();
            b2.cancel(None);
        })
        .unwrap();
        turns(lp, 4);
        assert!(a.cancelled() && b.cancelled());
        assert!(c.done() && !c.cancelled(), "the lock was passed on to the next waiter");
        assert_eq!(*got.borrow(), [3]);
        assert!(!lock.locked());
    }
}

both_backends! {
    fn event_wakes_all_waiters(lp) {
        let n = common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let ev = Event::new();
            let woke = Rc::new(Cell::new(0));
            let ts: Vec<_> = (0..4)
                .map(|_| {
                    let (e, w) = (ev.clone(), woke.clone());
                    lp.create_task(async move {
                        e.wait().await;
                        w.set(w.get() + 1);
                    })
                })
                .collect();
            ringloop::sleep(Duration::ZERO).await.unwrap();
            assert!(!ev.is_set());
            ev.set();
            ev.clear(); // waiters woken by set() still return
            for t in ts {
                t.await.unwrap();
            }
            ev.set();
            ev.wait().await; // already set: returns at once
            woke.get()
        });
        assert_eq!(n, 4);
    }
}

both_backends! {
    fn condition_notify_wait_for_and_errors(lp) {
        common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let cond = Condition::new();
            assert!(matches!(cond.notify(1), Err(Error::InvalidState(_))));
            assert!(matches!(cond.wait().await, Err(Error::InvalidState(_))));
            let woke = Rc::new(Cell::new(0));
            let ts: Vec<_> = (0..3)
                .map(|_| {
                    let (c, w) = (cond.clone(), woke.clone());
                    lp.create_task(async move {
                        c.acquire().await;
                        c.wait().await.unwrap();
                        assert!(c.locked(), "wait re-acquires the lock");
                        w.set(w.get() + 1);
                        c.release().unwrap();
                    })
                })
                .collect();
            ringloop::sleep(Duration::ZERO).await.unwrap();
            cond.acquire().await;
            cond.notify(1).unwrap();
            cond.release().unwrap();
            // One wakes (waited for, bounded), and over further turns no
            // other does.
            for _ in 0..1000 {
                if woke.get() > 0 {
                    break;
                }
                ringloop::sleep(Duration::ZERO).await.unwrap();
            }
            for _ in 0..10 {
                ringloop::sleep(Duration::ZERO).await.unwrap();
            }
            assert_eq!(woke.get(), 1, "notify(1) wakes one");
            cond.acquire().await;
            cond.notify_all().unwrap();
            cond.release().unwrap();
            for t in ts {
                t.await.unwrap();
            }
            assert_eq!(woke.get(), 3);
            // wait_for with a shared lock.
            let shared = Lock::new();
            let c2 = Condition::with_lock(shared.clone());
            let flag = Rc::new(Cell::new(false));
            let (c3, f2) = (c2.clone(), flag.clone());
            lp.create_task(async move {
                ringloop::sleep(Duration::from_millis(2)).await.unwrap();
                c3.acquire().await;
                f2.set(true);
                c3.notify_all().unwrap();
                c3.release().unwrap();
            });
            c2.acquire().await;
            c2.wait_for(|| flag.get()).await.unwrap();
            assert!(shared.locked());
            c2.release().unwrap();
        });
    }
}

both_backends! {
    fn notified_condition_waiter_cancelled_passes_the_notify_on(lp) {
        let cond = Condition::new();
        let woke = Rc::new(RefCell::new(Vec::new()));
        let mk = |i: u32| {
            let (c, w) = (cond.clone(), woke.clone());
            lp.create_task(async move {
                c.acquire().await;
                c.wait().await.unwrap();
                w.borrow_mut().push(i);
                c.release().unwrap();
            })
        };
        let (a, b) = (mk(1), mk(2));
        turns(lp, 3);
        let (c2, a2) = (cond.clone(), a.clone());
        lp.call_soon(move || {
            // notify(1) picks waiter 1, which is cancelled before it runs.
            assert!(c2.lock_ref().locked() || !c2.locked());
            let l = c2.clone();
            let lp = get_running_loop().unwrap();
            lp.create_task(async move {
                l.acquire().await;
                l.notify(1).unwrap();
                a2.cancel(None);
                l.release().unwrap();
            });
        })
        .unwrap();
        turns(lp, 6);
        assert!(a.cancelled());
        assert!(b.done() && !b.cancelled(), "the notify reached waiter 2");
        assert_eq!(*woke.borrow(), [2]);
    }
}

both_backends! {
    fn semaphores_count_and_bounded_over_release_fails(lp) {
        common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let sem = Semaphore::new(2);
            let inside = Rc::new(Cell::new(0));
            let max = Rc::new(Cell::new(0));
            let ts: Vec<_> = (0..6)
                .map(|_| {
                    let (s, i, m) = (sem.clone(), inside.clone(), max.clone());
                    lp.create_task(async move {
                        let _p = s.permit().await;
                        i.set(i.get() + 1);
                        m.set(m.get().max(i.get()));
                        ringloop::sleep(Duration::from_millis(1)).await.unwrap();
                        i.set(i.get() - 1);
                    })
                })
                .collect();
            for t in ts {
                t.await.unwrap();
            }
            assert_eq!(max.get(), 2);
            assert_eq!(sem.value(), 2);
            let b = BoundedSemaphore::new(1);
            assert!(matches!(b.release(), Err(Error::InvalidArgument(_))));
            b.acquire().await;
            assert!(b.locked());
            b.release().unwrap();
            assert!(b.release().is_err());
        });
    }
}

both_backends! {
    fn granted_semaphore_waiter_cancelled_passes_the_permit(lp) {
        let sem = Semaphore::new(0);
        let got = Rc::new(RefCell::new(Vec::new()));
        let mk = |i: u32| {
            let (s, g) = (sem.clone(), got.clone());
            lp.create_task(async move {
                s.acquire().await;
                g.borrow_mut().push(i);
            })
        };
        let (a, b) = (mk(1), mk(2));
        turns(lp, 2);
        let (s2, a2) = (sem.clone(), a.clone());
        lp.call_soon(move || {
            s2.release().unwrap(); // granted to waiter 1...
            a2.cancel(None); // ...which is cancelled before it runs
        })
        .unwrap();
        turns(lp, 4);
        assert!(a.cancelled());
        assert!(b.done(), "the permit went to waiter 2");
        assert_eq!(*got.borrow(), [2]);
        assert_eq!(sem.value(), 0, "no permit was created or lost");
    }
}

both_backends! {
    fn barrier_indices_cycles_reset_and_abort(lp) {
        common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            assert!(Barrier::new(0).is_err());
            let b = Barrier::new(3).unwrap();
            assert_eq!(b.parties(), 3);
            for _cycle in 0..3 {
                let ts: Vec<_> = (0..3)
                    .map(|_| {
                        let b = b.clone();
                        lp.create_task(async move { b.wait().await.unwrap() })
                    })
                    .collect();
                let mut idx = Vec::new();
                for t in ts {
                    idx.push(t.await.unwrap());
                }
                idx.sort();
                assert_eq!(idx, [0, 1, 2], "distinct indices each cycle");
            }
            // Two wait, then a reset breaks them.
            let ts: Vec<_> = (0..2)
                .map(|_| {
                    let b = b.clone();
                    lp.create_task(async move { b.wait().await })
                })
                .collect();
            ringloop::sleep(Duration::ZERO).await.unwrap();
            assert_eq!(b.n_waiting(), 2);
            b.reset().await;
            for t in ts {
                assert!(matches!(t.await.unwrap(), Err(Error::BrokenBarrier)));
            }
            assert!(!b.broken());
            // A waiter cancelled while waiting leaves the barrier.
            let c = b.clone();
            let quitter = lp.create_task(async move { c.wait().await });
            ringloop::sleep(Duration::ZERO).await.unwrap();
            assert_eq!(b.n_waiting(), 1);
            quitter.cancel(None);
            ringloop::sleep(Duration::ZERO).await.unwrap();
            assert_eq!(b.n_waiting(), 0);
            // abort breaks current and future waits.
            let c = b.clone();
            let w = lp.create_task(async move { c.wait().await });
            ringloop::sleep(Duration::ZERO).await.unwrap();
            b.abort().await;
            assert!(b.broken());
            assert!(matches!(w.await.unwrap(), Err(Error::BrokenBarrier)));
            assert!(matches!(b.wait().await, Err(Error::BrokenBarrier)));
        });
    }
}

both_backends! {
    fn queue_orders_backpressure_and_nowait_errors(lp) {
        common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let q: Queue<u32> = Queue::new(2);
            assert!(matches!(q.get_nowait(), Err(Error::QueueEmpty)));
            q.put_nowait(1).unwrap();
            q.put_nowait(2).unwrap();
            assert!(q.full() && q.qsize() == 2 && q.maxsize() == 2);
            assert!(matches!(q.put_nowait(3), Err(Error::QueueFull)));
            let q2 = q.clone();
            let putter = lp.create_task(async move { q2.put(3).await });
            ringloop::sleep(Duration::ZERO).await.unwrap();
            assert!(!putter.done(), "put waits while full");
            assert_eq!(q.get().await.unwrap(), 1);
            putter.await.unwrap().unwrap();
            assert_eq!((q.get().await.unwrap(), q.get().await.unwrap()), (2, 3));
            let q3 = q.clone();
            let getter = lp.create_task(async move { q3.get().await });
            ringloop::sleep(Duration::ZERO).await.unwrap();
            assert!(!getter.done(), "get waits while empty");
            q.put(7).await.unwrap();
            assert_eq!(getter.await.unwrap().unwrap(), 7);
            let lifo: LifoQueue<u32> = Queue::new(0);
            let prio: PriorityQueue<(u32, &str)> = Queue::new(0);
            for v in [3, 1, 2] {
                lifo.put(v).await.unwrap();
            }
            for v in [(2, "b"), (1, "z"), (2, "a"), (1, "y")] {
                prio.put(v).await.unwrap();
            }
            let l: Vec<u32> = (0..3).map(|_| lifo.get_nowait().unwrap()).collect();
            assert_eq!(l, [2, 1, 3]);
            let p: Vec<(u32, &str)> = (0..4).map(|_| prio.get_nowait().unwrap()).collect();
            assert_eq!(p, [(1, "y"), (1, "z"), (2, "a"), (2, "b")]);
        });
    }
}

both_backends! {
    fn task_done_join_and_over_call(lp) {
        common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let q: Queue<u32> = Queue::new(0);
            assert!(matches!(q.task_done(), Err(Error::InvalidArgument(_))));
            for i in 0..5 {
                q.put(i).await.unwrap();
            }
            let q2 = q.clone();
            let joined = lp.create_task(async move { q2.join().await });
            for _ in 0..5 {
                q.get().await.unwrap();
                ringloop::sleep(Duration::ZERO).await.unwrap();
                assert!(!joined.done(), "join waits for task_done");
                q.task_done().unwrap();
            }
            joined.await.unwrap();
            assert!(q.task_done().is_err());
        });
    }
}

both_backends! {
    fn queue_shutdown_normal_and_immediate(lp) {
        common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let q: Queue<u32> = Queue::new(1);
            q.put(1).await.unwrap();
            let q2 = q.clone();
            let blocked_putter = lp.create_task(async move { q2.put(2).await });
            ringloop::sleep(Duration::ZERO).await.unwrap();
            q.shutdown(false);
            assert!(matches!(blocked_putter.await.unwrap(), Err(Error::QueueShutDown)));
            assert!(matches!(q.put_nowait(3), Err(Error::QueueShutDown)));
            assert_eq!(q.get().await.unwrap(), 1, "non-immediate: what is left drains");
            assert!(matches!(q.get().await, Err(Error::QueueShutDown)));

            let q: Queue<u32> = Queue::new(0);
            q.put(1).await.unwrap();
            q.put(2).await.unwrap();
            let e: Queue<u32> = Queue::new(0);
            let (e2, q3) = (e.clone(), q.clone());
            let blocked_getter = lp.create_task(async move { e2.get().await });
            let joiner = lp.create_task(async move { q3.join().await });
            ringloop::sleep(Duration::ZERO).await.unwrap();
            q.shutdown(true);
            e.shutdown(true);
            assert!(q.empty(), "immediate: items dropped");
            joiner.await.unwrap();
            assert!(matches!(blocked_getter.await.unwrap(), Err(Error::QueueShutDown)));
            assert!(q.is_shut_down());
        });
    }
}

both_backends! {
    fn woken_getter_cancelled_passes_the_item_on(lp) {
        let q: Queue<u32> = Queue::new(0);
        let got = Rc::new(RefCell::new(Vec::new()));
        let mk = |i: u32| {
            let (q, g) = (q.clone(), got.clone());
            lp.create_task(async move {
                let v = q.get().await.unwrap();
                g.borrow_mut().push((i, v));
            })
        };
        let (a, b) = (mk(1), mk(2));
        turns(lp, 2);
        let (q2, a2) = (q.clone(), a.clone());
        lp.call_soon(move || {
            q2.put_nowait(42).unwrap(); // wakes getter 1...
            a2.cancel(None); // ...which is cancelled before it runs
        })
        .unwrap();
        turns(lp, 4);
        assert!(a.cancelled());
        assert_eq!(*got.borrow(), [(2, 42)], "the item reached getter 2");
        // A cancelled blocked putter inserts nothing.
        let full: Queue<u32> = Queue::new(1);
        full.put_nowait(1).unwrap();
        let f2 = full.clone();
        let p = lp.create_task(async move { f2.put(2).await });
        turns(lp, 2);
        p.cancel(None);
        turns(lp, 2);
        assert_eq!(full.qsize(), 1);
        assert_eq!(full.get_nowait().unwrap(), 1);
        assert!(full.empty());
        drop(b);
    }
}

both_backends! {
    fn producers_consumers_move_100k_items(lp) {
        let (sum, count) = common::run_bounded(lp, Duration::from_secs(30), async {
            let lp = get_running_loop().unwrap();
            let q: Queue<u64> = Queue::new(100);
            let producers: Vec<_> = (0..4u64)
                .map(|p| {
                    let q = q.clone();
                    lp.create_task(async move {
                        for i in 0..25_000u64 {
                            q.put(p * 1_000_000 + i).await.unwrap();
                        }
                    })
                })
                .collect();
            let consumers: Vec<_> = (0..3)
                .map(|_| {
                    let q = q.clone();
                    lp.create_task(async move {
                        let (mut s, mut n) = (0u64, 0u64);
                        while let Ok(v) = q.get().await {
                            s = s.wrapping_add(v);
                            n += 1;
                            q.task_done().unwrap();
                        }
                        (s, n)
                    })
                })
                .collect();
            for p in producers {
                p.await.unwrap();
            }
            q.join().await;
            q.shutdown(false);
            let (mut s, mut n) = (0u64, 0u64);
            for c in consumers {
                let (a, b) = c.await.unwrap();
                s = s.wrapping_add(a);
                n += b;
            }
            (s, n)
        });
        let expect: u64 = (0..4u64).map(|p| (0..25_000u64).map(|i| p * 1_000_000 + i).sum::<u64>()).sum();
        assert_eq!((sum, count), (expect, 100_000));
    }
}
