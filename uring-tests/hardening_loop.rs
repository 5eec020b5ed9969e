//! Regression tests for issue 11's loop-level items 6 and 7, on both
//! backends: `add_reader` on a just-reused fd number fires, and what is
//! written or closed while the loop is stopped goes out in the next run's
//! first turns. Also the default of item 14 (a panicking callback is
//! reported and the loop goes on). See `hardening.rs` for the others.

mod common;
#[path = "hardening_support.rs"]
mod support;

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use common::{run_until, turns};
use ringloop::prelude::*;
use ringloop::{BaseProtocol, Protocol, Transport};
use support::{LIMIT, Watchdog};

// ---------------------------------------------------------------------------
// Item 6: add_reader on a just-reused fd number must fire. Every test in
// this file is `serial`: the item 6 tests put a new file on a number they
// just closed (dup3), which a test running in parallel could have taken.

fn nonblocking_pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

/// A new pipe whose read end has the number `fd` (which must be free).
fn pipe_at(fd: RawFd) -> (OwnedFd, OwnedFd) {
    let (r, w) = nonblocking_pipe();
    (common::fds::move_to_fd(r, fd), w)
}

/// Drains a non-blocking pipe into `into`.
fn drain_pipe(fd: &OwnedFd, into: &RefCell<Vec<u8>>) {
    let mut b = [0u8; 64];
    while let Ok(n @ 1..) = nix::unistd::read(fd, &mut b) {
        into.borrow_mut().extend_from_slice(&b[..n]);
    }
}

/// The new reader fired and read `new` within a bounded number of turns.
fn assert_new_reader_fires(
    lp: &EventLoop,
    w2: &OwnedFd,
    fired: &Cell<usize>,
    got: &RefCell<Vec<u8>>,
    how: &str,
) {
    // The new reader is armed and waits (nothing to read yet).
    turns(lp, 3);
    assert_eq!(fired.get(), 0, "{how}: nothing was written yet");
    nix::unistd::write(w2, b"new").unwrap();
    let ok = run_until(lp, Duration::from_secs(3), || fired.get() > 0);
    assert!(
        ok,
        "issue 11 item 6 ({how}): add_reader on the reused fd number never fired after a write"
    );
    assert_eq!(&*got.borrow(), b"new");
}

both_backends! {
    serial fn add_reader_on_a_reused_fd_number_fires_when_swapped_in_its_own_callback(lp) {
        // The old fd's reader fires; in that callback it removes itself,
        // closes the fd, opens a new file on the same number and adds a
        // reader for it, all before the next turn.
        let (r1, w1) = nonblocking_pipe();
        let fd = r1.as_raw_fd();
        let old = Rc::new(RefCell::new(Some(r1)));
        let fired = Rc::new(Cell::new(0));
        let got = Rc::new(RefCell::new(Vec::new()));
        let new_w: Rc<RefCell<Option<OwnedFd>>> = Rc::new(RefCell::new(None));
        let (o, f, g, nw) = (old.clone(), fired.clone(), got.clone(), new_w.clone());
        lp.add_reader(fd, move || {
            if o.borrow().is_none() {
                return;
            }
            let lp = get_running_loop().unwrap();
            assert!(lp.remove_reader(fd));
            drop(o.borrow_mut().take()); // close(fd)
            let (r2, w2) = pipe_at(fd);
            *nw.borrow_mut() = Some(w2);
            let (f, g) = (f.clone(), g.clone());
            lp.add_reader(fd, move || {
                f.set(f.get() + 1);
                drain_pipe(&r2, &g);
            })
            .unwrap();
        })
        .unwrap();
        turns(lp, 2);
        nix::unistd::write(&w1, b"old").unwrap();
        assert!(
            run_until(lp, Duration::from_secs(3), || new_w.borrow().is_some()),
            "the old reader fired"
        );
        let w2 = new_w.borrow_mut().take().unwrap();
        assert_new_reader_fires(lp, &w2, &fired, &got, "swapped inside the old reader's callback");
        assert!(lp.remove_reader(fd));
        turns(lp, 2);
        drop((w1, w2));
    }
}

