//! TLS as a protocol on a plain transport that offers the application a
//! transport of its own: CPython's `sslproto.py` model (its states, its
//! flow-control marks on the encrypted side, EOF without `close_notify` as
//! a normal EOF), on the engine in `tls_session.rs`.
//!
//! The plain transport's protocol is a [`TlsProtocol`]; the application's
//! protocol lives in the TLS state's own transport base and gets a
//! [`Transport`] handle to it (the [`Layered`] kind).
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ServerConfig};

use super::ExtraInfo;
use super::base::{Base, deliver_lost};
use super::cell::Failure;
use super::handle::Layered;
use super::stream::ReadsSocket;
use super::tls_session::{Bytes, Ciphertext, Session};
use crate::base_loop::io::SocketInput;
use crate::base_loop::{EventLoop, LoopClosing};
use crate::error::{Error, Result};
use crate::futures::LoopFuture;
use crate::protocols::{BaseProtocol, Protocol};
use crate::sock::{SockAddr, Socket};
use crate::{Transport, WriteBuf};

/// asyncio's default `ssl_handshake_timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// asyncio's default `ssl_shutdown_timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Ciphertext held back while the application does not read: over this
/// the plain transport stops reading, at or below the low mark it reads
/// again (sslproto's incoming marks).
const INCOMING_HIGH: usize = 256 * 1024;
const INCOMING_LOW: usize = 64 * 1024;
/// Largest plaintext chunk handed to `data_received` at once.
const READ_CHUNK: usize = 64 * 1024;
/// A pool receive this large (a full pool buffer) puts the socket in
/// readiness mode; `SMALL_READS_TO_POOL` readiness events in a row that
/// read less take it back to pool receives (see `Tls::choose_reads`).
const BULK_READ: usize = 16 * 1024;
const SMALL_READS_TO_POOL: u8 = 4;
/// From this much plaintext written since the last flush on, the records
/// go to the socket straight from rustls's buffers when nothing is queued
/// below (one copy fewer); smaller flushes go through the transport's
/// send, which batches them into the loop's one submission.
const DIRECT_SEND_MIN: usize = 16 * 1024;

/// A TLS configuration: which side of the connection, and its settings.
///
/// Equivalent to asyncio's `ssl.SSLContext` argument (`ssl=`,
/// `sslcontext`): the side is the config's type, so `start_tls` needs no
/// `server_side` flag. Build configs with an explicit provider, e.g.
/// [`crypto_provider`](crate::tls::crypto_provider).
#[derive(Clone, Debug)]
pub enum TlsConfig {
    /// The client side.
    Client(Arc<ClientConfig>),
    /// The server side.
    Server(Arc<ServerConfig>),
}

impl From<Arc<ClientConfig>> for TlsConfig {
    fn from(c: Arc<ClientConfig>) -> TlsConfig {
        TlsConfig::Client(c)
    }
}

impl From<Arc<ServerConfig>> for TlsConfig {
    fn from(c: Arc<ServerConfig>) -> TlsConfig {
        TlsConfig::Server(c)
    }
}

/// Options of [`AbstractEventLoop::start_tls`](crate::AbstractEventLoop::start_tls)
/// and [`StreamWriter::start_tls`](crate::StreamWriter::start_tls).
///
/// Equivalent to `loop.start_tls`'s keyword arguments (`server_side` is
/// the [`TlsConfig`]'s kind).
#[derive(Clone, Debug, Default)]
pub struct StartTlsOptions {
    /// The name the server's certificate is checked against (client side;
    /// required there). An empty name checks no name: only a config whose
    /// verifier ignores names accepts the peer then.
    pub server_hostname: Option<String>,
    /// How long the handshake may take (default 60 s); then the connection
    /// is aborted with [`Error::Timeout`].
    pub ssl_handshake_timeout: Option<Duration>,
    /// How long `close()` waits for the peer's `close_notify` (default
    /// 30 s) before aborting.
    pub ssl_shutdown_timeout: Option<Duration>,
}

thread_local! {
    /// Where decrypted bytes are copied for `data_received`.
    static READ_BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// sslproto's states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not started, or over.
    Unwrapped,
    Handshaking,
    Wrapped,
    /// `close_notify` sent: waiting for the peer's (or EOF), bounded by the
    /// shutdown timeout.
    Shutdown,
}

/// Why [`Tls::fill`] stopped.
enum Fill {
    Full,
    Exhausted,
    PeerClosed,
    Failed(Error),
}

