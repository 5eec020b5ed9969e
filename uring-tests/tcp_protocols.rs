//! Transports and protocols over TCP and Unix sockets, servers and
//! connections, on both backends.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::Rng;
use common::fds::raise_nofile;
use ringloop::prelude::*;
use ringloop::{BaseProtocol, Protocol, Transport};

const LIMIT: Duration = Duration::from_secs(20);

/// Echoes everything back.
struct Echo {
    t: Option<Transport>,
}

impl BaseProtocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
}

impl Protocol for Echo {
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

impl BaseProtocol for Recorder {
    fn connection_made(&mut self, t: Transport) {
        self.events.push("made".into());
        self.transport = Some(t);
    }
    fn eof_received(&mut self) -> bool {
        self.events.push("eof".into());
        self.keep_open
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        self.events.push(format!(
            "lost:{}",
            exc.map_or("none".into(), |e| e.to_string())
        ));
        if let Some(d) = self.done.take() {
            let _ = d.set_result(());
        }
    }
}

impl Protocol for Recorder {
    fn data_received(&mut self, data: &[u8]) {
        if self.events.last().map(String::as_str) != Some("data") {
            self.events.push("data".into());
        }
        self.data.extend_from_slice(data);
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
            // A borrowed write sends a copy: the caller's buffer is its own
            // again at once.
            let mut part = b"world".to_vec();
            t.write_slice(&part).unwrap();
            part.copy_from_slice(b"XXXXX");
            assert_eq!(part, b"XXXXX");
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

/// FNV-1a over a byte stream, fed in pieces.
#[derive(Clone, Copy)]
struct Fnv(u64);
impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf29ce484222325)
    }
    fn feed(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100000001b3);
        }
    }
}

/// Counts and hashes what arrives; replies with the hash at EOF.
#[derive(Default)]
struct Sink {
    t: Option<Transport>,
    n: usize,
    h: Option<Fnv>,
}
impl BaseProtocol for Sink {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
        self.h = Some(Fnv::new());
    }
    fn eof_received(&mut self) -> bool {
        let t = self.t.as_ref().unwrap();
        t.write(format!("{} {:x}", self.n, self.h.unwrap().0))
            .unwrap();
        t.close();
        true
    }
}

impl Protocol for Sink {
    fn data_received(&mut self, data: &[u8]) {
        self.n += data.len();
        self.h.as_mut().unwrap().feed(data);
    }
}

both_backends! {
    fn large_transfer_64_mib_with_checksum(lp) {
        let (reply, expect) = common::run_bounded(lp, Duration::from_secs(60), async {
            let lp = get_running_loop().unwrap();
            let server = lp.create_server(Sink::default, "127.0.0.1", 0).await.unwrap();
            let port = server.sockets()[0].as_socket().unwrap().port();
            let rec = Rc::new(RefCell::new(Recorder::default()));
            let done = lp.create_future::<()>();
            rec.borrow_mut().done = Some(done.clone());
            rec.borrow_mut().keep_open = true;
            let r2 = rec.clone();
            let t = lp.create_connection(move || r2, "127.0.0.1", port).await.unwrap();
            let total = 64 << 20;
            let mut h = Fnv::new();
            let mut rng = Rng(7);
            let mut sent = 0;
            while sent < total {
                let n = (1 + rng.next() % 200_000) as usize;
                let n = n.min(total - sent);
                let chunk: Vec<u8> = (0..n).map(|i| (sent + i) as u8 ^ 0x5a).collect();
                h.feed(&chunk);
                t.write(chunk).unwrap();
                sent += n;
                // Respect back-pressure: let the buffer drain.
                while t.get_write_buffer_size() > 4 << 20 {
                    ringloop::sleep(Duration::ZERO).await.unwrap();
                }
            }
            t.write_eof().unwrap();
            done.await.unwrap();
            server.close();
            let reply = String::from_utf8(rec.borrow().data.clone()).unwrap();
            (reply, format!("{} {:x}", total, h.0))
        });
        assert_eq!(reply, expect);
        assert_eq!(lp.pool_buffers_out(), 0, "every pool buffer came back");
    }
}

