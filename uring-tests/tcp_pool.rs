//! The receive pool seen from the transports: owned pool buffers echo
//! without a copy and come back, a protocol holding buffers cannot starve
//! a connection, and the proactor's buffer ring grows for a burst and
//! shrinks after it, losing nothing on the way.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use ringloop::prelude::*;
use ringloop::{BaseProtocol, Protocol, RecvBuf, Transport};

const LIMIT: Duration = Duration::from_secs(20);

/// Echoes pool buffers back as they are, and counts how data came.
struct OwnedEcho {
    t: Option<Transport>,
    owned: Rc<std::cell::Cell<usize>>,
    slices: Rc<std::cell::Cell<usize>>,
}
impl BaseProtocol for OwnedEcho {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
}

impl Protocol for OwnedEcho {
    fn data_received_owned(&mut self, data: RecvBuf) {
        self.owned.set(self.owned.get() + 1);
        self.t.as_ref().unwrap().write(data).unwrap();
    }
    fn data_received(&mut self, data: &[u8]) {
        self.slices.set(self.slices.get() + 1);
        self.t.as_ref().unwrap().write(data.to_vec()).unwrap();
    }
}

/// Keeps every receive buffer until EOF, then writes them all back: more
/// than the pool holds, so the pool runs dry on the way.
struct Hoarder {
    t: Option<Transport>,
    held: Vec<ringloop::WriteBuf>,
    owned: Rc<std::cell::Cell<usize>>,
    slices: Rc<std::cell::Cell<usize>>,
}
impl BaseProtocol for Hoarder {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
    fn eof_received(&mut self) -> bool {
        let t = self.t.as_ref().unwrap();
        t.writelines(self.held.drain(..)).unwrap();
        t.close();
        true
    }
}

impl Protocol for Hoarder {
    fn data_received_owned(&mut self, data: RecvBuf) {
        self.owned.set(self.owned.get() + 1);
        self.held.push(data.into());
    }
    fn data_received(&mut self, data: &[u8]) {
        self.slices.set(self.slices.get() + 1);
        self.held.push(data.to_vec().into());
    }
}

/// Sends its chunks and an EOF, and collects what comes back until EOF.
struct SendThenEof {
    chunks: Vec<Vec<u8>>,
    got: Rc<RefCell<Vec<u8>>>,
    done: Option<LoopFuture<()>>,
}
impl BaseProtocol for SendThenEof {
    fn connection_made(&mut self, t: Transport) {
        // No chunks: the caller writes and ends the stream itself.
        if !self.chunks.is_empty() {
            t.writelines(self.chunks.drain(..)).unwrap();
            t.write_eof().unwrap();
        }
    }
    fn connection_lost(&mut self, _: Option<Error>) {
        if let Some(d) = self.done.take() {
            let _ = d.set_result(());
        }
    }
}

impl Protocol for SendThenEof {
    fn data_received(&mut self, data: &[u8]) {
        self.got.borrow_mut().extend_from_slice(data);
    }
}

/// Runs one `SendThenEof` client of `total` bytes against a server made
/// by `factory`; returns (sent, echoed).
async fn echo_through<P: Protocol>(
    factory: impl Fn() -> P + 'static,
    total: usize,
) -> (Vec<u8>, Vec<u8>) {
    let lp = get_running_loop().unwrap();
    let server = lp.create_server(factory, "127.0.0.1", 0).await.unwrap();
    let port = server.sockets()[0].as_socket().unwrap().port();
    let mut rng = common::Rng(11);
    let (mut chunks, mut sent) = (Vec::new(), Vec::new());
    while sent.len() < total {
        let n = ((1 + rng.next() % 40_000) as usize).min(total - sent.len());
        let c: Vec<u8> = (0..n).map(|i| (sent.len() + i) as u8 ^ 0x3c).collect();
        sent.extend_from_slice(&c);
        chunks.push(c);
    }
    let got = Rc::new(RefCell::new(Vec::new()));
    let done = lp.create_future::<()>();
    let (g, d) = (got.clone(), done.clone());
    lp.create_connection(
        move || SendThenEof {
            chunks,
            got: g,
            done: Some(d),
        },
        "127.0.0.1",
        port,
    )
    .await
    .unwrap();
    done.await.unwrap();
    server.close();
    server.wait_closed().await;
    let got = got.borrow().clone();
    (sent, got)
}

