//! A UDP echo endpoint (asyncio's `create_datagram_endpoint`).
//!
//! `cargo run --release --example udp_echo -- --serve 127.0.0.1:9999`
//! serves; with no arguments it echoes a few datagrams to itself and exits.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use ringloop::prelude::*;
use ringloop::{DatagramOptions, DatagramProtocol, DatagramTransport};

struct Echo {
    transport: Option<DatagramTransport>,
}

impl DatagramProtocol for Echo {
    fn connection_made(&mut self, t: DatagramTransport) {
        self.transport = Some(t);
    }
    fn datagram_received(&mut self, data: &[u8], addr: SockAddr) {
        if let Some(t) = &self.transport {
            let _ = t.sendto(data.to_vec(), Some(&addr));
        }
    }
}

#[derive(Default)]
struct Collect(Vec<Vec<u8>>);

impl DatagramProtocol for Collect {
    fn datagram_received(&mut self, data: &[u8], _addr: SockAddr) {
        self.0.push(data.to_vec());
    }
}

fn main() -> ringloop::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    ringloop::run(async move {
        let lp = get_running_loop()?;
        let serve = args
            .iter()
            .position(|a| a == "--serve")
            .and_then(|i| args.get(i + 1))
            .cloned();
        let local = serve
            .clone()
            .unwrap_or_else(|| "127.0.0.1:0".into())
            .parse()
            .expect("HOST:PORT");
        let server = lp
            .create_datagram_endpoint(
                || Echo { transport: None },
                DatagramOptions {
                    local_addr: Some(local),
                    ..Default::default()
                },
            )
            .await?;
        let addr = server
            .sockname()
            .and_then(|a| a.as_socket())
            .expect("bound");
        println!("udp echo ({}) on {addr}", lp.backend());
        if serve.is_some() {
            return std::future::pending::<ringloop::Result<()>>().await;
        }
        let got = Rc::new(RefCell::new(Collect::default()));
        let client = lp
            .create_datagram_endpoint(
                {
                    let g = got.clone();
                    move || g
                },
                DatagramOptions {
                    remote_addr: Some(addr),
                    ..Default::default()
                },
            )
            .await?;
        for i in 0..5 {
            client.sendto(format!("datagram {i}"), None)?;
        }
        ringloop::wait_for(
            async {
                while got.borrow().0.len() < 5 {
                    ringloop::sleep(Duration::from_millis(1)).await.unwrap();
                }
            },
            Duration::from_secs(5),
        )
        .await?;
        println!("udp echo: {} datagrams came back", got.borrow().0.len());
        client.close();
        server.close();
        Ok(())
    })?
}
