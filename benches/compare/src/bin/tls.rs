//! TLS benchmark: TLS echo servers of ringloop (proactor, selector) and of
//! tokio with tokio-rustls (current_thread), all on the same rustls with
//! the same provider (ringloop's `crypto_provider()`), each in its own
//! process pinned to core 0, driven by one tokio + tokio-rustls load
//! client pinned to core 1. Two loads: echo round trips (1 KiB and 100 KiB
//! messages, 10 and 100 connections) and full handshakes per second (a
//! new connection, handshake, one byte each way, close). Rounds are
//! interleaved, a fresh server per round; medians and min–max.
//!
//! `cargo run --release -p ringloop-compare --bin tls [-- --quick]`.
//! Results: Markdown on stdout.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringloop::prelude::*;
use ringloop::tls::rustls;
use ringloop::{BaseProtocol, Protocol, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "../cli.rs"]
mod cli;

const USAGE: &str = "usage: tls [--quick] [--only TEXT]

  (no arguments)  every load, 3 rounds, on the proactor, the selector and tokio-rustls
  --quick         the few-second CI form (one short round)
  --only TEXT     only the loads whose name contains TEXT (profiling)
  --rounds N      N counted rounds (default 3) of 3 s each
  (internal: --server KIND --certs DIR; for profiling a server by hand:
   --client PORT CONNS SIZE SECS --certs DIR prints the round trips made)";
const SERVERS: [&str; 3] = ["ringloop-proactor", "ringloop-selector", "tokio-rustls"];

// ------------------------------------------------------------ certificates

fn make_certs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "bench CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

