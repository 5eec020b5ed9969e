//! A small HTTP/1.1 server on `httparse`, fast enough to benchmark with
//! `wrk`, `ab -k`, `h2load --h1` and `curl`, and careful with clients that
//! misbehave:
//!
//! - every request gets `Hello, world!`; `HEAD` gets the same headers and
//!   no body; pipelined requests are answered in order;
//! - keep-alive: HTTP/1.1 unless the request says `Connection: close`;
//!   HTTP/1.0 only when it asks with `Connection: keep-alive`, and then the
//!   answer says `Connection: keep-alive` too;
//! - a request body of `Content-Length` bytes is skipped; a chunked body
//!   (any `Transfer-Encoding`) is refused with `411 Length Required` and the
//!   connection closed: this server does not decode chunked bodies, so it
//!   could not tell where the next request starts;
//! - a malformed request gets `400 Bad Request`, a head over 8 KiB or with
//!   over 64 headers `431 Request Header Fields Too Large`; both close;
//! - a connection that brings no complete request (nor body bytes) for
//!   `--timeout` seconds (10 by default, 0: never) is closed: idle
//!   keep-alive connections, and heads that trickle in;
//! - back-pressure: while a client does not read its answers (the
//!   transport's write buffer is over its high-water mark), its requests
//!   are not read either.
//!
//! `cargo run --release --example http_hello -- --serve 127.0.0.1:8080`
//! serves until SIGTERM or Ctrl-C, then shuts down gracefully (stops
//! accepting, closes its clients, exits 0); with no arguments it checks
//! itself (pipelining, HEAD, bodies, HTTP/1.0, bad and oversized requests,
//! the idle timeout, a client that never reads, and the same server over
//! TLS) and exits.
//! `--tls DIR` serves HTTPS with `DIR/cert.pem` and `DIR/key.pem` (made
//! there with a test CA if absent: `curl --cacert DIR/ca.pem`, `wrk`).

mod common;

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, info};
use ringloop::prelude::*;
use ringloop::{BaseProtocol, Protocol, TimerHandle, Transport};

const USAGE: &str = "usage: http_hello [--serve ADDR] [--timeout SECS] [--tls DIR]

  --serve ADDR     serve on ADDR (127.0.0.1:P, [::1]:P or localhost:P) until SIGTERM or Ctrl-C;
                   without it, check the server against itself and exit
  --timeout SECS   close a connection with no complete request for SECS
                   seconds (default 10; 0: never)
  --tls DIR        serve HTTPS with DIR/cert.pem and DIR/key.pem (made there,
                   with the ca.pem clients trust, if absent)
  RUST_LOG=ringloop=debug shows the loop's own messages";

/// The most a request head may take, and the most headers it may have.
const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;

macro_rules! answer {
    ($connection:literal, $body:literal) => {
        concat!(
            "HTTP/1.1 200 OK\r\nServer: ringloop\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n",
            $connection,
            "\r\n",
            $body
        )
        .as_bytes()
    };
}

/// The answers, static so that answering allocates nothing:
/// `OK[head][connection]`, `connection` 0 for HTTP/1.1 keep-alive (no
/// header), 1 for HTTP/1.0 keep-alive, 2 for close.
const OK: [[&[u8]; 3]; 2] = [
    [
        answer!("", "Hello, world!"),
        answer!("Connection: keep-alive\r\n", "Hello, world!"),
        answer!("Connection: close\r\n", "Hello, world!"),
    ],
    [
        answer!("", ""),
        answer!("Connection: keep-alive\r\n", ""),
        answer!("Connection: close\r\n", ""),
    ],
];

macro_rules! refusal {
    ($status:literal, $body:literal) => {
        concat!(
            "HTTP/1.1 ",
            $status,
            "\r\nServer: ringloop\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: ",
            // The body is the status line's reason and a newline.
            $body,
            "\r\n\r\n",
            $status,
            "\n"
        )
        .as_bytes()
    };
}

const BAD_REQUEST: &[u8] = refusal!("400 Bad Request", "16");
const LENGTH_REQUIRED: &[u8] = refusal!("411 Length Required", "20");
const TOO_LARGE: &[u8] = refusal!("431 Request Header Fields Too Large", "36");

