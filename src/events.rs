//! The loop interface (`AbstractEventLoop`), callback handles, the
//! exception-handler context, and `get_running_loop`.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::Path;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use crate::base_loop::{Core, EventLoop, LoopHandle};
use crate::connect::{ConnectOptions, DatagramOptions};
use crate::driver::buf::IoBufMut;
use crate::error::{Error, Result};
use crate::executor::ThreadPool;
use crate::futures::LoopFuture;
use crate::pipes::Pipe;
use crate::protocols::{DatagramProtocol, Protocol};
use crate::server::{Server, ServerOptions};
use crate::sock::{SockAddr, Socket};
use crate::subprocess::{SubprocessOptions, SubprocessProtocol, SubprocessTransport};
use crate::tasks::{Task, TaskHook};
use crate::transports::{DatagramTransport, Transport};
use crate::{Backend, DriverStats};

/// The loop clock as a `u64` count of nanoseconds from a process-wide
/// epoch set ~136 years before the first use, so every real deadline is
/// positive and fits (to ~450 years ahead; later ones are clamped). Timer
/// handles and the heap keep 8 bytes per deadline instead of an `Instant`.
pub(crate) mod ticks {
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    static EPOCH: OnceLock<Instant> = OnceLock::new();

    fn epoch() -> Instant {
        *EPOCH.get_or_init(|| {
            let now = Instant::now();
            now.checked_sub(Duration::from_secs(1 << 32)).unwrap_or(now)
        })
    }

    pub(crate) fn from_instant(t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn to_instant(t: u64) -> Instant {
        epoch() + Duration::from_nanos(t)
    }
}

/// What a handle is: a `call_soon` callback with its label (a thin
/// reference, for `Debug`), or a timer with its deadline and its loop (to
/// tell the loop's timer heap of a cancel). 16 bytes, so a timer handle with
/// a capture-free callback is a 40-byte allocation.
enum Kind {
    Soon(&'static &'static str),
    Timer { when: u64, core: Weak<Core> },
}

const CANCELLED: u8 = 1;
const IN_HEAP: u8 = 2;

/// A callback kept in its handle's own allocation (one allocation per
/// `call_soon`, not a boxed closure plus a handle).
pub(crate) trait CallOnce {
    /// Runs the callback if it is still there; false if it was not.
    fn call(&self) -> bool;
    /// Drops the callback; true if it was there.
    fn clear(&self) -> bool;
}

pub(crate) struct CbSlot<F>(Cell<Option<F>>);

impl<F: FnOnce()> CbSlot<F> {
    pub(crate) fn new(cb: F) -> Self {
        CbSlot(Cell::new(Some(cb)))
    }
}

impl<F: FnOnce()> CallOnce for CbSlot<F> {
    fn call(&self) -> bool {
        match self.0.take() {
            Some(f) => {
                f();
                true
            }
            None => false,
        }
    }
    fn clear(&self) -> bool {
        self.0.take().is_some()
    }
}

pub(crate) struct HandleInner<C: ?Sized = dyn CallOnce> {
    /// `CANCELLED` | `IN_HEAP`.
    state: Cell<u8>,
    kind: Kind,
    callback: C,
}

impl<C: CallOnce + ?Sized> HandleInner<C> {
    /// See [`Handle::cancel`].
    pub(crate) fn cancel(&self) {
        let state = self.state.get();
        if state & CANCELLED != 0 {
            return;
        }
        self.state.set(state | CANCELLED);
        let had_cb = self.callback.clear();
        if let Kind::Timer { core, .. } = &self.kind {
            if had_cb && state & IN_HEAP != 0 {
                if let Some(core) = core.upgrade() {
                    core.timer_cancelled();
                }
            }
        }
    }

    /// The callback slot itself (for a typed timer, [`Handle::timer_with`]).
    pub(crate) fn callback(&self) -> &C {
        &self.callback
    }
}

/// A scheduled callback, returned by `call_soon` (asyncio's `Handle`).
///
/// Equivalent to `asyncio.Handle`. Dropping it does not cancel the callback.
#[derive(Clone)]
pub struct Handle(pub(crate) Rc<HandleInner>);

impl Handle {
    pub(crate) fn new<F: FnOnce() + 'static>(cb: F, label: &'static &'static str) -> Handle {
        Handle(Rc::new(HandleInner {
            state: Cell::new(0),
            kind: Kind::Soon(label),
            callback: CbSlot(Cell::new(Some(cb))),
        }))
    }

    /// A timer whose callback slot is `callback` itself, returned typed, so
    /// that its owner reads the slot's state through the one allocation
    /// (a sleep's wake-up: no handle plus a shared signal). `Handle(rc)`
    /// is the loop's view of it.
    pub(crate) fn timer_with<C: CallOnce + 'static>(
        callback: C,
        when: u64,
        core: Weak<Core>,
    ) -> Rc<HandleInner<C>> {
        Rc::new(HandleInner {
            state: Cell::new(0),
            kind: Kind::Timer { when, core },
            callback,
        })
    }

    /// Cancels the callback; a no-op if it already ran or was cancelled.
    ///
    /// Equivalent to `asyncio.Handle.cancel`. The callback (and whatever it
    /// captured) is dropped at once.
    pub fn cancel(&self) {
        self.0.cancel()
    }

    /// True once [`cancel`](Self::cancel) was called.
    ///
    /// Equivalent to `asyncio.Handle.cancelled`.
    pub fn cancelled(&self) -> bool {
        self.0.state.get() & CANCELLED != 0
    }

    pub(crate) fn set_in_heap(&self, v: bool) {
        let s = self.0.state.get();
        self.0.state.set(if v { s | IN_HEAP } else { s & !IN_HEAP });
    }

    /// Runs the callback (unless cancelled or already run); false if it
    /// did not run.
    pub(crate) fn run(&self) -> bool {
        !self.cancelled() && self.0.callback.call()
    }

    /// Will [`run`](Self::run) call something?
    pub(crate) fn is_pending(&self) -> bool {
        !self.cancelled()
    }

    /// The deadline in [`ticks`] (timer handles only).
    pub(crate) fn when_ticks(&self) -> u64 {
        match &self.0.kind {
            Kind::Timer { when, .. } => *when,
            Kind::Soon(_) => 0,
        }
    }

    fn label(&self) -> &'static str {
        match &self.0.kind {
            Kind::Soon(l) => l,
            Kind::Timer { .. } => "timer",
        }
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.cancelled() { " cancelled" } else { "" };
        write!(f, "<Handle {}{}>", self.label(), state)
    }
}

