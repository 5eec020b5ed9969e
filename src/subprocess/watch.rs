//! Watching a child's exit: a one-shot poll op on its pidfd (readable
//! once the child is a zombie), then `waitpid(WNOHANG)`. Without pidfds, a
//! thread per child blocks in `waitpid` and reports through
//! `call_soon_threadsafe`. Either way the child is reaped exactly once,
//! even when nobody holds its transport any more; a child still running
//! when the loop closes goes to a reaper thread.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::{Rc, Weak};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::{Inner, SubprocessTransport, returncode};
use crate::base_loop::io::{IoEvent, IoHandler, ReadyWatch};
use crate::base_loop::{EventLoop, LoopClosing};
use crate::error::Result;

/// A pidfd for `pid`, unless the kernel has none (before 5.3) or
/// `RINGLOOP_NO_PIDFD` asks for the thread fallback.
pub(crate) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    if std::env::var_os("RINGLOOP_NO_PIDFD").is_some() {
        return None;
    }
    // SAFETY: a plain syscall; the result is a new fd we own (pidfds are
    // close-on-exec).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        log::debug!(
            "ringloop: pidfd_open failed ({}); a thread waits for pid {pid}",
            std::io::Error::last_os_error()
        );
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Signals the child: through its pidfd when there is one (never a
/// reused pid), else by pid (ours until we reap it).
pub(crate) fn send_signal(pid: u32, pidfd: Option<&OwnedFd>, sig: i32) -> Result<()> {
    // SAFETY: plain syscalls on a pid / a pidfd we own.
    let r = unsafe {
        match pidfd {
            Some(fd) => libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            ) as i32,
            None => libc::kill(pid as libc::pid_t, sig),
        }
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// The child's code from a `waitpid` result: `None` while it runs; 255
/// (and a warning) if someone else reaped it, as CPython does.
fn code_of(pid: u32, r: nix::Result<WaitStatus>) -> Option<i32> {
    match r {
        Ok(WaitStatus::StillAlive) => None,
        Ok(st) => returncode(st).or(Some(255)),
        Err(e) => {
            log::warn!(
                "ringloop: child process {pid} was reaped by someone else ({e}); returncode 255"
            );
            Some(255)
        }
    }
}

/// Reaps `pid` on a thread of its own (blocking `waitpid`), for a child
/// the loop stops watching before it exits.
fn reap_in_background(pid: u32) {
    let spawned = std::thread::Builder::new()
        .name(format!("ringloop-reap-{pid}"))
        .spawn(move || {
            let _ = waitpid(Pid::from_raw(pid as i32), None);
        });
    if let Err(e) = spawned {
        log::warn!("ringloop: cannot start a reaper thread for pid {pid}: {e}");
    }
}

/// Starts watching `pid`; its exit goes to `target` (if still there).
pub(crate) fn watch(lp: &EventLoop, pid: u32, pidfd: Option<OwnedFd>, target: Weak<Inner>) {
    match pidfd {
        Some(fd) => PidfdWatch::start(lp, pid, fd, target),
        None => watch_with_thread(lp, pid, target),
    }
}

struct PidfdWatch {
    lp: EventLoop,
    pid: u32,
    fd: OwnedFd,
    op: RefCell<Option<ReadyWatch>>,
    target: Weak<Inner>,
    reaped: std::cell::Cell<bool>,
    /// The loop's key for this watch ([`LoopClosing`]).
    key: std::cell::Cell<Option<usize>>,
}

impl PidfdWatch {
    fn start(lp: &EventLoop, pid: u32, fd: OwnedFd, target: Weak<Inner>) {
        let w = Rc::new(PidfdWatch {
            lp: lp.clone(),
            pid,
            fd,
            op: RefCell::new(None),
            target,
            reaped: std::cell::Cell::new(false),
            key: std::cell::Cell::new(None),
        });
        let weak: Weak<dyn LoopClosing> = Rc::downgrade(&w) as _;
        w.key.set(Some(lp.register_transport(weak)));
        w.arm();
    }

    fn arm(self: &Rc<Self>) {
        *self.op.borrow_mut() = Some(ReadyWatch::on_raw(&self.lp, self.fd.as_raw_fd(), self));
    }

    fn done(&self) {
        if let Some(k) = self.key.take() {
            self.lp.unregister_transport(k);
        }
    }
}

impl IoHandler for PidfdWatch {
    fn on_io(self: Rc<Self>, ev: IoEvent) {
        let res = {
            let mut op = self.op.borrow_mut();
            let Some(o) = op.as_mut() else { return };
            let Some(res) = o.take(&ev) else { return };
            *op = None;
            res
        };
        if res.is_err() {
            // (Cancelled: the loop is closing; `Drop` hands the child on.)
            return;
        }
        let r = waitpid(Pid::from_raw(self.pid as i32), Some(WaitPidFlag::WNOHANG));
        match code_of(self.pid, r) {
            None => self.arm(),
            Some(code) => {
                self.reaped.set(true);
                self.done();
                if let Some(t) = self.target.upgrade() {
                    SubprocessTransport(t).exited(code);
                }
            }
        }
    }
}

impl LoopClosing for PidfdWatch {
    fn loop_closing(self: Rc<Self>) {
        // Cancel the poll now (the driver is not busy); the child is
        // reaped by a thread once the last handle goes (`Drop`).
        let op = self.op.borrow_mut().take();
        drop(op);
        self.done();
    }
}

impl Drop for PidfdWatch {
    fn drop(&mut self) {
        if !self.reaped.get() {
            reap_in_background(self.pid);
        }
    }
}

thread_local! {
    /// Children watched by threads, by pid: reports come back to the
    /// loop's thread through `call_soon_threadsafe`.
    static THREAD_WATCHED: RefCell<HashMap<u32, Weak<Inner>>> = RefCell::new(HashMap::new());
}

fn watch_with_thread(lp: &EventLoop, pid: u32, target: Weak<Inner>) {
    THREAD_WATCHED.with(|m| m.borrow_mut().insert(pid, target));
    let handle = crate::AbstractEventLoop::handle(lp);
    let spawned = std::thread::Builder::new()
        .name(format!("ringloop-wait-{pid}"))
        .spawn(move || {
            let r = waitpid(Pid::from_raw(pid as i32), None);
            let code = code_of(pid, r).unwrap_or(255);
            // (A closed loop: the child is reaped all the same.)
            let _ = handle.call_soon_threadsafe(move || {
                let t = THREAD_WATCHED.with(|m| m.borrow_mut().remove(&pid));
                if let Some(t) = t.and_then(|w| w.upgrade()) {
                    SubprocessTransport(t).exited(code);
                }
            });
        });
    if let Err(e) = spawned {
        log::warn!("ringloop: cannot start a thread to wait for pid {pid}: {e}");
    }
}