/// The TLS connection: the plain transport's protocol and the
/// application's transport at once.
pub(crate) struct Tls {
    /// Itself (timers and deferred reads need an `Rc`).
    me: Weak<Tls>,
    lp: EventLoop,
    /// The application's side: its phase, write marks, protocol.
    app: Base<dyn Protocol>,
    plain: RefCell<Option<Transport>>,
    sess: RefCell<Session>,
    config: TlsConfig,
    /// The name asked for (client side).
    server_name: Option<String>,
    state: Cell<State>,
    /// Ciphertext received but not fed (the application paused reading).
    incoming: RefCell<Vec<u8>>,
    /// Ciphertext held while the plain transport's writing is paused.
    outgoing: RefCell<Vec<u8>>,
    /// Plaintext written since the last flush (see `DIRECT_SEND_MIN`).
    unflushed: Cell<usize>,
    app_reading_paused: Cell<bool>,
    /// This layer paused the plain transport's reading.
    plain_reading_paused: Cell<bool>,
    /// The plain transport is a socket rustls may read and write itself.
    direct: Cell<bool>,
    /// The plain transport is in readiness mode now: rustls reads the
    /// socket (bulk data), or not (small messages take pool receives).
    by_readiness: Cell<bool>,
    /// Readiness events in a row that read less than `BULK_READ`.
    small_reads: Cell<u8>,
    /// The application's protocol counts as connected (after the
    /// handshake): it gets `connection_lost`.
    app_made: Cell<bool>,
    call_connection_made: bool,
    /// The peer closed (close_notify or EOF), seen by the application.
    peer_closed: Cell<bool>,
    handshake_timeout: Duration,
    shutdown_timeout: Duration,
    timer: RefCell<Option<crate::TimerHandle>>,
    /// Woken when the handshake ends (the caller of create_connection /
    /// start_tls waits on it).
    waiter: RefCell<Option<LoopFuture<()>>>,
    /// Why the connection failed, for `connection_lost`.
    failure: RefCell<Option<Error>>,
}

/// The engine took no input and made no progress.
fn stuck() -> Error {
    Error::from(rustls::Error::General(
        "the TLS engine accepted no input".into(),
    ))
}

/// What the plain transport calls: the encrypted side of [`Tls`].
pub(crate) struct TlsProtocol(Rc<Tls>);

/// A protocol that is replaced before it is ever called.
struct Placeholder;
impl BaseProtocol for Placeholder {}
impl Protocol for Placeholder {}

/// The handshake waiter: `await` it for the application's transport.
pub(crate) struct Pending {
    tls: Rc<Tls>,
    waiter: LoopFuture<()>,
}

impl Pending {
    /// Waits for the handshake; the application's transport, or why the
    /// handshake failed. Dropped before the end (cancelled), the
    /// connection is aborted.
    pub(crate) async fn wait(self) -> Result<Transport> {
        struct AbortOnDrop<'a>(Option<&'a Rc<Tls>>);
        impl Drop for AbortOnDrop<'_> {
            fn drop(&mut self) {
                if let Some(t) = self.0.take() {
                    t.abort_plain();
                }
            }
        }
        let mut guard = AbortOnDrop(Some(&self.tls));
        let r = self.waiter.clone().await;
        guard.0 = None;
        r?;
        Ok(Transport::from_layered(self.tls.clone()))
    }
}

impl Tls {
    fn new(
        lp: &EventLoop,
        app: Box<dyn Protocol>,
        config: TlsConfig,
        opts: &StartTlsOptions,
        call_connection_made: bool,
        waiter: bool,
    ) -> Result<Rc<Tls>> {
        let sess = match &config {
            TlsConfig::Client(c) => {
                let name = opts.server_hostname.as_deref().ok_or_else(|| {
                    Error::InvalidArgument("server_hostname is required for a TLS client".into())
                })?;
                Session::client(c.clone(), name)?
            }
            TlsConfig::Server(c) => Session::server(c.clone())?,
        };
        let tls = Rc::new_cyclic(|me| Tls {
            me: me.clone(),
            lp: lp.clone(),
            app: Base::new(lp, app, "Protocol"),
            plain: RefCell::new(None),
            sess: RefCell::new(sess),
            server_name: match &config {
                TlsConfig::Client(_) => opts.server_hostname.clone(),
                TlsConfig::Server(_) => None,
            },
            config,
            state: Cell::new(State::Unwrapped),
            incoming: RefCell::new(Vec::new()),
            outgoing: RefCell::new(Vec::new()),
            unflushed: Cell::new(0),
            app_reading_paused: Cell::new(false),
            plain_reading_paused: Cell::new(false),
            direct: Cell::new(false),
            by_readiness: Cell::new(false),
            small_reads: Cell::new(0),
            app_made: Cell::new(false),
            call_connection_made,
            peer_closed: Cell::new(false),
            handshake_timeout: opts
                .ssl_handshake_timeout
                .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
            shutdown_timeout: opts
                .ssl_shutdown_timeout
                .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
            timer: RefCell::new(None),
            waiter: RefCell::new(waiter.then(|| LoopFuture::new(lp.clone()))),
            failure: RefCell::new(None),
        });
        // Told if the loop closes under it: the application's protocol and
        // its transport handle make a cycle only `release` ends (the
        // plain transport's own registration does not reach it once that
        // transport is gone and the application's `connection_lost` is
        // still queued).
        let weak: Weak<dyn LoopClosing> = Rc::downgrade(&tls) as _;
        tls.app.register(weak);
        Ok(tls)
    }

