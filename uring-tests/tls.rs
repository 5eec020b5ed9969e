//! TLS (issue 14): `ssl` on connections and servers, `start_tls`, the
//! timeouts, extra info, flow control through TLS and bad input, on both
//! backends (real peers: tls_peers.rs).

mod common;
#[path = "tls_support.rs"]
mod tls_support;

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::time::Duration;

use common::run_bounded;
use ringloop::prelude::*;
use ringloop::tls::rustls;
use ringloop::{
    BaseProtocol, ConnectOptions, ExtraInfo, Protocol, ServerOptions, StartTlsOptions, TlsConfig,
    Transport,
};
use tls_support::*;

/// TLS reads its socket by readiness (the default; `RINGLOOP_TLS_POOL_IO`
/// turns it off, and `.ci/run` runs this file that way too).
fn readiness_mode() -> bool {
    std::env::var_os("RINGLOOP_TLS_POOL_IO").is_none()
}

/// A client that sends `msg` over TLS and returns what comes back.
async fn echo_once(lp: &EventLoop, port: u16, msg: &[u8]) -> Result<Vec<u8>> {
    let rec = Rc::new(RefCell::new(Rec {
        want: msg.len(),
        got_enough: Some(lp.create_future()),
        ..Default::default()
    }));
    let got = rec.borrow().got_enough.clone().unwrap();
    let t = lp
        .create_connection_with(
            {
                let r = rec.clone();
                move || r
            },
            tls_connect_opts(port),
        )
        .await?;
    t.write(msg.to_vec())?;
    got.await?;
    t.close();
    let data = rec.borrow().data.clone();
    Ok(data)
}

both_backends! {
    fn echo_over_tls_with_create_connection_and_create_server(lp) {
        let l = lp.clone();
        run_bounded(lp, LIMIT, async move {
            let server = l
                .create_server_with(|| Echo(None), tls_server_opts(server_config()))
                .await
                .unwrap();
            let port = port_of(&server);
            for i in 0..3 {
                let msg = format!("hello {i}").into_bytes();
                assert_eq!(echo_once(&l, port, &msg).await.unwrap(), msg);
            }
            // A 1 MiB message in one write comes back whole.
            let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
            assert_eq!(echo_once(&l, port, &big).await.unwrap(), big);
            server.close();
        });
    }
}

both_backends! {
    fn handshake_flights_leave_when_their_handler_returns(lp) {
        // A handshake step costs a few hundred microseconds of crypto: its
        // flight is submitted as soon as the step's handler returns (one
        // extra enter on the proactor; the selector's send is a syscall
        // made then anyway). Plaintext traffic never asks for it.
        let l = lp.clone();
        let (during_handshakes, during_echo) = run_bounded(lp, LIMIT, async move {
            let server = l
                .create_server_with(|| Echo(None), tls_server_opts(server_config()))
                .await
                .unwrap();
            let port = port_of(&server);
            let s0 = l.driver_stats().mid_turn_submits;
            let rec = Rc::new(RefCell::new(Rec {
                want: 1000,
                got_enough: Some(l.create_future()),
                ..Default::default()
            }));
            let got = rec.borrow().got_enough.clone().unwrap();
            let r = rec.clone();
            let t = l
                .create_connection_with(move || r, tls_connect_opts(port))
                .await
                .unwrap();
            // One echo: both ends are past their handshakes after it.
            t.write(vec![1u8; 1000]).unwrap();
            got.await.unwrap();
            let s1 = l.driver_stats().mid_turn_submits;
            // Plaintext traffic on the secured connection: no early flush.
            for _ in 0..20 {
                t.write(vec![1u8; 1000]).unwrap();
                ringloop::sleep(Duration::from_millis(1)).await.unwrap();
            }
            let s2 = l.driver_stats().mid_turn_submits;
            t.close();
            server.close();
            (s1 - s0, s2 - s1)
        });
        match lp.backend() {
            // Server: ServerHello..Finished; client: its Finished (TLS 1.3).
            Backend::Proactor => assert!(during_handshakes >= 2, "{during_handshakes} early submits"),
            Backend::Selector => assert_eq!(during_handshakes, 0),
        }
        assert_eq!(during_echo, 0, "plaintext traffic submitted early");
    }
}

