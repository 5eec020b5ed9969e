//! Executors (run_in_executor, to_thread, shutdown, getaddrinfo),
//! run_coroutine_threadsafe, and Runner with asyncio's Ctrl-C handling, on
//! both backends.

mod common;

use std::cell::Cell;
use std::io::{BufRead, BufReader, Read};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::child::{ChildTest, wait_bounded};
use ringloop::prelude::*;
use ringloop::{Runner, SigintHandling, ThreadPool, to_thread};

const LIMIT: Duration = Duration::from_secs(10);

both_backends! {
    fn run_in_executor_runs_off_the_loop_thread(lp) {
        let here = std::thread::current().id();
        let r = common::run_bounded(lp, LIMIT, async move {
            let lp = get_running_loop().unwrap();
            let there = lp.run_in_executor(|| std::thread::current().id()).await.unwrap();
            assert_ne!(there, here);
            let v = to_thread(|| 2 + 2).await.unwrap();
            let p = lp.run_in_executor(|| -> u8 { panic!("worker boom") }).await;
            (v, p)
        });
        assert_eq!(r.0, 4);
        assert!(matches!(r.1, Err(Error::Panic(m)) if m.contains("worker boom")));
    }
}

both_backends! {
    fn a_bounded_pool_runs_at_most_its_size_at_once(lp) {
        let pool = ThreadPool::new(2).unwrap();
        assert!(ThreadPool::new(0).is_err());
        lp.set_default_executor(pool.clone());
        // Each job counts itself in while it runs and records the most
        // that ran at once (a count, not a duration).
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (r, m) = (running.clone(), most.clone());
        common::run_bounded(lp, LIMIT, async move {
            let lp = get_running_loop().unwrap();
            let futs = (0..6).map(|_| {
                let (lp, r, m) = (lp.clone(), r.clone(), m.clone());
                async move {
                    lp.run_in_executor(move || {
                        let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                        m.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(30));
                        r.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                }
            });
            ringloop::gather(futs).await.unwrap();
        });
        assert!(most.load(Ordering::SeqCst) <= 2, "{} jobs ran at once on 2 threads", most.load(Ordering::SeqCst));
        assert_eq!(running.load(Ordering::SeqCst), 0);
        assert_eq!(pool.threads(), 2);
    }
}

both_backends! {
    fn shutdown_default_executor_waits_then_refuses_work(lp) {
        let r = common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            lp.run_in_executor(|| ()).await.unwrap();
            lp.shutdown_default_executor(None).await.unwrap();
            lp.run_in_executor(|| ()).await
        });
        assert!(matches!(r, Err(Error::InvalidState(_))));
    }
}

both_backends! {
    fn shutdown_default_executor_timeout_does_not_wait_forever(lp) {
        // A job that outlives the shutdown timeout: it runs until the test
        // lets it go, which is only after the shutdown returned. Had the
        // shutdown waited for it, it would never return (the bound fails
        // the test).
        let (release, held) = std::sync::mpsc::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        common::run_bounded(lp, LIMIT, async move {
            let lp = get_running_loop().unwrap();
            let l2 = lp.clone();
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let job = lp.create_task(async move {
                l2.run_in_executor(move || {
                    tx.send(()).unwrap();
                    let _ = held.recv_timeout(Duration::from_secs(30));
                    f.store(true, Ordering::SeqCst);
                })
                .await
            });
            while rx.try_recv().is_err() {
                ringloop::sleep(Duration::from_millis(1)).await.unwrap();
            }
            lp.shutdown_default_executor(Some(Duration::from_millis(30))).await.unwrap();
            drop(job); // detached: it ends after the release below
        });
        assert!(!finished.load(Ordering::SeqCst), "the shutdown waited for the job");
        release.send(()).unwrap();
    }
}

both_backends! {
    fn getaddrinfo_and_getnameinfo_off_loop(lp) {
        let (addrs, names) = common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let addrs = lp.getaddrinfo("localhost", 8080).await.unwrap();
            let names = lp
                .getnameinfo("127.0.0.1:8080".parse().unwrap(), libc::NI_NUMERICHOST | libc::NI_NUMERICSERV)
                .await
                .unwrap();
            let bad = lp.getaddrinfo("no-such-host.invalid", 1).await;
            assert!(matches!(bad, Err(Error::Io(_))));
            (addrs, names)
        });
        assert!(addrs.iter().any(|a| a.ip().is_loopback() && a.port() == 8080), "{addrs:?}");
        assert_eq!(names, ("127.0.0.1".to_string(), "8080".to_string()));
    }
}

