//! Memory-safe, lossless cancellation (DESIGN.md invariants 2 and 3), on both
//! backends: ops dropped mid-flight never let the kernel write into freed
//! memory (buffers the driver releases are poisoned and checked later), never
//! leak an fd a late completion returns, and never lose data a cancelled
//! receive still got. Fds stay open until their in-flight ops are over.
//!
//! Every test is `serial`: it counts the process's fds (`/proc/self/fd`)
//! against its own earlier counts, and `both_backends!` checks that none is
//! left once the loop is closed and dropped.

mod common;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use common::fds::{BlackHole, tcp_pair};
use common::{fd_is_open, turns};
use ringloop::prelude::*;
use ringloop::{SockAddr, Task};

/// The bound of a test's waits (only turns a hang into a failure).
const LIMIT: Duration = Duration::from_secs(5);

both_backends! {
    serial fn cancelled_recv_that_got_data_loses_nothing(lp) {
        lp.enable_poison_check();
        let (mut peer, sock) = tcp_pair();
        let sock = Rc::new(sock);
        let s2 = sock.clone();
        let t = lp.create_task(async move {
            get_running_loop().unwrap().sock_recv(&s2, 4096).await
        });
        turns(lp, 2);
        assert_eq!(lp.ops_in_flight(), 1, "the recv is in flight");
        // Data arrives; in the turn the recv completes with it, a callback
        // queued ahead of the task cancels the task, so its future is dropped
        // holding a completed, never-polled receive.
        peer.write_all(b"hello, nothing may be lost").unwrap();
        common::cancel_in_completion_turn(lp, &t);
        let s3 = sock.clone();
        let got = common::run_bounded(lp, Duration::from_secs(5), async move {
            get_running_loop().unwrap().sock_recv(&s3, 4096).await.unwrap()
        });
        assert_eq!(got, b"hello, nothing may be lost");
        assert_eq!(lp.stashed_bytes(sock.as_raw_fd()), 0);
        // The dropped receive had the data: it was salvaged into the stash
        // and served to the next receive.
        assert_eq!(lp.driver_stats().stash_hits, 1, "{:?}", lp.driver_stats());
        lp.check_poison().unwrap();
    }
}

both_backends! {
    serial fn cancelled_idle_recv_is_released_then_socket_still_works(lp) {
        lp.enable_poison_check();
        let (mut peer, sock) = tcp_pair();
        let sock = Rc::new(sock);
        for _ in 0..3 {
            let s2 = sock.clone();
            let t = lp.create_task(async move {
                get_running_loop().unwrap().sock_recv(&s2, 1 << 16).await
            });
            turns(lp, 2);
            t.cancel(None);
            common::drain(lp, LIMIT);
            assert!(t.cancelled());
        }
        // Data sent only now reaches a new receive; nothing wrote into the
        // released (poisoned) buffers.
        peer.write_all(b"after").unwrap();
        let s3 = sock.clone();
        let got = common::run_bounded(lp, Duration::from_secs(5), async move {
            get_running_loop().unwrap().sock_recv(&s3, 64).await.unwrap()
        });
        assert_eq!(got, b"after");
        // Each cancelled receive's buffer was released to the quarantine
        // (on the selector at once, on the proactor after the final CQE).
        let checked = lp.check_poison().unwrap();
        assert!(checked >= 3, "released recv buffers were poisoned and checked ({checked})");
    }
}