both_backends! {
    fn extra_info_half_close_and_the_close_order(lp) {
        let l = lp.clone();
        run_bounded(lp, LIMIT, async move {
            let server_t: Rc<RefCell<Option<Transport>>> = Rc::default();
            let st = server_t.clone();
            let server = l
                .create_server_with(
                    move || {
                        let st = st.clone();
                        struct Keep(Rc<RefCell<Option<Transport>>>);
                        impl BaseProtocol for Keep {
                            fn connection_made(&mut self, t: Transport) {
                                *self.0.borrow_mut() = Some(t);
                            }
                        }
                        impl Protocol for Keep {}
                        Keep(st)
                    },
                    tls_server_opts(server_config_for(&pki().leaf, &[b"h2", b"rl/1"])),
                )
                .await
                .unwrap();
            let port = port_of(&server);
            let rec = Rc::new(RefCell::new(Rec {
                done: Some(l.create_future()),
                ..Default::default()
            }));
            let done = rec.borrow().done.clone().unwrap();
            let r = rec.clone();
            let t = l
                .create_connection_with(
                    move || r,
                    ConnectOptions {
                        ssl: Some(client_config_trusting(&pki().ca, &[b"rl/1"])),
                        ..tls_connect_opts(port)
                    },
                )
                .await
                .unwrap();
            // connection_made came after the handshake, before the call returned.
            assert_eq!(rec.borrow().events, ["made"]);
            match t.get_extra_info("peercert") {
                Some(ExtraInfo::PeerCertificates(c)) => assert_eq!(c[0], pki().leaf.cert),
                other => panic!("peercert: {other:?}"),
            }
            match t.get_extra_info("cipher") {
                Some(ExtraInfo::Cipher { name, protocol, secret_bits }) => {
                    assert!(name.starts_with("TLS13_"), "{name}");
                    assert_eq!(protocol, "TLSv1.3");
                    assert!(secret_bits >= 128);
                }
                other => panic!("cipher: {other:?}"),
            }
            assert!(matches!(t.get_extra_info("tls_version"), Some(ExtraInfo::Text(v)) if v == "TLSv1.3"));
            assert!(matches!(t.get_extra_info("alpn_protocol"), Some(ExtraInfo::Bytes(p)) if p == b"rl/1"));
            assert!(matches!(t.get_extra_info("sslcontext"), Some(ExtraInfo::TlsConfig(TlsConfig::Client(_)))));
            assert!(matches!(t.get_extra_info("server_hostname"), Some(ExtraInfo::Text(h)) if h == "127.0.0.1"));
            // The socket-level keys of the transport below.
            assert!(matches!(t.get_extra_info("peername"), Some(ExtraInfo::Address(a)) if a.as_socket().unwrap().port() == port));
            assert!(matches!(t.get_extra_info("sockname"), Some(ExtraInfo::Address(_))));
            assert!(matches!(t.get_extra_info("socket"), Some(ExtraInfo::Fd(_))));
            assert_eq!(t.peername().unwrap().as_socket().unwrap().port(), port);
            // No half-close on TLS.
            assert!(!t.can_write_eof());
            assert!(matches!(t.write_eof(), Err(Error::InvalidState(_))));
            // The server side sees the client's SNI, its own config, ALPN.
            until(|| server_t.borrow().is_some()).await;
            let s = server_t.borrow().clone().unwrap();
            assert!(matches!(s.get_extra_info("sslcontext"), Some(ExtraInfo::TlsConfig(TlsConfig::Server(_)))));
            assert!(matches!(s.get_extra_info("alpn_protocol"), Some(ExtraInfo::Bytes(p)) if p == b"rl/1"));
            assert!(s.get_extra_info("peercert").is_none(), "no client certificate");
            // The server closes: close_notify reaches the client as EOF,
            // then the connection is lost without an error.
            s.close();
            assert!(s.is_closing());
            assert!(matches!(s.write(&b"late"[..]), Err(Error::Closed(_))));
            done.await.unwrap();
            assert_eq!(rec.borrow().events, ["made", "eof", "lost:none"]);
            assert!(t.is_closing());
            until(|| server.active_connections() == 0).await;
            server.close();
            server.wait_closed().await;
        });
    }
}

both_backends! {
    fn streams_over_tls_tcp_and_unix(lp) {
        let l = lp.clone();
        run_bounded(lp, LIMIT, async move {
            let cb = |r: ringloop::StreamReader, w: ringloop::StreamWriter| async move {
                while let Ok(line) = r.readline().await {
                    if line.is_empty() {
                        break;
                    }
                    w.write(line).unwrap();
                    w.drain().await.unwrap();
                }
                w.close();
            };
            let server = ringloop::start_server_with(cb, 1 << 16, tls_server_opts(server_config()))
                .await
                .unwrap();
            let port = port_of(&server);
            let (r, w) = ringloop::open_connection_with(1 << 16, tls_connect_opts(port))
                .await
                .unwrap();
            w.write(&b"one\ntwo\n"[..]).unwrap();
            assert_eq!(&r.readline().await.unwrap()[..], b"one\n");
            assert_eq!(&r.readline().await.unwrap()[..], b"two\n");
            w.close();
            w.wait_closed().await.unwrap();
            server.close();

            let path = std::env::temp_dir().join(format!("ringloop-tls-{}-{:?}.sock", std::process::id(), l.backend()));
            let userver = ringloop::start_unix_server_with(cb, &path, 1 << 16, ServerOptions {
                ssl: Some(server_config()),
                ..Default::default()
            })
            .await
            .unwrap();
            // No host on a Unix socket: server_hostname is required.
            let e = ringloop::open_unix_connection_with(Some(&path), 1 << 16, ConnectOptions {
                ssl: Some(client_config()),
                ..Default::default()
            })
            .await
            .unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
            let (r, w) = ringloop::open_unix_connection_with(Some(&path), 1 << 16, ConnectOptions {
                ssl: Some(client_config()),
                server_hostname: Some("localhost".into()),
                ..Default::default()
            })
            .await
            .unwrap();
            w.write(&b"unix\n"[..]).unwrap();
            assert_eq!(&r.readline().await.unwrap()[..], b"unix\n");
            w.close();
            w.wait_closed().await.unwrap();
            userver.close();
        });
    }
}

