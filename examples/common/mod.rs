//! What every example shares: the command line (`--serve ADDR` and a few
//! flags), the logger, the exit status, and the never-reading client that
//! the servers' self-checks use to prove their back-pressure.
//!
//! Cargo does not build this directory as an example of its own (it has no
//! `main.rs`); each example includes it with `mod common;`.
#![allow(dead_code)] // each example uses its own part of it

pub mod tls;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;

/// Installs a logger on `RUST_LOG`: `info` and up by default (the
/// examples' own messages and the loop's warnings), anything `RUST_LOG`
/// asks for on top of that, e.g. `RUST_LOG=ringloop=debug` for the loop's
/// debug messages (why a backend was chosen, an `EMFILE` accept pause).
pub fn init_logging() {
    let mut b = env_logger::Builder::new();
    b.filter_level(log::LevelFilter::Info);
    // rustls warns once per connection about clients that break a rule it
    // tolerates (wrk sends an IP address as SNI): errors only, unless
    // RUST_LOG asks.
    b.filter_module("rustls", log::LevelFilter::Error);
    b.parse_env(env_logger::Env::default());
    let _ = b.try_init();
}

/// An address to serve on: `127.0.0.1:P`, `[::1]:P` or `localhost:P`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// An IP literal (an IPv6 one without its brackets) or `localhost`.
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// Parses `IPv4:PORT`, `[IPv6]:PORT` or `localhost:PORT`.
    ///
    /// # Errors
    ///
    /// A message saying what is wrong and which forms are accepted.
    pub fn parse(s: &str) -> Result<HostPort, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(HostPort {
                host: a.ip().to_string(),
                port: a.port(),
            });
        }
        let forms = "expected IPv4:PORT, [IPv6]:PORT or localhost:PORT";
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!("{s:?} has no port ({forms})"));
        };
        if host.contains(':') && !host.starts_with('[') {
            return Err(format!(
                "{s:?}: an IPv6 address takes brackets, as in [::1]:{port}"
            ));
        }
        let Ok(port) = port.parse::<u16>() else {
            return Err(format!("{s:?}: {port:?} is not a port number (0-65535)"));
        };
        if host.eq_ignore_ascii_case("localhost") {
            return Ok(HostPort {
                host: "localhost".into(),
                port,
            });
        }
        Err(format!("{s:?}: {host:?} is not an IP address ({forms})"))
    }

    /// The one socket address to bind or connect to (`localhost`:
    /// 127.0.0.1).
    pub fn socket_addr(&self) -> SocketAddr {
        match self.host.parse() {
            Ok(ip) => SocketAddr::new(ip, self.port),
            Err(_) => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), self.port),
        }
    }
}

/// The command line of an example: `--serve ADDR`, the value flags the
/// example names, and `--help`.
#[derive(Debug, Default)]
pub struct Args {
    pub serve: Option<HostPort>,
    values: Vec<(String, String)>,
}

impl Args {
    /// Parses the process's arguments. `flags` are the example's own
    /// flags, each taking a value.
    ///
    /// # Errors
    ///
    /// The exit status to end with: 0 after printing `usage` for
    /// `--help`, 2 after printing what is wrong and `usage`.
    pub fn parse(usage: &str, flags: &[&str]) -> Result<Args, ExitCode> {
        let fail = |msg: String| {
            eprintln!("error: {msg}\n\n{usage}");
            ExitCode::from(2)
        };
        let mut out = Args::default();
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            if a == "--help" || a == "-h" {
                println!("{usage}");
                return Err(ExitCode::SUCCESS);
            }
            if a != "--serve" && !flags.contains(&a.as_str()) {
                return Err(fail(format!("unknown argument {a:?}")));
            }
            let Some(v) = it.next() else {
                return Err(fail(format!("{a} needs a value")));
            };
            if a == "--serve" {
                out.serve = Some(HostPort::parse(&v).map_err(fail)?);
            } else {
                out.values.push((a, v));
            }
        }
        Ok(out)
    }

    /// The value given for `flag`, parsed.
    ///
    /// # Errors
    ///
    /// Exit status 2 (after a message) if the value does not parse.
    pub fn get<T: std::str::FromStr>(
        &self,
        usage: &str,
        flag: &str,
    ) -> Result<Option<T>, ExitCode> {
        let Some((_, v)) = self.values.iter().rev().find(|(f, _)| f == flag) else {
            return Ok(None);
        };
        v.parse().map(Some).map_err(|_| {
            eprintln!("error: {flag} {v:?} does not parse\n\n{usage}");
            ExitCode::from(2)
        })
    }
}

