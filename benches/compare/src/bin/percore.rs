//! One loop vs two loops per process (`ringloop::serve_per_core`): the TCP
//! echo of `net`, served by 1 loop pinned to core 0, by 1 loop pinned to
//! core 1 (the client's), and by 2 loops pinned to cores 0 and 1 sharing
//! the port with `SO_REUSEPORT`, on each backend, driven by `net`'s load
//! client (one spinning raw io_uring client) pinned to core 1. Rounds
//! interleaved, a fresh server each round, a warm-up discarded; medians,
//! and the 2-loops / 1-loop (core 0) ratio with its min–max.
//!
//! On a 2-core machine the second loop shares core 1 with the load client,
//! which never sleeps: the two take turns on that core, so "2 loops" is
//! not "twice the cores" here, and the figures say what that sharing
//! costs or gains. (The client's idle column is its spare capacity: near
//! 0 %, the client set the pace.) On a machine with more cores, give the
//! client its own.
//!
//! `cargo run --release -p ringloop-compare --bin percore [-- --quick]`.
//! Results: Markdown on stdout, `target/bench/percore.json`.

use std::process::Child;
use std::time::Duration;

use ringloop::prelude::*;
use ringloop::{PerCoreOptions, PerCoreStop};

#[path = "../cli.rs"]
mod cli;
#[path = "../../../common/load.rs"]
mod client;
// (Its echo protocol: the one `net_echo` measures; the rest is unused here.)
#[allow(dead_code)]
#[path = "../../../common/echo_server.rs"]
mod echo_server;
use client::{load, run};
use echo_server::Echo;

/// The server process: `loops` loops pinned to the first CPUs this process
/// may use; prints `PORT p` once every loop listens, serves until killed.
fn serve(backend: Backend, loops: usize) {
    let stop = PerCoreStop::new();
    let s2 = stop.clone();
    std::thread::spawn(move || {
        use std::io::Write;
        let addrs = s2.wait_serving(Duration::from_secs(30)).expect("serving");
        println!("PORT {}", addrs[0].port());
        std::io::stdout().flush().unwrap();
    });
    let opts = PerCoreOptions {
        threads: loops,
        pin: true,
        backend: Some(backend),
        sigint: ringloop::SigintHandling::Never,
        backlog: 4096,
        stop: Some(stop),
        ..Default::default()
    };
    ringloop::serve_per_core(opts, || Echo(None), "127.0.0.1", 0).expect("serve_per_core");
}

// The caller owns the returned child and kills it.
fn spawn(backend: &str, loops: usize, cpus: &[usize]) -> (Child, u16) {
    let cpus: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
    let args = ["--server", backend, &loops.to_string(), &cpus.join(",")].map(String::from);
    cli::spawn_server(false, &[], args, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("server {backend} x{loops} did not print its port"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn usage() -> String {
    "usage: percore [--quick]
       percore --server proactor|selector LOOPS CPU,CPU...

  --quick   the few-second CI form
  --server  run one server of LOOPS loops on those CPUs and print `PORT p`"
        .into()
}

/// Sets the calling thread's CPUs (threads it starts inherit them).
fn pin_to(cpus: &[usize]) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn main() {
    cli::init_logging();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut quick = false;
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => {}
        ["--quick"] => quick = true,
        ["--help"] | ["-h"] => return println!("{}", usage()),
        ["--server", b, n, cpus] => {
            // (Started by the pinned load client: back to the CPUs the
            // bench had before it pinned itself.)
            let cpus: Vec<usize> = cpus.split(',').filter_map(|c| c.parse().ok()).collect();
            pin_to(&cpus);
            let backend = match b {
                "proactor" => Backend::Proactor,
                "selector" => Backend::Selector,
                _ => cli::usage_error(&format!("unknown backend {b:?}"), &usage()),
            };
            let Ok(loops) = n.parse::<usize>() else {
                cli::usage_error(&format!("{n:?} is not a number of loops"), &usage())
            };
            return serve(backend, loops);
        }
        _ => cli::usage_error(&format!("bad arguments {args:?}"), &usage()),
    }
    let allowed = ringloop::allowed_cpus().unwrap();
    let client_cpu = *allowed.get(1).unwrap_or(&allowed[0]);
    pin_to(&[client_cpu]);
    let (conc, rounds, secs): (&[usize], usize, f64) = if quick {
        (&[10], 1, 0.3)
    } else {
        (&[10, 100], 5, 1.0)
    };
    let size = 1024;
    // (name, loops, CPUs): one loop away from the client, one loop on the
    // client's core, two loops (the second on the client's core).
    let other = allowed[0];
    let configs: Vec<(String, usize, Vec<usize>)> = if allowed.len() > 1 {
        vec![
            (format!("1 loop (CPU {other})"), 1, vec![other]),
            (
                format!("1 loop (CPU {client_cpu}, the client's)"),
                1,
                vec![client_cpu],
            ),
            (
                format!("2 loops (CPUs {other}, {client_cpu})"),
                2,
                vec![other, client_cpu],
            ),
        ]
    } else {
        vec![
            ("1 loop".into(), 1, allowed.clone()),
            ("2 loops (one CPU)".into(), 2, allowed.clone()),
        ]
    };
    println!(
        "CPUs allowed: {allowed:?}; load client pinned to CPU {client_cpu}; each loop pinned; 1 KiB echo"
    );
    print!("\n| backend | conns |");
    for (name, _, _) in &configs {
        print!(" {name} req/s |");
    }
    println!(" 2 loops / 1 loop (CPU {other}) |");
    println!("|---|---:|{}---|", "---:|".repeat(configs.len()));
    let mut json = Vec::new();
    for backend in ["proactor", "selector"] {
        for &c in conc {
            let mut rps = vec![Vec::new(); configs.len()];
            let mut idle = vec![Vec::new(); configs.len()];
            for _ in 0..rounds {
                for (k, (_, loops, cpus)) in configs.iter().enumerate() {
                    let (mut child, port) = spawn(backend, *loops, cpus);
                    load(port, size, 1, 0.05, None); // warm-up, discarded
                    let r = run(port, size, c, secs, None);
                    rps[k].push(r.rps);
                    idle[k].push(r.idle);
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            let last = configs.len() - 1;
            let mut ratio: Vec<f64> = rps[last].iter().zip(&rps[0]).map(|(b, a)| b / a).collect();
            let lo = ratio.iter().cloned().fold(f64::MAX, f64::min);
            let hi = ratio.iter().cloned().fold(0.0, f64::max);
            let r = median(&mut ratio);
            print!("| {backend} | {c} |");
            let mut fields = Vec::new();
            for (k, (name, _, _)) in configs.iter().enumerate() {
                let (m, i) = (median(&mut rps[k]), median(&mut idle[k]));
                assert!(m > 0.0, "a server answered nothing");
                print!(" {m:.0} (client idle {:.0}%) |", i * 100.0);
                fields.push(format!(
                    "{{\"config\":\"{name}\",\"rps\":{m:.0},\"client_idle\":{i:.3}}}"
                ));
            }
            println!(" {r:.2} ({lo:.2}–{hi:.2}) |");
            json.push(format!(
                "{{\"backend\":\"{backend}\",\"conns\":{c},\"ratio_two_vs_one\":{r:.3},\"configs\":[{}]}}",
                fields.join(",")
            ));
        }
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("percore.json"),
        format!(
            "{{\"rounds\":{rounds},\"secs\":{secs},\"size\":{size},\"rows\":[{}]}}\n",
            json.join(",")
        ),
    )
    .unwrap();
    println!("\nrounds={rounds} secs={secs}; target/bench/percore.json");
}
