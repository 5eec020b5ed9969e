//! `add_signal_handler` / `remove_signal_handler` on both backends.
//!
//! Signals are process-wide and the tests of this binary run at once, each
//! on both backends: every test uses real-time signals of its own, a
//! different one per backend ([`sig`]), so no test sees another's signals.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ringloop::prelude::*;

const LIMIT: Duration = Duration::from_secs(10);

/// The real-time signal for test number `k` on `lp`'s backend.
fn sig(lp: &EventLoop, k: i32) -> i32 {
    let s = libc::SIGRTMIN() + 2 * k + i32::from(lp.backend() == Backend::Selector);
    assert!(s <= libc::SIGRTMAX(), "not enough real-time signals");
    s
}

fn kill_me(sig: i32) {
    // SAFETY: signals this process, which handles `sig` (or ignores it).
    assert_eq!(unsafe { libc::kill(libc::getpid(), sig) }, 0);
}

/// The handler function installed for `sig` now (`SIG_DFL` is 0).
fn disposition(sig: i32) -> libc::sighandler_t {
    // SAFETY: zeroed sigaction is valid output storage; a null action queries.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(sig, std::ptr::null(), &mut old), 0);
        old.sa_sigaction
    }
}

/// Calls of [`previous_handler`], per signal.
static PREVIOUS: [AtomicU32; 65] = [const { AtomicU32::new(0) }; 65];

extern "C" fn previous_handler(sig: libc::c_int) {
    PREVIOUS[sig as usize].fetch_add(1, Ordering::SeqCst);
}

fn install_previous(sig: i32) {
    // SAFETY: a zeroed sigaction with a plain, async-signal-safe handler.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = previous_handler as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
    }
}

fn set_default(sig: i32) {
    // SAFETY: a zeroed sigaction is SIG_DFL.
    unsafe {
        let sa: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
    }
}

/// A handler that counts its calls and notes the thread it ran on.
fn counting(lp: &EventLoop, sig: i32) -> (Rc<Cell<u32>>, Rc<RefCell<Vec<std::thread::ThreadId>>>) {
    let calls = Rc::new(Cell::new(0));
    let threads = Rc::new(RefCell::new(Vec::new()));
    let (c, t) = (calls.clone(), threads.clone());
    lp.add_signal_handler(sig, move || {
        c.set(c.get() + 1);
        t.borrow_mut().push(std::thread::current().id());
    })
    .unwrap();
    (calls, threads)
}

both_backends!(
    serial fn a_signal_reaches_its_handler_on_the_loop_thread(lp) {
        let s = sig(lp, 0);
        let (calls, threads) = counting(lp, s);
        // Nothing before the signal.
        common::turns(lp, 3);
        assert_eq!(calls.get(), 0);
        kill_me(s);
        assert!(common::run_until(lp, LIMIT, || calls.get() == 1), "no call");
        common::turns(lp, 3);
        assert_eq!(calls.get(), 1, "one signal, one call");
        assert_eq!(*threads.borrow(), vec![std::thread::current().id()]);
        // An ordinary loop callback: it may use the loop.
        let l2 = lp.clone();
        let stopped = Rc::new(Cell::new(false));
        let st = stopped.clone();
        lp.add_signal_handler(s, move || {
            let st = st.clone();
            l2.call_soon(move || st.set(true)).unwrap();
            l2.stop();
        })
        .unwrap();
        kill_me(s);
        assert!(common::run_until(lp, LIMIT, || stopped.get()));
        // The first handler was replaced: one handler per signal per loop.
        assert_eq!(calls.get(), 1);
        assert!(lp.remove_signal_handler(s));
        assert!(!lp.remove_signal_handler(s));
        set_default(s);
    }
);

