//! `sendfile` (transports) and `sock_sendfile` on both backends: zero-copy
//! for regular files (a 100 MiB file arrives intact, with the file position
//! right), offsets and counts, an empty file, pipes through the fallback
//! (with flow control) or `SendfileNotAvailable`, a peer reset mid-transfer,
//! and a cancelled sendfile that leaves the transport usable.

mod common;

use std::cell::RefCell;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use ringloop::prelude::*;
use ringloop::{BaseProtocol, Protocol, Transport};

const LIMIT: Duration = Duration::from_secs(60);
const BIG: u64 = 100 << 20;

/// The content of the test files: byte `i` is a function of `i`.
fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

fn content(from: u64, len: u64) -> Vec<u8> {
    (from..from + len).map(byte_at).collect()
}

/// A 64-bit checksum over a byte stream, taken 8 bytes at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sum {
    h: u64,
    len: u64,
    carry: [u8; 8],
    ncarry: usize,
}

impl Sum {
    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w)
            .wrapping_mul(0x0000_0100_0000_01B3)
            .rotate_left(29);
    }
    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.ncarry > 0 {
            let k = (8 - self.ncarry).min(data.len());
            self.carry[self.ncarry..self.ncarry + k].copy_from_slice(&data[..k]);
            self.ncarry += k;
            data = &data[k..];
            if self.ncarry < 8 {
                return;
            }
            self.word(u64::from_le_bytes(self.carry));
            self.ncarry = 0;
        }
        let mut it = data.chunks_exact(8);
        for c in &mut it {
            self.word(u64::from_le_bytes(c.try_into().unwrap()));
        }
        let rest = it.remainder();
        self.carry[..rest.len()].copy_from_slice(rest);
        self.ncarry = rest.len();
    }
    fn finish(mut self) -> (u64, u64) {
        if self.ncarry > 0 {
            self.carry[self.ncarry..].fill(0);
            self.word(u64::from_le_bytes(self.carry) ^ self.ncarry as u64);
        }
        (self.len, self.h)
    }
}

/// The checksum of `prefix`, then the file's bytes `from..from + len`,
/// then `suffix`.
fn expected(prefix: &[u8], from: u64, len: u64, suffix: &[u8]) -> (u64, u64) {
    let mut s = Sum::default();
    s.update(prefix);
    let mut at = from;
    while at < from + len {
        let n = (from + len - at).min(1 << 20);
        s.update(&content(at, n));
        at += n;
    }
    s.update(suffix);
    s.finish()
}

/// The 100 MiB test file, written once per process and unlinked at once:
/// each test opens its own description of it (its own position) through
/// `/proc/self/fd`.
fn big_file() -> File {
    static BIG_FILE: OnceLock<File> = OnceLock::new();
    let f = BIG_FILE.get_or_init(|| small_file(BIG));
    File::open(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap()
}

/// A new unlinked file of `len` bytes of the test content.
fn small_file(len: u64) -> File {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("ringloop-sendfile-{}-{n}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut at = 0;
    while at < len {
        let n = (len - at).min(1 << 20);
        f.write_all(&content(at, n)).unwrap();
        at += n;
    }
    f.rewind().unwrap();
    f
}

/// What the peer does.
#[derive(Clone, Copy)]
enum Peer {
    /// Reads to EOF.
    Read,
    /// Reads this many bytes, then resets the connection.
    ResetAfter(u64),
}

/// A peer on a thread: accepts one connection, waits for `gate` (if any),
/// reads as `how` says, and returns the checksum of what it read.
fn peer(how: Peer, gate: Option<mpsc::Receiver<()>>) -> (u16, JoinHandle<(u64, u64)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        if let Some(g) = gate {
            g.recv().unwrap();
        }
        let mut sum = Sum::default();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match s.read(&mut buf) {
                Ok(n) => n,
                Err(e) => panic!("peer read: {e}"),
            };
            if n == 0 {
                break;
            }
            sum.update(&buf[..n]);
            if let Peer::ResetAfter(limit) = how {
                if sum.len >= limit {
                    socket2::SockRef::from(&s)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                    drop(s);
                    return sum.finish();
                }
            }
        }
        sum.finish()
    });
    (port, h)
}

/// A protocol that records what it is told.
#[derive(Default)]
struct Rec {
    data: Vec<u8>,
    lost: Option<Option<Error>>,
    paused: u32,
    resumed: u32,
}

impl BaseProtocol for Rec {
    fn connection_lost(&mut self, exc: Option<Error>) {
        self.lost = Some(exc);
    }
    fn pause_writing(&mut self) {
        self.paused += 1;
    }
    fn resume_writing(&mut self) {
        self.resumed += 1;
    }
}

impl Protocol for Rec {
    fn data_received(&mut self, data: &[u8]) {
        self.data.extend_from_slice(data);
    }
}