/// A callback scheduled for a time, returned by `call_later` / `call_at`.
///
/// Equivalent to `asyncio.TimerHandle`.
#[derive(Clone)]
pub struct TimerHandle(pub(crate) Handle);

impl TimerHandle {
    /// The absolute time the callback is scheduled for, on the loop's clock.
    ///
    /// Equivalent to `asyncio.TimerHandle.when`; an [`Instant`] instead of a float.
    pub fn when(&self) -> Instant {
        ticks::to_instant(self.0.when_ticks())
    }

    /// Cancels the callback. See [`Handle::cancel`].
    pub fn cancel(&self) {
        self.0.cancel()
    }

    /// See [`Handle::cancelled`].
    pub fn cancelled(&self) -> bool {
        self.0.cancelled()
    }
}

impl fmt::Debug for TimerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<TimerHandle when={:?}", self.when())?;
        if self.cancelled() {
            f.write_str(" cancelled")?;
        }
        f.write_str(">")
    }
}

/// What the loop tells its exception handler (asyncio's `context` dict).
///
/// `message` is always set; the other keys are set where asyncio sets them.
#[derive(Clone, Debug, Default)]
pub struct ExceptionContext {
    /// Human-readable description (`context['message']`).
    pub message: String,
    /// The error, if any (`context['exception']`).
    pub exception: Option<Error>,
    /// The callback handle involved (`context['handle']`), described.
    pub handle: Option<String>,
    /// The task involved (`context['task']`), described.
    pub task: Option<String>,
    /// The future involved (`context['future']`), described.
    pub future: Option<String>,
    /// The protocol involved (`context['protocol']`), described.
    pub protocol: Option<String>,
    /// The transport involved (`context['transport']`), described.
    pub transport: Option<String>,
    /// The socket involved (`context['socket']`), described.
    pub socket: Option<String>,
}

impl ExceptionContext {
    /// A context with just a message.
    pub fn new(message: impl Into<String>) -> ExceptionContext {
        ExceptionContext {
            message: message.into(),
            ..Default::default()
        }
    }

    /// Sets `exception`.
    pub fn with_exception(mut self, e: Error) -> ExceptionContext {
        self.exception = Some(e);
        self
    }

    /// Looks a key up by its asyncio name (`"message"`, `"exception"`,
    /// `"handle"`, `"task"`, `"future"`, `"protocol"`, `"transport"`, `"socket"`).
    pub fn get(&self, key: &str) -> Option<String> {
        match key {
            "message" => Some(self.message.clone()),
            "exception" => self.exception.as_ref().map(|e| e.to_string()),
            "handle" => self.handle.clone(),
            "task" => self.task.clone(),
            "future" => self.future.clone(),
            "protocol" => self.protocol.clone(),
            "transport" => self.transport.clone(),
            "socket" => self.socket.clone(),
            _ => None,
        }
    }
}

/// An exception handler: `handler(loop, context)`.
pub type ExceptionHandler = Rc<dyn Fn(&EventLoop, &ExceptionContext)>;