both_backends! {
    fn server_hostname_rules(lp) {
        let l = lp.clone();
        run_bounded(lp, LIMIT, async move {
            let server = l
                .create_server_with(|| Echo(None), tls_server_opts(server_config()))
                .await
                .unwrap();
            let port = port_of(&server);
            // server_hostname or TLS timeouts without ssl.
            let e = l.create_connection_with(|| Echo(None), ConnectOptions {
                server_hostname: Some("localhost".into()),
                ..tls_connect_opts(port)
            }.without_ssl()).await.unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
            let e = l.create_connection_with(|| Echo(None), ConnectOptions {
                ssl_handshake_timeout: Some(Duration::from_secs(1)),
                ..tls_connect_opts(port)
            }.without_ssl()).await.unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
            // With a connected socket (no host) the name must be given.
            let sock = Socket::tcp_for(&"127.0.0.1:0".parse().unwrap()).unwrap();
            l.sock_connect(&sock, &std::net::SocketAddr::from(([127, 0, 0, 1], port)).into()).await.unwrap();
            let e = l.create_connection_with(|| Echo(None), ConnectOptions {
                sock: Some(sock),
                ssl: Some(client_config()),
                ..Default::default()
            }).await.unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
            // The host is the default name; "localhost" is one of the leaf's names.
            let t = l.create_connection_with(|| Echo(None), ConnectOptions {
                host: Some("localhost".into()),
                family: Some(ringloop::Domain::IPV4),
                ..tls_connect_opts(port)
            }).await.unwrap();
            t.close();
            // A name the certificate is not for.
            let e = l.create_connection_with(|| Echo(None), ConnectOptions {
                server_hostname: Some("example.com".into()),
                ..tls_connect_opts(port)
            }).await.unwrap_err();
            assert!(matches!(tls_err(&e), rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. }
                | rustls::CertificateError::NotValidForName)), "{e:?}");
            // An empty name checks no name: the default verifier rejects then.
            let e = l.create_connection_with(|| Echo(None), ConnectOptions {
                server_hostname: Some(String::new()),
                ..tls_connect_opts(port)
            }).await.unwrap_err();
            assert!(matches!(tls_err(&e), rustls::Error::InvalidCertificate(_)), "{e:?}");
            // The server is still serving.
            assert_eq!(echo_once(&l, port, b"still").await.unwrap(), b"still");
            server.close();
        });
    }
}

/// The rustls error inside an [`Error::Tls`].
fn tls_err(e: &Error) -> &rustls::Error {
    match e {
        Error::Tls(t) => t,
        other => panic!("not a TLS error: {other:?}"),
    }
}

trait WithoutSsl {
    fn without_ssl(self) -> Self;
}

impl WithoutSsl for ConnectOptions {
    fn without_ssl(mut self) -> Self {
        self.ssl = None;
        self
    }
}

/// A blocking rustls client on another thread (a peer ringloop did not
/// drive), connected to 127.0.0.1:`port`.
fn blocking_client(port: u16) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(LIMIT)).unwrap();
    let conn =
        rustls::ClientConnection::new(client_config(), "localhost".try_into().unwrap()).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// Plain protocol that hands its transport out, then forwards received
/// bytes to a shared buffer.
struct Plain(Rc<RefCell<Option<Transport>>>, Rc<RefCell<Vec<u8>>>);

impl BaseProtocol for Plain {
    fn connection_made(&mut self, t: Transport) {
        *self.0.borrow_mut() = Some(t);
    }
}

impl Protocol for Plain {
    fn data_received(&mut self, data: &[u8]) {
        self.1.borrow_mut().extend_from_slice(data);
    }
}

