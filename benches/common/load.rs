//! The load client of the network benches: `conns` TCP connections, each
//! sending a `size`-byte message and reading the whole echo back before the
//! next one, driven by one raw io_uring without any runtime.
//!
//! It never sleeps: it spins on `io_uring_enter(GETEVENTS, min_complete=0)`.
//! A client that sleeps makes the server pay a cross-core wake-up (an IPI,
//! costly on a VM) for every reply and adds its own wake-up latency to each
//! round trip, so the figures would measure the client and the scheduler.
//! With a spinning client on its own core, the server is the bottleneck and
//! the bench compares servers. Its per-request cost is two SQEs, two CQEs
//! and a share of one syscall, below any server it measures.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

struct Conn {
    stream: TcpStream,
    sent: usize,
    got: usize,
    buf: Vec<u8>,
    /// A request is in flight (its send or its receive not yet complete).
    busy: bool,
}

/// `IORING_ENTER_GETEVENTS` (the crate does not export its `sys` module).
const GETEVENTS: u32 = 1;
const SEND: u64 = 0;
const RECV: u64 = 1;

fn send_entry(c: &Conn, i: usize, payload: &[u8]) -> squeue::Entry {
    let rest = &payload[c.sent..];
    opcode::Send::new(
        types::Fd(c.stream.as_raw_fd()),
        rest.as_ptr(),
        rest.len() as u32,
    )
    .build()
    .user_data(((i as u64) << 1) | SEND)
}

/// The most one receive of the client takes (0: the whole rest of the
/// echo). `compare net --read-chunk N` sets it, to see servers against a
/// peer that reads in small pieces.
pub static READ_CHUNK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn recv_entry(c: &mut Conn, i: usize) -> squeue::Entry {
    let rest = &mut c.buf[c.got..];
    let chunk = READ_CHUNK.load(std::sync::atomic::Ordering::Relaxed);
    let len = if chunk == 0 {
        rest.len()
    } else {
        rest.len().min(chunk)
    };
    opcode::Recv::new(
        types::Fd(c.stream.as_raw_fd()),
        rest.as_mut_ptr(),
        len as u32,
    )
    .build()
    .user_data(((i as u64) << 1) | RECV)
}

/// What one load run measured.
pub struct Run {
    /// Requests per second.
    pub rps: f64,
    /// The share of the counted time in which the client's turns found
    /// nothing completed: its spare capacity. Near zero, the client's core
    /// (not the server) set the pace, and no server could go faster.
    #[allow(dead_code)] // read by `compare net`, not by `net_echo`
    pub idle: f64,
    /// Every request completed, the warm-up's included (what the server
    /// did over the whole run: `compare net` divides its CPU time by it).
    #[allow(dead_code)] // read by `compare net`, not by `net_echo`
    pub requests: usize,
}

/// Runs the load against `127.0.0.1:port`: for `secs` seconds (the first
/// fifth is warm-up and not counted) or, with `requests`, for that many
/// requests in all. Returns requests per second.
pub fn load(port: u16, size: usize, conns: usize, secs: f64, requests: Option<usize>) -> f64 {
    run(port, size, conns, secs, requests).rps
}

/// [`load`], with the client's idle share.
pub fn run(port: u16, size: usize, conns: usize, secs: f64, requests: Option<usize>) -> Run {
    try_load(port, size, conns, secs, requests).unwrap_or_else(|e| panic!("load client: {e}"))
}

fn try_load(
    port: u16,
    size: usize,
    conns: usize,
    secs: f64,
    requests: Option<usize>,
) -> io::Result<Run> {
    let payload = vec![b'x'; size];
    let mut cs = Vec::with_capacity(conns);
    for _ in 0..conns {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        cs.push(Conn {
            stream,
            sent: 0,
            got: 0,
            buf: vec![0; size],
            busy: false,
        });
    }
    let entries = (2 * conns).next_power_of_two().max(64) as u32;
    let mut ring = IoUring::<squeue::Entry, cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(2 * entries)
        .build(entries)?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let warm = start + Duration::from_secs_f64(secs * 0.2);
    let mut issued = 0usize;
    let mut counted = 0u64;
    let mut completed = 0usize;
    let mut in_flight = 0usize;
    let mut stopping = false;
    let mut drain_limit = None;
    let mut new_requests: Vec<usize> = (0..conns).collect();
    let mut sqes: Vec<squeue::Entry> = Vec::with_capacity(2 * conns);
    let mut idle = Duration::ZERO;
    let mut turn_start = start;
    loop {
        let now = Instant::now();
        if !stopping {
            stopping = match requests {
                Some(n) => issued >= n,
                None => now >= deadline,
            };
        }
        if !stopping {
            for i in new_requests.drain(..) {
                if requests.is_some_and(|n| issued >= n) {
                    break;
                }
                let c = &mut cs[i];
                c.sent = 0;
                c.got = 0;
                c.busy = true;
                issued += 1;
                in_flight += 1;
                sqes.push(send_entry(c, i, &payload));
                sqes.push(recv_entry(c, i));
            }
        }
        new_requests.clear();
        if stopping && in_flight == 0 {
            break;
        }
        if stopping {
            let limit = *drain_limit.get_or_insert(now + Duration::from_secs(10));
            if now > limit {
                return Err(io::Error::other("the server stopped answering"));
            }
        }
        // SAFETY: every entry points into a buffer of `cs` or `payload`,
        // which outlive the ring: the loop ends only with nothing in flight.
        unsafe {
            let mut sq = ring.submission();
            for e in sqes.drain(..) {
                sq.push(&e)
                    .map_err(|_| io::Error::other("submission queue full"))?;
            }
        }
        let n = ring.submission().len() as u32;
        // SAFETY: no argument pointer is passed.
        unsafe {
            ring.submitter()
                .enter::<libc::sigset_t>(n, 0, GETEVENTS, None)?;
        }
        let now = Instant::now();
        if ring.completion().is_empty() && turn_start >= warm && !stopping {
            idle += now - turn_start;
        }
        turn_start = now;
        for cqe in ring.completion() {
            let i = (cqe.user_data() >> 1) as usize;
            let res = cqe.result();
            let c = &mut cs[i];
            if res < 0 {
                return Err(io::Error::from_raw_os_error(-res));
            }
            if cqe.user_data() & 1 == SEND {
                c.sent += res as usize;
                if c.sent < size {
                    sqes.push(send_entry(c, i, &payload));
                }
                continue;
            }
            if res == 0 {
                return Err(io::Error::other("the server closed a connection"));
            }
            c.got += res as usize;
            if c.got < size {
                sqes.push(recv_entry(c, i));
                continue;
            }
            c.busy = false;
            in_flight -= 1;
            completed += 1;
            if requests.is_some() || now >= warm {
                counted += 1;
            }
            new_requests.push(i);
        }
    }
    debug_assert!(cs.iter().all(|c| !c.busy));
    let elapsed = match requests {
        Some(_) => start.elapsed(),
        None => deadline.max(Instant::now()) - warm,
    };
    Ok(Run {
        rps: counted as f64 / elapsed.as_secs_f64(),
        idle: idle.as_secs_f64() / elapsed.as_secs_f64(),
        requests: completed,
    })
}