/// The interface every ringloop event loop implements.
///
/// Equivalent to `asyncio.AbstractEventLoop`. [`EventLoop`] implements it on
/// either backend; generic code takes `L: AbstractEventLoop`. The `async`
/// methods make the trait unusable as `dyn`, by design (DESIGN.md, invariant 7).
///
/// Every asyncio loop method ringloop has is here, and only here: bring the
/// trait into scope (`use ringloop::prelude::*`) to call them on an
/// [`EventLoop`]. Methods with asyncio's keyword arguments have a `_with`
/// variant taking an options struct; each takes the protocol factory first
/// and the options last (`create_connection_with(factory, opts)`).
///
/// # Examples
///
/// A server and a client written once for any loop:
///
/// ```
/// use ringloop::prelude::*;
/// use ringloop::{BaseProtocol, Protocol, Server, Transport};
///
/// struct Echo(Option<Transport>);
/// impl BaseProtocol for Echo {
///     fn connection_made(&mut self, t: Transport) {
///         self.0 = Some(t);
///     }
/// }
///
/// impl Protocol for Echo {
///     fn data_received(&mut self, data: &[u8]) {
///         self.0.as_ref().unwrap().write(data.to_vec()).unwrap();
///     }
/// }
///
/// async fn serve<L: AbstractEventLoop>(lp: &L) -> ringloop::Result<(Server, u16)> {
///     let server = lp.create_server(|| Echo(None), "127.0.0.1", 0).await?;
///     let port = server.sockets()[0].as_socket().unwrap().port();
///     Ok((server, port))
/// }
///
/// async fn ask<L: AbstractEventLoop>(lp: &L, port: u16) -> ringloop::Result<Vec<u8>> {
///     let addr = lp.getaddrinfo("127.0.0.1", port).await?[0];
///     let sock = Socket::tcp_for(&addr)?;
///     lp.sock_connect(&sock, &addr.into()).await?;
///     lp.sock_sendall(&sock, b"ping".to_vec()).await?;
///     lp.sock_recv(&sock, 4).await
/// }
///
/// let lp = EventLoop::new()?;
/// let l2 = lp.clone();
/// let got = lp.run_until_complete(async move {
///     let (server, port) = serve(&l2).await?;
///     let got = ask(&l2, port).await?;
///     server.close();
///     Ok::<_, Error>(got)
/// })??;
/// assert_eq!(got, b"ping");
/// lp.close()?;
/// # Ok::<(), ringloop::Error>(())
/// ```
pub trait AbstractEventLoop: Clone + fmt::Debug {
    // ---- running and stopping
    /// Runs until `fut` completes and returns its output, or the error that
    /// ended it (`Cancelled`, `Panic`). The future runs as a task.
    ///
    /// Equivalent to `loop.run_until_complete`.
    fn run_until_complete<F>(&self, fut: F) -> Result<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static;
    /// Runs until [`stop`](Self::stop) is called. Equivalent to `loop.run_forever`.
    fn run_forever(&self) -> Result<()>;
    /// Stops the loop after the current batch of callbacks. Equivalent to `loop.stop`.
    fn stop(&self);
    /// True while the loop runs. Equivalent to `loop.is_running`.
    fn is_running(&self) -> bool;
    /// True once closed. Equivalent to `loop.is_closed`.
    fn is_closed(&self) -> bool;
    /// Closes the loop: drops pending callbacks and tasks, cancels in-flight
    /// I/O. Idempotent; an error while running. Equivalent to `loop.close`.
    fn close(&self) -> Result<()>;

