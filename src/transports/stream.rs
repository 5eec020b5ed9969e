//! The stream transport (TCP and Unix sockets, and pipes), on the loop's I/O API and
//! the transport base, driven by completion events: no task and no future
//! on the data path. Each completion reaches it through the loop's ready
//! queue, like asyncio's proactor, whose transports are driven by future
//! callbacks.
//!
//! Writes made in the protocol's `data_received` for this transport leave
//! in one send (`sendmsg`/writev for several buffers) when it returns; writes
//! made anywhere else during a loop turn are flushed at the end of that turn.
//! Either way they go to the kernel with the next driver wait. The reader
//! keeps one receive in flight while reading is on; `pause_reading` asks it
//! to end (what it still gets is kept, in order, for the resume).
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;

use super::ExtraInfo;
use super::base::{Base, Phase, deliver_lost};
use super::cell::Failure;
use crate::base_loop::io::{
    InputEnd, IoEvent, IoHandler, ReadyWatch, Received, SharedFd, SocketInput, SocketOutput,
    StreamRecv, StreamSend,
};
use crate::base_loop::{EventLoop, LoopClosing};
use crate::error::{Error, Result};
use crate::pipes::Pipe;
use crate::protocols::Protocol;
use crate::sock::{SockAddr, Socket};
use crate::{RecvBuf, WriteBuf};

/// Receive size of a plain receive: a read this long likely has more
/// behind it (see `deliver`).
const READ_SIZE: usize = 64 * 1024;
/// At most this many buffers go into one `sendmsg`.
const MAX_IOV: usize = 1024;
/// At most this many bytes are read from the socket per readiness event
/// in readiness mode (the rest waits for the next turn: one connection
/// does not hold the loop).
const READ_BUDGET: usize = 256 * 1024;

/// A layer above a socket transport that reads the socket itself when it
/// is readable (TLS: straight into rustls's buffer), instead of taking
/// received buffers: see [`StreamTransport::set_readiness`].
pub(crate) trait ReadsSocket {
    /// The socket is readable: read `src` as far as the layer wants (its
    /// reading paused, or the input ran out). Called as the transport's
    /// protocol is: one call at a time, callbacks of the transport made
    /// meanwhile deferred until it returns.
    fn socket_readable(self: Rc<Self>, src: &mut SocketInput);
}

/// The read side's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reading {
    On,
    Paused,
    /// The peer closed its side (EOF delivered).
    Eof,
    /// No read side: a write pipe.
    Never,
}

/// What the transport runs on.
enum Endpoint {
    Socket(Socket),
    Pipe(Pipe),
}

impl Endpoint {
    fn shared(&self) -> &SharedFd {
        match self {
            Endpoint::Socket(s) => s.shared(),
            Endpoint::Pipe(p) => p.shared(),
        }
    }
}

/// Which transport this is: a socket reads and writes; a pipe one or
/// the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Socket,
    ReadPipe,
    WritePipe,
}

/// `write_eof`'s progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteEof {
    No,
    /// Asked: the write side closes once the buffer is sent.
    Asked,
    Sent,
}

/// The writer's state beyond the base's.
struct Writer {
    wbuf: VecDeque<WriteBuf>,
    /// `write` is refused: `write_eof` was asked (or there is no write
    /// side), or a sendfile is in progress (`eof` and `sendfile` say
    /// which). One flag, so the hot path tests one byte.
    refused: bool,
    /// A send is in flight (its completion pumps the writer again).
    sending: bool,
    /// A flush is queued for the end of this loop turn.
    flush_queued: bool,
    /// The protocol is in its `data_received` for this transport, for a
    /// receive that did not fill its buffer: its writes leave when it
    /// returns (`flush_on_return`).
    in_data_cb: bool,
    flush_on_return: bool,
    eof: WriteEof,
    /// A zero-copy sendfile owns the socket's write side (writes refused).
    sendfile: bool,
    /// The sendfile waiting for the buffer to be sent (see the hook below).
    idle_waker: Option<std::task::Waker>,
}

impl Writer {
    /// A turn-end flush is needed (no send or flush on its way); it counts
    /// as queued from now on.
    fn queue_flush(&mut self) -> bool {
        !self.sending && !std::mem::replace(&mut self.flush_queued, true)
    }
}