both_backends! {
    fn start_tls_on_the_loop_and_on_a_stream_writer(lp) {
        let l = lp.clone();
        run_bounded(lp, LIMIT, async move {
            // Server: a STARTTLS line in plaintext, then TLS on the same
            // connection, then an echo of one line.
            let server = ringloop::start_server(
                |r: ringloop::StreamReader, w: ringloop::StreamWriter| async move {
                    let line = r.readline().await.unwrap();
                    assert_eq!(&line[..], b"STARTTLS\n");
                    let w = w
                        .start_tls(server_config(), StartTlsOptions::default())
                        .await
                        .unwrap();
                    assert!(!w.can_write_eof());
                    let line = r.readline().await.unwrap();
                    w.write(line).unwrap();
                    w.drain().await.unwrap();
                    w.close();
                },
                "127.0.0.1",
                0,
            )
            .await
            .unwrap();
            let port = port_of(&server);
            // Client 1: the loop's start_tls, right after the STARTTLS line
            // (its ClientHello likely leaves in the same send).
            let slot: Rc<RefCell<Option<Transport>>> = Rc::default();
            let (s2, buf) = (slot.clone(), Rc::new(RefCell::new(Vec::new())));
            let b2 = buf.clone();
            let plain = l
                .create_connection(move || Plain(s2, b2), "127.0.0.1", port)
                .await
                .unwrap();
            plain.write(&b"STARTTLS\n"[..]).unwrap();
            let rec = Rc::new(RefCell::new(Rec {
                want: 6,
                got_enough: Some(l.create_future()),
                ..Default::default()
            }));
            let got = rec.borrow().got_enough.clone().unwrap();
            let e = l
                .start_tls(&plain, rec.clone(), client_config(), StartTlsOptions::default())
                .await
                .unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "a client needs a name: {e}");
            let t = l
                .start_tls(&plain, rec.clone(), client_config(), StartTlsOptions {
                    server_hostname: Some("localhost".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
            // start_tls on a TLS transport is refused.
            let e = l
                .start_tls(&t, Echo(None), client_config(), StartTlsOptions::default())
                .await
                .unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
            // (No connection_made again: the protocol is connected already.)
            t.write(&b"hello\n"[..]).unwrap();
            got.await.unwrap();
            assert_eq!(rec.borrow().data, b"hello\n");
            assert!(rec.borrow().events.is_empty() || rec.borrow().events[0] != "made");
            t.close();

            // Client 2: another thread sends the STARTTLS line and its
            // ClientHello in ONE write, so the server's reader has buffered
            // the start of the TLS stream before start_tls: it must go to
            // the handshake (not be lost, not hang the upgrade).
            let peer = l.create_task(ringloop::to_thread(move || {
                let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
                sock.set_read_timeout(Some(LIMIT)).unwrap();
                let mut conn = rustls::ClientConnection::new(
                    client_config(),
                    "localhost".try_into().unwrap(),
                )
                .unwrap();
                let mut first = b"STARTTLS\n".to_vec();
                conn.write_tls(&mut first).unwrap();
                sock.write_all(&first).unwrap();
                let mut s = rustls::StreamOwned::new(conn, sock);
                s.write_all(b"buffered\n").unwrap();
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                out
            }));
            assert_eq!(peer.await.unwrap().unwrap(), b"buffered\n");
            server.close();
        });
    }
}

both_backends! {
    fn connect_accepted_socket_with_tls(lp) {
        let l = lp.clone();
        run_bounded(lp, LIMIT, async move {
            let listener = Socket::tcp_listener(&"127.0.0.1:0".parse().unwrap(), 10).unwrap();
            let port = listener.local_addr().unwrap().as_socket().unwrap().port();
            let l2 = l.clone();
            let client = l.create_task(async move { echo_once(&l2, port, b"accepted").await });
            let (sock, _) = l.sock_accept(&listener).await.unwrap();
            let t = l
                .connect_accepted_socket_with(|| Echo(None), sock, server_config().into(), StartTlsOptions::default())
                .await
                .unwrap();
            assert_eq!(client.await.unwrap().unwrap(), b"accepted");
            t.close();
        });
    }
}

both_backends! {
    fn close_sends_close_notify_and_abort_does_not(lp) {
        let l = lp.clone();
        run_bounded(lp, LIMIT, async move {
            let slot: Rc<RefCell<Option<Transport>>> = Rc::default();
            let s2 = slot.clone();
            let server = l
                .create_server_with(
                    move || Plain(s2.clone(), Rc::default()),
                    tls_server_opts(server_config()),
                )
                .await
                .unwrap();
            let port = port_of(&server);
            for abort in [false, true] {
                slot.borrow_mut().take();
                let peer = l.create_task(ringloop::to_thread(move || {
                    let mut s = blocking_client(port);
                    s.write_all(b"x").unwrap();
                    s.flush().unwrap();
                    let mut buf = [0u8; 16];
                    // Ok(0): a close_notify came; UnexpectedEof: the
                    // connection ended without one.
                    let r = s.read(&mut buf).map_err(|e| e.kind());
                    if r == Ok(0) {
                        // Answer the close_notify, as a well-behaved peer.
                        s.conn.send_close_notify();
                        let _ = s.flush();
                    }
                    r
                }));
                until(|| slot.borrow().is_some()).await;
                let t = slot.borrow().clone().unwrap();
                if abort {
                    t.abort();
                } else {
                    t.close();
                }
                let r = peer.await.unwrap().unwrap();
                if abort {
                    // No close_notify: the connection just ends (a reset if
                    // the client's last record was still unread when the
                    // socket closed, as for any TCP close).
                    assert!(
                        matches!(
                            r,
                            Err(std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset)
                        ),
                        "{r:?}"
                    );
                } else {
                    assert_eq!(r, Ok(0));
                }
            }
            until(|| server.active_connections() == 0).await;
            server.close();
        });
    }
}

both_backends! {
    fn shutdown_timeout_bounds_a_close_the_peer_never_answers(lp) {
        let l = lp.clone();
        run_bounded(lp, LIMIT, async move {
            let rec = Rc::new(RefCell::new(Rec {
                done: Some(l.create_future()),
                ..Default::default()
            }));
            let done = rec.borrow().done.clone().unwrap();
            let r = rec.clone();
            let taken = Rc::new(Cell::new(false));
            let tk = taken.clone();
            let server = l
                .create_server_with(
                    move || {
                        assert!(!tk.replace(true), "one connection");
                        r.clone()
                    },
                    ServerOptions {
                        ssl_shutdown_timeout: Some(Duration::from_millis(100)),
                        ..tls_server_opts(server_config())
                    },
                )
                .await
                .unwrap();
            let port = port_of(&server);
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let peer = l.create_task(ringloop::to_thread(move || {
                let mut s = blocking_client(port);
                s.write_all(b"x").unwrap();
                s.flush().unwrap();
                // Never answers the close_notify, never closes, until told.
                let _ = rx.recv_timeout(LIMIT);
            }));
            until(|| !rec.borrow().data.is_empty()).await;
            rec.borrow().t.clone().unwrap().close();
            // The shutdown times out: the connection is aborted.
            done.await.unwrap();
            assert_eq!(rec.borrow().events, ["made", format!("lost:{}", Error::Timeout).as_str()]);
            tx.send(()).unwrap();
            peer.await.unwrap().unwrap();
            server.close();
        });
    }
}

/// Writes `total` bytes in `CHUNK`s as fast as flow control lets it,
/// counting pauses and the largest write buffer it saw.
#[derive(Default)]
struct Pump {
    t: Option<Transport>,
    total: usize,
    written: usize,
    pauses: usize,
    resumes: usize,
    max_buffered: usize,
    paused: bool,
}

const CHUNK: usize = 64 * 1024;

impl Pump {
    fn pump(&mut self) {
        let t = self.t.clone().unwrap();
        while !self.paused && !t.is_writing_paused() && self.written < self.total {
            let n = CHUNK.min(self.total - self.written);
            let chunk: Vec<u8> = (self.written..self.written + n)
                .map(|i| (i % 253) as u8)
                .collect();
            t.write(chunk).unwrap();
            self.written += n;
            self.max_buffered = self.max_buffered.max(t.get_write_buffer_size());
        }
    }
}

impl BaseProtocol for Pump {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
        self.pump();
    }
    fn pause_writing(&mut self) {
        self.pauses += 1;
        self.paused = true;
    }
    fn resume_writing(&mut self) {
        self.resumes += 1;
        self.paused = false;
        self.pump();
    }
}

impl Protocol for Pump {}

/// Receives without reading at first (paused from connection_made on),
/// checking the byte pattern.
#[derive(Default)]
struct Sink {
    t: Option<Transport>,
    got: usize,
    bad: usize,
}

impl BaseProtocol for Sink {
    fn connection_made(&mut self, t: Transport) {
        t.pause_reading();
        self.t = Some(t);
    }
}

impl Protocol for Sink {
    fn data_received(&mut self, data: &[u8]) {
        for (k, b) in data.iter().enumerate() {
            if *b != ((self.got + k) % 253) as u8 {
                self.bad += 1;
            }
        }
        self.got += data.len();
    }
}

/// A 32 MiB transfer through TLS to a reader that does not read: the
/// writer is paused and what it wrote stays bounded (well under the
/// total); resumed, every byte arrives in order.
async fn bounded_transfer(l: &EventLoop, server_writes: bool) {
    const TOTAL: usize = 32 << 20;
    let pump = Rc::new(RefCell::new(Pump {
        total: TOTAL,
        ..Default::default()
    }));
    let sink = Rc::new(RefCell::new(Sink::default()));
    let (p2, s2) = (pump.clone(), sink.clone());
    let server = if server_writes {
        l.create_server_with(move || p2.clone(), tls_server_opts(server_config()))
            .await
    } else {
        l.create_server_with(move || s2.clone(), tls_server_opts(server_config()))
            .await
    }
    .unwrap();
    let port = port_of(&server);
    let (p3, s3) = (pump.clone(), sink.clone());
    let _client = if server_writes {
        l.create_connection_with(move || s3, tls_connect_opts(port))
            .await
    } else {
        l.create_connection_with(move || p3, tls_connect_opts(port))
            .await
    }
    .unwrap();
    until(|| pump.borrow().paused).await;
    // Give the writer many turns to overrun, if it could.
    for _ in 0..10 {
        ringloop::sleep(Duration::from_millis(1)).await.unwrap();
    }
    // In readiness mode nothing reads the socket while the application
    // does not read: the ciphertext waits in the kernel (TCP's window holds
    // the writer), not in this process.
    let reads = l.driver_stats().readiness_reads;
    for _ in 0..40 {
        ringloop::sleep(Duration::from_millis(1)).await.unwrap();
    }
    assert_eq!(
        l.driver_stats().readiness_reads,
        reads,
        "no socket reads while the reader is paused"
    );
    {
        let p = pump.borrow();
        assert!(p.paused, "the writer stays paused while nobody reads");
        assert!(
            p.written < TOTAL / 2,
            "bounded: {} of {TOTAL} bytes written",
            p.written
        );
        assert!(
            p.max_buffered <= 2 * CHUNK + 64 * 1024,
            "the TLS write buffer stays near its high-water mark: {}",
            p.max_buffered
        );
        assert_eq!(sink.borrow().got, 0);
    }
    let t = sink.borrow().t.clone().unwrap();
    assert!(!t.is_reading());
    t.resume_reading();
    assert!(t.is_reading());
    until(|| sink.borrow().got == TOTAL).await;
    // (Bulk data: the reader's side went to readiness mode.)
    assert_eq!(l.driver_stats().readiness_reads > reads, readiness_mode());
    let p = pump.borrow();
    assert!(
        p.pauses >= 1 && p.resumes >= 1,
        "pauses {} resumes {}",
        p.pauses,
        p.resumes
    );
    assert_eq!(sink.borrow().bad, 0, "bytes arrived in order");
    server.close();
}

both_backends! {
    fn flow_control_through_tls_server_to_client(lp) {
        let l = lp.clone();
        run_bounded(lp, LIMIT, async move { bounded_transfer(&l, true).await });
    }
}

both_backends! {
    fn flow_control_through_tls_client_to_server(lp) {
        let l = lp.clone();
        run_bounded(lp, LIMIT, async move { bounded_transfer(&l, false).await });
    }
}

/// Echoes, and records how each connection ended.
struct Watch(Option<Transport>, Rc<RefCell<Vec<String>>>);

impl BaseProtocol for Watch {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        self.1
            .borrow_mut()
            .push(exc.map_or("none".into(), |e| format!("{e:?}")));
    }
}