    // ---- scheduling callbacks
    /// Schedules `cb` for the next iteration; callbacks run in the order
    /// they were scheduled. Equivalent to `loop.call_soon`.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the loop is closed (asyncio's `RuntimeError`).
    fn call_soon(&self, cb: impl FnOnce() + 'static) -> Result<Handle>;
    /// Schedules `cb` from any thread; see [`LoopHandle`].
    /// Equivalent to `loop.call_soon_threadsafe`.
    fn call_soon_threadsafe(&self, cb: impl FnOnce() + Send + 'static) -> Result<()>;
    /// Schedules `cb` after `delay`; timers run by deadline, ties in the
    /// order scheduled. Equivalent to `loop.call_later`.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once closed; [`Error::InvalidArgument`] if the
    /// deadline overflows the clock.
    fn call_later(&self, delay: Duration, cb: impl FnOnce() + 'static) -> Result<TimerHandle>;
    /// Schedules `cb` at `when` on the loop's clock. Equivalent to `loop.call_at`.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the loop is closed.
    fn call_at(&self, when: Instant, cb: impl FnOnce() + 'static) -> Result<TimerHandle>;
    /// The loop's clock. Equivalent to `loop.time`.
    fn time(&self) -> Instant;
    /// A `Send + Sync` handle for other threads.
    fn handle(&self) -> LoopHandle;

    // ---- futures and tasks
    /// A new pending future bound to this loop. Equivalent to `loop.create_future`.
    fn create_future<T: 'static>(&self) -> LoopFuture<T>;
    /// Wraps `fut` in a task and schedules it. Equivalent to `loop.create_task`.
    fn create_task<F>(&self, fut: F) -> Task<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static;
    /// As [`create_task`](Self::create_task), with a name.
    fn create_named_task<F>(&self, name: impl Into<String>, fut: F) -> Task<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static;
    /// Sets (or with `None` removes) the task hook: a function called with
    /// every new task's handle (its name, `cancel`, …) inside
    /// [`create_task`](Self::create_task), after the task exists and before
    /// its first step (also with eager start). Tasks the loop makes for its
    /// own use (fd watchers, a server's accepts) are not shown.
    ///
    /// Equivalent to `loop.set_task_factory(factory)`, in a Rust form (as
    /// tokio's task hooks): asyncio's factory builds and returns the task
    /// object itself (so it can return a `Task` subclass); in Rust the loop
    /// builds the task, whose typed handle and output type are fixed by
    /// the caller, and the hook observes it: record, rename or cancel it,
    /// or count tasks. There are no contextvars; a hook that wants one
    /// keeps it keyed by the task. A panic in the hook reaches the caller
    /// of `create_task`, as an exception in asyncio's factory does. To
    /// start tasks eagerly (`eager_task_factory`) use
    /// [`EventLoop::set_eager_task_start`](crate::EventLoop::set_eager_task_start).
    /// With no hook set, `create_task` pays one branch.
    fn set_task_factory(&self, hook: Option<TaskHook>);
    /// The task hook set by [`set_task_factory`](Self::set_task_factory).
    /// Equivalent to `loop.get_task_factory`.
    fn get_task_factory(&self) -> Option<TaskHook>;

    // ---- errors and debug
    /// Sets (or with `None` resets) the exception handler.
    /// Equivalent to `loop.set_exception_handler`.
    fn set_exception_handler(&self, handler: Option<ExceptionHandler>);
    /// The current exception handler. Equivalent to `loop.get_exception_handler`.
    fn get_exception_handler(&self) -> Option<ExceptionHandler>;
    /// Logs the context through `log::error!`.
    /// Equivalent to `loop.default_exception_handler`.
    fn default_exception_handler(&self, ctx: &ExceptionContext);
    /// Calls the current exception handler. Equivalent to `loop.call_exception_handler`.
    fn call_exception_handler(&self, ctx: ExceptionContext);
    /// Debug mode. Equivalent to `loop.get_debug`.
    fn get_debug(&self) -> bool;
    /// Turns debug mode on or off. Equivalent to `loop.set_debug`.
    fn set_debug(&self, on: bool);

    // ---- backend facts
    /// Which backend runs this loop.
    fn backend(&self) -> Backend;
    /// The driver's counters.
    fn driver_stats(&self) -> DriverStats;

    // ---- opening network connections
    //
    // Every `_with` variant (here and in `streams`) takes the protocol
    // factory (or the streams' client callback) first, then the plain
    // method's other non-option arguments, then its options struct last
    // (docs/design.md).
    /// Connects to `host:port` and runs a protocol made by `factory` on the
    /// connection. The resolved addresses are tried one at a time, as
    /// asyncio does without `happy_eyeballs_delay`; the first that connects
    /// wins.
    ///
    /// Equivalent to `loop.create_connection(protocol_factory, host, port)`;
    /// see [`create_connection_with`](Self::create_connection_with) for the
    /// options. Returns the transport alone: the protocol is owned by it
    /// (pass an `Rc<RefCell<P>>` to keep a handle to it). As in asyncio,
    /// it returns only after the protocol's `connection_made(transport)`
    /// has run, and TCP_NODELAY is set on every TCP connection (also on a
    /// `sock` given in the options, unless `keep_nagle`). Name resolution
    /// runs off the loop thread ([`getaddrinfo`](Self::getaddrinfo)).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the loop is closed; [`Error::Io`] if
    /// resolution or every connection attempt fails.
    ///
    /// # Examples
    ///
    /// ```
    /// use ringloop::prelude::*;
    /// use ringloop::{BaseProtocol, Protocol};
    ///
    /// struct Quiet;
    /// impl BaseProtocol for Quiet {}
    /// impl Protocol for Quiet {}
    ///
    /// ringloop::run(async {
    ///     let lp = get_running_loop()?;
    ///     let server = lp.create_server(|| Quiet, "127.0.0.1", 0).await?;
    ///     let port = server.sockets()[0].as_socket().unwrap().port();
    ///     let t = lp.create_connection(|| Quiet, "127.0.0.1", port).await?;
    ///     assert!(t.get_extra_info("peername").is_some());
    ///     t.close();
    ///     server.close();
    ///     Ok::<(), Error>(())
    /// })??;
    /// # Ok::<(), ringloop::Error>(())
    /// ```
    fn create_connection<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<Transport>>;
    /// [`create_connection`](Self::create_connection) with asyncio's
    /// keyword arguments in a [`ConnectOptions`]: `host`/`port`, resolved
    /// `addrs` or a connected `sock`; `local_addr`, `happy_eyeballs_delay`
    /// (RFC 8305), `interleave`, `family`, `all_errors`.
    ///
    /// Equivalent to `loop.create_connection(protocol_factory, **opts)`.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the loop is closed; [`Error::InvalidArgument`]
    /// unless exactly one of `host`, `addrs` or `sock` is given;
    /// [`Error::Io`] if no address connects (one combined error, or
    /// [`Error::Group`] with every attempt's error under `all_errors`).
    fn create_connection_with<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        opts: ConnectOptions,
    ) -> impl Future<Output = Result<Transport>>;
    /// Connects to the Unix stream socket at `path` and runs a protocol made
    /// by `factory` on the connection.
    ///
    /// Equivalent to `loop.create_unix_connection(protocol_factory, path)`.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the loop is closed; [`Error::Io`] if the path
    /// is too long or the connection fails.
    fn create_unix_connection<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        path: impl AsRef<Path>,
    ) -> impl Future<Output = Result<Transport>>;
    /// Wraps an already connected stream socket (accepted elsewhere, or
    /// connected with [`sock_connect`](Self::sock_connect)) in a transport
    /// running a protocol made by `factory`.
    ///
    /// Equivalent to `loop.connect_accepted_socket(protocol_factory, sock)`;
    /// synchronous here, since there is nothing to wait for, so unlike
    /// asyncio's coroutine it returns before `connection_made` runs (at
    /// the loop's next turn, before any data is delivered). TCP_NODELAY is
    /// set on a TCP socket, as asyncio does.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the loop is closed; [`Error::InvalidArgument`]
    /// for a socket that is not connected.
    fn connect_accepted_socket<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        sock: Socket,
    ) -> Result<Transport>;
    /// Opens a datagram (UDP) endpoint running a protocol made by `factory`:
    /// bound to `local_addr`, connected to `remote_addr` (then `sendto` needs
    /// no address), or on an existing socket, as [`DatagramOptions`] says.
    ///
    /// Equivalent to `loop.create_datagram_endpoint(protocol_factory, **opts)`.
    /// There is no variant without options: asyncio's has only keyword
    /// arguments.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the loop is closed; [`Error::InvalidArgument`]
    /// without any address or socket, or with a socket and addresses both;
    /// [`Error::Io`] from bind or connect.
    fn create_datagram_endpoint<P: DatagramProtocol>(
        &self,
        factory: impl FnOnce() -> P,
        opts: DatagramOptions,
    ) -> impl Future<Output = Result<DatagramTransport>>;

    // ---- creating network servers
    /// Listens on `host:port` (an empty host: every interface, IPv4 and
    /// IPv6; port 0: a free port, the same on every address) and runs a
    /// protocol made by `factory` on each accepted connection. The server
    /// accepts at once.
    ///
    /// Equivalent to `loop.create_server(protocol_factory, host, port)`;
    /// see [`create_server_with`](Self::create_server_with) for the options.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the loop is closed; [`Error::Io`] if resolving
    /// or binding fails (sockets bound so far are closed).
    fn create_server<P, F>(
        &self,
        factory: F,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<Server>>
    where
        P: Protocol,
        F: Fn() -> P + 'static;
    /// [`create_server`](Self::create_server) with asyncio's keyword
    /// arguments in a [`ServerOptions`]: several `hosts` or listening
    /// `socks`, `backlog`, `reuse_address`, `reuse_port` (one loop per core
    /// on one port), `keep_alive`, `start_serving`.
    ///
    /// Equivalent to `loop.create_server(protocol_factory, **opts)`.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the loop is closed; [`Error::InvalidArgument`]
    /// for `hosts` together with `socks`; [`Error::Io`] if resolving or
    /// binding fails (sockets bound so far are closed).
    fn create_server_with<P, F>(
        &self,
        factory: F,
        opts: ServerOptions,
    ) -> impl Future<Output = Result<Server>>
    where
        P: Protocol,
        F: Fn() -> P + 'static;
    /// Listens on the Unix socket `path` and runs a protocol made by
    /// `factory` on each accepted connection. A stale socket file left at
    /// `path` is replaced, and the file is removed when the server closes.
    ///
    /// Equivalent to `loop.create_unix_server(protocol_factory, path)` (with
    /// `cleanup_socket=True`).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the loop is closed; [`Error::Io`] if binding
    /// fails, or `path` exists and is not a socket.
    fn create_unix_server<P, F>(
        &self,
        factory: F,
        path: impl AsRef<Path>,
    ) -> impl Future<Output = Result<Server>>
    where
        P: Protocol,
        F: Fn() -> P + 'static;

    // ---- TLS (issue 14)
    /// [`create_unix_server`](Self::create_unix_server) with options:
    /// `backlog`, `start_serving` and TLS (`ssl`, `ssl_handshake_timeout`,
    /// `ssl_shutdown_timeout`) apply; `hosts`, `socks`, `port` and
    /// `reuse_port` do not.
    ///
    /// Equivalent to `loop.create_unix_server(protocol_factory, path, **opts)`.
    ///
    /// # Errors
    ///
    /// As [`create_unix_server`](Self::create_unix_server);
    /// [`Error::InvalidArgument`] for an option that does not apply.
    fn create_unix_server_with<P, F>(
        &self,
        factory: F,
        path: impl AsRef<Path>,
        opts: ServerOptions,
    ) -> impl Future<Output = Result<Server>>
    where
        P: Protocol,
        F: Fn() -> P + 'static;
    /// [`create_unix_connection`](Self::create_unix_connection) with
    /// options: a connected `sock` instead of `path` (pass `None` then) and
    /// TLS (`ssl`, `server_hostname` — required with TLS, there is no host —
    /// and the TLS timeouts); the other fields do not apply.
    ///
    /// Equivalent to `loop.create_unix_connection(protocol_factory, path, **opts)`.
    ///
    /// # Errors
    ///
    /// As [`create_unix_connection`](Self::create_unix_connection) and
    /// [`create_connection_with`](Self::create_connection_with)'s TLS errors.
    fn create_unix_connection_with<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        path: Option<&Path>,
        opts: ConnectOptions,
    ) -> impl Future<Output = Result<Transport>>;
    /// [`connect_accepted_socket`](Self::connect_accepted_socket) with TLS
    /// (asyncio's `ssl=`; usually a server config, for a socket accepted
    /// elsewhere): the result comes once the handshake is done.
    ///
    /// Equivalent to `loop.connect_accepted_socket(protocol_factory, sock, ssl=…)`.
    ///
    /// # Errors
    ///
    /// As [`connect_accepted_socket`](Self::connect_accepted_socket);
    /// [`Error::Tls`] or [`Error::Timeout`] if the handshake fails (the
    /// socket is closed).
    fn connect_accepted_socket_with<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        sock: Socket,
        ssl: crate::TlsConfig,
        opts: crate::StartTlsOptions,
    ) -> impl Future<Output = Result<Transport>>;
    /// Upgrades a live connection to TLS: the handshake runs over
    /// `transport`, and the result is the new transport `protocol` talks
    /// through from now on (it does not get `connection_made` again). The
    /// side is the config's ([`TlsConfig`](crate::TlsConfig)); a client
    /// needs `opts.server_hostname`.
    ///
    /// Equivalent to `loop.start_tls(transport, protocol, sslcontext, …)`.
    /// Here the transport owns its protocol: `protocol` becomes the TLS
    /// side's and the transport's old protocol is dropped (pass an
    /// `Rc<RefCell<P>>` clone to keep one).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if `transport` is closing (asyncio returns `None`);
    /// [`Error::InvalidArgument`] on a TLS transport or without a client's
    /// server name; [`Error::Tls`] or [`Error::Timeout`] if the handshake
    /// fails (the connection is closed).
    fn start_tls<P: Protocol>(
        &self,
        transport: &Transport,
        protocol: P,
        config: impl Into<crate::TlsConfig>,
        opts: crate::StartTlsOptions,
    ) -> impl Future<Output = Result<Transport>>;