both_backends! {
    fn owned_receive_buffers_echo_without_a_copy_and_come_back(lp) {
        let owned = Rc::new(std::cell::Cell::new(0));
        let slices = Rc::new(std::cell::Cell::new(0));
        let (o, s) = (owned.clone(), slices.clone());
        let (sent, got) = common::run_bounded(lp, LIMIT, async move {
            echo_through(move || OwnedEcho { t: None, owned: o.clone(), slices: s.clone() }, 4 << 20).await
        });
        assert!(got == sent, "echo differs ({} of {} bytes)", got.len(), sent.len());
        assert!(owned.get() > 0, "no receive came as an owned pool buffer");
        assert_eq!(lp.pool_buffers_out(), 0, "every pool buffer came back");
    }
}

both_backends! {
    fn a_protocol_holding_receive_buffers_cannot_starve_the_connection(lp) {
        let owned = Rc::new(std::cell::Cell::new(0));
        let slices = Rc::new(std::cell::Cell::new(0));
        let (o, s) = (owned.clone(), slices.clone());
        let total = 40 << 20; // 2.5 times the pool (1,024 buffers of 16 KiB)
        let (sent, got) = common::run_bounded(lp, Duration::from_secs(60), async move {
            echo_through(
                move || Hoarder { t: None, held: Vec::new(), owned: o.clone(), slices: s.clone() },
                total,
            )
            .await
        });
        assert!(got == sent, "echo differs ({} of {} bytes)", got.len(), sent.len());
        assert!(owned.get() > 0);
        // The pool ran dry (ENOBUFS: the proactor's ring was empty, or the
        // selector's free list): plain receives carried the rest.
        assert!(slices.get() > 0, "the pool never ran dry");
        assert_eq!(lp.pool_buffers_out(), 0, "every pool buffer came back");
    }
}

both_backends! {
    fn the_receive_ring_grows_for_a_burst_and_shrinks_after_it(lp) {
        const CONNS: usize = 200;
        const EACH: usize = 48 << 10;
        let start = lp.recv_ring_stats();
        let (grown, dry, end, echoed) = common::run_bounded(lp, Duration::from_secs(60), async move {
            let lp = get_running_loop().unwrap();
            let owned = Rc::new(std::cell::Cell::new(0));
            let slices = Rc::new(std::cell::Cell::new(0));
            let (o, s) = (owned.clone(), slices.clone());
            let server = lp
                .create_server(move || OwnedEcho { t: None, owned: o.clone(), slices: s.clone() }, "127.0.0.1", 0)
                .await
                .unwrap();
            let port = server.sockets()[0].as_socket().unwrap().port();
            // The burst: every connection is made first, then all send in
            // one callback, so far more receives want a buffer in one turn
            // than the ring starts with.
            let mut clients = Vec::new();
            for c in 0..CONNS {
                let sent: Vec<u8> = (0..EACH).map(|i| (i * 7 + c) as u8).collect();
                let got = Rc::new(RefCell::new(Vec::new()));
                let done = lp.create_future::<()>();
                let (g, d) = (got.clone(), done.clone());
                let t = lp
                    .create_connection(move || SendThenEof { chunks: Vec::new(), got: g, done: Some(d) }, "127.0.0.1", port)
                    .await
                    .unwrap();
                clients.push((t, sent, got, done));
            }
            for (t, sent, _, _) in &clients {
                t.write(sent.clone()).unwrap();
                t.write_eof().unwrap();
            }
            let mut echoed = 0;
            for (_, sent, got, done) in clients {
                done.await.unwrap();
                assert!(*got.borrow() == sent, "a burst connection's echo differs");
                echoed += 1;
            }
            let after_burst = lp.recv_ring_stats();
            // Calm traffic after it: one connection, enough receives for
            // the ring to measure its peak demand again over at least one
            // whole window of 4,096 receives that the burst is not part of
            // (128 MiB: ~16k receives, both ends of the connection
            // receiving into this loop's pool).
            server.close();
            server.wait_closed().await;
            let (sent, got) = echo_through(move || OwnedEcho { t: None, owned: owned.clone(), slices: slices.clone() }, 128 << 20).await;
            assert!(got == sent, "the calm connection's echo differs ({} of {} bytes)", got.len(), sent.len());
            (after_burst.map(|s| s.0), after_burst.map(|s| s.1), lp.recv_ring_stats().map(|s| s.0), echoed)
        });
        assert_eq!(echoed, CONNS);
        assert_eq!(lp.pool_buffers_out(), 0, "every pool buffer came back");
        match lp.backend() {
            Backend::Proactor => {
                let (grown, dry, end) = (grown.unwrap(), dry.unwrap(), end.unwrap());
                assert_eq!(start, Some((64, 0)), "the ring starts small");
                assert!(dry > 0 && grown > 64, "the burst did not grow the ring: {grown} buffers, dry {dry} times");
                assert!(end < grown, "the ring did not shrink after the burst: {end} of {grown}");
            }
            // The selector's pool is a free list taken from after
            // readiness: there is no kernel ring to size.
            Backend::Selector => assert_eq!((start, grown, end), (None, None, None)),
        }
    }
}