struct Inner {
    base: Base<dyn Protocol>,
    end: RefCell<Option<Endpoint>>,
    kind: Kind,
    fd: std::os::fd::RawFd,
    peer: Option<SockAddr>,
    local: Option<SockAddr>,
    reading: Cell<Reading>,
    wr: RefCell<Writer>,
    recv: RefCell<Option<StreamRecv>>,
    send: RefCell<Option<StreamSend>>,
    /// A write pipe's watch for its reader going away (`POLLERR`).
    watch: RefCell<Option<ReadyWatch>>,
    /// The layer that reads the socket itself (readiness mode).
    reader: RefCell<Option<std::rc::Weak<dyn ReadsSocket>>>,
}

impl IoHandler for Inner {
    #[inline(always)]
    fn on_io(self: Rc<Self>, ev: IoEvent) {
        let t = StreamTransport(self);
        if ev.is_turn_end() {
            t.0.wr.borrow_mut().flush_queued = false;
            t.pump_writer();
            return;
        }
        let got = t.0.recv.borrow_mut().as_mut().and_then(|r| r.take(&ev));
        if let Some(got) = got {
            return t.on_received(got);
        }
        if t.on_sent(&ev) {
            return;
        }
        if t.on_watch(&ev) {
            return;
        }
        t.on_stale_receive(&ev);
    }
}

impl LoopClosing for Inner {
    fn loop_closing(self: Rc<Self>) {
        // The loop closes under a live connection (asyncio would warn about
        // an unclosed transport): let go of everything without protocol
        // callbacks; the socket closes, so the peer sees EOF.
        let t = StreamTransport(self);
        t.0.base.begin_lost();
        t.0.release_io();
        t.0.base.release();
    }
}

impl Inner {
    /// Cancels the receive and the send in flight (the driver keeps their
    /// buffers until the kernel lets go, and what a receive got), and
    /// closes the socket once nothing holds it.
    fn release_io(&self) {
        let recv = self.recv.borrow_mut().take();
        let send = self.send.borrow_mut().take();
        let watch = self.watch.borrow_mut().take();
        drop((recv, send, watch));
        self.end.borrow_mut().take();
    }
}

/// A connected stream transport (TCP or Unix socket, or a pipe).
///
/// Equivalent to asyncio's socket transports (`_SelectorSocketTransport` /
/// `_ProactorSocketTransport`): the same code on both backends. Clones are
/// handles to one transport. The protocol gets a handle in
/// `connection_made`; the transport owns the protocol until
/// `connection_lost`, after which both are released.
#[derive(Clone)]
pub(crate) struct StreamTransport(Rc<Inner>);

impl StreamTransport {
    /// Wraps a connected socket and starts it (see [`Transport::start`](crate::Transport)).
    pub(crate) fn start(
        lp: &EventLoop,
        sock: Socket,
        protocol: Box<dyn Protocol>,
    ) -> StreamTransport {
        let peer = sock.peer_addr().ok();
        let local = sock.local_addr().ok();
        let recv = StreamRecv::new(lp, sock.shared().clone());
        let end = Endpoint::Socket(sock);
        Self::start_on(lp, end, Kind::Socket, Some(recv), (peer, local), protocol)
    }

    /// Wraps one end of a pipe and starts it (see
    /// [`Transport::start_pipe`](crate::Transport)): a read pipe reads
    /// until EOF, a write pipe writes and watches for its reader going.
    pub(crate) fn start_pipe(
        lp: &EventLoop,
        pipe: Pipe,
        read: bool,
        protocol: Box<dyn Protocol>,
    ) -> StreamTransport {
        let fd = pipe.shared().clone();
        if read {
            let recv = Some(StreamRecv::for_pipe(lp, fd));
            return Self::start_on(
                lp,
                Endpoint::Pipe(pipe),
                Kind::ReadPipe,
                recv,
                (None, None),
                protocol,
            );
        }
        let t = Self::start_on(
            lp,
            Endpoint::Pipe(pipe),
            Kind::WritePipe,
            None,
            (None, None),
            protocol,
        );
        *t.0.watch.borrow_mut() = Some(ReadyWatch::on_fd(lp, fd, &t.0));
        t
    }