    fn pending(self: &Rc<Self>) -> Pending {
        Pending {
            tls: self.clone(),
            waiter: self.waiter.borrow().clone().expect("made with a waiter"),
        }
    }

    fn plain(&self) -> Option<Transport> {
        self.plain.borrow().clone()
    }

    fn app_transport(self: &Rc<Self>) -> Transport {
        Transport::from_layered(self.clone())
    }

    fn set_timer(self: &Rc<Self>, after: Duration, f: fn(&Rc<Tls>)) {
        let weak: Weak<Tls> = Rc::downgrade(self);
        let h = self.lp.call_at_impl(Instant::now() + after, move || {
            if let Some(t) = weak.upgrade() {
                t.timer.borrow_mut().take();
                f(&t);
            }
        });
        if let Some(old) = self.timer.borrow_mut().replace(h) {
            old.cancel();
        }
    }

    fn cancel_timer(&self) {
        if let Some(h) = self.timer.borrow_mut().take() {
            h.cancel();
        }
    }

    /// The plain transport is connected: the handshake starts. Over a
    /// socket rustls may read and write it itself: bulk data is read in
    /// readiness mode (rustls reads the socket into its own buffer: one
    /// copy, where a pool receive makes two; see `choose_reads`) and bulk
    /// records are sent from rustls's buffers (`flush_outgoing`), unless
    /// `RINGLOOP_TLS_POOL_IO` is set (pool receives and queued sends only,
    /// for comparing the two).
    fn start(self: &Rc<Self>, plain: Transport) {
        if let Some(st) = plain.as_stream().filter(|_| direct_io()) {
            let me: Weak<dyn ReadsSocket> = self.me.clone();
            st.set_socket_reader(me);
            self.direct.set(true);
        }
        *self.plain.borrow_mut() = Some(plain);
        self.state.set(State::Handshaking);
        self.set_timer(self.handshake_timeout, |t| {
            t.handshake_failed(Error::Timeout, true);
        });
        self.flush_outgoing(false);
    }

    /// Sends the engine's ciphertext to the plain transport, unless its
    /// writing is paused (then it waits here, counted against the
    /// application's marks) and `force` is false. True if it wrote.
    fn flush_outgoing(&self, force: bool) -> bool {
        let Some(p) = self.plain() else { return false };
        if self.unflushed.replace(0) >= DIRECT_SEND_MIN
            && self.direct.get()
            && self.outgoing.borrow().is_empty()
        {
            // Bulk records leave from rustls's buffers where the order
            // allows (as tokio-rustls sends them); what the socket does not
            // take goes the usual way, below.
            if let Some(st) = p.as_stream() {
                st.with_output(|out| self.sess.borrow_mut().send_tls(out));
            }
        }
        let data = {
            let mut out = self.outgoing.borrow_mut();
            self.sess.borrow_mut().take_tls(&mut out);
            // (The plain transport's own state, not its pause_writing
            // callback: that one waits while a callback of ours runs, and
            // an application writing in a loop there would overrun it.)
            if out.is_empty() || (p.is_writing_paused() && !force) {
                return false;
            }
            std::mem::take(&mut *out)
        };
        // (A closing plain transport drops it: the connection is over.)
        let _ = p.write(data);
        true
    }

    /// pause_writing / resume_writing for the application, by what waits
    /// here (sslproto's `_control_app_writing`).
    fn control_app_writing(&self) {
        let size = self.outgoing.borrow().len();
        let (pause, resume) = {
            let mut f = self.app.flow.borrow_mut();
            let cur = f.size();
            if size >= cur {
                (f.add(size - cur), false)
            } else {
                (false, f.sent(cur - size))
            }
        };
        if pause {
            self.call_app(|p| p.pause_writing());
        } else if resume {
            self.call_app(|p| p.resume_writing());
        }
    }

    /// Stops or restarts the plain transport's reading by how much
    /// ciphertext waits here; in readiness mode, also while the
    /// application does not read (the ciphertext waits in the kernel).
    fn control_plain_reading(&self) {
        let n = self.incoming.borrow().len();
        let Some(p) = self.plain() else { return };
        let hold = self.by_readiness.get() && self.app_reading_paused.get();
        if (n > INCOMING_HIGH || hold) && !self.plain_reading_paused.get() {
            self.plain_reading_paused.set(true);
            p.pause_reading();
        } else if n <= INCOMING_LOW && !hold && self.plain_reading_paused.get() {
            self.plain_reading_paused.set(false);
            p.resume_reading();
        }
    }

