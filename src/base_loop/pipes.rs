//! Non-blocking pipes read and written through the driver's `read` / `write`
//! ops (the building block of pipe and subprocess transports).
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::OFlag;

use crate::base_loop::EventLoop;
use crate::driver::Op;
use crate::driver::buf::{IoBuf, IoBufMut};
use crate::driver::fd::SharedFd;
use crate::driver::ops::{Read, Write};
use crate::error::{Error, Result};
use crate::protocols::Protocol;
use crate::transports::Transport;

/// One end of a pipe (or any non-blocking byte-stream fd: a tty, a FIFO).
pub struct Pipe {
    fd: SharedFd,
}

/// A new pipe, `(read end, write end)`, both non-blocking and close-on-exec.
///
/// # Errors
///
/// [`Error::Io`](crate::Error::Io) from `pipe2(2)`.
pub fn pipe() -> Result<(Pipe, Pipe)> {
    let (r, w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(io::Error::from)?;
    Ok((Pipe::from_nonblocking(r), Pipe::from_nonblocking(w)))
}

impl Pipe {
    fn from_nonblocking(fd: OwnedFd) -> Pipe {
        Pipe {
            fd: SharedFd::new(fd),
        }
    }

    /// Takes ownership of `fd` and makes it non-blocking and close-on-exec.
    ///
    /// # Errors
    ///
    /// [`Error::Io`](crate::Error::Io) if `fcntl` fails.
    pub fn from_owned(fd: OwnedFd) -> Result<Pipe> {
        let s = socket2::SockRef::from(&fd);
        s.set_nonblocking(true)?;
        s.set_cloexec(true)?;
        Ok(Pipe::from_nonblocking(fd))
    }
}

impl Pipe {
    pub(crate) fn shared(&self) -> &SharedFd {
        &self.fd
    }
}

impl AsRawFd for Pipe {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.raw()
    }
}

impl AsFd for Pipe {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl fmt::Debug for Pipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<Pipe fd={}>", self.fd.raw())
    }
}

impl EventLoop {
    /// [`AbstractEventLoop::pipe_read_into`](crate::AbstractEventLoop::pipe_read_into).
    pub(crate) async fn pipe_read_into_impl<B: IoBufMut>(
        &self,
        pipe: &Pipe,
        buf: B,
    ) -> (Result<usize>, B) {
        if let Err(e) = self.check_open() {
            return (Err(e), buf);
        }
        let op = Op::submit(self.driver(), Read::new(pipe.fd.clone(), buf));
        let (res, op) = op.await;
        let (r, buf) = op.finish(res);
        (r.map_err(Into::into), buf)
    }

    /// [`AbstractEventLoop::pipe_write_all`](crate::AbstractEventLoop::pipe_write_all).
    pub(crate) async fn pipe_write_all_impl<B: IoBuf>(&self, pipe: &Pipe, data: B) -> Result<()> {
        self.check_open()?;
        let total = data.bytes_init();
        let mut op = Write::new(pipe.fd.clone(), data);
        while op.offset < total {
            let (res, back) = Op::submit(self.driver(), op).await;
            op = back;
            op.offset += res? as usize;
        }
        Ok(())
    }

    /// [`AbstractEventLoop::connect_read_pipe`](crate::AbstractEventLoop::connect_read_pipe).
    pub(crate) async fn connect_read_pipe_impl<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        pipe: Pipe,
    ) -> Result<Transport> {
        self.connect_pipe(Box::new(factory()), pipe, true).await
    }

    /// [`AbstractEventLoop::connect_write_pipe`](crate::AbstractEventLoop::connect_write_pipe).
    pub(crate) async fn connect_write_pipe_impl<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        pipe: Pipe,
    ) -> Result<Transport> {
        self.connect_pipe(Box::new(factory()), pipe, false).await
    }

    /// A pipe transport, returned once `connection_made` has run
    /// (asyncio's waiter).
    pub(crate) async fn connect_pipe(
        &self,
        protocol: Box<dyn Protocol>,
        pipe: Pipe,
        read: bool,
    ) -> Result<Transport> {
        self.check_open()?;
        check_pipe_kind(&pipe)?;
        let t = Transport::start_pipe(self, pipe, read, protocol);
        // connection_made was queued first: one trip through the ready
        // queue runs it.
        crate::tasks::yield_now().await;
        Ok(t)
    }
}

/// asyncio's rule: pipe transports take pipes, FIFOs, sockets and
/// character devices (a tty), never a regular file or a directory (which
/// have no readiness to wait for).
fn check_pipe_kind(pipe: &Pipe) -> Result<()> {
    let st = nix::sys::stat::fstat(pipe.as_fd()).map_err(io::Error::from)?;
    let fmt = st.st_mode & libc::S_IFMT;
    if matches!(fmt, libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(
            "pipe transports are only for pipes, sockets and character devices".into(),
        ))
    }
}