both_backends!(
    serial fn bursts_are_coalesced_but_never_lost(lp) {
        let s = sig(lp, 1);
        // SIG_IGN first, so a signal straggling after the test is harmless.
        // SAFETY: SIG_IGN is a valid disposition.
        unsafe { libc::signal(s, libc::SIG_IGN) };
        let (calls, _) = counting(lp, s);
        for round in 1..=20u32 {
            let before = calls.get();
            for _ in 0..round {
                kill_me(s);
            }
            assert!(
                common::run_until(lp, LIMIT, || calls.get() > before),
                "round {round}: the burst was lost"
            );
            common::turns(lp, 2);
            let got = calls.get() - before;
            assert!(
                (1..=round).contains(&got),
                "round {round}: {got} calls for a burst of {round}"
            );
        }
        // A signal that comes while the handler runs gets a call of its own.
        let l = Rc::new(Cell::new(0u32));
        let l2 = l.clone();
        lp.add_signal_handler(s, move || {
            l2.set(l2.get() + 1);
            if l2.get() <= 5 {
                kill_me(s);
            }
        })
        .unwrap();
        kill_me(s);
        assert!(common::run_until(lp, LIMIT, || l.get() == 6), "calls: {}", l.get());
        common::turns(lp, 5);
        assert_eq!(l.get(), 6, "a call for each signal sent while a call ran");
        assert!(lp.remove_signal_handler(s));
        // The disposition from before (SIG_IGN) is back.
        assert_eq!(disposition(s), libc::SIG_IGN);
    }
);

both_backends!(
    serial fn a_removed_handler_restores_the_previous_one(lp) {
        let s = sig(lp, 2);
        install_previous(s);
        let prev = previous_handler as *const () as libc::sighandler_t;
        let (calls, _) = counting(lp, s);
        assert_ne!(disposition(s), prev, "the hub's handler is installed");
        kill_me(s);
        assert!(common::run_until(lp, LIMIT, || calls.get() == 1));
        // The previous handler is chained to.
        assert_eq!(PREVIOUS[s as usize].load(Ordering::SeqCst), 1);
        assert!(lp.remove_signal_handler(s));
        assert_eq!(disposition(s), prev, "the previous handler is back");
        kill_me(s);
        assert!(common::run_until(lp, LIMIT, || {
            PREVIOUS[s as usize].load(Ordering::SeqCst) == 2
        }));
        common::turns(lp, 3);
        assert_eq!(calls.get(), 1, "the removed handler is not called");
        // A signal whose disposition was the default gets the default back.
        let d = sig(lp, 3);
        set_default(d);
        let _ = counting(lp, d);
        assert_ne!(disposition(d), libc::SIG_DFL);
        assert!(lp.remove_signal_handler(d));
        assert_eq!(disposition(d), libc::SIG_DFL);
        set_default(s);
    }
);

both_backends!(
    serial fn invalid_signals_are_invalid_arguments(lp) {
        for bad in [0, -1, 65, 1000, libc::SIGKILL, libc::SIGSTOP, 32, 33, libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL] {
            let r = lp.add_signal_handler(bad, || {});
            assert!(
                matches!(r, Err(Error::InvalidArgument(_))),
                "signal {bad}: {r:?}"
            );
            assert!(!lp.remove_signal_handler(bad));
        }
        // No handler was set: removing a valid one says so.
        assert!(!lp.remove_signal_handler(sig(lp, 4)));
        // The loop is fine.
        let ran = Rc::new(Cell::new(false));
        let r2 = ran.clone();
        lp.call_soon(move || r2.set(true)).unwrap();
        common::turns(lp, 1);
        assert!(ran.get());
    }
);

both_backends!(
    serial fn two_loops_on_two_threads_both_get_the_signal(lp) {
        let s = sig(lp, 5);
        // SAFETY: SIG_IGN is a valid disposition.
        unsafe { libc::signal(s, libc::SIG_IGN) };
        let backend = lp.backend();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let other = std::thread::spawn(move || {
            let lp2 = common::new_loop(backend);
            let got = Rc::new(Cell::new(0u32));
            let g = got.clone();
            lp2.add_signal_handler(s, move || g.set(g.get() + 1)).unwrap();
            ready_tx.send(()).unwrap();
            let ok = common::run_until(&lp2, LIMIT, || got.get() >= 1);
            common::assert_backend_used(&lp2, backend);
            lp2.close().unwrap();
            done_tx.send(ok).unwrap();
        });
        let (calls, threads) = counting(lp, s);
        ready_rx.recv().unwrap();
        kill_me(s);
        assert!(common::run_until(lp, LIMIT, || calls.get() >= 1));
        assert!(done_rx.recv().unwrap(), "the other thread's loop got no call");
        other.join().unwrap();
        assert!(threads.borrow().iter().all(|t| *t == std::thread::current().id()));
        // The other loop's close left this loop's handler in place.
        let before = calls.get();
        kill_me(s);
        assert!(common::run_until(lp, LIMIT, || calls.get() > before));
        assert!(lp.remove_signal_handler(s));
        assert_eq!(disposition(s), libc::SIG_IGN);
    }
);