    /// Calls the application's protocol; a panic costs the connection.
    fn call_app(&self, f: impl FnOnce(&mut dyn Protocol) + 'static) {
        if let Err(msg) = self.app.call(f) {
            self.app.report_panic(&msg, format!("{self:?}"));
            *self.failure.borrow_mut() = Some(Error::Panic(msg));
            self.abort_plain();
        }
    }

    /// Received ciphertext: fed now, or kept while the application does
    /// not read.
    fn on_data(self: &Rc<Self>, data: &[u8]) {
        if data.len() >= BULK_READ {
            self.choose_reads(true);
        }
        if !self.incoming.borrow().is_empty() {
            self.incoming.borrow_mut().extend_from_slice(data);
            self.process_incoming();
            return;
        }
        let mut input = Bytes::new(data);
        if self.consume(&mut input) && !input.rest().is_empty() {
            self.incoming.borrow_mut().extend_from_slice(input.rest());
        }
        self.after_consume();
    }

    /// Readiness mode: the socket is readable; rustls reads it into its
    /// own buffer (ciphertext kept from before goes first). While the
    /// application does not read, the rest waits in the kernel.
    fn on_readable(self: &Rc<Self>, src: &mut SocketInput) {
        if !self.incoming.borrow().is_empty() {
            self.process_incoming();
            if !self.incoming.borrow().is_empty() {
                return;
            }
        }
        self.consume(src);
        if src.taken() >= BULK_READ {
            self.small_reads.set(0);
        } else if !self.app_reading_paused.get() {
            let n = self.small_reads.get() + 1;
            self.small_reads.set(n);
            if n >= SMALL_READS_TO_POOL {
                self.choose_reads(false);
            }
        }
        self.after_consume();
    }

    /// Bulk data is read by readiness (rustls reads the socket: one copy),
    /// small messages take pool receives (no syscall: the proactor's
    /// multishot receive; the copy into rustls is small and hot).
    fn choose_reads(&self, bulk: bool) {
        if !self.direct.get() || self.by_readiness.get() == bulk {
            return;
        }
        self.by_readiness.set(bulk);
        self.small_reads.set(0);
        if let Some(st) = self.plain().as_ref().and_then(Transport::as_stream) {
            st.set_readiness(bulk);
        }
    }

    /// Reading's marks, and the peer's close once everything before it
    /// was delivered.
    fn after_consume(self: &Rc<Self>) {
        self.control_plain_reading();
        if self.peer_closed.get()
            && self.incoming.borrow().is_empty()
            && !self.app_reading_paused.get()
        {
            self.peer_eof();
        }
    }

    fn process_incoming(self: &Rc<Self>) {
        let buf = std::mem::take(&mut *self.incoming.borrow_mut());
        let mut input = Bytes::new(&buf);
        let rest = if self.consume(&mut input) {
            input.rest()
        } else {
            &[]
        };
        {
            let mut inc = self.incoming.borrow_mut();
            // (Anything that came meanwhile goes after what is left.)
            let newer = std::mem::replace(&mut *inc, rest.to_vec());
            inc.extend_from_slice(&newer);
        }
        self.after_consume();
    }

