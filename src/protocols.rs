//! Protocols: the callback interfaces transports drive (asyncio's
//! `BaseProtocol`, `Protocol`, `BufferedProtocol`, `DatagramProtocol`).
//!
//! Every callback has a default that does nothing, so a protocol implements
//! only what it needs. The order is asyncio's: `connection_made` once, then
//! data in order, `eof_received` at most once, `connection_lost` exactly
//! once. Callbacks may call back into the transport (write, close, pause);
//! flow-control callbacks triggered from inside another callback of the same
//! protocol are delivered right after it returns.
#![forbid(unsafe_code)]

use crate::driver::pool::RecvBuf;
use crate::error::Error;
use crate::sock::SockAddr;
use crate::transports::{DatagramTransport, Transport};

/// The callbacks every stream protocol has, whether it receives into the
/// loop's buffers ([`Protocol`]) or its own ([`BufferedProtocol`]).
///
/// Equivalent to `asyncio.BaseProtocol`, with one difference: asyncio
/// declares `eof_received` on `Protocol` and `BufferedProtocol` separately,
/// with the same meaning and default; here it sits on the shared supertrait
/// so a transport drives both kinds through one interface. Implement it
/// next to [`Protocol`] or [`BufferedProtocol`] (an empty
/// `impl BaseProtocol for P {}` keeps every default).
///
/// [`DatagramProtocol`] does not build on it, though asyncio's subclasses
/// `BaseProtocol`: here `connection_made` is typed by its transport, and a
/// datagram endpoint gets a [`DatagramTransport`], not a stream
/// [`Transport`] (and has no end of stream), so it declares its own
/// callbacks.
///
/// # Examples
///
/// ```
/// use ringloop::{BaseProtocol, Protocol, Transport};
///
/// struct Echo(Option<Transport>);
/// impl BaseProtocol for Echo {
///     fn connection_made(&mut self, t: Transport) {
///         self.0 = Some(t);
///     }
/// }
/// impl Protocol for Echo {
///     fn data_received(&mut self, data: &[u8]) {
///         self.0.as_ref().unwrap().write(data.to_vec()).unwrap();
///     }
/// }
/// ```
pub trait BaseProtocol: 'static {
    /// The connection is up; `transport` is the way to write and close.
    /// Equivalent to `asyncio.BaseProtocol.connection_made`.
    fn connection_made(&mut self, transport: Transport) {
        let _ = transport;
    }

    /// The connection is closed; `exc` is why, `None` for a normal close.
    /// Equivalent to `asyncio.BaseProtocol.connection_lost`.
    fn connection_lost(&mut self, exc: Option<Error>) {
        let _ = exc;
    }

    /// The transport's write buffer went over its high-water mark.
    /// Equivalent to `asyncio.BaseProtocol.pause_writing`.
    fn pause_writing(&mut self) {}

    /// The write buffer drained to its low-water mark.
    /// Equivalent to `asyncio.BaseProtocol.resume_writing`.
    fn resume_writing(&mut self) {}

    /// The peer closed its writing side. Return `true` to keep the
    /// connection open (then close it yourself), `false` to let the
    /// transport close. Equivalent to `asyncio.Protocol.eof_received` and
    /// `asyncio.BufferedProtocol.eof_received` (asyncio has no
    /// `BaseProtocol.eof_received`; see the trait doc).
    fn eof_received(&mut self) -> bool {
        false
    }
}

/// A stream protocol. Equivalent to `asyncio.Protocol`; the connection
/// callbacks are on its supertrait [`BaseProtocol`].
pub trait Protocol: BaseProtocol {
    /// Bytes arrived. The slice is only valid during the call (on the
    /// proactor it points into the kernel's provided-buffer ring).
    /// Equivalent to `asyncio.Protocol.data_received`.
    fn data_received(&mut self, data: &[u8]) {
        let _ = data;
    }

    /// Bytes arrived in a receive-pool buffer, handed over: keep it, or
    /// write it back with [`Transport::write`] without a copy (an echo, a
    /// proxy). The transport calls this for data it received into the
    /// loop's pool; the default passes the bytes to
    /// [`data_received`](Self::data_received), and data from anywhere else
    /// always goes there. The pool is shared by the loop's connections:
    /// hold a [`RecvBuf`] only as long as forwarding it takes.
    fn data_received_owned(&mut self, data: RecvBuf) {
        self.data_received(&data)
    }
}

/// A stream protocol that provides the receive buffer itself.
///
/// Equivalent to `asyncio.BufferedProtocol`; the connection callbacks are on
/// its supertrait [`BaseProtocol`]. The transport copies received bytes into
/// the buffer `get_buffer` returns and calls `buffer_updated`.
pub trait BufferedProtocol: BaseProtocol {
    /// A buffer to receive into, ideally at least `sizehint` bytes (0: any
    /// size). Must not be empty.
    /// Equivalent to `asyncio.BufferedProtocol.get_buffer`.
    fn get_buffer(&mut self, sizehint: usize) -> &mut [u8];
    /// `n` bytes were written at the start of the last buffer.
    /// Equivalent to `asyncio.BufferedProtocol.buffer_updated`.
    fn buffer_updated(&mut self, n: usize);
}

