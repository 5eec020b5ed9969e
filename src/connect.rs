//! Opening connections: `create_connection` (with RFC 8305 happy
//! eyeballs), `create_unix_connection`, `connect_accepted_socket` and
//! `create_datagram_endpoint`.
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use crate::base_loop::EventLoop;
use crate::error::{Error, Result};
#[cfg(doc)]
use crate::events::AbstractEventLoop;
use crate::protocols::{DatagramProtocol, Protocol};
use crate::sock::{Domain, SockAddr, Socket, Type};
use crate::transports::tls;
use crate::transports::{DatagramTransport, StartTlsOptions, TlsConfig, Transport};

/// Options of [`AbstractEventLoop::create_connection_with`] (and
/// [`open_connection_with`](crate::open_connection_with)).
///
/// Equivalent to `loop.create_connection`'s keyword arguments.
#[derive(Debug, Default)]
pub struct ConnectOptions {
    /// Host name or address to resolve (with `port`); unused with `sock`.
    pub host: Option<String>,
    /// Port to connect to.
    pub port: u16,
    /// An already connected socket to wrap instead of connecting.
    pub sock: Option<Socket>,
    /// Addresses already resolved, tried in this order (instead of
    /// resolving `host`); happy eyeballs applies to them as to resolved ones.
    pub addrs: Vec<SocketAddr>,
    /// Local address to bind before connecting.
    pub local_addr: Option<SocketAddr>,
    /// Happy eyeballs: start the next address this long after the previous
    /// attempt began (RFC 8305 recommends 250 ms). `None`: one at a time.
    pub happy_eyeballs_delay: Option<Duration>,
    /// Interleave address families, `n` of the first family before the
    /// next (asyncio's `interleave`; 1 when `happy_eyeballs_delay` is set).
    pub interleave: Option<usize>,
    /// Report every attempt's error as [`Error::Group`] (asyncio's
    /// `all_errors=True`) instead of one combined error.
    pub all_errors: bool,
    /// Leave Nagle's algorithm on (TCP_NODELAY is set by default, as asyncio).
    pub keep_nagle: bool,
    /// Only addresses of this family (asyncio's `family=AF_INET/AF_INET6`).
    pub family: Option<Domain>,
    /// TLS on the connection (asyncio's `ssl=`): the handshake is done
    /// before the protocol's `connection_made` and before the call returns.
    pub ssl: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The name the server's certificate must match (asyncio's
    /// `server_hostname`): defaults to `host`; required with `sock` or
    /// `addrs`; an empty name checks no name (only a config whose verifier
    /// ignores names accepts the peer then).
    pub server_hostname: Option<String>,
    /// How long the TLS handshake may take (default 60 s).
    pub ssl_handshake_timeout: Option<Duration>,
    /// How long a TLS `close()` waits for the peer's `close_notify`
    /// (default 30 s).
    pub ssl_shutdown_timeout: Option<Duration>,
}

/// Options of [`AbstractEventLoop::create_datagram_endpoint`].
///
/// Equivalent to `loop.create_datagram_endpoint`'s keyword arguments.
#[derive(Debug, Default)]
pub struct DatagramOptions {
    /// Address to bind.
    pub local_addr: Option<SocketAddr>,
    /// Address to connect to (then `sendto` needs no address).
    pub remote_addr: Option<SocketAddr>,
    /// Set `SO_REUSEPORT`.
    pub reuse_port: bool,
    /// Set `SO_BROADCAST`.
    pub allow_broadcast: bool,
    /// An existing datagram socket to use instead.
    pub sock: Option<Socket>,
}

/// Orders addresses as RFC 8305 §4: alternate families, `first_count` of the
/// first family first.
pub(crate) fn interleave(addrs: Vec<SocketAddr>, first_count: usize) -> Vec<SocketAddr> {
    let Some(first) = addrs.first().map(|a| a.is_ipv4()) else {
        return addrs;
    };
    let (mut a, mut b): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|x| x.is_ipv4() == first);
    let mut out = Vec::with_capacity(a.len() + b.len());
    let rest_a = a.split_off(first_count.min(a.len()));
    out.extend(a);
    let mut ia = rest_a.into_iter();
    let mut ib = std::mem::take(&mut b).into_iter();
    loop {
        match (ib.next(), ia.next()) {
            (None, None) => break,
            (x, y) => {
                out.extend(x);
                out.extend(y);
            }
        }
    }
    out
}

