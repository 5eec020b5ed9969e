//! asyncio conformance (issue 15): each test states a rule of the asyncio
//! docs in `shared/spec/` (or of CPython where the docs are silent), quoted
//! in its comment, and checks it on both backends.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use common::{DropFlag, YieldOnce, capture_handler, run_bounded, run_until, turns};
use ringloop::prelude::*;
use ringloop::{
    BaseProtocol, ConnectOptions, ExtraInfo, Protocol, ReturnWhen, Runner, StreamReader, TaskHook,
    TaskRef, Transport, wait,
};

const LIMIT: Duration = Duration::from_secs(20);

/// Whether TCP_NODELAY is set on the transport's socket.
fn nodelay(t: &Transport) -> bool {
    let Some(ExtraInfo::Fd(fd)) = t.get_extra_info("socket") else {
        panic!("a stream transport has a socket");
    };
    nodelay_fd(fd)
}

fn nodelay_fd(fd: RawFd) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is the transport's open socket; `v` and `len` are live
    // locals of the sizes passed.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(
        r,
        0,
        "getsockopt(TCP_NODELAY): {}",
        std::io::Error::last_os_error()
    );
    v != 0
}

/// Keeps its transport; records `connection_made`.
struct Keep {
    t: Option<Transport>,
    made: Rc<Cell<bool>>,
}

impl BaseProtocol for Keep {
    fn connection_made(&mut self, t: Transport) {
        self.made.set(true);
        self.t = Some(t);
    }
}

impl Protocol for Keep {}

fn keep() -> Keep {
    Keep {
        t: None,
        made: Rc::new(Cell::new(false)),
    }
}

/// Echoes; counts the connections its factory made.
struct Echo(Option<Transport>);

impl BaseProtocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
}

impl Protocol for Echo {
    fn data_received(&mut self, data: &[u8]) {
        self.0.as_ref().unwrap().write(data.to_vec()).unwrap();
    }
}

/// A listener on a thread that accepts `n` connections and holds them
/// until the test ends (returned with the port).
fn holding_listener(n: usize) -> (u16, std::thread::JoinHandle<Vec<TcpStream>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || (0..n).map(|_| l.accept().unwrap().0).collect());
    (port, h)
}

// ---- 1. asyncio-future.rst, Future.exception(): "If the Future has been
// cancelled, this method raises a CancelledError exception." (Task
// inherits it.)
both_backends! {
    fn item01_exception_of_a_cancelled_task_is_the_cancellation(lp) {
        let t = lp.create_task(async { ringloop::sleep(Duration::from_secs(60)).await });
        assert!(matches!(t.exception(), Err(Error::InvalidState(_))), "pending: InvalidState");
        assert!(t.cancel(Some("bye")));
        assert!(run_until(lp, LIMIT, || t.done()));
        assert!(t.cancelled());
        assert!(
            matches!(t.exception(), Err(Error::Cancelled(Some(m))) if m == "bye"),
            "{:?}",
            t.exception()
        );
        // The same once an await has taken the result.
        let t2 = t.clone();
        let r = run_bounded(lp, LIMIT, t2);
        assert!(matches!(r, Err(Error::Cancelled(_))));
        assert!(matches!(t.exception(), Err(Error::Cancelled(_))));
        // Not cancelled: the exception, or None.
        let ok = lp.create_task(async { 1 });
        let boom = lp.create_task(async { panic!("boom") });
        assert!(run_until(lp, LIMIT, || ok.done() && boom.done()));
        assert!(matches!(ok.exception(), Ok(None)));
        assert!(matches!(boom.exception(), Ok(Some(Error::Panic(m))) if m.contains("boom")));
    }
}

