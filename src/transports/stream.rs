//! The socket stream transport (TCP and Unix): a reader task and a writer
//! task per connection, both on the driver's owned-buffer ops.
//!
//! Writes made during a loop turn are queued and the writer is stepped at
//! the end of that turn, so they leave in one `sendmsg` (writev) with the
//! next driver wait. The reader keeps one receive in flight while reading is
//! on; `pause_reading` cancels it (data it already got is kept by the driver
//! for the next receive).
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::{Buf, Bytes};

use super::cell::{Failure, ProtoCell};
use super::{ExtraInfo, buffer_limits};
use crate::base_loop::EventLoop;
use crate::driver::ops::{Recv, SendMsg};
use crate::driver::pool::{PooledBuf, RecvPooled};
use crate::driver::{MultiOp, Op};
use crate::error::{Error, Result};
use crate::events::ExceptionContext;
use crate::protocols::Protocol;
use crate::sock::{SockAddr, Socket};
use crate::tasks::TaskRef;

/// Receive size per read (asyncio's selector reads up to 256 KiB; 64 KiB
/// keeps memory per active connection modest).
const READ_SIZE: usize = 64 * 1024;
/// At most this many buffers go into one `sendmsg`.
const MAX_IOV: usize = 1024;

#[derive(Default)]
struct State {
    wbuf: VecDeque<Bytes>,
    wsize: usize,
    high: usize,
    low: usize,
    protocol_paused: bool,
    writer_idle: bool,
    closing: bool,
    eof_requested: bool,
    eof_sent: bool,
    reading: bool,
    read_eof: bool,
    lost: bool,
}

struct Inner {
    lp: EventLoop,
    sock: RefCell<Option<Socket>>,
    fd: RawFdCell,
    peer: Option<SockAddr>,
    local: Option<SockAddr>,
    protocol: ProtoCell<dyn Protocol>,
    st: RefCell<State>,
    reader: RefCell<Option<TaskRef>>,
    writer: RefCell<Option<TaskRef>>,
    read_waker: RefCell<Option<Waker>>,
    write_waker: RefCell<Option<Waker>>,
    on_lost: RefCell<Vec<Box<dyn FnOnce()>>>,
}

#[derive(Clone, Copy)]
struct RawFdCell(std::os::fd::RawFd);

/// A connected stream transport (TCP or Unix socket).
///
/// Equivalent to asyncio's socket transports (`_SelectorSocketTransport` /
/// `_ProactorSocketTransport`): the same code on both backends. Clones are
/// handles to one transport. The protocol gets a handle in
/// `connection_made`; the transport owns the protocol until
/// `connection_lost`, after which both are released.
#[derive(Clone)]
pub struct Transport(Rc<Inner>);

/// The fallback receive with an owned buffer (when the pool ran dry).
type PlainRecv = Pin<Box<Op<Recv<Vec<u8>>>>>;

enum ReadStep {
    /// A pool buffer's worth of data.
    Pooled(PooledBuf),
    /// Data from a plain receive (fallback when the pool ran dry).
    Owned(Vec<u8>),
    /// Data cancelled receives had kept.
    Stashed(Vec<Vec<u8>>),
    Eof,
    Failed(io::Error),
    Stop,
}

enum WriteStep {
    Send,
    Eof,
    Finish,
    Stop,
}

impl Transport {
    /// Wraps a connected socket and starts it: `connection_made` runs
    /// through the loop (never synchronously), then reading begins.
    pub(crate) fn start(lp: &EventLoop, sock: Socket, protocol: Box<dyn Protocol>) -> Transport {
        let peer = sock.peer_addr().ok();
        let local = sock.local_addr().ok();
        let fd = RawFdCell(std::os::fd::AsRawFd::as_raw_fd(&sock));
        let (high, low) = buffer_limits(None, None).expect("default limits are valid");
        let t = Transport(Rc::new(Inner {
            lp: lp.clone(),
            sock: RefCell::new(Some(sock)),
            fd,
            peer,
            local,
            protocol: ProtoCell::new(protocol),
            st: RefCell::new(State {
                high,
                low,
                reading: true,
                writer_idle: true,
                ..Default::default()
            }),
            reader: RefCell::new(None),
            writer: RefCell::new(None),
            read_waker: RefCell::new(None),
            write_waker: RefCell::new(None),
            on_lost: RefCell::new(Vec::new()),
        }));
        let t2 = t.clone();
        let reader = lp.spawn_internal(async move { t2.read_loop().await });
        *t.0.reader.borrow_mut() = Some(reader.as_ref());
        let t3 = t.clone();
        let writer = lp.spawn_internal(async move { t3.write_loop().await });
        *t.0.writer.borrow_mut() = Some(writer.as_ref());
        t
    }

