//! Network benchmark: TCP echo servers of ringloop (proactor: Protocol and
//! streams APIs; selector) and of the peers (tokio current_thread, monoio
//! io_uring and legacy), and the *floor* (`floor.rs`: the same data path on
//! a raw io_uring with nothing above it, the most any server can do here
//! with small messages),
//! each in its own process pinned to core 0, driven by one load client
//! pinned to core 1. Rounds are interleaved, the server is fresh each round,
//! a warm-up is discarded; medians and min–max.
//!
//! Beside the rates: the server's CPU time per request (user + system
//! time of the server process from `/proc/PID/stat` over the round,
//! divided by the requests it answered), which still compares the servers
//! where the load client sets the pace; and syscalls per request (`strace -f -c` on the server
//! over a fixed request count) and user instructions per request (callgrind,
//! the difference of N and 2N requests, cancelling start-up), for the
//! ringloop servers.
//!
//! `cargo run --release -p ringloop-compare --bin net [-- --quick]`.
//! Results: Markdown on stdout, `target/bench/net.json`, `target/bench/net.svg`.

use std::cell::Cell;
use std::process::{Child, Command};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringloop::prelude::*;
use ringloop::{BaseProtocol, Protocol, RecvBuf, Transport};

#[path = "../cli.rs"]
mod cli;
#[path = "../../../common/load.rs"]
mod client;
#[path = "../floor.rs"]
mod floor;
use client::{load, run};

const SERVERS: [&str; 7] = [
    "ringloop-proactor",
    "ringloop-proactor-streams",
    "ringloop-selector",
    "tokio",
    "monoio-uring",
    "monoio-legacy",
    "floor-uring",
];

/// Servers `--server` runs that the tables leave out: the floor over an
/// incremental buffer ring (`IOU_PBUF_RING_INC`) and with receive bundles,
/// issue 17's experiment (see `floor.rs` and `docs/benchmarks.md`).
const EXTRA_SERVERS: [&str; 2] = ["floor-uring-inc", "floor-uring-bundle"];

/// The echo table's ratio columns: (numerator, denominator) in `SERVERS`.
/// The last one, floor/tokio, is the ceiling: what a server with no
/// overhead at all gains over tokio on this machine.
const ECHO_RATIOS: [(usize, usize); 5] = [(0, 2), (0, 3), (0, 4), (0, 6), (6, 3)];
const ECHO_RATIO_NAMES: &str =
    " proactor/selector | proactor/tokio | proactor/monoio-uring | proactor/floor | floor/tokio |";
const HTTP_RATIOS: [(usize, usize); 3] = [(0, 1), (0, 2), (0, 3)];

// ------------------------------------------------------------------ servers

/// Echoes each receive buffer back as it is (no copy, no allocation, like
/// the peers writing back from the buffer they read into).
struct Echo {
    t: Option<Transport>,
    lost: Rc<Cell<usize>>,
    quit_after: usize,
}

impl BaseProtocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
    fn connection_lost(&mut self, _: Option<Error>) {
        self.lost.set(self.lost.get() + 1);
        if self.quit_after > 0 && self.lost.get() >= self.quit_after {
            get_running_loop().unwrap().stop();
        }
    }
}

impl Protocol for Echo {
    fn data_received_owned(&mut self, data: RecvBuf) {
        if let Some(t) = &self.t {
            let _ = t.write(data);
        }
    }
    // Data that did not arrive in a pool buffer (rare: the pool ran dry).
    fn data_received(&mut self, data: &[u8]) {
        if let Some(t) = &self.t {
            let _ = t.write(data.to_vec());
        }
    }
}

fn announce(port: u16) {
    use std::io::Write;
    println!("PORT {port}");
    std::io::stdout().flush().unwrap();
}

/// The ringloop servers' options: loopback, a deep backlog for c=1000.
fn opts() -> ringloop::ServerOptions {
    ringloop::ServerOptions {
        hosts: vec!["127.0.0.1".into()],
        backlog: 4096,
        ..Default::default()
    }
}