// ---- 2. asyncio-task.rst, Scheduling From Other Threads: "If an exception
// is raised in the coroutine, the returned Future will be notified."
both_backends! {
    fn item02_threadsafe_coroutine_panic_reaches_the_concurrent_future(lp) {
        let seen = capture_handler(lp);
        let h = lp.handle();
        let th = std::thread::spawn(move || {
            let in_poll = h
                .run_coroutine_threadsafe(|| async {
                    YieldOnce(false).await;
                    panic!("boom in the coroutine");
                })
                .unwrap()
                .result(Some(LIMIT));
            let in_make = h
                .run_coroutine_threadsafe(|| -> std::future::Ready<u8> { panic!("boom in make") })
                .unwrap()
                .result(Some(LIMIT));
            // The loop is still open and serving.
            let after = h.run_coroutine_threadsafe(|| async { 42 }).unwrap().result(Some(LIMIT));
            h.call_soon_threadsafe(|| get_running_loop().unwrap().stop()).unwrap();
            (in_poll, in_make, after)
        });
        let guard = {
            let l2 = lp.clone();
            lp.call_later(LIMIT, move || l2.stop()).unwrap()
        };
        lp.run_forever().unwrap();
        guard.cancel();
        let (in_poll, in_make, after) = th.join().unwrap();
        assert!(
            matches!(&in_poll, Err(Error::Panic(m)) if m.contains("boom in the coroutine")),
            "{in_poll:?}"
        );
        assert!(matches!(&in_make, Err(Error::Panic(m)) if m.contains("boom in make")), "{in_make:?}");
        assert_eq!(after.unwrap(), 42);
        assert!(!lp.is_closed());
        // The panic went to the concurrent future, not to the loop as well.
        assert!(seen.borrow().is_empty(), "{:?}", seen.borrow());
    }
}

// (ringloop's own knob, kept: with UnhandledPanic::StopLoop that panic
// still stops the loop, as a task's panic does, and the concurrent future
// still gets it.)
both_backends! {
    fn item02_a_threadsafe_coroutine_panic_stops_a_stop_loop_loop(lp) {
        lp.set_unhandled_panic(ringloop::UnhandledPanic::StopLoop);
        let h = lp.handle();
        let th = std::thread::spawn(move || {
            h.run_coroutine_threadsafe(|| async { panic!("stop here") })
                .unwrap()
                .result(Some(LIMIT))
        });
        let guard = {
            let l2 = lp.clone();
            lp.call_later(LIMIT, move || l2.stop()).unwrap()
        };
        let err = lp.run_forever().unwrap_err();
        guard.cancel();
        assert!(matches!(&err, Error::Panic(m) if m.contains("stop here")), "{err:?}");
        let r = th.join().unwrap();
        assert!(matches!(&r, Err(Error::Panic(m)) if m.contains("stop here")), "{r:?}");
    }
}

// ---- 3. asyncio-eventloop.rst: "Changed in version 3.7: The socket option
// socket.TCP_NODELAY is set by default for all TCP connections."
both_backends! {
    fn item03_tcp_nodelay_on_every_tcp_transport(lp) {
        let (port, peers) = holding_listener(3);
        run_bounded(lp, LIMIT, async move {
            let lp = get_running_loop().unwrap();
            // create_connection(host, port)
            let a = lp.create_connection(keep, "127.0.0.1", port).await.unwrap();
            assert!(nodelay(&a), "create_connection(host, port)");
            // create_connection(sock=...), connected elsewhere
            let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
            let s = Socket::tcp_for(&addr).unwrap();
            lp.sock_connect(&s, &addr.into()).await.unwrap();
            let b = lp
                .create_connection_with(keep, ConnectOptions { sock: Some(s), ..Default::default() })
                .await
                .unwrap();
            assert!(nodelay(&b), "create_connection(sock=...)");
            // connect_accepted_socket: a std stream connected elsewhere
            let std_stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            assert!(!nodelay_fd(std::os::fd::AsRawFd::as_raw_fd(&std_stream)), "off before");
            let c = lp
                .connect_accepted_socket(keep, Socket::from_owned(OwnedFd::from(std_stream)).unwrap())
                .unwrap();
            assert!(nodelay(&c), "connect_accepted_socket");
            // A server's accepted connections.
            let on_server = Rc::new(RefCell::new(Vec::new()));
            let o2 = on_server.clone();
            struct Probe(Rc<RefCell<Vec<bool>>>);
            impl BaseProtocol for Probe {
                fn connection_made(&mut self, t: Transport) {
                    self.0.borrow_mut().push(nodelay(&t));
                }
            }
            impl Protocol for Probe {}
            let server = lp.create_server(move || Probe(o2.clone()), "127.0.0.1", 0).await.unwrap();
            let sport = server.sockets()[0].as_socket().unwrap().port();
            let _client = TcpStream::connect(("127.0.0.1", sport)).unwrap();
            while on_server.borrow().is_empty() {
                YieldOnce(false).await;
            }
            assert_eq!(*on_server.borrow(), [true], "a server's connection");
            for t in [a, b, c] {
                t.abort();
            }
            server.close();
        });
        drop(peers.join().unwrap());
    }
}