/// Echo client: sends its chunks, checks the echo, then closes.
struct EchoCheck {
    t: Option<Transport>,
    expect: Vec<u8>,
    got: Vec<u8>,
    chunks: Vec<Vec<u8>>,
    /// Per connection: `None` until its connection_lost, then whether
    /// its echo was right.
    done: Rc<RefCell<Vec<Option<bool>>>>,
    idx: usize,
}
impl BaseProtocol for EchoCheck {
    fn connection_made(&mut self, t: Transport) {
        for c in self.chunks.drain(..) {
            t.write(c).unwrap();
        }
        self.t = Some(t);
    }
    fn connection_lost(&mut self, _: Option<Error>) {
        self.done.borrow_mut()[self.idx] = Some(self.got == self.expect);
    }
}

impl Protocol for EchoCheck {
    fn data_received(&mut self, data: &[u8]) {
        self.got.extend_from_slice(data);
        if self.got.len() >= self.expect.len() {
            self.t.as_ref().unwrap().close();
        }
    }
}

both_backends! {
    fn thousand_concurrent_connections_lose_nothing(lp) {
        raise_nofile(8192);
        let n = 1000;
        let ok = common::run_bounded(lp, Duration::from_secs(60), async move {
            let lp = get_running_loop().unwrap();
            let server = lp
                .create_server_with(|| Echo { t: None }, ringloop::ServerOptions {
                    hosts: vec!["127.0.0.1".into()],
                    backlog: 1024,
                    ..Default::default()
                })
                .await
                .unwrap();
            let port = server.sockets()[0].as_socket().unwrap().port();
            let done = Rc::new(RefCell::new(vec![None; n]));
            let mut rng = Rng(42);
            let mut conns = Vec::new();
            for idx in 0..n {
                let mut chunks = Vec::new();
                let mut expect = Vec::new();
                for _ in 0..(1 + rng.next() % 5) {
                    let len = (1 + rng.next() % 3000) as usize;
                    let c: Vec<u8> = (0..len).map(|j| (idx + j) as u8).collect();
                    expect.extend_from_slice(&c);
                    chunks.push(c);
                }
                let d = done.clone();
                let lp2 = lp.clone();
                conns.push(lp.create_task(async move {
                    lp2.create_connection(
                        move || EchoCheck { t: None, expect, got: Vec::new(), chunks, done: d, idx },
                        "127.0.0.1",
                        port,
                    )
                    .await
                }));
            }
            for c in conns {
                c.await.unwrap().unwrap();
            }
            // Until every client's connection_lost has run (bounded by the
            // run's limit), not for a while after the server's last one.
            while done.borrow().iter().any(Option::is_none) {
                ringloop::sleep(Duration::from_millis(5)).await.unwrap();
            }
            server.close();
            server.wait_closed().await;
            done.borrow().iter().filter(|x| **x == Some(true)).count()
        });
        assert_eq!(ok, n, "connections with a wrong or missing echo");
    }
}

/// Writes 32 MiB as fast as flow control lets it; records flow-control calls.
struct Producer {
    t: Option<Transport>,
    log: Rc<RefCell<Vec<&'static str>>>,
    paused: bool,
    max_buffered: Rc<std::cell::Cell<usize>>,
    left: usize,
}
impl Producer {
    fn fill(&mut self) {
        let t = self.t.as_ref().unwrap();
        // Inside its own callback the protocol learns of the pause from the
        // transport; pause_writing itself follows when the callback returns.
        while !self.paused && !t.is_writing_paused() && self.left > 0 {
            t.write(vec![1u8; 16 * 1024]).unwrap();
            self.left -= 16 * 1024;
            self.max_buffered
                .set(self.max_buffered.get().max(t.get_write_buffer_size()));
        }
        if self.left == 0 {
            t.close();
        }
    }
}
impl BaseProtocol for Producer {
    fn connection_made(&mut self, t: Transport) {
        t.set_write_buffer_limits(Some(256 * 1024), None).unwrap();
        assert_eq!(t.get_write_buffer_limits(), (64 * 1024, 256 * 1024));
        self.t = Some(t);
        self.fill();
    }
    fn pause_writing(&mut self) {
        self.log.borrow_mut().push("pause");
        self.paused = true;
    }
    fn resume_writing(&mut self) {
        self.log.borrow_mut().push("resume");
        self.paused = false;
        self.fill();
    }
}

