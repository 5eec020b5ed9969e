//! Helpers shared by the `hardening*` tests (issue 11's regression
//! tests): bounded loop turns, panics as messages, a watchdog thread, fd
//! and memory accounting. Included by each as `mod support`.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ringloop::prelude::*;

use crate::common;

/// The bound of a test's ordinary waits (only turns a hang into a failure).
pub const LIMIT: Duration = Duration::from_secs(20);

/// One loop iteration per call that never blocks (the loop is stopping).
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
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_text(&*p))
}

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

pub fn raise_nofile(to: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if r.rlim_cur < to {
        r.rlim_cur = to.min(r.rlim_max);
        // SAFETY: valid rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    }
}

/// What each open fd of this process is (`socket:[…]`, `anon_inode:[…]`),
/// to name the leaked ones in a failure.
pub fn fd_targets() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|p| {
                    let s = p.to_string_lossy().into_owned();
                    if s.starts_with("anon_inode") {
                        s // anon_inode:[eventfd], anon_inode:[io_uring], …
                    } else {
                        // socket:[12345] -> socket (inode numbers differ).
                        s.split(":[").next().unwrap_or(&s).to_owned()
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The fds in `now` and not in `before` (as a multiset), described.
pub fn fd_diff(before: &[String], now: &[String]) -> Vec<String> {
    let mut left = before.to_vec();
    let mut extra = Vec::new();
    for f in now {
        if let Some(i) = left.iter().position(|b| b == f) {
            left.swap_remove(i);
        } else {
            extra.push(f.clone());
        }
    }
    extra
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
