//! Servers: `create_server`, `create_unix_server`, and the [`Server`] object.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::base_loop::EventLoop;
use crate::error::{Error, Result};
#[cfg(doc)]
use crate::events::AbstractEventLoop;
use crate::events::ExceptionContext;
use crate::protocols::Protocol;
use crate::sock::{Acceptor, Domain, SockAddr, Socket, Type};
use crate::tasks::TaskRef;
use crate::transports::{StartTlsOptions, Transport, tls};

/// The server's TLS settings (asyncio: TLS timeouts need `ssl`).
fn server_tls(
    opts: &ServerOptions,
) -> Result<Option<(std::sync::Arc<rustls::ServerConfig>, StartTlsOptions)>> {
    match &opts.ssl {
        None => {
            tls::check_no_timeouts(opts.ssl_handshake_timeout, opts.ssl_shutdown_timeout)?;
            Ok(None)
        }
        Some(cfg) => Ok(Some((
            cfg.clone(),
            StartTlsOptions {
                server_hostname: None,
                ssl_handshake_timeout: opts.ssl_handshake_timeout,
                ssl_shutdown_timeout: opts.ssl_shutdown_timeout,
            },
        ))),
    }
}

/// How long accepting pauses after `EMFILE`/`ENFILE`/`ENOBUFS`/`ENOMEM`
/// (asyncio's `ACCEPT_RETRY_DELAY`).
const ACCEPT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Options of [`AbstractEventLoop::create_server_with`] (and
/// [`start_server_with`](crate::start_server_with)).
///
/// Equivalent to `loop.create_server`'s keyword arguments.
#[derive(Debug)]
pub struct ServerOptions {
    /// Hosts to listen on; empty: every interface, IPv4 and IPv6.
    pub hosts: Vec<String>,
    /// Port (0: any free port, the same for every host where possible).
    pub port: u16,
    /// Listening sockets to use instead of binding.
    pub socks: Vec<Socket>,
    /// `listen()` backlog (asyncio's default: 100).
    pub backlog: i32,
    /// `SO_REUSEADDR` (default on).
    pub reuse_address: bool,
    /// `SO_REUSEPORT`: several loops (one per core) can share the port.
    pub reuse_port: bool,
    /// `SO_KEEPALIVE` on accepted connections.
    pub keep_alive: bool,
    /// Start accepting at once (default) or on `start_serving`.
    pub start_serving: bool,
    /// TLS on every accepted connection (asyncio's `ssl=`): a protocol's
    /// `connection_made` comes after the handshake; a failed handshake
    /// costs that connection only (logged at debug level, as asyncio).
    pub ssl: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// How long a client's TLS handshake may take (default 60 s).
    pub ssl_handshake_timeout: Option<Duration>,
    /// How long a TLS `close()` waits for the peer's `close_notify`
    /// (default 30 s).
    pub ssl_shutdown_timeout: Option<Duration>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            hosts: Vec::new(),
            port: 0,
            socks: Vec::new(),
            backlog: 100,
            reuse_address: true,
            reuse_port: false,
            keep_alive: false,
            start_serving: true,
            ssl: None,
            ssl_handshake_timeout: None,
            ssl_shutdown_timeout: None,
        }
    }
}

type Factory = Rc<dyn Fn() -> Box<dyn Protocol>>;

struct Inner {
    lp: EventLoop,
    sockets: RefCell<Vec<Socket>>,
    addrs: Vec<SockAddr>,
    factory: Factory,
    keep_alive: bool,
    tcp: bool,
    serving: Cell<bool>,
    closed: Cell<bool>,
    acceptors: RefCell<Vec<TaskRef>>,
    clients: RefCell<Vec<Transport>>,
    waiters: RefCell<Vec<Waker>>,
    serve_forever: Cell<bool>,
    /// [`Server::detach`] was called.
    detached: Cell<bool>,
    unix_path: Option<(PathBuf, u64)>,
    tls: Option<(std::sync::Arc<rustls::ServerConfig>, StartTlsOptions)>,
}

