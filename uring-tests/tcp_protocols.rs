//! Transports and protocols over TCP and Unix sockets, servers and
//! connections, on both backends.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use ringloop::prelude::*;
use ringloop::{Protocol, Transport};

const LIMIT: Duration = Duration::from_secs(20);

/// Echoes everything back.
struct Echo {
    t: Option<Transport>,
}

impl Protocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.t.as_ref().unwrap().write(data.to_vec()).unwrap();
    }
}

/// Records every callback, in order.
#[derive(Default)]
struct Recorder {
    events: Vec<String>,
    data: Vec<u8>,
    transport: Option<Transport>,
    keep_open: bool,
    done: Option<LoopFuture<()>>,
}

impl Protocol for Recorder {
    fn connection_made(&mut self, t: Transport) {
        self.events.push("made".into());
        self.transport = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        if self.events.last().map(String::as_str) != Some("data") {
            self.events.push("data".into());
        }
        self.data.extend_from_slice(data);
    }
    fn eof_received(&mut self) -> bool {
        self.events.push("eof".into());
        self.keep_open
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        self.events.push(format!("lost:{}", exc.map_or("none".into(), |e| e.to_string())));
        if let Some(d) = self.done.take() {
            let _ = d.set_result(());
        }
    }
}

both_backends! {
    fn echo_server_and_client(lp) {
        let got = common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let server = lp.create_server(|| Echo { t: None }, "127.0.0.1", 0).await.unwrap();
            let port = server.sockets()[0].as_socket().unwrap().port();
            let done = lp.create_future::<()>();
            let rec = Rc::new(RefCell::new(Recorder { done: Some(done.clone()), ..Default::default() }));
            let r2 = rec.clone();
            let t = lp.create_connection(move || r2, "127.0.0.1", port).await.unwrap();
            t.write(&b"hello "[..]).unwrap();
            t.write(&b"world"[..]).unwrap();
            while rec.borrow().data.len() < 11 {
                ringloop::sleep(Duration::from_millis(1)).await.unwrap();
            }
            t.close();
            done.await.unwrap();
            server.close();
            server.wait_closed().await;
            let r = rec.borrow();
            (r.data.clone(), r.events.clone())
        });
        assert_eq!(got.0, b"hello world");
        assert_eq!(got.1, ["made", "data", "lost:none"]);
    }
}