    fn start_on(
        lp: &EventLoop,
        end: Endpoint,
        kind: Kind,
        recv: Option<StreamRecv>,
        (peer, local): (Option<SockAddr>, Option<SockAddr>),
        protocol: Box<dyn Protocol>,
    ) -> StreamTransport {
        let fd = end.shared().raw();
        let t = StreamTransport(Rc::new(Inner {
            base: Base::new(lp, protocol, "Protocol"),
            end: RefCell::new(Some(end)),
            kind,
            fd,
            peer,
            local,
            reading: Cell::new(if kind == Kind::WritePipe {
                Reading::Never
            } else {
                Reading::On
            }),
            wr: RefCell::new(Writer {
                wbuf: VecDeque::new(),
                refused: kind == Kind::ReadPipe,
                sending: false,
                flush_queued: false,
                in_data_cb: false,
                flush_on_return: false,
                // (A read pipe has no write side: as if closed.)
                eof: if kind == Kind::ReadPipe {
                    WriteEof::Sent
                } else {
                    WriteEof::No
                },
                sendfile: false,
                idle_waker: None,
            }),
            recv: RefCell::new(recv),
            send: RefCell::new(None),
            watch: RefCell::new(None),
            reader: RefCell::new(None),
        }));
        let weak: std::rc::Weak<dyn LoopClosing> = Rc::downgrade(&t.0) as _;
        t.0.base.register(weak);
        // connection_made runs through the loop, then reading starts.
        let t2 = t.clone();
        lp.call_soon_impl(
            move || {
                t2.call_protocol({
                    let t = t2.clone();
                    move |p| p.connection_made(crate::Transport::from_stream(t))
                });
                t2.pump_reader();
            },
            &"connection_made",
        );
        t
    }

    /// Runs `f` when the connection is lost (servers count connections).
    pub(crate) fn on_lost(&self, f: impl FnOnce() + 'static) {
        self.0.base.on_lost(f);
    }

    /// The layer that reads the socket itself in readiness mode (sockets;
    /// a pipe keeps its receives). See [`set_readiness`](Self::set_readiness).
    pub(crate) fn set_socket_reader(&self, reader: std::rc::Weak<dyn ReadsSocket>) {
        if self.0.kind == Kind::Socket {
            *self.0.reader.borrow_mut() = Some(reader);
        }
    }

    /// Readiness mode on or off (with a socket reader set): on, the
    /// transport waits for the socket to be readable and lets the reader
    /// read it, where it would have received into a pool buffer and called
    /// `data_received`. EOF and errors the reader meets are the
    /// transport's, as a receive's would be; pause and resume stop and
    /// restart the wait. What was received before (a receive in flight,
    /// data kept for the socket) still comes through `data_received`,
    /// first. Off, receives go to the pool again.
    pub(crate) fn set_readiness(&self, on: bool) {
        if self.0.reader.borrow().is_none() {
            return;
        }
        if let Some(r) = self.0.recv.borrow_mut().as_mut() {
            r.set_by_readiness(on);
        }
    }

    /// Calls the protocol (deferred while it is inside another callback);
    /// a panic is reported and costs this connection only.
    fn call_protocol(&self, f: impl FnOnce(&mut dyn Protocol) + 'static) {
        if let Err(msg) = self.0.base.call(f) {
            self.protocol_panicked(msg);
        }
    }

    fn protocol_panicked(&self, msg: String) {
        self.0.base.report_panic(&msg, format!("{self:?}"));
        self.force_close(Some(Error::Panic(msg)));
    }

    /// Brings the read side in line with the state: no receive once
    /// closed; while paused, the receive is asked to end (what it still
    /// gets is kept for later); otherwise data kept first, then one
    /// receive in flight, started only once the previous one is over.
    fn pump_reader(&self) {
        let inner = &self.0;
        loop {
            if inner.base.is_closing()
                || matches!(inner.reading.get(), Reading::Eof | Reading::Never)
            {
                if let Some(r) = inner.recv.borrow_mut().as_mut() {
                    r.stop();
                }
                return;
            }
            let mut recv = inner.recv.borrow_mut();
            let Some(r) = recv.as_mut() else { return };
            if inner.reading.get() == Reading::Paused {
                r.pause();
                return;
            }
            if r.active() {
                return;
            }
            let kept = r.take_kept();
            if kept.is_empty() {
                r.start(&self.0);
                return;
            }
            drop(recv);
            if !kept.iter().all(|c| self.deliver_slice(c)) {
                return;
            }
            // The protocol may have paused or closed: look again.
        }
    }

    /// What the receive got, in order.
    #[inline(always)]
    fn on_received(&self, got: Received) {
        let inner = &self.0;
        if inner.reading.get() == Reading::Paused {
            // Paused: data is kept in order for the resume; the EOF or
            // error that ended the receive is seen again by the next one.
            let data = match got {
                Received::Data(b) => Some(b.to_vec()),
                Received::Bytes(v) if !v.is_empty() => Some(v),
                _ => None,
            };
            if let (Some(d), Some(r)) = (data, inner.recv.borrow().as_ref()) {
                r.keep(d);
            }
            return;
        }
        match got {
            Received::Data(b) => {
                // The protocol may have paused or closed, or the receive
                // ended with this result: then the reader moves on.
                if self.deliver(b) && self.reader_moves() {
                    self.pump_reader();
                }
            }
            Received::Bytes(v) => {
                if self.deliver_slice(&v) {
                    self.pump_reader();
                }
            }
            Received::Eof => self.eof(),
            Received::Ended => self.pump_reader(),
            Received::Error(e) => self.force_close(Some(e.into())),
            Received::Readable => self.on_readable(),
        }
    }