impl Inner {
    fn wake_waiters(&self) {
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Stops listening: the accept tasks are cancelled (a connection the
    /// kernel accepted for them meanwhile is closed with their op, never
    /// handed to a protocol) and the listening sockets are released.
    fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        self.serving.set(false);
        for t in self.acceptors.borrow_mut().drain(..) {
            t.cancel(None);
        }
        self.sockets.borrow_mut().clear();
        if let Some((path, ino)) = &self.unix_path {
            use std::os::unix::fs::MetadataExt;
            if std::fs::metadata(path).is_ok_and(|m| m.ino() == *ino) {
                let _ = std::fs::remove_file(path);
            }
        }
        self.wake_waiters();
    }
}

impl Drop for Inner {
    /// The last [`Server`] handle is gone: nobody can close the server,
    /// wait for it or serve it any more, so it stops listening.
    fn drop(&mut self) {
        self.close();
    }
}

/// A listening server. Equivalent to `asyncio.Server`.
///
/// # Scope
///
/// asyncio scopes a server with `async with server:` (closed on exit);
/// Rust scopes it with its handles: when the last `Server` handle (it is
/// `Clone`) is dropped, the server closes as [`close`](Self::close) does.
/// The listening sockets go, so later connects are refused instead of
/// being accepted and dropped; connections already made stay open and
/// keep their protocols. To keep a server listening with no handle, keep
/// one inside the task that runs [`serve_forever`](Self::serve_forever)
/// (which holds it while it runs), or call [`detach`](Self::detach), which
/// hands it to the loop: it serves until it is closed through another
/// handle or the loop closes.
#[derive(Clone)]
pub struct Server(Rc<Inner>);

fn bind_listener(addr: SocketAddr, opts: &ServerOptions) -> Result<Socket> {
    let s = Socket::tcp_for(&addr)?;
    if opts.reuse_address {
        s.with(|s| s.set_reuse_address(true))?;
    }
    if opts.reuse_port {
        s.with(|s| s.set_reuse_port(true))?;
    }
    if addr.is_ipv6() {
        // Keep v4 and v6 listeners separate, as asyncio does.
        s.with(|s| s.set_only_v6(true))?;
    }
    s.bind(&addr.into())?;
    s.listen(opts.backlog)?;
    Ok(s)
}

impl EventLoop {
    /// [`AbstractEventLoop::create_server`].
    pub(crate) async fn create_server_impl<P, F>(
        &self,
        factory: F,
        host: &str,
        port: u16,
    ) -> Result<Server>
    where
        P: Protocol,
        F: Fn() -> P + 'static,
    {
        let hosts = if host.is_empty() {
            Vec::new()
        } else {
            vec![host.to_owned()]
        };
        self.create_server_with_impl(
            factory,
            ServerOptions {
                hosts,
                port,
                ..Default::default()
            },
        )
        .await
    }

    /// [`AbstractEventLoop::create_server_with`].
    pub(crate) async fn create_server_with_impl<P, F>(
        &self,
        factory: F,
        opts: ServerOptions,
    ) -> Result<Server>
    where
        P: Protocol,
        F: Fn() -> P + 'static,
    {
        self.check_open()?;
        let tls = server_tls(&opts)?;
        let mut opts = opts;
        let socks = if !opts.socks.is_empty() {
            if !opts.hosts.is_empty() {
                return Err(Error::InvalidArgument(
                    "hosts and socks cannot both be given".into(),
                ));
            }
            std::mem::take(&mut opts.socks)
        } else {
            let mut addrs: Vec<SocketAddr> = Vec::new();
            if opts.hosts.is_empty() {
                addrs.push(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    opts.port,
                ));
                addrs.push(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    opts.port,
                ));
            } else {
                for h in &opts.hosts {
                    for a in self.getaddrinfo_impl(h, opts.port).await? {
                        if !addrs.contains(&a) {
                            addrs.push(a);
                        }
                    }
                }
            }
            let mut socks = Vec::new();
            let mut port = opts.port;
            for mut a in addrs {
                // Port 0 on several addresses: use the first one's port for
                // the rest, so the server has one port.
                if opts.port == 0 && port != 0 {
                    a.set_port(port);
                }
                match bind_listener(a, &opts) {
                    Ok(s) => {
                        if port == 0 {
                            port = s.local_addr()?.as_socket().map_or(0, |x| x.port());
                        }
                        socks.push(s);
                    }
                    // No IPv6 here: serve IPv4 only, as asyncio does.
                    Err(Error::Io(e))
                        if a.is_ipv6()
                            && opts.hosts.is_empty()
                            && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
                    Err(e) => return Err(e),
                }
            }
            socks
        };
        let server = Server::new(self, socks, factory, opts.keep_alive, true, None, tls)?;
        if opts.start_serving {
            server.start_serving_now();
        }
        Ok(server)
    }

    /// [`AbstractEventLoop::create_unix_server`].
    pub(crate) async fn create_unix_server_impl<P, F>(
        &self,
        factory: F,
        path: impl AsRef<Path>,
    ) -> Result<Server>
    where
        P: Protocol,
        F: Fn() -> P + 'static,
    {
        self.create_unix_server_with_impl(factory, path, ServerOptions::default())
            .await
    }

    /// [`AbstractEventLoop::create_unix_server_with`].
    pub(crate) async fn create_unix_server_with_impl<P, F>(
        &self,
        factory: F,
        path: impl AsRef<Path>,
        opts: ServerOptions,
    ) -> Result<Server>
    where
        P: Protocol,
        F: Fn() -> P + 'static,
    {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        self.check_open()?;
        if !opts.hosts.is_empty() || !opts.socks.is_empty() || opts.port != 0 || opts.reuse_port {
            return Err(Error::InvalidArgument(
                "hosts, socks, port and reuse_port do not apply to a Unix server".into(),
            ));
        }
        let tls = server_tls(&opts)?;
        let path = path.as_ref().to_path_buf();
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            if m.file_type().is_socket() {
                std::fs::remove_file(&path)?;
            } else {
                return Err(Error::from(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                )));
            }
        }
        let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        s.bind(&SockAddr::unix(&path)?)?;
        s.listen(opts.backlog)?;
        let ino = std::fs::metadata(&path)?.ino();
        let server = Server::new(self, vec![s], factory, false, false, Some((path, ino)), tls)?;
        if opts.start_serving {
            server.start_serving_now();
        }
        Ok(server)
    }
}