both_backends! {
    serial fn random_cancellations_conserve_every_byte(lp) {
        lp.enable_poison_check();
        let (mut peer, sock) = tcp_pair();
        let sock = Rc::new(sock);
        let received = Rc::new(RefCell::new(Vec::<u8>::new()));
        let mut sent = Vec::new();
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..300u32 {
            let s2 = sock.clone();
            let r2 = received.clone();
            let cap = 1 + (rand() % 300) as usize;
            let t = lp.create_task(async move {
                let lp = get_running_loop().unwrap();
                let data = lp.sock_recv(&s2, cap).await.unwrap();
                r2.borrow_mut().extend_from_slice(&data);
            });
            turns(lp, (rand() % 3) as usize);
            if rand() % 2 == 0 {
                let chunk: Vec<u8> = (0..(1 + rand() % 200)).map(|j| (i as u64 + j) as u8).collect();
                peer.write_all(&chunk).unwrap();
                sent.extend_from_slice(&chunk);
            }
            match rand() % 3 {
                0 => {
                    t.cancel(None);
                }
                1 => {
                    turns(lp, 1);
                    t.cancel(None);
                }
                _ => {}
            }
            turns(lp, (rand() % 2) as usize);
            if !t.done() {
                t.cancel(None);
            }
            common::drain(lp, LIMIT);
        }
        // Whatever cancelled receives took is served to the next receives.
        let total = sent.len();
        let s3 = sock.clone();
        let r3 = received.clone();
        common::run_bounded(lp, Duration::from_secs(10), async move {
            let lp = get_running_loop().unwrap();
            while r3.borrow().len() < total {
                let data = lp.sock_recv(&s3, 4096).await.unwrap();
                assert!(!data.is_empty(), "unexpected EOF");
                r3.borrow_mut().extend_from_slice(&data);
            }
        });
        assert_eq!(*received.borrow(), sent, "bytes were lost or reordered");
        lp.check_poison().unwrap();
    }
}

/// A task running one `sock_accept`.
type AcceptTask = Task<Result<(Socket, SockAddr)>>;

/// A listener on 127.0.0.1 and a task whose accept on it is in flight.
fn accept_in_flight(lp: &EventLoop) -> (Rc<Socket>, SocketAddr, AcceptTask) {
    let listener = Rc::new(Socket::tcp_listener(&"127.0.0.1:0".parse().unwrap(), 16).unwrap());
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let l2 = listener.clone();
    let t = lp.create_task(async move { get_running_loop().unwrap().sock_accept(&l2).await });
    turns(lp, 2);
    assert_eq!(lp.ops_in_flight(), 1, "the accept is in flight");
    (listener, addr, t)
}

/// The next connection `listener` accepts (bounded).
fn accept_next(lp: &EventLoop, listener: &Rc<Socket>) -> (Socket, SockAddr) {
    let l = listener.clone();
    common::run_bounded(lp, LIMIT, async move {
        get_running_loop().unwrap().sock_accept(&l).await.unwrap()
    })
}

both_backends! {
    serial fn accept_cancelled_after_a_connection_arrived_closes_it(lp) {
        let base = common::open_fds();
        let (listener, addr, t) = accept_in_flight(lp);
        // The connection lands in the kernel's queue; the accept is dropped
        // before the loop hands the accepted fd to anyone.
        let mut client = TcpStream::connect(addr).unwrap();
        client.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        t.cancel(None);
        common::drain(lp, LIMIT);
        assert_eq!(common::open_fds(), base + 2, "accepted fd leaked (listener + client expected)");
        assert!(t.cancelled(), "the accept ended otherwise: {t:?}");
        // Either the kernel accepted the connection for the dropped op
        // (then it was closed, not leaked: the client sees EOF or reset),
        // or the cancel came first (then it waits in the backlog for the
        // next accept). Never both lost and open.
        let mut buf = [0u8; 8];
        match client.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e)
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) =>
            {
                let (conn, peer) = accept_next(lp, &listener);
                assert_eq!(peer.as_socket(), Some(client.local_addr().unwrap()));
                drop(conn);
            }
            other => panic!("unexpected client read after the cancelled accept: {other:?}"),
        }
        drop(client);
        drop(listener);
        assert_eq!(common::open_fds(), base);
    }
}

both_backends! {
    serial fn accept_cancelled_before_a_connection_leaves_it_queued(lp) {
        let base = common::open_fds();
        let (listener, addr, t) = accept_in_flight(lp);
        t.cancel(None);
        common::drain(lp, LIMIT);
        let client = TcpStream::connect(addr).unwrap();
        let (conn, peer) = accept_next(lp, &listener);
        assert_eq!(peer.as_socket(), Some(client.local_addr().unwrap()));
        drop((conn, client, listener));
        assert_eq!(common::open_fds(), base);
    }
}