    /// Lets `f` write to the socket itself (a non-blocking `sendmsg` per
    /// write), if that keeps the order: a socket with nothing queued or in
    /// flight, open for writing. `None` if not (write through the queue).
    /// Bytes written so never count against the write buffer's marks.
    pub(crate) fn with_output<R>(&self, f: impl FnOnce(&mut SocketOutput) -> R) -> Option<R> {
        let inner = &self.0;
        if inner.kind != Kind::Socket || inner.base.is_closing() {
            return None;
        }
        {
            let w = inner.wr.borrow();
            if w.refused || w.sending || !w.wbuf.is_empty() {
                return None;
            }
        }
        Some(f(&mut SocketOutput::new(inner.fd)))
    }

    /// Readiness mode: the socket is readable; the reader reads it (its
    /// writes leave in one send when it returns), then the transport acts
    /// on how the input ended: EOF, an error, or the next wait.
    fn on_readable(&self) {
        let inner = &self.0;
        let reader = inner
            .reader
            .borrow()
            .as_ref()
            .and_then(std::rc::Weak::upgrade);
        let src = inner.recv.borrow().as_ref().map(|r| r.input(READ_BUDGET));
        let (Some(reader), Some(mut src)) = (reader, src) else {
            return;
        };
        inner.wr.borrow_mut().in_data_cb = true;
        let r = inner
            .base
            .protocol
            .invoke(|_| reader.socket_readable(&mut src));
        self.data_cb_returned();
        match r {
            Ok(_) => {}
            Err(Failure::Panic(m)) => return self.protocol_panicked(m),
            // (Inside another of its callbacks: the next wait reads.)
            Err(Failure::Busy) => {}
        }
        match src.end() {
            Some(InputEnd::Eof) => self.eof(),
            Some(InputEnd::Error(e)) => self.force_close(Some(e.into())),
            Some(InputEnd::WouldBlock | InputEnd::Budget) | None => self.pump_reader(),
        }
    }

    /// After a delivery: must `pump_reader` act (the receive ended, or
    /// reading was paused or the transport closed meanwhile)?
    #[inline]
    fn reader_moves(&self) -> bool {
        let inner = &self.0;
        inner.reading.get() != Reading::On
            || inner.base.is_closing()
            || !inner.recv.borrow().as_ref().is_some_and(StreamRecv::active)
    }

    /// A result of a receive this transport gave up (closing, or it ended
    /// on EOF or an error while results were still queued). Data is not
    /// lost: it is delivered now if reading is on (nothing newer can
    /// precede it), kept for the next receive if reading is paused, and
    /// dropped only once the transport is closing. EOF and errors are seen
    /// again by the next receive.
    fn on_stale_receive(&self, ev: &IoEvent) {
        let inner = &self.0;
        let b = {
            let recv = inner.recv.borrow();
            let Some(r) = recv.as_ref() else { return };
            match ev.stale_data(r.pool()) {
                Some(b) => b,
                None => return,
            }
        };
        if inner.base.is_closing() {
            return;
        }
        match inner.reading.get() {
            Reading::On => {
                self.deliver(b);
            }
            Reading::Paused => {
                if let Some(r) = inner.recv.borrow().as_ref() {
                    r.keep(b.to_vec());
                }
            }
            Reading::Eof | Reading::Never => {}
        }
    }

    /// Hands a received pool buffer to the protocol (owned: it may keep it
    /// or write it back); false if the protocol failed.
    #[inline(always)]
    fn deliver(&self, data: RecvBuf) -> bool {
        // A receive that filled its buffer likely has more behind it in this
        // turn: let the replies coalesce until the turn ends (one send for
        // a bulk transfer's chunks). A short one ends the peer's message:
        // the reply leaves when the callback returns.
        self.0.wr.borrow_mut().in_data_cb = !data.is_full();
        let mut data = Some(data);
        let r = self.0.base.protocol.invoke(|p| {
            if let Some(d) = data.take() {
                p.data_received_owned(d)
            }
        });
        self.data_cb_returned();
        self.delivered(r, || {
            let d = data.take().expect("not delivered");
            Box::new(move |p: &mut dyn Protocol| p.data_received_owned(d))
        })
    }