impl Server {
    fn new<P, F>(
        lp: &EventLoop,
        sockets: Vec<Socket>,
        factory: F,
        keep_alive: bool,
        tcp: bool,
        unix_path: Option<(PathBuf, u64)>,
        tls: Option<(std::sync::Arc<rustls::ServerConfig>, StartTlsOptions)>,
    ) -> Result<Server>
    where
        P: Protocol,
        F: Fn() -> P + 'static,
    {
        let addrs = sockets
            .iter()
            .map(|s| s.local_addr())
            .collect::<Result<Vec<_>>>()?;
        Ok(Server(Rc::new(Inner {
            lp: lp.clone(),
            sockets: RefCell::new(sockets),
            addrs,
            factory: Rc::new(move || Box::new(factory()) as Box<dyn Protocol>),
            keep_alive,
            tcp,
            serving: Cell::new(false),
            closed: Cell::new(false),
            acceptors: RefCell::new(Vec::new()),
            clients: RefCell::new(Vec::new()),
            waiters: RefCell::new(Vec::new()),
            serve_forever: Cell::new(false),
            detached: Cell::new(false),
            unix_path,
            tls,
        })))
    }

    fn start_serving_now(&self) {
        let inner = &self.0;
        if inner.serving.get() || inner.closed.get() {
            return;
        }
        inner.serving.set(true);
        let socks = inner.sockets.borrow();
        for s in socks.iter() {
            let acceptor = Acceptor::new(&inner.lp, s);
            let me = Rc::downgrade(inner);
            let t = inner
                .lp
                .spawn_internal(accept_loop(me, acceptor, inner.lp.clone()));
            inner.acceptors.borrow_mut().push(t.as_ref());
        }
    }

    /// Starts accepting (if not yet). Equivalent to `Server.start_serving`;
    /// idempotent.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the server is closed.
    pub async fn start_serving(&self) -> Result<()> {
        if self.0.closed.get() {
            return Err(Error::closed("server is closed"));
        }
        self.start_serving_now();
        Ok(())
    }

    /// True while accepting. Equivalent to `Server.is_serving`.
    pub fn is_serving(&self) -> bool {
        self.0.serving.get()
    }

    /// The addresses listened on. Equivalent to `Server.sockets` (addresses
    /// instead of socket objects).
    pub fn sockets(&self) -> Vec<SockAddr> {
        if self.0.closed.get() {
            Vec::new()
        } else {
            self.0.addrs.clone()
        }
    }

    /// The loop the server runs on. Equivalent to `Server.get_loop`.
    pub fn get_loop(&self) -> EventLoop {
        self.0.lp.clone()
    }

    /// Connections currently open.
    pub fn active_connections(&self) -> usize {
        self.0.clients.borrow().len()
    }

    /// Stops listening; open connections stay open.
    /// Equivalent to `Server.close`. Idempotent. Dropping the last handle
    /// does the same (see *Scope* above).
    pub fn close(&self) {
        self.0.close();
    }