both_backends! {
    serial fn add_reader_on_a_reused_fd_number_fires_when_swapped_in_another_callback(lp) {
        // The old reader has fired once and is armed again; one plain
        // callback removes it, closes the fd, reopens the number and adds
        // a reader, all before the next turn.
        let (r1, w1) = nonblocking_pipe();
        let fd = r1.as_raw_fd();
        let old = Rc::new(RefCell::new(Some(r1)));
        let old_got = Rc::new(RefCell::new(Vec::new()));
        let (o, og) = (old.clone(), old_got.clone());
        lp.add_reader(fd, move || {
            if let Some(r) = &*o.borrow() {
                drain_pipe(r, &og);
            }
        })
        .unwrap();
        turns(lp, 2);
        nix::unistd::write(&w1, b"old").unwrap();
        assert!(run_until(lp, Duration::from_secs(3), || old_got.borrow().len() == 3));
        turns(lp, 3); // re-armed
        let fired = Rc::new(Cell::new(0));
        let got = Rc::new(RefCell::new(Vec::new()));
        let new_w: Rc<RefCell<Option<OwnedFd>>> = Rc::new(RefCell::new(None));
        let (f, g, nw) = (fired.clone(), got.clone(), new_w.clone());
        lp.call_soon(move || {
            let lp = get_running_loop().unwrap();
            assert!(lp.remove_reader(fd));
            drop(old.borrow_mut().take());
            let (r2, w2) = pipe_at(fd);
            *nw.borrow_mut() = Some(w2);
            lp.add_reader(fd, move || {
                f.set(f.get() + 1);
                drain_pipe(&r2, &g);
            })
            .unwrap();
        })
        .unwrap();
        turns(lp, 1);
        let w2 = new_w.borrow_mut().take().unwrap();
        assert_new_reader_fires(lp, &w2, &fired, &got, "swapped in another callback");
        assert!(lp.remove_reader(fd));
        turns(lp, 2);
        drop((w1, w2));
    }
}

// ---------------------------------------------------------------------------
// Item 7: writes and close() made while the loop is stopped go out in the
// next run's first turns, with no timer to end the driver's wait.

/// Records what arrives; stops the loop when `stop_at` bytes are in, or at EOF.
#[derive(Default)]
struct StopOnData {
    data: Vec<u8>,
    eofs: usize,
    stop_at: Option<usize>,
    stop_at_eofs: Option<usize>,
}

struct StopOnDataProto(Rc<RefCell<StopOnData>>);

impl BaseProtocol for StopOnDataProto {
    fn eof_received(&mut self) -> bool {
        let mut s = self.0.borrow_mut();
        s.eofs += 1;
        if s.stop_at_eofs.is_some_and(|n| s.eofs >= n) {
            get_running_loop().unwrap().stop();
        }
        false
    }
}

impl Protocol for StopOnDataProto {
    fn data_received(&mut self, d: &[u8]) {
        let mut s = self.0.borrow_mut();
        s.data.extend_from_slice(d);
        if s.stop_at.is_some_and(|n| s.data.len() >= n) {
            get_running_loop().unwrap().stop();
        }
    }
}

/// Runs the loop with no timer until the server stops it (or the watchdog
/// does, after a generous bound); returns (turns taken, watchdog fired).
fn run_without_timers(lp: &EventLoop) -> (u64, bool) {
    assert_eq!(
        lp.scheduled_timers(),
        0,
        "no timer may end the driver's wait"
    );
    let turns0 = lp.driver_stats().turns;
    let dog = Watchdog::new(lp, Duration::from_secs(5));
    lp.run_forever().unwrap();
    let fired = dog.fired();
    drop(dog);
    (lp.driver_stats().turns - turns0, fired)
}

