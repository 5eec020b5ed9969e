//! Child processes per second: `true` started and waited for, one at a
//! time and 16 at once, on ringloop (proactor and selector,
//! `create_subprocess_exec` with every stream on `/dev/null`) and on
//! tokio's `current_thread` runtime (`tokio::process::Command`, the same
//! streams). Rounds are interleaved (P S T, P S T, …); the median of each
//! is reported with the ringloop/tokio ratio, and the server CPU time per
//! spawn (user + system of this process, children excluded).
//!
//! `cargo run --release -p ringloop-compare --bin spawn [-- --quick]`

use std::time::{Duration, Instant};

use ringloop::{
    AbstractEventLoop, Backend, EventLoop, Stdio, SubprocessOptions, create_subprocess_exec,
};

#[path = "../cli.rs"]
mod cli;

const USAGE: &str = "usage: spawn [--quick]

  (no arguments)  2000 spawns per run, 5 interleaved rounds
  --quick         the few-second CI form (200 spawns, one round)";

#[derive(Clone, Copy, Debug)]
enum Rt {
    Proactor,
    Selector,
    Tokio,
}

fn null_opts() -> SubprocessOptions {
    SubprocessOptions {
        stdin: Stdio::DevNull,
        stdout: Stdio::DevNull,
        stderr: Stdio::DevNull,
        ..Default::default()
    }
}

/// This process's user + system CPU time (children not included).
fn cpu() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs `n` spawns of `true`, `par` at a time; (wall, cpu).
fn run(rt: Rt, n: usize, par: usize) -> (Duration, Duration) {
    let (t0, c0) = (Instant::now(), cpu());
    match rt {
        Rt::Proactor | Rt::Selector => {
            let backend = if matches!(rt, Rt::Proactor) {
                Backend::Proactor
            } else {
                Backend::Selector
            };
            let lp = EventLoop::with_backend(backend).expect("loop");
            lp.run_until_complete(async move {
                for _ in 0..n / par {
                    let mut ps = Vec::with_capacity(par);
                    for _ in 0..par {
                        ps.push(
                            create_subprocess_exec("true", [] as [&str; 0], null_opts())
                                .await
                                .expect("spawn"),
                        );
                    }
                    for p in ps {
                        assert_eq!(p.wait().await, 0);
                    }
                }
            })
            .expect("run");
            lp.close().expect("close");
        }
        Rt::Tokio => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio");
            rt.block_on(async {
                for _ in 0..n / par {
                    let mut ps = Vec::with_capacity(par);
                    for _ in 0..par {
                        ps.push(
                            tokio::process::Command::new("true")
                                .stdin(std::process::Stdio::null())
                                .stdout(std::process::Stdio::null())
                                .stderr(std::process::Stdio::null())
                                .spawn()
                                .expect("spawn"),
                        );
                    }
                    for mut p in ps {
                        assert!(p.wait().await.expect("wait").success());
                    }
                }
            });
        }
    }
    (t0.elapsed(), cpu() - c0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    cli::init_logging();
    let mut quick = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--help" | "-h" => return println!("{USAGE}"),
            "--quick" => quick = true,
            _ => cli::usage_error(&format!("unknown argument {a:?}"), USAGE),
        }
    }
    let (n, rounds) = if quick { (200, 1) } else { (2000, 5) };
    let rts = [Rt::Proactor, Rt::Selector, Rt::Tokio];
    println!(
        "| spawn + wait of `true` | ringloop-proactor /s | ringloop-selector /s | tokio /s | proactor/tokio | CPU µs per spawn (P / S / T) |"
    );
    println!("|---|---:|---:|---:|---|---|");
    for par in [1usize, 16] {
        let mut rate = vec![Vec::new(); 3];
        let mut cpu_us = vec![Vec::new(); 3];
        for _ in 0..rounds {
            for (i, rt) in rts.iter().enumerate() {
                let (wall, cpu) = run(*rt, n, par);
                rate[i].push(n as f64 / wall.as_secs_f64());
                cpu_us[i].push(cpu.as_secs_f64() * 1e6 / n as f64);
            }
        }
        let r: Vec<f64> = rate.into_iter().map(median).collect();
        let c: Vec<f64> = cpu_us.into_iter().map(median).collect();
        println!(
            "| {par} at a time | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} / {:.0} / {:.0} |",
            r[0],
            r[1],
            r[2],
            r[0] / r[2],
            c[0],
            c[1],
            c[2]
        );
    }
}