/// A ringloop server; with `quit_after > 0` it exits once that many
/// connections have closed (for the counters).
fn serve_ringloop(backend: Backend, streams: bool, quit_after: usize) {
    let lp = EventLoop::with_backend(backend).expect("loop");
    let lost = Rc::new(Cell::new(0));
    let l2 = lost.clone();
    let server = lp
        .run_until_complete(async move {
            let server = if streams {
                ringloop::start_server_with(
                    |r, w| async move {
                        loop {
                            match r.read(64 * 1024).await {
                                Ok(d) if !d.is_empty() => {
                                    if w.write(d).is_err() || w.drain().await.is_err() {
                                        return;
                                    }
                                }
                                _ => break,
                            }
                        }
                        w.close();
                    },
                    ringloop::DEFAULT_LIMIT,
                    opts(),
                )
                .await
            } else {
                let lp = get_running_loop().unwrap();
                lp.create_server_with(
                    move || Echo {
                        t: None,
                        lost: l2.clone(),
                        quit_after,
                    },
                    opts(),
                )
                .await
            }
            .expect("server");
            announce(server.sockets()[0].as_socket().unwrap().port());
            server
        })
        .unwrap();
    lp.run_forever().unwrap();
    server.close();
    let _ = lost;
    lp.close().unwrap();
}

// ------------------------------------------------------------- HTTP hello

const HTTP_SERVERS: [&str; 5] = [
    "http-ringloop-proactor",
    "http-ringloop-selector",
    "http-tokio",
    "http-monoio-uring",
    "http-monoio-legacy",
];

const HTTP_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world!";

/// The same request handling for every HTTP server: each complete request
/// head in `buf` (keep-alive, pipelining) gets the fixed answer in `out`.
/// False if the buffer grew past any sane header (one bad client costs
/// one connection).
fn http_answer(buf: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
    let mut start = 0;
    while let Some(end) = buf[start..].windows(4).position(|w| w == b"\r\n\r\n") {
        out.extend_from_slice(HTTP_RESPONSE);
        start += end + 4;
    }
    buf.drain(..start);
    buf.len() <= 64 * 1024
}

struct Http {
    t: Option<Transport>,
    buf: Vec<u8>,
    out: bytes::BytesMut,
    scratch: Vec<u8>,
}

impl BaseProtocol for Http {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
}

impl Protocol for Http {
    fn data_received(&mut self, data: &[u8]) {
        let Some(t) = &self.t else { return };
        self.buf.extend_from_slice(data);
        if !http_answer(&mut self.buf, &mut self.scratch) {
            return t.abort();
        }
        if !self.scratch.is_empty() {
            self.out.extend_from_slice(&self.scratch);
            self.scratch.clear();
            let _ = t.write(self.out.split().freeze());
        }
    }
}

fn serve_http_ringloop(backend: Backend) {
    let lp = EventLoop::with_backend(backend).expect("loop");
    lp.run_until_complete(async {
        let lp = get_running_loop().unwrap();
        let server = lp
            .create_server_with(
                || Http {
                    t: None,
                    buf: Vec::new(),
                    out: bytes::BytesMut::new(),
                    scratch: Vec::new(),
                },
                opts(),
            )
            .await
            .expect("server");
        announce(server.sockets()[0].as_socket().unwrap().port());
        server.serve_forever().await.unwrap();
    })
    .unwrap();
}