    /// Runs `f` when the connection is lost (servers count connections).
    pub(crate) fn on_lost(&self, f: impl FnOnce() + 'static) {
        if self.0.st.borrow().lost {
            f();
        } else {
            self.0.on_lost.borrow_mut().push(Box::new(f));
        }
    }

    /// Calls the protocol (deferred while it is inside another callback);
    /// a panic is reported and costs this connection only.
    fn call_protocol(&self, f: impl FnOnce(&mut dyn Protocol) + 'static) {
        if let Err(msg) = self.0.protocol.call(f) {
            self.protocol_panicked(msg);
        }
    }

    fn protocol_panicked(&self, msg: String) {
        self.0.lp.call_exception_handler_impl(ExceptionContext {
            message: "Fatal error: a protocol callback panicked".into(),
            exception: Some(Error::Panic(msg.clone())),
            protocol: Some("Protocol".into()),
            transport: Some(format!("{self:?}")),
            ..Default::default()
        });
        self.force_close(Some(Error::Panic(msg)));
    }

    async fn read_loop(self) {
        let inner = &self.0;
        self.call_protocol({
            let t = self.clone();
            move |p| p.connection_made(t)
        });
        let pool = inner.lp.driver().borrow().pool();
        // Multishot receive into the loop's pool: no buffer is held while
        // the connection is idle. After the pool ran dry (ENOBUFS), one plain
        // receive with its own buffer keeps the connection moving.
        let mut multi: Option<MultiOp> = None;
        let mut plain: Option<PlainRecv> = None;
        let mut dry = false;
        loop {
            let step = std::future::poll_fn(|cx| {
                let st = inner.st.borrow();
                if st.closing || st.lost || st.read_eof {
                    return Poll::Ready(ReadStep::Stop);
                }
                {
                    let mut w = inner.read_waker.borrow_mut();
                    if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *w = Some(cx.waker().clone());
                    }
                }
                if !st.reading {
                    // Paused: cancel the receive in flight; what it already
                    // got stays with the driver for the next receive.
                    multi = None;
                    plain = None;
                    return Poll::Pending;
                }
                drop(st);
                let Some(fd) = inner.sock.borrow().as_ref().map(|s| s.shared().clone()) else {
                    return Poll::Ready(ReadStep::Stop);
                };
                if multi.is_none() && plain.is_none() {
                    let kept = inner.lp.driver().borrow_mut().take_stashed(&fd);
                    if !kept.is_empty() {
                        return Poll::Ready(ReadStep::Stashed(kept));
                    }
                    if dry {
                        dry = false;
                        let buf = Vec::with_capacity(READ_SIZE);
                        plain = Some(Box::pin(Op::submit(inner.lp.driver(), Recv::new(fd, buf))));
                    } else {
                        let op = RecvPooled {
                            fd,
                            pool: pool.clone(),
                        };
                        multi = Some(MultiOp::submit(inner.lp.driver(), Box::new(op)));
                    }
                }
                if let Some(p) = plain.as_mut() {
                    return match p.as_mut().poll(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready((res, recv)) => {
                            plain = None;
                            let (r, b) = recv.finish(res);
                            Poll::Ready(match r {
                                Ok(0) => ReadStep::Eof,
                                Ok(_) => ReadStep::Owned(b),
                                Err(e) => ReadStep::Failed(e),
                            })
                        }
                    };
                }
                let m = multi.as_mut().expect("armed above");
                match m.poll_next(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Some(Ok(0))) => Poll::Ready(ReadStep::Eof),
                    Poll::Ready(Some(Ok(v))) => match PooledBuf::from_completion(&pool, v) {
                        Some(b) => Poll::Ready(ReadStep::Pooled(b)),
                        None => Poll::Ready(ReadStep::Failed(io::Error::other(
                            "receive completed without a pool buffer",
                        ))),
                    },
                    Poll::Ready(Some(Err(e))) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        multi = None;
                        dry = true;
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(ReadStep::Failed(e)),
                    // The kernel ended the multishot: arm a new one.
                    Poll::Ready(None) => {
                        multi = None;
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                }
            })
            .await;
            let delivered = match step {
                ReadStep::Stop => return,
                ReadStep::Eof => {
                    self.eof();
                    return;
                }
                ReadStep::Failed(e) => {
                    self.force_close(Some(e.into()));
                    return;
                }
                ReadStep::Pooled(buf) => self.deliver(&buf),
                ReadStep::Owned(buf) => self.deliver(&buf),
                ReadStep::Stashed(chunks) => chunks.iter().all(|c| self.deliver(c)),
            };
            if !delivered {
                return;
            }
        }
    }

    /// Hands received bytes to the protocol; false if the protocol failed.
    fn deliver(&self, data: &[u8]) -> bool {
        match self.0.protocol.invoke(|p| p.data_received(data)) {
            Ok(_) => true,
            Err(Failure::Panic(m)) => {
                self.protocol_panicked(m);
                false
            }
            // Only reachable if a protocol drives another transport's
            // reader synchronously: keep the order by deferring a copy.
            Err(Failure::Busy) => {
                let copy = data.to_vec();
                self.call_protocol(move |p| p.data_received(&copy));
                true
            }
        }
    }

    fn eof(&self) {
        self.0.st.borrow_mut().read_eof = true;
        let keep = Rc::new(Cell::new(false));
        let k = keep.clone();
        self.call_protocol(move |p| k.set(p.eof_received()));
        if !keep.get() {
            self.close();
        } else if self.0.st.borrow().eof_sent {
            // Both directions are done.
            self.close();
        }
    }

    async fn write_loop(self) {
        let inner = &self.0;
        let mut spare: Option<Box<SendMsg<Bytes>>> = None;
        loop {
            let step = std::future::poll_fn(|cx| {
                let mut st = inner.st.borrow_mut();
                if st.lost {
                    return Poll::Ready(WriteStep::Stop);
                }
                if !st.wbuf.is_empty() {
                    st.writer_idle = false;
                    return Poll::Ready(WriteStep::Send);
                }
                if st.eof_requested && !st.eof_sent {
                    return Poll::Ready(WriteStep::Eof);
                }
                if st.closing {
                    return Poll::Ready(WriteStep::Finish);
                }
                st.writer_idle = true;
                let mut w = inner.write_waker.borrow_mut();
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                Poll::Pending
            })
            .await;
            match step {
                WriteStep::Stop => return,
                WriteStep::Finish => {
                    self.connection_lost(None);
                    return;
                }
                WriteStep::Eof => {
                    let r = inner
                        .sock
                        .borrow()
                        .as_ref()
                        .map(|s| s.shutdown(std::net::Shutdown::Write));
                    inner.st.borrow_mut().eof_sent = true;
                    if let Some(Err(e)) = r {
                        self.force_close(Some(e));
                        return;
                    }
                    if inner.st.borrow().read_eof {
                        self.close();
                    }
                }
                WriteStep::Send => {
                    // The buffers move into the op (no clone); what the
                    // kernel did not take goes back to the front of the queue.
                    // The boxed op is reused from send to send.
                    let mut op = match spare.take() {
                        Some(op) => op,
                        None => {
                            let Some(fd) = inner.sock.borrow().as_ref().map(|s| s.shared().clone())
                            else {
                                return;
                            };
                            Box::new(SendMsg::new(fd, Vec::new(), None))
                        }
                    };
                    {
                        let mut st = inner.st.borrow_mut();
                        let k = st.wbuf.len().min(MAX_IOV);
                        op.bufs.extend(st.wbuf.drain(..k));
                    }
                    let (res, mut op) = Op::submit_box(inner.lp.driver(), op).await;
                    let n = match res {
                        Ok(n) => n as usize,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                        Err(e) => {
                            self.force_close(Some(e.into()));
                            return;
                        }
                    };
                    self.sent(&mut op.bufs, n);
                    spare = Some(op);
                }
            }
        }
    }

    /// The kernel took `n` bytes of `bufs` (taken from the queue's front):
    /// put the rest back in front, and maybe resume the protocol.
    fn sent(&self, bufs: &mut Vec<Bytes>, mut n: usize) {
        let resume = {
            let mut st = self.0.st.borrow_mut();
            st.wsize -= n;
            let mut i = 0;
            while i < bufs.len() && bufs[i].len() <= n {
                n -= bufs[i].len();
                i += 1;
            }
            if i < bufs.len() {
                bufs[i].advance(n);
                for b in bufs.drain(i..).rev() {
                    st.wbuf.push_front(b);
                }
            }
            bufs.clear();
            if st.protocol_paused && st.wsize <= st.low {
                st.protocol_paused = false;
                true
            } else {
                false
            }
        };
        if resume {
            self.call_protocol(|p| p.resume_writing());
        }
    }

    /// Queues `data` for sending; it leaves with the next driver wait,
    /// together with everything else written during this loop turn.
    ///
    /// Equivalent to `WriteTransport.write`. Over the high-water mark the
    /// protocol's `pause_writing` is called (once, until `resume_writing`).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the transport is closing or closed;
    /// [`Error::InvalidState`] after [`write_eof`](Self::write_eof).
    pub fn write(&self, data: impl Into<Bytes>) -> Result<()> {
        let data = data.into();
        let kick = {
            let mut st = self.0.st.borrow_mut();
            if st.closing || st.lost {
                return Err(Error::closed("transport is closing"));
            }
            if st.eof_requested {
                return Err(Error::state("cannot write after write_eof()"));
            }
            if data.is_empty() {
                return Ok(());
            }
            st.wsize += data.len();
            st.wbuf.push_back(data);
            std::mem::replace(&mut st.writer_idle, false)
        };
        if kick {
            self.kick_writer();
        }
        self.maybe_pause();
        Ok(())
    }

    /// Over the high-water mark and not paused yet: pause the protocol
    /// (once, until `resume_writing`).
    fn maybe_pause(&self) {
        let pause = {
            let mut st = self.0.st.borrow_mut();
            let over = !st.protocol_paused && st.wsize > st.high;
            st.protocol_paused |= over;
            over
        };
        if pause {
            self.call_protocol(|p| p.pause_writing());
        }
    }

    /// Writes each buffer in turn. Equivalent to `WriteTransport.writelines`.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    pub fn writelines<I, B>(&self, bufs: I) -> Result<()>
    where
        I: IntoIterator<Item = B>,
        B: Into<Bytes>,
    {
        for b in bufs {
            self.write(b)?;
        }
        Ok(())
    }

    /// Closes the write side after the buffered data is sent.
    /// Equivalent to `WriteTransport.write_eof`.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the transport is closing.
    pub fn write_eof(&self) -> Result<()> {
        let mut st = self.0.st.borrow_mut();
        if st.closing || st.lost {
            return Err(Error::closed("transport is closing"));
        }
        if st.eof_requested {
            return Ok(());
        }
        st.eof_requested = true;
        drop(st);
        self.kick_writer();
        Ok(())
    }

    /// True: stream sockets can half-close. Equivalent to `can_write_eof`.
    pub fn can_write_eof(&self) -> bool {
        true
    }

    fn kick_writer(&self) {
        if let Some(w) = self.0.writer.borrow().as_ref() {
            self.0.lp.core.step_at_turn_end(w);
        }
    }

    fn kick_reader(&self) {
        if let Some(w) = self.0.read_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Closes the transport once the buffered data is sent; no more data is
    /// received. `connection_lost(None)` follows through the loop.
    ///
    /// Equivalent to `BaseTransport.close`. Idempotent.
    pub fn close(&self) {
        {
            let mut st = self.0.st.borrow_mut();
            if st.closing || st.lost {
                return;
            }
            st.closing = true;
        }
        self.kick_reader();
        self.kick_writer();
    }

    /// Closes at once, dropping buffered data; `connection_lost(None)`
    /// follows through the loop. Equivalent to `WriteTransport.abort`.
    pub fn abort(&self) {
        self.force_close(None);
    }

    fn force_close(&self, exc: Option<Error>) {
        {
            let mut st = self.0.st.borrow_mut();
            if st.lost {
                return;
            }
            st.closing = true;
            st.wbuf.clear();
            st.wsize = 0;
        }
        self.connection_lost(exc);
    }

    /// Delivers `connection_lost` (exactly once, through the loop), then
    /// releases the protocol, the socket and the tasks.
    fn connection_lost(&self, exc: Option<Error>) {
        {
            let mut st = self.0.st.borrow_mut();
            if st.lost {
                return;
            }
            st.lost = true;
        }
        self.kick_reader();
        let t = self.clone();
        self.0.lp.call_soon_impl(
            Box::new(move || {
                t.call_protocol(move |p| p.connection_lost(exc));
                let inner = &t.0;
                inner.protocol.release();
                inner.sock.borrow_mut().take();
                for task in [
                    inner.reader.borrow_mut().take(),
                    inner.writer.borrow_mut().take(),
                ]
                .into_iter()
                .flatten()
                {
                    task.cancel(None);
                }
                let hooks = std::mem::take(&mut *inner.on_lost.borrow_mut());
                for h in hooks {
                    h();
                }
            }),
            "connection_lost",
        );
    }

    /// True once [`close`](Self::close) or [`abort`](Self::abort) was
    /// called or the connection was lost. Equivalent to `is_closing`.
    pub fn is_closing(&self) -> bool {
        let st = self.0.st.borrow();
        st.closing || st.lost
    }

    /// Stops receiving until [`resume_reading`](Self::resume_reading).
    /// Equivalent to `ReadTransport.pause_reading`; idempotent.
    pub fn pause_reading(&self) {
        self.0.st.borrow_mut().reading = false;
        self.kick_reader();
    }

    /// Receives again. Equivalent to `ReadTransport.resume_reading`.
    pub fn resume_reading(&self) {
        self.0.st.borrow_mut().reading = true;
        self.kick_reader();
    }

    /// True while receiving. Equivalent to `ReadTransport.is_reading`.
    pub fn is_reading(&self) -> bool {
        let st = self.0.st.borrow();
        st.reading && !st.closing && !st.lost && !st.read_eof
    }

    /// True while the write buffer is over its high-water mark (between
    /// `pause_writing` and `resume_writing`).
    ///
    /// asyncio calls `pause_writing` from inside `write`; a Rust protocol
    /// is already mutably borrowed while one of its own callbacks writes, so
    /// there the call comes right after that callback returns. A callback
    /// that writes in a loop checks this instead.
    pub fn is_writing_paused(&self) -> bool {
        self.0.st.borrow().protocol_paused
    }

    /// Bytes buffered for sending. Equivalent to `get_write_buffer_size`.
    pub fn get_write_buffer_size(&self) -> usize {
        self.0.st.borrow().wsize
    }

    /// `(low, high)` water marks. Equivalent to `get_write_buffer_limits`.
    pub fn get_write_buffer_limits(&self) -> (usize, usize) {
        let st = self.0.st.borrow();
        (st.low, st.high)
    }

    /// Sets the water marks (`high` defaults to 64 KiB, `low` to `high / 4`).
    /// Equivalent to `set_write_buffer_limits`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `low > high`.
    pub fn set_write_buffer_limits(&self, high: Option<usize>, low: Option<usize>) -> Result<()> {
        let (high, low) = buffer_limits(high, low)?;
        {
            let mut st = self.0.st.borrow_mut();
            st.high = high;
            st.low = low;
        }
        self.maybe_pause();
        Ok(())
    }

    /// Transport information by asyncio's names: `"peername"`,
    /// `"sockname"`, `"socket"` (the fd). Equivalent to `get_extra_info`.
    pub fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        match name {
            "peername" => self.0.peer.clone().map(ExtraInfo::Address),
            "sockname" => self.0.local.clone().map(ExtraInfo::Address),
            "socket" => Some(ExtraInfo::Fd(self.0.fd.0)),
            _ => None,
        }
    }

    /// The peer's address, if known.
    pub fn peername(&self) -> Option<SockAddr> {
        self.0.peer.clone()
    }

    /// The local address, if known.
    pub fn sockname(&self) -> Option<SockAddr> {
        self.0.local.clone()
    }

    /// Replaces the protocol; returns the old one. Equivalent to
    /// `set_protocol` (and, through the return value, `get_protocol`).
    pub fn set_protocol(&self, protocol: Box<dyn Protocol>) -> Option<Box<dyn Protocol>> {
        self.0.protocol.replace(protocol)
    }

    /// The loop the transport runs on.
    pub fn get_loop(&self) -> EventLoop {
        self.0.lp.clone()
    }

    /// True if both handles are the same transport.
    pub fn same(&self, other: &Transport) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.0.st.borrow();
        write!(
            f,
            "<Transport fd={} peer={:?} closing={} lost={} buffered={}>",
            self.0.fd.0,
            self.0.peer.as_ref().and_then(|a| a.as_socket()),
            st.closing,
            st.lost,
            st.wsize
        )
    }
}