both_backends! {
    fn getaddrinfo_of_numeric_hosts_needs_no_thread(lp) {
        let pool = ThreadPool::new(2).unwrap();
        lp.set_default_executor(pool.clone());
        let addrs = common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let mut v = lp.getaddrinfo("127.0.0.1", 80).await.unwrap();
            v.extend(lp.getaddrinfo("::1", 443).await.unwrap());
            v
        });
        assert_eq!(addrs, vec!["127.0.0.1:80".parse().unwrap(), "[::1]:443".parse().unwrap()]);
        assert_eq!(pool.threads(), 0, "a numeric host went through a worker thread");
    }
}

both_backends! {
    fn run_coroutine_threadsafe_result_cancel_and_timeout(lp) {
        let h = lp.handle();
        let dropped = Arc::new(AtomicBool::new(false));
        let d = dropped.clone();
        let th = std::thread::spawn(move || {
            let f = h.run_coroutine_threadsafe(|| async { ringloop::sleep(Duration::from_millis(5)).await.map(|_| 42) }).unwrap();
            let v = f.result(Some(Duration::from_secs(5))).unwrap().unwrap();
            assert!(f.done());
            assert!(!f.cancel());
            // Cancel from this thread: the future is dropped on the loop.
            let g = h.run_coroutine_threadsafe(move || async move {
                struct Flag(Arc<AtomicBool>);
                impl Drop for Flag { fn drop(&mut self) { self.0.store(true, Ordering::SeqCst); } }
                let _f = Flag(d);
                ringloop::sleep(Duration::from_secs(60)).await
            }).unwrap();
            assert!(matches!(g.result(Some(Duration::from_millis(30))), Err(Error::Timeout)));
            assert!(g.cancel());
            assert!(matches!(g.result(Some(Duration::from_secs(5))), Err(Error::Cancelled(_))));
            h.call_soon_threadsafe(|| get_running_loop().unwrap().stop()).unwrap();
            (v, h)
        });
        let l2 = lp.clone();
        let watchdog = lp.call_later(LIMIT, move || l2.stop()).unwrap();
        lp.run_forever().unwrap();
        watchdog.cancel();
        let (v, h) = th.join().unwrap();
        assert_eq!(v, 42);
        assert!(dropped.load(Ordering::SeqCst));
        lp.close().unwrap();
        assert!(matches!(h.run_coroutine_threadsafe(|| async { 1 }), Err(Error::Closed(_))));
    }
}

fn backends() -> [Backend; 2] {
    [Backend::Proactor, Backend::Selector]
}

/// Runner on each backend: several runs, leftover tasks cancelled at close.
#[test]
fn runner_runs_several_futures_and_cleans_up() {
    for backend in backends() {
        let mut r = Runner::with_backend(backend).debug(true);
        let lp = r.get_loop().unwrap();
        assert_eq!(lp.backend(), backend);
        assert!(lp.get_debug());
        assert_eq!(r.run(async { 1 }).unwrap(), 1);
        let cleaned = Rc::new(Cell::new(false));
        let c = cleaned.clone();
        r.run(async move {
            let lp = get_running_loop().unwrap();
            lp.create_task(async move {
                struct Flag(Rc<Cell<bool>>);
                impl Drop for Flag {
                    fn drop(&mut self) {
                        self.0.set(true);
                    }
                }
                let _f = Flag(c);
                ringloop::sleep(Duration::from_secs(60)).await
            });
            lp.run_in_executor(|| ()).await.unwrap();
        })
        .unwrap();
        assert_eq!(r.run(async { 3 }).unwrap(), 3);
        common::assert_backend_used(&lp, backend);
        r.close().unwrap();
        assert!(
            cleaned.get(),
            "leftover task cancelled at close ({backend})"
        );
        assert!(lp.is_closed());
        assert!(matches!(r.get_loop(), Err(Error::Closed(_))));
        assert!(matches!(r.run(async {}), Err(Error::Closed(_))));
        r.close().unwrap();
    }
}

/// A Runner (and `run`) inside a running loop is refused, with the outer
/// loop on each backend. The inner ones take the default backend: they
/// are refused before they make a loop, so which one does not matter.
#[test]
fn runner_refuses_to_nest() {
    for backend in backends() {
        let mut outer = Runner::with_backend(backend);
        let out = outer
            .run(async { Runner::new().run(async { 1 }).err() })
            .unwrap();
        assert!(
            matches!(out, Some(Error::InvalidState(_))),
            "{backend}: {out:?}"
        );
        let out = outer.run(async { ringloop::run(async {}).err() }).unwrap();
        assert!(
            matches!(out, Some(Error::InvalidState(_))),
            "{backend}: {out:?}"
        );
        assert_eq!(outer.get_loop().unwrap().backend(), backend);
        outer.close().unwrap();
    }
}

