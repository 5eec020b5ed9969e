//! Regression tests for issue 11's crashes and data-integrity items 1, 2
//! and 4, on both backends: a peer must never crash the loop, a cancelled
//! read loses and reorders nothing, and a write buffer never underflows.
//! Items 6, 7 and 14 are in `hardening_loop.rs`; the leak and memory items
//! (3, 5, 8, 9, 10) in `hardening_leaks.rs`, where every test is serial.
//!
//! Every wait is bounded (a loop timeout, a watchdog thread or a bounded
//! number of turns), so a regression fails with a message instead of
//! hanging. The tests check order, counts and bytes; time bounds are
//! generous and only turn hangs into failures.

mod common;
#[path = "hardening_support.rs"]
mod support;

use std::cell::RefCell;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use common::fds::tcp_pair;
use common::{catch, run_until, turns};
use ringloop::prelude::*;
use ringloop::{BaseProtocol, Protocol, Transport};
use support::LIMIT;

// ---------------------------------------------------------------------------
// Item 1: a stale receive result must never complete the reused send op.

const REQUEST: &[u8] = b"GET /hardening\n";

/// Pauses reading and replies inside `data_received`; reading resumes from
/// a later callback, so the end of file behind the request is seen then.
struct PauseAndReply {
    t: Option<Transport>,
    seen: Rc<RefCell<Vec<String>>>,
}

impl BaseProtocol for PauseAndReply {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
    fn eof_received(&mut self) -> bool {
        self.seen.borrow_mut().push("eof".into());
        false
    }
}

impl Protocol for PauseAndReply {
    fn data_received(&mut self, data: &[u8]) {
        let t = self.t.clone().unwrap();
        self.seen.borrow_mut().push(format!("data:{}", data.len()));
        t.pause_reading();
        t.write(format!("reply to {} bytes", data.len())).unwrap();
        get_running_loop()
            .unwrap()
            .call_soon(move || t.resume_reading())
            .unwrap();
    }
}

both_backends! {
    fn eof_behind_a_request_answered_while_paused_is_not_a_send_completion(lp) {
        const CLIENTS: usize = 16;
        let seen = Rc::new(RefCell::new(Vec::new()));
        let s2 = seen.clone();
        let (server, port) = common::run_bounded(lp, LIMIT, async move {
            let lp = get_running_loop().unwrap();
            let server = lp
                .create_server(move || PauseAndReply { t: None, seen: s2.clone() }, "127.0.0.1", 0)
                .await
                .unwrap();
            let port = server.sockets()[0].as_socket().unwrap().port();
            (server, port)
        });
        // Each client's request and its FIN are in the kernel before the
        // server accepts, so the server's first receive gets both in one turn.
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.write_all(REQUEST).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            clients.push(c);
        }
        let unblock: Vec<TcpStream> = clients.iter().map(|c| c.try_clone().unwrap()).collect();
        let done = Arc::new(AtomicBool::new(false));
        let d2 = done.clone();
        let reader = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let out: Vec<(Vec<u8>, Option<String>)> = clients
                .into_iter()
                .map(|mut c| {
                    let left = deadline.saturating_duration_since(Instant::now());
                    c.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
                    let mut v = Vec::new();
                    let r = c.read_to_end(&mut v);
                    (v, r.err().map(|e| e.to_string()))
                })
                .collect();
            d2.store(true, Ordering::SeqCst);
            out
        });
        let run = catch(|| {
            common::run_bounded(lp, LIMIT, async move {
                while !done.load(Ordering::SeqCst) {
                    ringloop::sleep(Duration::from_millis(2)).await.unwrap();
                }
            })
        });
        if let Err(msg) = run {
            for c in &unblock {
                let _ = c.shutdown(Shutdown::Both);
            }
            let _ = reader.join();
            panic!(
                "issue 11 item 1: the server loop panicked when a paused protocol replied \
                 with the request's EOF still queued: {msg}"
            );
        }
        let got = reader.join().unwrap();
        let want = format!("reply to {} bytes", REQUEST.len());
        for (i, (bytes, err)) in got.iter().enumerate() {
            let text = String::from_utf8_lossy(bytes);
            assert!(
                err.is_none(),
                "issue 11 item 1: client {i} saw no EOF after the reply ({err:?}); it got {text:?}"
            );
            assert_eq!(
                text, want,
                "issue 11 item 1: client {i} must get the reply exactly once, then EOF"
            );
        }
        let seen = seen.borrow();
        assert_eq!(seen.iter().filter(|s| *s == "eof").count(), CLIENTS, "{seen:?}");
        assert_eq!(
            seen.iter().filter(|s| s.starts_with("data:")).count(),
            CLIENTS,
            "one request per connection: {seen:?}"
        );
        server.close();
    }
}