impl Protocol for Producer {}

both_backends! {
    fn back_pressure_pairs_pause_and_resume_and_bounds_memory(lp) {
        let (log, max) = common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let log = Rc::new(RefCell::new(Vec::new()));
            let max = Rc::new(std::cell::Cell::new(0));
            let (l2, m2) = (log.clone(), max.clone());
            let server = lp
                .create_server(
                    move || Producer {
                        t: None,
                        log: l2.clone(),
                        paused: false,
                        max_buffered: m2.clone(),
                        left: 32 << 20,
                    },
                    "127.0.0.1",
                    0,
                )
                .await
                .unwrap();
            let port = server.sockets()[0].as_socket().unwrap().port();
            // A client that does not read at first.
            let rec = Rc::new(RefCell::new(Recorder::default()));
            let done = lp.create_future::<()>();
            rec.borrow_mut().done = Some(done.clone());
            let r2 = rec.clone();
            let t = lp.create_connection(move || r2, "127.0.0.1", port).await.unwrap();
            t.pause_reading();
            assert!(!t.is_reading());
            // The kernel's buffers fill and nobody reads: the producer ends
            // up paused for good. Pauses come and go while the kernel still
            // takes data; wait (bounded) until one has held over 50 turns
            // with no flow-control call, instead of sleeping 200 ms and
            // hoping the buffers were full by then.
            let (mut seen, mut held) = (0, 0);
            for _ in 0..20_000 {
                if held == 50 {
                    break;
                }
                ringloop::sleep(Duration::from_millis(1)).await.unwrap();
                let l = log.borrow();
                if l.len() == seen && l.last() == Some(&"pause") {
                    held += 1;
                } else {
                    (seen, held) = (l.len(), 0);
                }
            }
            assert_eq!(held, 50, "the producer is not paused while nobody reads: {:?}", log.borrow());
            t.resume_reading();
            done.await.unwrap();
            assert_eq!(rec.borrow().data.len(), 32 << 20, "every byte arrived");
            server.close();
            (log.borrow().clone(), max.get())
        });
        assert!(log.len() >= 2 && log.len() % 2 == 0, "{log:?}");
        for pair in log.chunks(2) {
            assert_eq!(pair, ["pause", "resume"], "calls are paired: {log:?}");
        }
        assert!(max <= 256 * 1024 + 16 * 1024, "write buffer grew to {max}");
    }
}

