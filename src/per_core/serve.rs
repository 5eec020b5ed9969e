//! Serving one port from every loop of a per-core run: the sockets are
//! bound up front (`SO_REUSEPORT`, one per loop and address, the first
//! bind's port shared), then each loop adopts its own and serves it until
//! the run stops.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use super::{PerCoreContext, PerCoreOptions, Reason, plan, run_planned};
use crate::error::{Error, Result};
use crate::events::{AbstractEventLoop, get_running_loop};
use crate::protocols::Protocol;
use crate::server::ServerOptions;
use crate::sock::Socket;
use crate::streams::{DEFAULT_LIMIT, StreamReader, StreamWriter, start_server_with};
#[cfg(doc)]
use crate::{PerCoreStop, run_per_core};

/// The listening sockets of every loop: for each address, one socket per
/// loop, all bound with `SO_REUSEPORT` to the same port (with port 0, the
/// port the first bind got).
fn bind_all(
    host: &str,
    port: u16,
    loops: usize,
    backlog: i32,
) -> Result<(Vec<Vec<socket2::Socket>>, Vec<SocketAddr>)> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    if host.is_empty() {
        addrs.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
        addrs.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
    } else {
        for a in (host, port).to_socket_addrs()? {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
    }
    let mut socks: Vec<Vec<socket2::Socket>> = (0..loops).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    let mut port = port;
    for mut a in addrs {
        if port != 0 {
            a.set_port(port);
        }
        let mut group = Vec::with_capacity(loops);
        for _ in 0..loops {
            match listener(a, backlog) {
                Ok(s) => {
                    if a.port() == 0 {
                        let got = s.local_addr()?.as_socket().map_or(0, |x| x.port());
                        a.set_port(got);
                        port = got;
                    }
                    group.push(s);
                }
                // No IPv6 here: serve IPv4 only, as create_server does.
                Err(e)
                    if a.is_ipv6()
                        && host.is_empty()
                        && e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
                {
                    break;
                }
                Err(e) => {
                    return Err(Error::from(std::io::Error::new(
                        e.kind(),
                        format!("cannot listen on {a}: {e}"),
                    )));
                }
            }
        }
        if group.len() == loops {
            for (i, s) in group.into_iter().enumerate() {
                socks[i].push(s);
            }
            bound.push(a);
        }
    }
    Ok((socks, bound))
}

fn listener(a: SocketAddr, backlog: i32) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Type};
    let s = socket2::Socket::new(
        Domain::for_address(a),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if a.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&a.into())?;
    s.listen(backlog)?;
    Ok(s)
}

/// What `serve` needs per loop to make its server: the options with its
/// sockets, and a counter of the connections it accepted.
fn serve_with<M, Fut>(opts: PerCoreOptions, host: &str, port: u16, serve: M) -> Result<Vec<u64>>
where
    M: Fn(ServerOptions, Rc<Cell<u64>>) -> Fut + Send + Sync,
    Fut: Future<Output = Result<crate::server::Server>> + 'static,
{
    let plan = plan(&opts)?;
    let (socks, addrs) = bind_all(host, port, plan.cpus.len(), opts.backlog)?;
    if addrs.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{host:?} resolves to no address to listen on"
        )));
    }
    let socks: Vec<Mutex<Vec<socket2::Socket>>> = socks.into_iter().map(Mutex::new).collect();
    let grace = opts.shutdown_grace;
    let make_main = |ctx: PerCoreContext| {
        let mine: Vec<socket2::Socket> =
            std::mem::take(&mut *socks[ctx.index()].lock().unwrap_or_else(|p| p.into_inner()));
        let accepted = Rc::new(Cell::new(0u64));
        let addrs = addrs.clone();
        // Asked for before the main task first runs: from then on a stop
        // resolves it (a graceful shutdown) instead of cancelling the task.
        let stopped = ctx.stopped();
        let server = mine
            .into_iter()
            .map(|s| Socket::from_owned(s.into()))
            .collect::<Result<Vec<_>>>()
            .map(|socks| {
                serve(
                    ServerOptions {
                        socks,
                        ..Default::default()
                    },
                    accepted.clone(),
                )
            });
        async move {
            let stopped = stopped?;
            let server = server?.await?;
            ctx.stop_handle().serving(&addrs);
            let _ = stopped.await;
            // Graceful: stop accepting, close every client once its data
            // is sent, abort those still open after the grace time.
            server.close();
            server.close_clients();
            if crate::wait_for(server.wait_closed(), grace).await.is_err() {
                server.abort_clients();
                server.wait_closed().await;
            }
            Ok(accepted.get())
        }
    };
    let (results, reason) = run_planned(plan, &make_main)?;
    match reason {
        // Ctrl-C stops a server cleanly, as a stop does.
        Some(Reason::Failed(Error::Interrupted)) | Some(Reason::Stop) | None => {
            results.into_iter().collect()
        }
        Some(Reason::Failed(e)) => Err(e),
    }
}

