//! hyper 1.x on ringloop (the `hyper` feature: proactor and selector)
//! against hyper on tokio `current_thread`, HTTP hello with `wrk -t1` at 10
//! and 100 connections; and an axum `Router` served by both.
//!
//! Every server uses hyper-util's auto builder (HTTP/1 + HTTP/2) with its
//! runtime's executor and timer (so HTTP/1's 30 s header read timeout runs
//! on both), TCP_NODELAY, loopback. Each server runs in its own process
//! pinned to core 0, `wrk` on core 1; rounds are interleaved, a fresh
//! server per round; medians, and the per-round ratios' median with their
//! min–max.
//!
//! Before the table, the axum check: a `Router` (a static route, a path
//! parameter, a body echo) served on ringloop through
//! `ringloop::hyper::serve` and hyper-util's `TowerToHyperService`, on both
//! backends, asked by hyper's client on ringloop over HTTP/1.1 and HTTP/2.
//!
//! `cargo run --release -p ringloop-compare --bin hyper [-- --quick]`.
//! Results: Markdown on stdout, `target/bench/hyper.json`.

use std::process::{Child, Command};
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::{get, post};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use ringloop::prelude::*;
use ringloop::{ConnectOptions, ServerOptions};

#[path = "../cli.rs"]
mod cli;

const SERVERS: [&str; 5] = [
    "hyper-ringloop-proactor",
    "hyper-ringloop-selector",
    "hyper-tokio",
    "axum-ringloop-proactor",
    "axum-tokio",
];

/// Ratio columns: (numerator, denominator) in `SERVERS`.
const RATIOS: [(usize, usize); 4] = [(0, 2), (1, 2), (0, 1), (3, 4)];
const RATIO_NAMES: &str =
    " proactor/tokio | selector/tokio | proactor/selector | axum: ringloop/tokio |";

// ------------------------------------------------------------------ servers

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(
        b"Hello, world!",
    ))))
}

/// The axum app: a static route, a path parameter, a body echo.
fn router() -> Router {
    Router::new()
        .route("/", get(|| async { "Hello, world!" }))
        .route(
            "/users/{id}",
            get(|Path(id): Path<u32>| async move { format!("user {id}") }),
        )
        .route("/echo", post(|body: Bytes| async move { body }))
}

fn announce(port: u16) {
    use std::io::Write;
    println!("PORT {port}");
    std::io::stdout().flush().unwrap();
}

fn local(port: u16) -> ServerOptions {
    ServerOptions {
        hosts: vec!["127.0.0.1".into()],
        port,
        backlog: 4096,
        ..Default::default()
    }
}

/// Serves hyper hello (or the axum router) on a ringloop loop until killed.
fn serve_ringloop(backend: Backend, axum: bool) {
    let lp = EventLoop::with_backend(backend).expect("loop");
    let server = lp
        .run_until_complete(async move {
            let server = if axum {
                let app = router();
                ringloop::hyper::serve(move |_t| TowerToHyperService::new(app.clone()), local(0))
                    .await
            } else {
                ringloop::hyper::serve(|_t| service_fn(hello), local(0)).await
            }
            .expect("serve");
            announce(server.sockets()[0].as_socket().unwrap().port());
            server
        })
        .expect("serve");
    lp.run_forever().expect("run");
    drop(server);
}

/// hyper hello (or the axum router) on tokio current_thread with
/// hyper-util's tokio executor, timer and I/O adapter.
fn serve_tokio(axum: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        announce(l.local_addr().unwrap().port());
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1().timer(TokioTimer::new());
        b.http2().timer(TokioTimer::new());
        let app = router();
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            let b = b.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let io = TokioIo::new(s);
                let _ = if axum {
                    b.serve_connection(io, TowerToHyperService::new(app)).await
                } else {
                    b.serve_connection(io, service_fn(hello)).await
                };
            });
        }
    });
}

fn serve(kind: &str) {
    match kind {
        "hyper-ringloop-proactor" => serve_ringloop(Backend::Proactor, false),
        "hyper-ringloop-selector" => serve_ringloop(Backend::Selector, false),
        "hyper-tokio" => serve_tokio(false),
        "axum-ringloop-proactor" => serve_ringloop(Backend::Proactor, true),
        "axum-tokio" => serve_tokio(true),
        _ => cli::usage_error(&format!("unknown server kind {kind:?}"), &usage()),
    }
}

// Starts a server pinned to core 0 and waits for its port; the caller
// owns the child and waits on it.
fn spawn(kind: &str) -> (Child, u16) {
    cli::spawn_server(true, &[], ["--server", kind], Duration::from_secs(30))
        .unwrap_or_else(|| panic!("server {kind} did not print its port"))
}

