//! Memory of idle connections: a ringloop echo server (Protocol API) in its
//! own process holds 10,000 open, idle TCP connections; its resident set
//! (VmRSS) is read before and after. Idle connections hold no read buffer
//! (multishot receive into the loop's shared pool), so the growth is the
//! per-connection bookkeeping only.
//!
//! `cargo bench --bench idle_rss` (`-- --quick`: 1,000 connections).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use ringloop::prelude::*;
use ringloop::{Protocol, Transport};

struct Echo(Option<Transport>);

impl Protocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        if let Some(t) = &self.0 {
            let _ = t.write(data.to_vec());
        }
    }
}

fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer, then a valid rlimit with soft <= hard.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max.min(65536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

fn serve(backend: &str) {
    raise_nofile();
    let lp = match backend {
        "proactor" => EventLoop::proactor(),
        _ => EventLoop::selector(),
    }
    .expect("loop");
    lp.run_until_complete(async {
        let lp = get_running_loop().unwrap();
        let server = lp
            .create_server_with(
                || Echo(None),
                ringloop::ServerOptions {
                    hosts: vec!["127.0.0.1".into()],
                    backlog: 4096,
                    ..Default::default()
                },
            )
            .await
            .expect("server");
        println!("PORT {}", server.sockets()[0].as_socket().unwrap().port());
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        server.serve_forever().await.unwrap();
    })
    .unwrap();
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--server") {
        serve(&args[i + 1]);
        return;
    }
    let n = if args.iter().any(|a| a == "--quick") {
        1_000
    } else {
        10_000
    };
    raise_nofile();
    println!(
        "| backend | idle connections | RSS before (MiB) | RSS after (MiB) | per connection (KiB) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for backend in ["proactor", "selector"] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--server", backend])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().strip_prefix("PORT ").unwrap().parse().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let before = rss_kib(child.id());
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            conns.push(c);
        }
        // One round trip on the last connection: every accept has run.
        {
            use std::io::{Read, Write};
            let c = conns.last_mut().unwrap();
            c.write_all(b"ping").unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let after = rss_kib(child.id());
        assert!(after >= before);
        println!(
            "| {backend} | {n} | {:.1} | {:.1} | {:.2} |",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            (after - before) as f64 / n as f64
        );
        drop(conns);
        let _ = child.kill();
        let _ = child.wait();
    }
}