/// Adapts a [`BufferedProtocol`] to the transport's [`Protocol`] interface.
pub(crate) struct Buffered<P>(pub(crate) P);

impl<P: BufferedProtocol> BaseProtocol for Buffered<P> {
    fn connection_made(&mut self, transport: Transport) {
        self.0.connection_made(transport)
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        self.0.connection_lost(exc)
    }
    fn pause_writing(&mut self) {
        self.0.pause_writing()
    }
    fn resume_writing(&mut self) {
        self.0.resume_writing()
    }
    fn eof_received(&mut self) -> bool {
        self.0.eof_received()
    }
}

impl<P: BufferedProtocol> Protocol for Buffered<P> {
    fn data_received(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let buf = self.0.get_buffer(data.len());
            assert!(
                !buf.is_empty(),
                "BufferedProtocol::get_buffer returned an empty buffer"
            );
            let n = buf.len().min(data.len());
            buf[..n].copy_from_slice(&data[..n]);
            self.0.buffer_updated(n);
            data = &data[n..];
        }
    }
}

/// A datagram protocol. Equivalent to `asyncio.DatagramProtocol`.
///
/// It declares its own connection callbacks instead of building on
/// [`BaseProtocol`], whose `connection_made` takes a stream [`Transport`]:
/// a datagram endpoint is handed a [`DatagramTransport`].
pub trait DatagramProtocol: 'static {
    /// The endpoint is ready. Equivalent to `connection_made`.
    fn connection_made(&mut self, transport: DatagramTransport) {
        let _ = transport;
    }
    /// A datagram arrived from `addr`. Equivalent to `datagram_received`.
    fn datagram_received(&mut self, data: &[u8], addr: SockAddr) {
        let _ = (data, addr);
    }
    /// A send or receive failed (e.g. ICMP port unreachable as
    /// `ConnectionRefused`); the endpoint stays open.
    /// Equivalent to `error_received`.
    fn error_received(&mut self, exc: Error) {
        let _ = exc;
    }
    /// The endpoint is closed. Equivalent to `connection_lost`.
    fn connection_lost(&mut self, exc: Option<Error>) {
        let _ = exc;
    }
    /// The send buffer went over its high-water mark.
    fn pause_writing(&mut self) {}
    /// The send buffer drained to its low-water mark.
    fn resume_writing(&mut self) {}
}

/// A shared protocol's connection callbacks (see the `Protocol` impl for
/// `Rc<RefCell<P>>`).
impl<P: BaseProtocol> BaseProtocol for std::rc::Rc<std::cell::RefCell<P>> {
    fn connection_made(&mut self, transport: Transport) {
        self.borrow_mut().connection_made(transport)
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        self.borrow_mut().connection_lost(exc)
    }
    fn pause_writing(&mut self) {
        self.borrow_mut().pause_writing()
    }
    fn resume_writing(&mut self) {
        self.borrow_mut().resume_writing()
    }
    fn eof_received(&mut self) -> bool {
        self.borrow_mut().eof_received()
    }
}

/// A shared protocol: pass an `Rc<RefCell<P>>` and keep a clone to reach
/// the protocol after handing it to a transport (asyncio returns the
/// protocol instance from `create_connection`; here the caller keeps it).
impl<P: Protocol> Protocol for std::rc::Rc<std::cell::RefCell<P>> {
    fn data_received(&mut self, data: &[u8]) {
        self.borrow_mut().data_received(data)
    }
    fn data_received_owned(&mut self, data: RecvBuf) {
        self.borrow_mut().data_received_owned(data)
    }
}

/// Wraps a [`BufferedProtocol`] so it can be passed where a [`Protocol`]
/// is expected (`create_connection`, `create_server`).
pub fn buffered<P: BufferedProtocol>(p: P) -> impl Protocol {
    Buffered(p)
}

/// A shared datagram protocol (see the `Protocol` impl for `Rc<RefCell<P>>`).
impl<P: DatagramProtocol> DatagramProtocol for std::rc::Rc<std::cell::RefCell<P>> {
    fn connection_made(&mut self, transport: DatagramTransport) {
        self.borrow_mut().connection_made(transport)
    }
    fn datagram_received(&mut self, data: &[u8], addr: SockAddr) {
        self.borrow_mut().datagram_received(data, addr)
    }
    fn error_received(&mut self, exc: Error) {
        self.borrow_mut().error_received(exc)
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        self.borrow_mut().connection_lost(exc)
    }
    fn pause_writing(&mut self) {
        self.borrow_mut().pause_writing()
    }
    fn resume_writing(&mut self) {
        self.borrow_mut().resume_writing()
    }
}