both_backends! {
    fn half_close_keeps_the_other_direction(lp) {
        let (client_events, server_events, reply) = common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            // Server: on EOF, answer and then close.
            let server_done = lp.create_future::<()>();
            let sev = Rc::new(RefCell::new(Recorder { keep_open: true, done: Some(server_done.clone()), ..Default::default() }));
            let s2 = sev.clone();
            struct Answer(Rc<RefCell<Recorder>>);
            impl BaseProtocol for Answer {
                fn connection_made(&mut self, t: Transport) { self.0.borrow_mut().connection_made(t) }
                fn eof_received(&mut self) -> bool {
                    let mut r = self.0.borrow_mut();
                    r.eof_received();
                    let t = r.transport.clone().unwrap();
                    assert!(t.can_write_eof());
                    t.write(format!("got {} bytes", r.data.len())).unwrap();
                    t.close();
                    true
                }
                fn connection_lost(&mut self, e: Option<Error>) { self.0.borrow_mut().connection_lost(e) }
            }

            impl Protocol for Answer {
                fn data_received(&mut self, d: &[u8]) { self.0.borrow_mut().data_received(d) }
            }
            let server = lp.create_server(move || Answer(s2.clone()), "127.0.0.1", 0).await.unwrap();
            let port = server.sockets()[0].as_socket().unwrap().port();
            let done = lp.create_future::<()>();
            let rec = Rc::new(RefCell::new(Recorder { done: Some(done.clone()), keep_open: true, ..Default::default() }));
            let r2 = rec.clone();
            let t = lp.create_connection(move || r2, "127.0.0.1", port).await.unwrap();
            t.write(&b"12345"[..]).unwrap();
            t.write_eof().unwrap();
            assert!(matches!(t.write(&b"x"[..]), Err(Error::InvalidState(_))));
            done.await.unwrap();
            // And the server side's connection_lost (not a 10 ms sleep).
            server_done.await.unwrap();
            server.close();
            let r = rec.borrow();
            (r.events.clone(), sev.borrow().events.clone(), String::from_utf8(r.data.clone()).unwrap())
        });
        assert_eq!(reply, "got 5 bytes");
        assert_eq!(server_events, ["made", "data", "eof", "lost:none"]);
        assert_eq!(client_events, ["made", "data", "eof", "lost:none"]);
    }
}

both_backends! {
    fn peer_reset_costs_one_connection(lp) {
        let (events, still_serving) = common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let done = lp.create_future::<()>();
            let rec = Rc::new(RefCell::new(Recorder { done: Some(done.clone()), ..Default::default() }));
            let r2 = rec.clone();
            let first = Rc::new(std::cell::Cell::new(true));
            struct Either(Option<Rc<RefCell<Recorder>>>, Echo);
            impl BaseProtocol for Either {
                fn connection_made(&mut self, t: Transport) {
                    match &self.0 { Some(r) => r.borrow_mut().connection_made(t), None => self.1.connection_made(t) }
                }
                fn connection_lost(&mut self, e: Option<Error>) {
                    if let Some(r) = &self.0 { r.borrow_mut().connection_lost(e) }
                }
            }

            impl Protocol for Either {
                fn data_received(&mut self, d: &[u8]) {
                    match &self.0 { Some(r) => r.borrow_mut().data_received(d), None => self.1.data_received(d) }
                }
            }
            let server = lp
                .create_server(
                    move || Either(first.replace(false).then(|| r2.clone()), Echo { t: None }),
                    "127.0.0.1",
                    0,
                )
                .await
                .unwrap();
            let addr = server.sockets()[0].as_socket().unwrap();
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.connect(&addr.into()).unwrap();
            // Once the server has the connection (connection_made), not
            // after 20 ms that may not have been enough:
            while rec.borrow().events.is_empty() {
                ringloop::sleep(Duration::from_millis(1)).await.unwrap();
            }
            // Close with SO_LINGER 0: the server gets a reset.
            s.set_linger(Some(Duration::ZERO)).unwrap();
            drop(s);
            done.await.unwrap();
            // Another client is still served.
            let ok = ringloop::open_connection("127.0.0.1", addr.port()).await;
            let (r, w) = ok.unwrap();
            w.write(&b"still here"[..]).unwrap();
            let echoed = r.readexactly(10).await.unwrap();
            server.close();
            (rec.borrow().events.clone(), echoed)
        });
        assert_eq!(events[0], "made");
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events[1] == "lost:none" || events[1].contains("reset"), "{events:?}");
        assert_eq!(&still_serving[..], b"still here");
    }
}