impl Protocol for Watch {
    fn data_received(&mut self, data: &[u8]) {
        self.0.as_ref().unwrap().write(data.to_vec()).unwrap();
    }
}

/// The first bytes of a real ClientHello.
fn client_hello() -> Vec<u8> {
    let mut conn =
        rustls::ClientConnection::new(client_config(), "localhost".try_into().unwrap()).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// A raw TCP peer: sends `data`, half-closes if `then_eof`, and reads
/// until the server ends the connection; what it read. A read that times
/// out (the server never ended it) fails the test.
fn raw_peer(port: u16, data: Vec<u8>, then_eof: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(&data).unwrap();
    if then_eof {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("the server did not end a bad connection: {e}"),
        }
    }
}

both_backends! {
    fn bad_clients_cost_one_connection_each(lp) {
        common::install_logger();
        let l = lp.clone();
        run_bounded(lp, LIMIT, async move {
            let lost = Rc::new(RefCell::new(Vec::new()));
            let made = Rc::new(Cell::new(0));
            let (l2, m2) = (lost.clone(), made.clone());
            let server = l
                .create_server_with(
                    move || {
                        m2.set(m2.get() + 1);
                        Watch(None, l2.clone())
                    },
                    ServerOptions {
                        ssl_handshake_timeout: Some(Duration::from_millis(200)),
                        ..tls_server_opts(server_config())
                    },
                )
                .await
                .unwrap();
            let port = port_of(&server);
            let mut rng = common::Rng::seeded(14);
            let random: Vec<u8> = (0..4096).map(|_| rng.below(256) as u8).collect();
            let hello = client_hello();
            let cases: Vec<(&str, Vec<u8>, bool)> = vec![
                ("plaintext HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), false),
                ("random bytes", random, false),
                ("truncated handshake", hello[..hello.len() / 2].to_vec(), true),
                // Half a ClientHello, then nothing: the handshake timeout ends it.
                ("stalled handshake", hello[..hello.len() / 2].to_vec(), false),
            ];
            for (what, data, eof) in cases {
                let got = l
                    .create_task(ringloop::to_thread(move || raw_peer(port, data, eof)))
                    .await
                    .unwrap()
                    .unwrap();
                if what == "plaintext HTTP" {
                    // A TLS alert record (content type 21) before the close.
                    assert_eq!(got.first(), Some(&21), "{what}: {got:?}");
                }
                // The server serves the next client.
                assert_eq!(echo_once(&l, port, what.as_bytes()).await.unwrap(), what.as_bytes(), "{what}");
            }
            // A peer that resets mid-record after the handshake: that
            // connection is lost with the error, nothing else.
            l.create_task(ringloop::to_thread(move || {
                let mut s = blocking_client(port);
                s.write_all(b"ping").unwrap();
                s.flush().unwrap();
                let mut buf = [0u8; 4];
                s.read_exact(&mut buf).unwrap();
                let mut rec = Vec::new();
                s.conn.writer().write_all(&[7u8; 1000]).unwrap();
                s.conn.write_tls(&mut rec).unwrap();
                s.sock.write_all(&rec[..rec.len() / 2]).unwrap();
                socket2::SockRef::from(&s.sock).set_linger(Some(Duration::ZERO)).unwrap();
            }))
            .await
            .unwrap()
            .unwrap();
            until(|| lost.borrow().iter().any(|e| e.contains("ConnectionReset"))).await;
            assert_eq!(echo_once(&l, port, b"after reset").await.unwrap(), b"after reset");
            until(|| server.active_connections() == 0).await;
            // Bad handshakes never reached the application's protocol...
            assert!(lost.borrow().iter().all(|e| e == "none" || e.contains("ConnectionReset")), "{:?}", lost.borrow());
            // ...and were logged with rustls's reason or the timeout.
            assert!(common::logged("TLS handshake failed: TLS: received corrupt message"), "{:?}", common::log_lines());
            assert!(common::logged("TLS handshake failed: timed out"));
            assert!(common::logged("connection closed during the TLS handshake"));
            server.close();
        });
    }
}

both_backends! {
    fn bad_servers_give_the_client_a_clear_error(lp) {
        let l = lp.clone();
        run_bounded(lp, LIMIT, async move {
            for (what, leaf) in [("untrusted", &pki().untrusted), ("expired", &pki().expired)] {
                let server = l
                    .create_server_with(|| Echo(None), tls_server_opts(server_config_for(leaf, &[])))
                    .await
                    .unwrap();
                let e = l
                    .create_connection_with(|| Echo(None), tls_connect_opts(port_of(&server)))
                    .await
                    .unwrap_err();
                match (what, tls_err(&e)) {
                    ("untrusted", rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {}
                    ("expired", rustls::Error::InvalidCertificate(
                        rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. },
                    )) => {}
                    _ => panic!("{what}: {e:?}"),
                }
                server.close();
            }
            // A server that accepts and never answers: the client's
            // handshake timeout.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let e = l
                .create_connection_with(|| Echo(None), ConnectOptions {
                    ssl_handshake_timeout: Some(Duration::from_millis(100)),
                    ..tls_connect_opts(port)
                })
                .await
                .unwrap_err();
            assert!(matches!(e, Error::Timeout), "{e:?}");
            // The client aborted its connection: the server side ends.
            let ended = l
                .create_task(ringloop::to_thread(move || {
                    let (mut held, _) = listener.accept().unwrap();
                    held.set_read_timeout(Some(LIMIT)).unwrap();
                    let mut sink = Vec::new();
                    held.read_to_end(&mut sink).map_err(|e| e.kind())
                }))
                .await
                .unwrap()
                .unwrap();
            assert!(
                matches!(ended, Ok(_) | Err(std::io::ErrorKind::ConnectionReset)),
                "{ended:?}"
            );
            // A server that answers in plaintext.
            let plain = ringloop::start_server(
                |_r: ringloop::StreamReader, w: ringloop::StreamWriter| async move {
                    w.write(&b"HTTP/1.1 400 Bad Request\r\n\r\n"[..]).unwrap();
                    w.close();
                },
                "127.0.0.1",
                0,
            )
            .await
            .unwrap();
            let e = l
                .create_connection_with(|| Echo(None), tls_connect_opts(port_of(&plain)))
                .await
                .unwrap_err();
            assert!(matches!(e, Error::Tls(_)), "{e:?}");
            plain.close();
        });
    }
}

/// Holds its drop flag: shows the protocol was released.
struct Held(#[allow(dead_code)] common::DropFlag);

impl BaseProtocol for Held {}
impl Protocol for Held {}

both_backends! {
    fn a_loop_closed_under_a_live_tls_connection_releases_both_sides(lp) {
        let (client_gone, server_gone) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(false)));
        let (l, c, s) = (lp.clone(), client_gone.clone(), server_gone.clone());
        let kept = run_bounded(lp, LIMIT, async move {
            let server = l
                .create_server_with(
                    move || Held(common::DropFlag(s.clone())),
                    tls_server_opts(server_config()),
                )
                .await
                .unwrap();
            let port = port_of(&server);
            let t = l
                .create_connection_with(move || Held(common::DropFlag(c)), tls_connect_opts(port))
                .await
                .unwrap();
            until(|| server.active_connections() == 1).await;
            (server, t)
        });
        assert!(!client_gone.get() && !server_gone.get());
        lp.close().unwrap();
        assert!(client_gone.get(), "the client's protocol was released");
        assert!(server_gone.get(), "the server's protocol was released");
        drop(kept);
    }
}