// ---------------------------------------------------------------------------
// Item 2: late data of a cancelled read must be neither stranded nor
// overtaken by newer data.

type ReadFut = Pin<Box<dyn Future<Output = Vec<u8>>>>;
type Issue = Rc<dyn Fn(&EventLoop) -> ReadFut>;
type PeerSend = Box<dyn Fn(&[u8])>;
type TaskSlot = Rc<RefCell<Option<Task<Vec<u8>>>>>;

/// One kind of stashing read: how to issue it, how the peer sends, its fd.
struct ReadCase {
    what: &'static str,
    read: Issue,
    send: PeerSend,
    fd: RawFd,
}

/// Both shapes, on the same fd: see [`dropped_in_flight`] and
/// [`cancelled_after_completion`].
fn cancelled_read_then_new_read(lp: &EventLoop, case: ReadCase) {
    let t2 = dropped_in_flight(lp, &case);
    check_reads(lp, &case, t2, "dropped in flight");
    let t2 = cancelled_after_completion(lp, &case);
    check_reads(lp, &case, t2, "cancelled after its completion was reaped");
}

/// A read is in flight in the kernel; "AAAA" arrives; between two turns
/// its future is dropped and a new read is issued on the same fd, before
/// any turn has completed the cancellation. Returns the new read's task.
fn dropped_in_flight(lp: &EventLoop, case: &ReadCase) -> Task<Vec<u8>> {
    let what = case.what;
    let mut first = (case.read)(lp);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(first.as_mut().poll(&mut cx).is_pending());
    turns(lp, 2);
    assert_eq!(lp.ops_in_flight(), 1, "{what}: the first read is in flight");
    (case.send)(b"AAAA");
    // (Let the kernel's wake-up reach the ring or the epoll instance.)
    std::thread::sleep(Duration::from_millis(2));
    drop(first);
    // Issued now: it may even be served at once.
    let mut second = (case.read)(lp);
    match second.as_mut().poll(&mut cx) {
        Poll::Ready(v) => lp.create_task(async move { v }),
        Poll::Pending => lp.create_task(second),
    }
}

/// A read is in flight; "AAAA" arrives; in the turn its completion is
/// reaped, a callback ahead of the reading task cancels that task and
/// issues a new read on the same fd at once (an eager task), before the
/// cancelled read's future is dropped. Returns the new read's task.
fn cancelled_after_completion(lp: &EventLoop, case: &ReadCase) -> Task<Vec<u8>> {
    let what = case.what;
    let t1 = lp.create_task((case.read)(lp));
    turns(lp, 2);
    assert_eq!(lp.ops_in_flight(), 1, "{what}: the first read is in flight");
    (case.send)(b"AAAA");
    let second: TaskSlot = Rc::new(RefCell::new(None));
    let (t1c, s2, rd) = (t1.clone(), second.clone(), case.read.clone());
    lp.set_eager_task_start(true);
    lp.call_soon(move || {
        assert!(t1c.cancel(None), "the first read is still pending");
        let lp = get_running_loop().unwrap();
        *s2.borrow_mut() = Some(lp.create_task(rd(&lp)));
    })
    .unwrap();
    turns(lp, 1);
    lp.set_eager_task_start(false);
    let t2 = second.borrow_mut().take().expect("the callback ran");
    assert!(
        run_until(lp, Duration::from_secs(3), || t1.done()),
        "{what}: the cancelled task never ended"
    );
    assert!(t1.cancelled(), "{what}: the first task was cancelled");
    t2
}

