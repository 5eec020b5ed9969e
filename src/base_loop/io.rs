//! The loop's I/O API for transports: a stream receive, a reusable send
//! and an end-of-turn call, whose completions reach the transport as
//! [`IoEvent`]s through its [`IoHandler`]. Transports see data, EOF, an
//! error or bytes sent; the driver's ops, tokens and the receive pool's
//! policy (its ring running dry, the plain-receive fallback, its growth)
//! stay below this line.

use std::io;
use std::rc::Rc;

use super::EventLoop;
use crate::driver::buf::WriteBuf;
pub(crate) use crate::driver::fd::SharedFd;
use crate::driver::ops::{PollAdd, Read, Recv, RecvFrom, SendMsg};
use crate::driver::pool::{PoolRef, RecvBuf, RecvPooled};
use crate::driver::{Done, Event, HandlerOp, MultiOp, Notify, ReusableOp};
use crate::sock::SockAddr;
use std::os::fd::RawFd;

/// Receive size of the plain receive used while the pool is dry.
const PLAIN_READ_SIZE: usize = 64 * 1024;

/// What a transport implements to hear of its I/O: the loop calls it from
/// its ready queue (never inside the driver). An event may belong to none
/// of the transport's live operations (one it gave up in the same turn):
/// each handle's `take` says whether it is its own.
pub(crate) trait IoHandler: 'static {
    fn on_io(self: Rc<Self>, ev: IoEvent);
}

/// One I/O event, opaque to the transport: ask the handles what it is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IoEvent(Event);

impl IoEvent {
    /// The end-of-turn call asked for with [`EventLoop::call_at_turn_end`].
    #[inline]
    pub(crate) fn is_turn_end(&self) -> bool {
        matches!(self.0, Event::TurnEnd)
    }

    /// A receive result that belongs to no live receive: one the transport
    /// gave up while results were still queued (it closed, or the receive
    /// ended on EOF or an error with data queued behind it). Data only.
    pub(crate) fn stale_data(&self, pool: &PoolRef) -> Option<RecvBuf> {
        match self.0 {
            Event::Completed(_, Done { res: Ok(v), .. }) => RecvBuf::from_completion(pool, v),
            _ => None,
        }
    }
}

impl<T: IoHandler> Notify for T {
    #[inline]
    fn notify(self: Rc<Self>, ev: Event) {
        self.on_io(IoEvent(ev));
    }
}

impl EventLoop {
    /// Calls `h` with a turn-end event at the end of this loop turn (the
    /// caller keeps its own flag so it asks once per turn).
    pub(crate) fn call_at_turn_end<T: IoHandler>(&self, h: &Rc<T>) {
        self.core.call_at_turn_end(h.clone());
    }

    /// Registers a live transport, to be told if the loop closes under it.
    /// Hands the kernel what is queued now, mid-turn and without waiting
    /// (the proactor's one extra `io_uring_enter`; nothing on the
    /// selector, whose sends are syscalls made at once). For a layer that
    /// just spent long on one connection: see `StreamTransport::send_now`.
    pub(crate) fn submit_now(&self) {
        self.core.driver.borrow_mut().submit_queued();
    }

    pub(crate) fn register_transport(&self, t: std::rc::Weak<dyn super::LoopClosing>) -> usize {
        self.core.register_transport(t)
    }

    /// The transport is gone: the loop need not tell it.
    pub(crate) fn unregister_transport(&self, key: usize) {
        self.core.unregister_transport(key);
    }
}

/// What a stream receive got ([`StreamRecv::take`]).
pub(crate) enum Received {
    /// Bytes in a receive-pool buffer, in order.
    Data(RecvBuf),
    /// Bytes of a plain receive (while the pool is dry), in order.
    Bytes(Vec<u8>),
    /// The peer closed its side.
    Eof,
    /// The receive failed: the connection is broken.
    Error(io::Error),
    /// The receive ended without data (paused, or the pool ran dry):
    /// [`StreamRecv::start`] again while reading.
    Ended,
    /// The socket is readable (readiness mode, [`StreamRecv::set_by_readiness`]):
    /// the layer above reads it itself, through a [`SocketInput`].
    Readable,
}