/// Serves `host:port` from every loop of a per-core run: each loop has its
/// own listening socket on the same address, with `SO_REUSEPORT`, so the
/// kernel spreads the connections over the loops (by a hash of each
/// connection's addresses and ports). Returns the connections each loop
/// accepted, in index order, once the run is stopped (a
/// [`PerCoreStop::stop`], or Ctrl-C, which is not an error here) and every
/// loop shut down gracefully: stopped
/// accepting, closed its clients after their buffered data, aborting those
/// still open after [`PerCoreOptions::shutdown_grace`].
///
/// The sockets are bound before any loop starts (a bind error is the
/// error of this call): with port 0 the first bind picks the port and every
/// other socket binds the same one. `host` as in
/// [`AbstractEventLoop::create_server`] (empty: every interface, IPv4 and
/// IPv6). [`PerCoreStop::wait_serving`] tells another thread when every
/// loop listens, and where.
///
/// `factory` makes each connection's protocol on the loop that accepted
/// it (the protocol may be `!Send`; the factory is shared by the loops).
///
/// # Errors
///
/// As [`run_per_core`]; [`Error::Io`] if a socket cannot be bound.
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
/// use ringloop::{BaseProtocol, PerCoreOptions, PerCoreStop, Protocol, Transport};
///
/// struct Echo(Option<Transport>);
/// impl BaseProtocol for Echo {
///     fn connection_made(&mut self, t: Transport) { self.0 = Some(t); }
/// }
/// impl Protocol for Echo {
///     fn data_received(&mut self, d: &[u8]) {
///         if let Some(t) = &self.0 { let _ = t.write(d.to_vec()); }
///     }
/// }
///
/// let stop = PerCoreStop::new();
/// let s2 = stop.clone();
/// let client = std::thread::spawn(move || {
///     let addrs = s2.wait_serving(std::time::Duration::from_secs(10)).unwrap();
///     let mut c = std::net::TcpStream::connect(addrs[0]).unwrap();
///     c.write_all(b"hi").unwrap();
///     let mut got = [0; 2];
///     c.read_exact(&mut got).unwrap();
///     s2.stop();
///     got
/// });
/// let opts = PerCoreOptions { threads: 2, stop: Some(stop), ..Default::default() };
/// let accepted = ringloop::serve_per_core(opts, || Echo(None), "127.0.0.1", 0)?;
/// assert_eq!(&client.join().unwrap(), b"hi");
/// assert_eq!(accepted.iter().sum::<u64>(), 1);
/// # Ok::<(), ringloop::Error>(())
/// ```
pub fn serve_per_core<P, F>(
    opts: PerCoreOptions,
    factory: F,
    host: &str,
    port: u16,
) -> Result<Vec<u64>>
where
    P: Protocol,
    F: Fn() -> P + Send + Sync + 'static,
{
    let factory = Arc::new(factory);
    serve_with(opts, host, port, move |sopts, accepted| {
        let f = factory.clone();
        async move {
            let lp = get_running_loop()?;
            lp.create_server_with(
                move || {
                    accepted.set(accepted.get() + 1);
                    f()
                },
                sopts,
            )
            .await
        }
    })
}

/// [`serve_per_core`] on the streams API: each connection runs
/// `cb(reader, writer)` as a task on the loop that accepted it, as with
/// [`start_server`](crate::start_server) (buffer limit
/// [`DEFAULT_LIMIT`]).
///
/// # Errors
///
/// As [`serve_per_core`].
///
/// # Examples
///
/// ```
/// use ringloop::{PerCoreOptions, PerCoreStop};
/// let stop = PerCoreStop::new();
/// stop.stop(); // stopped before it starts: every loop shuts down at once
/// let opts = PerCoreOptions { threads: 2, stop: Some(stop), ..Default::default() };
/// let accepted = ringloop::serve_per_core_streams(
///     opts,
///     |_r, w| async move { w.close() },
///     "127.0.0.1",
///     0,
/// )?;
/// assert_eq!(accepted, [0, 0]);
/// # Ok::<(), ringloop::Error>(())
/// ```
pub fn serve_per_core_streams<F, Fut>(
    opts: PerCoreOptions,
    cb: F,
    host: &str,
    port: u16,
) -> Result<Vec<u64>>
where
    F: Fn(StreamReader, StreamWriter) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let cb = Arc::new(cb);
    serve_with(opts, host, port, move |sopts, accepted| {
        let cb = cb.clone();
        async move {
            start_server_with(
                move |r, w| {
                    accepted.set(accepted.get() + 1);
                    cb(r, w)
                },
                DEFAULT_LIMIT,
                sopts,
            )
            .await
        }
    })
}