/// A peer server on tokio `current_thread` + `LocalSet`: TCP echo (writes
/// back from the buffer it read into) or, with `http`, HTTP hello.
fn serve_tokio(http: bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        announce(l.local_addr().unwrap().port());
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            tokio::task::spawn_local(async move {
                let (mut rbuf, mut buf, mut out) = (vec![0u8; 64 * 1024], Vec::new(), Vec::new());
                loop {
                    let n = match s.read(&mut rbuf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let reply = if http {
                        buf.extend_from_slice(&rbuf[..n]);
                        out.clear();
                        if !http_answer(&mut buf, &mut out) {
                            return;
                        }
                        &out[..]
                    } else {
                        &rbuf[..n]
                    };
                    if s.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// A peer server on monoio (owned buffers: read and write move them in and
/// out): TCP echo or, with `http`, HTTP hello.
async fn monoio_serve(http: bool) {
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
    let l = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
    announce(l.local_addr().unwrap().port());
    loop {
        let (mut s, _) = l.accept().await.unwrap();
        let _ = s.set_nodelay(true);
        monoio::spawn(async move {
            let (mut rbuf, mut buf, mut out) = (vec![0u8; 64 * 1024], Vec::new(), Vec::new());
            loop {
                let (r, b) = s.read(rbuf).await;
                rbuf = b;
                let n = match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if http {
                    buf.extend_from_slice(&rbuf[..n]);
                    out.clear();
                    if !http_answer(&mut buf, &mut out) {
                        return;
                    }
                    let (w, o) = s.write_all(out).await;
                    out = o;
                    if w.is_err() {
                        return;
                    }
                } else {
                    rbuf.truncate(n);
                    let (w, b) = s.write_all(rbuf).await;
                    rbuf = b;
                    if w.is_err() {
                        return;
                    }
                }
                rbuf.resize(64 * 1024, 0);
            }
        });
    }
}

/// Requests per second `wrk -t1 -c{conns}` measured against `port` (wrk
/// pinned to core 1) and the requests it made in all, or `None` if wrk
/// failed.
fn wrk(port: u16, conns: usize, secs: u32) -> Option<(f64, usize)> {
    let out = Command::new("taskset")
        .args(["-c", "1", "wrk", "-t1"])
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("!!! wrk reported errors against port {port}:\n{text}");
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())?;
    // "  123456 requests in 2.00s, 10.00MB read"
    let total = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())?;
    Some((rps, total))
}

// ------------------------------------------------------------- server CPU

/// The server CPU per request of one round, in µs: the CPU time `pid`
/// used between `before` and now over `requests` (NaN if unknown).
fn cpu_us_per_request(pid: u32, before: Option<f64>, requests: usize) -> f64 {
    match (before, cli::process_cpu_secs(pid)) {
        (Some(b), Some(a)) if requests > 0 => (a - b) * 1e6 / requests as f64,
        _ => f64::NAN,
    }
}

/// Medians of each server's per-round CPU figures, as the JSON field
/// `"cpu_us_per_request":{…}` (null where unknown).
fn cpu_medians(names: &[&str], cpu: &mut [Vec<f64>]) -> (Vec<f64>, String) {
    let meds: Vec<f64> = cpu
        .iter_mut()
        .map(|v| {
            v.retain(|x| x.is_finite());
            if v.is_empty() { f64::NAN } else { median(v) }
        })
        .collect();
    let fields: Vec<String> = names
        .iter()
        .zip(&meds)
        .map(|(s, m)| match m.is_finite() {
            true => format!("\"{s}\":{m:.3}"),
            false => format!("\"{s}\":null"),
        })
        .collect();
    (
        meds,
        format!("\"cpu_us_per_request\":{{{}}}", fields.join(",")),
    )
}

/// Prints the server-CPU table: one row per load, one column per server.
fn print_cpu_table(title: &str, names: &[&str], rows: &[(String, Vec<f64>)]) {
    if rows.is_empty() {
        return;
    }
    print!("\n| {title} |");
    for s in names {
        print!(" {} |", s.trim_start_matches("http-"));
    }
    println!("\n|---|{}", "---:|".repeat(names.len()));
    for (head, meds) in rows {
        print!("| {head} |");
        for m in meds {
            match m.is_finite() {
                true => print!(" {m:.2} |"),
                false => print!(" n/a |"),
            }
        }
        println!();
    }
}

/// The HTTP table: `wrk -t1` against each HTTP server, interleaved rounds,
/// fresh server per round. Returns the JSON rows.
fn http_bench(conc: &[usize], rounds: usize, secs: u32) -> Vec<String> {
    if Command::new("wrk").arg("-v").output().is_err() {
        eprintln!("!!! wrk is not installed (apt-get install wrk): HTTP bench SKIPPED");
        return Vec::new();
    }
    print!("\n| HTTP hello, wrk -t1 | conns |");
    for s in HTTP_SERVERS {
        print!(" {} |", s.trim_start_matches("http-"));
    }
    println!(" proactor/selector | proactor/tokio | proactor/monoio-uring |");
    println!(
        "|---|---:|{}---|---|---|",
        "---:|".repeat(HTTP_SERVERS.len())
    );
    let mut json = Vec::new();
    let mut cpu_rows = Vec::new();
    for &c in conc {
        let mut res: Vec<Vec<f64>> = vec![Vec::new(); HTTP_SERVERS.len()];
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); HTTP_SERVERS.len()];
        for _ in 0..rounds {
            for (i, kind) in HTTP_SERVERS.iter().enumerate() {
                let (mut child, port) = spawn(kind, &[], 0);
                let before = cli::process_cpu_secs(child.id());
                let (rps, total) = wrk(port, c, secs).unwrap_or((0.0, 0));
                res[i].push(rps);
                cpu[i].push(cpu_us_per_request(child.id(), before, total));
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let (cpu_meds, cpu_json) = cpu_medians(&HTTP_SERVERS, &mut cpu);
        cpu_rows.push((format!("HTTP hello, {c} conns"), cpu_meds));
        let (_, row) = report_row(
            &format!("| req/s | {c} |"),
            &format!("\"conns\":{c},{cpu_json}"),
            &HTTP_SERVERS,
            &mut res,
            &HTTP_RATIOS,
            "",
        );
        json.push(row);
    }
    print_cpu_table(
        "server CPU µs / request, HTTP (wrk -t1)",
        &HTTP_SERVERS,
        &cpu_rows,
    );
    json
}

/// Runs the server `kind` (an `http-` prefix: the HTTP hello variant).
fn serve(kind: &str, quit_after: usize) {
    let (http, base) = match kind.strip_prefix("http-") {
        Some(b) => (true, b),
        None => (false, kind),
    };
    let ringloop = |backend| match http {
        true => serve_http_ringloop(backend),
        false => serve_ringloop(backend, false, quit_after),
    };
    match base {
        "ringloop-proactor" => ringloop(Backend::Proactor),
        "ringloop-proactor-streams" if !http => serve_ringloop(Backend::Proactor, true, quit_after),
        "ringloop-selector" => ringloop(Backend::Selector),
        "floor-uring" if !http => floor::serve(announce, floor::Ring::Plain),
        "floor-uring-inc" if !http => floor::serve(announce, floor::Ring::Inc),
        "floor-uring-bundle" if !http => floor::serve(announce, floor::Ring::Bundle),
        "tokio" => serve_tokio(http),
        "monoio-uring" => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .build()
            .unwrap()
            .block_on(monoio_serve(http)),
        "monoio-legacy" => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap()
            .block_on(monoio_serve(http)),
        _ => panic!("unknown server {kind}"),
    }
}

fn spawn(kind: &str, wrapper: &[&str], quit_after: usize) -> (Child, u16) {
    match spawn_within(kind, wrapper, quit_after, Duration::from_secs(30)) {
        Some(r) => r,
        None => panic!("server {kind} did not print its port"),
    }
}

/// Starts a server (under `wrapper`, e.g. strace or valgrind) and waits at
/// most `limit` for its port; `None` (the child killed) if it never comes.
/// The caller owns the returned child and waits on it.
fn spawn_within(
    kind: &str,
    wrapper: &[&str],
    quit_after: usize,
    limit: Duration,
) -> Option<(Child, u16)> {
    let q = quit_after.to_string();
    cli::spawn_server(true, wrapper, ["--server", kind, "--quit-after", &q], limit)
}

// ------------------------------------------------------------------ client

/// Prints one table row (medians of each server's rounds, then the ratios
/// `cmp` of one server's rounds to another's, median with min–max) and
/// returns the medians and the row as JSON.
fn report_row(
    head: &str,
    json_head: &str,
    names: &[&str],
    res: &mut [Vec<f64>],
    cmp: &[(usize, usize)],
    tail: &str,
) -> (Vec<f64>, String) {
    let ratio = |&(a, b): &(usize, usize)| {
        let mut r: Vec<f64> = res[a].iter().zip(&res[b]).map(|(x, y)| x / y).collect();
        let lo = r.iter().cloned().fold(f64::MAX, f64::min);
        let hi = r.iter().cloned().fold(0.0, f64::max);
        (median(&mut r), lo, hi)
    };
    let ratios: Vec<_> = cmp.iter().map(ratio).collect();
    let meds: Vec<f64> = res.iter_mut().map(|v| median(v)).collect();
    assert!(
        meds.iter().all(|m| *m > 0.0),
        "a server answered nothing: {head}"
    );
    print!("{head}");
    for m in &meds {
        print!(" {m:.0} |");
    }
    for (m, lo, hi) in ratios {
        print!(" {m:.2} ({lo:.2}–{hi:.2}) |");
    }
    println!("{tail}");
    let fields: Vec<String> = names
        .iter()
        .zip(&meds)
        .map(|(s, m)| format!("\"{s}\":{m:.0}"))
        .collect();
    let json = format!("{{{json_head},{}}}", fields.join(","));
    (meds, json)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

// ------------------------------------------------------------------ counters

/// Waits for a counter run's server to exit, at most `limit`; kills it
/// (and returns false) past that.
fn wait_bounded(child: &mut Child, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Runs the load in a thread so a stuck server cannot hang the bench.
fn load_bounded(port: u16, size: usize, conns: usize, n: usize, limit: Duration) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        load(port, size, conns, 0.0, Some(n));
        let _ = tx.send(());
    });
    rx.recv_timeout(limit).is_ok()
}

/// Syscalls per request of a ringloop server (strace over `n` requests).
fn syscalls_per_request(kind: &str, size: usize, conns: usize, n: usize) -> Option<f64> {
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("!!! strace is not installed: syscall counts SKIPPED");
        return None;
    }
    let out = std::env::temp_dir().join(format!("ringloop-strace-{}-{kind}", std::process::id()));
    let o = out.to_string_lossy().into_owned();
    let limit = Duration::from_secs(60);
    let Some((mut child, port)) =
        spawn_within(kind, &["strace", "-f", "-c", "-o", &o], conns, limit)
    else {
        eprintln!("!!! {kind} under strace never listened: SKIPPED");
        return None;
    };
    if !load_bounded(port, size, conns, n, limit) || !wait_bounded(&mut child, limit) {
        eprintln!("!!! {kind} under strace did not finish within {limit:?}: SKIPPED");
        let _ = child.kill();
        return None;
    }
    let text = std::fs::read_to_string(&out).ok()?;
    let _ = std::fs::remove_file(&out);
    let total: f64 = text
        .lines()
        .find(|l| l.trim_end().ends_with("total"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(total / n as f64)
}

/// User instructions per request of a ringloop server: callgrind totals
/// for `n` and `2n` requests; their difference over `n` cancels start-up.
fn instructions_per_request(kind: &str, size: usize, conns: usize, n: usize) -> Option<f64> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("!!! valgrind is not installed: instruction counts SKIPPED");
        return None;
    }
    let mut totals = Vec::new();
    for reqs in [n, 2 * n] {
        let out =
            std::env::temp_dir().join(format!("ringloop-cg-{}-{kind}-{reqs}", std::process::id()));
        let o = format!("--callgrind-out-file={}", out.to_string_lossy());
        let limit = Duration::from_secs(60);
        let Some((mut child, port)) =
            spawn_within(kind, &["valgrind", "--tool=callgrind", &o], conns, limit)
        else {
            eprintln!("!!! {kind} under callgrind never listened (valgrind and io_uring): SKIPPED");
            return None;
        };
        if !load_bounded(port, size, conns, reqs, limit) || !wait_bounded(&mut child, limit) {
            eprintln!("!!! {kind} under callgrind did not finish within {limit:?}: SKIPPED");
            let _ = child.kill();
            return None;
        }
        let text = std::fs::read_to_string(&out).ok()?;
        let _ = std::fs::remove_file(&out);
        let t: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("totals: "))?
            .trim()
            .parse()
            .ok()?;
        totals.push(t);
    }
    Some((totals[1] - totals[0]) / n as f64)
}