fn server_config(dir: &Path) -> Arc<rustls::ServerConfig> {
    let chain = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(ringloop::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

fn client_config(dir: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut c = rustls::ClientConfig::builder_with_provider(ringloop::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Full handshakes every time: the handshake load measures the server's
    // key exchange and signature, not session resumption.
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

// ------------------------------------------------------------------ servers

struct Echo(Option<Transport>);

impl BaseProtocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
}

impl Protocol for Echo {
    fn data_received(&mut self, data: &[u8]) {
        if let Some(t) = &self.0 {
            // (Copied once, into the records, as tokio-rustls's
            // write_all does.)
            let _ = t.write_slice(data);
        }
    }
}

fn serve_ringloop(backend: Backend, dir: &Path) {
    let lp = EventLoop::with_backend(backend).expect("loop");
    let config = server_config(dir);
    let server = lp
        .run_until_complete(async move {
            let lp = get_running_loop().unwrap();
            let s = lp
                .create_server_with(
                    || Echo(None),
                    ringloop::ServerOptions {
                        hosts: vec!["127.0.0.1".into()],
                        backlog: 4096,
                        ssl: Some(config),
                        ..Default::default()
                    },
                )
                .await
                .expect("server");
            println!("PORT {}", s.sockets()[0].as_socket().unwrap().port());
            s
        })
        .unwrap();
    lp.run_forever().unwrap();
    server.close();
}

fn serve_tokio(dir: &Path) {
    let config = server_config(dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("PORT {}", l.local_addr().unwrap().port());
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::task::spawn_local(async move {
                let Ok(mut s) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
}

// The caller kills and waits on the child.
fn spawn(kind: &str, dir: &Path) -> (Child, u16) {
    let args = [
        OsStr::new("--server"),
        OsStr::new(kind),
        OsStr::new("--certs"),
        dir.as_os_str(),
    ];
    cli::spawn_server(true, &[], args, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("server {kind} did not print its port"))
}

// ------------------------------------------------------------------ client

/// Echo round trips per second: `conns` connections each sending `size`
/// bytes and reading them back, for `secs`.
async fn echo_load(
    port: u16,
    cfg: Arc<rustls::ClientConfig>,
    conns: usize,
    size: usize,
    secs: f64,
) -> f64 {
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let connector = connector.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            tcp.set_nodelay(true).unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut s = connector.connect(name, tcp).await.unwrap();
            let msg = vec![7u8; size];
            let mut back = vec![0u8; size];
            let mut n = 0u64;
            while Instant::now() < deadline {
                s.write_all(&msg).await.unwrap();
                s.read_exact(&mut back).await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let start = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// Full handshakes per second with `conns` connecting at a time.
async fn handshake_load(port: u16, cfg: Arc<rustls::ClientConfig>, conns: usize, secs: f64) -> f64 {
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let connector = connector.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                tcp.set_nodelay(true).unwrap();
                let name = ServerName::try_from("localhost").unwrap();
                let mut s = connector.connect(name, tcp).await.unwrap();
                s.write_all(b"x").await.unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pin_self_to_core_1() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it;
    // sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(1, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn main() {
    cli::init_logging();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--server") {
        let (Some(kind), Some(dir)) = (args.get(1), args.get(3)) else {
            cli::usage_error("--server KIND --certs DIR", USAGE);
        };
        let dir = PathBuf::from(dir);
        match kind.as_str() {
            "ringloop-proactor" => serve_ringloop(Backend::Proactor, &dir),
            "ringloop-selector" => serve_ringloop(Backend::Selector, &dir),
            "tokio-rustls" => serve_tokio(&dir),
            other => cli::usage_error(&format!("unknown server {other}"), USAGE),
        }
        return;
    }
    if args.first().map(String::as_str) == Some("--client") {
        let num = |i: usize| -> f64 {
            match args.get(i).map(|a| a.parse::<f64>()) {
                Some(Ok(v)) => v,
                _ => cli::usage_error("--client PORT CONNS SIZE SECS --certs DIR", USAGE),
            }
        };
        let (port, conns, size, secs) = (num(1) as u16, num(2) as usize, num(3) as usize, num(4));
        let Some(dir) = args.get(6) else {
            cli::usage_error("--client PORT CONNS SIZE SECS --certs DIR", USAGE);
        };
        let cfg = client_config(Path::new(dir));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let rate = local.block_on(&rt, echo_load(port, cfg, conns, size, secs));
        println!("REQUESTS {:.0}", rate * secs);
        return;
    }
    let mut quick = false;
    let mut only = None;
    let mut rounds_arg = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--help" | "-h" => return println!("{USAGE}"),
            "--quick" => quick = true,
            "--rounds" => match it.next().and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if n > 0 => rounds_arg = Some(n),
                _ => cli::usage_error("--rounds needs a number above 0", USAGE),
            },
            "--only" => match it.next() {
                Some(t) => only = Some(t.clone()),
                None => cli::usage_error("--only needs a TEXT", USAGE),
            },
            other => cli::usage_error(&format!("unknown argument {other}"), USAGE),
        }
    }
    let (rounds, secs): (usize, f64) = if quick { (1, 0.5) } else { (3, 3.0) };
    let rounds = rounds_arg.unwrap_or(rounds);
    let dir = std::env::temp_dir().join(format!("ringloop-tls-bench-{}", std::process::id()));
    make_certs(&dir);
    let cfg = client_config(&dir);
    pin_self_to_core_1();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let loads: Vec<(String, usize, Option<usize>)> = vec![
        ("echo 1 KiB, 10 conns".into(), 10, Some(1024)),
        ("echo 1 KiB, 100 conns".into(), 100, Some(1024)),
        ("echo 100 KiB, 10 conns".into(), 10, Some(100 * 1024)),
        ("echo 100 KiB, 100 conns".into(), 100, Some(100 * 1024)),
        ("handshakes/s, 10 conns".into(), 10, None),
    ];
    println!(
        "| load | {} | proactor/selector | proactor/tokio-rustls | server CPU µs / request ({}) |",
        SERVERS.join(" | "),
        SERVERS.join(" / ")
    );
    println!("| --- |{}", " ---: |".repeat(SERVERS.len() + 3));
    for (name, conns, size) in loads {
        if only.as_ref().is_some_and(|t| !name.contains(t.as_str())) {
            continue;
        }
        let mut results: Vec<Vec<f64>> = vec![Vec::new(); SERVERS.len()];
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); SERVERS.len()];
        for round in 0..rounds + 1 {
            for (i, kind) in SERVERS.iter().enumerate() {
                let (mut child, port) = spawn(kind, &dir);
                let cfg = cfg.clone();
                // (Round 0 warms up and is dropped.)
                let s = if round == 0 { secs.min(0.5) } else { secs };
                let before = cli::process_cpu_secs(child.id());
                let r = local.block_on(&rt, async move {
                    match size {
                        Some(size) => echo_load(port, cfg, conns, size, s).await,
                        None => handshake_load(port, cfg, conns, s).await,
                    }
                });
                // (The server's CPU over the round, per request: the
                // comparison that holds where the load client sets the pace.)
                if let (Some(b), Some(a), true) = (
                    before,
                    cli::process_cpu_secs(child.id()),
                    round > 0 && r > 0.0,
                ) {
                    cpu[i].push((a - b) * 1e6 / (r * s));
                }
                let _ = child.kill();
                let _ = child.wait();
                if round > 0 {
                    results[i].push(r);
                }
            }
        }
        let med: Vec<f64> = results.iter_mut().map(|v| median(v)).collect();
        let cells: Vec<String> = med.iter().map(|m| format!("{m:.0}")).collect();
        let cpu_cells: Vec<String> = cpu
            .iter_mut()
            .map(|v| match v.is_empty() {
                true => "n/a".to_string(),
                false => format!("{:.0}", median(v)),
            })
            .collect();
        println!(
            "| {name} | {} | {:.2} | {:.2} | {} |",
            cells.join(" | "),
            med[0] / med[1],
            med[0] / med[2],
            cpu_cells.join(" / ")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