/// The receive side of a stream socket: at most one receive in flight, a
/// multishot receive into the loop's pool (no buffer held while the
/// connection is idle), or one plain receive after the pool ran dry.
/// Pausing asks the multishot receive to end but keeps hearing it: its
/// last results still come, and nothing newer before its end, so a
/// transport that keeps them for the resume loses nothing.
pub(crate) struct StreamRecv {
    lp: EventLoop,
    fd: SharedFd,
    pool: PoolRef,
    multi: Option<MultiOp>,
    plain: Option<Plain>,
    /// The pool ran dry: the next receive is a plain one.
    dry: bool,
    /// The fd is a pipe: `read`, not `recv`.
    pipe: bool,
    /// Multishot receives are possible (false for pipes on a proactor
    /// without multishot read: every receive is a plain one).
    multishot: bool,
    /// `multi` was asked to end; its final completion is still to come.
    cancelling: bool,
    /// Readiness mode: a receive is a wait for the socket to be readable,
    /// and the layer above reads it itself.
    by_readiness: bool,
    /// That wait (kept in the driver between uses).
    ready: Option<ReusableOp<PollAdd>>,
}

/// A plain receive: `recv` on a socket, `read` on a pipe.
enum Plain {
    Sock(HandlerOp<Recv<Vec<u8>>>),
    Pipe(HandlerOp<Read<Vec<u8>>>),
}

impl Plain {
    fn is(&self, tok: crate::driver::Token) -> bool {
        match self {
            Plain::Sock(p) => p.is(tok),
            Plain::Pipe(p) => p.is(tok),
        }
    }

    fn take(&mut self) -> Option<(io::Result<usize>, Vec<u8>)> {
        match self {
            Plain::Sock(p) => p.take().map(|(res, op)| op.finish(res)),
            Plain::Pipe(p) => p.take().map(|(res, op)| op.finish(res)),
        }
    }
}

impl StreamRecv {
    pub(crate) fn new(lp: &EventLoop, fd: SharedFd) -> StreamRecv {
        StreamRecv {
            pool: lp.core.driver.borrow().pool(),
            lp: lp.clone(),
            fd,
            multi: None,
            plain: None,
            dry: false,
            pipe: false,
            multishot: true,
            cancelling: false,
            by_readiness: false,
            ready: None,
        }
    }

    /// Readiness mode on or off. On: from now on a receive waits for the
    /// socket to be readable and reports [`Received::Readable`], and the
    /// layer above reads the socket itself (TLS reads it into rustls's
    /// buffer, the one copy tokio-rustls makes too). A multishot receive
    /// in flight is asked to end and goes on until it does, so nothing it
    /// gets comes after what is read directly; and while a cancelled
    /// receive's data may still be kept for this socket, a pool receive
    /// takes it first (see `start`). Off: a readiness wait in flight goes
    /// (it holds no data) and the next receive is a pool receive.
    pub(crate) fn set_by_readiness(&mut self, on: bool) {
        if self.pipe || self.by_readiness == on {
            return;
        }
        self.by_readiness = on;
        if on {
            if let (Some(m), false) = (&self.multi, self.cancelling) {
                self.cancelling = true;
                m.cancel();
            }
        } else {
            self.drop_wait();
        }
    }

    /// Drops a readiness wait in flight (it holds no data).
    fn drop_wait(&mut self) {
        if self.ready.as_ref().is_some_and(ReusableOp::in_flight) {
            self.ready = None;
        }
    }

    /// The receive side of a pipe (or another non-socket stream fd).
    pub(crate) fn for_pipe(lp: &EventLoop, fd: SharedFd) -> StreamRecv {
        let mut r = StreamRecv::new(lp, fd);
        r.pipe = true;
        r.multishot = lp.core.driver.borrow().read_multishot();
        r
    }

    /// The loop's receive pool (for [`IoEvent::stale_data`]).
    pub(crate) fn pool(&self) -> &PoolRef {
        &self.pool
    }

