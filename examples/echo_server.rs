//! A TCP echo server on the Protocol API (asyncio's `loop.create_server`),
//! with back-pressure: a client that sends without reading is not read
//! from either until it catches up.
//!
//! `cargo run --release --example echo_server -- --serve 127.0.0.1:8888`
//! serves until SIGTERM or Ctrl-C, then shuts down gracefully (stops
//! accepting, closes its clients, exits 0); with no arguments it starts on
//! a free port, runs a few clients against itself, checks their echoes and
//! that a client that never reads cannot make it buffer, and exits.

mod common;

use std::cell::RefCell;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use log::info;
use ringloop::prelude::*;
use ringloop::{BaseProtocol, Protocol, RecvBuf, Transport};

const USAGE: &str = "usage: echo_server [--serve ADDR]

  --serve ADDR   serve on ADDR (127.0.0.1:P, [::1]:P or localhost:P) until SIGTERM or Ctrl-C;
                 without it, check the server against itself and exit
  RUST_LOG=ringloop=debug shows the loop's own messages";

/// Echoes every byte back. Data received into the loop's buffer pool comes
/// as an owned [`RecvBuf`], and writing it sends that very buffer: no copy,
/// no allocation. Data from anywhere else comes as a slice.
struct Echo {
    transport: Option<Transport>,
}

impl BaseProtocol for Echo {
    fn connection_made(&mut self, transport: Transport) {
        self.transport = Some(transport);
    }
    // Back-pressure. A client that sends and does not read fills this
    // transport's write buffer; past its high-water mark, stop reading from
    // that client until the buffer drains to its low-water mark. Its bytes
    // then wait in the kernel's socket buffers and, once those are full, in
    // the client, not in this server's memory.
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

/// Sends one message and collects the echo.
struct Client {
    msg: Vec<u8>,
    got: Rc<RefCell<Vec<u8>>>,
    transport: Option<Transport>,
}

impl BaseProtocol for Client {
    fn connection_made(&mut self, transport: Transport) {
        let _ = transport.write(self.msg.clone());
        self.transport = Some(transport);
    }
}

impl Protocol for Client {
    fn data_received(&mut self, data: &[u8]) {
        self.got.borrow_mut().extend_from_slice(data);
        if self.got.borrow().len() == self.msg.len() {
            if let Some(t) = &self.transport {
                t.close();
            }
        }
    }
}

/// The self-check: clients with messages of 1 to 8 KB, then one client
/// that sends 64 MiB and never reads.
async fn self_check(lp: EventLoop) -> ringloop::Result<()> {
    let server = lp
        .create_server(|| Echo { transport: None }, "127.0.0.1", 0)
        .await?;
    let port = server.sockets()[0].as_socket().expect("inet").port();
    info!("echo server ({}) on 127.0.0.1:{port}", lp.backend());
    let mut checks = Vec::new();
    for i in 0..8 {
        let msg: Vec<u8> = (0..(1000 * (i + 1))).map(|j| (i + j) as u8).collect();
        let got = Rc::new(RefCell::new(Vec::new()));
        let g = got.clone();
        let m = msg.clone();
        lp.create_connection(
            move || Client {
                msg: m,
                got: g,
                transport: None,
            },
            "127.0.0.1",
            port,
        )
        .await?;
        checks.push((msg, got));
    }
    ringloop::wait_for(
        async {
            while checks.iter().any(|(m, g)| g.borrow().len() < m.len()) {
                ringloop::sleep(Duration::from_millis(1)).await?;
            }
            Ok::<_, ringloop::Error>(())
        },
        Duration::from_secs(10),
    )
    .await??;
    assert!(
        checks.iter().all(|(m, g)| *g.borrow() == *m),
        "echo mismatch"
    );
    info!("{} clients echoed correctly", checks.len());

    // Without back-pressure the server would read all 64 MiB and hold it.
    // With it, the client stalls once the socket buffers between the two
    // are full (a few MiB on loopback), and the server holds at most about
    // its write buffer's high-water mark.
    let total = 64 << 20;
    let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    common::check_back_pressure(port, chunk, total, "bytes").await?;
    server.close();
    server.wait_closed().await;
    println!(
        "echo_server ({}): {} clients echoed correctly, a never-reading client was held back; driver: {:?}",
        lp.backend(),
        checks.len(),
        lp.driver_stats()
    );
    Ok(())
}

fn main() -> ExitCode {
    common::init_logging();
    let args = match common::Args::parse(USAGE, &[]) {
        Ok(a) => a,
        Err(code) => return code,
    };
    common::exit(ringloop::run(async move {
        let lp = get_running_loop()?;
        let Some(addr) = args.serve else {
            return self_check(lp).await;
        };
        let server = lp
            .create_server(|| Echo { transport: None }, &addr.host, addr.port)
            .await?;
        info!(
            "echo server ({}) on {}",
            lp.backend(),
            common::addrs(&server)
        );
        // SIGTERM / SIGINT: stop accepting, close the clients, exit 0.
        common::serve_until_signal(&lp, &server, Duration::from_millis(800)).await
    }))
}
