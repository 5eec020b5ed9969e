//! A TCP echo server on the streams API (asyncio's `start_server`).
//! `drain()` after each write is its back-pressure: a client that does not
//! read stops being read from.
//!
//! `cargo run --release --example echo_server_streams -- --serve 127.0.0.1:8889`
//! serves until SIGTERM or Ctrl-C, then shuts down gracefully (stops
//! accepting, closes its clients, exits 0); with no arguments it checks
//! itself with a few clients and exits.

mod common;

use std::process::ExitCode;
use std::time::Duration;

use log::info;
use ringloop::prelude::*;
use ringloop::{StreamReader, StreamWriter, open_connection, start_server};

const USAGE: &str = "usage: echo_server_streams [--serve ADDR]

  --serve ADDR   serve on ADDR (127.0.0.1:P, [::1]:P or localhost:P) until SIGTERM or Ctrl-C;
                 without it, check the server against itself and exit
  RUST_LOG=ringloop=debug shows the loop's own messages";

async fn handle(reader: StreamReader, writer: StreamWriter) {
    loop {
        match reader.read(64 * 1024).await {
            Ok(data) if !data.is_empty() => {
                if writer.write(data).is_err() || writer.drain().await.is_err() {
                    return;
                }
            }
            _ => break,
        }
    }
    writer.close();
}

async fn self_check(lp: EventLoop) -> ringloop::Result<()> {
    let server = start_server(handle, "127.0.0.1", 0).await?;
    let port = server.sockets()[0].as_socket().expect("inet").port();
    info!("streams echo server ({}) on 127.0.0.1:{port}", lp.backend());
    for i in 0..5u8 {
        let (r, w) = open_connection("127.0.0.1", port).await?;
        let line: Vec<u8> = std::iter::repeat_n(b'a' + i, 100 * (i as usize + 1))
            .chain([b'\n'])
            .collect();
        w.write(line.clone())?;
        w.drain().await?;
        let back = r.readline().await?;
        assert_eq!(&back[..], &line[..]);
        w.close();
        w.wait_closed().await?;
    }
    println!("echo_server_streams ({}): 5 lines echoed", lp.backend());
    server.close();
    server.wait_closed().await;
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
        let server = start_server(handle, &addr.host, addr.port).await?;
        info!(
            "streams echo server ({}) on {}",
            lp.backend(),
            common::addrs(&server)
        );
        // SIGTERM / SIGINT: stop accepting, close the clients, exit 0.
        common::serve_until_signal(&lp, &server, Duration::from_millis(800)).await
    }))
}
