//! `sendfile` and `sock_sendfile`: zero-copy with `sendfile(2)` on both
//! backends, read-and-write where that cannot serve.
//!
//! The zero-copy path calls the non-blocking `sendfile(2)` on the loop
//! thread and, on `EAGAIN`, waits for the socket to be writable with a
//! one-shot poll op (io_uring `POLL_ADD` on the proactor, epoll on the
//! selector), one call per loop turn at most (as CPython's selector loop
//! does), so a fast peer cannot hold the loop. Not a splice chain through
//! pipes. The fallback reads the file in blocks with the driver's `read`
//! op (a worker thread for a blocking non-regular file on the selector,
//! which would block the loop) and writes them with flow control.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{self, Read as _, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::task::{Poll, Waker};

use nix::errno::Errno;

use crate::base_loop::EventLoop;
use crate::driver::fd::SharedFd;
use crate::driver::ops::{PollAdd, Read};
use crate::driver::{Backend, Op};
use crate::error::{Error, Result};
use crate::protocols::{BaseProtocol, Protocol};
use crate::sock::Socket;
use crate::tasks::yield_now;
use crate::transports::Transport;
use crate::{RecvBuf, Type};

/// The most one `sendfile(2)` call moves on Linux.
const MAX_CALL: u64 = 0x7fff_f000;
/// Fallback block for a socket (asyncio's `SENDFILE_FALLBACK_READBUFFER_SIZE`).
const SOCK_BLOCK: u64 = 256 * 1024;
/// Fallback block for a transport: flow control bounds what is buffered
/// to its high-water mark plus one block.
const TRANSPORT_BLOCK: u64 = 64 * 1024;

fn check_count(count: Option<u64>) -> Result<()> {
    match count {
        Some(0) => Err(Error::InvalidArgument(
            "count must be a positive integer (got 0)".into(),
        )),
        _ => Ok(()),
    }
}

fn is_regular(file: &File) -> bool {
    file.metadata().is_ok_and(|m| m.file_type().is_file())
}

/// Sets the file position to `offset + sent` when dropped, if anything
/// was sent: after success, after an error and after a cancel (the
/// future dropped), as asyncio's `finally: file.seek(offset + total_sent)`.
struct Position<'a> {
    file: &'a File,
    offset: u64,
    sent: Cell<u64>,
}

impl Position<'_> {
    fn add(&self, n: u64) {
        self.sent.set(self.sent.get() + n);
    }

    /// The size of the next fallback block (at most `max`), or `None` once
    /// `count` bytes were sent.
    fn next_block(&self, count: Option<u64>, max: u64) -> Option<usize> {
        let sent = self.sent.get();
        match count {
            Some(c) if c <= sent => None,
            Some(c) => Some((c - sent).min(max) as usize),
            None => Some(max as usize),
        }
    }
}

impl Drop for Position<'_> {
    fn drop(&mut self) {
        let n = self.sent.get();
        if n > 0 {
            let mut f = self.file;
            let _ = f.seek(SeekFrom::Start(self.offset + n));
        }
    }
}

/// How the fallback reads blocks of the file.
struct Reader {
    fd: SharedFd,
    /// A blocking non-regular file on the selector: read on a worker
    /// thread (this handle moves there and back).
    thread: Option<File>,
}

impl EventLoop {
    /// The file as the fallback reads it: positioned at `offset`.
    fn fallback_reader(&self, file: &File, offset: u64) -> Result<Reader> {
        let regular = is_regular(file);
        if offset != 0 {
            let mut f = file;
            f.seek(SeekFrom::Start(offset)).map_err(|e| {
                Error::InvalidArgument(format!("cannot start at offset {offset}: {e}"))
            })?;
        }
        let dup = file.try_clone()?;
        let nonblocking = nix::fcntl::fcntl(&dup, nix::fcntl::FcntlArg::F_GETFL)
            .is_ok_and(|fl| fl & nix::libc::O_NONBLOCK != 0);
        let thread = (!regular && !nonblocking && self.core.backend == Backend::Selector)
            .then(|| dup.try_clone())
            .transpose()?;
        Ok(Reader {
            fd: SharedFd::new(OwnedFd::from(dup)),
            thread,
        })
    }

    /// Up to `n` bytes of the file at its position; empty at its end.
    async fn read_block(&self, r: &mut Reader, n: usize) -> Result<Vec<u8>> {
        if let Some(mut f) = r.thread.take() {
            let (f, res) = self
                .run_in_executor_impl(move || {
                    let mut v = vec![0; n];
                    let res = loop {
                        match f.read(&mut v) {
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            other => break other,
                        }
                    };
                    (
                        f,
                        res.map(|k| {
                            v.truncate(k);
                            v
                        }),
                    )
                })
                .await?;
            r.thread = Some(f);
            return Ok(res?);
        }
        loop {
            let op = Read::new(r.fd.clone(), Vec::with_capacity(n));
            let (res, op) = Op::submit(self.driver(), op).await;
            match op.finish(res) {
                (Err(e), _) if e.kind() == io::ErrorKind::Interrupted => {}
                (res, buf) => return res.map(|_| buf).map_err(Error::from),
            }
        }
    }

