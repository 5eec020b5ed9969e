//! The datagram transport (UDP and Unix datagram sockets), on the loop's
//! I/O API and the transport base, driven by completion events like the
//! stream transport (no task on the data path): datagram boundaries are
//! kept, a send or receive error goes to `error_received` and the endpoint
//! stays open.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::rc::Rc;

use bytes::Bytes;

use super::ExtraInfo;
use super::base::{Base, deliver_lost};
use super::cell::Failure;
use crate::base_loop::io::{DatagramRecv, DatagramSend, IoEvent, IoHandler};
use crate::base_loop::{EventLoop, LoopClosing};
use crate::error::{Error, Result};
use crate::protocols::DatagramProtocol;
use crate::sock::{SockAddr, Socket};

struct Writer {
    queue: VecDeque<(Bytes, Option<SockAddr>)>,
    /// A flush is queued for the end of this loop turn.
    flush_queued: bool,
}

struct Inner {
    base: Base<dyn DatagramProtocol>,
    sock: RefCell<Option<Socket>>,
    fd: std::os::fd::RawFd,
    local: Option<SockAddr>,
    remote: Option<SockAddr>,
    wr: RefCell<Writer>,
    recv: RefCell<DatagramRecv>,
    send: RefCell<Option<DatagramSend>>,
}

impl IoHandler for Inner {
    fn on_io(self: Rc<Self>, ev: IoEvent) {
        let t = DatagramTransport(self);
        if ev.is_turn_end() {
            t.0.wr.borrow_mut().flush_queued = false;
            t.pump_writer();
            return;
        }
        let sent = t.0.send.borrow_mut().as_mut().and_then(|s| s.take(&ev));
        if let Some(r) = sent {
            return t.on_sent(r);
        }
        t.on_received(&ev);
    }
}

impl LoopClosing for Inner {
    fn loop_closing(self: Rc<Self>) {
        // The loop closes under a live endpoint: let go of the protocol
        // (which may hold this transport), the ops and the socket.
        self.base.begin_lost();
        self.release_io();
        self.base.release();
    }
}

impl Inner {
    fn release_io(&self) {
        self.recv.borrow_mut().stop();
        let send = self.send.borrow_mut().take();
        drop(send);
        self.sock.borrow_mut().take();
    }
}

/// A datagram endpoint. Equivalent to `asyncio.DatagramTransport`.
#[derive(Clone)]
pub struct DatagramTransport(Rc<Inner>);