    /// Hands the server to its loop, so that it keeps serving when every
    /// handle is dropped (see *Scope* above): until it is closed (through
    /// a handle kept elsewhere) or the loop closes. Idempotent.
    ///
    /// asyncio has no such call: there a server without references keeps
    /// listening anyway.
    pub fn detach(&self) {
        // (On a closed loop there is nothing to serve with, and a task
        // there would never run to let the handle go.)
        if self.0.closed.get() || self.0.lp.check_open().is_err() || self.0.detached.replace(true) {
            return;
        }
        // A loop-internal task (not in `all_tasks`, not cancelled by a
        // runner's clean-up) that holds a handle until the server closes;
        // destroyed with the loop, it drops the handle then.
        let me = self.clone();
        self.0.lp.spawn_internal(async move {
            std::future::poll_fn(|cx| {
                if me.0.closed.get() {
                    Poll::Ready(())
                } else {
                    me.0.waiters.borrow_mut().push(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
        });
    }

    /// Closes every open connection (after their buffered data is sent).
    /// Equivalent to `Server.close_clients`.
    pub fn close_clients(&self) {
        let clients: Vec<Transport> = self.0.clients.borrow().clone();
        for c in clients {
            c.close();
        }
    }

    /// Aborts every open connection. Equivalent to `Server.abort_clients`.
    pub fn abort_clients(&self) {
        let clients: Vec<Transport> = self.0.clients.borrow().clone();
        for c in clients {
            c.abort();
        }
    }

    /// Waits until the server is closed and every connection is gone.
    /// Equivalent to `Server.wait_closed`.
    pub async fn wait_closed(&self) {
        std::future::poll_fn(|cx| {
            if self.0.closed.get() && self.0.clients.borrow().is_empty() {
                Poll::Ready(())
            } else {
                self.0.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Accepts until the server is closed; dropping this future (cancelling
    /// its task) closes the server. Equivalent to `Server.serve_forever`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] if another `serve_forever` is running;
    /// [`Error::Closed`] if the server is closed.
    pub async fn serve_forever(&self) -> Result<()> {
        if self.0.serve_forever.replace(true) {
            return Err(Error::state("serve_forever is already running"));
        }
        struct Guard(Server);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.0.serve_forever.set(false);
                self.0.close();
            }
        }
        let guard = Guard(self.clone());
        if self.0.closed.get() {
            return Err(Error::closed("server is closed"));
        }
        self.start_serving_now();
        std::future::poll_fn(|cx| {
            if self.0.closed.get() {
                Poll::Ready(())
            } else {
                self.0.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        drop(guard);
        Ok(())
    }
}

async fn accept_loop(server: std::rc::Weak<Inner>, mut acceptor: Acceptor, lp: EventLoop) {
    loop {
        let r = acceptor.accept().await;
        let Some(inner) = server.upgrade() else {
            return;
        };
        if inner.closed.get() {
            return;
        }
        match r {
            Ok(sock) => {
                if inner.tcp {
                    let _ = sock.with(|s| s.set_tcp_nodelay(true));
                }
                if inner.keep_alive {
                    let _ = sock.with(|s| s.set_keepalive(true));
                }
                let proto = (inner.factory)();
                let t = match &inner.tls {
                    None => Transport::start(&lp, sock, proto),
                    Some((cfg, o)) => match tls::accept(&lp, sock, proto, cfg.clone(), o) {
                        Ok(t) => t,
                        Err(e) => {
                            log::debug!("TLS session for an accepted connection failed: {e}");
                            continue;
                        }
                    },
                };
                inner.clients.borrow_mut().push(t.clone());
                let weak = Rc::downgrade(&inner);
                // (By identity: a handle here would keep the transport alive.)
                let id = t.id();
                t.on_lost(move || {
                    if let Some(inner) = weak.upgrade() {
                        inner.clients.borrow_mut().retain(|c| c.id() != id);
                        inner.wake_waiters();
                    }
                });
            }
            Err(e) => {
                let code = match &e {
                    Error::Io(io) => io.raw_os_error(),
                    _ => None,
                };
                match code {
                    Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS)
                    | Some(libc::ENOMEM) => {
                        // Out of descriptors or memory: say so, pause
                        // accepting for a while, keep serving the rest.
                        lp.call_exception_handler_impl(ExceptionContext {
                            message: "socket.accept() out of system resource".into(),
                            exception: Some(e),
                            socket: Some(format!(
                                "{:?}",
                                inner.addrs.first().and_then(|a| a.as_socket())
                            )),
                            ..Default::default()
                        });
                        drop(inner);
                        if crate::sleep(ACCEPT_RETRY_DELAY).await.is_err() {
                            return;
                        }
                    }
                    // The peer gave up before we accepted: nothing to do.
                    Some(libc::ECONNABORTED) | Some(libc::EPROTO) | Some(libc::EPERM) => {}
                    _ => {
                        lp.call_exception_handler_impl(ExceptionContext {
                            message: "Error on accepting a connection".into(),
                            exception: Some(e),
                            ..Default::default()
                        });
                        drop(inner);
                        if crate::sleep(Duration::from_millis(100)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<Server sockets={:?} serving={} clients={}>",
            self.0
                .addrs
                .iter()
                .map(|a| a.as_socket())
                .collect::<Vec<_>>(),
            self.0.serving.get(),
            self.0.clients.borrow().len()
        )
    }
}