// ------------------------------------------------------------------ output

fn svg(rows: &[(usize, usize, Vec<f64>)], conns: usize) -> String {
    let rows: Vec<_> = rows.iter().filter(|r| r.1 == conns).collect();
    let max = rows
        .iter()
        .flat_map(|r| r.2.iter())
        .cloned()
        .fold(1.0, f64::max);
    let colors = [
        "#1f77b4", "#4c9be8", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f",
    ];
    let (w, h, pad) = (720.0, 360.0, 50.0);
    let group = (w - 2.0 * pad) / rows.len().max(1) as f64;
    let bar = group / (SERVERS.len() as f64 + 1.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n<text x=\"{pad}\" y=\"20\" font-size=\"14\">TCP echo, {conns} connections: requests/s by message size</text>\n",
        h + 20.0 + 13.0 * SERVERS.len() as f64
    );
    // The scale: the tallest bar's value at its top, zero at the base.
    s += &format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{max:.0}</text>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">0</text>\n",
        pad - 4.0,
        pad + 4.0,
        pad - 4.0,
        h - pad
    );
    for (gi, r) in rows.iter().enumerate() {
        for (si, v) in r.2.iter().enumerate() {
            let bh = (h - 2.0 * pad) * v / max;
            let x = pad + gi as f64 * group + si as f64 * bar;
            let y = h - pad - bh;
            s += &format!(
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"><title>{}: {v:.0} req/s</title></rect>\n",
                bar * 0.9,
                colors[si % colors.len()],
                SERVERS[si]
            );
        }
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{} KiB</text>\n",
            pad + gi as f64 * group + group / 2.0 - bar / 2.0,
            h - pad + 15.0,
            r.0 / 1024
        );
    }
    for (si, name) in SERVERS.iter().enumerate() {
        let y = h + 5.0 + si as f64 * 13.0;
        s += &format!(
            "<rect x=\"{pad}\" y=\"{y}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{name}</text>\n",
            colors[si % colors.len()],
            pad + 15.0,
            y + 9.0
        );
    }
    s + "</svg>\n"
}

