//! What the compare binaries share on their command line: the logger and
//! usage errors.

/// Installs a logger on `RUST_LOG` (`info` by default, `RUST_LOG`'s
/// directives on top: `RUST_LOG=ringloop=debug` shows the loop's debug
/// messages).
pub fn init_logging() {
    let mut b = env_logger::Builder::new();
    b.filter_level(log::LevelFilter::Info);
    b.parse_env(env_logger::Env::default());
    let _ = b.try_init();
}

/// Prints what is wrong and the usage to stderr, and exits with status 2.
pub fn usage_error(msg: &str, usage: &str) -> ! {
    eprintln!("error: {msg}\n\n{usage}");
    std::process::exit(2)
}

/// User + system CPU time the process `pid` (all its threads) has used so
/// far: `utime` + `stime` of `/proc/PID/stat` (fields 14 and 15), in
/// clock ticks of `sysconf(_SC_CLK_TCK)`.
#[allow(dead_code)] // not every compare binary measures a server's CPU
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2, the command, is in parentheses and may hold spaces: count
    // from the last ')' (what follows is field 3).
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    // SAFETY: sysconf takes a plain constant and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| (utime + stime) as f64 / hz as f64)
}