async fn connect(lp: &EventLoop, port: u16) -> (Transport, Rc<RefCell<Rec>>) {
    let rec = Rc::new(RefCell::new(Rec::default()));
    let r2 = rec.clone();
    let t = lp
        .create_connection(move || r2.clone(), "127.0.0.1", port)
        .await
        .unwrap();
    (t, rec)
}

async fn sock_connect(lp: &EventLoop, port: u16) -> Socket {
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let s = Socket::tcp_for(&addr).unwrap();
    lp.sock_connect(&s, &addr.into()).await.unwrap();
    s
}

fn pos(mut f: &File) -> u64 {
    f.stream_position().unwrap()
}

both_backends!(
    fn a_100_mib_file_arrives_intact(lp) {
        let (port, peer1) = peer(Peer::Read, None);
        let lp2 = lp.clone();
        let (n, at, rec) = common::run_bounded(lp, LIMIT, async move {
            let (t, rec) = connect(&lp2, port).await;
            // What was written before goes first.
            t.write(&b"head"[..]).unwrap();
            let f = big_file();
            let n = lp2.sendfile(&t, &f, 0, None, false).await.unwrap();
            let at = pos(&f);
            assert!(t.is_reading(), "reading is resumed after the sendfile");
            t.write(&b"tail"[..]).unwrap();
            t.close();
            (n, at, rec)
        });
        assert_eq!(n, BIG);
        assert_eq!(at, BIG, "the file position is after what was sent");
        // (The loop turns until the close is done: the peer then has EOF.)
        assert!(common::run_until(lp, LIMIT, || rec.borrow().lost.is_some()));
        assert_eq!(peer1.join().unwrap(), expected(b"head", 0, BIG, b"tail"));
        // The same over a bare socket.
        let (port, peer2) = peer(Peer::Read, None);
        let lp2 = lp.clone();
        let (n, at) = common::run_bounded(lp, LIMIT, async move {
            let s = sock_connect(&lp2, port).await;
            let f = big_file();
            let n = lp2.sock_sendfile(&s, &f, 0, None, false).await.unwrap();
            (n, pos(&f))
        });
        assert_eq!((n, at), (BIG, BIG));
        assert_eq!(peer2.join().unwrap(), expected(b"", 0, BIG, b""));
    }
);

both_backends!(
    fn an_offset_and_a_count_pick_the_part_sent(lp) {
        let lp2 = lp.clone();
        let (port, peer1) = peer(Peer::Read, None);
        let (port2, peer2) = peer(Peer::Read, None);
        let got = common::run_bounded(lp, LIMIT, async move {
            let (t, _) = connect(&lp2, port).await;
            let f = small_file(5000);
            // A short count from an offset.
            let a = lp2.sendfile(&t, &f, 1000, Some(1234), false).await.unwrap();
            let pa = pos(&f);
            // A count past the end of the file sends what there is.
            let b = lp2.sendfile(&t, &f, 4000, Some(10_000), false).await.unwrap();
            let pb = pos(&f);
            t.close();
            let s = sock_connect(&lp2, port2).await;
            let c = lp2.sock_sendfile(&s, &f, 10, Some(100), false).await.unwrap();
            let pc = pos(&f);
            (a, pa, b, pb, c, pc)
        });
        assert_eq!(got, (1234, 2234, 1000, 5000, 100, 110));
        let mut want = Sum::default();
        want.update(&content(1000, 1234));
        want.update(&content(4000, 1000));
        assert_eq!(peer1.join().unwrap(), want.finish());
        assert_eq!(peer2.join().unwrap(), expected(b"", 10, 100, b""));
    }
);

both_backends!(
    fn an_empty_file_sends_nothing(lp) {
        let lp2 = lp.clone();
        let (port, peer1) = peer(Peer::Read, None);
        let (port2, peer2) = peer(Peer::Read, None);
        let got = common::run_bounded(lp, LIMIT, async move {
            let (t, _) = connect(&lp2, port).await;
            let f = small_file(0);
            let a = lp2.sendfile(&t, &f, 0, None, false).await.unwrap();
            t.write(&b"x"[..]).unwrap();
            t.close();
            let s = sock_connect(&lp2, port2).await;
            let b = lp2.sock_sendfile(&s, &f, 0, None, false).await.unwrap();
            (a, b, pos(&f))
        });
        assert_eq!(got, (0, 0, 0));
        assert_eq!(peer1.join().unwrap(), expected(b"x", 0, 0, b""));
        assert_eq!(peer2.join().unwrap(), expected(b"", 0, 0, b""));
    }
);