/// The child side of the Ctrl-C tests: a Runner on `backend` (the case
/// names it) whose main task sleeps a minute; with `hang`, the task's
/// cleanup hangs for 20 s (`CLEANUP-DONE` only if it was let finish).
fn sigint_child(backend: &str, hang: bool) {
    let backend = match backend {
        "proactor" => Backend::Proactor,
        "selector" => Backend::Selector,
        other => panic!("unknown backend {other}"),
    };
    let mut r = Runner::with_backend(backend).sigint(SigintHandling::Always);
    let out = r.run(async move {
        // The SIGINT handler is installed (and its eventfd watched) before
        // the main task first runs: the parent may signal from here on.
        say("READY");
        struct SlowDrop(bool);
        impl Drop for SlowDrop {
            fn drop(&mut self) {
                if self.0 {
                    // A cleanup that hangs: only a second Ctrl-C gets out.
                    say("CLEANUP-HANGS");
                    std::thread::sleep(Duration::from_secs(20));
                    say("CLEANUP-DONE");
                }
            }
        }
        let _g = SlowDrop(hang);
        ringloop::sleep(Duration::from_secs(60)).await
    });
    match out {
        Err(Error::Interrupted) => say("CHILD-INTERRUPTED"),
        other => say(&format!("CHILD-UNEXPECTED {other:?}")),
    }
    r.close().unwrap();
}

/// A line on stdout, flushed (the parent reads it as it comes).
fn say(line: &str) {
    use std::io::Write;
    println!("{line}");
    std::io::stdout().flush().unwrap();
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Proactor => "proactor",
        Backend::Selector => "selector",
    }
}

/// Reads the child's lines until one contains `want`; all lines seen.
fn wait_line(r: &mut BufReader<std::process::ChildStdout>, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut line = String::new();
    while r.read_line(&mut line).unwrap_or(0) > 0 {
        seen.push(line.trim().to_string());
        if line.contains(want) {
            return seen;
        }
        line.clear();
    }
    panic!("child never printed {want}: {seen:?}");
}

/// The rest of the child's output, to its end.
fn rest(r: &mut BufReader<std::process::ChildStdout>) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

fn sigint(child: &std::process::Child) {
    // SAFETY: signals our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
}

const FIRST_CTRL_C: ChildTest = ChildTest::new("first_ctrl_c_cancels_the_main_task");

#[test]
fn first_ctrl_c_cancels_the_main_task() {
    if FIRST_CTRL_C.child_side(|backend| sigint_child(backend, false)) {
        return;
    }
    for backend in backends() {
        let mut child = FIRST_CTRL_C.spawn(backend_name(backend), &[]);
        let mut out = BufReader::new(child.stdout.take().unwrap());
        wait_line(&mut out, "READY");
        sigint(&child);
        let seen = wait_line(&mut out, "CHILD-");
        let st = wait_bounded(&mut child, LIMIT);
        assert!(
            seen.iter().any(|l| l == "CHILD-INTERRUPTED"),
            "{backend}: {seen:?}"
        );
        assert!(st.success(), "{backend}: {st:?}");
        let tail = rest(&mut out);
        assert!(
            tail.contains("CHILD-OK"),
            "{backend}: the child did not finish: {tail}"
        );
    }
}

const SECOND_CTRL_C: ChildTest = ChildTest::new("second_ctrl_c_interrupts_at_once");

#[test]
fn second_ctrl_c_interrupts_at_once() {
    use std::os::unix::process::ExitStatusExt;
    if SECOND_CTRL_C.child_side(|backend| sigint_child(backend, true)) {
        return;
    }
    for backend in backends() {
        let mut child = SECOND_CTRL_C.spawn(backend_name(backend), &[]);
        let mut out = BufReader::new(child.stdout.take().unwrap());
        wait_line(&mut out, "READY");
        sigint(&child);
        // The first Ctrl-C cancelled the main task: its cleanup runs, and
        // hangs. The second one ends the process there, by SIGINT.
        wait_line(&mut out, "CLEANUP-HANGS");
        sigint(&child);
        let st = wait_bounded(&mut child, LIMIT);
        assert_eq!(st.signal(), Some(libc::SIGINT), "{backend}: {st:?}");
        let tail = rest(&mut out);
        assert!(
            !tail.contains("CLEANUP-DONE") && !tail.contains("CHILD-"),
            "{backend}: the hung cleanup was waited for: {tail}"
        );
    }
}