both_backends! {
    fn peer_vanishing_mid_write_reports_the_error(lp) {
        let events = common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            let done = lp.create_future::<()>();
            let rec = Rc::new(RefCell::new(Recorder { done: Some(done.clone()), ..Default::default() }));
            let r2 = rec.clone();
            let t = lp.create_connection(move || r2, "127.0.0.1", port).await.unwrap();
            let (peer, _) = l.accept().unwrap();
            for _ in 0..64 {
                t.write(vec![0u8; 256 * 1024]).unwrap();
            }
            // Mid-write: once some of it went to the kernel (the peer does
            // not read, so most stays buffered).
            while t.get_write_buffer_size() == 64 * 256 * 1024 {
                ringloop::sleep(Duration::from_millis(1)).await.unwrap();
            }
            socket2::SockRef::from(&peer).set_linger(Some(Duration::ZERO)).unwrap();
            drop(peer);
            done.await.unwrap();
            assert!(t.is_closing());
            assert!(matches!(t.write(&b"more"[..]), Err(Error::Closed(_))));
            rec.borrow().events.clone()
        });
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events[1].starts_with("lost:") && events[1] != "lost:none", "{events:?}");
    }
}

both_backends! {
    fn protocol_panic_costs_one_connection(lp) {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let s2 = seen.clone();
        lp.set_exception_handler(Some(Rc::new(move |_, ctx| s2.borrow_mut().push(ctx.message.clone()))));
        let echoed = common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let n = Rc::new(std::cell::Cell::new(0));
            struct Bomb(bool, Echo);
            impl BaseProtocol for Bomb {
                fn connection_made(&mut self, t: Transport) { self.1.connection_made(t) }
            }

            impl Protocol for Bomb {
                fn data_received(&mut self, d: &[u8]) {
                    if self.0 { panic!("protocol bug") }
                    self.1.data_received(d)
                }
            }
            let server = lp
                .create_server(move || { n.set(n.get() + 1); Bomb(n.get() == 1, Echo { t: None }) }, "127.0.0.1", 0)
                .await
                .unwrap();
            let port = server.sockets()[0].as_socket().unwrap().port();
            let (r, w) = ringloop::open_connection("127.0.0.1", port).await.unwrap();
            w.write(&b"boom"[..]).unwrap();
            assert!(r.read(-1).await.unwrap().is_empty(), "the panicking connection is closed");
            let (r, w) = ringloop::open_connection("127.0.0.1", port).await.unwrap();
            w.write(&b"fine"[..]).unwrap();
            let e = r.readexactly(4).await.unwrap();
            server.close();
            e
        });
        assert_eq!(&echoed[..], b"fine");
        assert!(seen.borrow().iter().any(|m| m.contains("panicked")), "{:?}", seen.borrow());
    }
}

both_backends! {
    fn pause_reading_holds_data_back_without_losing_it(lp) {
        let data = common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            let rec = Rc::new(RefCell::new(Recorder::default()));
            let r2 = rec.clone();
            let t = lp.create_connection(move || r2, "127.0.0.1", port).await.unwrap();
            let (mut peer, _) = l.accept().unwrap();
            use std::io::Write;
            peer.write_all(b"one ").unwrap();
            while rec.borrow().data.len() < 4 {
                ringloop::sleep(Duration::from_millis(1)).await.unwrap();
            }
            t.pause_reading();
            t.pause_reading();
            peer.write_all(b"two ").unwrap();
            ringloop::sleep(Duration::from_millis(50)).await.unwrap();
            assert_eq!(rec.borrow().data, b"one ", "no data_received while paused");
            peer.write_all(b"three").unwrap();
            t.resume_reading();
            assert!(t.is_reading());
            while rec.borrow().data.len() < 13 {
                ringloop::sleep(Duration::from_millis(1)).await.unwrap();
            }
            t.abort();
            rec.borrow().data.clone()
        });
        assert_eq!(data, b"one two three");
    }
}