// ---- 4. asyncio-eventloop.rst, create_connection: "The protocol instance
// is coupled with the transport by calling its connection_made() method.
// A (transport, protocol) tuple is returned on success."
both_backends! {
    fn item04_create_connection_returns_after_connection_made(lp) {
        let (port, peers) = holding_listener(1);
        let path = std::env::temp_dir().join(format!(
            "ringloop-conf-{}-{:?}.sock",
            std::process::id(),
            lp.backend()
        ));
        let _ = std::fs::remove_file(&path);
        let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let p2 = path.clone();
        run_bounded(lp, LIMIT, async move {
            let lp = get_running_loop().unwrap();
            let made = Rc::new(Cell::new(false));
            let m2 = made.clone();
            let t = lp
                .create_connection(move || Keep { t: None, made: m2 }, "127.0.0.1", port)
                .await
                .unwrap();
            assert!(made.get(), "create_connection returned before connection_made ran");
            t.abort();
            let made = Rc::new(Cell::new(false));
            let m2 = made.clone();
            let t = lp
                .create_unix_connection(move || Keep { t: None, made: m2 }, &p2)
                .await
                .unwrap();
            assert!(made.get(), "create_unix_connection returned before connection_made ran");
            t.abort();
            // The streams API rests on it: the writer works at once.
            let (_r, w) = ringloop::open_unix_connection(&p2).await.unwrap();
            w.write(&b"x"[..]).unwrap();
            w.close();
        });
        drop(unix);
        let _ = std::fs::remove_file(&path);
        drop(peers.join().unwrap());
    }
}

