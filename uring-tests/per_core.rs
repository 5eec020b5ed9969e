//! One loop per core (`run_per_core`, `serve_per_core`) on both backends.
//!
//! These tests make their own loops (one per thread, through the per-core
//! runner), so `both_backends!` (which hands a body one loop) does not fit;
//! [`per_core_both!`] generates the same `proactor` / `selector` pair from
//! a body taking the `Backend`, and every body proves, from inside each of
//! its loops, that the backend did the work ([`assert_loop_used`]).
//!
//! Ctrl-C is process-wide: its test runs in a child process of its own
//! (`common::child`), so no other test of this binary sees the SIGINT.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringloop::prelude::*;
use ringloop::{
    BaseProtocol, DriverStats, PerCoreOptions, PerCoreStop, Protocol, SigintHandling, Transport,
};

const LIMIT: Duration = Duration::from_secs(20);

/// `mod $name { #[test] fn proactor(); #[test] fn selector(); }` from one
/// body taking the backend.
macro_rules! per_core_both {
    ($(#[$m:meta])* fn $name:ident($b:ident) $body:block) => {
        $(#[$m])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn body($b: Backend) $body
            #[test]
            fn proactor() {
                body(Backend::Proactor)
            }
            #[test]
            fn selector() {
                body(Backend::Selector)
            }
        }
    };
}

/// Fails unless `s` (a loop's counters) shows `backend` did the work.
fn assert_stats_show(s: &DriverStats, backend: Backend) {
    match backend {
        Backend::Proactor => {
            assert!(
                s.uring_enters > 0,
                "proactor loop made no io_uring_enter: {s:?}"
            );
            assert_eq!(s.epoll_waits, 0, "proactor loop used epoll: {s:?}");
        }
        Backend::Selector => {
            assert!(s.turns > 0, "selector loop ran no iteration: {s:?}");
            assert_eq!(s.uring_enters, 0, "selector loop used io_uring: {s:?}");
        }
    }
}

/// From inside a loop of the run: it is on `backend`, and (after the I/O
/// it did) the counters show it.
fn assert_loop_used(backend: Backend) {
    let lp = get_running_loop().expect("inside a loop");
    assert_eq!(lp.backend(), backend);
    assert_stats_show(&lp.driver_stats(), backend);
}

/// How long a main task that should be stopped waits before it gives up
/// (and says so): a broken stop fails its test instead of hanging it.
const UNSTOPPED: Duration = Duration::from_secs(15);

/// Runs `f` (a whole per-core run) on a thread of its own; fails the test
/// if it has not returned within a minute (a hang guard: the runs here
/// take milliseconds).
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let th = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match th.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!("the run's thread ended without a result"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("a per-core run did not return within 60 s")
        }
    }
}

/// [`ringloop::run_per_core`] under [`bounded`].
fn run_pc<T, M, Fut>(o: PerCoreOptions, make_main: M) -> ringloop::Result<Vec<T>>
where
    M: Fn(ringloop::PerCoreContext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ringloop::Result<T>> + 'static,
    T: Send + 'static,
{
    bounded(move || ringloop::run_per_core(o, make_main))
}

fn opts(backend: Backend, threads: usize) -> PerCoreOptions {
    PerCoreOptions {
        threads,
        backend: Some(backend),
        sigint: SigintHandling::Never,
        ..Default::default()
    }
}

/// Echoes what it receives; notes, per connection, the loop thread that
/// accepted it and that loop's counters then.
struct Echo {
    t: Option<Transport>,
    seen: Arc<Mutex<Vec<(String, Backend, DriverStats)>>>,
}

impl BaseProtocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        let lp = get_running_loop().unwrap();
        let name = std::thread::current().name().unwrap_or("?").to_owned();
        self.seen
            .lock()
            .unwrap()
            .push((name, lp.backend(), lp.driver_stats()));
        self.t = Some(t);
    }
}

