//! Memory through TLS to a slow reader: 1 GiB written by a TLS server as
//! fast as flow control lets it, to a TLS client on the same loop that
//! stops reading for a millisecond after every MiB. What is measured is the
//! process's peak resident memory above what it held before the transfer
//! (`VmHWM` against `VmRSS`, from `/proc/self/status`); the run fails if
//! that exceeds `BOUND`, or if a byte arrives out of order. On both
//! backends, each in a fresh process so the peaks are its own.
//!
//! `cargo bench --bench tls_slow_reader` (`-- --quick` for CI: 64 MiB).
//! (The suite's `flow_control_through_tls_*` tests prove the writer pauses
//! with 32 MiB; this is the full-size transfer, too slow for the
//! suite under the sanitizer.)

#[path = "../uring-tests/tls_support.rs"]
mod tls_support;

use std::cell::RefCell;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringloop::prelude::*;
use ringloop::{BaseProtocol, Protocol, Transport};
use tls_support::*;

/// Peak growth allowed: the write buffers' high-water marks, the TLS
/// layers' records, the receive pool and the allocator's slack, with room
/// to spare. What the run must never do is grow with the transfer.
const BOUND: u64 = 64 << 20;
const CHUNK: usize = 64 * 1024;
/// The reader stops for `NAP` after every `EVERY` bytes.
const EVERY: usize = 1 << 20;
const NAP: Duration = Duration::from_millis(1);

fn status_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} missing from /proc/self/status"))
}

/// Writes `total` bytes of a pattern as fast as flow control allows.
struct Pump {
    t: Option<Transport>,
    total: usize,
    written: usize,
    pattern: Rc<Vec<u8>>,
}

impl Pump {
    fn pump(&mut self) {
        let t = self.t.clone().unwrap();
        while !t.is_writing_paused() && self.written < self.total {
            let n = CHUNK.min(self.total - self.written);
            // (The pattern repeats every 253 bytes; start at this offset.)
            let at = self.written % 253;
            t.write_slice(&self.pattern[at..at + n]).unwrap();
            self.written += n;
        }
        if self.written == self.total {
            t.close();
        }
    }
}

impl BaseProtocol for Pump {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
        self.pump();
    }
    fn resume_writing(&mut self) {
        self.pump();
    }
}

impl Protocol for Pump {}

/// Checks the pattern; naps after every `EVERY` bytes.
struct Slow {
    t: Option<Transport>,
    got: usize,
    bad: usize,
    next_nap: usize,
    done: Option<LoopFuture<()>>,
}

impl BaseProtocol for Slow {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
    fn connection_lost(&mut self, _: Option<Error>) {
        if let Some(d) = self.done.take() {
            let _ = d.set_result(());
        }
    }
}

impl Protocol for Slow {
    fn data_received(&mut self, data: &[u8]) {
        for (k, b) in data.iter().enumerate() {
            if *b != ((self.got + k) % 253) as u8 {
                self.bad += 1;
            }
        }
        self.got += data.len();
        if self.got >= self.next_nap {
            self.next_nap = self.got + EVERY;
            let t = self.t.clone().unwrap();
            t.pause_reading();
            let lp = get_running_loop().unwrap();
            let _ = lp.call_later(NAP, move || t.resume_reading());
        }
    }
}

/// One transfer on `backend`: (seconds, peak growth in bytes, bytes read).
fn transfer(backend: Backend, total: usize) -> (f64, u64, usize) {
    let lp = EventLoop::with_backend(backend).unwrap();
    let l = lp.clone();
    let r = lp
        .run_until_complete(async move {
            let pattern: Rc<Vec<u8>> = Rc::new((0..CHUNK + 253).map(|i| (i % 253) as u8).collect());
            let server = l
                .create_server_with(
                    move || Pump {
                        t: None,
                        total,
                        written: 0,
                        pattern: pattern.clone(),
                    },
                    tls_server_opts(server_config()),
                )
                .await
                .unwrap();
            let port = port_of(&server);
            let done = l.create_future::<()>();
            let slow = Rc::new(RefCell::new(Slow {
                t: None,
                got: 0,
                bad: 0,
                next_nap: EVERY,
                done: Some(done.clone()),
            }));
            let s2 = slow.clone();
            // (The baseline is taken with the loop, its pool and both
            // configs in place: what follows is the transfer's own.)
            let before = status_kib("VmRSS:") * 1024;
            let t0 = Instant::now();
            let _client = l
                .create_connection_with(move || s2, tls_connect_opts(port))
                .await
                .unwrap();
            done.await.unwrap();
            let dt = t0.elapsed().as_secs_f64();
            let peak = status_kib("VmHWM:") * 1024;
            server.close();
            let s = slow.borrow();
            assert_eq!(s.bad, 0, "bytes arrived in order");
            (dt, peak.saturating_sub(before), s.got)
        })
        .unwrap();
    lp.close().unwrap();
    r
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let total: usize = if quick { 64 << 20 } else { 1 << 30 };
    // The child form: one backend, one transfer, one line.
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let backend = match args.get(i + 1).map(String::as_str) {
            Some("proactor") => Backend::Proactor,
            Some("selector") => Backend::Selector,
            other => panic!("--child proactor|selector, not {other:?}"),
        };
        let (dt, grew, got) = transfer(backend, total);
        assert_eq!(got, total, "every byte arrived");
        println!("RESULT {dt} {grew}");
        return;
    }
    println!(
        "TLS, {} MiB to a reader that naps {NAP:?} after every MiB; bound {} MiB",
        total >> 20,
        BOUND >> 20
    );
    println!("| backend | MB/s | peak RSS growth (MiB) |");
    println!("| --- | ---: | ---: |");
    let exe = std::env::current_exe().unwrap();
    let mut failed = false;
    for name in ["proactor", "selector"] {
        let mut cmd = Command::new(&exe);
        cmd.args(["--child", name]);
        if quick {
            cmd.arg("--quick");
        }
        let out = cmd.output().expect("child process");
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
            panic!(
                "{name}: no result (exit {:?})\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let mut it = line.split(' ');
        let dt: f64 = it.next().unwrap().parse().unwrap();
        let grew: u64 = it.next().unwrap().parse().unwrap();
        println!(
            "| {name} | {:.0} | {:.1} |",
            total as f64 / dt / 1e6,
            grew as f64 / (1 << 20) as f64
        );
        if grew > BOUND {
            eprintln!("!!! {name}: peak RSS grew {grew} bytes, over the {BOUND} bound");
            failed = true;
        }
    }
    assert!(!failed, "memory grew past the bound");
}