/// The usage, with every server kind `--server` takes.
fn usage() -> String {
    let kinds: Vec<&str> = SERVERS
        .iter()
        .chain(EXTRA_SERVERS.iter())
        .chain(HTTP_SERVERS.iter())
        .copied()
        .collect();
    format!(
        "usage: net [--quick | --counters-only | --http-only]
       net --server KIND [--quit-after N]
       net --client PORT SIZE CONNS SECS [REQUESTS]

  (no arguments)    the whole benchmark: TCP echo, HTTP hello (wrk), each with
                    the servers' CPU µs per request (/proc/PID/stat), counters
  --quick           the few-second CI form
  --counters-only   only syscalls and instructions per request
  --sizes LIST      only these echo sizes (bytes, or KiB with k: 100k), no HTTP
  --conns LIST      only these connection counts, no HTTP
  --read-chunk N    the load client reads at most N bytes per receive
  --http-only       only the HTTP table (no echo rows, no counters)
  --server KIND     run one server and print `PORT p` (for profiling); with
                    --quit-after N, exit once N connections have closed.
                    KIND is one of:
                    {}
  --client ...      one load run of SIZE-byte echoes over CONNS connections
                    for SECS seconds (or REQUESTS requests) against PORT
  RUST_LOG=ringloop=debug shows the loop's own messages",
        kinds.join("\n                    ")
    )
}