/// Requests per second of `wrk -t1 -c{conns}` against `port` (wrk pinned
/// to core 1), or `None` if wrk failed or reported errors.
fn wrk(port: u16, conns: usize, secs: u32) -> Option<f64> {
    let out = Command::new("timeout")
        .arg(format!("{}", secs + 20))
        .args(["taskset", "-c", "1", "wrk", "-t1"])
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("!!! wrk reported errors against port {port}:\n{text}");
        return None;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The table: interleaved rounds, fresh servers; returns the JSON rows.
fn bench(conc: &[usize], rounds: usize, secs: u32) -> Vec<String> {
    if Command::new("wrk").arg("-v").output().is_err() {
        eprintln!("!!! wrk is not installed (apt-get install wrk): hyper bench SKIPPED");
        return Vec::new();
    }
    print!("\n| HTTP hello, wrk -t1, req/s | conns |");
    for s in SERVERS {
        print!(" {s} |");
    }
    println!("{RATIO_NAMES}");
    println!(
        "|---|---:|{}---|---|---|---|",
        "---:|".repeat(SERVERS.len())
    );
    let mut json = Vec::new();
    for &c in conc {
        let mut res: Vec<Vec<f64>> = vec![Vec::new(); SERVERS.len()];
        for _ in 0..rounds {
            for (i, kind) in SERVERS.iter().enumerate() {
                let (mut child, port) = spawn(kind);
                let r = wrk(port, c, secs);
                let _ = child.kill();
                let _ = child.wait();
                res[i].push(r.unwrap_or_else(|| panic!("wrk failed against {kind}")));
            }
        }
        let ratios: Vec<(f64, f64, f64)> = RATIOS
            .iter()
            .map(|&(a, b)| {
                let mut r: Vec<f64> = res[a].iter().zip(&res[b]).map(|(x, y)| x / y).collect();
                let lo = r.iter().cloned().fold(f64::MAX, f64::min);
                let hi = r.iter().cloned().fold(0.0, f64::max);
                (median(&mut r), lo, hi)
            })
            .collect();
        let meds: Vec<f64> = res.iter_mut().map(|v| median(v)).collect();
        print!("| | {c} |");
        for m in &meds {
            print!(" {m:.0} |");
        }
        for (m, lo, hi) in &ratios {
            print!(" {m:.2} ({lo:.2}–{hi:.2}) |");
        }
        println!();
        let fields: Vec<String> = SERVERS
            .iter()
            .zip(&meds)
            .map(|(s, m)| format!("\"{s}\":{m:.0}"))
            .collect();
        json.push(format!("{{\"conns\":{c},{}}}", fields.join(",")));
    }
    json
}

// ------------------------------------------------------------------ axum check

/// The axum router on ringloop, on `backend`, asked by hyper's client on
/// ringloop over HTTP/1.1 and HTTP/2; panics on a wrong answer.
fn axum_check(backend: Backend) {
    let lp = EventLoop::with_backend(backend).expect("loop");
    lp.run_until_complete(async move {
        let app = router();
        let server =
            ringloop::hyper::serve(move |_t| TowerToHyperService::new(app.clone()), local(0))
                .await
                .expect("serve");
        let port = server.sockets()[0].as_socket().unwrap().port();
        let to = || ConnectOptions {
            host: Some("127.0.0.1".into()),
            port,
            ..Default::default()
        };
        let req = |m: &str, path: &str, body: &'static str| {
            Request::builder()
                .method(m)
                .uri(format!("http://127.0.0.1{path}"))
                .header("host", "127.0.0.1")
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap()
        };
        let text = |res: Response<Incoming>| async move {
            let status = res.status().as_u16();
            let b = res.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(b.to_vec()).unwrap())
        };
        let io = ringloop::hyper::connect(to()).await.expect("connect");
        let mut h1 = ringloop::hyper::http1_client(io).await.expect("h1");
        let io = ringloop::hyper::connect(to()).await.expect("connect");
        let mut h2 = ringloop::hyper::http2_client(io).await.expect("h2");
        let cases = [
            (("GET", "/", ""), (200, "Hello, world!")),
            (("GET", "/users/7", ""), (200, "user 7")),
            (("POST", "/echo", "echo me"), (200, "echo me")),
            (("GET", "/nowhere", ""), (404, "")),
        ];
        for ((m, path, body), (status, want)) in cases {
            let got = text(h1.send_request(req(m, path, body)).await.unwrap()).await;
            assert_eq!(got, (status, want.to_owned()), "HTTP/1.1 {m} {path}");
            let got = text(h2.send_request(req(m, path, body)).await.unwrap()).await;
            assert_eq!(got, (status, want.to_owned()), "HTTP/2 {m} {path}");
        }
        drop((h1, h2));
        server.shutdown();
        server.wait_closed().await;
    })
    .expect("axum check");
    println!(
        "axum Router on ringloop ({backend}): HTTP/1.1 and HTTP/2, route, path parameter, body, 404 OK"
    );
}

// ------------------------------------------------------------------ main

fn usage() -> String {
    format!(
        "usage: hyper [--quick]
       hyper --server KIND

  (no arguments)   the axum check, then the whole benchmark (wrk -t1, 10 and
                   100 connections, 5 interleaved rounds of 2 s)
  --quick          the axum check and one 1 s round at 10 connections (CI)
  --server KIND    run one server and print `PORT p`; KIND is one of:
                   {}
  RUST_LOG=ringloop=debug shows the loop's own messages",
        SERVERS.join("\n                   ")
    )
}

fn main() {
    cli::init_logging();
    let mut quick = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--help" | "-h" => return println!("{}", usage()),
            "--quick" => quick = true,
            "--server" => match args.next() {
                Some(k) if SERVERS.contains(&k.as_str()) => return serve(&k),
                Some(k) => cli::usage_error(&format!("unknown server kind {k:?}"), &usage()),
                None => cli::usage_error("--server needs a KIND", &usage()),
            },
            _ => cli::usage_error(&format!("unknown argument {a:?}"), &usage()),
        }
    }
    for backend in [Backend::Proactor, Backend::Selector] {
        axum_check(backend);
    }
    let json = if quick {
        bench(&[10], 1, 1)
    } else {
        bench(&[10, 100], 5, 2)
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("hyper.json"),
        format!("{{\"quick\":{quick},\"rows\":[{}]}}\n", json.join(",")),
    );
}
