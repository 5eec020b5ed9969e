//! Micro benchmarks: ringloop (proactor and selector) against tokio's
//! `current_thread` runtime with a `LocalSet`, doing the same work in one
//! process. Rounds are interleaved (P S T, P S T, …) and the median of each
//! is reported with the tokio/ringloop ratio.
//!
//! `cargo run --release -p ringloop-compare --bin micro [-- --quick] [--only NAME]`

use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringloop::prelude::*;

#[path = "../cli.rs"]
mod cli;

const USAGE: &str = "usage: micro [--quick] [--only TEXT]

  (no arguments)  every micro benchmark, 5 rounds, on the proactor, the selector and tokio
  --quick         the few-second CI form (n / 100, one round)
  --only TEXT     only the benches whose name contains TEXT (profiling)
  RUST_LOG=ringloop=debug shows the loop's own messages";

#[derive(Clone, Copy)]
enum Rt {
    Proactor,
    Selector,
    Tokio,
}

/// One workload: runs `n` iterations on `rt`, returns ns per iteration.
type Work = fn(Rt, usize) -> f64;

fn on_ringloop<F: std::future::Future + 'static>(rt: Rt, f: impl FnOnce(EventLoop) -> F) -> Duration
where
    F::Output: 'static,
{
    let lp = match rt {
        Rt::Proactor => EventLoop::proactor(),
        _ => EventLoop::selector(),
    }
    .expect("loop");
    let fut = f(lp.clone());
    let t0 = Instant::now();
    lp.run_until_complete(fut).expect("run");
    let d = t0.elapsed();
    lp.close().expect("close");
    d
}

fn on_tokio<F: std::future::Future + 'static>(f: impl FnOnce() -> F) -> Duration {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let local = tokio::task::LocalSet::new();
    let fut = f();
    let t0 = Instant::now();
    local.block_on(&rt, fut);
    t0.elapsed()
}

fn per(d: Duration, n: usize) -> f64 {
    d.as_nanos() as f64 / n as f64
}

/// call_soon: n callbacks. tokio has no callback queue: the closest is
/// `spawn_local` of a trivial future.
fn callbacks(rt: Rt, n: usize) -> f64 {
    match rt {
        Rt::Tokio => per(
            on_tokio(|| async move {
                let c = Rc::new(Cell::new(0));
                for _ in 0..n {
                    let c = c.clone();
                    tokio::task::spawn_local(async move { c.set(c.get() + 1) });
                }
                while c.get() < n {
                    tokio::task::yield_now().await;
                }
            }),
            n,
        ),
        _ => per(
            on_ringloop(rt, |lp| async move {
                let c = Rc::new(Cell::new(0));
                for _ in 0..n {
                    let c = c.clone();
                    lp.call_soon(move || c.set(c.get() + 1)).unwrap();
                }
                while c.get() < n {
                    ringloop::sleep(Duration::ZERO).await.unwrap();
                }
            }),
            n,
        ),
    }
}

/// Timers armed and cancelled: `call_later` + `cancel` on ringloop;
/// tokio has no timer handle, so a spawned `sleep` + `abort`, each
/// aborted task awaited to its end (as ringloop's loop turn ends them all).
fn timers(rt: Rt, n: usize) -> f64 {
    match rt {
        Rt::Tokio => per(
            on_tokio(|| async move {
                let mut hs = Vec::with_capacity(n);
                for i in 0..n {
                    hs.push(tokio::task::spawn_local(tokio::time::sleep(
                        Duration::from_secs(3600 + (i % 100) as u64),
                    )));
                }
                for h in &hs {
                    h.abort();
                }
                // Wait for every aborted task to end: a `LocalSet` runs 61
                // tasks per tick, so one `yield_now` left all but 61 of them
                // to be dropped with the `LocalSet`, outside the timed part
                // (ringloop's side ends every task inside it).
                for h in hs {
                    let _ = h.await;
                }
            }),
            n,
        ),
        _ => per(
            on_ringloop(rt, |lp| async move {
                let mut hs = Vec::with_capacity(n);
                for i in 0..n {
                    hs.push(
                        lp.call_later(Duration::from_secs(3600 + (i % 100) as u64), || {})
                            .unwrap(),
                    );
                }
                for h in &hs {
                    h.cancel();
                }
                ringloop::sleep(Duration::ZERO).await.unwrap();
            }),
            n,
        ),
    }
}

