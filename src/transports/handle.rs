//! [`Transport`], the one stream-transport handle protocols get: a socket
//! or pipe transport driven by the loop's ops, or a transport layered on
//! another one (TLS). Protocols, streams and servers see one type; the
//! socket path is a direct call (one branch), layered kinds go through
//! [`Layered`].
#![forbid(unsafe_code)]

use std::fmt;
use std::rc::Rc;

use super::ExtraInfo;
use super::stream::StreamTransport;
use crate::WriteBuf;
use crate::base_loop::EventLoop;
use crate::error::Result;
use crate::protocols::Protocol;
use crate::sock::SockAddr;
use crate::sock::Socket;

/// A transport built on top of another one (TLS: the application's side
/// of the encrypted connection). Each method is [`Transport`]'s of the
/// same name.
pub(crate) trait Layered {
    fn write(&self, data: WriteBuf) -> Result<()>;
    /// Borrowed bytes: a layer that copies them anyway (TLS encrypts into
    /// its own records) takes them without an owned buffer first.
    fn write_slice(&self, data: &[u8]) -> Result<()> {
        self.write(WriteBuf::from(data.to_vec()))
    }
    fn write_eof(&self) -> Result<()>;
    fn can_write_eof(&self) -> bool;
    fn close(&self);
    fn abort(&self);
    fn is_closing(&self) -> bool;
    fn pause_reading(&self);
    fn resume_reading(&self);
    fn is_reading(&self) -> bool;
    fn is_writing_paused(&self) -> bool;
    fn get_write_buffer_size(&self) -> usize;
    fn get_write_buffer_limits(&self) -> (usize, usize);
    fn set_write_buffer_limits(&self, high: Option<usize>, low: Option<usize>) -> Result<()>;
    fn get_extra_info(&self, name: &str) -> Option<ExtraInfo>;
    fn peername(&self) -> Option<SockAddr>;
    fn sockname(&self) -> Option<SockAddr>;
    fn set_protocol(&self, protocol: Box<dyn Protocol>) -> Option<Box<dyn Protocol>>;
    fn get_loop(&self) -> EventLoop;
    /// Runs `f` when the connection is lost (servers count connections).
    fn on_lost(&self, f: Box<dyn FnOnce()>);
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

#[derive(Clone)]
enum Kind {
    Stream(StreamTransport),
    Layered(Rc<dyn Layered>),
}

/// A connected stream transport: a TCP or Unix socket, a pipe, or a
/// transport layered on one of those (TLS).
///
/// Equivalent to asyncio's `Transport` (and, for pipes, its
/// `ReadTransport` / `WriteTransport`: a read pipe's
/// [`write`](Self::write) is an error, a write pipe never reads). The same
/// code runs on both backends. Clones are handles to one transport. The
/// protocol gets a handle in `connection_made`; the transport owns the
/// protocol until `connection_lost`, after which both are released.
#[derive(Clone)]
pub struct Transport(Kind);

macro_rules! each {
    ($self:ident, $t:ident => $e:expr) => {
        match &$self.0 {
            Kind::Stream($t) => $e,
            Kind::Layered($t) => $e,
        }
    };
}

impl Transport {
    /// Wraps a connected socket and starts it: `connection_made` runs
    /// through the loop (never synchronously), then reading begins.
    pub(crate) fn start(lp: &EventLoop, sock: Socket, protocol: Box<dyn Protocol>) -> Transport {
        Transport(Kind::Stream(StreamTransport::start(lp, sock, protocol)))
    }

    /// Wraps one end of a pipe and starts it, reading (`read`) or writing:
    /// `connection_made` runs through the loop.
    pub(crate) fn start_pipe(
        lp: &EventLoop,
        pipe: crate::pipes::Pipe,
        read: bool,
        protocol: Box<dyn Protocol>,
    ) -> Transport {
        Transport(Kind::Stream(StreamTransport::start_pipe(
            lp, pipe, read, protocol,
        )))
    }

    pub(crate) fn from_stream(t: StreamTransport) -> Transport {
        Transport(Kind::Stream(t))
    }