/// Sets TCP_NODELAY on a TCP socket (asyncio's `_set_nodelay`); a Unix
/// stream socket is left as it is.
pub(crate) fn set_nodelay_if_tcp(sock: &Socket) {
    let tcp = sock.local_addr().is_ok_and(|a| a.is_ipv4() || a.is_ipv6());
    if tcp {
        let _ = sock.with(|s| s.set_tcp_nodelay(true));
    }
}

type Attempt = Pin<Box<dyn Future<Output = (SocketAddr, Result<Socket>)>>>;

impl EventLoop {
    async fn connect_one(
        &self,
        addr: SocketAddr,
        local: Option<SocketAddr>,
        nodelay: bool,
    ) -> Result<Socket> {
        let sock = Socket::tcp_for(&addr)?;
        if nodelay {
            sock.with(|s| s.set_tcp_nodelay(true))?;
        }
        if let Some(l) = local {
            sock.bind(&l.into())?;
        }
        self.sock_connect_impl(&sock, &addr.into()).await?;
        Ok(sock)
    }

    /// [`AbstractEventLoop::create_connection`].
    pub(crate) async fn create_connection_impl<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        host: &str,
        port: u16,
    ) -> Result<Transport> {
        self.create_connection_with_impl(
            factory,
            ConnectOptions {
                host: Some(host.to_owned()),
                port,
                ..Default::default()
            },
        )
        .await
    }

    /// [`AbstractEventLoop::create_connection_with`].
    pub(crate) async fn create_connection_with_impl<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        opts: ConnectOptions,
    ) -> Result<Transport> {
        self.check_open()?;
        let given = usize::from(opts.sock.is_some())
            + usize::from(opts.host.is_some())
            + usize::from(!opts.addrs.is_empty());
        if given != 1 {
            return Err(Error::InvalidArgument(
                "exactly one of host (with port), addrs or sock must be given".into(),
            ));
        }
        let tls = tls::client_options(
            opts.ssl.as_ref(),
            opts.server_hostname.as_deref(),
            opts.host.as_deref(),
            opts.ssl_handshake_timeout,
            opts.ssl_shutdown_timeout,
        )?;
        let sock = match (opts.sock, &opts.host) {
            (Some(s), _) => {
                // asyncio sets TCP_NODELAY on every TCP connection, also on
                // one made elsewhere.
                if !opts.keep_nagle {
                    set_nodelay_if_tcp(&s);
                }
                s
            }
            (None, host) => {
                let mut addrs = match host {
                    Some(host) => self.getaddrinfo_impl(host, opts.port).await?,
                    None => opts.addrs,
                };
                let host = host.as_deref().unwrap_or("<addrs>");
                if let Some(fam) = opts.family {
                    addrs.retain(|a| Domain::for_address(*a) == fam);
                }
                addrs.dedup();
                if addrs.is_empty() {
                    return Err(Error::from(std::io::Error::other(format!(
                        "getaddrinfo({host}) returned empty list"
                    ))));
                }
                let inter = opts.interleave.or(opts.happy_eyeballs_delay.map(|_| 1));
                if let Some(n) = inter {
                    addrs = interleave(addrs, n.max(1));
                }
                self.connect_staggered(
                    addrs,
                    opts.local_addr,
                    !opts.keep_nagle,
                    opts.happy_eyeballs_delay,
                    opts.all_errors,
                )
                .await?
            }
        };
        self.start_stream(sock, Box::new(factory()), tls).await
    }

    /// A transport on a connected socket, with TLS (client side) if asked.
    async fn start_stream(
        &self,
        sock: Socket,
        protocol: Box<dyn Protocol>,
        tls: Option<(std::sync::Arc<rustls::ClientConfig>, StartTlsOptions)>,
    ) -> Result<Transport> {
        match tls {
            None => self.start_connected(sock, protocol).await,
            Some((cfg, o)) => tls::start_on_socket(self, sock, protocol, cfg.into(), &o).await,
        }
    }

    /// [`AbstractEventLoop::create_unix_connection_with`].
    pub(crate) async fn create_unix_connection_with_impl<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        path: Option<&Path>,
        opts: ConnectOptions,
    ) -> Result<Transport> {
        self.check_open()?;
        if opts.host.is_some() || !opts.addrs.is_empty() || opts.local_addr.is_some() {
            return Err(Error::InvalidArgument(
                "host, addrs and local_addr do not apply to a Unix connection".into(),
            ));
        }
        let tls = tls::client_options(
            opts.ssl.as_ref(),
            opts.server_hostname.as_deref(),
            None,
            opts.ssl_handshake_timeout,
            opts.ssl_shutdown_timeout,
        )?;
        let sock = match (opts.sock, path) {
            (Some(s), None) => s,
            (None, Some(path)) => {
                let addr = SockAddr::unix(path)?;
                let sock = Socket::new(Domain::UNIX, Type::STREAM, None)?;
                self.sock_connect_impl(&sock, &addr).await?;
                sock
            }
            _ => {
                return Err(Error::InvalidArgument(
                    "exactly one of path or sock must be given".into(),
                ));
            }
        };
        self.start_stream(sock, Box::new(factory()), tls).await
    }

    /// [`AbstractEventLoop::connect_accepted_socket_with`].
    pub(crate) async fn connect_accepted_socket_with_impl<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        sock: Socket,
        ssl: TlsConfig,
        opts: StartTlsOptions,
    ) -> Result<Transport> {
        self.check_open()?;
        if sock.peer_addr().is_err() {
            return Err(Error::InvalidArgument(
                "connect_accepted_socket needs a connected stream socket".into(),
            ));
        }
        if matches!(ssl, TlsConfig::Client(_)) && opts.server_hostname.is_none() {
            return Err(Error::InvalidArgument(
                "you must set server_hostname when using ssl without a host".into(),
            ));
        }
        tls::start_on_socket(self, sock, Box::new(factory()), ssl, &opts).await
    }

    /// Starts a transport on a connected socket and returns it once the
    /// protocol's `connection_made` has run (asyncio's create_connection
    /// waits for that before it returns).
    async fn start_connected(&self, sock: Socket, proto: Box<dyn Protocol>) -> Result<Transport> {
        let t = Transport::start(self, sock, proto);
        // connection_made was queued (call_soon) before this task yields;
        // the ready queue is FIFO, so it has run when the task goes on.
        crate::tasks::yield_now().await;
        Ok(t)
    }

    /// Tries `addrs` in order, starting the next one `delay` after the
    /// previous began or as soon as it failed (RFC 8305); the first success
    /// wins and the other attempts are dropped (cancelled).
    async fn connect_staggered(
        &self,
        addrs: Vec<SocketAddr>,
        local: Option<SocketAddr>,
        nodelay: bool,
        delay: Option<Duration>,
        all_errors: bool,
    ) -> Result<Socket> {
        let mut next = 0;
        let mut running: Vec<Attempt> = Vec::new();
        let mut errors: Vec<(SocketAddr, Error)> = Vec::new();
        let mut timer: Option<Pin<Box<dyn Future<Output = Result<()>>>>> = None;
        let start = |i: usize| -> Attempt {
            let lp = self.clone();
            let addr = addrs[i];
            Box::pin(async move { (addr, lp.connect_one(addr, local, nodelay).await) })
        };
        let won = std::future::poll_fn(|cx| {
            loop {
                let mut launch = running.is_empty() && next < addrs.len();
                if let Some(t) = timer.as_mut() {
                    if t.as_mut().poll(cx).is_ready() {
                        timer = None;
                        launch |= next < addrs.len();
                    }
                }
                if launch {
                    running.push(start(next));
                    next += 1;
                    if let Some(d) = delay {
                        timer = Some(Box::pin(crate::sleep(d)));
                    }
                }
                let mut i = 0;
                let mut failed = false;
                while i < running.len() {
                    match running[i].as_mut().poll(cx) {
                        Poll::Ready((_, Ok(sock))) => return Poll::Ready(Some(sock)),
                        Poll::Ready((addr, Err(e))) => {
                            errors.push((addr, e));
                            drop(running.swap_remove(i));
                            failed = true;
                        }
                        Poll::Pending => i += 1,
                    }
                }
                if running.is_empty() && next >= addrs.len() {
                    return Poll::Ready(None);
                }
                // Without a delay, attempts run one at a time; with one, a
                // failure starts the next attempt at once.
                if failed && next < addrs.len() && (delay.is_some() || running.is_empty()) {
                    timer = None;
                    running.push(start(next));
                    next += 1;
                    if let Some(d) = delay {
                        timer = Some(Box::pin(crate::sleep(d)));
                    }
                    continue;
                }
                return Poll::Pending;
            }
        })
        .await;
        // Losing attempts were dropped with `running`: their connects are cancelled.
        drop(running);
        if let Some(sock) = won {
            return Ok(sock);
        }
        if all_errors {
            return Err(Error::Group(errors.into_iter().map(|(_, e)| e).collect()));
        }
        if errors.len() == 1 {
            return Err(errors.pop().expect("one").1);
        }
        let msg = errors
            .iter()
            .map(|(a, e)| format!("[{a}] {e}"))
            .collect::<Vec<_>>()
            .join(", ");
        Err(Error::from(std::io::Error::other(format!(
            "Multiple exceptions: {msg}"
        ))))
    }

    /// [`AbstractEventLoop::create_unix_connection`].
    pub(crate) async fn create_unix_connection_impl<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        path: impl AsRef<Path>,
    ) -> Result<Transport> {
        self.check_open()?;
        let addr = SockAddr::unix(path.as_ref())?;
        let sock = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        self.sock_connect_impl(&sock, &addr).await?;
        self.start_connected(sock, Box::new(factory())).await
    }

    /// [`AbstractEventLoop::connect_accepted_socket`].
    pub(crate) fn connect_accepted_socket_impl<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        sock: Socket,
    ) -> Result<Transport> {
        self.check_open()?;
        if sock.peer_addr().is_err() {
            return Err(Error::InvalidArgument(
                "connect_accepted_socket needs a connected stream socket".into(),
            ));
        }
        set_nodelay_if_tcp(&sock);
        Ok(Transport::start(self, sock, Box::new(factory())))
    }

    /// [`AbstractEventLoop::create_datagram_endpoint`].
    pub(crate) async fn create_datagram_endpoint_impl<P: DatagramProtocol>(
        &self,
        factory: impl FnOnce() -> P,
        opts: DatagramOptions,
    ) -> Result<DatagramTransport> {
        self.check_open()?;
        let (sock, remote) = if let Some(s) = opts.sock {
            if opts.local_addr.is_some() || opts.remote_addr.is_some() {
                return Err(Error::InvalidArgument(
                    "sock cannot be combined with local_addr or remote_addr".into(),
                ));
            }
            let remote = s.peer_addr().ok();
            (s, remote)
        } else {
            let family = opts.local_addr.or(opts.remote_addr).ok_or_else(|| {
                Error::InvalidArgument("local_addr or remote_addr is needed".into())
            })?;
            let s = Socket::udp_for(&family)?;
            if opts.reuse_port {
                s.with(|s| s.set_reuse_port(true))?;
            }
            if opts.allow_broadcast {
                s.with(|s| s.set_broadcast(true))?;
            }
            if let Some(l) = opts.local_addr {
                s.bind(&l.into())?;
            }
            let remote = match opts.remote_addr {
                Some(r) => {
                    let r: SockAddr = r.into();
                    self.sock_connect_impl(&s, &r).await?;
                    Some(r)
                }
                None => None,
            };
            (s, remote)
        };
        Ok(DatagramTransport::start(
            self,
            sock,
            remote,
            Box::new(factory()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::interleave;
    use std::net::SocketAddr;

    #[test]
    fn interleave_alternates_families() {
        let a: Vec<SocketAddr> = ["[::1]:1", "[::2]:1", "1.1.1.1:1", "2.2.2.2:1", "[::3]:1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let got: Vec<String> = interleave(a.clone(), 1)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            got,
            ["[::1]:1", "1.1.1.1:1", "[::2]:1", "2.2.2.2:1", "[::3]:1"]
        );
        let got: Vec<String> = interleave(a, 2).iter().map(|a| a.to_string()).collect();
        assert_eq!(
            got,
            ["[::1]:1", "[::2]:1", "1.1.1.1:1", "[::3]:1", "2.2.2.2:1"]
        );
    }
}
