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
use crate::error::Result;

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
}
