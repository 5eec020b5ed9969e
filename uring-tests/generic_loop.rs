//! The loop's whole interface through `AbstractEventLoop`: echo servers and
//! clients (TCP through protocols and through `sock_*`, Unix, UDP), pipes,
//! fd watchers and executors written once, generic over
//! `L: AbstractEventLoop` and using nothing but the trait's methods, then
//! run on both backends.

mod common;

use std::future::Future;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use ringloop::prelude::*;
use ringloop::{
    BaseProtocol, ConnectOptions, DatagramOptions, DatagramProtocol, DatagramTransport, Protocol,
    Server, ThreadPool, Transport,
};

const LIMIT: Duration = Duration::from_secs(20);

/// Runs `scenario(lp)` to completion on `lp`, with a watchdog that stops
/// the loop (and so fails the test) instead of letting it hang.
fn run_generic<L, S, Fut>(lp: &L, scenario: S) -> Fut::Output
where
    L: AbstractEventLoop + 'static,
    S: FnOnce(L) -> Fut,
    Fut: Future + 'static,
    Fut::Output: 'static,
{
    let l2 = lp.clone();
    let watchdog = lp.call_later(LIMIT, move || l2.stop()).unwrap();
    let out = lp
        .run_until_complete(scenario(lp.clone()))
        .unwrap_or_else(|e| panic!("scenario failed or timed out after {LIMIT:?}: {e}"));
    watchdog.cancel();
    out
}

/// Writes back whatever it receives; closes once the peer has (the
/// default `eof_received`).
#[derive(Default)]
struct Echo(Option<Transport>);

impl BaseProtocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
}

impl Protocol for Echo {
    fn data_received(&mut self, data: &[u8]) {
        let t = self.0.as_ref().expect("connection_made came first");
        t.write(data.to_vec()).expect("echo write");
    }
}

/// Keeps what it receives, and resolves `done` with all of it when the
/// connection ends (or with the error that ended it).
struct Collect {
    got: Vec<u8>,
    done: LoopFuture<Vec<u8>>,
}

impl Collect {
    /// A factory of one `Collect` resolving `done`.
    fn factory(done: &LoopFuture<Vec<u8>>) -> impl FnOnce() -> Collect + use<> {
        let done = done.clone();
        move || Collect {
            got: Vec::new(),
            done,
        }
    }
}

impl BaseProtocol for Collect {
    fn connection_lost(&mut self, exc: Option<Error>) {
        let _ = match exc {
            None => self.done.set_result(std::mem::take(&mut self.got)),
            Some(e) => self.done.set_error(e),
        };
    }
}

impl Protocol for Collect {
    fn data_received(&mut self, data: &[u8]) {
        self.got.extend_from_slice(data);
    }
}

/// The bytes a test sends: made on the default executor, to use
/// `run_in_executor` on the way.
async fn payload<L: AbstractEventLoop>(lp: &L, len: usize) -> Result<Vec<u8>> {
    lp.run_in_executor(move || (0..len).map(|i| (i % 251) as u8).collect())
        .await
}

/// A TCP echo server on 127.0.0.1 (a free port) and its address.
async fn echo_server<L: AbstractEventLoop>(lp: &L) -> Result<(Server, SocketAddr)> {
    let server = lp.create_server(Echo::default, "127.0.0.1", 0).await?;
    let addr = server.sockets()[0].as_socket().expect("an inet listener");
    Ok((server, addr))
}

/// Sends `data` over `t`, half-closes, and waits for everything the peer
/// sends back before it closes.
async fn round_trip(t: Transport, done: LoopFuture<Vec<u8>>, data: Vec<u8>) -> Result<Vec<u8>> {
    t.write(data)?;
    t.write_eof()?;
    done.await
}

/// Connects to `localhost:port` (resolved with `getaddrinfo`, IPv4 only as
/// the server listens there), sends `data` and returns the echo.
async fn echo_client<L: AbstractEventLoop>(lp: &L, port: u16, data: Vec<u8>) -> Result<Vec<u8>> {
    let mut addrs = lp.getaddrinfo("localhost", port).await?;
    addrs.retain(SocketAddr::is_ipv4);
    let done = lp.create_future();
    let opts = ConnectOptions {
        addrs,
        ..Default::default()
    };
    let t = lp
        .create_connection_with(Collect::factory(&done), opts)
        .await?;
    round_trip(t, done, data).await
}

/// As [`echo_client`], by address and through the plain `create_connection`.
async fn echo_client_plain<L: AbstractEventLoop>(
    lp: &L,
    addr: SocketAddr,
    data: Vec<u8>,
) -> Result<Vec<u8>> {
    let done = lp.create_future();
    let host = addr.ip().to_string();
    let t = lp
        .create_connection(Collect::factory(&done), &host, addr.port())
        .await?;
    round_trip(t, done, data).await
}

