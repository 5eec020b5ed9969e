//! A minimal HTTP/1.1 server: keep-alive and pipelining, good enough for
//! `wrk`, `ab -k`, `h2load --h1` and `curl`.
//!
//! `cargo run --release --example http_hello -- --serve 127.0.0.1:8080`
//! serves until Ctrl-C; with no arguments it sends pipelined requests to
//! itself, checks the answers, and exits.

use std::time::Duration;

use ringloop::prelude::*;
use ringloop::{Protocol, Transport};

const BODY: &[u8] = b"Hello, world!";

/// Parses requests out of the byte stream and answers each in order.
struct Http {
    transport: Option<Transport>,
    buf: Vec<u8>,
}

impl Http {
    fn response(keep_alive: bool) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nServer: ringloop\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n",
            BODY.len(),
            if keep_alive { "" } else { "Connection: close\r\n" }
        )
        .into_bytes()
        .into_iter()
        .chain(BODY.iter().copied())
        .collect()
    }
}

impl Protocol for Http {
    fn connection_made(&mut self, transport: Transport) {
        self.transport = Some(transport);
    }

    fn data_received(&mut self, data: &[u8]) {
        let Some(t) = &self.transport else { return };
        self.buf.extend_from_slice(data);
        let mut start = 0;
        let mut out = Vec::new();
        let mut close = false;
        // Every complete request in the buffer gets its answer (pipelining);
        // the answers leave together in one write.
        while let Some(end) = find(&self.buf[start..], b"\r\n\r\n") {
            let head = &self.buf[start..start + end];
            let text = String::from_utf8_lossy(head).to_ascii_lowercase();
            let http10 = text.starts_with("get")
                && text.lines().next().is_some_and(|l| l.ends_with("http/1.0"));
            let keep = if http10 {
                text.contains("connection: keep-alive")
            } else {
                !text.contains("connection: close")
            };
            out.extend_from_slice(&Self::response(keep));
            start += end + 4;
            if !keep {
                close = true;
                break;
            }
        }
        self.buf.drain(..start);
        if self.buf.len() > 64 * 1024 {
            // Not HTTP, or a header too large: one bad client costs one connection.
            t.abort();
            return;
        }
        if !out.is_empty() {
            let _ = t.write(out);
        }
        if close {
            t.close();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn main() -> ringloop::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    ringloop::run(async move {
        let lp = get_running_loop()?;
        let factory = || Http {
            transport: None,
            buf: Vec::new(),
        };
        if let Some(addr) = args
            .iter()
            .position(|a| a == "--serve")
            .and_then(|i| args.get(i + 1))
        {
            let (host, port) = addr.rsplit_once(':').expect("--serve HOST:PORT");
            let server = lp
                .create_server_with(
                    factory,
                    ringloop::ServerOptions {
                        hosts: vec![host.to_owned()],
                        port: port.parse().expect("port"),
                        backlog: 1024,
                        ..Default::default()
                    },
                )
                .await?;
            println!(
                "http_hello ({}) on {:?}",
                lp.backend(),
                server.sockets()[0].as_socket()
            );
            return server.serve_forever().await;
        }
        let server = lp.create_server(factory, "127.0.0.1", 0).await?;
        let port = server.sockets()[0].as_socket().expect("inet").port();
        // Ten pipelined requests in one write, the last asks to close.
        let mut req = Vec::new();
        for i in 0..10 {
            let close = if i == 9 { "Connection: close\r\n" } else { "" };
            req.extend_from_slice(format!("GET / HTTP/1.1\r\nHost: x\r\n{close}\r\n").as_bytes());
        }
        let (r, w) = ringloop::open_connection("127.0.0.1", port).await?;
        w.write(req)?;
        let all = ringloop::wait_for(r.read(-1), Duration::from_secs(5)).await??;
        let text = String::from_utf8_lossy(&all);
        let answers = text.matches("HTTP/1.1 200 OK").count();
        assert_eq!(answers, 10, "{text}");
        assert!(text.ends_with("Hello, world!"));
        println!(
            "http_hello ({}): 10 pipelined requests answered",
            lp.backend()
        );
        server.close();
        Ok(())
    })?
}