/// The addresses a server listens on, as `127.0.0.1:8080, [::1]:8080`.
pub fn addrs(server: &ringloop::Server) -> String {
    let v: Vec<String> = server
        .sockets()
        .iter()
        .filter_map(|a| a.as_socket())
        .map(|a| a.to_string())
        .collect();
    v.join(", ")
}

/// The exit status for what `ringloop::run` returned: 0 for success and
/// for Ctrl-C (a server is stopped that way), 1 for an error (logged).
pub fn exit(r: ringloop::Result<ringloop::Result<()>>) -> ExitCode {
    match r.and_then(|r| r) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ringloop::Error::Interrupted) => {
            log::info!("interrupted (Ctrl-C): stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// This process's resident set size in bytes (`/proc/self/statm`).
pub fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

/// A client that sends `chunk` over and over to `127.0.0.1:port`, never
/// reading, until `total` bytes are sent or its sends stall for `stall`
/// (the server stopped reading: back-pressure reached the sender).
/// Returns the bytes it sent. The connection is aborted at the end.
///
/// Against a server without back-pressure nothing stalls: the server reads
/// everything and holds every reply in memory.
pub async fn never_reading_client(
    port: u16,
    chunk: Bytes,
    total: usize,
    stall: Duration,
) -> ringloop::Result<usize> {
    let (_r, w) = ringloop::open_connection("127.0.0.1", port).await?;
    let mut sent = 0;
    while sent < total {
        w.write(chunk.clone())?;
        // drain waits while this side's own buffer is over its high mark,
        // so this client holds little; the kernel's buffers hold the rest.
        match ringloop::wait_for(w.drain(), stall).await {
            Ok(r) => r?,
            Err(ringloop::Error::Timeout) => break,
            Err(e) => return Err(e),
        }
        sent += chunk.len();
    }
    w.transport().abort();
    Ok(sent)
}

/// The self-checks' back-pressure test: a [`never_reading_client`] sends
/// `chunk` until `total` bytes or a stall; the server must stall it before
/// the end, and this process's RSS must grow by less than 24 MiB.
/// `what` names the payload in the log line ("requests", "bytes").
pub async fn check_back_pressure(
    port: u16,
    chunk: Bytes,
    total: usize,
    what: &str,
) -> ringloop::Result<()> {
    let before = rss_bytes();
    let sent = never_reading_client(port, chunk, total, Duration::from_millis(300)).await?;
    let grown = rss_bytes().saturating_sub(before);
    log::info!(
        "a client that never reads sent {} KiB of {what} before it stalled; RSS grew {} KiB",
        sent >> 10,
        grown >> 10
    );
    assert!(
        sent < total,
        "the server read all {sent} bytes: no back-pressure"
    );
    assert!(grown < 24 << 20, "RSS grew {grown} bytes: no back-pressure");
    Ok(())
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully: stops
/// accepting, closes every client (each after its buffered answers are
/// sent), gives them up to `grace` to go, aborts the rest, and returns
/// `Ok` (exit status 0). A second signal during the grace time aborts the
/// clients at once.
///
/// The signals come through `add_signal_handler`, so the handlers are
/// ordinary loop callbacks; the runner's own Ctrl-C handling steps aside
/// while the loop handles SIGINT itself.
pub async fn serve_until_signal(
    lp: &ringloop::EventLoop,
    server: &ringloop::Server,
    grace: Duration,
) -> ringloop::Result<()> {
    use ringloop::AbstractEventLoop;
    let stop = lp.create_future::<i32>();
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let (stop, server) = (stop.clone(), server.clone());
        lp.add_signal_handler(sig, move || {
            if stop.set_result(sig).is_err() {
                log::info!("second signal: aborting the clients");
                server.abort_clients();
            }
        })?;
    }
    let sig = stop.await?;
    let name = if sig == libc::SIGTERM {
        "SIGTERM"
    } else {
        "SIGINT"
    };
    log::info!(
        "{name}: shutting down ({} clients)",
        server.active_connections()
    );
    server.close();
    server.close_clients();
    if ringloop::wait_for(server.wait_closed(), grace)
        .await
        .is_err()
    {
        log::info!(
            "{} clients still open after {grace:?}: aborted",
            server.active_connections()
        );
        server.abort_clients();
        server.wait_closed().await;
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        lp.remove_signal_handler(sig);
    }
    log::info!("stopped");
    Ok(())
}