    /// A receive is in flight (or ending).
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.multi.is_some()
            || self.plain.is_some()
            || self.ready.as_ref().is_some_and(ReusableOp::in_flight)
    }

    /// Starts a receive whose results go to `h`, unless one is in flight.
    pub(crate) fn start<T: IoHandler>(&mut self, h: &Rc<T>) {
        let h: Rc<dyn Notify> = h.clone();
        if self.active() {
            return;
        }
        let driver = self.lp.driver();
        if self.by_readiness && !self.fd.gate_held() {
            let op = self.ready.get_or_insert_with(|| {
                ReusableOp::new(driver, Box::new(PollAdd::on(self.fd.clone(), false)), &h)
            });
            op.submit_with(|_| {});
            return;
        }
        if std::mem::take(&mut self.dry) || !self.multishot {
            let (fd, buf) = (self.fd.clone(), Vec::with_capacity(PLAIN_READ_SIZE));
            self.plain = Some(if self.pipe {
                Plain::Pipe(HandlerOp::submit(driver, Box::new(Read::new(fd, buf)), h))
            } else {
                Plain::Sock(HandlerOp::submit(driver, Box::new(Recv::new(fd, buf)), h))
            });
        } else {
            let op = Box::new(RecvPooled::new(
                self.fd.clone(),
                self.pool.clone(),
                self.pipe,
            ));
            self.multi = Some(MultiOp::submit_stream(driver, op, h));
        }
    }

    /// Reading paused: the multishot receive is asked to end (its last
    /// results still come to [`take`](Self::take)); a plain receive stays.
    pub(crate) fn pause(&mut self) {
        if let (Some(m), false) = (&self.multi, self.cancelling) {
            self.cancelling = true;
            m.cancel();
        }
        self.drop_wait();
    }

    /// Drops the receive (the transport is closing): what is still in
    /// flight is cancelled, and what it gets kept by the driver.
    pub(crate) fn stop(&mut self) {
        self.multi = None;
        self.plain = None;
        self.cancelling = false;
        self.ready = None;
    }

    /// What `ev` brought this receive, if it is its own.
    #[inline]
    pub(crate) fn take(&mut self, ev: &IoEvent) -> Option<Received> {
        match ev.0 {
            Event::Completed(tok, done) if self.multi.as_ref().is_some_and(|m| m.is(tok)) => {
                Some(self.on_multi(done))
            }
            Event::Ready(tok) if self.plain.as_ref().is_some_and(|p| p.is(tok)) => {
                let (r, buf) = self.plain.as_mut()?.take()?;
                self.plain = None;
                Some(match r {
                    Ok(0) => Received::Eof,
                    Ok(_) => Received::Bytes(buf),
                    Err(e) => Received::Error(e),
                })
            }
            Event::Completed(tok, done)
                if self
                    .ready
                    .as_ref()
                    .is_some_and(|r| r.is(tok) && r.in_flight()) =>
            {
                self.ready.as_mut()?.completed(|_| {});
                Some(match done.res {
                    // (Readable, or an error or hang-up the read will see.)
                    Ok(_) => Received::Readable,
                    Err(libc::ECANCELED) => Received::Ended,
                    Err(e) => Received::Error(io::Error::from_raw_os_error(e)),
                })
            }
            _ => None,
        }
    }

    /// The socket, for the layer that reads it itself (readiness mode).
    pub(crate) fn input(&self, budget: usize) -> SocketInput {
        self.lp.driver().borrow_mut().count_readiness_read();
        SocketInput {
            fd: self.fd.raw(),
            taken: 0,
            budget,
            end: None,
        }
    }

    #[inline]
    fn on_multi(&mut self, done: Done) -> Received {
        // Anything but data ends the receive, as does the kernel's last
        // completion.
        if done.last || !matches!(done.res, Ok(v) if v != 0) {
            self.multi = None;
            self.cancelling = false;
        }
        match done.res {
            Ok(0) => Received::Eof,
            Ok(v) => match RecvBuf::from_completion(&self.pool, v) {
                Some(b) => Received::Data(b),
                None => {
                    Received::Error(io::Error::other("receive completed without a pool buffer"))
                }
            },
            Err(libc::ENOBUFS) => {
                // The proactor's buffer ring ran dry: it holds more from
                // now on, and one plain receive keeps this connection going.
                self.pool.borrow_mut().ran_dry();
                self.dry = true;
                Received::Ended
            }
            Err(libc::ECANCELED) => Received::Ended,
            Err(e) => Received::Error(io::Error::from_raw_os_error(e)),
        }
    }

    /// Data cancelled receives kept for this socket, in order.
    pub(crate) fn take_kept(&self) -> Vec<Vec<u8>> {
        self.lp.driver().borrow_mut().take_stashed(&self.fd)
    }

    /// Keeps `data` for the next receive (it arrived while paused).
    pub(crate) fn keep(&self, data: Vec<u8>) {
        self.lp.driver().borrow_mut().stash_data(&self.fd, data);
    }
}

