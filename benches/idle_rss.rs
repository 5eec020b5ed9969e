//! Memory of idle connections: a ringloop echo server (Protocol API) in its
//! own process holds 10,000 open, idle TCP connections; its resident set
//! (VmRSS) is read before and after. Idle connections hold no read buffer
//! (multishot receive into the loop's shared pool), so the growth is the
//! per-connection bookkeeping only.
//!
//! `cargo bench --bench idle_rss` (`-- --quick`: 1,000 connections).

#[path = "common/echo_server.rs"]
mod echo_server;

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
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
    let n = if args.iter().any(|a| a == "--quick") {
        1_000
    } else {
        10_000
    };
    echo_server::raise_nofile();
    println!(
        "| backend | idle connections | RSS before (MiB) | RSS after (MiB) | per connection (KiB) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for backend in ["proactor", "selector"] {
        let (mut child, port) = echo_server::spawn_server(backend, None);
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