    /// Hands received bytes (kept, or from a plain receive) to the protocol.
    fn deliver_slice(&self, data: &[u8]) -> bool {
        // (As in `deliver`: a full read coalesces until the turn ends.)
        self.0.wr.borrow_mut().in_data_cb = data.len() < READ_SIZE;
        let r = self.0.base.protocol.invoke(|p| p.data_received(data));
        self.data_cb_returned();
        self.delivered(r, || {
            let copy = data.to_vec();
            Box::new(move |p: &mut dyn Protocol| p.data_received(&copy))
        })
    }

    /// The protocol's `data_received` returned: what it wrote leaves now
    /// (in one send), rather than at the end of the turn: a reply goes out
    /// with the same driver wait either way, for no turn-end call.
    #[inline]
    fn data_cb_returned(&self) {
        let flush = {
            let mut w = self.0.wr.borrow_mut();
            w.in_data_cb = false;
            std::mem::take(&mut w.flush_on_return) && !w.flush_queued
        };
        if flush {
            self.pump_writer();
        }
    }

    /// After a delivery: false if the protocol failed. `Busy` is only
    /// reachable if a protocol drives another transport's reader
    /// synchronously: the order is kept by deferring the delivery.
    #[inline]
    fn delivered(
        &self,
        r: std::result::Result<Option<()>, Failure>,
        deferred: impl FnOnce() -> Box<dyn FnOnce(&mut dyn Protocol)>,
    ) -> bool {
        match r {
            Ok(_) => true,
            Err(f) => self.delivery_failed(f, deferred),
        }
    }

    /// `delivered`'s rare arms, out of line so the usual `Ok` stays a
    /// test on the caller's path.
    #[cold]
    #[inline(never)]
    fn delivery_failed(
        &self,
        f: Failure,
        deferred: impl FnOnce() -> Box<dyn FnOnce(&mut dyn Protocol)>,
    ) -> bool {
        match f {
            Failure::Panic(m) => {
                self.protocol_panicked(m);
                false
            }
            Failure::Busy => {
                let f = deferred();
                self.call_protocol(move |p| f(p));
                true
            }
        }
    }

    fn eof(&self) {
        self.0.reading.set(Reading::Eof);
        self.pump_reader();
        let keep = Rc::new(Cell::new(false));
        let k = keep.clone();
        self.call_protocol(move |p| k.set(p.eof_received()));
        // Closed unless the protocol keeps its write side, and once both
        // directions are done.
        if !keep.get() || self.0.wr.borrow().eof == WriteEof::Sent {
            self.close();
        }
    }

    /// Sends what is queued, or finishes what was asked once nothing is:
    /// the EOF (`write_eof`), then the close.
    fn pump_writer(&self) {
        enum Step {
            Send,
            Eof,
            Finish,
        }
        let inner = &self.0;
        let step = {
            let w = inner.wr.borrow();
            if inner.base.is_lost() || w.sending {
                return;
            }
            if !w.wbuf.is_empty() {
                Step::Send
            } else if w.eof == WriteEof::Asked {
                Step::Eof
            } else if inner.base.phase() == Phase::Closing {
                Step::Finish
            } else {
                return;
            }
        };
        match step {
            Step::Send => {
                // The buffers move into the op (no clone); what the kernel
                // does not take goes back to the front of the queue.
                let mut send = inner.send.borrow_mut();
                if send.is_none() {
                    let Some(fd) = inner.end.borrow().as_ref().map(|s| s.shared().clone()) else {
                        return;
                    };
                    let pipe = inner.kind != Kind::Socket;
                    *send = Some(StreamSend::new(&inner.base.lp, fd, pipe, &self.0));
                }
                let op = send.as_mut().expect("made above");
                let mut w = inner.wr.borrow_mut();
                w.sending = true;
                op.send(|bufs| {
                    if w.wbuf.len() == 1 {
                        bufs.extend(w.wbuf.pop_front());
                    } else {
                        let k = w.wbuf.len().min(MAX_IOV);
                        bufs.extend(w.wbuf.drain(..k));
                    }
                });
            }
            Step::Eof => {
                let r = match inner.end.borrow().as_ref() {
                    Some(Endpoint::Socket(s)) => Some(s.shutdown(std::net::Shutdown::Write)),
                    // A write pipe's EOF is its close (asyncio's too).
                    _ => None,
                };
                {
                    let mut w = inner.wr.borrow_mut();
                    w.eof = WriteEof::Sent;
                    w.refused = true;
                }
                if inner.kind == Kind::WritePipe {
                    self.close();
                }
                if let Some(Err(e)) = r {
                    return self.force_close(Some(e));
                }
                if inner.reading.get() == Reading::Eof {
                    self.close();
                }
                self.pump_writer();
            }
            Step::Finish => self.connection_lost(None),
        }
    }