    /// Feeds `input` and delivers the plaintext, as far as the state and
    /// the application's reading allow. True: what was not taken is to be
    /// kept (the application paused reading); false: it is to be dropped
    /// (the connection failed or is over).
    fn consume(self: &Rc<Self>, input: &mut dyn Ciphertext) -> bool {
        loop {
            match self.state.get() {
                State::Unwrapped => return false,
                State::Handshaking => {
                    let before = input.taken();
                    let r = self.sess.borrow_mut().feed(input);
                    if self.flush_outgoing(true) {
                        // A handshake flight costs far more crypto than a
                        // syscall: it leaves now, so the peer computes its
                        // part while this loop serves the others.
                        if let Some(p) = self.plain() {
                            p.send_now();
                        }
                    }
                    if let Err(e) = r {
                        self.handshake_failed(e, false);
                        return false;
                    }
                    if !self.sess.borrow().is_handshaking() {
                        self.handshake_done();
                        continue;
                    }
                    if input.exhausted() {
                        return true;
                    }
                    if input.taken() == before {
                        // (Never seen: the engine took nothing and made no
                        // progress. An error rather than a spin.)
                        self.handshake_failed(stuck(), false);
                        return false;
                    }
                }
                State::Wrapped => {
                    if self.app_reading_paused.get() {
                        return true;
                    }
                    // Plaintext is gathered up to one chunk before it is
                    // delivered (as tokio-rustls fills the reader's buffer):
                    // bulk data then reaches the application, and its
                    // replies the socket, in few large pieces. (One buffer
                    // per thread, zeroed once: no allocation per record and
                    // none held by idle connections; a nested delivery
                    // finds it taken and makes its own.)
                    let mut buf = READ_BUF.take();
                    buf.resize(READ_CHUNK, 0);
                    let (filled, fill) = self.fill(&mut buf, input);
                    if filled > 0 {
                        self.deliver(&buf[..filled]);
                    }
                    READ_BUF.set(buf);
                    match fill {
                        // (Delivered: the application may have paused.)
                        Fill::Full => {}
                        Fill::Exhausted => return true,
                        // (After the peer's close_notify nothing counts.)
                        Fill::PeerClosed => return false,
                        Fill::Failed(e) => {
                            if self.state.get() != State::Unwrapped {
                                self.fatal(e);
                            }
                            return false;
                        }
                    }
                }
                State::Shutdown => {
                    // Closing: what still comes is read for the peer's
                    // close_notify and dropped.
                    let before = input.taken();
                    let r = self.sess.borrow_mut().feed(input);
                    let mut sink = [0u8; 4096];
                    while self.sess.borrow_mut().read_plain(&mut sink) > 0 {}
                    match r {
                        Ok(fed) if fed.peer_closed => {
                            self.finish_shutdown();
                            return false;
                        }
                        Ok(_) if input.exhausted() => return true,
                        Ok(_)
                            if input.taken() == before
                                && !self.sess.borrow_mut().has_plaintext() =>
                        {
                            // (No progress: nothing more is coming.)
                            self.finish_shutdown();
                            return false;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            self.finish_shutdown();
                            return false;
                        }
                    }
                }
            }
        }
    }

    /// Decrypts from `input` into `buf` until it is full, the input is
    /// exhausted, the peer closed or the engine failed; how much it holds.
    fn fill(&self, buf: &mut [u8], input: &mut dyn Ciphertext) -> (usize, Fill) {
        let mut filled = 0;
        loop {
            filled += self.sess.borrow_mut().read_plain(&mut buf[filled..]);
            if filled == buf.len() {
                return (filled, Fill::Full);
            }
            if self.peer_closed.get() {
                return (filled, Fill::PeerClosed);
            }
            if input.exhausted() {
                return (filled, Fill::Exhausted);
            }
            let before = input.taken();
            let r = self.sess.borrow_mut().feed(input);
            self.flush_outgoing(false);
            match r {
                Ok(fed) if fed.peer_closed => self.peer_closed.set(true),
                Ok(_)
                    if input.taken() == before
                        && !input.exhausted()
                        && !self.sess.borrow_mut().has_plaintext() =>
                {
                    return (filled, Fill::Failed(stuck()));
                }
                Ok(_) => {}
                Err(e) => return (filled, Fill::Failed(e)),
            }
        }
    }

    /// Hands decrypted bytes to the application.
    fn deliver(&self, buf: &[u8]) {
        match self.app.protocol.invoke(|p| p.data_received(buf)) {
            Ok(_) => {}
            Err(Failure::Busy) => {
                let copy = buf.to_vec();
                self.call_app(move |p| p.data_received(&copy))
            }
            Err(Failure::Panic(msg)) => {
                self.app.report_panic(&msg, format!("{self:?}"));
                *self.failure.borrow_mut() = Some(Error::Panic(msg));
                self.abort_plain();
            }
        }
    }

    fn handshake_done(self: &Rc<Self>) {
        self.cancel_timer();
        self.state.set(State::Wrapped);
        self.app_made.set(true);
        if self.call_connection_made {
            let t = self.app_transport();
            self.call_app(move |p| p.connection_made(t));
        }
        if let Some(w) = self.waiter.borrow_mut().take() {
            let _ = w.set_result(());
        }
        self.flush_outgoing(false);
    }

    /// The handshake failed: the alert (if any) goes out, the connection
    /// closes (aborts, on a timeout), the waiter or the log says why.
    fn handshake_failed(&self, e: Error, abort: bool) {
        if self.state.get() != State::Handshaking {
            return;
        }
        self.cancel_timer();
        self.state.set(State::Unwrapped);
        *self.failure.borrow_mut() = Some(e.clone());
        match self.waiter.borrow_mut().take() {
            Some(w) => {
                let _ = w.set_error(e);
            }
            // (asyncio logs a failed server handshake at debug level: a
            // port scan is not an error of the server's.)
            None => log::debug!("TLS handshake failed: {e}"),
        }
        if abort {
            self.abort_plain();
        } else {
            self.flush_outgoing(true);
            if let Some(p) = self.plain() {
                p.close();
            }
        }
    }