/// A comma-separated list of numbers after `flag` (sizes may end in `k`:
/// KiB).
fn list(args: &mut impl Iterator<Item = String>, flag: &str) -> Vec<usize> {
    let v: String = value(args, flag, "a comma-separated list");
    v.split(',')
        .map(|p| match p.strip_suffix('k') {
            Some(k) => k.parse::<usize>().map(|n| n * 1024),
            None => p.parse(),
        })
        .collect::<Result<_, _>>()
        .unwrap_or_else(|_| {
            cli::usage_error(&format!("{flag}: {v:?} is not a list of numbers"), &usage())
        })
}

/// The value after `flag`, parsed, or a usage error.
fn value<T: std::str::FromStr>(
    args: &mut impl Iterator<Item = String>,
    flag: &str,
    what: &str,
) -> T {
    match args.next() {
        Some(v) => v.parse().unwrap_or_else(|_| {
            cli::usage_error(&format!("{flag}: {what} {v:?} does not parse"), &usage())
        }),
        None => cli::usage_error(&format!("{flag} needs {what}"), &usage()),
    }
}

fn main() {
    cli::init_logging();
    let (mut quick, mut counters_only, mut quit) = (false, false, 0usize);
    let mut http_only = false;
    let (mut only_sizes, mut only_conns) = (None::<Vec<usize>>, None::<Vec<usize>>);
    let (mut server, mut client) = (None::<String>, None);
    let mut args = std::env::args().skip(1).peekable();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--help" | "-h" => return println!("{}", usage()),
            "--quick" => quick = true,
            "--counters-only" => counters_only = true,
            "--http-only" => http_only = true,
            "--sizes" => only_sizes = Some(list(&mut args, "--sizes")),
            "--conns" => only_conns = Some(list(&mut args, "--conns")),
            "--read-chunk" => {
                let n: usize = value(&mut args, "--read-chunk", "a byte count");
                client::READ_CHUNK.store(n, std::sync::atomic::Ordering::Relaxed);
            }
            "--quit-after" => quit = value(&mut args, "--quit-after", "a number"),
            "--server" => match args.next() {
                Some(k)
                    if [&SERVERS[..], &EXTRA_SERVERS, &HTTP_SERVERS]
                        .iter()
                        .any(|l| l.contains(&k.as_str())) =>
                {
                    server = Some(k)
                }
                Some(k) => cli::usage_error(&format!("unknown server kind {k:?}"), &usage()),
                None => cli::usage_error("--server needs a KIND", &usage()),
            },
            "--client" => {
                let port: u16 = value(&mut args, "--client", "a PORT");
                let size: usize = value(&mut args, "--client", "a SIZE");
                let conns: usize = value(&mut args, "--client", "a number of CONNS");
                let secs: f64 = value(&mut args, "--client", "SECS");
                let reqs = match args.peek() {
                    Some(r) if !r.starts_with("--") => {
                        Some(value::<usize>(&mut args, "--client", "REQUESTS"))
                    }
                    _ => None,
                };
                client = Some((port, size, conns, secs, reqs));
            }
            _ => cli::usage_error(&format!("unknown argument {a:?}"), &usage()),
        }
    }
    if let Some(kind) = server {
        serve(&kind, quit);
        return;
    }
    if let Some((port, size, conns, secs, reqs)) = client {
        // One load run against a server started by hand (for profiling).
        let r = load(port, size, conns, secs, reqs);
        println!("{r:.0} req/s");
        return;
    }
    let (sizes, conc, rounds, secs): (&[usize], &[usize], usize, f64) = if counters_only {
        (&[], &[], 0, 0.0)
    } else if quick {
        (&[1024], &[10], 1, 0.3)
    } else {
        (&[1024, 10 * 1024, 100 * 1024], &[1, 10, 100, 1000], 5, 1.0)
    };
    // (--sizes / --conns: only those echo rows, and no HTTP or counters.)
    let partial = only_sizes.is_some() || only_conns.is_some();
    // (--http-only: the HTTP table alone.)
    let sizes: Vec<usize> = if http_only {
        Vec::new()
    } else {
        only_sizes.unwrap_or_else(|| sizes.to_vec())
    };
    let conc: Vec<usize> = only_conns.unwrap_or_else(|| conc.to_vec());
    let counters_only = counters_only && !partial && !http_only;
    let run_http = !counters_only && (http_only || !partial);
    let run_counters = !quick && !partial && !http_only;
    // SAFETY: cpu_set_t is plain data; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(1, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max.min(65536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    let mut table: Vec<(usize, usize, Vec<f64>)> = Vec::new();
    let mut json = Vec::new();
    if !sizes.is_empty() {
        print!("| size | conns |");
        for s in SERVERS {
            print!(" {s} |");
        }
        println!("{ECHO_RATIO_NAMES} client idle |");
        println!(
            "|---:|---:|{}{}---:|",
            "---:|".repeat(SERVERS.len()),
            "---|".repeat(ECHO_RATIOS.len())
        );
    }
    let mut cpu_rows = Vec::new();
    for &size in &sizes {
        for &c in &conc {
            let mut res: Vec<Vec<f64>> = vec![Vec::new(); SERVERS.len()];
            let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); SERVERS.len()];
            // The client's idle share against the floor: how much faster
            // than the floor any server could have been measured.
            let mut idle = Vec::new();
            for _ in 0..rounds {
                for (i, kind) in SERVERS.iter().enumerate() {
                    let (mut child, port) = spawn(kind, &[], 0);
                    load(port, size, 1, 0.05, None); // warm-up, discarded
                    let before = cli::process_cpu_secs(child.id());
                    let r = run(port, size, c, secs, None);
                    res[i].push(r.rps);
                    cpu[i].push(cpu_us_per_request(child.id(), before, r.requests));
                    if *kind == "floor-uring" {
                        idle.push(r.idle);
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            let idle = median(&mut idle);
            let (cpu_meds, cpu_json) = cpu_medians(&SERVERS, &mut cpu);
            cpu_rows.push((format!("{} KiB, {c} conns", size / 1024), cpu_meds));
            let (meds, row) = report_row(
                &format!("| {} KiB | {c} |", size / 1024),
                &format!(
                    "\"size\":{size},\"conns\":{c},\"client_idle_vs_floor\":{idle:.3},{cpu_json}"
                ),
                &SERVERS,
                &mut res,
                &ECHO_RATIOS,
                &format!(" {:.0}% |", idle * 100.0),
            );
            json.push(row);
            table.push((size, c, meds));
        }
    }
    if !sizes.is_empty() {
        print_cpu_table("server CPU µs / request, echo", &SERVERS, &cpu_rows);
    }
    let http = if !run_http {
        Vec::new()
    } else if quick {
        http_bench(&[10], 1, 1)
    } else {
        http_bench(&[10, 100], rounds, 2)
    };
    // Counters on the ringloop servers, 1 KiB echo at c=100 (not in quick
    // mode: tracing is slow).
    let (cn, creq) = (100, 20_000);
    let mut counters = Vec::new();
    if run_counters {
        println!(
            "\n| server (1 KiB echo, {cn} conns) | syscalls / request | user instructions / request |"
        );
        println!("|---|---:|---:|");
    }
    for kind in ["ringloop-proactor", "ringloop-selector"]
        .into_iter()
        .filter(|_| run_counters)
    {
        let sc = syscalls_per_request(kind, 1024, cn, creq);
        let ins = instructions_per_request(kind, 1024, cn, creq / 10);
        let f = |v: Option<f64>, p: usize| v.map_or("n/a".to_string(), |x| format!("{x:.p$}"));
        println!("| {kind} | {} | {} |", f(sc, 3), f(ins, 0));
        counters.push(format!(
            "{{\"server\":\"{kind}\",\"syscalls_per_request\":{},\"instructions_per_request\":{}}}",
            sc.map_or("null".into(), |v| format!("{v:.4}")),
            ins.map_or("null".into(), |v| format!("{v:.1}"))
        ));
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let name = if counters_only {
        "net-counters.json"
    } else {
        "net.json"
    };
    std::fs::write(
        dir.join(name),
        format!(
            "{{\"rounds\":{rounds},\"secs\":{secs},\"echo\":[{}],\"http\":[{}],\"counters\":[{}]}}\n",
            json.join(","),
            http.join(","),
            counters.join(",")
        ),
    )
    .unwrap();
    let chart_conns = if quick { 10 } else { 100 };
    if !counters_only {
        std::fs::write(dir.join("net.svg"), svg(&table, chart_conns)).unwrap();
    }
    println!("\nrounds={rounds} secs={secs}; target/bench/net.json, target/bench/net.svg");
}
