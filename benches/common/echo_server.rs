//! The echo server the network benches measure (Protocol API), run in a
//! child process of the bench binary: `--server proactor|selector`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use ringloop::prelude::*;
use ringloop::{BaseProtocol, Protocol, RecvBuf, Transport};

/// Echoes each receive buffer back as it is (no copy, no allocation).
pub struct Echo(pub Option<Transport>);

impl BaseProtocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
}

impl Protocol for Echo {
    fn data_received_owned(&mut self, data: RecvBuf) {
        if let Some(t) = &self.0 {
            let _ = t.write(data);
        }
    }
    // Data that did not arrive in a pool buffer (rare: the pool ran dry).
    fn data_received(&mut self, data: &[u8]) {
        if let Some(t) = &self.0 {
            let _ = t.write(data.to_vec());
        }
    }
}

/// Raises the soft fd limit as far as the hard one allows (up to 65536).
pub fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer, then a valid rlimit with soft <= hard.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max.min(65536);
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

/// If this process was started with `--server BACKEND`, serves and never
/// returns; otherwise returns.
pub fn serve_if_asked() {
    let args: Vec<String> = std::env::args().collect();
    let Some(i) = args.iter().position(|a| a == "--server") else {
        return;
    };
    raise_nofile();
    let lp = match args[i + 1].as_str() {
        "proactor" => EventLoop::proactor(),
        _ => EventLoop::selector(),
    }
    .expect("loop");
    lp.run_until_complete(async {
        let lp = get_running_loop().unwrap();
        let server = lp
            .create_server_with(
                || Echo(None),
                ringloop::ServerOptions {
                    hosts: vec!["127.0.0.1".into()],
                    backlog: 4096,
                    ..Default::default()
                },
            )
            .await
            .expect("server");
        println!("PORT {}", server.sockets()[0].as_socket().unwrap().port());
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        server.serve_forever().await.unwrap();
    })
    .unwrap();
    std::process::exit(0);
}

/// Starts a server child on `backend` (pinned to `cpu` when `taskset`
/// exists) and returns it with its port.
pub fn spawn_server(backend: &str, cpu: Option<u32>) -> (Child, u16) {
    let exe = std::env::current_exe().unwrap();
    let pin = cpu.filter(|_| Command::new("taskset").arg("--version").output().is_ok());
    let mut cmd = match pin {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.args(["-c", &c.to_string()]).arg(&exe);
            t
        }
        None => Command::new(&exe),
    };
    let mut child = cmd
        .args(["--server", backend])
        .stdout(Stdio::piped())
        .spawn()
        .expect("server process");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .expect("port line")
        .parse()
        .unwrap();
    (child, port)
}