/// The same timer work as tasks on both: a sleeping task, then cancelled.
fn sleep_cancel(rt: Rt, n: usize) -> f64 {
    match rt {
        Rt::Tokio => timers(rt, n),
        _ => per(
            on_ringloop(rt, |lp| async move {
                let mut hs = Vec::with_capacity(n);
                for i in 0..n {
                    hs.push(lp.create_task(ringloop::sleep(Duration::from_secs(
                        3600 + (i % 100) as u64,
                    ))));
                }
                for h in &hs {
                    h.cancel(None);
                }
                ringloop::sleep(Duration::ZERO).await.unwrap();
            }),
            n,
        ),
    }
}

/// Spawn a task and await it, n times.
fn spawn_join(rt: Rt, n: usize) -> f64 {
    match rt {
        Rt::Tokio => per(
            on_tokio(|| async move {
                for i in 0..n {
                    black_box(tokio::task::spawn_local(async move { i }).await.unwrap());
                }
            }),
            n,
        ),
        _ => per(
            on_ringloop(rt, |lp| async move {
                for i in 0..n {
                    black_box(lp.create_task(async move { i }).await.unwrap());
                }
            }),
            n,
        ),
    }
}

/// Future resolution: a future is created, resolved by a callback the loop
/// runs, and awaited, n times. tokio has no loop future: a oneshot channel
/// resolved by a spawned task.
fn future_resolution(rt: Rt, n: usize) -> f64 {
    match rt {
        Rt::Tokio => per(
            on_tokio(|| async move {
                for i in 0..n {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    tokio::task::spawn_local(async move {
                        let _ = tx.send(i);
                    });
                    black_box(rx.await.unwrap());
                }
            }),
            n,
        ),
        _ => per(
            on_ringloop(rt, |lp| async move {
                for i in 0..n {
                    let f = lp.create_future::<usize>();
                    let f2 = f.clone();
                    lp.call_soon(move || {
                        let _ = f2.set_result(i);
                    })
                    .unwrap();
                    black_box(f.await.unwrap());
                }
            }),
            n,
        ),
    }
}

/// A task yields to the loop n times.
fn yields(rt: Rt, n: usize) -> f64 {
    match rt {
        Rt::Tokio => per(
            on_tokio(|| async move {
                for _ in 0..n {
                    tokio::task::yield_now().await;
                }
            }),
            n,
        ),
        _ => per(
            on_ringloop(rt, |_| async move {
                for _ in 0..n {
                    ringloop::sleep(Duration::ZERO).await.unwrap();
                }
            }),
            n,
        ),
    }
}

/// Gather n tasks (spawn all, await all).
fn gather(rt: Rt, n: usize) -> f64 {
    match rt {
        Rt::Tokio => per(
            on_tokio(|| async move {
                let hs: Vec<_> = (0..n)
                    .map(|i| tokio::task::spawn_local(async move { i }))
                    .collect();
                for h in hs {
                    black_box(h.await.unwrap());
                }
            }),
            n,
        ),
        _ => per(
            on_ringloop(rt, |_| async move {
                let r = ringloop::gather((0..n).map(|i| async move { Ok(i) }))
                    .await
                    .unwrap();
                black_box(r);
            }),
            n,
        ),
    }
}

/// A timeout scope around a future that is ready at once.
fn timeout_scope(rt: Rt, n: usize) -> f64 {
    match rt {
        Rt::Tokio => per(
            on_tokio(|| async move {
                for i in 0..n {
                    black_box(
                        tokio::time::timeout(Duration::from_secs(3600), async { i })
                            .await
                            .unwrap(),
                    );
                }
            }),
            n,
        ),
        _ => per(
            on_ringloop(rt, |_| async move {
                for i in 0..n {
                    black_box(
                        ringloop::timeout(Some(Duration::from_secs(3600)))
                            .run(async { i })
                            .await
                            .unwrap(),
                    );
                }
            }),
            n,
        ),
    }
}

