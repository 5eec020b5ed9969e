//! A TCP echo server on the streams API (asyncio's `start_server`).
//!
//! `cargo run --release --example echo_server_streams -- --serve 127.0.0.1:8889`
//! serves until Ctrl-C; with no arguments it checks itself with a few
//! clients and exits.

use ringloop::prelude::*;
use ringloop::{StreamReader, StreamWriter, open_connection, start_server};

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
            let server = start_server(handle, host, port.parse().expect("port")).await?;
            println!(
                "streams echo server ({}) on {:?}",
                lp.backend(),
                server.sockets()[0].as_socket()
            );
            return server.serve_forever().await;
        }
        let server = start_server(handle, "127.0.0.1", 0).await?;
        let port = server.sockets()[0].as_socket().expect("inet").port();
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
        println!("streams echo ({}): 5 lines echoed", lp.backend());
        server.close();
        server.wait_closed().await;
        Ok(())
    })?
}