    /// A TLS error on an established connection: the alert goes out and
    /// the connection closes with the error.
    fn fatal(&self, e: Error) {
        log::debug!("TLS error: {e}");
        self.state.set(State::Unwrapped);
        self.cancel_timer();
        *self.failure.borrow_mut() = Some(e);
        self.flush_outgoing(true);
        if let Some(p) = self.plain() {
            p.close();
        }
    }

    /// The peer closed (close_notify, or EOF without it: a normal EOF
    /// here, as in asyncio): `eof_received`, then our close_notify and the
    /// close. TLS has no half-close, so `eof_received`'s answer is ignored.
    fn peer_eof(self: &Rc<Self>) {
        if self.state.get() != State::Wrapped {
            return;
        }
        self.call_app(|p| {
            p.eof_received();
        });
        self.start_shutdown();
    }

    /// `close()`: close_notify after what is buffered; the connection
    /// closes when the peer answers, hits EOF, or the shutdown timeout.
    fn start_shutdown(self: &Rc<Self>) {
        match self.state.get() {
            State::Handshaking => return self.abort_plain(),
            State::Wrapped => {}
            State::Unwrapped | State::Shutdown => return,
        }
        self.app.begin_close();
        self.state.set(State::Shutdown);
        self.sess.borrow_mut().send_close_notify();
        self.flush_outgoing(true);
        if self.peer_closed.get() {
            return self.finish_shutdown();
        }
        self.set_timer(self.shutdown_timeout, |t| {
            log::debug!("TLS shutdown timed out: aborting {t:?}");
            *t.failure.borrow_mut() = Some(Error::Timeout);
            t.abort_plain();
        });
    }

    fn finish_shutdown(&self) {
        self.cancel_timer();
        self.state.set(State::Unwrapped);
        if let Some(p) = self.plain() {
            p.close();
        }
    }

    fn abort_plain(&self) {
        self.cancel_timer();
        self.state.set(State::Unwrapped);
        if let Some(p) = self.plain() {
            p.abort();
        }
    }

    /// The plain transport is gone: the handshake waiter and the
    /// application hear why.
    fn plain_lost(self: &Rc<Self>, exc: Option<Error>) {
        self.cancel_timer();
        self.state.set(State::Unwrapped);
        let exc = self.failure.borrow_mut().take().or(exc);
        if let Some(w) = self.waiter.borrow_mut().take() {
            let _ = w.set_error(exc.clone().unwrap_or_else(|| {
                Error::from(rustls::Error::General(
                    "connection closed during the TLS handshake".into(),
                ))
            }));
        }
        self.plain.borrow_mut().take();
        if !self.app.begin_lost() {
            return;
        }
        self.app.flow.borrow_mut().clear();
        if self.app_made.get() {
            deliver_lost(
                self.clone(),
                |t| &t.app,
                exc,
                |p, exc| p.connection_lost(exc),
                |_| {},
            );
        } else {
            self.app.release();
        }
    }
}

impl BaseProtocol for TlsProtocol {
    fn connection_made(&mut self, transport: Transport) {
        self.0.start(transport);
    }

    fn connection_lost(&mut self, exc: Option<Error>) {
        self.0.plain_lost(exc);
    }

    // (Pausing is read from the plain transport's state: see
    // `flush_outgoing`.)

    fn resume_writing(&mut self) {
        self.0.flush_outgoing(false);
        self.0.control_app_writing();
    }

    fn eof_received(&mut self) -> bool {
        let t = &self.0;
        match t.state.get() {
            State::Handshaking => {
                t.handshake_failed(
                    Error::from(rustls::Error::General(
                        "connection closed during the TLS handshake".into(),
                    )),
                    false,
                );
                false
            }
            State::Wrapped => {
                t.sess.borrow_mut().feed_eof();
                t.peer_closed.set(true);
                // Plaintext still held for a paused reader comes first.
                if t.incoming.borrow().is_empty() && !t.app_reading_paused.get() {
                    // (Decrypted bytes the engine still holds.)
                    t.consume(&mut Bytes::new(&[]));
                    t.peer_eof();
                }
                true
            }
            State::Shutdown => {
                t.finish_shutdown();
                true
            }
            State::Unwrapped => false,
        }
    }
}

impl ReadsSocket for Tls {
    fn socket_readable(self: Rc<Self>, src: &mut SocketInput) {
        self.on_readable(src);
    }
}

/// rustls may read and write the socket itself (see `Tls::start`).
fn direct_io() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("RINGLOOP_TLS_POOL_IO").is_none())
}

