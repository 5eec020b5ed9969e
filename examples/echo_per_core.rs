//! A TCP echo server with one loop per core (`ringloop::serve_per_core`):
//! every loop listens on the same port with `SO_REUSEPORT` and the kernel
//! spreads the connections over them. Back-pressure as in `echo_server`:
//! a client that sends without reading is not read from until it catches up.
//!
//! `cargo run --release --example echo_per_core -- --serve 127.0.0.1:8888`
//! serves until Ctrl-C or SIGTERM, then shuts down gracefully (every loop
//! stops accepting and closes its clients; exit 0); `--loops N` sets the
//! number of loops (default: one per CPU this process may run on) and
//! `--pin 1` pins each to its CPU. With no `--serve` it starts on a free
//! port, runs clients against itself, checks their echoes, that every loop
//! got connections and that a client that never reads cannot make it
//! buffer, and exits.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use log::info;
use ringloop::prelude::*;
use ringloop::{
    BaseProtocol, PerCoreOptions, PerCoreStop, Protocol, RecvBuf, SigintHandling, Transport,
};

const USAGE: &str = "usage: echo_per_core [--serve ADDR] [--loops N] [--pin 0|1]

  --serve ADDR   serve on ADDR (127.0.0.1:P, [::1]:P or localhost:P) until Ctrl-C or
                 SIGTERM; without it, check the server against itself and exit
  --loops N      loops (threads); default one per CPU this process may run on
                 (the self-check uses at least 2)
  --pin 0|1      pin each loop's thread to its CPU (default 0)
  RUST_LOG=ringloop=debug shows the loop's own messages";

/// Echoes every byte back (a pool buffer is sent as it is, no copy).
struct Echo {
    transport: Option<Transport>,
}

impl BaseProtocol for Echo {
    fn connection_made(&mut self, transport: Transport) {
        self.transport = Some(transport);
    }
    // Back-pressure: past the write buffer's high-water mark, stop reading
    // from this client until the buffer drains; its bytes then wait in the
    // kernel and in the client, not in this server.
    fn pause_writing(&mut self) {
        if let Some(t) = &self.transport {
            t.pause_reading();
        }
    }
    fn resume_writing(&mut self) {
        if let Some(t) = &self.transport {
            t.resume_reading();
        }
    }
}

impl Protocol for Echo {
    fn data_received_owned(&mut self, data: RecvBuf) {
        if let Some(t) = &self.transport {
            let _ = t.write(data);
        }
    }
    fn data_received(&mut self, data: &[u8]) {
        if let Some(t) = &self.transport {
            let _ = t.write(data.to_vec());
        }
    }
}

/// SIGTERM and SIGINT stop the run: a small loop of its own on a side
/// thread handles them (`add_signal_handler`) and calls the (`Send`) stop
/// handle, which every serving loop hears.
///
/// (`PerCoreOptions::sigint` alone would handle Ctrl-C, but, as asyncio's
/// runner, only while SIGINT has its default action; a server started in
/// the background of a script has SIGINT ignored, and this one should
/// still stop on it, as the other example servers do.)
fn stop_on_signals(stop: PerCoreStop) {
    std::thread::spawn(move || {
        let r = ringloop::run(async move {
            let lp = get_running_loop()?;
            let got = lp.create_future::<&'static str>();
            for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
                let g = got.clone();
                lp.add_signal_handler(sig, move || {
                    let _ = g.set_result(name);
                })?;
            }
            let name = got.await?;
            info!("{name}: shutting down");
            stop.stop();
            Ok::<_, ringloop::Error>(())
        });
        if let Err(e) = r.and_then(|r| r) {
            log::error!("signal watch: {e}");
        }
    });
}

/// The self-check's clients, on a thread of their own: `n` connections
/// with messages of 1 to 8 KB, then a client that never reads; then stop.
fn clients(stop: PerCoreStop, n: usize) -> Result<(), String> {
    let addrs = stop
        .wait_serving(Duration::from_secs(10))
        .ok_or("the server never listened")?;
    let addr: SocketAddr = addrs[0];
    info!("echo_per_core serving on {addr}");
    let result = (|| {
        for i in 0..n {
            let msg: Vec<u8> = (0..(1000 * (i % 8 + 1))).map(|j| (i + j) as u8).collect();
            let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            c.write_all(&msg).map_err(|e| e.to_string())?;
            let mut got = vec![0; msg.len()];
            c.read_exact(&mut got).map_err(|e| e.to_string())?;
            if got != msg {
                return Err(format!("client {i}: echo mismatch"));
            }
        }
        info!("{n} clients echoed correctly");
        // Without back-pressure the server would read all 64 MiB and hold it.
        let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
        ringloop::run(common::check_back_pressure(
            addr.port(),
            chunk,
            64 << 20,
            "bytes",
        ))
        .and_then(|r| r)
        .map_err(|e| e.to_string())
    })();
    stop.stop();
    result
}

fn main() -> ExitCode {
    common::init_logging();
    let args = match common::Args::parse(USAGE, &["--loops", "--pin"]) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let (loops, pin) = match (
        args.get::<usize>(USAGE, "--loops"),
        args.get::<u8>(USAGE, "--pin"),
    ) {
        (Ok(l), Ok(p)) => (l.unwrap_or(0), p.unwrap_or(0) != 0),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let stop = PerCoreStop::new();
    let mut opts = PerCoreOptions {
        threads: loops,
        pin,
        stop: Some(stop.clone()),
        // Ctrl-C: the self-check leaves it to the runner (this is the
        // process's main thread); --serve handles it in stop_on_signals.
        sigint: SigintHandling::Auto,
        shutdown_grace: Duration::from_millis(800),
        ..Default::default()
    };
    let Some(addr) = args.serve else {
        // The self-check: at least two loops, so the port is shared.
        if opts.threads == 0 {
            opts.threads = ringloop::allowed_cpus().map_or(2, |c| c.len().max(2));
        }
        let n = 100;
        let s2 = stop.clone();
        let check = std::thread::spawn(move || clients(s2, n));
        let served = ringloop::serve_per_core(opts, || Echo { transport: None }, "127.0.0.1", 0);
        let checked = check
            .join()
            .unwrap_or_else(|_| Err("the clients panicked".into()));
        return match (served, checked) {
            (Ok(accepted), Ok(())) => {
                // n clients and the never-reading one.
                let total: u64 = accepted.iter().sum();
                if total != n as u64 + 1 || accepted.contains(&0) {
                    log::error!(
                        "connections per loop {accepted:?}: want {} in all, some on each",
                        n + 1
                    );
                    return ExitCode::FAILURE;
                }
                println!(
                    "echo_per_core ({}): {} loops shared one port, connections per loop {accepted:?}; \
                     a never-reading client was held back",
                    ringloop::default_backend().map_or("?".into(), |b| b.to_string()),
                    accepted.len()
                );
                ExitCode::SUCCESS
            }
            (Err(e), _) => {
                log::error!("server: {e}");
                ExitCode::FAILURE
            }
            (_, Err(e)) => {
                log::error!("self-check: {e}");
                ExitCode::FAILURE
            }
        };
    };
    opts.sigint = SigintHandling::Never;
    stop_on_signals(stop.clone());
    let s2 = stop.clone();
    std::thread::spawn(move || {
        if let Some(a) = s2.wait_serving(Duration::from_secs(30)) {
            info!("echo_per_core serving on {a:?}");
        }
    });
    match ringloop::serve_per_core(opts, || Echo { transport: None }, &addr.host, addr.port) {
        Ok(accepted) => {
            info!("stopped; connections per loop {accepted:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
