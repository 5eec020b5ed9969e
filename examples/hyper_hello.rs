//! HTTP hello on hyper 1.x, running on ringloop (the `hyper` feature):
//! HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on one port, told apart
//! by the connection's first bytes (hyper-util's auto builder).
//!
//! - every request gets `Hello, world!`; a request body is read (and
//!   counted, not kept) before the answer; `HEAD` gets no body (hyper);
//! - keep-alive, pipelining, chunked bodies, HTTP/2 streams: hyper's;
//! - a request head that does not complete within `--timeout` seconds
//!   (10 by default) closes its connection (hyper's `header_read_timeout`
//!   on the loop's timers; it covers idle keep-alive connections too);
//! - a client sending garbage gets hyper's `400` and loses that
//!   connection only;
//! - back-pressure: while a client does not read its answers, the
//!   transport's write buffer passes its high-water mark, hyper's writes
//!   wait, and its requests are not read either.
//!
//! `cargo run --release --features hyper --example hyper_hello -- --serve 127.0.0.1:8080`
//! serves until SIGTERM or Ctrl-C, then shuts down gracefully (stops
//! accepting, lets requests in flight finish, closes idle connections,
//! HTTP/2 `GOAWAY`; aborts what is left after a second); with no arguments
//! it checks itself with hyper's client on ringloop and exits.
//! `curl http://127.0.0.1:8080/`, `curl --http2-prior-knowledge ...`,
//! `wrk`, `h2load`.

mod common;

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use log::info;
use ringloop::hyper::HyperServer;
use ringloop::prelude::*;
use ringloop::{ConnectOptions, ServerOptions};

const USAGE: &str = "usage: hyper_hello [--serve ADDR] [--timeout SECS]

  --serve ADDR     serve HTTP/1.1 and HTTP/2 (prior knowledge) on ADDR (127.0.0.1:P,
                   [::1]:P or localhost:P) until SIGTERM or Ctrl-C; without it,
                   check the server against itself with hyper's client and exit
  --timeout SECS   close a connection whose request head takes over SECS seconds
                   (default 10)
  RUST_LOG=ringloop=debug shows the loop's own messages (and bad connections)";

/// The answer to every request (after reading its body, if any).
async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let mut body = req.into_body();
    // Read the body as it comes (frame by frame, nothing kept): a large
    // upload costs no memory, and the client is back-pressured by TCP.
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(Response::builder()
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"Hello, world!")))
        .expect("a valid response"))
}

async fn serve(host: &str, port: u16, timeout: Duration) -> ringloop::Result<HyperServer> {
    let mut b = ringloop::hyper::builder()?;
    b.http1().header_read_timeout(timeout);
    ringloop::hyper::serve_with(
        b,
        |_conn| service_fn(hello),
        ServerOptions {
            hosts: vec![host.to_owned()],
            port,
            backlog: 1024,
            ..Default::default()
        },
    )
    .await
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully: hyper's
/// `graceful_shutdown` on every connection, a second for them to finish,
/// then the rest aborted. A second signal aborts at once.
async fn serve_until_signal(lp: &EventLoop, server: &HyperServer) -> ringloop::Result<()> {
    let stop = lp.create_future::<i32>();
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let (stop, server) = (stop.clone(), server.clone());
        lp.add_signal_handler(sig, move || {
            if stop.set_result(sig).is_err() {
                info!("second signal: aborting the clients");
                server.server().abort_clients();
            }
        })?;
    }
    let sig = stop.await?;
    let name = if sig == libc::SIGTERM {
        "SIGTERM"
    } else {
        "SIGINT"
    };
    info!(
        "{name}: shutting down gracefully ({} clients)",
        server.active_connections()
    );
    if !server.graceful_shutdown(Duration::from_secs(1)).await {
        info!("clients still open after a second: aborted");
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        lp.remove_signal_handler(sig);
    }
    info!("stopped");
    Ok(())
}

fn to(port: u16) -> ConnectOptions {
    ConnectOptions {
        host: Some("127.0.0.1".into()),
        port,
        ..Default::default()
    }
}

fn request(method: Method, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri("/")
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::from_static(body)))
        .expect("a valid request")
}