/// One connection: parses requests out of the byte stream and answers
/// each in order.
struct Http {
    transport: Option<Transport>,
    /// Bytes not answered yet: a head still arriving or, while the client
    /// does not read, requests waiting for it to catch up.
    buf: Vec<u8>,
    /// How much of `buf` was already searched for the end of a head, so a
    /// head arriving a byte at a time is not searched again from its start.
    scanned: usize,
    /// Bytes of a request body still to skip.
    body_left: u64,
    /// An answer closed the connection: whatever else comes is ignored.
    done: bool,
    timeout: Duration,
    idle: Option<Rc<Idle>>,
}

/// A connection's idle timer. Requests only record when they came; the
/// one timer, when it fires, re-arms itself if one came meanwhile. (A
/// timer cancelled and made anew per request would cost more than the
/// request.)
struct Idle {
    last: Cell<Instant>,
    timer: Cell<Option<TimerHandle>>,
}

impl Http {
    fn new(timeout: Duration) -> Http {
        Http {
            transport: None,
            buf: Vec::new(),
            scanned: 0,
            body_left: 0,
            done: false,
            timeout,
            idle: None,
        }
    }

    /// Answers the complete requests at the start of `input`, stopping
    /// while the client does not read; returns how much of `input` it used.
    fn answer(&mut self, t: &Transport, input: &[u8]) -> usize {
        let mut pos = 0;
        let mut active = false;
        loop {
            if self.body_left > 0 {
                let n =
                    (input.len() - pos).min(usize::try_from(self.body_left).unwrap_or(usize::MAX));
                pos += n;
                self.body_left -= n as u64;
                active |= n > 0;
                if self.body_left > 0 {
                    break;
                }
            }
            if self.done || pos == input.len() || t.is_writing_paused() {
                break;
            }
            let rest = &input[pos..];
            let Some(end) = head_end(rest, self.scanned.saturating_sub(3)) else {
                if rest.len() > MAX_HEAD {
                    self.refuse(t, TOO_LARGE);
                } else {
                    self.scanned = rest.len();
                }
                break;
            };
            self.scanned = 0;
            if end > MAX_HEAD {
                self.refuse(t, TOO_LARGE);
                break;
            }
            self.request(t, &rest[..end]);
            pos += end;
            active = true;
        }
        if active {
            if let Some(idle) = &self.idle {
                idle.last.set(Instant::now());
            }
        }
        if self.done { input.len() } else { pos }
    }

    /// Answers the requests waiting in `buf`.
    fn answer_buffered(&mut self, t: &Transport) {
        let mut buf = std::mem::take(&mut self.buf);
        let used = self.answer(t, &buf);
        buf.drain(..used);
        self.buf = buf;
    }

    /// Answers one request head (complete: it ends with its blank line).
    fn request(&mut self, t: &Transport, head: &[u8]) {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(head, &mut headers) {
            Ok(httparse::Status::Complete(_)) => {}
            Err(httparse::Error::TooManyHeaders) => return self.refuse(t, TOO_LARGE),
            // Partial: a "head" of blank lines only.
            _ => return self.refuse(t, BAD_REQUEST),
        }
        let (mut close, mut keep_alive, mut length) = (false, false, None);
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                match parse_length(h.value) {
                    Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                    _ => return self.refuse(t, BAD_REQUEST),
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return self.refuse(t, LENGTH_REQUIRED);
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
        }
        let http11 = req.version == Some(1);
        let keep = !close && (http11 || keep_alive);
        let connection = match (keep, http11) {
            (true, true) => 0,
            (true, false) => 1,
            (false, _) => 2,
        };
        let _ = t.write(OK[usize::from(req.method == Some("HEAD"))][connection]);
        self.body_left = length.unwrap_or(0);
        if !keep {
            self.done = true;
            t.close();
        }
    }

    /// Sends `answer` and closes once it is sent.
    fn refuse(&mut self, t: &Transport, answer: &'static [u8]) {
        debug!("refused: {}", String::from_utf8_lossy(&answer[9..12]));
        let _ = t.write(answer);
        self.done = true;
        t.close();
    }
}

