//! A UDP echo endpoint (asyncio's `create_datagram_endpoint`).
//!
//! `cargo run --release --example udp_echo -- --serve 127.0.0.1:9999`
//! serves until Ctrl-C; with no arguments it echoes a few datagrams to
//! itself and exits.

mod common;

use std::cell::RefCell;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use log::info;
use ringloop::prelude::*;
use ringloop::{DatagramOptions, DatagramProtocol, DatagramTransport};

const USAGE: &str = "usage: udp_echo [--serve ADDR]

  --serve ADDR   serve on ADDR (127.0.0.1:P, [::1]:P or localhost:P) until Ctrl-C;
                 without it, echo a few datagrams to itself and exit
  RUST_LOG=ringloop=debug shows the loop's own messages";

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

fn main() -> ExitCode {
    common::init_logging();
    let args = match common::Args::parse(USAGE, &[]) {
        Ok(a) => a,
        Err(code) => return code,
    };
    common::exit(ringloop::run(async move {
        let lp = get_running_loop()?;
        let serving = args.serve.is_some();
        let local = args.serve.map_or_else(
            || "127.0.0.1:0".parse().expect("literal"),
            |a| a.socket_addr(),
        );
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
        info!("udp echo ({}) on {addr}", lp.backend());
        if serving {
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
                    ringloop::sleep(Duration::from_millis(1)).await?;
                }
                Ok::<_, ringloop::Error>(())
            },
            Duration::from_secs(5),
        )
        .await??;
        println!(
            "udp_echo ({}): {} datagrams came back",
            lp.backend(),
            got.borrow().0.len()
        );
        client.close();
        server.close();
        Ok(())
    }))
}