impl LoopClosing for Tls {
    fn loop_closing(self: Rc<Self>) {
        // (As the stream transport: let go of everything, no callbacks.)
        self.app.begin_lost();
        self.cancel_timer();
        self.state.set(State::Unwrapped);
        self.waiter.borrow_mut().take();
        self.plain.borrow_mut().take();
        self.app.release();
    }
}

impl Drop for TlsProtocol {
    fn drop(&mut self) {
        // The plain transport let go of its protocol without
        // `connection_lost` (the loop closed under a live connection): the
        // application's side goes too, without callbacks, as the stream
        // transport's protocol does then (this also ends the cycle
        // through the application's protocol and its transport handle).
        let t = &self.0;
        if t.app.begin_lost() {
            t.cancel_timer();
            t.state.set(State::Unwrapped);
            t.waiter.borrow_mut().take();
            t.plain.borrow_mut().take();
            t.app.release();
        }
    }
}

impl Protocol for TlsProtocol {
    fn data_received(&mut self, data: &[u8]) {
        self.0.on_data(data);
    }
}

impl Layered for Tls {
    fn write(&self, data: WriteBuf) -> Result<()> {
        self.write_slice(data.as_bytes())
    }

    fn write_slice(&self, data: &[u8]) -> Result<()> {
        self.app.check_writable()?;
        if self.state.get() != State::Wrapped {
            return Err(Error::closed("TLS connection is closed"));
        }
        if data.is_empty() {
            return Ok(());
        }
        self.sess.borrow_mut().write_plain(data)?;
        self.unflushed.set(self.unflushed.get() + data.len());
        self.flush_outgoing(false);
        self.control_app_writing();
        Ok(())
    }

    fn write_eof(&self) -> Result<()> {
        Err(Error::state(
            "TLS does not support half-closes (write_eof); use close()",
        ))
    }

    fn can_write_eof(&self) -> bool {
        false
    }

    fn close(&self) {
        // (The Rc is needed for the timer: the app side is always in one.)
        if let Some(me) = self.me() {
            me.start_shutdown();
        }
    }

    fn abort(&self) {
        self.app.begin_close();
        self.abort_plain();
    }

    fn is_closing(&self) -> bool {
        self.app.is_closing()
    }

    fn pause_reading(&self) {
        self.app_reading_paused.set(true);
    }

    fn resume_reading(&self) {
        if !self.app_reading_paused.replace(false) {
            return;
        }
        let Some(me) = self.me() else { return };
        // Data (kept or new) arrives through the loop, never inside this call.
        self.lp
            .call_soon_impl(move || me.process_incoming(), &"resume_reading");
    }

    fn is_reading(&self) -> bool {
        !self.app_reading_paused.get() && !self.app.is_closing()
    }

    fn is_writing_paused(&self) -> bool {
        self.app.flow.borrow().paused()
    }

    fn get_write_buffer_size(&self) -> usize {
        self.outgoing.borrow().len()
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.app.flow.borrow().limits()
    }

    fn set_write_buffer_limits(&self, high: Option<usize>, low: Option<usize>) -> Result<()> {
        let pause = self.app.flow.borrow_mut().set_limits(high, low)?;
        if pause {
            self.call_app(|p| p.pause_writing());
        }
        Ok(())
    }

    fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        let sess = self.sess.borrow();
        match name {
            "peercert" => sess.peer_certificates().map(ExtraInfo::PeerCertificates),
            "cipher" => sess
                .cipher()
                .map(|(name, protocol, secret_bits)| ExtraInfo::Cipher {
                    name,
                    protocol,
                    secret_bits,
                }),
            "tls_version" => sess.version().map(ExtraInfo::Text),
            "alpn_protocol" => sess.alpn_protocol().map(ExtraInfo::Bytes),
            "server_hostname" => self
                .server_name
                .clone()
                .or_else(|| sess.sni())
                .map(ExtraInfo::Text),
            "sslcontext" => Some(ExtraInfo::TlsConfig(self.config.clone())),
            "compression" => None,
            _ => {
                drop(sess);
                self.plain()?.get_extra_info(name)
            }
        }
    }

    fn peername(&self) -> Option<SockAddr> {
        self.plain()?.peername()
    }

    fn sockname(&self) -> Option<SockAddr> {
        self.plain()?.sockname()
    }

    fn set_protocol(&self, protocol: Box<dyn Protocol>) -> Option<Box<dyn Protocol>> {
        self.app.protocol.replace(protocol)
    }

    fn get_loop(&self) -> EventLoop {
        self.lp.clone()
    }

    fn on_lost(&self, f: Box<dyn FnOnce()>) {
        self.app.on_lost(f);
    }

    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl Tls {
    /// This connection's `Rc`, through the plain transport's protocol
    /// (which owns one for as long as the connection lives).
    fn me(&self) -> Option<Rc<Tls>> {
        self.me.upgrade()
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<TlsTransport state={:?} buffered={} over {:?}>",
            self.state.get(),
            self.outgoing.borrow().len(),
            self.plain.borrow()
        )
    }
}