both_backends!(
    fn bad_arguments_are_refused(lp) {
        let lp2 = lp.clone();
        let (port, peer1) = peer(Peer::Read, None);
        common::run_bounded(lp, LIMIT, async move {
            let (t, _) = connect(&lp2, port).await;
            let f = small_file(10);
            let r = lp2.sendfile(&t, &f, 0, Some(0), true).await;
            assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
            let udp = Socket::udp_for(&"127.0.0.1:0".parse().unwrap()).unwrap();
            let r = lp2.sock_sendfile(&udp, &f, 0, None, true).await;
            assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
            t.close();
            let r = lp2.sendfile(&t, &f, 0, None, true).await;
            assert!(matches!(r, Err(Error::Closed(_))), "{r:?}");
        });
        assert_eq!(peer1.join().unwrap(), expected(b"", 0, 0, b""));
    }
);

/// A pipe whose write end a thread fills with `len` bytes of the test
/// content, then closes. Non-blocking read end if `nonblocking`.
fn pipe_file(len: u64, nonblocking: bool) -> (File, JoinHandle<()>) {
    let flags = if nonblocking {
        nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC
    } else {
        nix::fcntl::OFlag::O_CLOEXEC
    };
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe2(flags).unwrap();
    let writer = std::thread::spawn(move || {
        // The write end blocks (only the read end is the loop's).
        nix::fcntl::fcntl(
            &w,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )
        .unwrap();
        let mut w = File::from(w);
        let mut at = 0;
        while at < len {
            let n = (len - at).min(1 << 16);
            w.write_all(&content(at, n)).unwrap();
            at += n;
        }
    });
    (File::from(r), writer)
}

both_backends!(
    fn a_pipe_goes_through_the_fallback(lp) {
        const LEN: u64 = 3 << 20;
        for nonblocking in [false, true] {
            // fallback=false: not a regular file.
            let (port, peer1) = peer(Peer::Read, None);
            let (port2, peer2) = peer(Peer::Read, None);
            let lp2 = lp.clone();
            let (a, b, rec) = common::run_bounded(lp, LIMIT, async move {
                let (t, rec) = connect(&lp2, port).await;
                let (p, w) = pipe_file(LEN, nonblocking);
                let r = lp2.sendfile(&t, &p, 0, None, false).await;
                assert!(matches!(r, Err(Error::SendfileNotAvailable(_))), "{r:?}");
                let a = lp2.sendfile(&t, &p, 0, None, true).await.unwrap();
                w.join().unwrap();
                // The protocol is back, and reading too.
                assert!(t.is_reading());
                t.write(&b"end"[..]).unwrap();
                t.close();
                let s = sock_connect(&lp2, port2).await;
                let (p, w) = pipe_file(LEN, nonblocking);
                let r = lp2.sock_sendfile(&s, &p, 0, None, false).await;
                assert!(matches!(r, Err(Error::SendfileNotAvailable(_))), "{r:?}");
                let b = lp2.sock_sendfile(&s, &p, 0, Some(LEN - 7), true).await.unwrap();
                w.join().unwrap();
                (a, b, rec)
            });
            assert_eq!((a, b), (LEN, LEN - 7), "nonblocking={nonblocking}");
            assert_eq!(peer1.join().unwrap(), expected(b"", 0, LEN, b"end"));
            assert_eq!(peer2.join().unwrap(), expected(b"", 0, LEN - 7, b""));
            assert!(common::run_until(lp, LIMIT, || rec.borrow().lost.is_some()));
            assert!(matches!(rec.borrow().lost, Some(None)));
        }
    }
);

both_backends!(
    fn the_fallback_keeps_to_flow_control(lp) {
        // The peer reads only once the transport was seen paused (its
        // buffer over the high-water mark, the kernel's buffers full) on
        // 50 looks in a row: without flow control the pipe's content
        // would pile up in the transport meanwhile.
        const LEN: u64 = 48 << 20;
        let (go_tx, go_rx) = mpsc::channel();
        let (port, peer1) = peer(Peer::Read, Some(go_rx));
        let lp2 = lp.clone();
        let (n, max, rec) = common::run_bounded(lp, LIMIT, async move {
            let (t, rec) = connect(&lp2, port).await;
            let (p, w) = pipe_file(LEN, false);
            let t2 = t.clone();
            let watch = lp2.create_task(async move {
                let mut max = 0;
                let mut go = Some(go_tx);
                let mut paused = 0;
                loop {
                    max = max.max(t2.get_write_buffer_size());
                    paused = if t2.is_writing_paused() { paused + 1 } else { 0 };
                    if paused >= 50 {
                        if let Some(g) = go.take() {
                            g.send(()).unwrap();
                        }
                    }
                    if t2.is_closing() {
                        return max;
                    }
                    ringloop::sleep(Duration::from_millis(1)).await.unwrap();
                }
            });
            let n = lp2.sendfile(&t, &p, 0, None, true).await.unwrap();
            w.join().unwrap();
            t.close();
            let max = watch.await.unwrap();
            (n, max, rec)
        });
        assert_eq!(n, LEN);
        let (low, high) = (16 << 10, 64 << 10);
        assert!(max <= high + (64 << 10), "buffered {max} bytes (high-water mark {high}, low {low})");
        assert_eq!(peer1.join().unwrap(), expected(b"", 0, LEN, b""));
        // The protocol missed no flow control: it was not paused at the
        // start, and is not at the end.
        let r = rec.borrow();
        assert_eq!(r.paused, r.resumed);
    }
);