    /// A send completed (true if `ev` was this transport's send).
    #[inline(always)]
    fn on_sent(&self, ev: &IoEvent) -> bool {
        let inner = &self.0;
        let mut send = inner.send.borrow_mut();
        let Some(op) = send.as_mut() else {
            return false;
        };
        let lost = inner.base.is_lost();
        let mut w = inner.wr.borrow_mut();
        // What the kernel took is dropped; the rest goes back to the front
        // of the queue (the op is idle now, its vector kept). After an
        // abort (or a protocol failure) the buffer was dropped and counted
        // out then: nothing goes back.
        let taken = op.take(ev, |bufs, n| {
            if lost || (bufs.len() == 1 && bufs[0].len() == n) {
                bufs.clear(); // the usual case: one buffer, all sent
                return;
            }
            let mut n = n;
            let mut i = 0;
            while i < bufs.len() && bufs[i].len() <= n {
                n -= bufs[i].len();
                i += 1;
            }
            if i < bufs.len() {
                bufs[i].advance(n);
                for b in bufs.drain(i..).rev() {
                    w.wbuf.push_front(b);
                }
            }
            bufs.clear();
        });
        let Some(res) = taken else {
            // (Not this send's, or a completion for an op already idle.)
            return op.owns(ev);
        };
        drop(send);
        w.sending = false;
        if w.idle_waker.is_some() && w.wbuf.is_empty() {
            Self::wake_sendfile(&mut w);
        }
        if lost {
            return true;
        }
        // An error sent nothing (EINTR: the queue is simply sent again).
        let resume = inner
            .base
            .flow
            .borrow_mut()
            .sent(*res.as_ref().unwrap_or(&0));
        if let Err(e) = res {
            if e != libc::EINTR {
                drop(w);
                self.force_close(Some(std::io::Error::from_raw_os_error(e).into()));
                return true;
            }
        }
        let idle = w.wbuf.is_empty() && w.eof != WriteEof::Asked && !inner.base.is_closing();
        drop(w);
        if resume {
            self.call_protocol(|p| p.resume_writing());
        } else if idle {
            // Nothing more to send, no EOF or close to finish.
            return true;
        }
        self.pump_writer();
        true
    }

    /// See [`Transport::write`](crate::Transport::write).
    #[inline]
    pub(crate) fn write(&self, data: impl Into<WriteBuf>) -> Result<()> {
        let mut data = data.into();
        data.detach_if_pool_low();
        let inner = &self.0;
        inner.base.check_writable()?;
        let (flush, pause) = {
            let mut w = inner.wr.borrow_mut();
            if w.refused {
                return Err(self.not_writable(w.sendfile));
            }
            if data.is_empty() {
                return Ok(());
            }
            let pause = inner.base.flow.borrow_mut().add(data.len());
            w.wbuf.push_back(data);
            // A flush when the protocol's data_received returns, if this
            // is it; else at the end of this turn, unless a send or a flush
            // is already on its way. Pause the protocol past the high mark.
            let flush = if w.in_data_cb {
                w.flush_on_return = true;
                false
            } else {
                w.queue_flush()
            };
            (flush, pause)
        };
        if flush {
            inner.base.lp.call_at_turn_end(&self.0);
        }
        if pause {
            self.call_protocol(|p| p.pause_writing());
        }
        Ok(())
    }

    /// Sends what is buffered now and hands it to the kernel at once,
    /// rather than when the current data callback returns or the turn ends:
    /// for a layer whose last step was long (a TLS handshake step costs a
    /// few hundred microseconds of crypto), so the peer works on its answer
    /// while this loop serves the rest of the turn. One extra
    /// `io_uring_enter` on the proactor. Safe inside this transport's own
    /// data callback: no state of the writer is held across the protocol
    /// call.
    pub(crate) fn send_now(&self) {
        self.pump_writer();
        self.0.base.lp.submit_now();
    }

