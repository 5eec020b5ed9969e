//! Shared test support: every behaviour test is written once and generated
//! for both backends by [`both_backends!`], and each generated test proves
//! afterwards that its backend really did the work (a proactor test that
//! silently ran on epoll fails). A `serial fn` also proves it leaked no fd.
//!
//! Every helper the test files share lives here, once: loop turns and
//! bounded waits, futures that yield or flag their drop, the exception
//! capture (here); fd counting, socket pairs and a listener that
//! holds connects in flight ([`fds`]); seeds and dice for the fuzzes
//! ([`seeds`]); re-running a test in a child process ([`child`]).
#![allow(dead_code)]

pub mod child;
pub mod fds;
pub mod seeds;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ringloop::prelude::*;
use ringloop::{ExceptionContext, ExceptionHandler};

// (Re-exported for the files that use them; not every binary does.)
#[allow(unused_imports)]
pub use fds::{fd_is_open, open_fds};
#[allow(unused_imports)]
pub use seeds::Rng;

/// A loop on exactly `backend`; never falls back.
pub fn new_loop(backend: Backend) -> EventLoop {
    let lp = match EventLoop::with_backend(backend) {
        Ok(lp) => lp,
        Err(e) => panic!("cannot make a {backend} loop here (no silent fallback in tests): {e}"),
    };
    assert_eq!(lp.backend(), backend);
    lp
}

/// Fails unless the loop's driver counters show `backend` did the waiting.
pub fn assert_backend_used(lp: &EventLoop, backend: Backend) {
    let s = lp.driver_stats();
    match backend {
        Backend::Proactor => {
            assert!(
                s.uring_enters > 0,
                "proactor test made no io_uring_enter: {s:?}"
            );
            assert_eq!(s.epoll_waits, 0, "proactor test used epoll: {s:?}");
        }
        Backend::Selector => {
            // (A turn that must not block, with no op parked on readiness,
            // makes no epoll_wait: a test of callbacks alone may make none.)
            assert_eq!(lp.backend(), Backend::Selector);
            assert!(s.turns > 0, "selector test ran no iteration: {s:?}");
            assert_eq!(s.uring_enters, 0, "selector test used io_uring: {s:?}");
        }
    }
}

/// Runs `body` on a fresh loop of `backend`, checks the backend was used,
/// and closes the loop (if the body did not).
pub fn run_on(backend: Backend, body: fn(&EventLoop)) {
    let lp = new_loop(backend);
    body(&lp);
    assert_backend_used(&lp, backend);
    if !lp.is_closed() {
        lp.close().expect("close");
    }
}

/// Serialises the tests of one test binary that take it (fd counting).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// What [`fds::fd_targets`] showed just before a `serial` test's loop
    /// was made.
    static FDS_BEFORE_LOOP: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// As [`run_on`], holding [`serial`] from before the loop exists, and
/// counting the process's fds before the loop is made and after it is
/// closed and dropped: a serial test fails if it leaves any fd open (the
/// extra ones are named).
pub fn run_on_serial(backend: Backend, body: fn(&EventLoop)) {
    let _g = serial();
    let before = open_fds();
    let targets = fds::fd_targets();
    FDS_BEFORE_LOOP.set(Some(targets.clone()));
    run_on(backend, body);
    FDS_BEFORE_LOOP.set(None);
    let after = open_fds();
    assert_eq!(
        after,
        before,
        "fds leaked: {before} open before the test's loop was made, {after} after it was \
         closed and dropped (extra: {:?})",
        fds::fd_diff(&targets, &fds::fd_targets())
    );
}

/// In a `serial fn` of [`both_backends!`]: the fds open now that were not
/// open just before the test's loop was made (described as
/// [`fds::fd_targets`] does: `socket`, `anon_inode:[eventfd]`, …).
///
/// # Panics
///
/// Outside a `serial` test (a concurrent test could open fds meanwhile).
pub fn fds_opened_since_loop() -> Vec<String> {
    FDS_BEFORE_LOOP.with_borrow(|b| {
        let before = b
            .as_ref()
            .expect("fds_opened_since_loop() is for the `serial fn` form of both_backends!");
        fds::fd_diff(before, &fds::fd_targets())
    })
}

/// In a `serial fn`, after `lp.close()` and with the test's own sockets
/// dropped: fails unless the only fds open beyond those from before the
/// loop are the loop's own wake-up eventfd (and its dup) and the
/// selector's epoll fd. Those go when the `EventLoop` is dropped (which
/// [`run_on_serial`] checks); every socket, pipe and the proactor's ring
/// must be closed by `close()` itself.
pub fn assert_only_the_loops_own_fds_left(what: &str) {
    // `close()` releases the ring or the epoll fd too; only the eventfd
    // other threads' `LoopHandle`s may still write to stays, until the loop
    // and every handle are dropped.
    let extra = fds_opened_since_loop();
    assert!(
        extra.len() <= 1 && extra.iter().all(|f| f == "anon_inode:[eventfd]"),
        "{what}: fds other than the closed loop's notifier eventfd are open: {extra:?}"
    );
}

