//! Streams: asyncio's `StreamReader` / `StreamWriter`, `open_connection`
//! and `start_server`, on top of the transports.
//!
//! A stream connection is a transport whose protocol feeds a
//! [`StreamReader`] (pausing the transport when more than twice the limit is
//! buffered) and tracks write flow control for [`StreamWriter::drain`]. Both
//! halves also implement `futures_io::AsyncRead` / `AsyncWrite`, so the
//! ecosystem's codecs work on them.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};

use crate::WriteBuf;
use crate::base_loop::EventLoop;
use crate::error::{Error, Result};
use crate::events::{AbstractEventLoop, get_running_loop};
use crate::protocols::{BaseProtocol, Protocol};
use crate::server::{Server, ServerOptions};
use crate::sock::SockAddr;
use crate::transports::{ExtraInfo, Transport};

/// The default buffer limit of a [`StreamReader`] (asyncio's 64 KiB).
pub const DEFAULT_LIMIT: usize = 64 * 1024;

struct ReaderState {
    buf: BytesMut,
    eof: bool,
    exc: Option<Error>,
    waiter: Option<Waker>,
    transport: Option<Transport>,
    paused: bool,
}

/// Reads from a connection. Equivalent to `asyncio.StreamReader`.
///
/// Clones share the buffer. Reads wait for data; at most `limit` bytes may
/// come before a separator (more than twice the limit buffered pauses the
/// transport until the reader catches up).
#[derive(Clone)]
pub struct StreamReader {
    st: Rc<RefCell<ReaderState>>,
    limit: usize,
}

impl StreamReader {
    /// A reader not attached to a transport (feed it with
    /// [`feed_data`](Self::feed_data)). Equivalent to `StreamReader(limit)`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a zero limit.
    pub fn new(limit: usize) -> Result<StreamReader> {
        if limit == 0 {
            return Err(Error::InvalidArgument("limit must be positive".into()));
        }
        Ok(StreamReader {
            st: Rc::new(RefCell::new(ReaderState {
                buf: BytesMut::new(),
                eof: false,
                exc: None,
                waiter: None,
                transport: None,
                paused: false,
            })),
            limit,
        })
    }