    // ---- low-level socket operations
    /// Receives up to `nbytes`. Equivalent to `loop.sock_recv`.
    fn sock_recv(&self, sock: &Socket, nbytes: usize) -> impl Future<Output = Result<Vec<u8>>>;
    /// Receives into the spare capacity of `buf`; returns the count and the
    /// buffer, also on error. Equivalent to `loop.sock_recv_into`.
    fn sock_recv_into<B: IoBufMut>(
        &self,
        sock: &Socket,
        buf: B,
    ) -> impl Future<Output = (Result<usize>, B)>;
    /// Receives one datagram of at most `bufsize` bytes with its source.
    /// Equivalent to `loop.sock_recvfrom`.
    fn sock_recvfrom(
        &self,
        sock: &Socket,
        bufsize: usize,
    ) -> impl Future<Output = Result<(Vec<u8>, SockAddr)>>;
    /// Receives one datagram into the spare capacity of `buf`; returns the
    /// size and source, and the buffer (also on error). A datagram larger
    /// than the spare capacity is truncated. Equivalent to
    /// `loop.sock_recvfrom_into`.
    fn sock_recvfrom_into<B: IoBufMut>(
        &self,
        sock: &Socket,
        buf: B,
    ) -> impl Future<Output = (Result<(usize, SockAddr)>, B)>;
    /// Sends all of `data`. Equivalent to `loop.sock_sendall`.
    fn sock_sendall<B: crate::IoBuf>(
        &self,
        sock: &Socket,
        data: B,
    ) -> impl Future<Output = Result<()>>;
    /// Sends one datagram to `addr`. Equivalent to `loop.sock_sendto`.
    fn sock_sendto<B: crate::IoBuf>(
        &self,
        sock: &Socket,
        data: B,
        addr: &SockAddr,
    ) -> impl Future<Output = Result<usize>>;
    /// Connects to `addr`. Equivalent to `loop.sock_connect`.
    fn sock_connect(&self, sock: &Socket, addr: &SockAddr) -> impl Future<Output = Result<()>>;
    /// Accepts one connection. Equivalent to `loop.sock_accept`.
    fn sock_accept(&self, sock: &Socket) -> impl Future<Output = Result<(Socket, SockAddr)>>;