    /// See [`Transport::write_eof`](crate::Transport::write_eof).
    pub(crate) fn write_eof(&self) -> Result<()> {
        self.0.base.check_writable()?;
        if self.0.kind == Kind::ReadPipe {
            return Err(self.not_writable(false));
        }
        {
            let mut w = self.0.wr.borrow_mut();
            if w.eof != WriteEof::No {
                return Ok(());
            }
            w.eof = WriteEof::Asked;
            w.refused = true;
        }
        self.kick_writer();
        Ok(())
    }

    /// See [`Transport::can_write_eof`](crate::Transport::can_write_eof).
    pub(crate) fn can_write_eof(&self) -> bool {
        self.0.kind != Kind::ReadPipe
    }

    /// Why a write is refused once the write side is gone (or absent).
    #[cold]
    fn not_writable(&self, sendfile: bool) -> Error {
        if sendfile {
            Error::state("unable to write; sendfile is in progress")
        } else if self.0.kind == Kind::ReadPipe {
            Error::state("a read pipe transport cannot write")
        } else {
            Error::state("cannot write after write_eof()")
        }
    }

    /// A write pipe's watch fired: its reader went away. Idle, that is a
    /// plain close; with data still to send, a broken pipe (asyncio's
    /// rule). True if `ev` was the watch's.
    #[cold]
    #[inline(never)]
    fn on_watch(&self, ev: &IoEvent) -> bool {
        let res = {
            let mut watch = self.0.watch.borrow_mut();
            let Some(w) = watch.as_mut() else {
                return false;
            };
            let Some(res) = w.take(ev) else {
                return false;
            };
            *watch = None;
            res
        };
        if res.is_err() || self.0.base.is_lost() {
            return true; // (cancelled: the transport is closing anyway)
        }
        let pending = {
            let w = self.0.wr.borrow();
            !w.wbuf.is_empty() || w.sending
        };
        if pending {
            let e = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
            self.force_close(Some(e.into()));
        } else {
            self.force_close(None);
        }
        true
    }

    /// Flushes at the end of this loop turn (once per turn).
    fn kick_writer(&self) {
        let queue = self.0.wr.borrow_mut().queue_flush();
        if queue {
            self.0.base.lp.call_at_turn_end(&self.0);
        }
    }

    /// See [`Transport::close`](crate::Transport::close).
    pub(crate) fn close(&self) {
        if !self.0.base.begin_close() {
            return;
        }
        self.pump_reader();
        self.kick_writer();
    }

    /// See [`Transport::abort`](crate::Transport::abort).
    pub(crate) fn abort(&self) {
        self.force_close(None);
    }

    fn force_close(&self, exc: Option<Error>) {
        if self.0.base.is_lost() {
            return;
        }
        self.0.wr.borrow_mut().wbuf.clear();
        self.0.base.flow.borrow_mut().clear();
        self.connection_lost(exc);
    }

    /// Delivers `connection_lost` (exactly once, through the loop), then
    /// releases the protocol, the ops in flight and the socket.
    fn connection_lost(&self, exc: Option<Error>) {
        if !self.0.base.begin_lost() {
            return;
        }
        // A write pipe's watch holds the pipe in the kernel: its cancel
        // goes with this turn's wait, so the reader sees EOF soon.
        let watch = self.0.watch.borrow_mut().take();
        drop(watch);
        Self::wake_sendfile(&mut self.0.wr.borrow_mut());
        self.pump_reader();
        deliver_lost(
            self.0.clone(),
            |i| &i.base,
            exc,
            |p, exc| p.connection_lost(exc),
            Inner::release_io,
        );
    }

    /// Identity of the transport (the same for every handle to it).
    pub(crate) fn id(&self) -> usize {
        Rc::as_ptr(&self.0) as *const () as usize
    }

    /// See [`Transport::is_closing`](crate::Transport::is_closing).
    pub(crate) fn is_closing(&self) -> bool {
        self.0.base.is_closing()
    }

    /// See [`Transport::pause_reading`](crate::Transport::pause_reading).
    pub(crate) fn pause_reading(&self) {
        if self.0.reading.get() == Reading::On {
            self.0.reading.set(Reading::Paused);
        }
        self.pump_reader();
    }

    /// See [`Transport::resume_reading`](crate::Transport::resume_reading).
    pub(crate) fn resume_reading(&self) {
        if self.0.reading.get() != Reading::Paused {
            return;
        }
        self.0.reading.set(Reading::On);
        // Data (kept or new) arrives through the loop, never inside this call.
        let t = self.clone();
        self.0
            .base
            .lp
            .call_soon_impl(move || t.pump_reader(), &"resume_reading");
    }

    /// See [`Transport::is_reading`](crate::Transport::is_reading).
    pub(crate) fn is_reading(&self) -> bool {
        self.0.reading.get() == Reading::On && !self.0.base.is_closing()
    }