/// Why a [`SocketInput`] stopped giving bytes.
#[derive(Debug)]
pub(crate) enum InputEnd {
    /// The socket has nothing more now (`EAGAIN`, or a short read).
    WouldBlock,
    /// The peer closed its side.
    Eof,
    /// The receive failed: the connection is broken.
    Error(io::Error),
    /// This readiness event's budget is spent (more may be waiting).
    Budget,
}

/// A readable socket as an [`io::Read`] for the layer that reads it itself
/// (readiness mode): each `read` is one `recv(2)`, until the socket would
/// block (or gave less than asked), reports EOF or an error, or `budget`
/// bytes were taken (one connection does not hold the loop).
/// [`end`](Self::end) says which.
pub(crate) struct SocketInput {
    fd: RawFd,
    taken: usize,
    budget: usize,
    end: Option<InputEnd>,
}

impl SocketInput {
    /// Bytes taken so far.
    pub(crate) fn taken(&self) -> usize {
        self.taken
    }

    /// It gives nothing more for this event.
    pub(crate) fn exhausted(&self) -> bool {
        self.end.is_some()
    }

    /// Why it stopped (`None`: the reader stopped on its own).
    pub(crate) fn end(self) -> Option<InputEnd> {
        self.end
    }
}

impl io::Read for SocketInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.end.is_some() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self.taken >= self.budget {
            self.end = Some(InputEnd::Budget);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        loop {
            match nix::sys::socket::recv(self.fd, buf, nix::sys::socket::MsgFlags::empty()) {
                Ok(0) if !buf.is_empty() => {
                    self.end = Some(InputEnd::Eof);
                    return Ok(0);
                }
                Ok(n) => {
                    self.taken += n;
                    if n < buf.len() {
                        // A short read: the socket is drained, most likely;
                        // the next wait checks (it is level-triggered), so
                        // no `recv` is spent learning `EAGAIN`.
                        self.end = Some(InputEnd::WouldBlock);
                    }
                    return Ok(n);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => {
                    self.end = Some(InputEnd::WouldBlock);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Err(e) => {
                    self.end = Some(InputEnd::Error(io::Error::from_raw_os_error(e as i32)));
                    return Err(io::Error::from_raw_os_error(e as i32));
                }
            }
        }
    }
}

/// A socket as an [`io::Write`] for a layer that writes it itself (TLS
/// sends its records straight from rustls's buffers): each write is one
/// non-blocking `sendmsg(2)`. It stops at the first write the socket
/// does not take whole (`EAGAIN`, or an error the transport's own send
/// will meet): the rest goes through the transport's queue.
pub(crate) struct SocketOutput {
    fd: RawFd,
    stopped: bool,
}

impl SocketOutput {
    pub(crate) fn new(fd: RawFd) -> SocketOutput {
        SocketOutput { fd, stopped: false }
    }
}

impl io::Write for SocketOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        use nix::sys::socket::{MsgFlags, sendmsg};
        if self.stopped {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        loop {
            match sendmsg::<()>(self.fd, bufs, &[], flags, None) {
                Ok(n) => {
                    self.stopped = n < want;
                    return Ok(n);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => {
                    self.stopped = true;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The send side of a stream socket: one send op that stays in the driver
/// between uses (no allocation per send); one buffer goes out as `SEND`,
/// several as `SENDMSG`.
pub(crate) struct StreamSend {
    op: ReusableOp<SendMsg<WriteBuf>>,
}

impl StreamSend {
    /// The send side of a stream socket, or (`pipe`) of a pipe.
    pub(crate) fn new<T: IoHandler>(
        lp: &EventLoop,
        fd: SharedFd,
        pipe: bool,
        h: &Rc<T>,
    ) -> StreamSend {
        let op = Box::new(if pipe {
            SendMsg::for_pipe(fd)
        } else {
            SendMsg::new(fd, Vec::new(), None)
        });
        let h: Rc<dyn Notify> = h.clone();
        StreamSend {
            op: ReusableOp::new(lp.driver(), op, &h),
        }
    }

    /// Sends what `load` puts in the (empty) buffer list.
    #[inline]
    pub(crate) fn send(&mut self, load: impl FnOnce(&mut Vec<WriteBuf>)) {
        self.op.submit_with(|m| load(&mut m.bufs));
    }

    /// The send's result (bytes the kernel took, or an errno), if `ev` is
    /// its completion; `back` then gets the buffer list and that count
    /// (what was not sent is still in it, for the caller to queue again in
    /// front).
    #[inline]
    pub(crate) fn take(
        &mut self,
        ev: &IoEvent,
        back: impl FnOnce(&mut Vec<WriteBuf>, usize),
    ) -> Option<Result<usize, i32>> {
        let Event::Completed(tok, done) = ev.0 else {
            return None;
        };
        if !self.op.is(tok) || !self.op.in_flight() {
            return None;
        }
        let n = done.res.map_or(0, |n| n as usize);
        self.op.completed(|m| back(&mut m.bufs, n));
        Some(done.res.map(|n| n as usize))
    }

    /// True if `ev` is this send's (so it is not a stale receive).
    #[inline]
    pub(crate) fn owns(&self, ev: &IoEvent) -> bool {
        matches!(ev.0, Event::Completed(tok, _) if self.op.is(tok))
    }
}

/// A received datagram's length and sender (or the receive's error), and
/// the buffer holding it.
pub(crate) type Datagram = (io::Result<(usize, SockAddr)>, Vec<u8>);

/// Largest datagram received in one piece (UDP's maximum payload).
const MAX_DATAGRAM: usize = 65_536;

/// The receive side of a datagram socket: one `recvmsg` in flight while
/// reading, its buffer reused from one datagram to the next.
pub(crate) struct DatagramRecv {
    lp: EventLoop,
    fd: SharedFd,
    op: Option<HandlerOp<RecvFrom<Vec<u8>>>>,
    spare: Option<Vec<u8>>,
}

impl DatagramRecv {
    pub(crate) fn new(lp: &EventLoop, fd: SharedFd) -> DatagramRecv {
        DatagramRecv {
            lp: lp.clone(),
            fd,
            op: None,
            spare: Some(Vec::with_capacity(MAX_DATAGRAM)),
        }
    }

    /// Starts a receive whose completion goes to `h`, unless one is in flight.
    pub(crate) fn start<T: IoHandler>(&mut self, h: &Rc<T>) {
        let h: Rc<dyn Notify> = h.clone();
        if self.op.is_some() {
            return;
        }
        let mut buf = self.spare.take().unwrap_or_default();
        buf.clear();
        buf.reserve(MAX_DATAGRAM);
        let op = Box::new(RecvFrom::new(self.fd.clone(), buf));
        self.op = Some(HandlerOp::submit(self.lp.driver(), op, h));
    }

    /// Drops the receive in flight (closing); what it gets is kept.
    pub(crate) fn stop(&mut self) {
        self.op = None;
    }

    /// If `ev` is this receive's completion: the datagram's length and
    /// sender (or the error), and the buffer, to hand back with
    /// [`recycle`](Self::recycle) once delivered.
    pub(crate) fn take(&mut self, ev: &IoEvent) -> Option<Datagram> {
        let Event::Ready(tok) = ev.0 else {
            return None;
        };
        if !self.op.as_ref().is_some_and(|o| o.is(tok)) {
            return None;
        }
        let (res, op) = self.op.as_mut()?.take()?;
        self.op = None;
        Some(op.finish(res))
    }

    /// The buffer back, for the next receive.
    pub(crate) fn recycle(&mut self, buf: Vec<u8>) {
        self.spare = Some(buf);
    }
}

/// The send side of a datagram socket: one `sendmsg` op that stays in the
/// driver between datagrams.
pub(crate) struct DatagramSend {
    op: ReusableOp<SendMsg<bytes::Bytes>>,
}

impl DatagramSend {
    pub(crate) fn new<T: IoHandler>(lp: &EventLoop, fd: SharedFd, h: &Rc<T>) -> DatagramSend {
        let op = Box::new(SendMsg::new(fd, Vec::new(), None));
        let h: Rc<dyn Notify> = h.clone();
        DatagramSend {
            op: ReusableOp::new(lp.driver(), op, &h),
        }
    }

    pub(crate) fn in_flight(&self) -> bool {
        self.op.in_flight()
    }

    /// Sends one datagram (to `addr`, or the connected peer).
    pub(crate) fn send(&mut self, data: bytes::Bytes, addr: Option<SockAddr>) {
        self.op.submit_with(|m| {
            m.bufs.push(data);
            m.addr = addr;
        });
    }

    /// The send's result, if `ev` is its completion.
    pub(crate) fn take(&mut self, ev: &IoEvent) -> Option<io::Result<usize>> {
        let Event::Completed(tok, done) = ev.0 else {
            return None;
        };
        if !self.op.is(tok) || !self.op.in_flight() {
            return None;
        }
        self.op.completed(|m| {
            m.bufs.clear();
            m.addr = None;
        });
        Some(match done.res {
            Ok(n) => Ok(n as usize),
            Err(e) => Err(io::Error::from_raw_os_error(e)),
        })
    }
}

/// A one-shot wait for an fd to become readable (or to report an error or
/// hang-up), whose completion goes to an [`IoHandler`]: a write pipe's
/// watch for its reader leaving, a child's pidfd. Dropping it cancels
/// the wait.
pub(crate) struct ReadyWatch {
    op: Option<HandlerOp<PollAdd>>,
}

impl ReadyWatch {
    /// Waits on one of the loop's own fds (the selector shares its
    /// registration with the fd's other ops).
    pub(crate) fn on_fd<T: IoHandler>(lp: &EventLoop, fd: SharedFd, h: &Rc<T>) -> ReadyWatch {
        Self::submit(lp, PollAdd::on(fd, false), h)
    }

    /// Waits on a raw fd the caller keeps open while the watch lives.
    pub(crate) fn on_raw<T: IoHandler>(
        lp: &EventLoop,
        fd: std::os::fd::RawFd,
        h: &Rc<T>,
    ) -> ReadyWatch {
        Self::submit(lp, PollAdd::raw(fd, false), h)
    }

    fn submit<T: IoHandler>(lp: &EventLoop, op: PollAdd, h: &Rc<T>) -> ReadyWatch {
        let h: Rc<dyn Notify> = h.clone();
        ReadyWatch {
            op: Some(HandlerOp::submit(lp.driver(), Box::new(op), h)),
        }
    }

    /// The wait's result (the poll mask, or the error: `ECANCELED` when the
    /// loop closes), if `ev` is its completion; the watch is spent then.
    pub(crate) fn take(&mut self, ev: &IoEvent) -> Option<io::Result<u32>> {
        match ev.0 {
            Event::Ready(tok) if self.op.as_ref().is_some_and(|o| o.is(tok)) => {
                let r = self.op.as_mut()?.take().map(|(res, _)| res);
                self.op = None;
                r
            }
            _ => None,
        }
    }
}
