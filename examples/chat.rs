//! A chat server: every line a client sends is broadcast to the others.
//!
//! `cargo run --release --example chat -- --serve 127.0.0.1:7000` serves
//! until Ctrl-C (try several `nc 127.0.0.1 7000`); with no arguments three
//! clients chat with each other and it exits.

mod common;

use std::cell::RefCell;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use log::{info, warn};
use ringloop::{StreamReader, StreamWriter, open_connection, start_server};

const USAGE: &str = "usage: chat [--serve ADDR]

  --serve ADDR   serve on ADDR (127.0.0.1:P, [::1]:P or localhost:P) until Ctrl-C;
                 without it, three clients chat with each other and it exits
  RUST_LOG=ringloop=debug shows the loop's own messages";

type Room = Rc<RefCell<Vec<(u64, StreamWriter)>>>;

async fn client(room: Room, id: u64, reader: StreamReader, writer: StreamWriter) {
    room.borrow_mut().push((id, writer.clone()));
    info!("#{id} joined ({} in the room)", room.borrow().len());
    let _ = writer.write(format!("welcome, you are #{id}\n"));
    while let Some(Ok(line)) = reader.next_line().await {
        let msg = format!("#{id}: {}", String::from_utf8_lossy(&line));
        let others: Vec<(u64, StreamWriter)> = room
            .borrow()
            .iter()
            .filter(|(i, _)| *i != id)
            .cloned()
            .collect();
        for (other, w) in others {
            // A client that does not read is dropped rather than let the
            // server's memory grow.
            if w.write(msg.clone()).is_err() || w.transport().get_write_buffer_size() > 1 << 20 {
                warn!("#{other} does not read: dropped");
                w.transport().abort();
            }
        }
    }
    room.borrow_mut().retain(|(i, _)| *i != id);
    info!("#{id} left");
    writer.close();
}

fn main() -> ExitCode {
    common::init_logging();
    let args = match common::Args::parse(USAGE, &[]) {
        Ok(a) => a,
        Err(code) => return code,
    };
    common::exit(ringloop::run(async move {
        let room: Room = Rc::default();
        let next = Rc::new(std::cell::Cell::new(1u64));
        let serve = move |r, w| {
            let id = next.get();
            next.set(id + 1);
            client(room.clone(), id, r, w)
        };
        if let Some(addr) = args.serve {
            let server = start_server(serve, &addr.host, addr.port).await?;
            info!("chat server on {}", common::addrs(&server));
            return server.serve_forever().await;
        }
        let server = start_server(serve, "127.0.0.1", 0).await?;
        let port = server.sockets()[0].as_socket().expect("inet").port();
        let mut clients = Vec::new();
        for _ in 0..3 {
            let (r, w) = open_connection("127.0.0.1", port).await?;
            let hello = r.readline().await?;
            assert!(hello.starts_with(b"welcome"));
            clients.push((r, w));
        }
        clients[0].1.write(&b"hi all\n"[..])?;
        for (r, _) in &clients[1..] {
            let line = ringloop::wait_for(r.readline(), Duration::from_secs(5)).await??;
            assert!(line.ends_with(b"hi all\n"), "{line:?}");
        }
        println!("chat: a line from one client reached the other two");
        for (_, w) in &clients {
            w.close();
        }
        server.close();
        Ok(())
    }))
}