    /// The buffer limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn wake(st: &mut ReaderState) {
        if let Some(w) = st.waiter.take() {
            w.wake();
        }
    }

    /// Appends received bytes. Equivalent to `StreamReader.feed_data`.
    pub fn feed_data(&self, data: &[u8]) {
        let mut st = self.st.borrow_mut();
        if data.is_empty() {
            return;
        }
        st.buf.extend_from_slice(data);
        Self::wake(&mut st);
        if !st.paused && st.buf.len() > 2 * self.limit {
            if let Some(t) = &st.transport {
                t.pause_reading();
                st.paused = true;
            }
        }
    }

    /// Marks end of stream. Equivalent to `StreamReader.feed_eof`.
    pub fn feed_eof(&self) {
        let mut st = self.st.borrow_mut();
        st.eof = true;
        Self::wake(&mut st);
    }

    /// Makes the reads fail with `e`. Equivalent to `set_exception`.
    pub fn set_exception(&self, e: Error) {
        let mut st = self.st.borrow_mut();
        st.exc = Some(e);
        Self::wake(&mut st);
    }

    /// True once EOF was fed and the buffer is empty.
    /// Equivalent to `StreamReader.at_eof`.
    pub fn at_eof(&self) -> bool {
        let st = self.st.borrow();
        st.eof && st.buf.is_empty()
    }

    fn maybe_resume(&self, st: &mut ReaderState) {
        if st.buf.len() <= self.limit {
            unpause(st);
        }
    }

    /// Waits until the buffer changes (data, EOF or error).
    fn wait(&self) -> impl Future<Output = Result<()>> + '_ {
        let mut first = true;
        std::future::poll_fn(move |cx| {
            let mut st = self.st.borrow_mut();
            if let Some(e) = &st.exc {
                return Poll::Ready(Err(e.clone()));
            }
            if !first {
                return Poll::Ready(Ok(()));
            }
            first = false;
            if st.eof {
                return Poll::Ready(Ok(()));
            }
            // Never wait on a paused transport.
            unpause(&mut st);
            st.waiter = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    fn take(&self, n: usize) -> Bytes {
        let mut st = self.st.borrow_mut();
        let n = n.min(st.buf.len());
        let out = st.buf.split_to(n).freeze();
        self.maybe_resume(&mut st);
        out
    }

    /// Reads up to `n` bytes; `n < 0` reads until EOF; `n == 0` returns
    /// at once. Waits for at least one byte unless at EOF (then empty).
    ///
    /// Equivalent to `StreamReader.read(n)`.
    ///
    /// # Errors
    ///
    /// The connection's error.
    pub async fn read(&self, n: isize) -> Result<Bytes> {
        // asyncio raises the connection's error before it looks at `n` or
        // at EOF.
        if let Some(e) = &self.st.borrow().exc {
            return Err(e.clone());
        }
        if n == 0 {
            return Ok(Bytes::new());
        }
        if n < 0 {
            loop {
                let eof = self.st.borrow().eof;
                if eof {
                    let len = self.st.borrow().buf.len();
                    return Ok(self.take(len));
                }
                self.wait().await?;
            }
        }
        loop {
            {
                let st = self.st.borrow();
                if let Some(e) = &st.exc {
                    return Err(e.clone());
                }
                if !st.buf.is_empty() || st.eof {
                    drop(st);
                    return Ok(self.take(n as usize));
                }
            }
            self.wait().await?;
        }
    }

    /// Reads exactly `n` bytes.
    ///
    /// Equivalent to `StreamReader.readexactly`.
    ///
    /// # Errors
    ///
    /// [`Error::IncompleteRead`] with what was read when EOF comes first
    /// (the bytes are consumed, as in asyncio); the connection's error.
    pub async fn readexactly(&self, n: usize) -> Result<Bytes> {
        loop {
            {
                let st = self.st.borrow();
                if let Some(e) = &st.exc {
                    return Err(e.clone());
                }
                if st.buf.len() >= n {
                    drop(st);
                    return Ok(self.take(n));
                }
                if st.eof {
                    drop(st);
                    let len = self.st.borrow().buf.len();
                    let partial = self.take(len);
                    return Err(Error::IncompleteRead {
                        partial,
                        expected: Some(n),
                    });
                }
            }
            self.wait().await?;
        }
    }

    /// Reads up to and including `separator`.
    ///
    /// Equivalent to `StreamReader.readuntil`.
    ///
    /// # Errors
    ///
    /// [`Error::LimitOverrun`] when more than `limit` bytes come before the
    /// separator (asyncio's limit does not count the separator; the data
    /// stays buffered, as in asyncio); [`Error::IncompleteRead`]
    /// at EOF without the separator (the bytes are consumed);
    /// [`Error::InvalidArgument`] for an empty separator.
    pub async fn readuntil(&self, separator: &[u8]) -> Result<Bytes> {
        self.readuntil_any(&[separator]).await
    }

    /// Reads up to and including whichever of `separators` ends first: the
    /// shortest result that ends with any of them. On a tie the shorter
    /// separator is the one that matched, also for the limit.
    ///
    /// Equivalent to `StreamReader.readuntil` with a tuple of separators.
    ///
    /// # Errors
    ///
    /// As [`readuntil`](Self::readuntil).
    pub async fn readuntil_any(&self, separators: &[&[u8]]) -> Result<Bytes> {
        if separators.is_empty() || separators.iter().any(|s| s.is_empty()) {
            return Err(Error::InvalidArgument(
                "separator should be at least one byte".into(),
            ));
        }
        let max_len = separators.iter().map(|s| s.len()).max().unwrap_or(1);
        let mut offset = 0;
        loop {
            {
                let st = self.st.borrow();
                if let Some(e) = &st.exc {
                    return Err(e.clone());
                }
                // The earliest end wins, then the shorter separator.
                let found = separators
                    .iter()
                    .filter_map(|sep| {
                        find(&st.buf[offset.min(st.buf.len())..], sep)
                            .map(|i| (i + offset + sep.len(), sep.len()))
                    })
                    .min();
                if let Some((end, l)) = found {
                    // The limit counts the data, not the separator (asyncio).
                    if end - l > self.limit {
                        return Err(Error::LimitOverrun { consumed: end - l });
                    }
                    drop(st);
                    return Ok(self.take(end));
                }
                // No separator starts before `offset` (one starting there
                // may still be arriving): search from there next time, and
                // fail once even that is past the limit.
                offset = (st.buf.len() + 1).saturating_sub(max_len);
                if offset > self.limit {
                    return Err(Error::LimitOverrun { consumed: offset });
                }
                if st.eof {
                    drop(st);
                    let len = self.st.borrow().buf.len();
                    let partial = self.take(len);
                    return Err(Error::IncompleteRead {
                        partial,
                        expected: None,
                    });
                }
            }
            self.wait().await?;
        }
    }

    /// Reads one line, `\n` included; at EOF the last, unterminated line
    /// (or empty).
    ///
    /// Equivalent to `StreamReader.readline`.
    ///
    /// # Errors
    ///
    /// [`Error::LimitOverrun`] for a line longer than the limit, its `\n`
    /// not counted (the over-long data is discarded, as asyncio's
    /// ValueError path does); the connection's error.
    pub async fn readline(&self) -> Result<Bytes> {
        match self.readuntil(b"\n").await {
            Ok(l) => Ok(l),
            Err(Error::IncompleteRead { partial, .. }) => Ok(partial),
            Err(Error::LimitOverrun { consumed }) => {
                // asyncio: drop the separator-terminated overlong line, or
                // everything buffered if no separator was seen.
                let mut st = self.st.borrow_mut();
                let n = if st.buf.get(consumed) == Some(&b'\n') {
                    consumed + 1
                } else {
                    st.buf.len()
                };
                let len = st.buf.len();
                st.buf.advance(n.min(len));
                self.maybe_resume(&mut st);
                Err(Error::LimitOverrun { consumed })
            }
            Err(e) => Err(e),
        }
    }

    /// Iterates over lines; `next_line` gives `None` at EOF.
    ///
    /// Equivalent to `async for line in reader`.
    pub async fn next_line(&self) -> Option<Result<Bytes>> {
        match self.readline().await {
            Ok(l) if l.is_empty() => None,
            r => Some(r),
        }
    }
}

/// Resumes the transport if this reader paused it.
fn unpause(st: &mut ReaderState) {
    if std::mem::replace(&mut st.paused, false) {
        if let Some(t) = &st.transport {
            t.resume_reading();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() == 1 {
        return hay.iter().position(|&b| b == needle[0]);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

impl fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.st.borrow();
        write!(
            f,
            "<StreamReader buffered={} eof={} limit={}>",
            st.buf.len(),
            st.eof,
            self.limit
        )
    }
}

impl futures_io::AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = self.st.borrow_mut();
        if !st.buf.is_empty() {
            let n = out.len().min(st.buf.len());
            out[..n].copy_from_slice(&st.buf[..n]);
            st.buf.advance(n);
            self.maybe_resume(&mut st);
            return Poll::Ready(Ok(n));
        }
        if let Some(e) = &st.exc {
            return Poll::Ready(Err(to_io(e)));
        }
        if st.eof || out.is_empty() {
            return Poll::Ready(Ok(0));
        }
        unpause(&mut st);
        st.waiter = Some(cx.waker().clone());
        Poll::Pending
    }
}

fn to_io(e: &Error) -> io::Error {
    match e {
        Error::Io(io) => io::Error::new(io.kind(), io.to_string()),
        other => io::Error::other(other.to_string()),
    }
}

/// Write-side state shared by the protocol and the writer.
#[derive(Default)]
struct FlowState {
    paused: bool,
    lost: bool,
    exc: Option<Error>,
    drain_waiters: Vec<Waker>,
    closed_waiters: Vec<Waker>,
}

/// The protocol behind a stream connection (asyncio's `StreamReaderProtocol`).
struct StreamProtocol {
    reader: StreamReader,
    flow: Rc<RefCell<FlowState>>,
    on_connect: Option<Box<dyn FnOnce(Transport)>>,
}

impl BaseProtocol for StreamProtocol {
    fn connection_made(&mut self, transport: Transport) {
        self.reader.st.borrow_mut().transport = Some(transport.clone());
        if let Some(f) = self.on_connect.take() {
            f(transport);
        }
    }
    fn eof_received(&mut self) -> bool {
        self.reader.feed_eof();
        // Keep the write side open: the application may still answer
        // (asyncio keeps it open too, except over TLS).
        true
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        match &exc {
            Some(e) => self.reader.set_exception(e.clone()),
            None => self.reader.feed_eof(),
        }
        WriterHooks(self.flow.clone()).lost(exc);
        self.reader.st.borrow_mut().transport = None;
    }
    fn pause_writing(&mut self) {
        WriterHooks(self.flow.clone()).pause();
    }
    fn resume_writing(&mut self) {
        WriterHooks(self.flow.clone()).resume();
    }
}

impl Protocol for StreamProtocol {
    fn data_received(&mut self, data: &[u8]) {
        self.reader.feed_data(data);
    }
}

/// Writes to a connection. Equivalent to `asyncio.StreamWriter`.
#[derive(Clone)]
pub struct StreamWriter {
    transport: Transport,
    flow: Rc<RefCell<FlowState>>,
    reader: StreamReader,
}

impl StreamWriter {
    /// Queues `data`; call [`drain`](Self::drain) to wait for room.
    /// Equivalent to `StreamWriter.write`.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once closing.
    pub fn write(&self, data: impl Into<WriteBuf>) -> Result<()> {
        self.transport.write(data)
    }

    /// Queues each buffer. Equivalent to `StreamWriter.writelines`.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    pub fn writelines<I, B>(&self, bufs: I) -> Result<()>
    where
        I: IntoIterator<Item = B>,
        B: Into<WriteBuf>,
    {
        self.transport.writelines(bufs)
    }

    /// Closes the write side once buffered data is sent.
    /// Equivalent to `StreamWriter.write_eof`.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once closing.
    pub fn write_eof(&self) -> Result<()> {
        self.transport.write_eof()
    }

    /// True for stream sockets. Equivalent to `can_write_eof`.
    pub fn can_write_eof(&self) -> bool {
        self.transport.can_write_eof()
    }

    /// Waits until the write buffer is at or below its low-water mark.
    ///
    /// Equivalent to `StreamWriter.drain`.
    ///
    /// # Errors
    ///
    /// The error the connection was lost with, or
    /// [`Error::Io`]`(ConnectionReset)` if it was closed under us.
    pub async fn drain(&self) -> Result<()> {
        // Let a paused reader error surface first, as asyncio does.
        if let Some(e) = self.reader.st.borrow().exc.clone() {
            return Err(e);
        }
        std::future::poll_fn(|cx| {
            let mut f = self.flow.borrow_mut();
            if f.lost {
                return Poll::Ready(Err(f.exc.clone().unwrap_or_else(|| {
                    Error::from(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "Connection lost",
                    ))
                })));
            }
            if self.transport.is_closing() {
                // Yield once so the close can make progress, as asyncio does.
                return Poll::Ready(Ok(()));
            }
            if !f.paused {
                return Poll::Ready(Ok(()));
            }
            f.drain_waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Closes the connection (after buffered data is sent).
    /// Equivalent to `StreamWriter.close`.
    pub fn close(&self) {
        self.transport.close()
    }

    /// True once closing. Equivalent to `StreamWriter.is_closing`.
    pub fn is_closing(&self) -> bool {
        self.transport.is_closing()
    }

    /// Waits until the connection is closed. Equivalent to `wait_closed`.
    ///
    /// # Errors
    ///
    /// The error the connection was lost with, if any.
    pub async fn wait_closed(&self) -> Result<()> {
        std::future::poll_fn(|cx| {
            let mut f = self.flow.borrow_mut();
            if f.lost {
                return Poll::Ready(match &f.exc {
                    Some(e) => Err(e.clone()),
                    None => Ok(()),
                });
            }
            f.closed_waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Transport information. Equivalent to `StreamWriter.get_extra_info`.
    pub fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        self.transport.get_extra_info(name)
    }

    /// The peer's address.
    pub fn peername(&self) -> Option<SockAddr> {
        self.transport.peername()
    }

    /// The underlying transport. Equivalent to `StreamWriter.transport`.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Upgrades the connection to TLS and returns the writer to use from
    /// now on (the reader stays the same and reads decrypted bytes).
    ///
    /// Equivalent to `StreamWriter.start_tls`. Here it takes the writer by
    /// value: the old one, which writes in plaintext, cannot be used after
    /// the upgrade. Bytes the reader had buffered but not handed out are
    /// the start of the TLS stream (a peer that sends its first TLS record
    /// right behind a STARTTLS line): they go to the handshake, so they
    /// are not lost and the upgrade does not wait for them forever.
    ///
    /// # Errors
    ///
    /// As [`AbstractEventLoop::start_tls`].
    pub async fn start_tls(
        self,
        config: impl Into<crate::TlsConfig>,
        opts: crate::StartTlsOptions,
    ) -> Result<StreamWriter> {
        let initial = {
            let mut st = self.reader.st.borrow_mut();
            // (The TLS layer starts the plain transport's reading again.)
            st.paused = false;
            st.transport = None;
            st.buf.split().to_vec()
        };
        let t =
            crate::transports::tls::start_tls(&self.transport, None, config.into(), &opts, initial)
                .await?;
        self.reader.st.borrow_mut().transport = Some(t.clone());
        Ok(StreamWriter {
            transport: t,
            flow: self.flow,
            reader: self.reader,
        })
    }
}

impl fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<StreamWriter {:?}>", self.transport)
    }
}

impl futures_io::AsyncWrite for StreamWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Err(e)) = self.as_ref().poll_room(cx) {
            return Poll::Ready(Err(e));
        }
        match self.transport.write_slice(buf) {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(e) => Poll::Ready(Err(to_io(&e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.as_ref().poll_room(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.transport.close();
        let mut f = self.flow.borrow_mut();
        if f.lost {
            return Poll::Ready(Ok(()));
        }
        f.closed_waiters.push(cx.waker().clone());
        Poll::Pending
    }
}

impl StreamWriter {
    /// Ready when the buffer is under the high-water mark (write side of
    /// `AsyncWrite`: back-pressure without a separate drain call).
    fn poll_room(self: Pin<&Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut f = self.flow.borrow_mut();
        if f.lost {
            return Poll::Ready(Err(f.exc.as_ref().map_or_else(
                || io::Error::new(io::ErrorKind::ConnectionReset, "Connection lost"),
                to_io,
            )));
        }
        if f.paused {
            f.drain_waiters.push(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

/// Opens a stream connection: `connect` gets the running loop and the
/// stream protocol and returns the transport it connected.
async fn open_streams<Fut>(
    limit: usize,
    connect: impl FnOnce(EventLoop, StreamProtocol) -> Fut,
) -> Result<(StreamReader, StreamWriter)>
where
    Fut: Future<Output = Result<Transport>>,
{
    let lp = get_running_loop()?;
    let reader = StreamReader::new(limit)?;
    let flow = Rc::new(RefCell::new(FlowState::default()));
    let proto = StreamProtocol {
        reader: reader.clone(),
        flow: flow.clone(),
        on_connect: None,
    };
    let transport = connect(lp, proto).await?;
    Ok((
        reader.clone(),
        StreamWriter {
            transport,
            flow,
            reader,
        },
    ))
}

/// Connects to `host:port` and returns the stream pair.
///
/// Equivalent to `asyncio.open_connection(host, port)`.
///
/// # Errors
///
/// As [`AbstractEventLoop::create_connection`].
///
/// # Examples
///
/// ```
/// use ringloop::{open_connection, start_server};
/// ringloop::run(async {
///     let server = start_server(|r, w| async move {
///         let line = r.readline().await.unwrap();
///         w.write(line).unwrap();
///         w.drain().await.unwrap();
///         w.close();
///     }, "127.0.0.1", 0).await.unwrap();
///     let port = server.sockets()[0].as_socket().unwrap().port();
///     let (r, w) = open_connection("127.0.0.1", port).await.unwrap();
///     w.write(&b"ping\n"[..]).unwrap();
///     assert_eq!(&r.readline().await.unwrap()[..], b"ping\n");
///     server.close();
/// }).unwrap();
/// ```
pub async fn open_connection(host: &str, port: u16) -> Result<(StreamReader, StreamWriter)> {
    open_streams(DEFAULT_LIMIT, |lp, proto| async move {
        lp.create_connection(move || proto, host, port).await
    })
    .await
}

/// [`open_connection`] with a buffer limit and every connection option
/// (`sock`, `local_addr`, `happy_eyeballs_delay`, `interleave`, `family`, …).
///
/// The options come last, as in every `_with` variant.
///
/// # Errors
///
/// As [`AbstractEventLoop::create_connection_with`]; [`Error::InvalidArgument`]
/// for a zero limit.
pub async fn open_connection_with(
    limit: usize,
    opts: crate::connect::ConnectOptions,
) -> Result<(StreamReader, StreamWriter)> {
    open_streams(limit, |lp, proto| async move {
        lp.create_connection_with(move || proto, opts).await
    })
    .await
}

/// Connects to the Unix socket at `path`. Equivalent to
/// `asyncio.open_unix_connection`.
///
/// # Errors
///
/// As [`AbstractEventLoop::create_unix_connection`].
pub async fn open_unix_connection(path: impl AsRef<Path>) -> Result<(StreamReader, StreamWriter)> {
    open_streams(DEFAULT_LIMIT, |lp, proto| async move {
        lp.create_unix_connection(move || proto, path).await
    })
    .await
}

/// [`open_unix_connection`] with a buffer limit and options: a connected
/// `sock` instead of `path` (`None` then) and TLS (`ssl`,
/// `server_hostname`, the TLS timeouts).
///
/// # Errors
///
/// As [`AbstractEventLoop::create_unix_connection_with`].
pub async fn open_unix_connection_with(
    path: Option<&Path>,
    limit: usize,
    opts: crate::connect::ConnectOptions,
) -> Result<(StreamReader, StreamWriter)> {
    open_streams(limit, |lp, proto| async move {
        lp.create_unix_connection_with(move || proto, path, opts)
            .await
    })
    .await
}

/// Makes the protocol factory of a stream server: each connection runs
/// `cb(reader, writer)` as a task.
fn stream_factory<F, Fut>(
    lp: EventLoop,
    limit: usize,
    cb: F,
) -> impl Fn() -> StreamProtocol + 'static
where
    F: Fn(StreamReader, StreamWriter) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let cb = Rc::new(cb);
    move || {
        let reader = StreamReader::new(limit).expect("limit checked");
        let flow = Rc::new(RefCell::new(FlowState::default()));
        let (cb, lp, r2, f2) = (cb.clone(), lp.clone(), reader.clone(), flow.clone());
        StreamProtocol {
            reader,
            flow,
            on_connect: Some(Box::new(move |transport| {
                let writer = StreamWriter {
                    transport,
                    flow: f2,
                    reader: r2.clone(),
                };
                lp.spawn_task(cb(r2, writer), None);
            })),
        }
    }
}

/// Starts a server whose connections each run `cb(reader, writer)` as a task.
///
/// Equivalent to `asyncio.start_server(client_connected_cb, host, port)`.
///
/// # Errors
///
/// As [`AbstractEventLoop::create_server`].
pub async fn start_server<F, Fut>(cb: F, host: &str, port: u16) -> Result<Server>
where
    F: Fn(StreamReader, StreamWriter) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let hosts = if host.is_empty() {
        Vec::new()
    } else {
        vec![host.to_owned()]
    };
    start_server_with(
        cb,
        DEFAULT_LIMIT,
        ServerOptions {
            hosts,
            port,
            ..Default::default()
        },
    )
    .await
}

/// [`start_server`] with a buffer limit and every server option.
///
/// # Errors
///
/// As [`AbstractEventLoop::create_server_with`]; [`Error::InvalidArgument`] for a
/// zero limit.
pub async fn start_server_with<F, Fut>(cb: F, limit: usize, opts: ServerOptions) -> Result<Server>
where
    F: Fn(StreamReader, StreamWriter) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    StreamReader::new(limit)?;
    let lp = get_running_loop()?;
    let factory = stream_factory(lp.clone(), limit, cb);
    lp.create_server_with(factory, opts).await
}

/// A Unix-socket stream server. Equivalent to `asyncio.start_unix_server`.
///
/// # Errors
///
/// As [`AbstractEventLoop::create_unix_server`].
pub async fn start_unix_server<F, Fut>(cb: F, path: impl AsRef<Path>) -> Result<Server>
where
    F: Fn(StreamReader, StreamWriter) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let lp = get_running_loop()?;
    let factory = stream_factory(lp.clone(), DEFAULT_LIMIT, cb);
    lp.create_unix_server(factory, path).await
}

/// The write side of a [`StreamWriter`] as its protocol drives it (flow
/// control, loss): the stream protocol's, and a child's stdin's, which the
/// subprocess protocol feeds.
pub(crate) struct WriterHooks(Rc<RefCell<FlowState>>);

impl WriterHooks {
    pub(crate) fn pause(&self) {
        self.0.borrow_mut().paused = true;
    }

    pub(crate) fn resume(&self) {
        let mut f = self.0.borrow_mut();
        f.paused = false;
        let ws: Vec<Waker> = f.drain_waiters.drain(..).collect();
        drop(f);
        ws.into_iter().for_each(Waker::wake);
    }

    pub(crate) fn lost(&self, exc: Option<Error>) {
        let mut f = self.0.borrow_mut();
        f.lost = true;
        f.exc = exc;
        let mut ws: Vec<Waker> = f.drain_waiters.drain(..).collect();
        ws.append(&mut f.closed_waiters);
        drop(f);
        ws.into_iter().for_each(Waker::wake);
    }
}

impl StreamWriter {
    /// A writer on a transport whose protocol is not a stream protocol (a
    /// child's stdin): its protocol calls the hooks.
    pub(crate) fn with_hooks(transport: Transport) -> (StreamWriter, WriterHooks) {
        let flow = Rc::new(RefCell::new(FlowState::default()));
        let reader = StreamReader::new(DEFAULT_LIMIT).expect("a positive limit");
        let w = StreamWriter {
            transport,
            flow: flow.clone(),
            reader,
        };
        (w, WriterHooks(flow))
    }
}

impl StreamReader {
    /// The transport this reader pauses while its buffer is full (a
    /// child's stdout, fed by the subprocess protocol).
    pub(crate) fn set_transport(&self, t: Option<Transport>) {
        self.st.borrow_mut().transport = t;
    }
}

/// [`start_unix_server`] with a buffer limit and options (`backlog`,
/// `start_serving`, TLS).
///
/// # Errors
///
/// As [`AbstractEventLoop::create_unix_server_with`].
pub async fn start_unix_server_with<F, Fut>(
    cb: F,
    path: impl AsRef<Path>,
    limit: usize,
    opts: ServerOptions,
) -> Result<Server>
where
    F: Fn(StreamReader, StreamWriter) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    StreamReader::new(limit)?;
    let lp = get_running_loop()?;
    let factory = stream_factory(lp.clone(), limit, cb);
    lp.create_unix_server_with(factory, path, opts).await
}