// ---- 5. Servers have a scope (asyncio: `async with server:` closes it on
// exit). Rust form: the last `Server` handle closes it, unless a task runs
// `serve_forever` with it or it was detached; no connection is accepted
// that nobody serves.
fn refused(port: u16) -> bool {
    matches!(TcpStream::connect(("127.0.0.1", port)), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// True once nothing listens on `port` (a listener there makes `bind`
/// fail even with `SO_REUSEADDR`). Unlike a connect, asking does not hand
/// the server a connection.
fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Turns the loop until the server's listener is gone, then checks that a
/// connect is refused: no connection was taken in and dropped.
fn assert_stops_listening(lp: &EventLoop, port: u16, what: &str) {
    assert!(
        run_until(lp, LIMIT, || port_free(port)),
        "{what}: still listening"
    );
    assert!(refused(port), "{what}: a connect was not refused");
}

fn echo_once(port: u16) -> bool {
    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    c.set_read_timeout(Some(LIMIT)).unwrap();
    c.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).is_ok() && &b == b"ping"
}

/// Echoes once on a thread while the loop turns; true if it echoed.
fn echo_while_turning(lp: &EventLoop, port: u16) -> bool {
    let th = std::thread::spawn(move || echo_once(port));
    assert!(run_until(lp, LIMIT, || th.is_finished()));
    th.join().unwrap()
}

fn counting_server(lp: &EventLoop) -> (ringloop::Server, u16, Rc<Cell<usize>>) {
    let made = Rc::new(Cell::new(0));
    let m2 = made.clone();
    let server = run_bounded(lp, LIMIT, async move {
        get_running_loop()
            .unwrap()
            .create_server(
                move || {
                    m2.set(m2.get() + 1);
                    Echo(None)
                },
                "127.0.0.1",
                0,
            )
            .await
            .unwrap()
    });
    let port = server.sockets()[0].as_socket().unwrap().port();
    (server, port, made)
}

both_backends! {
    fn item05_dropping_the_last_server_handle_closes_it(lp) {
        let (server, port, made) = counting_server(lp);
        let other = server.clone();
        drop(server);
        assert!(echo_while_turning(lp, port), "one handle left: still serving");
        assert_eq!(made.get(), 1);
        drop(other);
        // The listener goes with the accept op's final completion.
        assert_stops_listening(lp, port, "after the last handle");
        turns(lp, 3);
        assert_eq!(made.get(), 1, "a connection was accepted after the server went");
    }
}

both_backends! {
    fn item05_a_detached_server_keeps_serving_until_the_loop_closes(lp) {
        let (server, port, made) = counting_server(lp);
        server.detach();
        server.detach(); // idempotent
        drop(server);
        assert!(echo_while_turning(lp, port), "a detached server serves with no handle");
        assert!(echo_while_turning(lp, port));
        assert_eq!(made.get(), 2);
        // Closing the loop ends it.
        lp.close().unwrap();
        assert!(port_free(port), "still listening after the loop closed");
    }
}

both_backends! {
    fn item05_detach_on_a_closed_loop_keeps_nothing_alive(lp) {
        let (server, port, made) = counting_server(lp);
        lp.close().unwrap();
        server.detach();
        drop(server);
        assert!(port_free(port));
        // The server (and the factory holding `made`) is gone: no handle
        // was left in a task that a closed loop would never run.
        assert_eq!(Rc::strong_count(&made), 1);
    }
}

both_backends! {
    fn item05_close_through_a_kept_handle_ends_a_detached_server(lp) {
        let (server, port, made) = counting_server(lp);
        server.detach();
        assert!(echo_while_turning(lp, port));
        server.close();
        assert_stops_listening(lp, port, "after close");
        drop(server);
        turns(lp, 3);
        assert_eq!(made.get(), 1);
    }
}

both_backends! {
    fn item05_serve_forever_keeps_its_handle_serving(lp) {
        let (server, port, made) = counting_server(lp);
        // The only handle moves into the task.
        let task = lp.create_task(async move { server.serve_forever().await });
        turns(lp, 2);
        assert!(echo_while_turning(lp, port));
        task.cancel(None);
        assert!(run_until(lp, LIMIT, || task.done()));
        assert_stops_listening(lp, port, "after serve_forever's end");
        assert_eq!(made.get(), 1);
    }
}

// ---- 6. asyncio-dev.rst, Detect never-retrieved exceptions: "If a
// Future.set_exception() is called but the Future object is never awaited
// on, the exception would never be propagated to the user code. In this
// case, asyncio would emit a log message when the Future object is garbage
// collected." ("Task exception was never retrieved")
both_backends! {
    fn item06_an_unretrieved_task_error_is_reported_when_dropped(lp) {
        let seen = capture_handler(lp);
        drop(lp.create_task(async { Err::<(), _>(Error::InvalidArgument("lost".into())) }));
        drop(lp.create_task(async { Err::<(), _>(std::io::Error::other("io lost")) }));
        turns(lp, 2);
        {
            let seen = seen.borrow();
            assert_eq!(seen.len(), 2, "{seen:?}");
            assert!(seen.iter().all(|c| c.message == "Task exception was never retrieved"));
            assert!(seen.iter().all(|c| c.task.is_some()));
            assert!(matches!(&seen[0].exception, Some(Error::InvalidArgument(m)) if m == "lost"));
            assert!(matches!(&seen[1].exception, Some(e) if e.to_string().contains("io lost")));
        }
        seen.borrow_mut().clear();
        // Retrieved (awaited, or result()), cancelled, or collected by a
        // task group: nothing to report.
        let awaited = lp.create_task(async { Err::<(), _>(Error::Timeout) });
        assert!(matches!(lp.run_until_complete(awaited).unwrap(), Ok(Err(Error::Timeout))));
        let looked = lp.create_task(async { Err::<(), _>(Error::Timeout) });
        turns(lp, 1);
        assert!(matches!(looked.result(), Ok(Err(Error::Timeout))));
        drop(looked);
        drop(lp.create_task(async { Err::<(), _>(Error::Cancelled(None)) }));
        drop(lp.create_task(async { Ok::<(), Error>(()) }));
        let grouped = run_bounded(lp, LIMIT, async {
            ringloop::TaskGroup::run(|tg| async move {
                drop(tg.create_task(async { Err::<(), _>(Error::Timeout) })?);
                Ok(())
            })
            .await
        });
        assert!(matches!(grouped, Err(Error::Group(es)) if es.len() == 1));
        turns(lp, 2);
        assert!(seen.borrow().is_empty(), "{:?}", seen.borrow());
    }
}

// ---- 7. asyncio-stream.rst, readuntil: "If separator is a tuple of
// separators, the returned data will be the shortest possible that has
// any separator as the suffix."
both_backends! {
    fn item07_readuntil_returns_the_shortest_match(lp) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let peer = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            c.write_all(b"aXXXb|tail").unwrap();
            c
        });
        run_bounded(lp, LIMIT, async move {
            let (r, _w) = ringloop::open_connection("127.0.0.1", port).await.unwrap();
            // "aXXXb" starts first, but "aXX" (ending with "XX") is shorter.
            let got = r.readuntil_any(&[b"aXXXb", b"XX"]).await.unwrap();
            assert_eq!(&got[..], b"aXX");
            // Order of the separators does not matter.
            let got = r.readuntil_any(&[b"|", b"Xb"]).await.unwrap();
            assert_eq!(&got[..], b"Xb");
            assert_eq!(&r.readuntil(b"|").await.unwrap()[..], b"|");
        });
        drop(peer.join().unwrap());
        // Without I/O, from fed data.
        let r = StreamReader::new(1024).unwrap();
        r.feed_data(b"xxAByyB");
        r.feed_eof();
        let got = run_bounded(lp, LIMIT, async move { r.readuntil_any(&[b"xxABy", b"B"]).await });
        assert_eq!(&got.unwrap()[..], b"xxAB");
    }
}

