//! Child processes: asyncio's `SubprocessTransport` / `SubprocessProtocol`
//! (the loop's `subprocess_exec` / `subprocess_shell`) and, on top of
//! them, the high-level [`Process`] of `create_subprocess_exec`.
//!
//! The child's pipes are ordinary pipe transports (the stream transport
//! on pipe ends); its exit is watched through a pidfd, whose readability
//! the loop waits for like any other fd (a one-shot poll op): no
//! process-wide `SIGCHLD` handler. Where pidfds are missing (or
//! `RINGLOOP_NO_PIDFD` is set) a thread per child waits in `waitpid` and
//! reports through the loop's thread-safe queue.

mod process;
mod spawn;
mod watch;

use std::cell::{Cell, RefCell};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::rc::Rc;

pub use process::{Process, create_subprocess_exec, create_subprocess_shell};
#[cfg(feature = "diagnostics")]
pub(crate) use spawn::spawn_counts;
pub use spawn::{Stdio, SubprocessOptions};

use crate::RecvBuf;
use crate::base_loop::{EventLoop, LoopClosing};
use crate::error::{Error, Result};
use crate::events::AbstractEventLoop;
use crate::futures::LoopFuture;
use crate::protocols::{BaseProtocol, Protocol};
use crate::transports::Transport;
use crate::transports::base::{Base, deliver_lost};

/// The callbacks of a child process's transport. Equivalent to asyncio's
/// `SubprocessProtocol`; every method has a default that does nothing.
///
/// The order, as in asyncio: `connection_made`, then data and pipe ends
/// in the order they happen, `process_exited` when the child exits (which
/// may come before its pipes close: a grandchild may hold them), and
/// `connection_lost(None)` last, once the child exited and every pipe is
/// closed.
pub trait SubprocessProtocol: 'static {
    /// The child runs; `transport` is its handle.
    fn connection_made(&mut self, transport: SubprocessTransport) {
        let _ = transport;
    }
    /// The child wrote `data` to its stdout (`fd` 1) or stderr (`fd` 2).
    fn pipe_data_received(&mut self, fd: i32, data: &[u8]) {
        let _ = (fd, data);
    }
    /// A pipe to the child closed: `None` at its end, else the error.
    fn pipe_connection_lost(&mut self, fd: i32, exc: Option<Error>) {
        let _ = (fd, exc);
    }
    /// The child exited; its code is in
    /// [`get_returncode`](SubprocessTransport::get_returncode).
    fn process_exited(&mut self) {}
    /// The stdin pipe's buffer went over its high-water mark.
    fn pause_writing(&mut self) {}
    /// ... and back under the low one.
    fn resume_writing(&mut self) {}
    /// The child exited and all its pipes closed.
    fn connection_lost(&mut self, exc: Option<Error>) {
        let _ = exc;
    }
}

/// The exit status as asyncio gives it: the exit code, or `-N` after
/// signal N.
pub(crate) fn returncode(status: nix::sys::wait::WaitStatus) -> Option<i32> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(-(sig as i32)),
        _ => None,
    }
}

struct Inner {
    base: Base<dyn SubprocessProtocol>,
    pid: u32,
    /// A pidfd of the child (for `pidfd_send_signal`; the exit watch has
    /// its own).
    pidfd: Option<std::os::fd::OwnedFd>,
    returncode: Cell<Option<i32>>,
    pipes: RefCell<[Option<Transport>; 3]>,
    /// Pipes not closed yet.
    open_pipes: Cell<u8>,
    /// `connection_made` has run (`process_exited` waits for it).
    made: Cell<bool>,
    exit_told: Cell<bool>,
    /// Resolved with the returncode ([`wait`](SubprocessTransport::wait)).
    exit: LoopFuture<i32>,
}

/// A child process's transport. Equivalent to asyncio's
/// `SubprocessTransport`; clones are handles to one child.
///
/// Dropping every handle neither kills nor leaves a zombie: the loop still
/// watches the child and reaps it when it exits. When the loop closes, a
/// child whose transport is still held is killed (as by
/// [`close`](Self::close)); one nobody holds is left running, and a thread
/// reaps it when it exits.
#[derive(Clone)]
pub struct SubprocessTransport(Rc<Inner>);

/// What a pipe transport of the child tells its subprocess transport.
struct PipeProto {
    fd: i32,
    sub: std::rc::Weak<Inner>,
}

impl PipeProto {
    fn to_sub(&self, f: impl FnOnce(&mut dyn SubprocessProtocol) + 'static) {
        if let Some(sub) = self.sub.upgrade() {
            SubprocessTransport(sub).call_protocol(f);
        }
    }
}

