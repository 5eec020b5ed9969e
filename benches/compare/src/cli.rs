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

/// Starts this binary again as a server — `wrapper` (strace, valgrind)
/// first if given, pinned to core 0 by `taskset` when `pin` and taskset
/// exists — with `args`, and waits at most `limit` for the `PORT p` line
/// it prints once it listens. `None` (the child killed and reaped) if the
/// line never comes. The caller owns the child: it kills and waits on it.
#[allow(dead_code, clippy::zombie_processes)] // micro and spawn start no servers
pub fn spawn_server<I, S>(
    pin: bool,
    wrapper: &[&str],
    args: I,
    limit: std::time::Duration,
) -> Option<(std::process::Child, u16)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().expect("own executable");
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    if pin && Command::new("taskset").arg("--version").output().is_ok() {
        argv.extend(["taskset", "-c", "0"].map(Into::into));
    }
    argv.extend(wrapper.iter().map(Into::into));
    argv.push(exe.into());
    argv.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("server process");
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // A thread reads the lines, so that `limit` bounds the wait.
    std::thread::spawn(move || {
        let mut out = std::io::BufReader::new(out);
        let mut line = String::new();
        while out.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(p) = line.trim().strip_prefix("PORT ") {
                let _ = tx.send(p.parse::<u16>().ok());
                return;
            }
            line.clear();
        }
    });
    match rx.recv_timeout(limit) {
        Ok(Some(port)) => Some((child, port)),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}