/// The length of the request head at the start of `buf`, up to and with
/// the blank line that ends it (`\r\n\r\n`, or `\n\n` as httparse also
/// takes), if it is all there; the search starts at `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(k) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + k;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// A `Content-Length` value: digits only.
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Arms `idle`'s timer for `timeout` after the last request; when it
/// fires with no request since, closes the connection (at once if the
/// client does not even read what is buffered for it).
fn arm(t: Transport, idle: Rc<Idle>, timeout: Duration) {
    // (A timeout past the clock's range: never.)
    let Some(when) = idle.last.get().checked_add(timeout) else {
        return;
    };
    let (t2, idle2) = (t.clone(), idle.clone());
    let timer = t.get_loop().call_at(when, move || {
        if idle2.last.get() > when - timeout {
            return arm(t2, idle2, timeout);
        }
        debug!("no request for {timeout:?}: closing");
        if t2.get_write_buffer_size() == 0 {
            t2.close();
        } else {
            t2.abort();
        }
    });
    // An error: the loop is closing, and the connection with it.
    idle.timer.set(timer.ok());
}

impl BaseProtocol for Http {
    fn connection_made(&mut self, t: Transport) {
        if !self.timeout.is_zero() {
            let idle = Rc::new(Idle {
                last: Cell::new(Instant::now()),
                timer: Cell::new(None),
            });
            arm(t.clone(), idle.clone(), self.timeout);
            self.idle = Some(idle);
        }
        self.transport = Some(t);
    }

    // Back-pressure: stop reading from a client that does not read its
    // answers, so its requests wait in the kernel (and then in the client)
    // rather than their answers in this server's memory.
    fn pause_writing(&mut self) {
        if let Some(t) = &self.transport {
            t.pause_reading();
        }
    }

    fn resume_writing(&mut self) {
        let Some(t) = self.transport.clone() else {
            return;
        };
        t.resume_reading();
        // Requests that came while paused wait in `buf`.
        if !self.buf.is_empty() && !self.done {
            self.answer_buffered(&t);
        }
    }

    fn connection_lost(&mut self, _exc: Option<ringloop::Error>) {
        if let Some(timer) = self.idle.take().and_then(|i| i.timer.take()) {
            timer.cancel();
        }
    }
}

impl Protocol for Http {
    fn data_received(&mut self, data: &[u8]) {
        let Some(t) = self.transport.clone() else {
            return;
        };
        if self.done {
            return;
        }
        if self.buf.is_empty() {
            // The usual case: whole requests, answered straight from the
            // receive buffer; only a partial head left over is copied.
            let used = self.answer(&t, data);
            self.buf.extend_from_slice(&data[used..]);
        } else {
            self.buf.extend_from_slice(data);
            self.answer_buffered(&t);
        }
    }
}

async fn serve(
    host: &str,
    port: u16,
    timeout: Duration,
    tls: Option<std::sync::Arc<ringloop::tls::rustls::ServerConfig>>,
) -> ringloop::Result<ringloop::Server> {
    get_running_loop()?
        .create_server_with(
            move || Http::new(timeout),
            ringloop::ServerOptions {
                hosts: vec![host.to_owned()],
                port,
                backlog: 1024,
                ssl: tls,
                ..Default::default()
            },
        )
        .await
}

/// Sends `req` on a new connection and reads until the server closes.
async fn exchange(port: u16, req: impl Into<bytes::Bytes>) -> ringloop::Result<String> {
    let (r, w) = ringloop::open_connection("127.0.0.1", port).await?;
    w.write(req.into())?;
    let all = ringloop::wait_for(r.read(-1), Duration::from_secs(5)).await??;
    Ok(String::from_utf8_lossy(&all).into_owned())
}