both_backends!(
    fn a_peer_reset_mid_transfer_is_an_error(lp) {
        let (port, peer1) = peer(Peer::ResetAfter(1 << 20), None);
        let lp2 = lp.clone();
        let (r, at, rec) = common::run_bounded(lp, LIMIT, async move {
            let (t, rec) = connect(&lp2, port).await;
            let f = big_file();
            let r = lp2.sendfile(&t, &f, 0, None, false).await;
            (r, pos(&f), rec)
        });
        assert!(
            matches!(&r, Err(Error::Io(e)) if matches!(e.raw_os_error(), Some(libc::ECONNRESET) | Some(libc::EPIPE))),
            "{r:?}"
        );
        let (got, _) = peer1.join().unwrap();
        assert!(got >= 1 << 20);
        assert!(at >= got && at < BIG, "the position ({at}) counts what was sent");
        // The transport learns of the reset once it reads again.
        assert!(common::run_until(lp, LIMIT, || rec.borrow().lost.is_some()));
        // The same on a bare socket.
        let (port, peer2) = peer(Peer::ResetAfter(1 << 20), None);
        let lp2 = lp.clone();
        let r = common::run_bounded(lp, LIMIT, async move {
            let s = sock_connect(&lp2, port).await;
            let f = big_file();
            lp2.sock_sendfile(&s, &f, 0, None, false).await
        });
        assert!(matches!(r, Err(Error::Io(_))), "{r:?}");
        peer2.join().unwrap();
        // The loop is fine: a new transfer works.
        let (port, peer3) = peer(Peer::Read, None);
        let lp2 = lp.clone();
        let n = common::run_bounded(lp, LIMIT, async move {
            let (t, _) = connect(&lp2, port).await;
            let f = small_file(100_000);
            let n = lp2.sendfile(&t, &f, 0, None, false).await.unwrap();
            t.close();
            n
        });
        assert_eq!(n, 100_000);
        assert_eq!(peer3.join().unwrap(), expected(b"", 0, 100_000, b""));
    }
);

both_backends!(
    fn a_cancelled_sendfile_leaves_the_transport_usable(lp) {
        // The peer does not read until told: the sendfile fills the socket
        // buffers and waits for writability, and is cancelled there.
        let (go_tx, go_rx) = mpsc::channel();
        let (port, peer1) = peer(Peer::Read, Some(go_rx));
        let lp2 = lp.clone();
        let (at, rec) = common::run_bounded(lp, LIMIT, async move {
            let (t, rec) = connect(&lp2, port).await;
            let f = Rc::new(big_file());
            let (t2, f2, lp3) = (t.clone(), f.clone(), lp2.clone());
            let started = Rc::new(std::cell::Cell::new(false));
            let s2 = started.clone();
            let task = lp2.create_task(async move {
                s2.set(true);
                lp3.sendfile(&t2, &f2, 0, None, false).await
            });
            while !started.get() {
                common::YieldOnce(false).await;
            }
            // Writes are refused while the sendfile owns the socket.
            match t.write(&b"no"[..]) {
                Err(Error::InvalidState(m)) => assert!(m.contains("sendfile"), "{m}"),
                other => panic!("a write during the sendfile: {other:?}"),
            }
            for _ in 0..20 {
                common::YieldOnce(false).await;
            }
            assert!(!task.done(), "the peer reads nothing: the sendfile waits");
            assert!(!t.is_reading(), "reading is paused during the sendfile");
            task.cancel(None);
            let r = task.await;
            assert!(matches!(r, Err(Error::Cancelled(_))), "{r:?}");
            // Usable: reading is back, writes go after what was sent.
            assert!(t.is_reading());
            t.write(&b"after"[..]).unwrap();
            let at = pos(&f);
            go_tx.send(()).unwrap();
            t.close();
            (at, rec)
        });
        assert!(at > 0 && at < BIG, "position {at}");
        // The peer got the file's first `at` bytes, then "after".
        assert!(common::run_until(lp, LIMIT, || rec.borrow().lost.is_some()));
        assert_eq!(peer1.join().unwrap(), expected(b"", 0, at, b"after"));
        assert!(matches!(rec.borrow().lost, Some(None)));
    }
);
