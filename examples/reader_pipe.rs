//! `add_reader` on a pipe: a level-triggered callback reads what another
//! thread writes, then removes itself (works on both backends; on the
//! proactor it is a one-shot io_uring `POLL_ADD` re-armed after each call).
//!
//! `cargo run --example reader_pipe`

mod common;

use std::os::fd::AsRawFd;
use std::time::Duration;

use log::info;
use nix::fcntl::OFlag;
use ringloop::prelude::*;

fn main() -> ringloop::Result<()> {
    common::init_logging();
    let lp = EventLoop::new()?;
    info!("backend: {}", lp.backend());
    let (r, w) =
        nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    let fd = r.as_raw_fd();
    let got = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let (g, l2) = (got.clone(), lp.clone());
    lp.add_reader(fd, move || {
        let mut buf = [0u8; 64];
        match nix::unistd::read(&r, &mut buf) {
            Ok(0) | Err(_) => {
                // EOF: the writer is gone.
                l2.remove_reader(fd);
                l2.stop();
            }
            Ok(n) => {
                info!(
                    "reader callback got {:?}",
                    String::from_utf8_lossy(&buf[..n])
                );
                g.borrow_mut().extend_from_slice(&buf[..n]);
            }
        }
    })?;
    let writer = std::thread::spawn(move || {
        for part in ["hello ", "from ", "another thread"] {
            std::thread::sleep(Duration::from_millis(20));
            nix::unistd::write(&w, part.as_bytes()).expect("write");
        }
        // Dropping the write end gives the reader its EOF.
    });
    let l3 = lp.clone();
    let watchdog = lp.call_later(Duration::from_secs(10), move || l3.stop())?;
    lp.run_forever()?;
    watchdog.cancel();
    writer.join().expect("writer thread");
    assert_eq!(&*got.borrow(), b"hello from another thread");
    println!(
        "reader_pipe ({}): read {:?}; driver: {:?}",
        lp.backend(),
        String::from_utf8_lossy(&got.borrow()),
        lp.driver_stats()
    );
    lp.close()
}