both_backends! {
    fn server_close_clients_abort_clients_and_wait_closed(lp) {
        common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let server = lp.create_server(|| Echo { t: None }, "127.0.0.1", 0).await.unwrap();
            assert!(server.is_serving());
            let port = server.sockets()[0].as_socket().unwrap().port();
            let (r1, w1) = ringloop::open_connection("127.0.0.1", port).await.unwrap();
            let (r2, w2) = ringloop::open_connection("127.0.0.1", port).await.unwrap();
            w1.write(&b"a"[..]).unwrap();
            w2.write(&b"b"[..]).unwrap();
            r1.readexactly(1).await.unwrap();
            r2.readexactly(1).await.unwrap();
            assert_eq!(server.active_connections(), 2);
            server.close();
            server.close();
            assert!(!server.is_serving());
            assert!(server.sockets().is_empty());
            // Clients stay connected after close().
            w1.write(&b"c"[..]).unwrap();
            assert_eq!(&r1.readexactly(1).await.unwrap()[..], b"c");
            assert!(ringloop::open_connection("127.0.0.1", port).await.is_err(), "no longer listening");
            let s2 = server.clone();
            let waiter = lp.create_task(async move { s2.wait_closed().await });
            ringloop::sleep(Duration::from_millis(10)).await.unwrap();
            assert!(!waiter.done(), "wait_closed waits for the connections");
            server.close_clients();
            assert!(r1.read(-1).await.unwrap().is_empty());
            waiter.await.unwrap();
            assert_eq!(server.active_connections(), 0);
            drop((w1, w2, r2));
        });
    }
}

both_backends! {
    fn serve_forever_is_cancellable_and_exclusive(lp) {
        common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let server = lp
                .create_server_with(|| Echo { t: None }, ringloop::ServerOptions {
                    hosts: vec!["127.0.0.1".into()],
                    start_serving: false,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert!(!server.is_serving());
            server.start_serving().await.unwrap();
            server.start_serving().await.unwrap();
            assert!(server.is_serving());
            let s2 = server.clone();
            let t = lp.create_task(async move { s2.serve_forever().await });
            ringloop::sleep(Duration::from_millis(5)).await.unwrap();
            assert!(matches!(server.serve_forever().await, Err(Error::InvalidState(_))));
            t.cancel(None);
            assert!(matches!(t.await, Err(Error::Cancelled(_))));
            assert!(!server.is_serving(), "cancelling serve_forever closes the server");
            server.wait_closed().await;
        });
    }
}

both_backends! {
    fn all_interfaces_several_hosts_and_reuse_port(lp) {
        common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let server = lp.create_server(|| Echo { t: None }, "", 0).await.unwrap();
            let addrs = server.sockets();
            assert!(!addrs.is_empty());
            let port = addrs[0].as_socket().unwrap().port();
            assert!(addrs.iter().all(|a| a.as_socket().unwrap().port() == port), "one port for all");
            let (r, w) = ringloop::open_connection("127.0.0.1", port).await.unwrap();
            w.write(&b"v4"[..]).unwrap();
            assert_eq!(&r.readexactly(2).await.unwrap()[..], b"v4");
            if addrs.len() > 1 {
                let (r, w) = ringloop::open_connection("::1", port).await.unwrap();
                w.write(&b"v6"[..]).unwrap();
                assert_eq!(&r.readexactly(2).await.unwrap()[..], b"v6");
            } else {
                eprintln!("NOTE: no IPv6 here; the all-interfaces server listens on IPv4 only");
            }
            server.close();
            let multi = lp
                .create_server_with(|| Echo { t: None }, ringloop::ServerOptions {
                    hosts: vec!["127.0.0.1".into(), "localhost".into()],
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(multi.sockets().len(), 1, "duplicate addresses are bound once");
            multi.close();
            let opts = || ringloop::ServerOptions {
                hosts: vec!["127.0.0.1".into()],
                reuse_port: true,
                ..Default::default()
            };
            let a = lp.create_server_with(|| Echo { t: None }, opts()).await.unwrap();
            let p = a.sockets()[0].as_socket().unwrap().port();
            let b = lp
                .create_server_with(|| Echo { t: None }, ringloop::ServerOptions { port: p, ..opts() })
                .await
                .unwrap();
            assert_eq!(b.sockets()[0].as_socket().unwrap().port(), p);
            a.close();
            b.close();
        });
    }
}