// ---- 8. asyncio-task.rst, wait(): "FIRST_EXCEPTION: The function will
// return when any future finishes by raising an exception." A cancelled
// task raises no exception (CPython: `not f.cancelled() and f.exception()
// is not None`).
both_backends! {
    fn item08_first_exception_does_not_count_cancelled_tasks(lp) {
        let (done, pending) = run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let gate = lp.create_future::<()>();
            let g2 = gate.clone();
            let cancelled = lp.create_task(async { ringloop::sleep(Duration::from_secs(60)).await });
            cancelled.cancel(None);
            let self_cancelled = lp.create_task(async { Err::<(), _>(Error::Cancelled(None)) });
            let slow = lp.create_task(g2);
            // Opens the gate once the cancelled ones are long done.
            let (c2, s2) = (cancelled.clone(), self_cancelled.clone());
            lp.create_task(async move {
                while !(c2.done() && s2.done()) {
                    YieldOnce(false).await;
                }
                for _ in 0..5 {
                    YieldOnce(false).await;
                }
                gate.set_result(()).unwrap();
            });
            wait(vec![cancelled, self_cancelled, slow], None, ReturnWhen::FirstException)
                .await
                .unwrap()
        });
        assert_eq!((done.len(), pending.len()), (3, 0), "returned at a cancellation");
        // A real failure still returns at once.
        let (done, pending) = run_bounded(lp, LIMIT, async {
            let lp = get_running_loop().unwrap();
            let never = lp.create_future::<()>();
            let n2 = never.clone();
            let failing = lp.create_task(async { Err::<(), _>(Error::Timeout) });
            let waiting = lp.create_task(n2);
            let out = wait(vec![failing, waiting], None, ReturnWhen::FirstException).await.unwrap();
            never.cancel(None);
            out
        });
        assert_eq!((done.len(), pending.len()), (1, 1));
        turns(lp, 2);
    }
}

