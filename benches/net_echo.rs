//! TCP echo throughput, proactor vs selector: the server runs in its own
//! process pinned to core 0 (`taskset`), a single-threaded load client on
//! core 1, rounds interleaved (P S, P S, …), a fresh server each round,
//! the median ratio reported with its min–max.
//!
//! `cargo bench --bench net_echo` (full: 1/10/100 KiB × 1/10/100
//! connections); `cargo bench --bench net_echo -- --quick` for CI (a few
//! seconds; checks every configuration runs, asserts nothing about speed).
//! Results: a Markdown table on stdout and `target/net_echo.json`.

#[path = "common/load.rs"]
mod client;
#[path = "common/echo_server.rs"]
mod echo_server;

/// Requests per second of `conns` echo connections for `secs`.
fn load(port: u16, size: usize, conns: usize, secs: f64) -> f64 {
    client::load(port, size, conns, secs, None)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // RUST_LOG drives the logger (info by default): RUST_LOG=ringloop=debug
    // shows the loop's own messages.
    let _ = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .parse_env(env_logger::Env::default())
        .try_init();
    echo_server::serve_if_asked();
    let args: Vec<String> = std::env::args().collect();
    let quick =
        args.iter().any(|a| a == "--quick") || std::env::var("RINGLOOP_BENCH_QUICK").is_ok();
    let (sizes, conc, rounds, secs): (&[usize], &[usize], usize, f64) = if quick {
        (&[1024], &[1, 10], 1, 0.3)
    } else {
        (&[1024, 10 * 1024, 100 * 1024], &[1, 10, 100], 5, 1.0)
    };
    // The load client runs on core 1, the servers on core 0.
    // SAFETY: cpu_set_t is plain data; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(1, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    let backends = ["proactor", "selector"];
    let mut rows = Vec::new();
    println!("| size | conns | proactor req/s | selector req/s | proactor/selector (min–max) |");
    println!("|---:|---:|---:|---:|---|");
    for &size in sizes {
        for &c in conc {
            let mut res: Vec<Vec<f64>> = vec![Vec::new(); 2];
            for _ in 0..rounds {
                for (i, b) in backends.iter().enumerate() {
                    let (mut child, port) = echo_server::spawn_server(b, Some(0));
                    // Warm-up connection, discarded.
                    load(port, size, 1, 0.05);
                    res[i].push(load(port, size, c, secs));
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            let ratios: Vec<f64> = res[0].iter().zip(&res[1]).map(|(p, s)| p / s).collect();
            let mut r2 = ratios.clone();
            let (mp, ms, mr) = (median(&mut res[0]), median(&mut res[1]), median(&mut r2));
            let lo = ratios.iter().cloned().fold(f64::MAX, f64::min);
            let hi = ratios.iter().cloned().fold(0.0, f64::max);
            assert!(mp > 0.0 && ms > 0.0, "a configuration made no requests");
            println!(
                "| {} KiB | {c} | {mp:.0} | {ms:.0} | {mr:.2} ({lo:.2}–{hi:.2}) |",
                size / 1024
            );
            rows.push(format!(
                "{{\"size\":{size},\"conns\":{c},\"proactor\":{mp:.0},\"selector\":{ms:.0},\"ratio\":{mr:.3},\"ratio_min\":{lo:.3},\"ratio_max\":{hi:.3}}}"
            ));
        }
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let _ = std::fs::create_dir_all(&dir);
    let json = format!("[{}]\n", rows.join(",\n"));
    std::fs::write(dir.join("net_echo.json"), json).unwrap();
    println!("\nrounds={rounds} secs={secs} quick={quick}; JSON in target/net_echo.json");
}