both_backends! {
    fn happy_eyeballs_falls_back_past_dead_addresses(lp) {
        common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let server = lp.create_server(|| Echo { t: None }, "127.0.0.1", 0).await.unwrap();
            let good = server.sockets()[0].as_socket().unwrap();
            // A refused address (nothing listens) and a black hole (a listener
            // whose accept queue is full drops SYNs).
            let closed_port = || {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap()
            };
            let refused = closed_port();
            let refused2 = closed_port();
            let hole = common::fds::BlackHole::new();
            let hole_addr = hole.addr;
            let t0 = std::time::Instant::now();
            let t = lp
                .create_connection_with(|| Echo { t: None }, ringloop::ConnectOptions {
                    addrs: vec![refused, hole_addr, good],
                    happy_eyeballs_delay: Some(Duration::from_millis(50)),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(t.peername().unwrap().as_socket(), Some(good));
            // A hang guard on the fallback, not a speed test: waiting for
            // the hole's connect would take minutes of SYN retries.
            assert!(t0.elapsed() < Duration::from_secs(10), "fallback took {:?}", t0.elapsed());
            t.abort();
            // Every address fails: one combined error, or a group.
            let e = lp
                .create_connection_with(|| Echo { t: None }, ringloop::ConnectOptions {
                    addrs: vec![refused, refused2],
                    ..Default::default()
                })
                .await
                .err()
                .unwrap();
            assert!(e.to_string().contains("Multiple exceptions"), "{e}");
            let e = lp
                .create_connection_with(|| Echo { t: None }, ringloop::ConnectOptions {
                    addrs: vec![refused, refused2],
                    all_errors: true,
                    ..Default::default()
                })
                .await
                .err()
                .unwrap();
            assert!(matches!(e, Error::Group(es) if es.len() == 2));
            let e = lp.create_connection_with(|| Echo { t: None }, ringloop::ConnectOptions::default()).await.err();
            assert!(matches!(e, Some(Error::InvalidArgument(_))));
            server.close();
            drop(hole);
        });
    }
}