impl DatagramTransport {
    pub(crate) fn start(
        lp: &EventLoop,
        sock: Socket,
        remote: Option<SockAddr>,
        protocol: Box<dyn DatagramProtocol>,
    ) -> DatagramTransport {
        let recv = DatagramRecv::new(lp, sock.shared().clone());
        let t = DatagramTransport(Rc::new(Inner {
            base: Base::new(lp, protocol, "DatagramProtocol"),
            fd: std::os::fd::AsRawFd::as_raw_fd(&sock),
            local: sock.local_addr().ok(),
            sock: RefCell::new(Some(sock)),
            remote,
            wr: RefCell::new(Writer {
                queue: VecDeque::new(),
                flush_queued: false,
            }),
            recv: RefCell::new(recv),
            send: RefCell::new(None),
        }));
        let weak: std::rc::Weak<dyn LoopClosing> = Rc::downgrade(&t.0) as _;
        t.0.base.register(weak);
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
            &"datagram connection_made",
        );
        t
    }

    fn call_protocol(&self, f: impl FnOnce(&mut dyn DatagramProtocol) + 'static) {
        if let Err(msg) = self.0.base.call(f) {
            self.panicked(msg);
        }
    }

    fn panicked(&self, msg: String) {
        self.0.base.report_panic(&msg, format!("{self:?}"));
        self.force_close(Some(Error::Panic(msg)));
    }

    /// One receive in flight while the endpoint is open.
    fn pump_reader(&self) {
        let mut recv = self.0.recv.borrow_mut();
        if self.0.base.is_closing() {
            recv.stop();
        } else {
            recv.start(&self.0);
        }
    }

    /// A datagram (or a receive error) arrived.
    fn on_received(&self, ev: &IoEvent) {
        let inner = &self.0;
        let Some((r, buf)) = inner.recv.borrow_mut().take(ev) else {
            return;
        };
        match r {
            Ok((n, addr)) => {
                let data = &buf[..n];
                match inner
                    .base
                    .protocol
                    .invoke(|p| p.datagram_received(data, addr.clone()))
                {
                    Ok(_) => {}
                    Err(Failure::Panic(m)) => return self.panicked(m),
                    Err(Failure::Busy) => {
                        let copy = data.to_vec();
                        self.call_protocol(move |p| p.datagram_received(&copy, addr));
                    }
                }
            }
            Err(e) if is_fatal(&e) => return self.force_close(Some(e.into())),
            // ICMP errors (connection refused) and the like: report, go on.
            Err(e) => self.call_protocol(move |p| p.error_received(e.into())),
        }
        inner.recv.borrow_mut().recycle(buf);
        self.pump_reader();
    }

    /// Sends the next queued datagram, or finishes the close once none is.
    fn pump_writer(&self) {
        let inner = &self.0;
        if inner.base.is_lost() {
            return;
        }
        let mut send = inner.send.borrow_mut();
        if send.as_ref().is_some_and(|s| s.in_flight()) {
            return;
        }
        // The datagram stays at the queue's front (counted) until its send
        // completes.
        let next = inner.wr.borrow().queue.front().cloned();
        let Some((data, addr)) = next else {
            drop(send);
            if inner.base.is_closing() {
                self.connection_lost(None);
            }
            return;
        };
        if send.is_none() {
            let Some(fd) = inner.sock.borrow().as_ref().map(|s| s.shared().clone()) else {
                return;
            };
            *send = Some(DatagramSend::new(&inner.base.lp, fd, &self.0));
        }
        send.as_mut().expect("made above").send(data, addr);
    }

    /// A datagram's send completed.
    fn on_sent(&self, r: io::Result<usize>) {
        let inner = &self.0;
        let len = inner
            .wr
            .borrow_mut()
            .queue
            .pop_front()
            .map_or(0, |(d, _)| d.len());
        if inner.base.is_lost() {
            return;
        }
        let resume = inner.base.flow.borrow_mut().sent(len);
        if resume {
            self.call_protocol(|p| p.resume_writing());
        }
        match r {
            Ok(_) => {}
            Err(e) if is_fatal(&e) => return self.force_close(Some(e.into())),
            Err(e) => self.call_protocol(move |p| p.error_received(e.into())),
        }
        self.pump_writer();
    }

    /// Sends `data` to `addr` (or to the remote address the endpoint was
    /// connected to, when `addr` is `None`).
    ///
    /// Equivalent to `DatagramTransport.sendto`. Datagrams are queued and
    /// sent in order; an empty datagram is sent as such.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once closing; [`Error::InvalidArgument`] when no
    /// address is known, or `addr` differs from the connected remote address.
    pub fn sendto(&self, data: impl Into<Bytes>, addr: Option<&SockAddr>) -> Result<()> {
        let data = data.into();
        let dest = match (&self.0.remote, addr) {
            (Some(r), Some(a)) if r != a => {
                return Err(Error::InvalidArgument(format!(
                    "invalid address: must be None or {:?}",
                    r.as_socket()
                )));
            }
            (Some(_), _) => None,
            (None, Some(a)) => Some(a.clone()),
            (None, None) => {
                return Err(Error::InvalidArgument(
                    "sendto() needs an address on an unconnected endpoint".into(),
                ));
            }
        };
        let inner = &self.0;
        if inner.base.is_closing() {
            return Err(Error::closed("datagram transport is closing"));
        }
        let pause = inner.base.flow.borrow_mut().add(data.len());
        let flush = {
            let mut w = inner.wr.borrow_mut();
            w.queue.push_back((data, dest));
            !std::mem::replace(&mut w.flush_queued, true)
        };
        // What a turn queued leaves at its end, with the next driver wait.
        if flush {
            inner.base.lp.call_at_turn_end(&self.0);
        }
        if pause {
            self.call_protocol(|p| p.pause_writing());
        }
        Ok(())
    }

    /// Closes once queued datagrams are sent. Equivalent to `close`.
    pub fn close(&self) {
        if !self.0.base.begin_close() {
            return;
        }
        self.pump_reader();
        let flush = !std::mem::replace(&mut self.0.wr.borrow_mut().flush_queued, true);
        if flush {
            self.0.base.lp.call_at_turn_end(&self.0);
        }
    }

    /// Closes at once, dropping queued datagrams. Equivalent to `abort`.
    pub fn abort(&self) {
        self.force_close(None);
    }

    fn force_close(&self, exc: Option<Error>) {
        if self.0.base.is_lost() {
            return;
        }
        self.0.wr.borrow_mut().queue.clear();
        self.0.base.flow.borrow_mut().clear();
        self.connection_lost(exc);
    }

    fn connection_lost(&self, exc: Option<Error>) {
        if !self.0.base.begin_lost() {
            return;
        }
        self.0.recv.borrow_mut().stop();
        deliver_lost(
            self.0.clone(),
            |i| &i.base,
            exc,
            |p, exc| p.connection_lost(exc),
            Inner::release_io,
        );
    }

    /// True once closing or closed. Equivalent to `is_closing`.
    pub fn is_closing(&self) -> bool {
        self.0.base.is_closing()
    }

    /// Bytes queued for sending. Equivalent to `get_write_buffer_size`.
    pub fn get_write_buffer_size(&self) -> usize {
        self.0.base.flow.borrow().size()
    }

    /// `(low, high)` water marks. Equivalent to `get_write_buffer_limits`.
    pub fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.0.base.flow.borrow().limits()
    }

    /// Sets the water marks (`high` defaults to 64 KiB, `low` to `high / 4`).
    /// Equivalent to `set_write_buffer_limits`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `low > high`.
    pub fn set_write_buffer_limits(&self, high: Option<usize>, low: Option<usize>) -> Result<()> {
        let pause = self.0.base.flow.borrow_mut().set_limits(high, low)?;
        if pause {
            self.call_protocol(|p| p.pause_writing());
        }
        Ok(())
    }

    /// Transport information: `"sockname"`, `"peername"` (connected
    /// endpoints), `"socket"`. Equivalent to `get_extra_info`.
    pub fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        match name {
            "sockname" => self.0.local.clone().map(ExtraInfo::Address),
            "peername" => self.0.remote.clone().map(ExtraInfo::Address),
            "socket" => Some(ExtraInfo::Fd(self.0.fd)),
            _ => None,
        }
    }

    /// The local address, if bound.
    pub fn sockname(&self) -> Option<SockAddr> {
        self.0.local.clone()
    }

    /// The loop the transport runs on.
    pub fn get_loop(&self) -> EventLoop {
        self.0.base.lp.clone()
    }
}

/// Errors after which a datagram socket is unusable.
fn is_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF) | Some(libc::ENOTSOCK) | Some(libc::EINVAL) | Some(libc::EFAULT)
    )
}

impl fmt::Debug for DatagramTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<DatagramTransport fd={} local={:?} phase={:?}>",
            self.0.fd,
            self.0.local.as_ref().and_then(|a| a.as_socket()),
            self.0.base.phase()
        )
    }
}