    /// A handle to a layered transport (TLS).
    pub(crate) fn from_layered(t: Rc<dyn Layered>) -> Transport {
        Transport(Kind::Layered(t))
    }

    /// The socket or pipe transport behind this handle, unless it is
    /// layered (sendfile's zero-copy path needs the fd).
    pub(crate) fn as_stream(&self) -> Option<&StreamTransport> {
        match &self.0 {
            Kind::Stream(t) => Some(t),
            Kind::Layered(_) => None,
        }
    }

    /// Runs `f` when the connection is lost (servers count connections).
    pub(crate) fn on_lost(&self, f: impl FnOnce() + 'static) {
        match &self.0 {
            Kind::Stream(t) => t.on_lost(f),
            Kind::Layered(t) => t.on_lost(Box::new(f)),
        }
    }

    /// Identity of the transport (the same for every handle to it).
    pub(crate) fn id(&self) -> usize {
        match &self.0 {
            Kind::Stream(t) => t.id(),
            Kind::Layered(t) => Rc::as_ptr(t) as *const () as usize,
        }
    }

    /// Queues `data` for sending; it leaves with the next driver wait,
    /// together with everything else written during this loop turn.
    ///
    /// Equivalent to `WriteTransport.write`. Over the high-water mark the
    /// protocol's `pause_writing` is called (once, until `resume_writing`).
    ///
    /// `data` is any owned byte container [`WriteBuf`] converts from; none is
    /// copied. A [`RecvBuf`](crate::RecvBuf) from
    /// [`Protocol::data_received_owned`](crate::Protocol::data_received_owned)
    /// is sent straight from the receive pool (copied instead while the pool
    /// runs low, so held buffers cannot starve the loop's receives).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`](crate::Error::Closed) once the transport is closing
    /// or closed; [`Error::InvalidState`](crate::Error::InvalidState) after
    /// [`write_eof`](Self::write_eof) or on a read-only transport (a read
    /// pipe).
    #[inline]
    pub fn write(&self, data: impl Into<WriteBuf>) -> Result<()> {
        match &self.0 {
            Kind::Stream(t) => t.write(data),
            Kind::Layered(t) => t.write(data.into()),
        }
    }

    /// Writes a copy of `data`: asyncio's `write(data)` for bytes the caller
    /// keeps (a protocol's `data_received` slice). On a TLS transport the
    /// bytes go straight into the encrypted records, with no owned buffer
    /// in between; elsewhere this is `write(Bytes::copy_from_slice(data))`.
    /// Prefer [`write`](Self::write) with a buffer you own (a `Vec`, a
    /// [`RecvBuf`](crate::RecvBuf)): a socket transport then sends it
    /// without copying.
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
    ///         if let Some(t) = &self.0 {
    ///             let _ = t.write_slice(data);
    ///         }
    ///     }
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    pub fn write_slice(&self, data: &[u8]) -> Result<()> {
        match &self.0 {
            Kind::Stream(t) => t.write(bytes::Bytes::copy_from_slice(data)),
            Kind::Layered(t) => t.write_slice(data),
        }
    }

