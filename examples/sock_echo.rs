//! A TCP echo server on the low-level socket API only (`sock_accept`,
//! `sock_recv_into`, `sock_sendall`) and multishot accept (`Acceptor`).
//!
//! `cargo run --example sock_echo -- --serve 127.0.0.1:9000` serves; with
//! no arguments it starts on a free port, runs clients against itself,
//! checks the echoes, prints the driver's counters, and exits.

use ringloop::Acceptor;
use ringloop::prelude::*;

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
                eprintln!("accept failed: {e}");
                let _ = ringloop::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

fn main() -> ringloop::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    ringloop::run(async move {
        let lp = get_running_loop()?;
        let addr = args
            .iter()
            .position(|a| a == "--serve")
            .and_then(|i| args.get(i + 1))
            .map(|a| a.parse().expect("--serve HOST:PORT"));
        let listener = Socket::tcp_listener(&addr.unwrap_or("127.0.0.1:0".parse().unwrap()), 128)?;
        let local = listener.local_addr()?;
        println!(
            "sock_* echo server ({}) on {:?}",
            lp.backend(),
            local.as_socket()
        );
        let server = lp.create_task(serve(lp.clone(), listener));
        if addr.is_some() {
            server.await?;
            return Ok(());
        }
        for i in 0..10u8 {
            let client = Socket::tcp_for(&local.as_socket().expect("inet"))?;
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
            "10 clients echoed correctly; driver: {:?}",
            lp.driver_stats()
        );
        server.cancel(None);
        Ok(())
    })?
}