/// 64-byte request/response round trips over loopback TCP, client and
/// server on the same loop: `sock_*` calls on ringloop, `TcpStream` on tokio.
fn sock_echo(rt: Rt, n: usize) -> f64 {
    match rt {
        Rt::Tokio => per(
            on_tokio(|| async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = l.local_addr().unwrap();
                tokio::task::spawn_local(async move {
                    let (mut s, _) = l.accept().await.unwrap();
                    let mut buf = [0u8; 64];
                    while s.read_exact(&mut buf).await.is_ok() {
                        s.write_all(&buf).await.unwrap();
                    }
                });
                let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                c.set_nodelay(true).unwrap();
                let mut buf = [0u8; 64];
                for _ in 0..n {
                    c.write_all(&[7u8; 64]).await.unwrap();
                    c.read_exact(&mut buf).await.unwrap();
                }
            }),
            n,
        ),
        _ => per(
            on_ringloop(rt, |lp| async move {
                let listener = Socket::tcp_listener(&"127.0.0.1:0".parse().unwrap(), 8).unwrap();
                let addr = listener.local_addr().unwrap();
                let l2 = lp.clone();
                lp.create_task(async move {
                    let (conn, _) = l2.sock_accept(&listener).await.unwrap();
                    let mut buf = Vec::with_capacity(64);
                    loop {
                        let (r, b) = l2.sock_recv_into(&conn, buf).await;
                        if !matches!(r, Ok(n) if n > 0) {
                            return;
                        }
                        l2.sock_sendall(&conn, b).await.unwrap();
                        buf = Vec::with_capacity(64);
                    }
                });
                let c = Socket::tcp_for(&addr.as_socket().unwrap()).unwrap();
                c.with(|s| s.set_tcp_nodelay(true)).unwrap();
                lp.sock_connect(&c, &addr).await.unwrap();
                let msg = bytes::Bytes::from_static(&[7u8; 64]);
                for _ in 0..n {
                    lp.sock_sendall(&c, msg.clone()).await.unwrap();
                    let mut got = 0;
                    while got < 64 {
                        let (r, _) = lp.sock_recv_into(&c, Vec::with_capacity(64 - got)).await;
                        got += r.unwrap();
                    }
                }
            }),
            n,
        ),
    }
}

/// Two tasks hand a lock back and forth n times.
fn lock_ping_pong(rt: Rt, n: usize) -> f64 {
    match rt {
        Rt::Tokio => per(
            on_tokio(|| async move {
                let m = Rc::new(tokio::sync::Mutex::new(0usize));
                let m2 = m.clone();
                let other = tokio::task::spawn_local(async move {
                    for _ in 0..n {
                        *m2.lock().await += 1;
                        tokio::task::yield_now().await;
                    }
                });
                for _ in 0..n {
                    *m.lock().await += 1;
                    tokio::task::yield_now().await;
                }
                other.await.unwrap();
            }),
            2 * n,
        ),
        _ => per(
            on_ringloop(rt, |lp| async move {
                let lock = ringloop::locks::Lock::new();
                let count = Rc::new(Cell::new(0usize));
                let (l2, c2) = (lock.clone(), count.clone());
                let other = lp.create_task(async move {
                    for _ in 0..n {
                        let _g = l2.lock().await;
                        c2.set(c2.get() + 1);
                        drop(_g);
                        ringloop::sleep(Duration::ZERO).await.unwrap();
                    }
                });
                for _ in 0..n {
                    let _g = lock.lock().await;
                    count.set(count.get() + 1);
                    drop(_g);
                    ringloop::sleep(Duration::ZERO).await.unwrap();
                }
                other.await.unwrap();
            }),
            2 * n,
        ),
    }
}