    /// A socket or pipe transport sends what it buffered at once
    /// ([`StreamTransport::send_now`]); a layered one has nothing of its own
    /// to send.
    pub(crate) fn send_now(&self) {
        if let Kind::Stream(t) = &self.0 {
            t.send_now();
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
    /// [`Error::Closed`](crate::Error::Closed) once the transport is
    /// closing; an error where [`can_write_eof`](Self::can_write_eof) is
    /// false.
    pub fn write_eof(&self) -> Result<()> {
        each!(self, t => t.write_eof())
    }

    /// Whether [`write_eof`](Self::write_eof) is possible: true for stream
    /// sockets and write pipes, false for TLS. Equivalent to
    /// `can_write_eof`.
    pub fn can_write_eof(&self) -> bool {
        each!(self, t => t.can_write_eof())
    }

    /// Closes the transport once the buffered data is sent; no more data is
    /// received. `connection_lost(None)` follows through the loop.
    ///
    /// Equivalent to `BaseTransport.close`. Idempotent.
    pub fn close(&self) {
        each!(self, t => t.close())
    }

    /// Closes at once, dropping buffered data; `connection_lost(None)`
    /// follows through the loop. Equivalent to `WriteTransport.abort`.
    pub fn abort(&self) {
        each!(self, t => t.abort())
    }

    /// True once [`close`](Self::close) or [`abort`](Self::abort) was
    /// called or the connection was lost. Equivalent to `is_closing`.
    pub fn is_closing(&self) -> bool {
        each!(self, t => t.is_closing())
    }

    /// Stops receiving until [`resume_reading`](Self::resume_reading).
    /// Equivalent to `ReadTransport.pause_reading`; idempotent.
    pub fn pause_reading(&self) {
        each!(self, t => t.pause_reading())
    }

    /// Receives again. Equivalent to `ReadTransport.resume_reading`.
    pub fn resume_reading(&self) {
        each!(self, t => t.resume_reading())
    }

    /// True while receiving. Equivalent to `ReadTransport.is_reading`.
    pub fn is_reading(&self) -> bool {
        each!(self, t => t.is_reading())
    }

    /// True while the write buffer is over its high-water mark (between
    /// `pause_writing` and `resume_writing`).
    ///
    /// asyncio calls `pause_writing` from inside `write`; a Rust protocol
    /// is already mutably borrowed while one of its own callbacks writes, so
    /// there the call comes right after that callback returns. A callback
    /// that writes in a loop checks this instead.
    pub fn is_writing_paused(&self) -> bool {
        each!(self, t => t.is_writing_paused())
    }

    /// Bytes buffered for sending. Equivalent to `get_write_buffer_size`.
    pub fn get_write_buffer_size(&self) -> usize {
        each!(self, t => t.get_write_buffer_size())
    }

    /// `(low, high)` water marks. Equivalent to `get_write_buffer_limits`.
    pub fn get_write_buffer_limits(&self) -> (usize, usize) {
        each!(self, t => t.get_write_buffer_limits())
    }

    /// Sets the water marks (`high` defaults to 64 KiB, `low` to `high / 4`).
    /// Equivalent to `set_write_buffer_limits`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) if
    /// `low > high`.
    pub fn set_write_buffer_limits(&self, high: Option<usize>, low: Option<usize>) -> Result<()> {
        each!(self, t => t.set_write_buffer_limits(high, low))
    }

    /// Transport information by asyncio's names: `"peername"`,
    /// `"sockname"`, `"socket"` (the fd) for sockets, `"pipe"` (the fd) for
    /// pipes; on TLS also `"peercert"`, `"cipher"`, `"tls_version"`,
    /// `"alpn_protocol"`, `"server_hostname"` and `"sslcontext"` (see
    /// [`ExtraInfo`]), the socket's keys coming from the transport below.
    /// Equivalent to `get_extra_info`.
    pub fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        each!(self, t => t.get_extra_info(name))
    }

    /// The peer's address, if known.
    pub fn peername(&self) -> Option<SockAddr> {
        each!(self, t => t.peername())
    }

    /// The local address, if known.
    pub fn sockname(&self) -> Option<SockAddr> {
        each!(self, t => t.sockname())
    }

    /// Replaces the protocol; returns the old one. Equivalent to
    /// `set_protocol` (and, through the return value, `get_protocol`).
    pub fn set_protocol(&self, protocol: Box<dyn Protocol>) -> Option<Box<dyn Protocol>> {
        each!(self, t => t.set_protocol(protocol))
    }

    /// The loop the transport runs on.
    pub fn get_loop(&self) -> EventLoop {
        each!(self, t => t.get_loop())
    }

    /// True if both handles are the same transport.
    pub fn same(&self, other: &Transport) -> bool {
        self.id() == other.id()
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Stream(t) => fmt::Debug::fmt(t, f),
            Kind::Layered(t) => t.fmt(f),
        }
    }
}