both_backends! {
    fn a_connect_dropped_mid_handshake_aborts_its_connection(lp) {
        let l = lp.clone();
        run_bounded(lp, LIMIT, async move {
            // A server that accepts and never answers the ClientHello.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let r = ringloop::wait_for(
                l.create_connection_with(|| Echo(None), tls_connect_opts(port)),
                Duration::from_millis(100),
            )
            .await;
            assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
            // Dropping the connect aborted the socket: the server side ends.
            let ended = l
                .create_task(ringloop::to_thread(move || {
                    let (mut held, _) = listener.accept().unwrap();
                    held.set_read_timeout(Some(LIMIT)).unwrap();
                    let mut sink = Vec::new();
                    held.read_to_end(&mut sink).map_err(|e| e.kind())
                }))
                .await
                .unwrap()
                .unwrap();
            assert!(
                matches!(ended, Ok(_) | Err(std::io::ErrorKind::ConnectionReset)),
                "{ended:?}"
            );
        });
    }
}

/// A BufferedProtocol echo with a small buffer.
struct BufEcho(Option<Transport>, [u8; 100]);

impl BaseProtocol for BufEcho {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
}

impl ringloop::BufferedProtocol for BufEcho {
    fn get_buffer(&mut self, _sizehint: usize) -> &mut [u8] {
        &mut self.1
    }
    fn buffer_updated(&mut self, n: usize) {
        self.0
            .as_ref()
            .unwrap()
            .write(self.1[..n].to_vec())
            .unwrap();
    }
}