/// Generates `mod $name { #[test] fn proactor(); #[test] fn selector(); }`
/// from one body taking `&EventLoop`. `serial fn` runs the pair under
/// [`serial`], for tests that count the process's open fds.
#[macro_export]
macro_rules! both_backends {
    (@gen $runner:ident, [$(#[$m:meta])*] $name:ident, $lp:ident, $body:block) => {
        $(#[$m])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn body($lp: &ringloop::EventLoop) $body
            #[test]
            fn proactor() {
                $crate::common::$runner(ringloop::Backend::Proactor, body)
            }
            #[test]
            fn selector() {
                $crate::common::$runner(ringloop::Backend::Selector, body)
            }
        }
    };
    ($(#[$m:meta])* serial fn $name:ident($lp:ident) $body:block) => {
        $crate::both_backends!(@gen run_on_serial, [$(#[$m])*] $name, $lp, $body);
    };
    ($(#[$m:meta])* fn $name:ident($lp:ident) $body:block) => {
        $crate::both_backends!(@gen run_on, [$(#[$m])*] $name, $lp, $body);
    };
}

/// Runs `fut` on `lp` with a watchdog: the test fails instead of hanging.
pub fn run_bounded<F>(lp: &EventLoop, limit: Duration, fut: F) -> F::Output
where
    F: std::future::Future + 'static,
    F::Output: 'static,
{
    let l2 = lp.clone();
    let guard = lp
        .call_later(limit, move || {
            l2.stop();
        })
        .unwrap();
    let out = lp
        .run_until_complete(fut)
        .unwrap_or_else(|e| panic!("test future failed or timed out after {limit:?}: {e}"));
    guard.cancel();
    out
}

/// One loop iteration per call that never blocks (the loop is stopping:
/// asyncio's `stop()` before `run_forever()` runs exactly one iteration).
pub fn turns(lp: &EventLoop, n: usize) {
    for _ in 0..n {
        lp.stop();
        lp.run_forever().unwrap();
    }
}

/// Runs non-blocking turns until `cond` holds or `limit` passes (a bound
/// that only turns a hang into a failure); true if `cond` held.
pub fn run_until(lp: &EventLoop, limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        turns(lp, 1);
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Cancels `t` from a callback queued now, so that in the turn its
/// pending receive completes the cancel runs first and the task's future
/// is dropped holding a completed, never-polled receive (its data goes to
/// the driver's stash); then drains the loop.
pub fn cancel_in_completion_turn<T: 'static>(lp: &EventLoop, t: &ringloop::Task<T>) {
    let t2 = t.clone();
    lp.call_soon(move || {
        assert!(t2.cancel(None));
    })
    .unwrap();
    drain(lp, Duration::from_secs(5));
    assert!(t.cancelled());
}

/// Runs turns until no op is in flight; fails after `limit` (a hang guard).
pub fn drain(lp: &EventLoop, limit: Duration) {
    assert!(
        run_until(lp, limit, || lp.ops_in_flight() == 0),
        "{} ops still in flight {limit:?} after cancellation",
        lp.ops_in_flight()
    );
}

/// Yields to the loop once: `YieldOnce(false).await` is one task step.
pub struct YieldOnce(pub bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// Sets its flag when dropped: shows a cancelled future's cleanup ran.
pub struct DropFlag(pub Rc<Cell<bool>>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

/// Installs an exception handler on `lp` that collects what it is told.
pub fn capture_handler(lp: &EventLoop) -> Rc<RefCell<Vec<ExceptionContext>>> {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s2 = seen.clone();
    let h: ExceptionHandler = Rc::new(move |_lp, ctx| s2.borrow_mut().push(ctx.clone()));
    lp.set_exception_handler(Some(h));
    seen
}

/// A panic's message (`&str` or `String` payloads).
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-string panic)".into()
    }
}

/// Runs `f`, turning a panic into `Err(its message)`.
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| panic_text(&*p))
}

/// Writes `b"hi"` in `connection_made` and keeps its transport (a protocol
/// and its transport hold each other): a live connection that has sent.
pub struct SendOnce(pub Option<ringloop::Transport>);

impl ringloop::BaseProtocol for SendOnce {
    fn connection_made(&mut self, t: ringloop::Transport) {
        t.write(&b"hi"[..]).unwrap();
        self.0 = Some(t);
    }
}

impl ringloop::Protocol for SendOnce {}

/// A live TCP connection on `lp` that has sent: the client transport of a
/// [`SendOnce`] (which keeps it, reading), and the std peer that has read
/// its `b"hi"`. The loop turns until the peer, on a thread of its own, has
/// those bytes: no sleep stands in for "the write left". (Not on the
/// loop's executor: a worker thread may hold the loop's wake-up fd a moment
/// after its job, which fd-counting tests would see.)
pub fn connection_that_has_sent(lp: &EventLoop) -> (ringloop::Transport, std::net::TcpStream) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let peer = std::thread::spawn(move || {
        let (mut peer, _) = listener.accept().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 2];
        peer.read_exact(&mut buf).map(|_| (peer, buf))
    });
    let t = run_bounded(lp, Duration::from_secs(10), async move {
        let lp = get_running_loop().unwrap();
        lp.create_connection(|| SendOnce(None), "127.0.0.1", port)
            .await
            .unwrap()
    });
    assert!(
        run_until(lp, Duration::from_secs(10), || peer.is_finished()),
        "the peer never read the connection's first bytes"
    );
    let (peer, got) = peer.join().unwrap().expect("the peer's read");
    assert_eq!(&got, b"hi");
    (t, peer)
}

/// A `log` logger that records every line (tests look for warnings).
struct Recorder;

static LINES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl log::Log for Recorder {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        let line = format!("{} {}", r.level(), r.args());
        if r.level() <= log::Level::Warn {
            eprintln!("[log] {line}");
        }
        LINES.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

/// Installs the recording logger (once per test binary).
pub fn install_logger() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&Recorder).expect("logger");
        log::set_max_level(log::LevelFilter::Debug);
    });
}

/// True if some recorded log line contains `needle`.
pub fn logged(needle: &str) -> bool {
    LINES.lock().unwrap().iter().any(|l| l.contains(needle))
}

/// Every recorded log line.
pub fn log_lines() -> Vec<String> {
    LINES.lock().unwrap().clone()
}
