//! The socket stream transport (TCP and Unix), on the driver's owned-buffer
//! ops, driven by completion callbacks: no task and no future on the data
//! path. The driver reports each completion through the loop's ready queue
//! ([`Notify`]), like asyncio's proactor, whose transports are driven by
//! future callbacks.
//!
//! Writes made in the protocol's `data_received` for this transport leave
//! in one send (`sendmsg`/writev for several buffers) when it returns; writes
//! made anywhere else during a loop turn are flushed at the end of that turn.
//! Either way they go to the kernel with the next driver wait. The reader keeps one receive in flight while
//! reading is on; `pause_reading` cancels it (data it already got is kept by
//! the driver for the next receive).
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::rc::Rc;

use bytes::Bytes;

use super::cell::{Failure, ProtoCell};
use super::{ExtraInfo, buffer_limits};
use crate::base_loop::{EventLoop, LoopClosing};
use crate::driver::buf::{Chunk, WriteBuf};
use crate::driver::ops::{Recv, SendMsg};
use crate::driver::pool::{POOL_BUF_SIZE, PoolRef, RecvBuf, RecvPooled};
use crate::driver::{Done, Event, HandlerOp, MultiOp, Notify, ReusableOp};
use crate::error::{Error, Result};
use crate::events::ExceptionContext;
use crate::protocols::Protocol;
use crate::sock::{SockAddr, Socket};

/// Receive size per read (asyncio's selector reads up to 256 KiB; 64 KiB
/// keeps memory per active connection modest).
const READ_SIZE: usize = 64 * 1024;
/// At most this many buffers go into one `sendmsg`.
const MAX_IOV: usize = 1024;

#[derive(Default)]
struct State {
    wbuf: VecDeque<WriteBuf>,
    wsize: usize,
    high: usize,
    low: usize,
    protocol_paused: bool,
    /// A send is in flight (its completion pumps the writer again).
    sending: bool,
    /// A flush is queued for the end of this loop turn.
    flush_queued: bool,
    /// The protocol is in its `data_received` for this transport, for a
    /// receive that did not fill its buffer: its writes leave when it
    /// returns (`flush_on_return`).
    in_data_cb: bool,
    flush_on_return: bool,
    closing: bool,
    eof_requested: bool,
    eof_sent: bool,
    reading: bool,
    read_eof: bool,
    lost: bool,
}

impl State {
    /// A turn-end flush is needed (no send or flush on its way); it counts
    /// as queued from now on.
    fn queue_flush(&mut self) -> bool {
        !self.sending && !std::mem::replace(&mut self.flush_queued, true)
    }

    /// Over the high-water mark and not paused yet: paused from now on
    /// (the caller tells the protocol, once, until `resume_writing`).
    fn pause_due(&mut self) -> bool {
        let over = !self.protocol_paused && self.wsize > self.high;
        self.protocol_paused |= over;
        over
    }
}

struct Inner {
    lp: EventLoop,
    sock: RefCell<Option<Socket>>,
    fd: RawFdCell,
    peer: Option<SockAddr>,
    local: Option<SockAddr>,
    protocol: ProtoCell<dyn Protocol>,
    st: RefCell<State>,
    rd: RefCell<ReadSide>,
    wr: RefCell<WriteSide>,
    /// The loop's receive buffer pool.
    pool: PoolRef,
    on_lost: RefCell<Vec<Box<dyn FnOnce()>>>,
    /// The loop's key for this live transport ([`LoopClosing`]).
    registered: Cell<Option<usize>>,
}

/// The receive in flight, if any.
#[derive(Default)]
struct ReadSide {
    /// Multishot receive into the loop's pool: no buffer is held while the
    /// connection is idle.
    multi: Option<MultiOp>,
    /// After the pool ran dry (ENOBUFS), one plain receive with its own
    /// buffer keeps the connection moving.
    plain: Option<HandlerOp<Recv<Vec<u8>>>>,
    dry: bool,
    /// `multi` was asked to end (reading paused): its last results and
    /// its final completion are still to come, and no new receive starts
    /// before that, so what it got is kept in order.
    cancelling: bool,
}

/// The send op, made at the first send and reused for every send after it
/// (it stays in the driver: no allocation per send).
#[derive(Default)]
struct WriteSide {
    op: Option<ReusableOp<SendMsg<WriteBuf>>>,
}