// ---- 9. asyncio-task.rst, Task Groups: "Two base exceptions are treated
// specially: If any task fails with KeyboardInterrupt or SystemExit, the
// task group still cancels the remaining tasks and waits for them, but
// then the initial KeyboardInterrupt or SystemExit is re-raised instead of
// ExceptionGroup or BaseExceptionGroup."
both_backends! {
    fn item09_taskgroup_reraises_interrupted_bare(lp) {
        let dropped = Rc::new(Cell::new(false));
        let d2 = dropped.clone();
        let sibling: Rc<RefCell<Option<Task<Result<()>>>>> = Rc::new(RefCell::new(None));
        let s2 = sibling.clone();
        let r = run_bounded(lp, LIMIT, async move {
            ringloop::TaskGroup::run(|tg| async move {
                let flag = DropFlag(d2);
                *s2.borrow_mut() = Some(tg.create_task(async move {
                    let _flag = flag;
                    ringloop::sleep(Duration::from_secs(60)).await
                })?);
                // Both fail in the same turn: the group sees both errors.
                tg.create_task(async { Err::<(), _>(Error::Interrupted) })?;
                tg.create_task(async { Err::<(), _>(Error::Timeout) })?;
                Ok(())
            })
            .await
        });
        assert!(matches!(r, Err(Error::Interrupted)), "{r:?}");
        assert!(dropped.get(), "the sibling was cancelled and awaited first");
        assert!(sibling.borrow().as_ref().unwrap().cancelled());
        // The body's own Interrupted too.
        let r = run_bounded(lp, LIMIT, async {
            ringloop::TaskGroup::run(|tg| async move {
                tg.create_task(async { ringloop::sleep(Duration::from_secs(60)).await })?;
                YieldOnce(false).await;
                Err::<(), _>(Error::Interrupted)
            })
            .await
        });
        assert!(matches!(r, Err(Error::Interrupted)), "{r:?}");
    }
}