both_backends!(
    serial fn close_removes_the_handlers(lp) {
        let (a, b) = (sig(lp, 6), sig(lp, 7));
        set_default(a);
        install_previous(b);
        let prev = previous_handler as *const () as libc::sighandler_t;
        let _ = counting(lp, a);
        let _ = counting(lp, b);
        assert_ne!(disposition(a), libc::SIG_DFL);
        assert_ne!(disposition(b), prev);
        // The hub's eventfd is watched like any fd.
        common::turns(lp, 2);
        lp.close().unwrap();
        assert_eq!(disposition(a), libc::SIG_DFL);
        assert_eq!(disposition(b), prev);
        assert!(matches!(lp.add_signal_handler(a, || {}), Err(Error::Closed(_))));
        assert!(!lp.remove_signal_handler(a));
        // (run_on_serial checks that the subscription's eventfd is closed.)
        common::assert_only_the_loops_own_fds_left("after close with signal handlers");
        set_default(b);
    }
);

/// The child side: a Runner with Ctrl-C handling on, whose main task
/// handles SIGINT itself and returns after two of them.
fn sigint_takeover_child(backend: &str) {
    let backend = match backend {
        "proactor" => Backend::Proactor,
        _ => Backend::Selector,
    };
    let mut r = ringloop::Runner::with_backend(backend).sigint(ringloop::SigintHandling::Always);
    let out = r.run(async move {
        let lp = get_running_loop().unwrap();
        let got = Rc::new(Cell::new(0u32));
        let g = got.clone();
        lp.add_signal_handler(libc::SIGINT, move || {
            g.set(g.get() + 1);
            say(&format!("GOT {}", g.get()));
        })
        .unwrap();
        say("READY");
        while got.get() < 2 {
            ringloop::sleep(Duration::from_millis(1)).await.unwrap();
        }
        assert!(lp.remove_signal_handler(libc::SIGINT));
        42
    });
    say(&format!("RESULT {out:?}"));
    r.close().unwrap();
}

fn say(line: &str) {
    use std::io::Write;
    println!("{line}");
    std::io::stdout().flush().unwrap();
}

const TAKEOVER: common::child::ChildTest =
    common::child::ChildTest::new("a_loop_handler_takes_ctrl_c_over_from_the_runner");

/// The Runner's Ctrl-C and `add_signal_handler` share the hub: a program
/// that handles SIGINT on its loop gets every Ctrl-C (the main task is
/// not cancelled, the second one does not end the process), as asyncio's
/// `add_signal_handler(SIGINT)` replaces the Runner's handler.
#[test]
fn a_loop_handler_takes_ctrl_c_over_from_the_runner() {
    use std::io::BufRead;
    if TAKEOVER.child_side(sigint_takeover_child) {
        return;
    }
    // (Its child's pipes would upset the fd counts of the serial tests.)
    let _serial = common::serial();
    for backend in ["proactor", "selector"] {
        let mut child = TAKEOVER.spawn(backend, &[]);
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut seen = Vec::new();
        let mut wait_for = |want: &str, seen: &mut Vec<String>| {
            let mut line = String::new();
            loop {
                line.clear();
                assert!(
                    out.read_line(&mut line).unwrap() > 0,
                    "{backend}: the child ended before {want}: {seen:?}"
                );
                seen.push(line.trim().to_owned());
                if line.contains(want) {
                    return;
                }
            }
        };
        let sigint = || {
            // SAFETY: signals our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        };
        wait_for("READY", &mut seen);
        sigint();
        wait_for("GOT 1", &mut seen);
        sigint();
        wait_for("GOT 2", &mut seen);
        wait_for("RESULT", &mut seen);
        let st = common::child::wait_bounded(&mut child, common::child::CHILD_LIMIT);
        assert!(st.success(), "{backend}: {st:?} {seen:?}");
        assert!(
            seen.iter().any(|l| l == "RESULT Ok(42)"),
            "{backend}: {seen:?}"
        );
    }
}