both_backends! {
    fn a_buffered_protocol_over_tls(lp) {
        let l = lp.clone();
        run_bounded(lp, LIMIT, async move {
            let server = l
                .create_server_with(
                    || ringloop::protocols::buffered(BufEcho(None, [0; 100])),
                    tls_server_opts(server_config()),
                )
                .await
                .unwrap();
            let msg: Vec<u8> = (0..10_000).map(|i| (i % 256) as u8).collect();
            assert_eq!(echo_once(&l, port_of(&server), &msg).await.unwrap(), msg);
            server.close();
        });
    }
}

/// Collects what it receives.
struct Collect(Rc<RefCell<Vec<u8>>>);
impl BaseProtocol for Collect {}
impl Protocol for Collect {
    fn data_received(&mut self, data: &[u8]) {
        self.0.borrow_mut().extend_from_slice(data);
    }
}

both_backends! {
    fn sendfile_over_tls_takes_the_read_and_write_fallback(lp) {
        let l = lp.clone();
        run_bounded(lp, LIMIT, async move {
            use std::io::Seek;
            let got = Rc::new(RefCell::new(Vec::new()));
            let g = got.clone();
            let server = l
                .create_server_with(move || Collect(g.clone()), tls_server_opts(server_config()))
                .await
                .unwrap();
            let port = port_of(&server);
            let t = l
                .create_connection_with(|| Collect(Rc::default()), tls_connect_opts(port))
                .await
                .unwrap();
            let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 241) as u8).collect();
            let path = std::env::temp_dir()
                .join(format!("ringloop-tls-sendfile-{}-{}", std::process::id(), l.backend()));
            std::fs::write(&path, &data).unwrap();
            let mut f = std::fs::File::open(&path).unwrap();
            // No zero-copy through TLS: without the fallback, a clear error.
            let r = l.sendfile(&t, &f, 0, None, false).await;
            assert!(matches!(r, Err(Error::SendfileNotAvailable(_))), "{r:?}");
            // With it, the file goes through the TLS layer, from an offset.
            let n = l.sendfile(&t, &f, 10, None, true).await.unwrap();
            assert_eq!(n, data.len() as u64 - 10);
            assert_eq!(f.stream_position().unwrap(), data.len() as u64);
            t.write(b"after".to_vec()).unwrap();
            let want = data.len() - 10 + 5;
            while got.borrow().len() < want {
                ringloop::sleep(Duration::from_millis(1)).await.unwrap();
            }
            let got = got.borrow();
            assert!(got[..data.len() - 10] == data[10..], "the file arrived intact through TLS");
            assert_eq!(&got[data.len() - 10..], b"after");
            std::fs::remove_file(&path).unwrap();
            t.close();
            server.close();
        });
    }
}