/// Server side of an accepted socket: the application's protocol is
/// connected once the handshake is done; the result is the plain
/// transport (the server counts connections by it).
pub(crate) fn accept(
    lp: &EventLoop,
    sock: Socket,
    app: Box<dyn Protocol>,
    config: Arc<ServerConfig>,
    opts: &StartTlsOptions,
) -> Result<Transport> {
    let tls = Tls::new(lp, app, config.into(), opts, true, false)?;
    Ok(Transport::start(lp, sock, Box::new(TlsProtocol(tls))))
}

/// `start_tls`: puts TLS between `plain` and `app`. `initial` is
/// ciphertext already taken from the stream (a stream reader's unread
/// bytes), fed before anything the transport receives next.
/// `app = None`: the application's protocol is the one `plain` has now.
pub(crate) async fn start_tls(
    plain: &Transport,
    app: Option<Box<dyn Protocol>>,
    config: TlsConfig,
    opts: &StartTlsOptions,
    initial: Vec<u8>,
) -> Result<Transport> {
    if plain.is_closing() {
        return Err(Error::closed("start_tls on a closing transport"));
    }
    if plain.as_stream().is_none() {
        return Err(Error::InvalidArgument(
            "start_tls needs a socket transport (TLS is already on this one)".into(),
        ));
    }
    let lp = plain.get_loop();
    let tls = Tls::new(&lp, Box::new(Placeholder), config, opts, false, true)?;
    let pending = tls.pending();
    // No data reaches the TLS layer before it has started.
    plain.pause_reading();
    let old = plain.set_protocol(Box::new(TlsProtocol(tls.clone())));
    let app = app.or(old).unwrap_or_else(|| Box::new(Placeholder));
    tls.app.protocol.replace(app);
    tls.start(plain.clone());
    if !initial.is_empty() {
        tls.on_data(&initial);
    }
    plain.resume_reading();
    pending.wait().await
}

/// asyncio's `server_hostname` rules for a client connection: the name
/// defaults to the host; without a host (a `sock`, resolved addresses, a
/// Unix path) it must be given; TLS arguments without `ssl` are an error.
pub(crate) fn client_options(
    ssl: Option<&Arc<ClientConfig>>,
    server_hostname: Option<&str>,
    host: Option<&str>,
    handshake: Option<Duration>,
    shutdown: Option<Duration>,
) -> Result<Option<(Arc<ClientConfig>, StartTlsOptions)>> {
    let Some(cfg) = ssl else {
        if server_hostname.is_some() {
            return Err(Error::InvalidArgument(
                "server_hostname is only meaningful with ssl".into(),
            ));
        }
        check_no_timeouts(handshake, shutdown)?;
        return Ok(None);
    };
    let name = match (server_hostname, host) {
        (Some(n), _) => n.to_owned(),
        (None, Some(h)) if !h.is_empty() => h.to_owned(),
        _ => {
            return Err(Error::InvalidArgument(
                "you must set server_hostname when using ssl without a host".into(),
            ));
        }
    };
    Ok(Some((
        cfg.clone(),
        StartTlsOptions {
            server_hostname: Some(name),
            ssl_handshake_timeout: handshake,
            ssl_shutdown_timeout: shutdown,
        },
    )))
}

/// `ssl_handshake_timeout` / `ssl_shutdown_timeout` need `ssl` (asyncio).
pub(crate) fn check_no_timeouts(
    handshake: Option<Duration>,
    shutdown: Option<Duration>,
) -> Result<()> {
    if handshake.is_some() {
        return Err(Error::InvalidArgument(
            "ssl_handshake_timeout is only meaningful with ssl".into(),
        ));
    }
    if shutdown.is_some() {
        return Err(Error::InvalidArgument(
            "ssl_shutdown_timeout is only meaningful with ssl".into(),
        ));
    }
    Ok(())
}

/// Starts a transport on an accepted or connected socket, with TLS on the
/// `config`'s side if one is given (the caller waits for the handshake
/// through the result).
pub(crate) async fn start_on_socket(
    lp: &EventLoop,
    sock: Socket,
    app: Box<dyn Protocol>,
    config: TlsConfig,
    opts: &StartTlsOptions,
) -> Result<Transport> {
    let tls = Tls::new(lp, app, config, opts, true, true)?;
    let pending = tls.pending();
    Transport::start(lp, sock, Box::new(TlsProtocol(tls)));
    pending.wait().await
}