impl Protocol for Echo {
    fn data_received(&mut self, data: &[u8]) {
        if let Some(t) = &self.t {
            let _ = t.write(data.to_vec());
        }
    }
}

/// One echo round trip on a new connection to `addr`.
fn echo_once(addr: std::net::SocketAddr, msg: &[u8]) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(LIMIT)).unwrap();
    c.write_all(msg).unwrap();
    let mut got = vec![0; msg.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

per_core_both!(
    /// Two loops share a port (port 0: the first bind's, reused by the
    /// second) and the kernel spreads 200 connections over both. Each
    /// connection comes from its own client port and the kernel picks the
    /// socket by a hash of the 4-tuple, so all 200 on one loop has odds of
    /// 2^-199: "both accepted some" is a count, not a timing.
    fn two_loops_share_a_port_and_both_accept(backend) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = PerCoreStop::new();
        let (s2, st2) = (stop.clone(), seen.clone());
        let clients = std::thread::spawn(move || {
            let addrs = s2.wait_serving(LIMIT).expect("every loop serving");
            assert_eq!(addrs.len(), 1, "{addrs:?}");
            assert_ne!(addrs[0].port(), 0);
            for i in 0..200u32 {
                echo_once(addrs[0], &i.to_be_bytes());
            }
            assert_eq!(st2.lock().unwrap().len(), 200);
            s2.stop();
            addrs[0]
        });
        let o = PerCoreOptions { stop: Some(stop), ..opts(backend, 2) };
        let st = seen.clone();
        let accepted = bounded(move || {
            ringloop::serve_per_core(o, move || Echo { t: None, seen: st.clone() }, "127.0.0.1", 0)
        })
        .unwrap();
        let addr = clients.join().unwrap();
        assert_eq!(accepted.len(), 2, "{accepted:?}");
        assert_eq!(accepted.iter().sum::<u64>(), 200, "{accepted:?}");
        assert!(accepted.iter().all(|&n| n > 0), "one loop accepted nothing: {accepted:?}");
        let seen = seen.lock().unwrap();
        for want in ["ringloop-core-0", "ringloop-core-1"] {
            let n = seen.iter().filter(|(t, _, _)| t == want).count() as u64;
            let i: usize = want.rsplit('-').next().unwrap().parse().unwrap();
            assert_eq!(n, accepted[i], "{want}'s connections vs its count");
        }
        for (_, b, s) in seen.iter() {
            assert_eq!(*b, backend);
            assert_stats_show(s, backend);
        }
        // Stopped: nothing listens on the port any more.
        assert!(TcpStream::connect(addr).is_err(), "still listening after the stop");
    }
);

per_core_both!(
    /// The streams form: each connection is a task on the loop that
    /// accepted it; a stop handle ends the run after the clients.
    fn the_streams_form_serves_until_stopped(backend) {
        let stop = PerCoreStop::new();
        let s2 = stop.clone();
        let clients = std::thread::spawn(move || {
            let addrs = s2.wait_serving(LIMIT).expect("every loop serving");
            for i in 0..40u32 {
                echo_once(addrs[0], format!("line {i}\n").as_bytes());
            }
            s2.stop();
        });
        let o = PerCoreOptions { stop: Some(stop), ..opts(backend, 2) };
        let accepted = bounded(move || ringloop::serve_per_core_streams(
            o,
            move |r, w| async move {
                assert_loop_used(backend);
                while let Ok(line) = r.readline().await {
                    if line.is_empty() || w.write(line).is_err() || w.drain().await.is_err() {
                        break;
                    }
                }
                w.close();
            },
            "127.0.0.1",
            0,
        ))
        .unwrap();
        clients.join().unwrap();
        assert_eq!(accepted.iter().sum::<u64>(), 40, "{accepted:?}");
    }
);