both_backends! {
    fn tls_after_a_cancelled_receive_takes_its_kept_data_first(lp) {
        // A receive on the socket is cancelled in the turn it got the
        // client's ClientHello: the driver keeps those bytes for the
        // socket. TLS put on that socket afterwards must start from them
        // (the plain transport's first receive takes kept data before it
        // waits for readiness), then read the socket itself.
        let (mut peer, sock) = common::fds::tcp_pair();
        let sock = Rc::new(sock);
        let s2 = sock.clone();
        let t = lp.create_task(async move {
            get_running_loop().unwrap().sock_recv(&s2, 4096).await
        });
        common::turns(lp, 2);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(client_config(), name).unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        peer.write_all(&hello).unwrap();
        common::cancel_in_completion_turn(lp, &t);
        drop(t);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&*sock);
        assert_eq!(lp.stashed_bytes(fd), hello.len(), "the ClientHello is kept");
        let sock = Rc::try_unwrap(sock).expect("the receive let go of the socket");
        let hits = lp.driver_stats().stash_hits;
        // Then bulk data (which the server reads by readiness), echoed.
        let bulk: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        let sent = bulk.clone();
        let client = std::thread::spawn(move || {
            let mut s = rustls::StreamOwned::new(conn, peer);
            s.write_all(&sent).unwrap();
            let mut back = vec![0u8; sent.len()];
            s.read_exact(&mut back).unwrap();
            back
        });
        let l = lp.clone();
        run_bounded(lp, LIMIT, async move {
            let t = l
                .connect_accepted_socket_with(|| Echo(None), sock, server_config().into(), StartTlsOptions::default())
                .await
                .unwrap();
            let reads = l.driver_stats().readiness_reads;
            until(|| client.is_finished()).await;
            assert!(client.join().unwrap() == bulk, "the echo came back in order");
            assert_eq!(l.driver_stats().readiness_reads > reads, readiness_mode());
            t.close();
        });
        assert!(lp.driver_stats().stash_hits > hits, "{:?}", lp.driver_stats());
        assert_eq!(lp.stashed_bytes(fd), 0);
    }
}