async fn self_check(lp: EventLoop) -> ringloop::Result<()> {
    let server = serve("127.0.0.1", 0, Duration::from_secs(10), None).await?;
    let port = server.sockets()[0].as_socket().expect("inet").port();
    info!("http_hello ({}) on 127.0.0.1:{port}", lp.backend());
    const GET: &str = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    const GET_CLOSE: &str = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    // Ten pipelined requests in one write, the last asks to close.
    let text = exchange(port, GET.repeat(9) + GET_CLOSE).await?;
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 10, "{text}");
    assert!(text.ends_with("Hello, world!"), "{text}");

    // HEAD: the headers, no body.
    let text = exchange(
        port,
        "HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert_eq!(text.as_bytes(), OK[1][2], "{text}");

    // A body with a blank line in it is skipped, not taken for a request.
    let post = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nab\r\n\r\ncd";
    let text = exchange(port, post.to_owned() + GET_CLOSE).await?;
    assert_eq!(text.matches("HTTP/1.1 ").count(), 2, "{text}");

    // HTTP/1.0: keep-alive only when asked for, and then said.
    let text = exchange(
        port,
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n",
    )
    .await?;
    assert_eq!(text.as_bytes(), [OK[0][1], OK[0][2]].concat(), "{text}");

    // Garbage, a head too large, too many headers, a chunked body.
    let text = exchange(port, "hello there\r\n\r\n").await?;
    assert_eq!(text.as_bytes(), BAD_REQUEST, "{text}");
    let text = exchange(port, format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000))).await?;
    assert_eq!(text.as_bytes(), TOO_LARGE, "{text}");
    let text = exchange(
        port,
        format!("GET / HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(65)),
    )
    .await?;
    assert_eq!(text.as_bytes(), TOO_LARGE, "{text}");
    let chunked =
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let text = exchange(port, chunked).await?;
    assert_eq!(text.as_bytes(), LENGTH_REQUIRED, "{text}");

    // A client that pipelines 32 MiB of requests and never reads: without
    // back-pressure the server would hold some 100 MiB of answers.
    let total = 32 << 20;
    let chunk = bytes::Bytes::from(GET.repeat(64 * 1024 / GET.len()));
    common::check_back_pressure(port, chunk, total, "requests").await?;
    server.close();
    server.wait_closed().await;

    // The idle timeout: a connection that sends nothing, and one that sends
    // half a head, are closed.
    let server = serve("127.0.0.1", 0, Duration::from_millis(200), None).await?;
    let port = server.sockets()[0].as_socket().expect("inet").port();
    assert_eq!(exchange(port, "").await?, "");
    assert_eq!(exchange(port, "GET / HTTP/1.1\r\nHost").await?, "");
    server.close();
    server.wait_closed().await;

    // HTTPS: the same server behind TLS, pipelined requests in one write.
    let dir = common::tls::temp_cert_dir("http_hello");
    common::tls::ensure_certs(&dir)?;
    let tls = common::tls::server_config(&dir, &[b"http/1.1"])?;
    let server = serve("127.0.0.1", 0, Duration::from_secs(10), Some(tls)).await?;
    let port = server.sockets()[0].as_socket().expect("inet").port();
    let (r, w) = ringloop::open_connection_with(
        ringloop::DEFAULT_LIMIT,
        ringloop::ConnectOptions {
            host: Some("127.0.0.1".into()),
            port,
            ssl: Some(common::tls::client_config(&dir)?),
            ..Default::default()
        },
    )
    .await?;
    w.write(GET.repeat(4) + GET_CLOSE)?;
    let all = ringloop::wait_for(r.read(-1), Duration::from_secs(5)).await??;
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 5, "{text}");
    server.close();
    server.wait_closed().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "http_hello ({}): pipelining, HEAD, bodies, HTTP/1.0, 400/411/431, idle timeout, back-pressure, HTTPS OK",
        lp.backend()
    );
    Ok(())
}

fn main() -> ExitCode {
    common::init_logging();
    let args = match common::Args::parse(USAGE, &["--timeout", "--tls"]) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let timeout = match args.get::<String>(USAGE, "--timeout") {
        Ok(None) => Duration::from_secs(10),
        Ok(Some(v)) => match v.parse().map(Duration::try_from_secs_f64) {
            Ok(Ok(d)) => d,
            _ => {
                eprintln!("error: --timeout {v:?} is not a number of seconds\n\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        Err(code) => return code,
    };
    let tls_dir = match args.get::<std::path::PathBuf>(USAGE, "--tls") {
        Ok(d) => d,
        Err(code) => return code,
    };
    common::exit(ringloop::run(async move {
        let lp = get_running_loop()?;
        let Some(addr) = args.serve else {
            return self_check(lp).await;
        };
        let tls = match &tls_dir {
            Some(dir) => {
                common::tls::ensure_certs(dir)?;
                info!("HTTPS: clients trust {}", dir.join("ca.pem").display());
                Some(common::tls::server_config(dir, &[b"http/1.1"])?)
            }
            None => None,
        };
        let server = serve(&addr.host, addr.port, timeout, tls).await?;
        info!(
            "http_hello ({}) on {}",
            lp.backend(),
            common::addrs(&server)
        );
        // SIGTERM / SIGINT: stop accepting, close the clients, exit 0.
        common::serve_until_signal(&lp, &server, Duration::from_millis(800)).await
    }))
}