    /// `sendfile(2)` from `file` at `offset + pos.sent` to `sock` until
    /// `count` bytes or the end of the file. `Err(SendfileNotAvailable)`
    /// if the kernel refuses the pair before anything was sent.
    async fn sendfile_zero_copy(
        &self,
        sock: &SharedFd,
        file: &File,
        count: Option<u64>,
        pos: &Position<'_>,
        still_open: impl Fn() -> Result<()>,
    ) -> Result<()> {
        loop {
            still_open()?;
            let sent = pos.sent.get();
            let want = match count {
                Some(c) if c <= sent => return Ok(()),
                Some(c) => (c - sent).min(MAX_CALL),
                None => MAX_CALL,
            };
            let mut off = i64::try_from(pos.offset + sent)
                .map_err(|_| Error::InvalidArgument("offset out of range".into()))?;
            match nix::sys::sendfile::sendfile(sock.as_fd(), file, Some(&mut off), want as usize) {
                Ok(0) => return Ok(()), // the end of the file
                Ok(n) => {
                    pos.add(n as u64);
                    // One call per turn: the rest of the loop runs between.
                    yield_now().await;
                }
                Err(Errno::EAGAIN) => {
                    let op = PollAdd::on(sock.clone(), true);
                    let (res, _) = Op::submit(self.driver(), op).await;
                    res?;
                }
                Err(Errno::EINTR) => {}
                Err(e @ (Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::ENOTSOCK))
                    if pos.sent.get() == 0 =>
                {
                    return Err(Error::SendfileNotAvailable(format!(
                        "sendfile(2) refuses this file and socket: {e}"
                    )));
                }
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
    }

    /// See [`AbstractEventLoop::sock_sendfile`](crate::AbstractEventLoop::sock_sendfile).
    pub(crate) async fn sock_sendfile_impl(
        &self,
        sock: &Socket,
        file: &File,
        offset: u64,
        count: Option<u64>,
        fallback: bool,
    ) -> Result<u64> {
        self.check_open()?;
        check_count(count)?;
        if sock.with(|s| s.r#type())? != Type::STREAM {
            return Err(Error::InvalidArgument(
                "only SOCK_STREAM sockets are supported".into(),
            ));
        }
        let pos = Position {
            file,
            offset,
            sent: Cell::new(0),
        };
        if is_regular(file) {
            let lp = self.clone();
            match self
                .sendfile_zero_copy(sock.shared(), file, count, &pos, || lp.check_open())
                .await
            {
                Err(Error::SendfileNotAvailable(_)) if fallback => {}
                Err(e) => return Err(e),
                Ok(()) => return Ok(pos.sent.get()),
            }
        } else if !fallback {
            return Err(Error::SendfileNotAvailable("not a regular file".into()));
        }
        let mut r = self.fallback_reader(file, offset)?;
        while let Some(n) = pos.next_block(count, SOCK_BLOCK) {
            let block = self.read_block(&mut r, n).await?;
            if block.is_empty() {
                break;
            }
            let len = block.len() as u64;
            self.sock_sendall_impl(sock, block).await?;
            pos.add(len);
        }
        Ok(pos.sent.get())
    }

    /// See [`AbstractEventLoop::sendfile`](crate::AbstractEventLoop::sendfile).
    pub(crate) async fn sendfile_impl(
        &self,
        t: &Transport,
        file: &File,
        offset: u64,
        count: Option<u64>,
        fallback: bool,
    ) -> Result<u64> {
        self.check_open()?;
        check_count(count)?;
        if t.is_closing() {
            return Err(Error::closed("the transport is closing"));
        }
        let why = match t.as_stream() {
            None => Some("the transport is layered (TLS)"),
            Some(_) if !is_regular(file) => Some("not a regular file"),
            Some(_) => None,
        };
        let pos = Position {
            file,
            offset,
            sent: Cell::new(0),
        };
        match (t.as_stream(), why) {
            (Some(st), None) => {
                if st.set_sendfile(true) {
                    return Err(Error::state("sendfile is already in progress"));
                }
                // Reading pauses while the file goes out, and resumes after
                // (also when the future is dropped), unless it was paused.
                let was_reading = st.is_reading();
                let _restore = OnDrop(|| {
                    st.set_sendfile(false);
                    if was_reading && !st.is_closing() {
                        st.resume_reading();
                    }
                });
                st.pause_reading();
                // What was written before goes first.
                std::future::poll_fn(|cx| st.poll_write_idle(cx)).await?;
                let Some(fd) = st.sendfile_fd() else {
                    return Err(Error::closed("the transport is closing"));
                };
                let still_open = || match st.is_closing() {
                    true => Err(Error::closed("the transport closed during sendfile")),
                    false => Ok(()),
                };
                match self
                    .sendfile_zero_copy(&fd, file, count, &pos, still_open)
                    .await
                {
                    Err(Error::SendfileNotAvailable(_)) if fallback => {}
                    Err(e) => return Err(e),
                    Ok(()) => return Ok(pos.sent.get()),
                }
            }
            (_, Some(why)) if !fallback => {
                return Err(Error::SendfileNotAvailable(why.into()));
            }
            _ => {}
        }
        self.sendfile_fallback(t, file, offset, count, &pos).await?;
        Ok(pos.sent.get())
    }

    /// asyncio's `_sendfile_fallback`: the transport's protocol is swapped
    /// for one that reports flow control to this future (and passes
    /// everything else on), blocks are written while the transport is not
    /// paused, and the protocol is put back at the end (also on a drop).
    async fn sendfile_fallback(
        &self,
        t: &Transport,
        file: &File,
        offset: u64,
        count: Option<u64>,
        pos: &Position<'_>,
    ) -> Result<()> {
        let mut r = self.fallback_reader(file, offset)?;
        let st = Rc::new(FallbackState::default());
        let Some(orig) = t.set_protocol(Box::new(FallbackProtocol(st.clone()))) else {
            return Err(Error::closed("the transport has no protocol"));
        };
        *st.proto.borrow_mut() = Some(orig);
        st.paused.set(t.is_writing_paused());
        let _restore = RestoreProtocol {
            t,
            st: st.clone(),
            was_paused: t.is_writing_paused(),
            resume_reading: t.is_reading(),
        };
        t.pause_reading();
        loop {
            // Flow control: wait below the low-water mark.
            std::future::poll_fn(|cx| st.poll_ready(cx)).await?;
            if t.is_closing() {
                return Err(Error::closed("the transport closed during sendfile"));
            }
            let Some(n) = pos.next_block(count, TRANSPORT_BLOCK) else {
                break;
            };
            let block = self.read_block(&mut r, n).await?;
            if block.is_empty() {
                break;
            }
            let len = block.len() as u64;
            t.write(block)?;
            pos.add(len);
        }
        // Written is not sent: wait until the buffer is below its mark.
        std::future::poll_fn(|cx| st.poll_ready(cx)).await
    }
}

/// Runs its closure when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// What the fallback protocol tells the sendfile future.
#[derive(Default)]
struct FallbackState {
    /// The protocol the transport had, given back at the end.
    proto: RefCell<Option<Box<dyn Protocol>>>,
    paused: Cell<bool>,
    /// `Some` once the connection is lost (with its error).
    lost: RefCell<Option<Option<Error>>>,
    waker: RefCell<Option<Waker>>,
}

impl FallbackState {
    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn poll_ready(&self, cx: &mut std::task::Context<'_>) -> Poll<Result<()>> {
        if let Some(exc) = &*self.lost.borrow() {
            return Poll::Ready(Err(exc.clone().unwrap_or_else(|| {
                Error::closed("the connection was lost during sendfile")
            })));
        }
        if !self.paused.get() {
            return Poll::Ready(Ok(()));
        }
        *self.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }

    fn with_proto(&self, f: impl FnOnce(&mut dyn Protocol)) {
        if let Some(p) = self.proto.borrow_mut().as_mut() {
            f(&mut **p);
        }
    }
}

/// The transport's protocol during a fallback sendfile (asyncio's
/// `_SendfileFallbackProtocol`): flow control comes here; data, EOF and
/// the connection's loss still reach the real protocol.
struct FallbackProtocol(Rc<FallbackState>);

impl BaseProtocol for FallbackProtocol {
    fn connection_lost(&mut self, exc: Option<Error>) {
        *self.0.lost.borrow_mut() = Some(exc.clone());
        self.0.wake();
        self.0.with_proto(|p| p.connection_lost(exc));
    }
    fn pause_writing(&mut self) {
        self.0.paused.set(true);
    }
    fn resume_writing(&mut self) {
        self.0.paused.set(false);
        self.0.wake();
    }
    fn eof_received(&mut self) -> bool {
        let mut keep = false;
        self.0.with_proto(|p| keep = p.eof_received());
        keep
    }
}

impl Protocol for FallbackProtocol {
    fn data_received(&mut self, data: &[u8]) {
        self.0.with_proto(|p| p.data_received(data));
    }
    fn data_received_owned(&mut self, data: RecvBuf) {
        self.0.with_proto(|p| p.data_received_owned(data));
    }
}

/// Puts the transport's protocol back after a fallback sendfile, however
/// it ends, and tells it what flow control it missed.
struct RestoreProtocol<'a> {
    t: &'a Transport,
    st: Rc<FallbackState>,
    was_paused: bool,
    resume_reading: bool,
}

impl Drop for RestoreProtocol<'_> {
    fn drop(&mut self) {
        let Some(mut p) = self.st.proto.borrow_mut().take() else {
            return;
        };
        if self.st.lost.borrow().is_some() {
            // It was told of the loss; the transport has let go of its
            // protocol, and must not get one back (a protocol holding its
            // transport would make a cycle).
            return;
        }
        let paused = self.t.is_writing_paused();
        if self.was_paused && !paused {
            p.resume_writing();
        } else if !self.was_paused && paused {
            p.pause_writing();
        }
        drop(self.t.set_protocol(p));
        if self.resume_reading && !self.t.is_closing() {
            self.t.resume_reading();
        }
    }
}