/// Is the running kernel at least `major.minor`?
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut it = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// A 16 MiB echo through owned pool buffers, checked byte for byte; how
/// many receive completions on this loop filled several buffers.
fn bulk_echo_bundles(lp: &EventLoop) -> u64 {
    let before = lp.driver_stats().recv_bundles;
    let (sent, got) = common::run_bounded(lp, LIMIT, async {
        let owned = Rc::new(std::cell::Cell::new(0));
        let slices = Rc::new(std::cell::Cell::new(0));
        echo_through(
            move || OwnedEcho {
                t: None,
                owned: owned.clone(),
                slices: slices.clone(),
            },
            16 << 20,
        )
        .await
    });
    assert!(
        got == sent,
        "the echo differs ({} of {} bytes)",
        got.len(),
        sent.len()
    );
    assert_eq!(lp.pool_buffers_out(), 0, "every pool buffer came back");
    lp.driver_stats().recv_bundles - before
}

both_backends! {
    fn bulk_receives_take_several_pool_buffers_per_completion_on_the_proactor(lp) {
        let bundles = bulk_echo_bundles(lp);
        match lp.backend() {
            Backend::Proactor => {
                // Bundles came with Linux 6.10; this suite's machine has
                // them, so on it they must be in use.
                if kernel_at_least(6, 10) {
                    assert!(lp.uses_recv_bundles(), "receive bundles are off on a 6.10+ kernel");
                    assert!(bundles > 0, "no receive completion filled more than one buffer");
                } else {
                    eprintln!("!!! kernel before 6.10: no receive bundles, plain multishot receives checked");
                    assert_eq!(bundles, 0);
                }
            }
            // The selector receives one pool buffer per recv(2).
            Backend::Selector => {
                assert!(!lp.uses_recv_bundles());
                assert_eq!(bundles, 0);
            }
        }
    }
}

const NO_BUNDLE: common::child::ChildTest =
    common::child::ChildTest::new("without_receive_bundles_each_completion_fills_one_buffer");

/// The fallback for kernels before 6.10, forced by the environment in a
/// child (the probe is per ring): every receive completion fills one pool
/// buffer, and the echo is intact. Proactor only: the selector never uses
/// bundles.
#[test]
fn without_receive_bundles_each_completion_fills_one_buffer() {
    if NO_BUNDLE.child_side(|_| {
        let lp = common::new_loop(Backend::Proactor);
        assert!(!lp.uses_recv_bundles());
        assert_eq!(bulk_echo_bundles(&lp), 0);
        common::assert_backend_used(&lp, Backend::Proactor);
        lp.close().unwrap();
    }) {
        return;
    }
    NO_BUNDLE.run("proactor", &[("RINGLOOP_NO_RECV_BUNDLE", "1")]);
}