/// A server that records what arrives, and `conns` connections to it that
/// have delivered "early " (so all are set up and reading); the loop is
/// stopped.
fn connected_and_stopped(
    lp: &EventLoop,
    conns: usize,
) -> (ringloop::Server, Vec<Transport>, Rc<RefCell<StopOnData>>) {
    let server_side = Rc::new(RefCell::new(StopOnData::default()));
    let s2 = server_side.clone();
    let (server, ts) = common::run_bounded(lp, LIMIT, async move {
        let lp = get_running_loop().unwrap();
        let s3 = s2.clone();
        let server = lp
            .create_server(move || StopOnDataProto(s3.clone()), "127.0.0.1", 0)
            .await
            .unwrap();
        let port = server.sockets()[0].as_socket().unwrap().port();
        let mut ts = Vec::new();
        for _ in 0..conns {
            let t = lp
                .create_connection(|| StopOnDataProto(Default::default()), "127.0.0.1", port)
                .await
                .unwrap();
            t.write(&b"early "[..]).unwrap();
            ts.push(t);
        }
        while s2.borrow().data.len() < 6 * conns {
            ringloop::sleep(Duration::from_millis(1)).await.unwrap();
        }
        (server, ts)
    });
    // (The run's cancelled guard timer leaves the heap in these turns.)
    turns(lp, 2);
    (server, ts, server_side)
}

both_backends! {
    serial fn a_write_made_while_the_loop_is_stopped_goes_out_at_once(lp) {
        let (server, ts, server_side) = connected_and_stopped(lp, 1);
        let t = &ts[0];
        server_side.borrow_mut().stop_at = Some(b"early late".len());
        t.write(&b"late"[..]).unwrap();
        let (n, fired) = run_without_timers(lp);
        assert!(
            !fired && server_side.borrow().data == b"early late",
            "issue 11 item 7: a write made while the loop was stopped had not arrived when the \
             watchdog stopped the loop ({n} turns; the server got {:?})",
            String::from_utf8_lossy(&server_side.borrow().data)
        );
        assert!(n <= 8, "issue 11 item 7: the write took {n} turns to arrive");
        t.abort();
        server.close();
        turns(lp, 3);
    }
}

both_backends! {
    serial fn a_close_made_while_the_loop_is_stopped_goes_out_at_once(lp) {
        // Two connections: one reading (its receive is in flight) and one
        // paused (nothing in flight: no completion can end the wait).
        let (server, ts, server_side) = connected_and_stopped(lp, 2);
        ts[1].pause_reading();
        turns(lp, 2);
        for (k, (i, how)) in [(1, "paused"), (0, "reading")].into_iter().enumerate() {
            server_side.borrow_mut().stop_at_eofs = Some(k + 1);
            ts[i].close();
            let (n, fired) = run_without_timers(lp);
            let eofs = server_side.borrow().eofs;
            assert!(
                !fired && eofs == k + 1,
                "issue 11 item 7: close() of a {how} transport made while the loop was stopped \
                 had not reached the peer when the watchdog stopped the loop ({n} turns)"
            );
            assert!(n <= 8, "issue 11 item 7: the close took {n} turns to reach the peer");
        }
        server.close();
        turns(lp, 3);
    }
}

// ---------------------------------------------------------------------------
// Item 14 (default behaviour only): a panicking callback is reported to the
// exception handler and the loop goes on, as asyncio does with exceptions.
// A loop option to stop and return the panic instead is to come; the
// default must stay this.

both_backends! {
    serial fn a_panicking_callback_is_reported_and_the_loop_goes_on(lp) {
        let reported = Rc::new(RefCell::new(Vec::new()));
        let r2 = reported.clone();
        lp.set_exception_handler(Some(Rc::new(move |_lp: &EventLoop, ctx: &ringloop::ExceptionContext| {
            r2.borrow_mut().push(format!("{} {:?}", ctx.message, ctx.exception));
        })));
        let after = Rc::new(Cell::new(false));
        let a2 = after.clone();
        lp.call_soon(|| panic!("boom (hardening test: the panic is expected)")).unwrap();
        lp.call_soon(move || a2.set(true)).unwrap();
        let (r, w) = ringloop::pipe().unwrap();
        // Some I/O, so the test also proves the backend did the work.
        nix::unistd::write(&w, b"x").unwrap();
        let got = common::run_bounded(lp, LIMIT, async move {
            let (n, buf) = get_running_loop().unwrap().pipe_read_into(&r, Vec::with_capacity(8)).await;
            n.unwrap();
            buf
        });
        assert_eq!(got, b"x");
        assert!(after.get(), "the callback after the panicking one ran");
        let reported = reported.borrow();
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert!(reported[0].contains("boom"), "{reported:?}");
        lp.set_exception_handler(None);
    }
}
