//! The datagram transport (UDP and Unix datagram sockets), on the driver's
//! `recvmsg` / `sendmsg` ops: datagram boundaries are kept, a send or
//! receive error goes to `error_received` and the endpoint stays open.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::Bytes;

use super::cell::{Failure, ProtoCell};
use super::{ExtraInfo, buffer_limits};
use crate::base_loop::{EventLoop, LoopClosing};
use crate::driver::Op;
use crate::driver::ops::{RecvFrom, SendMsg};
use crate::error::{Error, Result};
use crate::events::ExceptionContext;
use crate::protocols::DatagramProtocol;
use crate::sock::{SockAddr, Socket};
use crate::tasks::TaskRef;

/// Largest datagram received in one piece (UDP's maximum payload).
const MAX_DATAGRAM: usize = 65_536;

#[derive(Default)]
struct State {
    queue: VecDeque<(Bytes, Option<SockAddr>)>,
    size: usize,
    high: usize,
    low: usize,
    paused: bool,
    writer_idle: bool,
    closing: bool,
    lost: bool,
}

struct Inner {
    lp: EventLoop,
    sock: RefCell<Option<Socket>>,
    fd: std::os::fd::RawFd,
    local: Option<SockAddr>,
    remote: Option<SockAddr>,
    protocol: ProtoCell<dyn DatagramProtocol>,
    st: RefCell<State>,
    reader: RefCell<Option<TaskRef>>,
    writer: RefCell<Option<TaskRef>>,
    write_waker: RefCell<Option<Waker>>,
    /// The loop's key for this live endpoint ([`LoopClosing`]).
    registered: std::cell::Cell<Option<usize>>,
}

impl LoopClosing for Inner {
    fn loop_closing(self: Rc<Self>) {
        // The loop closes under a live endpoint: let go of the protocol
        // (which may hold this transport), the tasks and the socket.
        self.st.borrow_mut().lost = true;
        DatagramTransport(self).release_all();
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
        let (high, low) = buffer_limits(None, None).expect("default limits are valid");
        let t = DatagramTransport(Rc::new(Inner {
            lp: lp.clone(),
            fd: std::os::fd::AsRawFd::as_raw_fd(&sock),
            local: sock.local_addr().ok(),
            sock: RefCell::new(Some(sock)),
            remote,
            protocol: ProtoCell::new(protocol),
            st: RefCell::new(State {
                high,
                low,
                writer_idle: true,
                ..Default::default()
            }),
            reader: RefCell::new(None),
            writer: RefCell::new(None),
            write_waker: RefCell::new(None),
            registered: std::cell::Cell::new(None),
        }));
        let weak: std::rc::Weak<dyn LoopClosing> = Rc::downgrade(&t.0) as _;
        t.0.registered.set(Some(lp.core.register_transport(weak)));
        let t2 = t.clone();
        let r = lp.spawn_internal(async move { t2.read_loop().await });
        *t.0.reader.borrow_mut() = Some(r.as_ref());
        let t3 = t.clone();
        let w = lp.spawn_internal(async move { t3.write_loop().await });
        *t.0.writer.borrow_mut() = Some(w.as_ref());
        t
    }

    fn call_protocol(&self, f: impl FnOnce(&mut dyn DatagramProtocol) + 'static) {
        if let Err(msg) = self.0.protocol.call(f) {
            self.panicked(msg);
        }
    }

    fn panicked(&self, msg: String) {
        self.0.lp.call_exception_handler_impl(ExceptionContext {
            message: "Fatal error: a datagram protocol callback panicked".into(),
            exception: Some(Error::Panic(msg.clone())),
            transport: Some(format!("{self:?}")),
            ..Default::default()
        });
        self.force_close(Some(Error::Panic(msg)));
    }

    fn fd(&self) -> Option<crate::driver::fd::SharedFd> {
        self.0.sock.borrow().as_ref().map(|s| s.shared().clone())
    }

    async fn read_loop(self) {
        self.call_protocol({
            let t = self.clone();
            move |p| p.connection_made(t)
        });
        let mut buf = Vec::with_capacity(MAX_DATAGRAM);
        loop {
            if self.is_closing() {
                return;
            }
            let Some(fd) = self.fd() else { return };
            let (res, op) = Op::submit(self.0.lp.driver(), RecvFrom::new(fd, buf)).await;
            let (r, mut b) = op.finish(res);
            match r {
                Ok((_, addr)) => {
                    match self
                        .0
                        .protocol
                        .invoke(|p| p.datagram_received(&b, addr.clone()))
                    {
                        Ok(_) => {}
                        Err(Failure::Panic(m)) => {
                            self.panicked(m);
                            return;
                        }
                        Err(Failure::Busy) => {
                            let data = b.clone();
                            self.call_protocol(move |p| p.datagram_received(&data, addr));
                        }
                    }
                }
                Err(e) if is_fatal(&e) => {
                    self.force_close(Some(e.into()));
                    return;
                }
                // ICMP errors (connection refused) and the like: report, go on.
                Err(e) => self.call_protocol(move |p| p.error_received(e.into())),
            }
            b.clear();
            buf = b;
        }
    }