/// An echo server on `lp` for `clients` clients on their own threads
/// (blocking sockets, so the loop's only stream receives are the
/// server's), each sending `each` bytes in 256 KiB writes and checking the
/// echo; the most pool buffers one receive completion filled.
fn echo_to_threads(lp: &EventLoop, clients: usize, each: usize) -> u64 {
    use std::io::{Read, Write};
    let before = lp.driver_stats().recv_bundle_max;
    assert_eq!(before, 0, "a fresh loop");
    common::run_bounded(lp, LIMIT, async move {
        let lp = get_running_loop().unwrap();
        let owned = Rc::new(std::cell::Cell::new(0));
        let slices = Rc::new(std::cell::Cell::new(0));
        let server = lp
            .create_server(
                move || OwnedEcho {
                    t: None,
                    owned: owned.clone(),
                    slices: slices.clone(),
                },
                "127.0.0.1",
                0,
            )
            .await
            .unwrap();
        let port = server.sockets()[0].as_socket().unwrap().port();
        // Every client connects before any writes, so that the server's
        // receives overlap (their count is what the cap is chosen by).
        let all_connected = std::sync::Arc::new(std::sync::Barrier::new(clients));
        let threads: Vec<_> = (0..clients)
            .map(|k| {
                let all_connected = all_connected.clone();
                std::thread::spawn(move || {
                    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    all_connected.wait();
                    let data: Vec<u8> = (0..each).map(|i| (i * 7 + k) as u8).collect();
                    let mut r = s.try_clone().unwrap();
                    let reader = std::thread::spawn(move || {
                        let mut got = vec![0u8; each];
                        r.read_exact(&mut got).unwrap();
                        got
                    });
                    for c in data.chunks(256 << 10) {
                        s.write_all(c).unwrap();
                    }
                    let got = reader.join().unwrap();
                    assert!(got == data, "client {k}: the echo differs");
                })
            })
            .collect();
        // (The loop serves while the clients run; a client that panics
        // finishes too, and its join below reports it.)
        while !threads.iter().all(|t| t.is_finished()) {
            sleep(Duration::from_millis(2)).await.unwrap();
        }
        for t in threads {
            t.join().expect("client thread");
        }
        server.close();
        server.wait_closed().await;
    });
    lp.driver_stats().recv_bundle_max
}

both_backends! {
    fn one_connection_takes_bundles_of_four_buffers_and_several_take_eight(lp) {
        let one = echo_to_threads(lp, 1, 8 << 20);
        match lp.backend() {
            Backend::Proactor if lp.uses_recv_bundles() => {
                // One stream receive on the loop: 64 KiB per completion at
                // most (its reply starts while the rest still arrives).
                assert!((2..=4).contains(&one), "one connection: bundles of {one} buffers");
                // Three: up to 128 KiB per completion, and 8 MiB in 256 KiB
                // writes each makes some completions take more than four.
                let lp3 = common::new_loop(Backend::Proactor);
                let three = echo_to_threads(&lp3, 3, 8 << 20);
                common::assert_backend_used(&lp3, Backend::Proactor);
                lp3.close().unwrap();
                assert!((5..=8).contains(&three), "three connections: bundles of {three} buffers");
            }
            Backend::Proactor => {
                assert!(!kernel_at_least(6, 10), "receive bundles are off on a 6.10+ kernel");
                eprintln!("!!! kernel before 6.10: no receive bundles, one buffer per completion checked");
                assert_eq!(one, 0);
            }
            // The selector receives one pool buffer per recv(2).
            Backend::Selector => assert_eq!(one, 0),
        }
    }
}