both_backends! {
    serial fn dropped_acceptor_closes_connections_accepted_for_nobody(lp) {
        let base = common::open_fds();
        let listener = Socket::tcp_listener(&"127.0.0.1:0".parse().unwrap(), 64).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut acceptor = ringloop::Acceptor::new(lp, &listener);
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).unwrap());
        }
        let first = common::run_bounded(lp, Duration::from_secs(5), async move {
            let s = acceptor.accept().await.unwrap();
            (s, acceptor)
        });
        let (first, acceptor) = first;
        // More connections arrive; the acceptor is dropped with some of them
        // possibly accepted by the kernel already.
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).unwrap());
        }
        turns(lp, 1);
        drop(acceptor);
        common::drain(lp, LIMIT);
        drop(first);
        // Only the listener and the six clients remain open.
        assert_eq!(common::open_fds(), base + 1 + 6);
        drop(clients);
        drop(listener);
        assert_eq!(common::open_fds(), base);
    }
}

both_backends! {
    serial fn cancelled_connect_in_flight(lp) {
        // A listener whose accept queue is full drops SYNs, so a connect to
        // it stays in flight (SYN retries, for minutes) until cancelled.
        let base = common::open_fds();
        let hole = BlackHole::new();
        let addr = hole.addr;
        let sock = Rc::new(Socket::tcp_for(&addr).unwrap());
        let s2 = sock.clone();
        let t = lp.create_task(async move {
            get_running_loop().unwrap().sock_connect(&s2, &addr.into()).await
        });
        turns(lp, 3);
        // Proof it is in flight: the proactor's connect is in the kernel,
        // the selector's is parked on writability after EINPROGRESS.
        assert!(!t.done(), "the connect ended: {:?}", t.result());
        assert_eq!(lp.ops_in_flight(), 1, "the connect is in flight");
        t.cancel(None);
        common::drain(lp, LIMIT);
        assert!(t.cancelled(), "the connect ended otherwise: {:?}", t.result());
        assert!(sock.peer_addr().is_err(), "a cancelled connect left the socket connected");
        drop((sock, hole));
        assert_eq!(common::open_fds(), base);
    }
}

both_backends! {
    serial fn cancelled_send_in_flight(lp) {
        lp.enable_poison_check();
        let (peer, sock) = tcp_pair();
        let sock = Rc::new(sock);
        let s2 = sock.clone();
        // The peer never reads: a 32 MiB sendall blocks in flight.
        let t = lp.create_task(async move {
            get_running_loop().unwrap().sock_sendall(&s2, vec![7u8; 32 << 20]).await
        });
        turns(lp, 5);
        assert!(!t.done());
        assert_eq!(lp.ops_in_flight(), 1, "a send is in flight");
        t.cancel(None);
        common::drain(lp, LIMIT);
        assert!(t.cancelled());
        lp.check_poison().unwrap();
        drop(peer);
    }
}

both_backends! {
    serial fn cancelled_pipe_read_keeps_its_data_and_write_can_be_cancelled(lp) {
        lp.enable_poison_check();
        let (r, w) = ringloop::pipe().unwrap();
        let r = Rc::new(r);
        let r2 = r.clone();
        let t = lp.create_task(async move {
            let lp = get_running_loop().unwrap();
            lp.pipe_read_into(&r2, Vec::with_capacity(1024)).await
        });
        turns(lp, 2);
        nix::unistd::write(&w, b"pipe data").unwrap();
        t.cancel(None);
        common::drain(lp, LIMIT);
        let r3 = r.clone();
        let got = common::run_bounded(lp, Duration::from_secs(5), async move {
            let lp = get_running_loop().unwrap();
            let (n, buf) = lp.pipe_read_into(&r3, Vec::with_capacity(1024)).await;
            n.unwrap();
            buf
        });
        assert_eq!(got, b"pipe data");
        // A write that blocks on a full pipe, cancelled.
        let w = Rc::new(w);
        let w2 = w.clone();
        let t = lp.create_task(async move {
            get_running_loop().unwrap().pipe_write_all(&w2, vec![1u8; 4 << 20]).await
        });
        turns(lp, 3);
        assert!(!t.done());
        t.cancel(None);
        common::drain(lp, LIMIT);
        assert!(t.cancelled());
        lp.check_poison().unwrap();
    }
}