async fn tcp_echo<L: AbstractEventLoop + 'static>(lp: L) -> Result<()> {
    let (server, addr) = echo_server(&lp).await?;
    // Large enough that the echo crosses several receives and sends.
    let data = payload(&lp, 256 * 1024).await?;
    assert_eq!(echo_client(&lp, addr.port(), data.clone()).await?, data);
    assert_eq!(
        echo_client_plain(&lp, addr, b"plain".to_vec()).await?,
        b"plain"
    );
    let (host, service) = lp
        .getnameinfo(addr, libc::NI_NUMERICHOST | libc::NI_NUMERICSERV)
        .await?;
    assert_eq!(
        (host, service),
        ("127.0.0.1".to_owned(), addr.port().to_string())
    );
    server.close();
    server.wait_closed().await;
    Ok(())
}

/// Echoes one connection with `sock_recv_into` / `sock_sendall` until EOF.
async fn sock_echo_conn<L: AbstractEventLoop>(lp: &L, conn: &Socket) -> Result<()> {
    loop {
        let (n, buf) = lp.sock_recv_into(conn, Vec::with_capacity(4096)).await;
        if n? == 0 {
            break;
        }
        lp.sock_sendall(conn, buf).await?;
    }
    conn.shutdown(Shutdown::Write)
}

/// Accepts two connections on `listener`: echoes the first itself with
/// `sock_*`, hands the second to an [`Echo`] protocol with
/// `connect_accepted_socket`.
async fn sock_echo_server<L: AbstractEventLoop>(lp: &L, listener: Socket) -> Result<Transport> {
    let (conn, peer) = lp.sock_accept(&listener).await?;
    assert!(peer.as_socket().is_some_and(|p| p.ip().is_loopback()));
    sock_echo_conn(lp, &conn).await?;
    let (conn, _) = lp.sock_accept(&listener).await?;
    lp.connect_accepted_socket(Echo::default, conn)
}

/// A client on `sock_*` alone: connect, send all, half-close, read to EOF.
async fn sock_echo_client<L: AbstractEventLoop>(
    lp: &L,
    addr: SocketAddr,
    data: Vec<u8>,
) -> Result<Vec<u8>> {
    let sock = Socket::tcp_for(&addr)?;
    lp.sock_connect(&sock, &addr.into()).await?;
    lp.sock_sendall(&sock, data).await?;
    sock.shutdown(Shutdown::Write)?;
    let mut got = Vec::new();
    loop {
        let chunk = lp.sock_recv(&sock, 4096).await?;
        if chunk.is_empty() {
            return Ok(got);
        }
        got.extend_from_slice(&chunk);
    }
}

async fn sock_echo<L: AbstractEventLoop + 'static>(lp: L) -> Result<()> {
    let listener = Socket::tcp_listener(&"127.0.0.1:0".parse().unwrap(), 16)?;
    let addr = listener
        .local_addr()?
        .as_socket()
        .expect("an inet listener");
    let l2 = lp.clone();
    let server = lp.create_task(async move { sock_echo_server(&l2, listener).await });
    // Small enough to sit in the socket buffers: the client sends it all
    // before it reads.
    let data = payload(&lp, 16 * 1024).await?;
    assert_eq!(sock_echo_client(&lp, addr, data.clone()).await?, data);
    assert_eq!(echo_client_plain(&lp, addr, data.clone()).await?, data);
    let accepted = server.await??;
    assert!(
        accepted.is_closing(),
        "the echo closed after the client's EOF"
    );
    Ok(())
}

async fn unix_echo<L: AbstractEventLoop + 'static>(lp: L, path: std::path::PathBuf) -> Result<()> {
    let server = lp.create_unix_server(Echo::default, &path).await?;
    let done = lp.create_future();
    let t = lp
        .create_unix_connection(Collect::factory(&done), &path)
        .await?;
    let data = payload(&lp, 64 * 1024).await?;
    assert_eq!(round_trip(t, done, data.clone()).await?, data);
    server.close();
    server.wait_closed().await;
    assert!(!path.exists(), "the server removed its socket file");
    Ok(())
}

/// Sends every datagram back where it came from.
#[derive(Default)]
struct UdpEcho(Option<DatagramTransport>);

impl DatagramProtocol for UdpEcho {
    fn connection_made(&mut self, t: DatagramTransport) {
        self.0 = Some(t);
    }
    fn datagram_received(&mut self, data: &[u8], addr: SockAddr) {
        let t = self.0.as_ref().expect("connection_made came first");
        t.sendto(data.to_vec(), Some(&addr)).expect("echo sendto");
    }
}

