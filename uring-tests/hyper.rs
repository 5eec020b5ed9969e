//! hyper 1.x on ringloop (issue 16, the `hyper` feature): HTTP/1.1 and
//! HTTP/2 server and client, bodies past the high-water mark, TLS,
//! graceful shutdown, a garbage-sending client, hyper's timer, and the
//! sleep's thread check; every test on both backends.

mod common;
#[path = "tls_support.rs"]
mod tls_support;

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::run_bounded;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::rt::Timer;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use ringloop::hyper::{HyperServer, LoopSleep, LoopTimer};
use ringloop::prelude::*;
use ringloop::{ConnectOptions, ServerOptions};

const LIMIT: Duration = Duration::from_secs(60);

fn local() -> ServerOptions {
    ServerOptions {
        hosts: vec!["127.0.0.1".into()],
        ..Default::default()
    }
}

fn port(s: &HyperServer) -> u16 {
    s.sockets()[0].as_socket().unwrap().port()
}

fn to_port(port: u16) -> ConnectOptions {
    ConnectOptions {
        host: Some("127.0.0.1".into()),
        port,
        ..Default::default()
    }
}

type Res = Response<Full<Bytes>>;

/// Answers `hello <path>` to a GET, and `<n> bytes, sum <s>` for a body.
async fn hello(req: Request<Incoming>) -> Result<Res, hyper::Error> {
    let path = req.uri().path().to_owned();
    let body = req.into_body().collect().await?.to_bytes();
    let text = if body.is_empty() {
        format!("hello {path}")
    } else {
        let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
        format!("{} bytes, sum {sum}", body.len())
    };
    Ok(Response::new(Full::new(Bytes::from(text))))
}