    // ---- watching raw file descriptors
    /// Calls `cb` whenever `fd` is readable (level-triggered).
    /// Equivalent to `loop.add_reader`; also on the proactor.
    fn add_reader(&self, fd: RawFd, cb: impl FnMut() + 'static) -> Result<()>;
    /// Stops watching `fd` for reading; true if it was watched.
    /// Equivalent to `loop.remove_reader`.
    fn remove_reader(&self, fd: RawFd) -> bool;
    /// Calls `cb` whenever `fd` is writable (level-triggered).
    /// Equivalent to `loop.add_writer`.
    fn add_writer(&self, fd: RawFd, cb: impl FnMut() + 'static) -> Result<()>;
    /// Stops watching `fd` for writing; true if it was watched.
    /// Equivalent to `loop.remove_writer`.
    fn remove_writer(&self, fd: RawFd) -> bool;

    // ---- sending files
    /// Sends `file` over `transport` from `offset`: `count` bytes, or to
    /// the end of the file with `None`. Returns the bytes sent.
    ///
    /// Equivalent to `loop.sendfile(transport, file, offset, count,
    /// fallback=...)`. On a socket transport and a regular file this is
    /// zero-copy `sendfile(2)` on both backends: what was written to the
    /// transport before goes first, reading is paused while the file goes
    /// out (and resumed after, unless it was paused already), and `write`
    /// is refused meanwhile ([`Error::InvalidState`]). Otherwise (a pipe or
    /// another non-regular file, a TLS transport) `fallback` reads and
    /// writes in blocks, keeping to the transport's flow control. The file
    /// position is `offset` plus the bytes sent afterwards, after success,
    /// after an error and after the future is dropped, if anything was
    /// sent. Dropping the future stops the transfer and leaves the
    /// transport usable (the bytes sent so far are on the wire).
    ///
    /// `sendfile(2)` raises `SIGPIPE` on a connection the peer reset, as
    /// `write(2)` does; Rust programs ignore `SIGPIPE` unless they opted
    /// out, and then get [`Error::Io`] (`EPIPE`).
    ///
    /// # Errors
    ///
    /// [`Error::SendfileNotAvailable`] when zero-copy cannot serve and
    /// `fallback` is false; [`Error::InvalidArgument`] for `count` 0 or an
    /// offset a non-seekable file cannot start at; [`Error::Closed`] if
    /// the transport is closing or closes meanwhile; [`Error::Io`] from
    /// the send or the read.
    fn sendfile<'a>(
        &'a self,
        transport: &'a Transport,
        file: &'a std::fs::File,
        offset: u64,
        count: Option<u64>,
        fallback: bool,
    ) -> impl Future<Output = Result<u64>> + 'a;
    /// Sends `file` over the stream socket `sock`; as
    /// [`sendfile`](Self::sendfile), for a socket (zero-copy `sendfile(2)`,
    /// or reads and [`sock_sendall`](Self::sock_sendall) with `fallback`).
    ///
    /// Equivalent to `loop.sock_sendfile(sock, file, offset, count,
    /// fallback=...)`.
    ///
    /// # Errors
    ///
    /// As [`sendfile`](Self::sendfile); [`Error::InvalidArgument`] for a
    /// socket that is not `SOCK_STREAM`.
    fn sock_sendfile<'a>(
        &'a self,
        sock: &'a Socket,
        file: &'a std::fs::File,
        offset: u64,
        count: Option<u64>,
        fallback: bool,
    ) -> impl Future<Output = Result<u64>> + 'a;