// ---- 10. asyncio-runner.rst, Runner.close(): "Close the runner. Finalize
// asynchronous generators, shutdown default executor, close the event
// loop" — with asyncio's bound (`shutdown_default_executor(timeout=300)`:
// "If the timeout duration is reached, a warning is emitted and the default
// executor is terminated without waiting for its threads to finish
// joining").
#[test]
fn item10_runner_close_bounds_the_executor_shutdown() {
    common::install_logger();
    assert_eq!(
        ringloop::EXECUTOR_SHUTDOWN_TIMEOUT,
        Duration::from_secs(300)
    );
    for backend in [Backend::Proactor, Backend::Selector] {
        let (release, stuck) = mpsc::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicBool::new(false));
        let (f2, s2) = (finished.clone(), started.clone());
        let mut r =
            Runner::with_backend(backend).executor_shutdown_timeout(Duration::from_millis(50));
        let lp = r.get_loop().unwrap();
        r.run(async move {
            let lp = get_running_loop().unwrap();
            // A job that blocks until the test releases it; its awaiting
            // task is left behind (cancelled at close, the job goes on).
            lp.create_task(async move {
                let _ = get_running_loop()
                    .unwrap()
                    .run_in_executor(move || {
                        s2.store(true, Ordering::SeqCst);
                        let _ = stuck.recv();
                        f2.store(true, Ordering::SeqCst);
                    })
                    .await;
            });
            while !started.load(Ordering::SeqCst) {
                ringloop::sleep(Duration::from_millis(1)).await.unwrap();
            }
        })
        .unwrap();
        common::assert_backend_used(&lp, backend);
        r.close().unwrap();
        assert!(lp.is_closed(), "{backend}: close went on");
        assert!(
            !finished.load(Ordering::SeqCst),
            "{backend}: the job is still stuck"
        );
        assert!(
            common::logged("did not finish joining"),
            "{backend}: no warning: {:?}",
            common::log_lines()
        );
        release.send(()).unwrap();
    }
}

// ---- 11. asyncio-eventloop.rst, set_task_factory: "Set a task factory that
// will be used by loop.create_task()." Rust form: a hook the loop calls
// with each new task before its first step; get_task_factory returns it.
both_backends! {
    fn item11_the_task_hook_sees_each_new_task_before_its_first_step(lp) {
        let log = Rc::new(RefCell::new(Vec::<String>::new()));
        assert!(lp.get_task_factory().is_none());
        let l2 = log.clone();
        let hook: TaskHook = Rc::new(move |t: &TaskRef| {
            l2.borrow_mut().push(format!("hook {}", t.get_name()));
            if t.get_name() == "doomed" {
                t.cancel(Some("by the hook"));
            }
            if t.get_name() == "rename me" {
                t.set_name("renamed");
            }
        });
        lp.set_task_factory(Some(hook.clone()));
        assert!(Rc::ptr_eq(&lp.get_task_factory().unwrap(), &hook));
        let run = |name: &'static str| {
            let l = log.clone();
            lp.create_named_task(name, async move { l.borrow_mut().push(format!("run {name}")) })
        };
        let a = run("a");
        let b = run("b");
        let doomed = run("doomed");
        let renamed = run("rename me");
        assert!(run_until(lp, LIMIT, || a.done() && b.done() && doomed.done() && renamed.done()));
        assert!(doomed.cancelled());
        assert_eq!(renamed.get_name(), "renamed");
        assert_eq!(
            *log.borrow(),
            ["hook a", "hook b", "hook doomed", "hook rename me", "run a", "run b", "run rename me"]
        );
        // Eager start: the hook still comes first.
        log.borrow_mut().clear();
        lp.set_eager_task_start(true);
        run_bounded(lp, LIMIT, {
            let l = log.clone();
            async move {
                let lp = get_running_loop().unwrap();
                let l3 = l.clone();
                let t = lp.create_named_task("eager", async move { l3.borrow_mut().push("run eager".into()) });
                l.borrow_mut().push("created".into());
                t.await.unwrap();
            }
        });
        lp.set_eager_task_start(false);
        // (The runner's own task is shown too: it is a task like any other.)
        assert_eq!(log.borrow()[log.borrow().len() - 3..], ["hook eager", "run eager", "created"]);
        // The loop's own tasks (a server's accepts) are not shown; no hook:
        // nothing is called.
        log.borrow_mut().clear();
        let (server, _port, _) = counting_server(lp);
        assert_eq!(log.borrow().iter().filter(|l| l.starts_with("hook")).count(), 1, "{:?}", log.borrow());
        server.close();
        lp.set_task_factory(None);
        assert!(lp.get_task_factory().is_none());
        log.borrow_mut().clear();
        let c = run("c");
        assert!(run_until(lp, LIMIT, || c.done()));
        assert_eq!(*log.borrow(), ["run c"]);
    }
}
