//! A TCP echo server on the low-level socket API only (`sock_accept`,
//! `sock_recv_into`, `sock_sendall`) and multishot accept (`Acceptor`).
//! Each connection reads only after its previous echo is sent, so a client
//! that does not read is not read from either.
//!
//! `cargo run --example sock_echo -- --serve 127.0.0.1:9000` serves until
//! Ctrl-C; with no arguments it starts on a free port, runs clients against
//! itself, checks the echoes, prints the driver's counters, and exits.

mod common;

use std::process::ExitCode;

use log::{info, warn};
use ringloop::Acceptor;
use ringloop::prelude::*;

const USAGE: &str = "usage: sock_echo [--serve ADDR]

  --serve ADDR   serve on ADDR (127.0.0.1:P, [::1]:P or localhost:P) until Ctrl-C;
                 without it, check the server against itself and exit
  RUST_LOG=ringloop=debug shows the loop's own messages";

/// Echoes one connection until EOF, reusing one owned buffer.
async fn echo(lp: EventLoop, conn: Socket) {
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let (n, b) = lp.sock_recv_into(&conn, buf).await;
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // The buffer goes to the send op and comes back with its result.
        if lp.sock_sendall(&conn, b).await.is_err() {
            return;
        }
        buf = Vec::with_capacity(16 * 1024);
    }
}

async fn serve(lp: EventLoop, listener: Socket) {
    let mut acceptor = Acceptor::new(&lp, &listener);
    loop {
        match acceptor.accept().await {
            Ok(conn) => {
                lp.create_task(echo(lp.clone(), conn));
            }
            Err(e) => {
                warn!("accept failed: {e}");
                let _ = ringloop::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
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
        let addr = args.serve.map_or_else(
            || "127.0.0.1:0".parse().expect("literal"),
            |a| a.socket_addr(),
        );
        let listener = Socket::tcp_listener(&addr, 128)?;
        let local = listener.local_addr()?;
        let inet = local.as_socket().expect("inet");
        info!("sock_* echo server ({}) on {inet}", lp.backend());
        let server = lp.create_task(serve(lp.clone(), listener));
        if serving {
            server.await?;
            return Ok(());
        }
        for i in 0..10u8 {
            let client = Socket::tcp_for(&inet)?;
            lp.sock_connect(&client, &local).await?;
            let msg = vec![b'a' + i; 4096 * (i as usize + 1)];
            lp.sock_sendall(&client, msg.clone()).await?;
            let mut got = Vec::new();
            while got.len() < msg.len() {
                got.extend(lp.sock_recv(&client, 65536).await?);
            }
            assert_eq!(got, msg, "echo mismatch");
        }
        println!(
            "sock_echo ({}): 10 clients echoed correctly; driver: {:?}",
            lp.backend(),
            lp.driver_stats()
        );
        server.cancel(None);
        Ok(())
    }))
}