    // ---- Unix signals
    /// Calls `cb` on this loop whenever signal `sig` (a `libc::SIG*`
    /// number) comes; replaces the loop's earlier handler for `sig`.
    ///
    /// Equivalent to `loop.add_signal_handler(sig, callback)`. The callback
    /// is an ordinary loop callback (it may use the loop), never run in
    /// signal context. Signals that come in a burst before it runs are
    /// coalesced into one call, but one that comes after a call started
    /// always leads to another. Several loops, on several threads, may
    /// each handle the same signal: each gets its own calls. Unlike asyncio
    /// any thread may call this (the process-wide part is ringloop's hub,
    /// not Python's `signal` module). The handler that was installed before
    /// (a function, not `SIG_DFL`/`SIG_IGN`) still runs, in signal context,
    /// after ringloop's; removing the last loop handler of a signal puts
    /// that disposition back, and [`close`](Self::close) removes them all.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a number out of range, `SIGKILL` and
    /// `SIGSTOP` (uncatchable), the C library's internal signals (32, 33)
    /// and the synchronous fault signals `SIGSEGV`, `SIGBUS`, `SIGFPE`,
    /// `SIGILL` (a handler that returns would fault again at once);
    /// [`Error::InvalidState`] if the handler cannot be set up (asyncio's
    /// `RuntimeError`); [`Error::Closed`] once the loop is closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use ringloop::prelude::*;
    /// ringloop::run(async {
    ///     let lp = get_running_loop().unwrap();
    ///     let stop = lp.create_future::<()>();
    ///     let s2 = stop.clone();
    ///     lp.add_signal_handler(libc::SIGUSR2, move || { let _ = s2.set_result(()); }).unwrap();
    ///     // SAFETY: signals this process, which handles SIGUSR2 now.
    ///     unsafe { libc::kill(libc::getpid(), libc::SIGUSR2) };
    ///     stop.await.unwrap();
    ///     assert!(lp.remove_signal_handler(libc::SIGUSR2));
    /// }).unwrap();
    /// ```
    fn add_signal_handler(&self, sig: i32, cb: impl FnMut() + 'static) -> Result<()>;
    /// Removes the loop's handler for `sig`; true if there was one.
    /// Equivalent to `loop.remove_signal_handler(sig)` (false, not an
    /// error, for an invalid number).
    fn remove_signal_handler(&self, sig: i32) -> bool;

    // ---- DNS
    /// Resolves `host:port` off the loop thread, on the default executor.
    ///
    /// Equivalent to `loop.getaddrinfo(host, port)`, giving the addresses
    /// only. A numeric host (`"127.0.0.1"`, `"::1"`) is answered at once
    /// without a worker thread, like asyncio's `_ipaddr_info` fast path.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the name does not resolve; [`Error::InvalidState`]
    /// after [`shutdown_default_executor`](Self::shutdown_default_executor).
    ///
    /// # Examples
    ///
    /// ```
    /// use ringloop::prelude::*;
    /// ringloop::run(async {
    ///     let lp = get_running_loop().unwrap();
    ///     let addrs = lp.getaddrinfo("localhost", 80).await.unwrap();
    ///     assert!(addrs.iter().any(|a| a.ip().is_loopback()));
    /// }).unwrap();
    /// ```
    fn getaddrinfo(&self, host: &str, port: u16) -> impl Future<Output = Result<Vec<SocketAddr>>>;
    /// The host and service names of `addr`, off the loop thread.
    ///
    /// Equivalent to `loop.getnameinfo(sockaddr, flags)`; `flags` are
    /// `libc::NI_*` bits.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the lookup fails; [`Error::InvalidState`] after
    /// [`shutdown_default_executor`](Self::shutdown_default_executor).
    fn getnameinfo(
        &self,
        addr: SocketAddr,
        flags: i32,
    ) -> impl Future<Output = Result<(String, String)>>;

    // ---- subprocesses
    /// Starts `program` with `args` and runs a protocol made by `factory`
    /// on it: its pipes (as `opts` says) and its exit. Returns once
    /// `connection_made` has run.
    ///
    /// Equivalent to `loop.subprocess_exec(protocol_factory, program,
    /// *args, ...)` (the keyword arguments are [`SubprocessOptions`];
    /// every stream is a pipe by default, as in asyncio), returning the
    /// transport. The child's exit is watched through a pidfd (no
    /// `SIGCHLD` handler); every fd but 0–2 and `pass_fds` is closed in
    /// the child.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the loop is closed; [`Error::Io`] if the
    /// program cannot be started; [`Error::InvalidArgument`] for bad
    /// options.
    fn subprocess_exec<P, I, S>(
        &self,
        factory: impl FnOnce() -> P,
        program: impl AsRef<std::ffi::OsStr>,
        args: I,
        opts: SubprocessOptions,
    ) -> impl Future<Output = Result<SubprocessTransport>>
    where
        P: SubprocessProtocol,
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>;
    /// Runs `cmd` through `/bin/sh -c`, as
    /// [`subprocess_exec`](Self::subprocess_exec) runs a program.
    ///
    /// Equivalent to `loop.subprocess_shell(protocol_factory, cmd, ...)`.
    ///
    /// # Errors
    ///
    /// As [`subprocess_exec`](Self::subprocess_exec).
    fn subprocess_shell<P: SubprocessProtocol>(
        &self,
        factory: impl FnOnce() -> P,
        cmd: impl AsRef<std::ffi::OsStr>,
        opts: SubprocessOptions,
    ) -> impl Future<Output = Result<SubprocessTransport>>;

    // ---- pipes
    /// Runs a protocol made by `factory` on the read end of a pipe (or a
    /// FIFO, socket or character device): its `data_received` gets what
    /// the pipe delivers, `eof_received` then `connection_lost(None)` its
    /// end. Returns once `connection_made` has run.
    ///
    /// Equivalent to `loop.connect_read_pipe(protocol_factory, pipe)`,
    /// returning the transport (the protocol is the transport's until
    /// `connection_lost`: keep what you need through `connection_made`).
    /// The transport is a [`Transport`] (asyncio's `ReadTransport`):
    /// [`write`](Transport::write) on it is an error. On the proactor it
    /// reads with a multishot `read` into the loop's receive pool (Linux
    /// 6.7; one plain `read` at a time before that), on the selector on
    /// readiness.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the loop is closed;
    /// [`Error::InvalidArgument`] for a regular file or a directory.
    fn connect_read_pipe<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        pipe: Pipe,
    ) -> impl Future<Output = Result<Transport>>;
    /// Runs a protocol made by `factory` on the write end of a pipe (or a
    /// FIFO, socket or character device), with flow control as on sockets.
    /// Returns once `connection_made` has run.
    ///
    /// Equivalent to `loop.connect_write_pipe(protocol_factory, pipe)`,
    /// returning the transport (asyncio's `WriteTransport`: it never
    /// reads). [`write_eof`](Transport::write_eof) closes the pipe once
    /// the buffer is written. When the reader goes away the transport
    /// closes: `connection_lost(None)` if nothing was waiting to be
    /// written, else `connection_lost(Some(..))` with the broken pipe
    /// (`EPIPE` from a write is reported the same way).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the loop is closed;
    /// [`Error::InvalidArgument`] for a regular file or a directory.
    fn connect_write_pipe<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        pipe: Pipe,
    ) -> impl Future<Output = Result<Transport>>;
    /// Reads from `pipe` into the spare capacity of `buf`; `Ok(0)` at end of
    /// file. The buffer comes back also on error.
    ///
    /// No asyncio loop method is this one: it is the pipe counterpart of
    /// [`sock_recv_into`](Self::sock_recv_into), for reading a pipe
    /// without a transport.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the loop is closed; [`Error::Io`] from `read(2)`.
    fn pipe_read_into<B: IoBufMut>(
        &self,
        pipe: &Pipe,
        buf: B,
    ) -> impl Future<Output = (Result<usize>, B)>;
    /// Writes all of `data` to `pipe`.
    ///
    /// No asyncio loop method is this one: it is the pipe counterpart of
    /// [`sock_sendall`](Self::sock_sendall), the building block of
    /// [`connect_write_pipe`](Self::connect_write_pipe)'s transport, for
    /// writing a pipe without one.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the loop is closed; [`Error::Io`], e.g.
    /// `EPIPE` once the read end is closed.
    fn pipe_write_all<B: crate::IoBuf>(
        &self,
        pipe: &Pipe,
        data: B,
    ) -> impl Future<Output = Result<()>>;

    // ---- executing code in thread pools
    /// Runs `f` on the default executor (a [`ThreadPool`] made on first use)
    /// and returns its result.
    ///
    /// Equivalent to `loop.run_in_executor(None, f)`. Dropping the future
    /// does not stop `f` (a thread cannot be cancelled); its result is
    /// discarded.
    ///
    /// # Errors
    ///
    /// [`Error::Panic`] if `f` panicked; [`Error::InvalidState`] after
    /// [`shutdown_default_executor`](Self::shutdown_default_executor).
    ///
    /// # Examples
    ///
    /// ```
    /// use ringloop::prelude::*;
    /// ringloop::run(async {
    ///     let lp = get_running_loop().unwrap();
    ///     let v = lp.run_in_executor(|| (1..=10).sum::<u32>()).await.unwrap();
    ///     assert_eq!(v, 55);
    /// }).unwrap();
    /// ```
    fn run_in_executor<F, T>(&self, f: F) -> impl Future<Output = Result<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static;
    /// Runs `f` on `pool`. Equivalent to `loop.run_in_executor(pool, f)`.
    ///
    /// # Errors
    ///
    /// [`Error::Panic`] if `f` panicked; [`Error::InvalidState`] if `pool`
    /// is shut down.
    fn run_in_executor_on<F, T>(&self, pool: &ThreadPool, f: F) -> impl Future<Output = Result<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static;
    /// Replaces the default executor. Equivalent to `loop.set_default_executor`.
    fn set_default_executor(&self, pool: ThreadPool);
    /// Stops the default executor and waits (at most `timeout`) for its
    /// threads to finish; afterwards [`run_in_executor`](Self::run_in_executor)
    /// fails.
    ///
    /// Equivalent to `loop.shutdown_default_executor(timeout)`: past the
    /// timeout a warning is logged and the threads are not waited for.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the joining thread cannot be started.
    fn shutdown_default_executor(
        &self,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<()>>;
}

