//! `sock_sendfile` (zero-copy `sendfile(2)`) against read + write (the
//! file read into a buffer on the loop thread, sent with `sock_sendall`:
//! what the fallback does) of a large file over loopback, on both
//! backends. A thread on the other end reads and discards. Reported:
//! throughput and the loop thread's CPU time per GiB (user + system), the
//! medians of the rounds, interleaved.
//!
//! `cargo bench --bench sendfile` (`-- --quick` for CI: 32 MiB, one round).
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use ringloop::prelude::*;

const BLOCK: usize = 256 * 1024;

/// The loop thread's CPU time so far (user + system).
fn thread_cpu() -> Duration {
    // SAFETY: zeroed rusage is valid output storage for getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD with valid storage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn make_file(len: u64) -> File {
    let path = std::env::temp_dir().join(format!("ringloop-bench-sendfile-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let chunk: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut at = 0;
    while at < len {
        let n = (len - at).min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).unwrap();
        at += n as u64;
    }
    f.sync_all().unwrap();
    f
}

/// One transfer of `file` (its whole length): (seconds, loop-thread CPU).
fn round(backend: Backend, zero_copy: bool, file: &File, len: u64) -> (f64, Duration) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 {
                break;
            }
            total += k as u64;
        }
        total
    });
    let lp = EventLoop::with_backend(backend).unwrap();
    let mut f = file.try_clone().unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let lp2 = lp.clone();
    let (dt, cpu) = lp
        .run_until_complete(async move {
            let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
            let s = Socket::tcp_for(&addr).unwrap();
            lp2.sock_connect(&s, &addr.into()).await.unwrap();
            let (t0, c0) = (Instant::now(), thread_cpu());
            if zero_copy {
                let n = lp2.sock_sendfile(&s, &f, 0, None, false).await.unwrap();
                assert_eq!(n, len);
            } else {
                let mut sent = 0;
                loop {
                    let mut buf = vec![0u8; BLOCK];
                    let k = f.read(&mut buf).unwrap();
                    if k == 0 {
                        break;
                    }
                    buf.truncate(k);
                    lp2.sock_sendall(&s, buf).await.unwrap();
                    sent += k as u64;
                }
                assert_eq!(sent, len);
            }
            (t0.elapsed().as_secs_f64(), thread_cpu() - c0)
        })
        .unwrap();
    lp.close().unwrap();
    assert_eq!(reader.join().unwrap(), len);
    (dt, cpu)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (len, rounds) = if quick {
        (32u64 << 20, 1)
    } else {
        (512u64 << 20, 7)
    };
    let file = make_file(len);
    let gib = len as f64 / (1u64 << 30) as f64;
    println!(
        "sendfile vs read+write of a {} MiB file over loopback, {rounds} rounds, medians",
        len >> 20
    );
    let mut backends = vec![Backend::Selector];
    if ringloop::proactor_available().is_ok() {
        backends.insert(0, Backend::Proactor);
    } else {
        println!("(io_uring unavailable here: the proactor rows are skipped)");
    }
    for backend in backends {
        // Warm-up (page cache, TCP autotuning), then interleaved rounds.
        round(backend, true, &file, len);
        round(backend, false, &file, len);
        let mut res: [(Vec<f64>, Vec<f64>); 2] = Default::default();
        for _ in 0..rounds {
            for (i, zc) in [true, false].into_iter().enumerate() {
                let (dt, cpu) = round(backend, zc, &file, len);
                res[i].0.push(len as f64 / dt / 1e9);
                res[i].1.push(cpu.as_secs_f64() / gib);
            }
        }
        let [(mut zc_gbs, mut zc_cpu), (mut rw_gbs, mut rw_cpu)] = res;
        let (zg, zc) = (median(&mut zc_gbs), median(&mut zc_cpu));
        let (rg, rc) = (median(&mut rw_gbs), median(&mut rw_cpu));
        println!(
            "{backend:>18}: sendfile {zg:5.2} GB/s, {:4.0} ms CPU/GiB | read+write {rg:5.2} GB/s, {:4.0} ms CPU/GiB | sendfile/read+write: {:.2}x throughput, {:.2}x CPU",
            zc * 1e3,
            rc * 1e3,
            zg / rg,
            zc / rc
        );
    }
}