/// Completion callbacks: a receive or a send finished (`key`), or the
/// turn-end flush (`TURN_END`).
impl Notify for Inner {
    fn notify(self: Rc<Self>, ev: Event) {
        let t = Transport(self);
        match ev {
            Event::TurnEnd => {
                t.0.st.borrow_mut().flush_queued = false;
                t.pump_writer();
            }
            // The plain receive's completion waits in the driver.
            Event::Ready(tok) => {
                if t.0.rd.borrow().plain.as_ref().is_some_and(|p| p.is(tok)) {
                    t.on_plain_read();
                }
            }
            Event::Completed(tok, done) => {
                if t.0.rd.borrow().multi.as_ref().is_some_and(|m| m.is(tok)) {
                    t.on_received(done);
                } else if t.0.wr.borrow().op.as_ref().is_some_and(|o| o.is(tok)) {
                    t.on_sent(done);
                } else {
                    t.on_stale_receive(done);
                }
            }
        }
    }
}

impl LoopClosing for Inner {
    fn loop_closing(self: Rc<Self>) {
        // The loop closes under a live connection (asyncio would warn about
        // an unclosed transport): let go of everything without protocol
        // callbacks; the socket closes, so the peer sees EOF.
        let t = Transport(self);
        t.0.st.borrow_mut().lost = true;
        t.release_all();
    }
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
                ..Default::default()
            }),
            rd: RefCell::new(ReadSide::default()),
            wr: RefCell::new(WriteSide::default()),
            pool: lp.driver().borrow().pool(),
            on_lost: RefCell::new(Vec::new()),
            registered: Cell::new(None),
        }));
        let weak: std::rc::Weak<dyn LoopClosing> = Rc::downgrade(&t.0) as _;
        t.0.registered.set(Some(lp.core.register_transport(weak)));
        // connection_made runs through the loop, then reading starts.
        let t2 = t.clone();
        lp.call_soon_impl(
            move || {
                t2.call_protocol({
                    let t = t2.clone();
                    move |p| p.connection_made(t)
                });
                t2.pump_reader();
            },
            &"connection_made",
        );
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

    fn handler(&self) -> Rc<dyn Notify> {
        self.0.clone()
    }

    /// Cancels the receive and the send in flight (the driver keeps their
    /// buffers until the kernel lets go, and what a receive got).
    fn drop_ops(&self) {
        let rd = std::mem::take(&mut *self.0.rd.borrow_mut());
        let wr = std::mem::take(&mut *self.0.wr.borrow_mut());
        drop((rd, wr));
    }

    /// Brings the read side in line with the state: no receive once
    /// closed; while paused, the multishot receive is asked to end (what it
    /// still gets is kept for later); otherwise data kept first, then one
    /// receive in flight, started only once the previous one is over.
    fn pump_reader(&self) {
        let inner = &self.0;
        loop {
            {
                let st = inner.st.borrow();
                if st.closing || st.lost || st.read_eof {
                    drop(st);
                    let rd = std::mem::take(&mut *inner.rd.borrow_mut());
                    drop(rd);
                    return;
                }
                if !st.reading {
                    drop(st);
                    let rd = &mut *inner.rd.borrow_mut();
                    if let (Some(m), false) = (&rd.multi, rd.cancelling) {
                        rd.cancelling = true;
                        m.cancel();
                    }
                    // (A plain receive stays: what it gets is kept.)
                    return;
                }
            }
            let Some(fd) = inner.sock.borrow().as_ref().map(|s| s.shared().clone()) else {
                return;
            };
            {
                let rd = inner.rd.borrow();
                if rd.multi.is_some() || rd.plain.is_some() {
                    return;
                }
            }
            let kept = inner.lp.driver().borrow_mut().take_stashed(&fd);
            if !kept.is_empty() {
                if kept.iter().all(|c| self.deliver_slice(c)) {
                    continue; // the protocol may have paused or closed
                }
                return;
            }
            let driver = inner.lp.driver();
            let mut rd = inner.rd.borrow_mut();
            if std::mem::take(&mut rd.dry) {
                let op = Box::new(Recv::new(fd, Vec::with_capacity(READ_SIZE)));
                rd.plain = Some(HandlerOp::submit(driver, op, self.handler()));
            } else {
                let op = Box::new(RecvPooled {
                    fd,
                    pool: inner.pool.clone(),
                });
                rd.multi = Some(MultiOp::submit_stream(driver, op, self.handler()));
            }
            return;
        }
    }

    /// The plain receive (after the pool ran dry) completed.
    fn on_plain_read(&self) {
        let taken = {
            let mut rd = self.0.rd.borrow_mut();
            let taken = rd.plain.as_mut().and_then(|p| p.take());
            if taken.is_some() {
                rd.plain = None;
            }
            taken
        };
        let Some((res, recv)) = taken else {
            return;
        };
        let (r, b) = recv.finish(res);
        if !self.0.st.borrow().reading {
            // Paused meanwhile: keep the data for when reading resumes (an
            // EOF or error is seen again by the next receive).
            self.keep(&b, r);
            return;
        }
        match r {
            Ok(0) => self.eof(),
            Ok(_) => {
                if self.deliver_slice(&b) {
                    self.pump_reader();
                }
            }
            Err(e) => self.force_close(Some(e.into())),
        }
    }

    /// Keeps what a receive got while reading was paused, for the next
    /// receive (`pump_reader` serves it first).
    fn keep(&self, data: &[u8], r: io::Result<usize>) {
        if matches!(r, Ok(n) if n > 0) {
            let fd = self.0.sock.borrow().as_ref().map(|s| s.shared().clone());
            if let Some(fd) = fd {
                self.0
                    .lp
                    .driver()
                    .borrow_mut()
                    .stash_data(&fd, data.to_vec());
            }
        }
    }

    /// One result of the multishot receive, in order.
    fn on_received(&self, done: Done) {
        let inner = &self.0;
        // Anything but data ends the receive (as does the kernel's last
        // completion); it is armed again below while reading is on.
        if done.last || !matches!(done.res, Ok(v) if v != 0) {
            let mut rd = inner.rd.borrow_mut();
            rd.multi = None;
            rd.cancelling = false;
        }
        if !inner.st.borrow().reading {
            // Paused: data is kept in order for the resume; the EOF or
            // error that ended the receive is seen again by the next one.
            if let Ok(v) = done.res {
                if let Some(b) = RecvBuf::from_completion(&inner.pool, v) {
                    self.keep(&b, Ok(b.len()));
                }
            }
            if done.res == Err(libc::ENOBUFS) {
                inner.pool.borrow_mut().ran_dry();
                inner.rd.borrow_mut().dry = true;
            }
            return;
        }
        match done.res {
            Ok(0) => self.eof(),
            Ok(v) => {
                let Some(b) = RecvBuf::from_completion(&inner.pool, v) else {
                    let e = io::Error::other("receive completed without a pool buffer");
                    return self.force_close(Some(e.into()));
                };
                if !self.deliver(b) {
                    return;
                }
                // The protocol may have paused reading or closed; the
                // receive may have ended.
                let rearm = done.last || {
                    let st = inner.st.borrow();
                    st.closing || st.lost || st.read_eof || !st.reading
                };
                if rearm {
                    self.pump_reader();
                }
            }
            Err(libc::ENOBUFS) => {
                // The proactor's buffer ring ran dry: it holds more from
                // now on (the pool's policy; here because this is the one
                // receiver of pool buffers, and the hot path stays clean).
                inner.pool.borrow_mut().ran_dry();
                inner.rd.borrow_mut().dry = true;
                self.pump_reader();
            }
            // Our own cancel (reading was paused, and is on again).
            Err(libc::ECANCELED) => self.pump_reader(),
            Err(e) => self.force_close(Some(io::Error::from_raw_os_error(e).into())),
        }
    }

    /// A result of a multishot receive this transport gave up (closing,
    /// or it ended on EOF or an error while results were still queued).
    /// Data is not lost: it is delivered now if reading is on (nothing
    /// newer can precede it), kept for the next receive if reading is
    /// paused, and dropped only once the transport is closing. EOF and
    /// errors are seen again by the next receive.
    fn on_stale_receive(&self, done: Done) {
        let inner = &self.0;
        let Ok(v) = done.res else { return };
        let Some(b) = RecvBuf::from_completion(&inner.pool, v) else {
            return;
        };
        let (drop_it, deliver) = {
            let st = inner.st.borrow();
            (st.closing || st.lost, st.reading && !st.read_eof)
        };
        if drop_it {
            return;
        }
        if deliver {
            self.deliver(b);
        } else if let Some(fd) = inner.sock.borrow().as_ref().map(|s| s.shared().clone()) {
            inner.lp.driver().borrow_mut().stash_data(&fd, b.to_vec());
        }
    }

    /// Hands a received pool buffer to the protocol (owned: it may keep it
    /// or write it back); false if the protocol failed.
    fn deliver(&self, data: RecvBuf) -> bool {
        // A receive that filled its buffer likely has more behind it in this
        // turn: let the replies coalesce until the turn ends (one send for
        // a bulk transfer's chunks). A short one ends the peer's message:
        // the reply leaves when the callback returns.
        self.0.st.borrow_mut().in_data_cb = data.len() < POOL_BUF_SIZE;
        let mut data = Some(data);
        let r = self.0.protocol.invoke(|p| {
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

    /// Hands received bytes (a kept or a plain receive) to the protocol.
    fn deliver_slice(&self, data: &[u8]) -> bool {
        // (As in `deliver`: a full read coalesces until the turn ends.)
        self.0.st.borrow_mut().in_data_cb = data.len() < READ_SIZE;
        let r = self.0.protocol.invoke(|p| p.data_received(data));
        self.data_cb_returned();
        self.delivered(r, || {
            let copy = data.to_vec();
            Box::new(move |p: &mut dyn Protocol| p.data_received(&copy))
        })
    }

    /// The protocol's `data_received` returned: what it wrote leaves now
    /// (in one send), rather than at the end of the turn: a reply goes out
    /// with the same driver wait either way, for no turn-end call.
    fn data_cb_returned(&self) {
        let flush = {
            let mut st = self.0.st.borrow_mut();
            st.in_data_cb = false;
            std::mem::take(&mut st.flush_on_return) && !st.flush_queued
        };
        if flush {
            self.pump_writer();
        }
    }

    /// After a delivery: false if the protocol failed. `Busy` is only
    /// reachable if a protocol drives another transport's reader
    /// synchronously: the order is kept by deferring the delivery.
    fn delivered(
        &self,
        r: std::result::Result<Option<()>, Failure>,
        deferred: impl FnOnce() -> Box<dyn FnOnce(&mut dyn Protocol)>,
    ) -> bool {
        match r {
            Ok(_) => true,
            Err(Failure::Panic(m)) => {
                self.protocol_panicked(m);
                false
            }
            Err(Failure::Busy) => {
                let f = deferred();
                self.call_protocol(move |p| f(p));
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
            let st = inner.st.borrow();
            if st.lost || st.sending {
                return;
            }
            if !st.wbuf.is_empty() {
                Step::Send
            } else if st.eof_requested && !st.eof_sent {
                Step::Eof
            } else if st.closing {
                Step::Finish
            } else {
                return;
            }
        };
        match step {
            Step::Send => {
                // The buffers move into the op (no clone); what the kernel
                // does not take goes back to the front of the queue.
                let mut wr = inner.wr.borrow_mut();
                if wr.op.is_none() {
                    let Some(fd) = inner.sock.borrow().as_ref().map(|s| s.shared().clone()) else {
                        return;
                    };
                    let op = Box::new(SendMsg::new(fd, Vec::new(), None));
                    wr.op = Some(ReusableOp::new(inner.lp.driver(), op, &self.handler()));
                }
                let op = wr.op.as_mut().expect("made above");
                let mut st = inner.st.borrow_mut();
                st.sending = true;
                op.submit_with(|m| {
                    if st.wbuf.len() == 1 {
                        m.bufs.extend(st.wbuf.pop_front());
                    } else {
                        let k = st.wbuf.len().min(MAX_IOV);
                        m.bufs.extend(st.wbuf.drain(..k));
                    }
                });
            }
            Step::Eof => {
                let r = inner
                    .sock
                    .borrow()
                    .as_ref()
                    .map(|s| s.shutdown(std::net::Shutdown::Write));
                inner.st.borrow_mut().eof_sent = true;
                if let Some(Err(e)) = r {
                    return self.force_close(Some(e));
                }
                if inner.st.borrow().read_eof {
                    self.close();
                }
                self.pump_writer();
            }
            Step::Finish => self.connection_lost(None),
        }
    }

    /// A send completed: bytes sent, or an errno.
    fn on_sent(&self, done: Done) {
        let inner = &self.0;
        // An error sent nothing (EINTR: the queue is simply sent again).
        let n = done.res.map_or(0, |n| n as usize);
        let (resume, idle) = {
            let mut wr = inner.wr.borrow_mut();
            let Some(op) = wr.op.as_mut().filter(|o| o.in_flight()) else {
                return;
            };
            let mut st = inner.st.borrow_mut();
            st.sending = false;
            if st.lost {
                // Aborted (or the protocol failed) while this send was in
                // flight: the buffer was dropped and counted out then.
                op.completed(|m| m.bufs.clear());
                return;
            }
            st.wsize -= n;
            // What the kernel took is dropped; the rest goes back to the
            // front of the queue (the op is idle now, its vector kept).
            op.completed(|m| {
                let bufs = &mut m.bufs;
                if bufs.len() == 1 && bufs[0].len() == n {
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
                        st.wbuf.push_front(b);
                    }
                }
                bufs.clear();
            });
            let resume = st.protocol_paused && st.wsize <= st.low;
            st.protocol_paused &= !resume;
            // Nothing more to send, no EOF or close to finish.
            let idle = st.wbuf.is_empty() && !st.eof_requested && !st.closing;
            (resume, idle)
        };
        if let Err(e) = done.res {
            if e != libc::EINTR {
                return self.force_close(Some(io::Error::from_raw_os_error(e).into()));
            }
        }
        if resume {
            self.call_protocol(|p| p.resume_writing());
        } else if idle {
            return;
        }
        self.pump_writer();
    }

    /// Queues `data` for sending; it leaves with the next driver wait,
    /// together with everything else written during this loop turn.
    ///
    /// Equivalent to `WriteTransport.write`. Over the high-water mark the
    /// protocol's `pause_writing` is called (once, until `resume_writing`).
    ///
    /// `data` is any owned byte container [`WriteBuf`] converts from; none is
    /// copied. A [`RecvBuf`] from
    /// [`Protocol::data_received_owned`](crate::Protocol::data_received_owned)
    /// is sent straight from the receive pool (copied instead while the pool
    /// runs low, so held buffers cannot starve the loop's receives).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the transport is closing or closed;
    /// [`Error::InvalidState`] after [`write_eof`](Self::write_eof).
    pub fn write(&self, data: impl Into<WriteBuf>) -> Result<()> {
        let mut data = data.into();
        if let Chunk::Recv(b) = &data.0 {
            if b.pool_is_low() {
                data = WriteBuf(Chunk::Bytes(Bytes::copy_from_slice(b)));
            }
        }
        let (flush, pause) = {
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
            // A flush when the protocol's data_received returns, if this
            // is it; else at the end of this turn, unless a send or a flush
            // is already on its way. Pause the protocol past the high mark.
            let flush = if st.in_data_cb {
                st.flush_on_return = true;
                false
            } else {
                st.queue_flush()
            };
            (flush, st.pause_due())
        };
        if flush {
            self.0.lp.core.call_at_turn_end(self.handler());
        }
        if pause {
            self.call_protocol(|p| p.pause_writing());
        }
        Ok(())
    }

    /// Over the high-water mark and not paused yet: pause the protocol
    /// (once, until `resume_writing`).
    fn maybe_pause(&self) {
        let pause = self.0.st.borrow_mut().pause_due();
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
        B: Into<WriteBuf>,
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

    /// Flushes at the end of this loop turn (once per turn).
    fn kick_writer(&self) {
        let queue = self.0.st.borrow_mut().queue_flush();
        if queue {
            self.0.lp.core.call_at_turn_end(self.handler());
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
        self.pump_reader();
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
    /// releases the protocol, the ops in flight and the socket.
    fn connection_lost(&self, exc: Option<Error>) {
        {
            let mut st = self.0.st.borrow_mut();
            if st.lost {
                return;
            }
            st.lost = true;
        }
        self.pump_reader();
        let t = self.clone();
        self.0.lp.call_soon_impl(
            move || {
                t.call_protocol(move |p| p.connection_lost(exc));
                t.release_all();
            },
            &"connection_lost",
        );
    }

    /// The connection is over: releases the protocol, the ops in flight
    /// and the socket, runs the connection-lost hooks, and leaves the
    /// loop's list of live transports.
    fn release_all(&self) {
        let inner = &self.0;
        inner.protocol.release();
        self.drop_ops();
        inner.sock.borrow_mut().take();
        let hooks = std::mem::take(&mut *inner.on_lost.borrow_mut());
        for h in hooks {
            h();
        }
        if let Some(key) = inner.registered.take() {
            inner.lp.core.unregister_transport(key);
        }
    }

    /// Identity of the transport (the same for every handle to it).
    pub(crate) fn id(&self) -> usize {
        Rc::as_ptr(&self.0) as *const () as usize
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
        self.pump_reader();
    }

    /// Receives again. Equivalent to `ReadTransport.resume_reading`.
    pub fn resume_reading(&self) {
        if std::mem::replace(&mut self.0.st.borrow_mut().reading, true) {
            return;
        }
        // Data (kept or new) arrives through the loop, never inside this call.
        let t = self.clone();
        self.0
            .lp
            .call_soon_impl(move || t.pump_reader(), &"resume_reading");
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