per_core_both!(
    /// Pinned: each loop's thread runs on its CPU only (seen from inside
    /// the loop with sched_getaffinity and sched_getcpu), and the CPUs are
    /// the allowed ones, in order.
    fn pinning_is_honoured(backend) {
        let allowed = ringloop::allowed_cpus().unwrap();
        let o = PerCoreOptions { pin: true, ..opts(backend, 0) };
        let out = run_pc(o, move |ctx| async move {
            ringloop::sleep(Duration::from_millis(1)).await?;
            assert_loop_used(backend);
            // SAFETY: sched_getcpu takes no arguments and only reads.
            let now = unsafe { libc::sched_getcpu() };
            Ok((ctx.index(), ctx.cpu(), ringloop::allowed_cpus()?, now as usize))
        })
        .unwrap();
        assert_eq!(out.len(), allowed.len());
        for (i, (index, cpu, mask, now)) in out.into_iter().enumerate() {
            assert_eq!(index, i);
            assert_eq!(cpu, Some(allowed[i]), "loop {i}");
            assert_eq!(mask, [allowed[i]], "loop {i}'s affinity");
            assert_eq!(now, allowed[i], "loop {i} ran elsewhere");
        }
    }
);

/// A CPU this process may not use is a clear error, before any thread.
#[test]
fn a_cpu_outside_the_allowed_set_is_an_error() {
    let allowed = ringloop::allowed_cpus().unwrap();
    let bad = allowed.iter().max().unwrap() + 1;
    let o = PerCoreOptions {
        pin: true,
        cpus: vec![bad],
        ..Default::default()
    };
    let r = run_pc(o, |_| async { Ok(()) });
    match r {
        Err(Error::InvalidArgument(m)) => {
            assert!(m.contains(&format!("CPU {bad}")), "{m}");
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// Set when dropped: a cancelled main task's cleanup ran; it notes the
/// loop's counters then (the loop is running its cancellation).
struct Cleanup(Arc<Mutex<Option<DriverStats>>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let lp = get_running_loop().expect("dropped on its loop");
        *self.0.lock().unwrap() = Some(lp.driver_stats());
    }
}

/// Loop 1 waits (holding a [`Cleanup`]) until it is stopped; loop 0, once
/// loop 1 has started, does `fail`. Returns the run's result and loop 1's
/// counters at its cleanup (None if the cleanup never ran); fails if loop
/// 1 was never stopped.
fn one_fails(
    backend: Backend,
    fail: fn() -> ringloop::Result<u32>,
) -> (ringloop::Result<Vec<u32>>, Option<DriverStats>) {
    let started = Arc::new(AtomicBool::new(false));
    let cleaned = Arc::new(Mutex::new(None));
    let through = Arc::new(AtomicBool::new(false));
    let (st, cl, th) = (started.clone(), cleaned.clone(), through.clone());
    let r = run_pc(opts(backend, 2), move |ctx| {
        let (st, cl, th) = (st.clone(), cl.clone(), th.clone());
        async move {
            if ctx.index() == 0 {
                while !st.load(Ordering::SeqCst) {
                    ringloop::sleep(Duration::from_millis(1)).await?;
                }
                fail()
            } else {
                let _c = Cleanup(cl);
                ringloop::sleep(Duration::from_millis(1)).await?;
                st.store(true, Ordering::SeqCst);
                ringloop::sleep(UNSTOPPED).await?;
                th.store(true, Ordering::SeqCst);
                Ok(1)
            }
        }
    });
    assert!(!through.load(Ordering::SeqCst), "loop 1 was never stopped");
    let stats = *cleaned.lock().unwrap();
    (r, stats)
}

per_core_both!(
    /// A panic in one main task stops the others (cancelled: their cleanup
    /// runs) and is what the run returns.
    fn a_panic_in_one_loop_stops_the_others(backend) {
        let (r, cleanup) = one_fails(backend, || panic!("boom on loop 0"));
        match r {
            Err(Error::Panic(m)) => assert!(m.contains("boom on loop 0"), "{m}"),
            other => panic!("expected the panic, got {other:?}"),
        }
        let s = cleanup.expect("loop 1's main task was not cancelled");
        assert_stats_show(&s, backend);
    }
);

per_core_both!(
    /// An error returned by one main task stops the others likewise.
    fn an_error_in_one_loop_stops_the_others(backend) {
        let (r, cleanup) =
            one_fails(backend, || Err(Error::InvalidArgument("bad input on loop 0".into())));
        match r {
            Err(Error::InvalidArgument(m)) => assert_eq!(m, "bad input on loop 0"),
            other => panic!("expected the error, got {other:?}"),
        }
        let s = cleanup.expect("loop 1's main task was not cancelled");
        assert_stats_show(&s, backend);
    }
);

per_core_both!(
    /// A main task that awaits `ctx.stopped()` is not cancelled: a sibling's
    /// error resolves it and it finishes by itself (its result is dropped,
    /// the first error is returned).
    fn a_graceful_main_task_sees_the_stop(backend) {
        let finished = Arc::new(AtomicUsize::new(0));
        let f2 = finished.clone();
        let r = run_pc(opts(backend, 2), move |ctx| {
            let f2 = f2.clone();
            let stopped = ctx.stopped();
            async move {
                if ctx.index() == 0 {
                    ringloop::sleep(Duration::from_millis(5)).await?;
                    return Err(Error::InvalidArgument("stop, please".into()));
                }
                stopped?.await?;
                assert_loop_used(backend);
                f2.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        });
        assert!(matches!(r, Err(Error::InvalidArgument(ref m)) if m == "stop, please"), "{r:?}");
        assert_eq!(finished.load(Ordering::SeqCst), 1);
    }
);

thread_local! {
    /// A loop thread's pending question to its next sibling (the future
    /// is `!Send`: it stays on its loop; only a name travels).
    static WAITING: std::cell::RefCell<Option<LoopFuture<String>>> =
        const { std::cell::RefCell::new(None) };
}

per_core_both!(
    /// Each main task gets its index and every loop's handle; a sibling's
    /// handle reaches that loop's thread.
    fn siblings_reach_each_other_through_their_handles(backend) {
        let answered = Arc::new(AtomicUsize::new(0));
        let a2 = answered.clone();
        let out = run_pc(opts(backend, 3), move |ctx| {
            let answered = a2.clone();
            async move {
                assert_eq!(ctx.count(), 3);
                assert_eq!(ctx.siblings().count(), 2);
                assert!(ctx.siblings().all(|(i, _)| i != ctx.index()));
                // Ask the next loop which thread it runs on; the answer
                // comes back through this loop's own handle.
                let lp = get_running_loop()?;
                let answer = lp.create_future::<String>();
                WAITING.set(Some(answer.clone()));
                let me = ctx.handles()[ctx.index()].clone();
                let next = &ctx.handles()[(ctx.index() + 1) % ctx.count()];
                next.call_soon_threadsafe(move || {
                    let name = std::thread::current().name().unwrap_or("?").to_owned();
                    let _ = me.call_soon_threadsafe(move || {
                        if let Some(f) = WAITING.take() {
                            let _ = f.set_result(name);
                        }
                    });
                })?;
                let name = ringloop::wait_for(answer, LIMIT).await??;
                // Every loop stays up until all have their answer.
                answered.fetch_add(1, Ordering::SeqCst);
                while answered.load(Ordering::SeqCst) < 3 {
                    ringloop::sleep(Duration::from_millis(1)).await?;
                }
                assert_loop_used(backend);
                Ok(name)
            }
        })
        .unwrap();
        assert_eq!(out, ["ringloop-core-1", "ringloop-core-2", "ringloop-core-0"]);
    }
);

per_core_both!(
    /// A stop handle from another thread cancels every main task; a stop
    /// handle serves one run only.
    fn a_stop_handle_stops_every_loop(backend) {
        let stop = PerCoreStop::new();
        let started = Arc::new(AtomicUsize::new(0));
        let (s2, st2) = (stop.clone(), started.clone());
        let stopper = std::thread::spawn(move || {
            while st2.load(Ordering::SeqCst) < 2 {
                std::thread::sleep(Duration::from_millis(1));
            }
            s2.stop();
        });
        let o = PerCoreOptions { stop: Some(stop.clone()), ..opts(backend, 2) };
        let st = started.clone();
        let r = run_pc(o, move |_ctx| {
            let st = st.clone();
            async move {
                ringloop::sleep(Duration::from_millis(1)).await?;
                assert_loop_used(backend);
                st.fetch_add(1, Ordering::SeqCst);
                ringloop::sleep(UNSTOPPED).await?;
                Ok(())
            }
        });
        stopper.join().unwrap();
        assert!(matches!(r, Err(Error::Cancelled(_))), "{r:?}");
        assert!(stop.is_stopped());
        let again = PerCoreOptions { stop: Some(stop), ..opts(backend, 2) };
        let r = run_pc(again, |_| async { Ok(()) });
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    }
);

/// A port that cannot be shared is the call's error, before any loop
/// starts (so on no backend in particular: the bind happens first).
#[test]
fn a_port_taken_without_reuse_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let o = PerCoreOptions {
        threads: 2,
        sigint: SigintHandling::Never,
        ..Default::default()
    };
    let r = ringloop::serve_per_core(
        o,
        || Echo {
            t: None,
            seen: Default::default(),
        },
        "127.0.0.1",
        port,
    );
    match r {
        Err(Error::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
            assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
        }
        other => panic!("expected EADDRINUSE, got {other:?}"),
    }
}

/// A panic in `make_main` itself (not in the future it returns) fails the
/// run the same way. (Loop 0 may be stopped before it does any I/O, so its
/// counters prove nothing; the backend is forced through
/// `PerCoreOptions::backend`, which never falls back: a proactor run where
/// io_uring is unavailable fails with that error, not with the panic.)
#[test]
fn a_panic_in_make_main_is_reported() {
    for backend in [Backend::Proactor, Backend::Selector] {
        let through = Arc::new(AtomicBool::new(false));
        let th = through.clone();
        let r = run_pc(opts(backend, 2), move |ctx| {
            if ctx.index() == 1 {
                panic!("make_main failed on loop 1");
            }
            let th = th.clone();
            async move {
                ringloop::sleep(UNSTOPPED).await?;
                th.store(true, Ordering::SeqCst);
                Ok(())
            }
        });
        assert!(
            !through.load(Ordering::SeqCst),
            "{backend}: loop 0 was never stopped"
        );
        assert!(
            matches!(&r, Err(Error::Panic(m)) if m.contains("make_main failed on loop 1")),
            "{backend}: {r:?}"
        );
    }
}

/// Called from a running loop, a per-core run is refused (before any loop
/// of its own is made: the check does not depend on the backend).
#[test]
fn a_per_core_run_inside_a_loop_is_refused() {
    let r = ringloop::run(async {
        ringloop::run_per_core(PerCoreOptions::default(), |_| async { Ok(()) })
    })
    .unwrap();
    assert!(matches!(r, Err(Error::InvalidState(_))), "{r:?}");
}

/// `ctx.stopped()` belongs to a run's loop thread.
#[test]
fn stopped_outside_a_run_is_an_error() {
    let out = run_pc(
        PerCoreOptions {
            threads: 1,
            sigint: SigintHandling::Never,
            ..Default::default()
        },
        |ctx| async move {
            let inner = std::thread::spawn(move || ctx.stopped().map(|_| ()).unwrap_err())
                .join()
                .unwrap();
            Ok(inner.to_string())
        },
    );
    // (A context moved to another thread is not on its loop's thread.)
    let m = out.unwrap_or_else(|e| vec![format!("{e}")]);
    assert!(m[0].contains("per-core run"), "{m:?}");
}

// ------------------------------------------------------------------ Ctrl-C

const CTRL_C: common::child::ChildTest = common::child::ChildTest::new("ctrl_c_stops_every_loop");

fn raise_sigint() {
    // SAFETY: signals this process, whose per-core loops handle SIGINT.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGINT) }, 0);
}

/// The child side: a served port with a client connected, then SIGINT to
/// the whole process: every loop stops cleanly (the client is closed, the
/// call returns Ok with the counts). Then a run_per_core, which Ctrl-C
/// ends with `Interrupted` after cancelling every main task.
fn ctrl_c_child(case: &str) {
    let backend = match case {
        "proactor" => Backend::Proactor,
        _ => Backend::Selector,
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = PerCoreStop::new();
    let s2 = stop.clone();
    let client = std::thread::spawn(move || {
        let addrs = s2.wait_serving(LIMIT).expect("every loop serving");
        echo_once(addrs[0], b"before");
        let mut c = TcpStream::connect(addrs[0]).unwrap();
        c.set_read_timeout(Some(LIMIT)).unwrap();
        c.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        c.read_exact(&mut one).unwrap();
        raise_sigint();
        // The server closes this client on its way out: EOF, not a timeout.
        let mut rest = Vec::new();
        c.read_to_end(&mut rest)
            .expect("EOF from the stopped server");
    });
    let o = PerCoreOptions {
        stop: Some(stop),
        sigint: SigintHandling::Always,
        ..opts(backend, 2)
    };
    let st = seen.clone();
    let accepted = ringloop::serve_per_core(
        o,
        move || Echo {
            t: None,
            seen: st.clone(),
        },
        "127.0.0.1",
        0,
    )
    .expect("Ctrl-C stops serve_per_core cleanly");
    client.join().unwrap();
    assert_eq!(accepted.iter().sum::<u64>(), 2, "{accepted:?}");
    for (_, b, s) in seen.lock().unwrap().iter() {
        assert_eq!(*b, backend);
        assert_stats_show(s, backend);
    }

    let cancelled = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let (c2, st2) = (cancelled.clone(), started.clone());
    let o = PerCoreOptions {
        sigint: SigintHandling::Always,
        ..opts(backend, 2)
    };
    let raiser = std::thread::spawn(move || {
        while st2.load(Ordering::SeqCst) < 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        raise_sigint();
    });
    let (c3, st3) = (cancelled.clone(), started.clone());
    let r = run_pc(o, move |_ctx| {
        let (c3, st3) = (c3.clone(), st3.clone());
        async move {
            struct Count(Arc<AtomicUsize>);
            impl Drop for Count {
                fn drop(&mut self) {
                    self.0.fetch_add(1, Ordering::SeqCst);
                }
            }
            let _c = Count(c3);
            ringloop::sleep(Duration::from_millis(1)).await?;
            assert_loop_used(backend);
            st3.fetch_add(1, Ordering::SeqCst);
            ringloop::sleep(UNSTOPPED).await?;
            Ok(())
        }
    });
    raiser.join().unwrap();
    assert!(matches!(r, Err(Error::Interrupted)), "{r:?}");
    assert_eq!(
        c2.load(Ordering::SeqCst),
        2,
        "every main task was cancelled"
    );
    // The hub let SIGINT go with the last loop: its default action is back.
    // SAFETY: a zeroed sigaction is valid output storage; a null action queries.
    let dfl = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(libc::SIGINT, std::ptr::null(), &mut old), 0);
        old.sa_sigaction
    };
    assert_eq!(dfl, libc::SIG_DFL);
    println!("CTRL-C OK {backend}");
}

/// Ctrl-C (a SIGINT to the process) reaches every loop through the signal
/// hub and stops them cleanly; in a child process per backend, so the
/// signal disturbs no other test.
#[test]
fn ctrl_c_stops_every_loop() {
    if CTRL_C.child_side(ctrl_c_child) {
        return;
    }
    for backend in ["proactor", "selector"] {
        let out = CTRL_C.run(backend, &[]);
        assert!(out.contains(&format!("CTRL-C OK {backend}")), "{out}");
    }
}