impl BaseProtocol for PipeProto {
    fn connection_lost(&mut self, exc: Option<Error>) {
        if let Some(sub) = self.sub.upgrade() {
            SubprocessTransport(sub).pipe_lost(self.fd, exc);
        }
    }
    fn pause_writing(&mut self) {
        self.to_sub(|p| p.pause_writing());
    }
    fn resume_writing(&mut self) {
        self.to_sub(|p| p.resume_writing());
    }
}

impl Protocol for PipeProto {
    fn data_received(&mut self, data: &[u8]) {
        let (fd, data) = (self.fd, data.to_vec());
        self.to_sub(move |p| p.pipe_data_received(fd, &data));
    }
    fn data_received_owned(&mut self, data: RecvBuf) {
        let fd = self.fd;
        self.to_sub(move |p| p.pipe_data_received(fd, &data));
    }
}

impl LoopClosing for Inner {
    fn loop_closing(self: Rc<Self>) {
        // The loop closes under a live child: as `close()`, without
        // protocol callbacks (the watch hands the child to a reaper).
        let t = SubprocessTransport(self);
        if t.0.returncode.get().is_none() {
            let _ = t.signal(libc::SIGKILL);
        }
        t.0.base.begin_lost();
        t.0.pipes
            .borrow_mut()
            .iter_mut()
            .for_each(|p| drop(p.take()));
        t.0.base.release();
    }
}

impl SubprocessTransport {
    /// Starts `program` and connects its pipes; returns once the
    /// protocol's `connection_made` has run.
    pub(crate) async fn exec(
        lp: &EventLoop,
        protocol: Box<dyn SubprocessProtocol>,
        program: &OsStr,
        args: &[OsString],
        mut opts: SubprocessOptions,
    ) -> Result<SubprocessTransport> {
        lp.check_open()?;
        let spawned = spawn::spawn(program, args, &mut opts)?;
        let pidfd = watch::pidfd_open(spawned.pid);
        let t = SubprocessTransport(Rc::new(Inner {
            base: Base::new(lp, protocol, "SubprocessProtocol"),
            pid: spawned.pid,
            pidfd: pidfd.as_ref().and_then(|fd| fd.try_clone().ok()),
            returncode: Cell::new(None),
            pipes: RefCell::new([None, None, None]),
            open_pipes: Cell::new(0),
            made: Cell::new(false),
            exit_told: Cell::new(false),
            exit: lp.create_future(),
        }));
        let weak: std::rc::Weak<dyn LoopClosing> = Rc::downgrade(&t.0) as _;
        t.0.base.register(weak);
        for (i, pipe) in spawned.pipes.into_iter().enumerate() {
            let Some(pipe) = pipe else { continue };
            let proto = PipeProto {
                fd: i as i32,
                sub: Rc::downgrade(&t.0),
            };
            let pt = Transport::start_pipe(lp, pipe, i != 0, Box::new(proto));
            t.0.pipes.borrow_mut()[i] = Some(pt);
            t.0.open_pipes.set(t.0.open_pipes.get() + 1);
        }
        watch::watch(lp, spawned.pid, pidfd, Rc::downgrade(&t.0));
        // The pipes' connection_made calls were queued first.
        let t2 = t.clone();
        lp.call_soon_impl(
            move || {
                let t3 = t2.clone();
                t2.call_protocol(move |p| p.connection_made(t3));
                t2.0.made.set(true);
                if t2.0.returncode.get().is_some() {
                    t2.tell_exit();
                }
            },
            &"connection_made",
        );
        crate::tasks::yield_now().await;
        Ok(t)
    }

    fn call_protocol(&self, f: impl FnOnce(&mut dyn SubprocessProtocol) + 'static) {
        if let Err(msg) = self.0.base.call(f) {
            self.0.base.report_panic(&msg, format!("{self:?}"));
        }
    }

    /// The watch saw the child exit with `code`.
    pub(crate) fn exited(&self, code: i32) {
        if self.0.returncode.get().is_some() {
            return;
        }
        self.0.returncode.set(Some(code));
        let _ = self.0.exit.set_result(code);
        if self.0.made.get() {
            self.tell_exit();
        }
    }

    fn tell_exit(&self) {
        if self.0.exit_told.replace(true) || self.0.base.is_lost() {
            return;
        }
        self.call_protocol(|p| p.process_exited());
        self.try_finish();
    }

    fn pipe_lost(&self, fd: i32, exc: Option<Error>) {
        self.call_protocol(move |p| p.pipe_connection_lost(fd, exc));
        self.0
            .open_pipes
            .set(self.0.open_pipes.get().saturating_sub(1));
        self.try_finish();
    }