/// With "AAAA" sent and a new read `t2` issued: the new read must be served
/// AAAA without more data; then "BBBB" is sent, and the reads must see AAAA
/// then BBBB.
fn check_reads(lp: &EventLoop, case: &ReadCase, t2: Task<Vec<u8>>, shape: &str) {
    let what = case.what;
    let got_first = run_until(lp, Duration::from_secs(3), || t2.done());
    let stashed = lp.stashed_bytes(case.fd);
    (case.send)(b"BBBB");
    let mut reads: Vec<Vec<u8>> = Vec::new();
    if got_first || run_until(lp, Duration::from_secs(3), || t2.done()) {
        reads.push(t2.result().unwrap());
    } else {
        t2.cancel(None);
    }
    while reads.concat().len() < 8 && reads.len() < 4 {
        let t = lp.create_task((case.read)(lp));
        if !run_until(lp, Duration::from_secs(3), || t.done()) {
            t.cancel(None);
            break;
        }
        reads.push(t.result().unwrap());
    }
    turns(lp, 2);
    let shown: Vec<String> = reads
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    assert!(
        got_first,
        "issue 11 item 2 ({what}, first read {shape}): the new read got nothing while the \
         cancelled read's {stashed} bytes sat in the stash; after BBBB was sent the reads saw \
         {shown:?}"
    );
    assert_eq!(
        reads.concat(),
        b"AAAABBBB",
        "issue 11 item 2 ({what}, first read {shape}): the reads must see AAAA then BBBB, saw \
         {shown:?}"
    );
    assert_eq!(
        lp.stashed_bytes(case.fd),
        0,
        "{what}: nothing left in the stash"
    );
    assert_eq!(lp.ops_in_flight(), 0, "{what}: no read left in flight");
}

both_backends! {
    fn cancelled_sock_recv_then_new_recv_keeps_order(lp) {
        let (peer, sock) = tcp_pair();
        let fd = sock.as_raw_fd();
        let sock = Rc::new(sock);
        let s = sock.clone();
        cancelled_read_then_new_read(lp, ReadCase {
            what: "sock_recv on TCP",
            read: Rc::new(move |lp| {
                let (lp, s) = (lp.clone(), s.clone());
                Box::pin(async move { lp.sock_recv(&s, 4096).await.unwrap() })
            }),
            send: Box::new(move |d| (&peer).write_all(d).unwrap()),
            fd,
        });
    }
}

both_backends! {
    fn cancelled_sock_recvfrom_then_new_recvfrom_keeps_order(lp) {
        let ours = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = ours.local_addr().unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sock = Rc::new(Socket::from(ours));
        let fd = sock.as_raw_fd();
        let s = sock.clone();
        cancelled_read_then_new_read(lp, ReadCase {
            what: "sock_recvfrom on UDP",
            read: Rc::new(move |lp| {
                let (lp, s) = (lp.clone(), s.clone());
                Box::pin(async move { lp.sock_recvfrom(&s, 4096).await.unwrap().0 })
            }),
            send: Box::new(move |d| {
                peer.send_to(d, addr).unwrap();
            }),
            fd,
        });
    }
}