async fn hello_server(opts: ServerOptions) -> HyperServer {
    ringloop::hyper::serve(|_t| service_fn(hello), opts)
        .await
        .unwrap()
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn text(res: Response<Incoming>) -> (StatusCode, String) {
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

both_backends! {
    fn http1_server_and_client_keep_alive_and_bodies(lp) {
        run_bounded(lp, LIMIT, async move {
            let server = hello_server(local()).await;
            let io = ringloop::hyper::connect(to_port(port(&server))).await.unwrap();
            let mut send = ringloop::hyper::http1_client(io).await.unwrap();
            // Ten requests in turn on one keep-alive connection.
            for i in 0..10 {
                let res = send.send_request(get(&format!("/{i}"))).await.unwrap();
                assert_eq!(res.version(), hyper::Version::HTTP_11);
                assert_eq!(text(res).await, (StatusCode::OK, format!("hello /{i}")));
            }
            assert_eq!(server.active_connections(), 1, "one connection served them all");
            let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
            let req = Request::post("/")
                .header("host", "localhost")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let res = send.send_request(req).await.unwrap();
            assert_eq!(text(res).await.1, format!("100000 bytes, sum {sum}"));
            drop(send);
            server.shutdown();
            server.wait_closed().await;
            assert_eq!(server.active_connections(), 0);
        });
    }
}

both_backends! {
    fn http2_prior_knowledge_concurrent_streams(lp) {
        run_bounded(lp, LIMIT, async move {
            let server = hello_server(local()).await;
            let io = ringloop::hyper::connect(to_port(port(&server))).await.unwrap();
            let send = ringloop::hyper::http2_client(io).await.unwrap();
            // Twenty streams at once on one connection (the executor runs
            // the server's stream tasks and the client's connection).
            let tasks: Vec<_> = (0..20)
                .map(|i| {
                    let mut s = send.clone();
                    get_running_loop().unwrap().create_task(async move {
                        let res = s.send_request(get(&format!("/s{i}"))).await.unwrap();
                        assert_eq!(res.version(), hyper::Version::HTTP_2);
                        text(res).await
                    })
                })
                .collect();
            for (i, t) in tasks.into_iter().enumerate() {
                assert_eq!(t.await.unwrap(), (StatusCode::OK, format!("hello /s{i}")));
            }
            assert_eq!(server.active_connections(), 1);
            drop(send);
            server.shutdown();
            server.wait_closed().await;
        });
    }
}

/// A request body of `total` bytes in 64 KiB chunks that counts how much
/// hyper has taken from it.
struct Counted {
    chunk: Bytes,
    left: usize,
    taken: Rc<Cell<usize>>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len());
        self.left -= n;
        self.taken.set(self.taken.get() + n);
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
}

/// Waits until `v` has not changed over 20 checks 10 ms apart (the
/// sender has stalled), and returns it.
async fn settled(v: &Rc<Cell<usize>>) -> usize {
    let (mut last, mut same) = (v.get(), 0);
    while same < 20 {
        ringloop::sleep(Duration::from_millis(10)).await.unwrap();
        if v.get() == last {
            same += 1;
        } else {
            (last, same) = (v.get(), 0);
        }
    }
    last
}

both_backends! {
    fn request_body_past_the_high_water_mark_is_back_pressured(lp) {
        run_bounded(lp, LIMIT, async move {
            let l = get_running_loop().unwrap();
            const TOTAL: usize = 64 << 20;
            // The service does not read the body until `go`.
            let go = l.create_future::<()>();
            let arrived = Rc::new(Cell::new(false));
            let (g2, a2) = (go.clone(), arrived.clone());
            let server = ringloop::hyper::serve(
                move |_t| {
                    let (go, arrived) = (g2.clone(), a2.clone());
                    service_fn(move |req: Request<Incoming>| {
                        let (go, arrived) = (go.clone(), arrived.clone());
                        async move {
                            arrived.set(true);
                            go.await.unwrap();
                            let mut body = req.into_body();
                            let mut n = 0usize;
                            while let Some(f) = body.frame().await {
                                n += f?.into_data().map_or(0, |d| d.len());
                            }
                            Ok::<Res, hyper::Error>(Response::new(Full::new(Bytes::from(
                                format!("{n}"),
                            ))))
                        }
                    })
                },
                local(),
            )
            .await
            .unwrap();
            let io = ringloop::hyper::connect(to_port(port(&server))).await.unwrap();
            let client_t = io.transport().clone();
            let mut send = ringloop::hyper::http1_client(io).await.unwrap();
            let taken = Rc::new(Cell::new(0));
            let body = Counted {
                chunk: Bytes::from(vec![7u8; 64 * 1024]),
                left: TOTAL,
                taken: taken.clone(),
            };
            let req = Request::post("/")
                .header("host", "localhost")
                .header("content-length", TOTAL.to_string())
                .body(body)
                .unwrap();
            let res = l.create_task(async move { send.send_request(req).await.map(|r| (r, send)) });
            while !arrived.get() {
                ringloop::sleep(Duration::from_millis(1)).await.unwrap();
            }
            let stalled = settled(&taken).await;
            // The server stopped reading and the client's transport stayed
            // near its high-water mark: the sender stalled long before the
            // end, holding a bounded amount.
            assert!(
                stalled < TOTAL / 2,
                "the client sent {stalled} of {TOTAL} bytes with nobody reading: no back-pressure"
            );
            let (_, high) = client_t.get_write_buffer_limits();
            assert!(
                client_t.get_write_buffer_size() <= high + 1024 * 1024,
                "the client's transport buffered {} bytes (high-water mark {high})",
                client_t.get_write_buffer_size()
            );
            go.set_result(()).unwrap();
            let (res, send) = res.await.unwrap().unwrap();
            assert_eq!(text(res).await, (StatusCode::OK, TOTAL.to_string()));
            assert_eq!(taken.get(), TOTAL);
            drop(send);
            server.shutdown();
            server.wait_closed().await;
        });
    }
}

both_backends! {
    fn response_body_to_a_client_that_does_not_read_is_back_pressured(lp) {
        run_bounded(lp, LIMIT, async move {
            const TOTAL: usize = 64 << 20;
            let made = Rc::new(Cell::new(0));
            let m2 = made.clone();
            let server = ringloop::hyper::serve(
                move |_t| {
                    let made = m2.clone();
                    service_fn(move |_req: Request<Incoming>| {
                        let made = made.clone();
                        async move {
                            Ok::<_, Infallible>(Response::new(Counted {
                                chunk: Bytes::from(vec![3u8; 64 * 1024]),
                                left: TOTAL,
                                taken: made,
                            }))
                        }
                    })
                },
                local(),
            )
            .await
            .unwrap();
            let io = ringloop::hyper::connect(to_port(port(&server))).await.unwrap();
            let mut send = ringloop::hyper::http1_client(io).await.unwrap();
            let res = send.send_request(get("/big")).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            // The head is here; nobody reads the body yet.
            let stalled = settled(&made).await;
            assert!(
                stalled < TOTAL / 2,
                "the server made {stalled} of {TOTAL} bytes for a client that does not read"
            );
            let mut body = res.into_body();
            let mut n = 0;
            while let Some(f) = body.frame().await {
                n += f.unwrap().into_data().map_or(0, |d| d.len());
            }
            assert_eq!((n, made.get()), (TOTAL, TOTAL));
            drop(send);
            server.shutdown();
            server.wait_closed().await;
        });
    }
}

both_backends! {
    fn tls_http1_and_http2(lp) {
        run_bounded(lp, LIMIT, async move {
            let cfg = tls_support::server_config_for(
                &tls_support::pki().leaf,
                &[b"h2", b"http/1.1"],
            );
            let server = hello_server(ServerOptions {
                ssl: Some(cfg),
                ..local()
            })
            .await;
            let p = port(&server);
            for alpn in [&b"http/1.1"[..], b"h2"] {
                let io = ringloop::hyper::connect(ConnectOptions {
                    ssl: Some(tls_support::client_config_trusting(
                        &tls_support::pki().ca,
                        &[alpn],
                    )),
                    server_hostname: Some("localhost".into()),
                    ..to_port(p)
                })
                .await
                .unwrap();
                assert!(io.transport().get_extra_info("cipher").is_some(), "a TLS transport");
                if alpn == b"h2" {
                    let mut send = ringloop::hyper::http2_client(io).await.unwrap();
                    let res = send.send_request(get("/tls2")).await.unwrap();
                    assert_eq!(res.version(), hyper::Version::HTTP_2);
                    assert_eq!(text(res).await.1, "hello /tls2");
                } else {
                    let mut send = ringloop::hyper::http1_client(io).await.unwrap();
                    for i in 0..3 {
                        let res = send.send_request(get(&format!("/tls{i}"))).await.unwrap();
                        assert_eq!(res.version(), hyper::Version::HTTP_11);
                        assert_eq!(text(res).await.1, format!("hello /tls{i}"));
                    }
                    // A body larger than a TLS record and the high-water mark.
                    let req = Request::post("/")
                        .header("host", "localhost")
                        .body(Full::new(Bytes::from(vec![1u8; 300_000])))
                        .unwrap();
                    let res = send.send_request(req).await.unwrap();
                    assert_eq!(text(res).await.1, "300000 bytes, sum 300000");
                }
            }
            server.shutdown();
            server.wait_closed().await;
        });
    }
}

both_backends! {
    fn graceful_shutdown_lets_the_request_in_flight_finish(lp) {
        run_bounded(lp, LIMIT, async move {
            let l = get_running_loop().unwrap();
            let release = l.create_future::<()>();
            let events = Rc::new(RefCell::new(Vec::<String>::new()));
            let (r2, e2) = (release.clone(), events.clone());
            let server = ringloop::hyper::serve(
                move |_t| {
                    let (release, events) = (r2.clone(), e2.clone());
                    service_fn(move |req: Request<Incoming>| {
                        let (release, events) = (release.clone(), events.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            events.borrow_mut().push(format!("got {path}"));
                            if path == "/slow" {
                                release.await.unwrap();
                            }
                            events.borrow_mut().push(format!("answer {path}"));
                            Ok::<Res, Infallible>(Response::new(Full::new(Bytes::from(path))))
                        }
                    })
                },
                local(),
            )
            .await
            .unwrap();
            let p = port(&server);
            // An idle keep-alive connection, and one with a request in flight.
            let mut idle = ringloop::hyper::http1_client(
                ringloop::hyper::connect(to_port(p)).await.unwrap(),
            )
            .await
            .unwrap();
            let res = idle.send_request(get("/fast")).await.unwrap();
            assert_eq!(text(res).await.1, "/fast");
            let mut busy = ringloop::hyper::http1_client(
                ringloop::hyper::connect(to_port(p)).await.unwrap(),
            )
            .await
            .unwrap();
            let slow = l.create_task(async move {
                let res = busy.send_request(get("/slow")).await.unwrap();
                let out = text(res).await;
                (out, busy)
            });
            while !events.borrow().contains(&"got /slow".to_string()) {
                ringloop::sleep(Duration::from_millis(1)).await.unwrap();
            }
            assert_eq!(server.active_connections(), 2);
            server.shutdown();
            // No new connections are served once shut down (the kernel may
            // still complete a connect while the listener's cancelled
            // accept is in flight; nobody answers it).
            assert!(server.sockets().is_empty());
            if let Ok(io) = ringloop::hyper::connect(to_port(p)).await {
                if let Ok(mut late) = ringloop::hyper::http1_client(io).await {
                    assert!(late.send_request(get("/late")).await.is_err(), "served after shutdown");
                }
            }
            // The idle connection is closed; the busy one stays for its answer.
            while server.active_connections() > 1 {
                ringloop::sleep(Duration::from_millis(1)).await.unwrap();
            }
            assert!(idle.ready().await.is_err(), "the idle connection was closed");
            events.borrow_mut().push("release".into());
            release.set_result(()).unwrap();
            let ((status, body), mut busy) = slow.await.unwrap();
            assert_eq!((status, body.as_str()), (StatusCode::OK, "/slow"));
            server.wait_closed().await;
            assert!(busy.ready().await.is_err(), "closed after its answer");
            assert_eq!(
                *events.borrow(),
                ["got /fast", "answer /fast", "got /slow", "release", "answer /slow"]
            );
        });
    }
}

both_backends! {
    fn a_client_sending_garbage_costs_its_connection_only(lp) {
        run_bounded(lp, LIMIT, async move {
            let server = hello_server(local()).await;
            let p = port(&server);
            let mut send = ringloop::hyper::http1_client(
                ringloop::hyper::connect(to_port(p)).await.unwrap(),
            )
            .await
            .unwrap();
            let res = send.send_request(get("/before")).await.unwrap();
            assert_eq!(text(res).await.1, "hello /before");
            for garbage in [
                &b"\x00\x01\x02 this is not HTTP\r\n\r\n"[..],
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            ] {
                let (r, w) = ringloop::open_connection("127.0.0.1", p).await.unwrap();
                w.write(garbage.to_vec()).unwrap();
                let answer = r.read(-1).await.unwrap();
                assert!(
                    !answer.starts_with(b"HTTP/1.1 2"),
                    "garbage got {answer:?}"
                );
                assert!(r.at_eof(), "the server closed the bad connection");
                w.close();
            }
            // The server and the good connection go on.
            let res = send.send_request(get("/after")).await.unwrap();
            assert_eq!(text(res).await.1, "hello /after");
            let mut fresh = ringloop::hyper::http1_client(
                ringloop::hyper::connect(to_port(p)).await.unwrap(),
            )
            .await
            .unwrap();
            let res = fresh.send_request(get("/fresh")).await.unwrap();
            assert_eq!(text(res).await.1, "hello /fresh");
            while server.active_connections() > 2 {
                ringloop::sleep(Duration::from_millis(1)).await.unwrap();
            }
            assert_eq!(server.active_connections(), 2, "only the bad connections went");
            drop((send, fresh));
            server.shutdown();
            server.wait_closed().await;
        });
    }
}

both_backends! {
    fn header_read_timeout_closes_a_slow_client_through_the_loop_timer(lp) {
        run_bounded(lp, LIMIT, async move {
            let mut b = ringloop::hyper::builder().unwrap();
            b.http1().header_read_timeout(Duration::from_secs(1));
            let server = ringloop::hyper::serve_with(b, |_t| service_fn(hello), local())
                .await
                .unwrap();
            let p = port(&server);
            // Half a request head, then nothing.
            let (r, w) = ringloop::open_connection("127.0.0.1", p).await.unwrap();
            w.write(&b"GET / HTTP/1.1\r\nHost: x\r\n"[..]).unwrap();
            let closed = get_running_loop().unwrap().create_task(async move {
                let answer = r.read(-1).await.unwrap();
                (answer, r.at_eof())
            });
            // Meanwhile a complete request on another connection is answered
            // (the slow one is still open then: closed by its timer, later).
            let mut send = ringloop::hyper::http1_client(
                ringloop::hyper::connect(to_port(p)).await.unwrap(),
            )
            .await
            .unwrap();
            let res = send.send_request(get("/ok")).await.unwrap();
            assert_eq!(text(res).await.1, "hello /ok");
            assert!(!closed.done(), "the slow client was closed before its timeout");
            assert_eq!(server.active_connections(), 2);
            let (answer, eof) = closed.await.unwrap();
            assert!(eof, "the server closed the slow connection");
            assert!(!answer.starts_with(b"HTTP/1.1 2"), "no answer to half a head: {answer:?}");
            // (The idle keep-alive connection is under the same timeout:
            // hyper times the wait for every request head.)
            drop(send);
            w.close();
            server.shutdown();
            server.wait_closed().await;
        });
    }
}

both_backends! {
    fn loop_timer_sleeps_fire_in_deadline_order_and_reset_moves_them(lp) {
        run_bounded(lp, LIMIT, async move {
            let l = get_running_loop().unwrap();
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for (name, ms) in [("c", 60u64), ("a", 20), ("b", 40)] {
                let o = order.clone();
                tasks.push(l.create_task(async move {
                    LoopTimer.sleep(Duration::from_millis(ms)).await;
                    o.borrow_mut().push(name);
                }));
            }
            // A sleep reset from far away to soon fires before the others.
            let o = order.clone();
            tasks.push(l.create_task(async move {
                let mut s = LoopTimer.sleep(Duration::from_secs(3600));
                // Armed first (polled once), then reset.
                let armed = std::future::poll_fn(|cx| Poll::Ready(s.as_mut().poll(cx).is_pending())).await;
                assert!(armed);
                LoopTimer.reset(&mut s, Instant::now() + Duration::from_millis(5));
                s.await;
                o.borrow_mut().push("reset");
            }));
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(*order.borrow(), ["reset", "a", "b", "c"]);
            // A dropped sleep's loop timer is kept for the next sleep on the
            // thread; adopted by a later deadline it fires early and is armed
            // again for the rest: the adopted sleep ends after one that is
            // due between the two deadlines.
            let order = Rc::new(RefCell::new(Vec::new()));
            let mut a = LoopTimer.sleep(Duration::from_millis(40));
            let armed = std::future::poll_fn(|cx| Poll::Ready(a.as_mut().poll(cx).is_pending())).await;
            assert!(armed);
            drop(a);
            let o = order.clone();
            let adopted = l.create_task(async move {
                LoopTimer.sleep(Duration::from_millis(120)).await;
                o.borrow_mut().push("adopted");
            });
            let o = order.clone();
            let between = l.create_task(async move {
                ringloop::sleep(Duration::from_millis(80)).await.unwrap();
                o.borrow_mut().push("between");
            });
            // And a sleep due before every kept timer does not wait for one.
            let o = order.clone();
            let early = l.create_task(async move {
                LoopTimer.sleep(Duration::from_millis(1)).await;
                o.borrow_mut().push("early");
            });
            for t in [adopted, between, early] {
                t.await.unwrap();
            }
            assert_eq!(*order.borrow(), ["early", "between", "adopted"]);
            // An expired deadline is ready at once, without a loop timer.
            LoopSleep::until(Instant::now() - Duration::from_millis(1)).await;
        });
    }
}

both_backends! {
    fn a_sleep_polled_on_another_thread_panics_and_a_drop_there_is_safe(lp) {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<LoopSleep>();
        assert_send_sync::<LoopTimer>();
        run_bounded(lp, LIMIT, async move {
            // Made here, polled elsewhere: the thread check panics.
            let s = LoopSleep::until(Instant::now() + Duration::from_secs(60));
            let r = std::thread::spawn(move || {
                let mut s = Box::pin(s);
                let w = std::task::Waker::noop();
                let _ = s.as_mut().poll(&mut Context::from_waker(w));
            })
            .join();
            let msg = common::panic_text(&*r.expect_err("polled off its thread"));
            assert!(msg.contains("another thread"), "{msg}");
            // Armed here, dropped elsewhere: freed on the loop's thread
            // through its handle, no panic.
            let before = ringloop::hyper::armed_sleeps();
            let mut s = Box::pin(LoopSleep::until(Instant::now() + Duration::from_secs(60)));
            let pending = std::future::poll_fn(|cx| Poll::Ready(s.as_mut().poll(cx).is_pending())).await;
            assert!(pending);
            assert_eq!(ringloop::hyper::armed_sleeps(), before + 1);
            std::thread::spawn(move || drop(s)).join().expect("a drop off-thread is fine");
            while ringloop::hyper::armed_sleeps() > before {
                ringloop::sleep(Duration::from_millis(1)).await.unwrap();
            }
            // Dropped here, armed or not: freed at once.
            let mut s = Box::pin(LoopSleep::until(Instant::now() + Duration::from_secs(60)));
            let _ = std::future::poll_fn(|cx| Poll::Ready(s.as_mut().poll(cx).is_pending())).await;
            assert_eq!(ringloop::hyper::armed_sleeps(), before + 1);
            drop(s);
            assert_eq!(ringloop::hyper::armed_sleeps(), before);
        });
    }
}