async fn body_text(res: Response<Incoming>) -> ringloop::Result<(StatusCode, String)> {
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(ringloop::hyper::to_error)?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

async fn self_check(lp: EventLoop) -> ringloop::Result<()> {
    let server = serve("127.0.0.1", 0, Duration::from_secs(10)).await?;
    let port = server.sockets()[0].as_socket().expect("inet").port();
    info!("hyper_hello ({}) on 127.0.0.1:{port}", lp.backend());
    let err = ringloop::hyper::to_error;

    // HTTP/1.1: GET, POST with a body, HEAD, on one keep-alive connection.
    let mut h1 = ringloop::hyper::http1_client(ringloop::hyper::connect(to(port)).await?).await?;
    for (method, body) in [
        (Method::GET, &b""[..]),
        (Method::POST, &b"a body"[..]),
        (Method::HEAD, &b""[..]),
    ] {
        let head = method == Method::HEAD;
        let res = h1.send_request(request(method, body)).await.map_err(err)?;
        assert_eq!(res.version(), hyper::Version::HTTP_11);
        let (status, text) = body_text(res).await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text, if head { "" } else { "Hello, world!" });
    }
    info!("HTTP/1.1: GET, POST, HEAD on one connection OK");

    // HTTP/2 with prior knowledge: 16 streams at once on one connection.
    let h2 =
        ringloop::hyper::http2_client::<Empty<Bytes>>(ringloop::hyper::connect(to(port)).await?)
            .await?;
    let streams: Vec<_> = (0..16)
        .map(|_| {
            let mut h2 = h2.clone();
            lp.create_task(async move {
                let req = Request::get("http://127.0.0.1/")
                    .body(Empty::new())
                    .expect("a valid request");
                let res = h2.send_request(req).await.map_err(err)?;
                assert_eq!(res.version(), hyper::Version::HTTP_2);
                body_text(res).await
            })
        })
        .collect();
    for s in streams {
        assert_eq!(s.await??, (StatusCode::OK, "Hello, world!".to_owned()));
    }
    info!("HTTP/2 (prior knowledge): 16 concurrent streams OK");

    // A client sending garbage loses its connection; the rest go on.
    let (r, w) = ringloop::open_connection("127.0.0.1", port).await?;
    w.write(&b"\x16\x03\x01 not HTTP at all\r\n\r\n"[..])?;
    let answer = r.read(-1).await?;
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "garbage got {answer:?}"
    );
    w.close();
    let res = h1
        .send_request(request(Method::GET, b""))
        .await
        .map_err(err)?;
    assert_eq!(body_text(res).await?.1, "Hello, world!");
    info!("garbage: 400 and that connection closed; the others go on");

    // A client that pipelines requests and never reads its answers is
    // stalled: the server stops reading it, and holds little.
    const GET: &str = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let chunk = bytes::Bytes::from(GET.repeat(64 * 1024 / GET.len()));
    common::check_back_pressure(port, chunk, 32 << 20, "requests").await?;

    // Graceful shutdown with a request in flight: a body still arriving.
    let mut slow = ringloop::hyper::http1_client(ringloop::hyper::connect(to(port)).await?).await?;
    let (tx, body) = body_channel();
    let req = Request::post("/")
        .header("host", "127.0.0.1")
        .header("content-length", "10")
        .body(body)
        .expect("a valid request");
    let in_flight = lp.create_task(async move {
        let res = slow.send_request(req).await.map_err(err)?;
        body_text(res).await
    });
    tx.send(b"12345")?;
    // (Time for the request head and its first half to reach the service.)
    ringloop::sleep(Duration::from_millis(50)).await?;
    let s2 = server.clone();
    let shutdown =
        lp.create_task(async move { s2.graceful_shutdown(Duration::from_secs(10)).await });
    ringloop::sleep(Duration::from_millis(20)).await?;
    tx.send(b"67890")?;
    assert_eq!(
        in_flight.await??,
        (StatusCode::OK, "Hello, world!".to_owned())
    );
    assert!(
        shutdown.await?,
        "every connection finished in the grace time"
    );
    assert_eq!(server.active_connections(), 0);
    info!("graceful shutdown: the request in flight was answered, then every connection closed");
    drop((h1, h2));
    info!("hyper_hello: self-check passed");
    Ok(())
}

/// A request body fed from the loop: `BodyTx::send` hands it a chunk.
fn body_channel() -> (BodyTx, ChannelBody) {
    let st = std::rc::Rc::new(std::cell::RefCell::new(ChanState::default()));
    (BodyTx(st.clone()), ChannelBody(st))
}

#[derive(Default)]
struct ChanState {
    chunks: std::collections::VecDeque<Bytes>,
    waker: Option<std::task::Waker>,
}

struct BodyTx(std::rc::Rc<std::cell::RefCell<ChanState>>);

impl BodyTx {
    fn send(&self, b: &'static [u8]) -> ringloop::Result<()> {
        let mut st = self.0.borrow_mut();
        st.chunks.push_back(Bytes::from_static(b));
        if let Some(w) = st.waker.take() {
            w.wake();
        }
        Ok(())
    }
}

struct ChannelBody(std::rc::Rc<std::cell::RefCell<ChanState>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let mut st = self.0.borrow_mut();
        match st.chunks.pop_front() {
            Some(b) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(b)))),
            None => {
                st.waker = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    }
}

fn main() -> ExitCode {
    common::init_logging();
    let args = match common::Args::parse(USAGE, &["--timeout"]) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let timeout = match args.get::<String>(USAGE, "--timeout") {
        Ok(None) => Duration::from_secs(10),
        Ok(Some(v)) => match v.parse().map(Duration::try_from_secs_f64) {
            Ok(Ok(d)) if !d.is_zero() => d,
            _ => {
                eprintln!("error: --timeout {v:?} is not a positive number of seconds\n\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        Err(code) => return code,
    };
    common::exit(ringloop::run(async move {
        let lp = get_running_loop()?;
        let Some(addr) = args.serve else {
            return self_check(lp).await;
        };
        let server = serve(&addr.host, addr.port, timeout).await?;
        info!(
            "hyper_hello ({}) on {} (HTTP/1.1 and HTTP/2 prior knowledge)",
            lp.backend(),
            common::addrs(server.server())
        );
        serve_until_signal(&lp, &server).await
    }))
}