    async fn write_loop(self) {
        let inner = &self.0;
        loop {
            let next = std::future::poll_fn(|cx| {
                let mut st = inner.st.borrow_mut();
                if st.lost {
                    return Poll::Ready(None);
                }
                if let Some(d) = st.queue.pop_front() {
                    st.writer_idle = false;
                    return Poll::Ready(Some(Some(d)));
                }
                if st.closing {
                    return Poll::Ready(Some(None));
                }
                st.writer_idle = true;
                *inner.write_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            let (data, addr) = match next {
                None => return,
                Some(None) => {
                    self.connection_lost(None);
                    return;
                }
                Some(Some(d)) => d,
            };
            let len = data.len();
            let Some(fd) = self.fd() else { return };
            let (res, _) = Op::submit(inner.lp.driver(), SendMsg::new(fd, vec![data], addr)).await;
            let resume = {
                let mut st = inner.st.borrow_mut();
                st.size -= len;
                if st.paused && st.size <= st.low {
                    st.paused = false;
                    true
                } else {
                    false
                }
            };
            if resume {
                self.call_protocol(|p| p.resume_writing());
            }
            match res {
                Ok(_) => {}
                Err(e) if is_fatal(&e) => {
                    self.force_close(Some(e.into()));
                    return;
                }
                Err(e) => self.call_protocol(move |p| p.error_received(e.into())),
            }
        }
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
        let pause = {
            let mut st = self.0.st.borrow_mut();
            if st.closing || st.lost {
                return Err(Error::closed("datagram transport is closing"));
            }
            st.size += data.len();
            st.queue.push_back((data, dest));
            if st.writer_idle {
                st.writer_idle = false;
                if let Some(w) = self.0.writer.borrow().as_ref() {
                    self.0.lp.core.step_at_turn_end(w);
                }
            }
            if !st.paused && st.size > st.high {
                st.paused = true;
                true
            } else {
                false
            }
        };
        if pause {
            self.call_protocol(|p| p.pause_writing());
        }
        Ok(())
    }

    /// Closes once queued datagrams are sent. Equivalent to `close`.
    pub fn close(&self) {
        {
            let mut st = self.0.st.borrow_mut();
            if st.closing || st.lost {
                return;
            }
            st.closing = true;
        }
        if let Some(r) = self.0.reader.borrow().as_ref() {
            r.cancel(None);
        }
        if let Some(w) = self.0.writer.borrow().as_ref() {
            self.0.lp.core.step_at_turn_end(w);
        }
    }

    /// Closes at once, dropping queued datagrams. Equivalent to `abort`.
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
            st.queue.clear();
            st.size = 0;
        }
        self.connection_lost(exc);
    }

    fn connection_lost(&self, exc: Option<Error>) {
        {
            let mut st = self.0.st.borrow_mut();
            if st.lost {
                return;
            }
            st.lost = true;
        }
        if let Some(w) = self.0.write_waker.borrow_mut().take() {
            w.wake();
        }
        let t = self.clone();
        self.0.lp.call_soon_impl(
            move || {
                t.call_protocol(move |p| p.connection_lost(exc));
                t.release_all();
            },
            &"datagram connection_lost",
        );
    }

    /// The endpoint is over: releases the protocol and the socket, ends
    /// the reader and writer tasks, and leaves the loop's list of live
    /// transports.
    fn release_all(&self) {
        let inner = &self.0;
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
        if let Some(key) = inner.registered.take() {
            inner.lp.core.unregister_transport(key);
        }
    }

    /// True once closing or closed. Equivalent to `is_closing`.
    pub fn is_closing(&self) -> bool {
        let st = self.0.st.borrow();
        st.closing || st.lost
    }

    /// Bytes queued for sending. Equivalent to `get_write_buffer_size`.
    pub fn get_write_buffer_size(&self) -> usize {
        self.0.st.borrow().size
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
        self.0.lp.clone()
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
            "<DatagramTransport fd={} local={:?} closing={}>",
            self.0.fd,
            self.0.local.as_ref().and_then(|a| a.as_socket()),
            self.is_closing()
        )
    }
}
