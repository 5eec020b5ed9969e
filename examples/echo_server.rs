//! A TCP echo server on the Protocol API (asyncio's `loop.create_server`).
//!
//! `cargo run --release --example echo_server -- --serve 127.0.0.1:8888`
//! serves until Ctrl-C; with no arguments it starts on a free port, runs a
//! few clients against itself, checks their echoes, and exits.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use ringloop::prelude::*;
use ringloop::{Protocol, RecvBuf, Transport};

/// Echoes every byte back. Data received into the loop's buffer pool comes
/// as an owned [`RecvBuf`], and writing it sends that very buffer: no copy,
/// no allocation. Data from anywhere else comes as a slice.
struct Echo {
    transport: Option<Transport>,
}

impl Protocol for Echo {
    fn connection_made(&mut self, transport: Transport) {
        self.transport = Some(transport);
    }
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

impl Protocol for Client {
    fn connection_made(&mut self, transport: Transport) {
        transport.write(self.msg.clone()).unwrap();
        self.transport = Some(transport);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.got.borrow_mut().extend_from_slice(data);
        if self.got.borrow().len() == self.msg.len() {
            self.transport.as_ref().unwrap().close();
        }
    }
}

fn main() -> ringloop::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    ringloop::run(async move {
        let lp = get_running_loop()?;
        if let Some(addr) = args
            .iter()
            .position(|a| a == "--serve")
            .and_then(|i| args.get(i + 1))
        {
            let (host, port) = addr.rsplit_once(':').expect("--serve HOST:PORT");
            let server = lp
                .create_server(
                    || Echo { transport: None },
                    host,
                    port.parse().expect("port"),
                )
                .await?;
            println!(
                "echo server ({}) on {:?}",
                lp.backend(),
                server.sockets()[0].as_socket()
            );
            return server.serve_forever().await;
        }
        let server = lp
            .create_server(|| Echo { transport: None }, "127.0.0.1", 0)
            .await?;
        let port = server.sockets()[0].as_socket().expect("inet").port();
        println!("echo server ({}) on 127.0.0.1:{port}", lp.backend());
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
        while checks.iter().any(|(m, g)| g.borrow().len() < m.len()) {
            ringloop::sleep(Duration::from_millis(1)).await?;
        }
        assert!(
            checks.iter().all(|(m, g)| *g.borrow() == *m),
            "echo mismatch"
        );
        println!(
            "{} clients echoed correctly; driver: {:?}",
            checks.len(),
            lp.driver_stats()
        );
        server.close();
        server.wait_closed().await;
        Ok(())
    })?
}
