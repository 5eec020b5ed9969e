//! Helpers of the `hardening*` tests (issue 11's regression tests) that
//! the rest of the suite does not use: a watchdog thread that stops a
//! loop, a loop of the test's own to close and drop, and memory
//! accounting. Included by each as `mod support`; what all test files
//! share (turns, bounded waits, fd accounting) is in `common`.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ringloop::prelude::*;

use crate::common;

/// The bound of a test's ordinary waits (only turns a hang into a failure).
pub const LIMIT: Duration = Duration::from_secs(20);

/// Stops the loop from another thread after `after` unless dropped first:
/// a loop that would block forever (no timer, nothing in flight that will
/// complete) then returns, and the test fails on what did not happen.
pub struct Watchdog {
    cancel: Option<std::sync::mpsc::Sender<()>>,
    fired: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub fn new(lp: &EventLoop, after: Duration) -> Watchdog {
        let handle = lp.handle();
        let fired = Arc::new(AtomicBool::new(false));
        let f = fired.clone();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(after) {
                f.store(true, Ordering::SeqCst);
                let _ = handle.call_soon_threadsafe(|| {
                    if let Ok(lp) = get_running_loop() {
                        lp.stop();
                    }
                });
            }
        });
        Watchdog {
            cancel: Some(tx),
            fired,
            thread: Some(thread),
        }
    }

    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.cancel.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Some I/O on the harness's loop (so it proves its backend), then a fresh
/// loop of the same backend that the test may close and drop.
pub fn own_loop(lp: &EventLoop) -> EventLoop {
    let (a, b) = UnixStream::pair().unwrap();
    (&a).write_all(b"x").unwrap();
    let s = Socket::from(b);
    let got = common::run_bounded(lp, LIMIT, async move {
        get_running_loop().unwrap().sock_recv(&s, 1).await.unwrap()
    });
    assert_eq!(got, b"x");
    drop(a);
    common::new_loop(lp.backend())
}

/// Resident set size now, in bytes.
pub fn rss() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no memory-safety preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

/// Peak resident set size (`VmHWM`) since the last [`reset_peak_rss`].
pub fn peak_rss() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Resets `VmHWM` to the current RSS; false where the kernel refuses.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

pub const MIB: usize = 1 << 20;
