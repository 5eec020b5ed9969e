//! A TLS echo server and client on ringloop's streams and rustls.
//!
//! - every connection's bytes come back, line or not, through TLS;
//! - back-pressure: the server waits (`drain`) while a client does not
//!   read what it echoed, so it stops reading that client too;
//! - bad input costs one connection: a plaintext client, random bytes or a
//!   handshake that stalls (`--handshake-timeout`, 10 s by default) get a
//!   TLS alert or are dropped, and the server serves the next client.
//!
//! `cargo run --release --example tls_echo -- --serve 127.0.0.1:8443`
//! serves until Ctrl-C with the certificate in `--certs DIR` (`cert.pem`,
//! `key.pem`; made there as a test CA and a `localhost` leaf if absent:
//! try `openssl s_client -connect 127.0.0.1:8443 -CAfile DIR/ca.pem`).
//! With no arguments it checks itself (echoes, a 4 MiB message, a
//! plaintext client, a client that never reads) and exits.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info};
use ringloop::prelude::*;
use ringloop::tls::rustls;
use ringloop::{ConnectOptions, ServerOptions, StreamReader, StreamWriter};

const USAGE: &str = "usage: tls_echo [--serve ADDR] [--certs DIR] [--handshake-timeout SECS]

  --serve ADDR               serve on ADDR (127.0.0.1:P, [::1]:P or localhost:P) until Ctrl-C;
                             without it, check the server against itself and exit
  --certs DIR                cert.pem and key.pem to serve with; made there (with the
                             ca.pem clients trust) if absent (default: a temp dir)
  --handshake-timeout SECS   drop a client whose TLS handshake takes longer (default 10)
  RUST_LOG=ringloop=debug shows the loop's own messages (failed handshakes too)";

async fn echo(r: StreamReader, w: StreamWriter) {
    loop {
        match r.read(64 * 1024).await {
            Ok(b) if b.is_empty() => break,
            Ok(b) => {
                if w.write(b).is_err() {
                    return;
                }
                // Back-pressure: no more reading while the client does not
                // read what was echoed.
                if let Err(e) = w.drain().await {
                    debug!("client gone: {e}");
                    return;
                }
            }
            Err(e) => {
                debug!("client error: {e}");
                return;
            }
        }
    }
    w.close();
}

async fn serve(
    host: &str,
    port: u16,
    config: Arc<rustls::ServerConfig>,
    handshake: Duration,
) -> ringloop::Result<ringloop::Server> {
    ringloop::start_server_with(
        echo,
        ringloop::DEFAULT_LIMIT,
        ServerOptions {
            hosts: vec![host.to_owned()],
            port,
            ssl: Some(config),
            ssl_handshake_timeout: Some(handshake),
            ..Default::default()
        },
    )
    .await
}

fn connect_opts(port: u16, client: &Arc<rustls::ClientConfig>) -> ConnectOptions {
    ConnectOptions {
        host: Some("127.0.0.1".into()),
        port,
        ssl: Some(client.clone()),
        ..Default::default()
    }
}

async fn self_check(lp: EventLoop, dir: PathBuf) -> ringloop::Result<()> {
    let server = serve(
        "127.0.0.1",
        0,
        common::tls::server_config(&dir, &[])?,
        Duration::from_secs(2),
    )
    .await?;
    let port = server.sockets()[0].as_socket().expect("inet").port();
    let client = common::tls::client_config(&dir)?;
    info!("tls_echo ({}) on 127.0.0.1:{port}", lp.backend());

    // Echoes, and one 4 MiB message (it comes back in pieces).
    let (r, w) =
        ringloop::open_connection_with(ringloop::DEFAULT_LIMIT, connect_opts(port, &client))
            .await?;
    for i in 0..10 {
        let line = format!("line {i}\n");
        w.write(line.clone())?;
        assert_eq!(r.readline().await?, line.as_bytes());
    }
    let big: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    w.write(big.clone())?;
    w.drain().await?;
    assert_eq!(r.readexactly(big.len()).await?, big);
    w.close();
    w.wait_closed().await?;

    // A plaintext client gets a TLS alert and the close; the next TLS
    // client is served.
    let (pr, pw) = ringloop::open_connection("127.0.0.1", port).await?;
    pw.write(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..])?;
    let answer = ringloop::wait_for(pr.read(-1), Duration::from_secs(5)).await??;
    assert_eq!(answer.first(), Some(&21), "a TLS alert record");
    let (r, w) =
        ringloop::open_connection_with(ringloop::DEFAULT_LIMIT, connect_opts(port, &client))
            .await?;
    w.write(&b"after a bad client\n"[..])?;
    assert_eq!(&r.readline().await?[..], b"after a bad client\n");
    w.close();

    // A client that sends 64 MiB and never reads is stalled: the server
    // stops reading it once its echo backs up.
    let (_r, w) =
        ringloop::open_connection_with(ringloop::DEFAULT_LIMIT, connect_opts(port, &client))
            .await?;
    let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    let total = 64 << 20;
    let mut sent = 0;
    while sent < total {
        w.write(chunk.clone())?;
        match ringloop::wait_for(w.drain(), Duration::from_millis(300)).await {
            Ok(r) => r?,
            Err(ringloop::Error::Timeout) => break,
            Err(e) => return Err(e),
        }
        sent += chunk.len();
    }
    assert!(
        sent < total,
        "the server read all {sent} bytes: no back-pressure"
    );
    info!(
        "a TLS client that never reads sent {} KiB before it stalled",
        sent >> 10
    );
    w.transport().abort();
    server.close();
    server.wait_closed().await;
    println!(
        "tls_echo ({}): echoes, 4 MiB, a plaintext client, back-pressure OK",
        lp.backend()
    );
    Ok(())
}

fn main() -> ExitCode {
    common::init_logging();
    let args = match common::Args::parse(USAGE, &["--certs", "--handshake-timeout"]) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let dir = match args.get::<PathBuf>(USAGE, "--certs") {
        Ok(d) => d.unwrap_or_else(|| common::tls::temp_cert_dir("tls_echo")),
        Err(code) => return code,
    };
    let handshake = match args.get::<f64>(USAGE, "--handshake-timeout") {
        Ok(v) => match Duration::try_from_secs_f64(v.unwrap_or(10.0)) {
            Ok(d) => d,
            Err(_) => {
                eprintln!("error: --handshake-timeout must be a number of seconds\n\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        Err(code) => return code,
    };
    if let Err(e) = common::tls::ensure_certs(&dir) {
        eprintln!("error: certificates in {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    common::exit(ringloop::run(async move {
        let lp = get_running_loop()?;
        let Some(addr) = args.serve else {
            let r = self_check(lp, dir.clone()).await;
            let _ = std::fs::remove_dir_all(&dir);
            return r;
        };
        let config = common::tls::server_config(&dir, &[])?;
        let server = serve(&addr.host, addr.port, config, handshake).await?;
        info!(
            "tls_echo ({}) on {}; clients trust {}",
            lp.backend(),
            common::addrs(&server),
            dir.join("ca.pem").display()
        );
        server.serve_forever().await
    }))
}