    /// `connection_lost(None)` once the child exited (and that was told)
    /// and every pipe closed.
    fn try_finish(&self) {
        if !self.0.exit_told.get() || self.0.open_pipes.get() > 0 || !self.0.base.begin_lost() {
            return;
        }
        deliver_lost(
            self.0.clone(),
            |i| &i.base,
            None,
            |p, exc| p.connection_lost(exc),
            |i| {
                i.pipes.borrow_mut().iter_mut().for_each(|p| drop(p.take()));
            },
        );
    }

    /// Waits until the child exited; its returncode.
    pub(crate) async fn wait(&self) -> i32 {
        let exit = self.0.exit.clone().await;
        exit.expect("the exit future is only ever resolved")
    }

    /// The child's process id. Equivalent to `get_pid`.
    pub fn get_pid(&self) -> u32 {
        self.0.pid
    }

    /// `None` while the child runs; then its exit code, or `-N` if signal
    /// N ended it (255 if something else reaped it). Equivalent to
    /// `get_returncode`.
    pub fn get_returncode(&self) -> Option<i32> {
        self.0.returncode.get()
    }

    /// The transport of the child's pipe `fd` (0, 1 or 2); `None` if that
    /// stream is not a pipe, for any other fd, and once the transport is
    /// closed. Equivalent to `get_pipe_transport`.
    pub fn get_pipe_transport(&self, fd: i32) -> Option<Transport> {
        let i = usize::try_from(fd).ok().filter(|&i| i < 3)?;
        self.0.pipes.borrow()[i].clone()
    }

    /// Sends signal `sig` to the child. Equivalent to `send_signal`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a signal number out of range;
    /// [`Error::Io`] with `ESRCH` (asyncio's `ProcessLookupError`) once the
    /// child has exited.
    pub fn send_signal(&self, sig: i32) -> Result<()> {
        if !(1..=libc::SIGRTMAX()).contains(&sig) {
            return Err(Error::InvalidArgument(format!(
                "invalid signal number {sig}"
            )));
        }
        self.signal(sig)
    }

    fn signal(&self, sig: i32) -> Result<()> {
        if self.0.returncode.get().is_some() {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH).into());
        }
        watch::send_signal(self.0.pid, self.0.pidfd.as_ref(), sig)
    }

    /// SIGTERM. Equivalent to `terminate`.
    ///
    /// # Errors
    ///
    /// As [`send_signal`](Self::send_signal).
    pub fn terminate(&self) -> Result<()> {
        self.signal(libc::SIGTERM)
    }

    /// SIGKILL. Equivalent to `kill`.
    ///
    /// # Errors
    ///
    /// As [`send_signal`](Self::send_signal).
    pub fn kill(&self) -> Result<()> {
        self.signal(libc::SIGKILL)
    }

    /// Closes the pipes and kills the child if it still runs;
    /// `connection_lost` follows once it exited. Equivalent to `close`.
    pub fn close(&self) {
        if !self.0.base.begin_close() {
            return;
        }
        let pipes: Vec<Transport> = self.0.pipes.borrow().iter().flatten().cloned().collect();
        for p in pipes {
            p.close();
        }
        if self.0.returncode.get().is_none() {
            let _ = self.signal(libc::SIGKILL);
        }
    }

    /// True once [`close`](Self::close) was called or the transport is
    /// done. Equivalent to `is_closing`.
    pub fn is_closing(&self) -> bool {
        self.0.base.is_closing()
    }

    /// The loop the child is watched on.
    pub fn get_loop(&self) -> EventLoop {
        self.0.base.lp.clone()
    }
}

impl fmt::Debug for SubprocessTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<SubprocessTransport pid={} returncode={:?} phase={:?}>",
            self.0.pid,
            self.0.returncode.get(),
            self.0.base.phase()
        )
    }
}

impl EventLoop {
    /// [`AbstractEventLoop::subprocess_exec`](crate::AbstractEventLoop::subprocess_exec).
    pub(crate) async fn subprocess_exec_impl<P, I, S>(
        &self,
        factory: impl FnOnce() -> P,
        program: impl AsRef<OsStr>,
        args: I,
        opts: SubprocessOptions,
    ) -> Result<SubprocessTransport>
    where
        P: SubprocessProtocol,
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        SubprocessTransport::exec(self, Box::new(factory()), program.as_ref(), &args, opts).await
    }

    /// [`AbstractEventLoop::subprocess_shell`](crate::AbstractEventLoop::subprocess_shell).
    pub(crate) async fn subprocess_shell_impl<P: SubprocessProtocol>(
        &self,
        factory: impl FnOnce() -> P,
        cmd: impl AsRef<OsStr>,
        opts: SubprocessOptions,
    ) -> Result<SubprocessTransport> {
        let args = [OsString::from("-c"), cmd.as_ref().to_owned()];
        SubprocessTransport::exec(
            self,
            Box::new(factory()),
            OsStr::new("/bin/sh"),
            &args,
            opts,
        )
        .await
    }
}