both_backends! {
    fn cancelled_pipe_read_then_new_read_keeps_order(lp) {
        let (r, w) = ringloop::pipe().unwrap();
        let fd = r.as_raw_fd();
        let r = Rc::new(r);
        let r2 = r.clone();
        cancelled_read_then_new_read(lp, ReadCase {
            what: "pipe_read_into",
            read: Rc::new(move |lp| {
                let (lp, r) = (lp.clone(), r2.clone());
                Box::pin(async move {
                    let (n, buf) = lp.pipe_read_into(&r, Vec::with_capacity(4096)).await;
                    n.unwrap();
                    buf
                })
            }),
            send: Box::new(move |d| {
                assert_eq!(nix::unistd::write(&w, d).unwrap(), d.len());
            }),
            fd,
        });
    }
}

// ---------------------------------------------------------------------------
// Item 4: abort() or a protocol panic while a send is in flight must leave
// the write-buffer size at 0, with no panic out of the loop.

/// Keeps its transport; panics in `pause_writing` if told to.
struct BulkSender {
    t: Option<Transport>,
    panic_on_pause: bool,
}

impl BaseProtocol for BulkSender {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
    fn pause_writing(&mut self) {
        if self.panic_on_pause {
            panic!("a protocol panic (hardening test, issue 11 item 4)");
        }
    }
}

impl Protocol for BulkSender {}

/// A 32 MiB write waits in flight for a peer that does not read; the peer
/// then reads some (so the send completes in the next turn), and a callback
/// queued before that turn aborts the transport or makes its protocol
/// panic: it runs after the send's completion was reaped and before the
/// transport hears of it.
fn close_under_a_send_in_flight(lp: &EventLoop, panic: bool) {
    let what = if panic { "protocol panic" } else { "abort()" };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = common::run_bounded(lp, LIMIT, async move {
        get_running_loop()
            .unwrap()
            .create_connection(
                move || BulkSender {
                    t: None,
                    panic_on_pause: panic,
                },
                "127.0.0.1",
                port,
            )
            .await
            .unwrap()
    });
    let (mut peer, _) = listener.accept().unwrap();
    t.set_write_buffer_limits(Some(1 << 30), None).unwrap();
    let total = 32 << 20;
    t.write(vec![7u8; total]).unwrap();
    for _ in 0..50 {
        turns(lp, 1);
        std::thread::sleep(Duration::from_millis(1));
    }
    let buffered = t.get_write_buffer_size();
    assert!(
        buffered > 0 && buffered < total,
        "{what}: a partly sent write waits in flight ({buffered} of {total} bytes buffered)"
    );
    assert!(lp.ops_in_flight() >= 1, "{what}: the send is in flight");
    // The peer reads what the kernel holds (the loop does not run), so the
    // waiting send can go on.
    peer.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    for _ in 0..1000 {
        match peer.read(&mut buf) {
            Ok(0) => panic!("{what}: unexpected EOF at the peer"),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if got >= 1 << 20 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{what}: peer read failed: {e}"),
        }
    }
    assert!(got > 0, "{what}: the peer read nothing");
    // Let the window update reach the sender's socket.
    std::thread::sleep(Duration::from_millis(20));
    let t2 = t.clone();
    if panic {
        lp.call_soon(move || {
            let _ = t2.set_write_buffer_limits(Some(64 << 10), None);
        })
        .unwrap();
    } else {
        lp.call_soon(move || t2.abort()).unwrap();
    }
    let run = catch(|| turns(lp, 5));
    if let Err(msg) = run {
        panic!(
            "issue 11 item 4 ({what} with a send in flight): a panic escaped run_forever: {msg}"
        );
    }
    assert!(t.is_closing(), "{what}: the transport is closed");
    assert_eq!(
        t.get_write_buffer_size(),
        0,
        "issue 11 item 4 ({what} with a send in flight): the write-buffer size must be 0"
    );
    drop(peer);
}

both_backends! {
    fn abort_with_a_large_send_in_flight_keeps_the_write_buffer_size_sane(lp) {
        close_under_a_send_in_flight(lp, false);
    }
}

both_backends! {
    fn protocol_panic_with_a_large_send_in_flight_keeps_the_write_buffer_size_sane(lp) {
        close_under_a_send_in_flight(lp, true);
    }
}