both_backends! {
    fn unix_sockets_and_socket_file_cleanup(lp) {
        let dir = std::env::temp_dir().join(format!("ringloop-unix-{}-{:?}", std::process::id(), lp.backend()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("echo.sock");
        let p2 = path.clone();
        common::run_bounded(lp, LIMIT, async move {
            let lp = get_running_loop().unwrap();
            // A stale socket file left by a crashed server is replaced.
            drop(std::os::unix::net::UnixListener::bind(&p2).unwrap());
            assert!(p2.exists());
            let server = lp.create_unix_server(|| Echo { t: None }, &p2).await.unwrap();
            let done = lp.create_future::<()>();
            let rec = Rc::new(RefCell::new(Recorder { done: Some(done.clone()), ..Default::default() }));
            let r2 = rec.clone();
            let t = lp.create_unix_connection(move || r2, &p2).await.unwrap();
            t.write(&b"over unix"[..]).unwrap();
            while rec.borrow().data.len() < 9 {
                ringloop::sleep(Duration::from_millis(1)).await.unwrap();
            }
            t.close();
            done.await.unwrap();
            server.close();
            assert!(!p2.exists(), "the socket file is removed at close");
            // A regular file in the way is an error, not deleted.
            std::fs::write(&p2, b"not a socket").unwrap();
            assert!(lp.create_unix_server(|| Echo { t: None }, &p2).await.is_err());
            assert!(p2.exists());
            // Streams over Unix sockets.
            std::fs::remove_file(&p2).unwrap();
            let srv = ringloop::start_unix_server(|r, w| async move {
                let l = r.readline().await.unwrap();
                w.write(l).unwrap();
                w.close();
            }, &p2).await.unwrap();
            let (r, w) = ringloop::open_unix_connection(&p2).await.unwrap();
            w.write(&b"line\n"[..]).unwrap();
            assert_eq!(&r.readline().await.unwrap()[..], b"line\n");
            srv.close();
            srv.wait_closed().await;
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

both_backends! {
    fn connect_accepted_socket_and_extra_info(lp) {
        common::run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            let (ours, _) = l.accept().unwrap();
            let t = lp.connect_accepted_socket(|| Echo { t: None }, Socket::from(ours)).unwrap();
            use std::io::{Read, Write};
            client.write_all(b"accepted").unwrap();
            let mut buf = [0u8; 8];
            let c2 = client.try_clone().unwrap();
            let got = lp.run_in_executor(move || { let mut c = c2; c.read_exact(&mut buf).map(|_| buf) }).await.unwrap().unwrap();
            assert_eq!(&got, b"accepted");
            match t.get_extra_info("peername") {
                Some(ringloop::ExtraInfo::Address(a)) => assert_eq!(a.as_socket(), Some(client.local_addr().unwrap())),
                other => panic!("{other:?}"),
            }
            assert!(matches!(t.get_extra_info("sockname"), Some(ringloop::ExtraInfo::Address(_))));
            assert!(matches!(t.get_extra_info("socket"), Some(ringloop::ExtraInfo::Fd(_))));
            assert!(t.get_extra_info("nope").is_none());
            let unconnected = Socket::tcp_for(&addr).unwrap();
            assert!(matches!(lp.connect_accepted_socket(|| Echo { t: None }, unconnected), Err(Error::InvalidArgument(_))));
            // set_protocol swaps the protocol; the old one comes back.
            assert!(t.set_protocol(Box::new(Echo { t: Some(t.clone()) })).is_some());
            t.abort();
            assert!(t.is_closing());
        });
    }
}

/// Pauses reading on every delivery: resumes at once (every other time)
/// or after a timer. Receives that completed in the same loop turn as a
/// pause are then delivered in order or kept for the resume, never lost.
struct PauseEach {
    t: Option<Transport>,
    got: Rc<RefCell<Vec<u8>>>,
    n: usize,
}
impl BaseProtocol for PauseEach {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
}

impl Protocol for PauseEach {
    fn data_received(&mut self, data: &[u8]) {
        self.got.borrow_mut().extend_from_slice(data);
        let t = self.t.as_ref().unwrap();
        t.pause_reading();
        self.n += 1;
        if self.n % 2 == 0 {
            t.resume_reading();
        } else {
            let t2 = t.clone();
            get_running_loop()
                .unwrap()
                .call_later(Duration::from_millis(1), move || t2.resume_reading())
                .unwrap();
        }
    }
}

both_backends! {
    fn pausing_inside_every_delivery_loses_and_reorders_nothing(lp) {
        let total = 300_000;
        let expect: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
        let e2 = expect.clone();
        let got = common::run_bounded(lp, Duration::from_secs(60), async move {
            let lp = get_running_loop().unwrap();
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            let peer = std::thread::spawn(move || {
                use std::io::Write;
                let (mut s, _) = l.accept().unwrap();
                s.set_nodelay(true).unwrap();
                for c in e2.chunks(37) {
                    s.write_all(c).unwrap();
                }
            });
            let got = Rc::new(RefCell::new(Vec::new()));
            let g = got.clone();
            lp.create_connection(move || PauseEach { t: None, got: g, n: 0 }, "127.0.0.1", port)
                .await
                .unwrap();
            while got.borrow().len() < total {
                ringloop::sleep(Duration::from_millis(2)).await.unwrap();
            }
            peer.join().unwrap();
            got.take()
        });
        assert_eq!(got.len(), expect.len());
        assert!(got == expect, "data reordered or corrupted");
    }
}
