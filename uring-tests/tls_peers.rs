//! TLS against peers ringloop did not write, on both backends:
//! `openssl s_client` and `curl --cacert` against a ringloop TLS server, a
//! ringloop client against `openssl s_server`, TLS 1.2 and 1.3. A test
//! whose binary is missing says so LOUDLY and skips (.ci/run installs
//! them).

mod common;
#[path = "tls_support.rs"]
mod tls_support;

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;

use common::run_bounded;
use ringloop::prelude::*;
use ringloop::{BaseProtocol, ConnectOptions, ExtraInfo, Protocol, Transport};
use tls_support::*;

/// True if `bin` runs here; otherwise says LOUDLY that the test is skipped.
fn have(bin: &str) -> bool {
    let ok = std::process::Command::new(bin)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        || std::process::Command::new(bin)
            .arg("version")
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "!!! {bin} is not installed: this real-peer test is SKIPPED (.ci/run installs it)"
        );
    }
    ok
}

/// Answers one HTTP request with `hello` and closes (for curl).
struct HttpOnce(Option<Transport>, Vec<u8>);

impl BaseProtocol for HttpOnce {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
}

impl Protocol for HttpOnce {
    fn data_received(&mut self, data: &[u8]) {
        self.1.extend_from_slice(data);
        if self.1.windows(4).any(|w| w == b"\r\n\r\n") {
            let t = self.0.as_ref().unwrap();
            t.write(
                &b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n"[..],
            )
            .unwrap();
            t.close();
        }
    }
}

/// Echoes one chunk and closes (for openssl s_client).
struct EchoOnce(Option<Transport>);

impl BaseProtocol for EchoOnce {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
}

impl Protocol for EchoOnce {
    fn data_received(&mut self, data: &[u8]) {
        let t = self.0.as_ref().unwrap();
        t.write(data.to_vec()).unwrap();
        t.close();
    }
}

/// Runs `cmd` (with `stdin` piped in) on a worker thread; its stdout.
async fn run_peer(mut cmd: std::process::Command, stdin: &'static [u8]) -> (bool, String) {
    ringloop::to_thread(move || {
        use std::process::Stdio;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            format!(
                "{}\n--stderr--\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .unwrap()
}

both_backends! {
    fn openssl_s_client_and_curl_against_a_ringloop_tls_server(lp) {
        let l = lp.clone();
        run_bounded(lp, LIMIT, async move {
            let dir = pem_dir(&format!("{:?}-clients", l.backend()));
            if have("openssl") {
                let server = l
                    .create_server_with(|| EchoOnce(None), tls_server_opts(server_config()))
                    .await
                    .unwrap();
                let port = port_of(&server);
                for version in ["-tls1_2", "-tls1_3"] {
                    let mut cmd = std::process::Command::new("openssl");
                    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), version,
                        "-servername", "localhost", "-verify_return_error", "-quiet", "-CAfile"])
                        .arg(dir.join("ca.pem"));
                    let (ok, out) = run_peer(cmd, b"hello from s_client\n").await;
                    assert!(ok, "openssl s_client {version}: {out}");
                    assert!(out.starts_with("hello from s_client\n"), "{version}: {out}");
                }
                server.close();
            }
            if have("curl") {
                let server = l
                    .create_server_with(|| HttpOnce(None, Vec::new()), tls_server_opts(server_config()))
                    .await
                    .unwrap();
                let port = port_of(&server);
                for version in [&["--tlsv1.2", "--tls-max", "1.2"][..], &["--tlsv1.3"][..]] {
                    let mut cmd = std::process::Command::new("curl");
                    cmd.args(["-sS", "--max-time", "20", "--resolve", &format!("localhost:{port}:127.0.0.1"), "--cacert"])
                        .arg(dir.join("ca.pem"))
                        .args(version)
                        .arg(format!("https://localhost:{port}/"));
                    let (ok, out) = run_peer(cmd, b"").await;
                    assert!(ok, "curl {version:?}: {out}");
                    assert!(out.starts_with("hello\n"), "curl {version:?}: {out}");
                }
                server.close();
            }
            let _ = std::fs::remove_dir_all(dir);
        });
    }
}

/// Reads `openssl s_server`'s stdout up to its `ACCEPT ADDR:PORT` line (it
/// prints it once it listens) and returns the port; a thread drains the
/// rest so the server never blocks on a full pipe.
fn accept_port(stdout: std::process::ChildStdout) -> Option<u16> {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(stdout);
    let mut line = String::new();
    let port = loop {
        line.clear();
        if lines.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(addr) = line.trim().strip_prefix("ACCEPT ") {
            break addr.rsplit(':').next()?.parse().ok()?;
        }
    };
    std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
    Some(port)
}

both_backends! {
    fn ringloop_client_against_openssl_s_server_tls12_and_tls13(lp) {
        let l = lp.clone();
        run_bounded(lp, LIMIT, async move {
            if !have("openssl") {
                return;
            }
            let dir = pem_dir(&format!("{:?}-server", l.backend()));
            for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
                // s_server binds port 0 itself and prints `ACCEPT ADDR:PORT`
                // once it listens: no port picked here can race another test.
                let mut child = std::process::Command::new("openssl")
                    .args(["s_server", "-accept", "127.0.0.1:0", flag, "-rev", "-naccept", "1", "-cert"])
                    .arg(dir.join("cert.pem"))
                    .arg("-key")
                    .arg(dir.join("key.pem"))
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                let stdout = child.stdout.take().unwrap();
                let port = ringloop::to_thread(move || accept_port(stdout)).await.unwrap();
                let port = port.unwrap_or_else(|| panic!("{flag}: s_server printed no ACCEPT line"));
                let rec = Rc::new(RefCell::new(Rec {
                    want: 6,
                    got_enough: Some(l.create_future()),
                    ..Default::default()
                }));
                let tr = l
                    .create_connection_with({
                        let r = rec.clone();
                        move || r
                    }, ConnectOptions {
                        server_hostname: Some("localhost".into()),
                        ..tls_connect_opts(port)
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{flag}: {e:?}"));
                assert!(matches!(tr.get_extra_info("tls_version"), Some(ExtraInfo::Text(v)) if v == version));
                tr.write(&b"hello\n"[..]).unwrap();
                let got = rec.borrow().got_enough.clone().unwrap();
                got.await.unwrap();
                assert_eq!(rec.borrow().data, b"olleh\n", "{flag}");
                tr.close();
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_dir_all(dir);
        });
    }
}
