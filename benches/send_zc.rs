//! Why ringloop's writer uses SEND, not SEND_ZC: SEND vs SEND_ZC throughput
//! over loopback on this machine, one message in flight at a time (waiting
//! for SEND_ZC's notification), 5 rounds each, medians.
//!
//! `cargo bench --bench send_zc` (`-- --quick` for CI).
use io_uring::{IoUring, cqueue, opcode, types};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::time::Instant;

fn run(zc: bool, size: usize, n: usize) -> f64 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut s, _) = l.accept().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 {
                break;
            }
            total += k;
        }
        total
    });
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(64)
        .unwrap();
    let data = vec![7u8; size];
    let t0 = Instant::now();
    for _ in 0..n {
        let mut off = 0;
        while off < size {
            let ptr = data[off..].as_ptr();
            let len = (size - off) as u32;
            let e = if zc {
                opcode::SendZc::new(types::Fd(c.as_raw_fd()), ptr, len).build()
            } else {
                opcode::Send::new(types::Fd(c.as_raw_fd()), ptr, len).build()
            };
            // SAFETY: `data` outlives the op: this loop waits for its final
            // completion (and, for SEND_ZC, the notification) before going on.
            unsafe { ring.submission().push(&e.user_data(1)).unwrap() };
            let mut got_res = None;
            let mut notif_pending = zc;
            while got_res.is_none() || notif_pending {
                ring.submit_and_wait(1).unwrap();
                for cqe in ring.completion() {
                    if cqueue::notif(cqe.flags()) {
                        notif_pending = false;
                        continue;
                    }
                    got_res = Some(cqe.result());
                    if zc && !cqueue::more(cqe.flags()) {
                        notif_pending = false;
                    }
                }
            }
            let r = got_res.unwrap();
            assert!(r > 0, "send failed: {r}");
            off += r as usize;
        }
    }
    let dt = t0.elapsed();
    drop(c);
    let total = reader.join().unwrap();
    assert_eq!(total, size * n);
    (size * n) as f64 / dt.as_secs_f64() / 1e9
}

fn main() {
    // RUST_LOG drives the logger (info by default): RUST_LOG=ringloop=debug
    // shows the loop's own messages.
    let _ = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .parse_env(env_logger::Env::default())
        .try_init();
    let quick = std::env::args().any(|a| a == "--quick");
    let (total, rounds) = if quick { (8 << 20, 1) } else { (256 << 20, 5) };
    for size in [16 * 1024, 100 * 1024, 1 << 20] {
        let n = total / size;
        let mut a = Vec::new();
        let mut b = Vec::new();
        for _ in 0..rounds {
            a.push(run(false, size, n));
            b.push(run(true, size, n));
        }
        a.sort_by(|x, y| x.partial_cmp(y).unwrap());
        b.sort_by(|x, y| x.partial_cmp(y).unwrap());
        let (ma, mb) = (a[a.len() / 2], b[b.len() / 2]);
        assert!(ma > 0.0 && mb > 0.0);
        println!(
            "{size:>8} B: SEND {ma:.2} GB/s, SEND_ZC {mb:.2} GB/s (medians of {rounds}), zc/send = {:.2}",
            mb / ma
        );
    }
}