    /// See [`Transport::is_writing_paused`](crate::Transport::is_writing_paused).
    pub(crate) fn is_writing_paused(&self) -> bool {
        self.0.base.flow.borrow().paused()
    }

    /// See [`Transport::get_write_buffer_size`](crate::Transport::get_write_buffer_size).
    pub(crate) fn get_write_buffer_size(&self) -> usize {
        self.0.base.flow.borrow().size()
    }

    /// See [`Transport::get_write_buffer_limits`](crate::Transport::get_write_buffer_limits).
    pub(crate) fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.0.base.flow.borrow().limits()
    }

    /// See [`Transport::set_write_buffer_limits`](crate::Transport::set_write_buffer_limits).
    pub(crate) fn set_write_buffer_limits(
        &self,
        high: Option<usize>,
        low: Option<usize>,
    ) -> Result<()> {
        let pause = self.0.base.flow.borrow_mut().set_limits(high, low)?;
        if pause {
            self.call_protocol(|p| p.pause_writing());
        }
        Ok(())
    }

    /// See [`Transport::get_extra_info`](crate::Transport::get_extra_info).
    pub(crate) fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        match name {
            "peername" => self.0.peer.clone().map(ExtraInfo::Address),
            "sockname" => self.0.local.clone().map(ExtraInfo::Address),
            "socket" if self.0.kind == Kind::Socket => Some(ExtraInfo::Fd(self.0.fd)),
            "pipe" if self.0.kind != Kind::Socket => Some(ExtraInfo::Fd(self.0.fd)),
            _ => None,
        }
    }

    /// See [`Transport::peername`](crate::Transport::peername).
    pub(crate) fn peername(&self) -> Option<SockAddr> {
        self.0.peer.clone()
    }

    /// See [`Transport::sockname`](crate::Transport::sockname).
    pub(crate) fn sockname(&self) -> Option<SockAddr> {
        self.0.local.clone()
    }

    /// See [`Transport::set_protocol`](crate::Transport::set_protocol).
    pub(crate) fn set_protocol(&self, protocol: Box<dyn Protocol>) -> Option<Box<dyn Protocol>> {
        self.0.base.protocol.replace(protocol)
    }

    /// See [`Transport::get_loop`](crate::Transport::get_loop).
    pub(crate) fn get_loop(&self) -> EventLoop {
        self.0.base.lp.clone()
    }
}

// ---- sendfile's hook (base_loop/sendfile.rs) ------------------------------
// A zero-copy sendfile writes to the socket itself: it needs the fd, the
// write buffer sent and no send in flight first, and no write meanwhile.
impl StreamTransport {
    /// The socket, while the transport is not closing.
    pub(crate) fn sendfile_fd(&self) -> Option<SharedFd> {
        if self.0.base.is_closing() || self.0.kind == Kind::ReadPipe {
            return None;
        }
        self.0.end.borrow().as_ref().map(|s| s.shared().clone())
    }

    /// While on, `write` is refused (asyncio: "sendfile is in progress").
    /// Returns the previous setting.
    pub(crate) fn set_sendfile(&self, on: bool) -> bool {
        let mut w = self.0.wr.borrow_mut();
        if !on {
            w.idle_waker = None;
        }
        w.refused = on || w.eof != WriteEof::No;
        std::mem::replace(&mut w.sendfile, on)
    }

    /// Ready once nothing is buffered and no send is in flight; an error
    /// once the transport is closing or lost.
    pub(crate) fn poll_write_idle(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<()>> {
        if self.0.base.is_closing() {
            return std::task::Poll::Ready(Err(Error::closed("the transport is closing")));
        }
        let mut w = self.0.wr.borrow_mut();
        if w.wbuf.is_empty() && !w.sending {
            return std::task::Poll::Ready(Ok(()));
        }
        w.idle_waker = Some(cx.waker().clone());
        std::task::Poll::Pending
    }

    /// (Cold: only a sendfile waiting for the buffer sets the waker.)
    #[cold]
    #[inline(never)]
    fn wake_sendfile(w: &mut Writer) {
        if let Some(k) = w.idle_waker.take() {
            k.wake();
        }
    }
}

impl fmt::Debug for StreamTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<Transport fd={} peer={:?} phase={:?} buffered={}>",
            self.0.fd,
            self.0.peer.as_ref().and_then(|a| a.as_socket()),
            self.0.base.phase(),
            self.0.base.flow.borrow().size()
        )
    }
}
