//! Shared test support: every behaviour test is written once and generated
//! for both backends by [`both_backends!`], and each generated test proves
//! afterwards that its backend really did the work (a proactor test that
//! silently ran on epoll fails).
#![allow(dead_code)]

use std::time::Duration;

use ringloop::prelude::*;

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

/// As [`run_on`], holding [`serial`] from before the loop exists.
pub fn run_on_serial(backend: Backend, body: fn(&EventLoop)) {
    let _g = serial();
    run_on(backend, body)
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

/// Number of open fds of this process (for leak checks).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
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

/// A small xorshift generator: reproducible sizes and chunkings.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