/// The loop running on this thread.
///
/// Equivalent to `asyncio.get_running_loop`.
///
/// # Errors
///
/// [`Error::InvalidState`] when no loop is running on this thread.
pub fn get_running_loop() -> Result<EventLoop> {
    crate::base_loop::running_loop().ok_or_else(|| Error::state("no running event loop"))
}

#[cfg(test)]
mod tests {
    use super::{CbSlot, HandleInner, ticks};
    use std::time::{Duration, Instant};

    fn inner_size<F: FnOnce()>(_: &F) -> usize {
        std::mem::size_of::<HandleInner<CbSlot<F>>>()
    }

    #[test]
    fn a_timer_handle_with_a_capture_free_callback_is_40_bytes() {
        // With the Rc's two counts, 40 bytes: glibc's 48-byte chunk class.
        assert_eq!(inner_size(&|| {}), 24);
    }

    #[test]
    fn ticks_round_trip_instants() {
        let now = Instant::now();
        for t in [
            now,
            now + Duration::from_nanos(1),
            now + Duration::from_secs(86_400 * 365),
        ] {
            assert_eq!(ticks::to_instant(ticks::from_instant(t)), t);
        }
        assert!(ticks::from_instant(now) < ticks::from_instant(now + Duration::from_nanos(1)));
    }
}