both_backends! {
    serial fn fd_outlives_its_in_flight_op(lp) {
        let base = common::open_fds();
        let (_peer, sock) = tcp_pair();
        let fd = sock.as_raw_fd();
        let t = lp.create_task(async move {
            // The task owns the socket: cancelling drops it with the recv.
            get_running_loop().unwrap().sock_recv(&sock, 128).await
        });
        turns(lp, 2);
        assert_eq!(lp.ops_in_flight(), 1, "the recv is in flight");
        t.cancel(None);
        turns(lp, 1); // the task's future, and the Socket, are dropped now
        assert!(t.cancelled());
        match lp.backend() {
            // The kernel still has the recv (its cancel is submitted with
            // the next turn's io_uring_enter): the fd must not be closed,
            // and so its number cannot be reused, before the recv's final
            // completion. Then it closes.
            Backend::Proactor => {
                assert_eq!(lp.ops_in_flight(), 1, "the dropped recv is still in the kernel");
                assert!(fd_is_open(fd), "fd closed while an op on it was in flight");
                assert_eq!(common::open_fds(), base + 2, "peer and socket are open");
                common::drain(lp, LIMIT);
            }
            // The selector's form differs: nothing is in the kernel. The
            // recv was only parked on readiness; dropping it unparked and
            // freed it at once, so no op holds the fd and it closes with
            // its last owner (the Socket), in the same turn. Its equivalent
            // promise: nothing of the old op is left to touch the number.
            Backend::Selector => {
                assert_eq!(lp.ops_in_flight(), 0, "a dropped parked recv ends at once");
            }
        }
        assert!(!fd_is_open(fd), "fd {fd} still open after its last op ended");
        assert_eq!(common::open_fds(), base + 1, "only the peer is open");
        // Both: the number, reused at once, belongs to the new socket only.
        // Data for it reaches a receive on it; nothing the old op left
        // (a late completion, a stale registration, stashed data) does.
        let (mut peer2, sock2) = common::fds::tcp_pair_at(fd);
        assert_eq!(lp.stashed_bytes(fd), 0);
        peer2.write_all(b"new socket").unwrap();
        let got = common::run_bounded(lp, LIMIT, async move {
            get_running_loop().unwrap().sock_recv(&sock2, 128).await.unwrap()
        });
        assert_eq!(got, b"new socket");
        drop(peer2);
        assert_eq!(common::open_fds(), base + 1, "the new socket closed with its task");
    }
}

both_backends! {
    serial fn close_with_ops_in_flight_drains_and_leaks_nothing(lp) {
        lp.enable_poison_check();
        let mut peers = Vec::new();
        let mut fds = Vec::new();
        for _ in 0..8 {
            let (peer, sock) = tcp_pair();
            peers.push(peer);
            fds.push(sock.as_raw_fd());
            lp.create_task(async move {
                get_running_loop().unwrap().sock_recv(&sock, 1 << 12).await
            });
        }
        turns(lp, 2);
        assert_eq!(lp.ops_in_flight(), 8);
        lp.close().unwrap();
        assert_eq!(lp.driver_stats().leaked_at_close, 0);
        assert_eq!(lp.ops_in_flight(), 0);
        lp.check_poison().unwrap();
        for fd in fds {
            assert!(!fd_is_open(fd), "socket fd {fd} of a cancelled op was not closed");
        }
        drop(peers);
        // The closed loop also gave back the proactor's ring.
        common::assert_only_the_loops_own_fds_left("after closing a loop with 8 recvs in flight");
    }
}

both_backends! {
    serial fn closing_the_loop_under_a_live_connection_releases_its_socket(lp) {
        let (t, mut peer) = common::connection_that_has_sent(lp);
        // The connection is alive, reading, with its protocol holding it.
        drop(t);
        assert!(lp.ops_in_flight() > 0, "the connection's receive is in flight");
        lp.close().unwrap();
        // The loop let go of the transport: the peer sees EOF, and (with
        // the peer gone) every fd the test and the loop opened is closed.
        assert_eq!(peer.read(&mut [0u8; 2]).unwrap(), 0);
        drop(peer);
        common::assert_only_the_loops_own_fds_left("after closing the loop under a live connection");
    }
}