/// n items through a bounded queue (100) from one producer to one consumer.
fn queue_throughput(rt: Rt, n: usize) -> f64 {
    match rt {
        Rt::Tokio => per(
            on_tokio(|| async move {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<usize>(100);
                let prod = tokio::task::spawn_local(async move {
                    for i in 0..n {
                        tx.send(i).await.unwrap();
                    }
                });
                let mut sum = 0usize;
                while let Some(v) = rx.recv().await {
                    sum = sum.wrapping_add(v);
                }
                prod.await.unwrap();
                black_box(sum);
            }),
            n,
        ),
        _ => per(
            on_ringloop(rt, |lp| async move {
                let q: ringloop::queues::Queue<usize> = ringloop::queues::Queue::new(100);
                let q2 = q.clone();
                let prod = lp.create_task(async move {
                    for i in 0..n {
                        q2.put(i).await.unwrap();
                    }
                    q2.shutdown(false);
                });
                let mut sum = 0usize;
                while let Ok(v) = q.get().await {
                    sum = sum.wrapping_add(v);
                }
                prod.await.unwrap();
                black_box(sum);
            }),
            n,
        ),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Keeps freed heap memory in the process (glibc would hand it back to the
/// kernel after each run and fault it in again on the next): rows then
/// measure the runtimes, not page faults, and a row's figure no longer
/// depends on which rows ran before it (gather of 10k was 1.0x alone and
/// 1.7x in the full run: 12,500 minor faults in its process alone, on both
/// sides). The same for every runtime.
fn keep_heap() {
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn main() {
    keep_heap();
    cli::init_logging();
    let (mut quick, mut only) = (false, None::<String>);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--help" | "-h" => return println!("{USAGE}"),
            "--quick" => quick = true,
            "--only" => match args.next() {
                Some(t) => only = Some(t),
                None => cli::usage_error("--only needs a value", USAGE),
            },
            _ => cli::usage_error(&format!("unknown argument {a:?}"), USAGE),
        }
    }
    let scale = if quick { 100 } else { 1 };
    let rounds = if quick { 1 } else { 5 };
    let benches: &[(&str, Work, usize)] = &[
        ("call_soon (tokio: spawn_local)", callbacks, 1_000_000),
        (
            "call_later + cancel (tokio: sleep task + abort)",
            timers,
            1_000_000,
        ),
        ("sleep task + cancel (both: tasks)", sleep_cancel, 200_000),
        ("task spawn + join", spawn_join, 200_000),
        (
            "future resolved by a callback (tokio: oneshot from a task)",
            future_resolution,
            1_000_000,
        ),
        ("yield (sleep(0) / yield_now)", yields, 1_000_000),
        ("gather 10k tasks", gather, 10_000),
        ("timeout scope, ready body", timeout_scope, 1_000_000),
        (
            "lock ping-pong (tokio: sync::Mutex)",
            lock_ping_pong,
            200_000,
        ),
        (
            "queue put/get, maxsize 100 (tokio: mpsc)",
            queue_throughput,
            1_000_000,
        ),
        ("sock echo 64 B round trip (one loop)", sock_echo, 50_000),
    ];
    println!(
        "| bench | ringloop proactor ns/op | ringloop selector ns/op | tokio ns/op | tokio / proactor |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, work, n) in benches {
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let n = (n / scale).max(10);
        let mut res = [Vec::new(), Vec::new(), Vec::new()];
        // Warm-up, discarded.
        for rt in [Rt::Proactor, Rt::Selector, Rt::Tokio] {
            work(rt, n / 10 + 1);
        }
        for _ in 0..rounds {
            for (i, rt) in [Rt::Proactor, Rt::Selector, Rt::Tokio]
                .into_iter()
                .enumerate()
            {
                res[i].push(work(rt, n));
            }
        }
        let [p, s, t] = res.map(|mut v| median(&mut v));
        assert!(p > 0.0 && s > 0.0 && t > 0.0 && p.is_finite());
        println!("| {name} | {p:.1} | {s:.1} | {t:.1} | {:.2}× |", t / p);
    }
    println!("\nrounds={rounds}, n scaled by 1/{scale}; medians; same process, interleaved");
}