/// Resolves `done` once `want` datagrams arrived.
struct UdpCollect {
    got: Vec<Vec<u8>>,
    want: usize,
    done: LoopFuture<Vec<Vec<u8>>>,
}

impl DatagramProtocol for UdpCollect {
    fn datagram_received(&mut self, data: &[u8], _: SockAddr) {
        self.got.push(data.to_vec());
        if self.got.len() == self.want {
            let _ = self.done.set_result(std::mem::take(&mut self.got));
        }
    }
    fn error_received(&mut self, exc: Error) {
        let _ = self.done.set_error(exc);
    }
}

async fn udp_echo<L: AbstractEventLoop + 'static>(lp: L) -> Result<()> {
    let server = lp
        .create_datagram_endpoint(
            UdpEcho::default,
            DatagramOptions {
                local_addr: Some("127.0.0.1:0".parse().unwrap()),
                ..Default::default()
            },
        )
        .await?;
    let saddr = server
        .sockname()
        .and_then(|a| a.as_socket())
        .expect("bound");
    let msgs: [&[u8]; 4] = [b"one", b"two two", b"", b"three three three"];
    let done = lp.create_future();
    let d2 = done.clone();
    let client = lp
        .create_datagram_endpoint(
            move || UdpCollect {
                got: Vec::new(),
                want: msgs.len(),
                done: d2,
            },
            DatagramOptions {
                remote_addr: Some(saddr),
                ..Default::default()
            },
        )
        .await?;
    for m in msgs {
        client.sendto(m.to_vec(), None)?;
    }
    // Loopback keeps every datagram, and in order; the boundaries survive.
    assert_eq!(done.await?, msgs.map(<[u8]>::to_vec));
    client.close();
    server.close();
    Ok(())
}

async fn pipes_and_watchers<L: AbstractEventLoop + 'static>(lp: L) -> Result<()> {
    let (r, w) = ringloop::pipe()?;
    // add_writer: an empty pipe is writable at once.
    let writable = lp.create_future::<()>();
    let w2 = writable.clone();
    lp.add_writer(w.as_raw_fd(), move || {
        let _ = w2.set_result(());
    })?;
    writable.await?;
    assert!(lp.remove_writer(w.as_raw_fd()));
    assert!(!lp.remove_writer(w.as_raw_fd()), "already removed");
    // add_reader fires once there is something to read.
    let readable = lp.create_future::<()>();
    let r2 = readable.clone();
    lp.add_reader(r.as_raw_fd(), move || {
        let _ = r2.set_result(());
    })?;
    lp.pipe_write_all(&w, b"ping".to_vec()).await?;
    readable.await?;
    assert!(lp.remove_reader(r.as_raw_fd()));
    let (n, buf) = lp.pipe_read_into(&r, Vec::with_capacity(16)).await;
    assert_eq!(&buf[..n?], b"ping");
    drop(w);
    let (n, _) = lp.pipe_read_into(&r, Vec::with_capacity(16)).await;
    assert_eq!(n?, 0, "EOF once the write end is closed");
    Ok(())
}

async fn executors<L: AbstractEventLoop + 'static>(lp: L) -> Result<()> {
    let pool = ThreadPool::new(2)?;
    let on_pool = lp
        .run_in_executor_on(&pool, || std::thread::current().name().map(str::to_owned))
        .await?;
    assert!(
        on_pool.is_some_and(|n| n.starts_with("ringloop-executor")),
        "a pool thread ran it"
    );
    lp.set_default_executor(pool);
    assert_eq!(lp.run_in_executor(|| 6 * 7).await?, 42);
    lp.shutdown_default_executor(Some(LIMIT)).await?;
    let after = lp.run_in_executor(|| ()).await;
    assert!(matches!(after, Err(Error::InvalidState(_))), "{after:?}");
    Ok(())
}

both_backends! {
    fn tcp_echo_through_protocols(lp) {
        run_generic(lp, tcp_echo).unwrap();
    }
}

both_backends! {
    fn tcp_echo_through_sock_methods_and_an_accepted_socket(lp) {
        run_generic(lp, sock_echo).unwrap();
    }
}

both_backends! {
    fn unix_echo_server_and_client(lp) {
        let path = std::env::temp_dir().join(format!(
            "ringloop-generic-{}-{}.sock",
            std::process::id(),
            lp.backend()
        ));
        run_generic(lp, |lp| unix_echo(lp, path)).unwrap();
    }
}

both_backends! {
    fn udp_echo_keeps_datagram_boundaries(lp) {
        run_generic(lp, udp_echo).unwrap();
    }
}

both_backends! {
    fn pipes_and_fd_watchers(lp) {
        run_generic(lp, pipes_and_watchers).unwrap();
    }
}

both_backends! {
    fn executors_default_and_explicit(lp) {
        run_generic(lp, executors).unwrap();
    }
}
