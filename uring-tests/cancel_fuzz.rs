//! Randomized cancellation fuzz (DESIGN.md invariants 2 and 3; issue 11,
//! "Proof that stays"), on both backends.
//!
//! Every test is one scenario family, run as a sequence of seeded rounds.
//! Each round gets a fresh loop (poison checking on), builds its sockets,
//! pipes and tasks from the round's seed, and drops operations at random
//! points: before their first poll, after submission while in flight, after
//! they completed but before anyone took the result, by a deadline, or by
//! cancelling the task that runs them; fds are closed under operations and
//! whole loops are closed with operations in flight. The checks:
//!
//! - byte streams (a keyed, position-dependent pattern) arrive as an exact
//!   prefix of what was sent, and after a drain as all of it: a cancelled
//!   read's data is never lost, duplicated or reordered, never stranded in
//!   the per-fd stash while a newer read waits (a stall is reported as
//!   "sent N got M" with the stash's contents, not as a hung test);
//! - datagrams arrive intact, once, in order, none lost;
//! - accepted and connected sockets are either handed over or closed;
//! - no fd leaks (`/proc/self/fd` counted before the round's loop exists and
//!   after it is dropped; the tests are `serial`), nothing stays in flight,
//!   nothing is leaked at close, poisoned buffers are untouched;
//! - nothing panics: not out of `run_until_complete` or `close`, not in a
//!   task, not in a future's destructor (the loop logs those).
//!
//! A failing round panics with its seed and the command that replays it.
//!
//! Environment:
//!
//! - `RINGLOOP_FUZZ_SEED=<seed>` (decimal or `0x…`): run only the round with
//!   this seed (in each test that runs; name one test to replay it). The
//!   operations replay exactly; kernel timing does not, so a race may need
//!   a few runs.
//! - `RINGLOOP_FUZZ_LONG=1`: the long form, about 100,000 operations per
//!   backend over the whole file (the default short form does a few
//!   thousand and takes seconds).
//! - `RINGLOOP_FUZZ_OPS=<n>`: operations per test and backend (overrides both).
//! - `RINGLOOP_FUZZ_BASE=<n>`: the base the round seeds derive from (the
//!   default is fixed, so CI runs the same rounds; change it to explore).
//! - `RINGLOOP_FUZZ_SETTLE=1`: a diagnostic, weaker form: after each cut
//!   read, wait for the cancelled read to finish in the kernel before the
//!   next one. The driver's read gate gives that order by itself now; the
//!   mode stays to tell a gate bug from a checker bug. Never for CI.
//!
//! An "operation" is one fuzzed call (a receive, send, read, write, accept,
//! connect or sleep) whether it was cut or not; the many-ops scenario counts
//! each op it leaves in flight.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::seeds::{env_flag, env_u64, splitmix};
use common::{Rng, panic_text, turns};
use ringloop::prelude::*;
use ringloop::{Acceptor, Pipe};

/// No progress for this long is a failure ("stalled: sent N got M").
const STALL: Duration = Duration::from_secs(3);
/// Backstop for one round's async body (the loop's own timer stops it).
const ROUND_LIMIT: Duration = Duration::from_secs(30);
/// Last resort for a round that hangs outside the loop's control: abort.
const WATCHDOG: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------- configuration

struct Config {
    base: u64,
    ops: usize,
    replay: Option<u64>,
}

impl Config {
    fn from_env(short: usize, long: usize) -> Config {
        let long_form = env_flag("RINGLOOP_FUZZ_LONG");
        let ops = env_u64("RINGLOOP_FUZZ_OPS")
            .map(|n| n as usize)
            .unwrap_or(if long_form { long } else { short });
        Config {
            base: env_u64("RINGLOOP_FUZZ_BASE").unwrap_or(0x5eed_cafe_f00d_0011),
            ops,
            replay: env_u64("RINGLOOP_FUZZ_SEED"),
        }
    }
}

fn round_seed(base: u64, name: &str, round: u64) -> u64 {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    splitmix(base ^ h ^ splitmix(round))
}

// ---------------------------------------------------------------- op counting, rounds

thread_local! {
    static OPS: Cell<usize> = const { Cell::new(0) };
}

fn count_ops(n: usize) {
    OPS.with(|c| c.set(c.get() + n));
}

fn ops_so_far() -> usize {
    OPS.with(Cell::get)
}

thread_local! {
    /// The first panic of the round, in any of its tasks: the root cause
    /// when one failure brings others down with it.
    static FIRST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A task's future that records its panic in [`FIRST`] before the loop
/// catches it.
struct Guarded<F>(Pin<Box<F>>);

impl<F: Future> Future for Guarded<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
            Ok(p) => p,
            Err(p) => {
                let msg = panic_text(&*p);
                FIRST.with(|f| {
                    f.borrow_mut().get_or_insert(msg);
                });
                std::panic::resume_unwind(p)
            }
        }
    }
}

/// `create_task`, with the panic recorded (see [`Guarded`]).
fn spawn<F>(lp: &EventLoop, fut: F) -> Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    lp.create_task(Guarded(Box::pin(fut)))
}

/// Aborts the process if a round hangs where no loop timer can reach it.
struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

impl Watchdog {
    fn start(label: String) -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(WATCHDOG) {
                eprintln!("cancel_fuzz watchdog: {label} hung for {WATCHDOG:?}; aborting");
                std::process::abort();
            }
        });
        Watchdog(Some(tx))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

type Round = fn(&EventLoop, &mut Rng, u64);

/// Runs the family's rounds (or the one `RINGLOOP_FUZZ_SEED` names), then
/// checks that `lp` (the macro's loop, untouched by the rounds) still works.
fn fuzz(lp: &EventLoop, name: &'static str, short: usize, long: usize, round: Round) {
    common::install_logger();
    let cfg = Config::from_env(short, long);
    let backend = lp.backend();
    let t0 = Instant::now();
    let ops0 = ops_so_far();
    let mut rounds = 0u64;
    match cfg.replay {
        Some(seed) => {
            run_round(name, backend, seed, round);
            rounds = 1;
        }
        None => {
            while ops_so_far() - ops0 < cfg.ops && rounds < cfg.ops as u64 {
                // Even rounds get even seeds (a family may use the parity:
                // many_ops_in_flight_at_close puts 5,000 ops in flight then).
                let seed = (round_seed(cfg.base, name, rounds) & !1) | (rounds & 1);
                run_round(name, backend, seed, round);
                rounds += 1;
            }
        }
    }
    eprintln!(
        "cancel_fuzz {name} on {backend}: {rounds} rounds, {} ops, {:.2?}",
        ops_so_far() - ops0,
        t0.elapsed()
    );
    sanity(lp);
}

/// One round on a fresh loop; a failure names the seed.
fn run_round(name: &str, backend: Backend, seed: u64, round: Round) {
    let which = match backend {
        Backend::Proactor => "proactor",
        Backend::Selector => "selector",
    };
    let label = format!("{name} on the {which} at seed {seed:#x}");
    let replay =
        format!("RINGLOOP_FUZZ_SEED={seed:#x} cargo test --test cancel_fuzz {name}::{which}");
    let _dog = Watchdog::start(format!("{label} (replay: {replay})"));
    let base_fds = common::open_fds();
    let lp = common::new_loop(backend);
    lp.enable_poison_check();
    let exceptions: Rc<RefCell<Vec<String>>> = Rc::default();
    let e2 = exceptions.clone();
    lp.set_exception_handler(Some(Rc::new(
        move |_lp: &EventLoop, ctx: &ringloop::ExceptionContext| {
            // A loop closed with tasks pending says so; anything else is a failure.
            if ctx.message != "Task was destroyed but it is pending!" {
                e2.borrow_mut().push(format!(
                    "{}: {:?} (task {:?})",
                    ctx.message, ctx.exception, ctx.task
                ));
            }
        },
    )));
    let log0 = common::log_lines().len();
    FIRST.with(|f| f.borrow_mut().take());
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut rng = Rng::seeded(seed);
        round(&lp, &mut rng, seed);
        finish_loop(&lp, &exceptions);
        let bad: Vec<String> = common::log_lines()[log0..]
            .iter()
            .filter(|l| l.contains("panicked") || l.starts_with("ERROR"))
            .cloned()
            .collect();
        assert!(bad.is_empty(), "the loop logged errors: {bad:#?}");
    }));
    match r {
        Ok(()) => {
            drop(lp);
            let now = common::open_fds();
            assert_eq!(
                now, base_fds,
                "cancel_fuzz: {label}: fd leak: {base_fds} fds open before the round's loop, {now} after it was dropped\n  replay: {replay}"
            );
        }
        Err(p) => {
            // Whatever the kernel may still write into stays allocated.
            std::mem::forget(lp);
            let last = panic_text(&*p);
            let msg = match FIRST.with(|f| f.borrow_mut().take()) {
                Some(first) if !last.contains(&first) => {
                    format!("{first}\n  (which then made the round fail with: {last})")
                }
                _ => last,
            };
            panic!("cancel_fuzz: {label} failed: {msg}\n  replay: {replay}");
        }
    }
}

/// The checks every round ends with; closes the loop.
fn finish_loop(lp: &EventLoop, exceptions: &RefCell<Vec<String>>) {
    if !lp.is_closed() {
        common::drain(lp, STALL);
    }
    let ex = exceptions.borrow().clone();
    assert!(ex.is_empty(), "exception handler was called: {ex:#?}");
    lp.check_poison()
        .expect("a poisoned (released) buffer was written");
    lp.close().expect("close");
    let st = lp.driver_stats();
    assert_eq!(st.leaked_at_close, 0, "ops leaked at close: {st:?}");
    assert_eq!(lp.ops_in_flight(), 0, "ops in flight after close");
    lp.check_poison()
        .expect("a poisoned buffer was written during close");
}

/// The macro's own loop still works after the rounds (and proves its backend).
fn sanity(lp: &EventLoop) {
    let (a, b) = UnixStream::pair().unwrap();
    let (a, b) = (Socket::from(a), Socket::from(b));
    let got = common::run_bounded(lp, Duration::from_secs(5), async move {
        let lp = get_running_loop().unwrap();
        lp.sock_sendall(&a, b"still works".to_vec()).await.unwrap();
        lp.sock_recv(&b, 64).await.unwrap()
    });
    assert_eq!(got, b"still works");
}

// ---------------------------------------------------------------- cutting futures

/// Where an operation's future is dropped.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Awaited to the end.
    Never,
    /// Dropped before its first poll: it must have no effect at all.
    BeforePoll,
    /// Polled `polls` times (one per loop turn, so it is submitted and in
    /// flight), then left alone for `idle` turns (it may complete, unseen),
    /// then dropped.
    After { polls: u32, idle: u32 },
    /// Run under `wait_for` with this deadline.
    Deadline(Duration),
}

enum Outcome<T> {
    Done(T),
    /// Dropped before it ran: nothing happened.
    NotStarted,
    /// Dropped in flight (or finished but unseen): it may have taken effect.
    Cut,
}

fn pick_cut(rng: &mut Rng, pct: u64) -> Cut {
    if !rng.chance(pct) {
        return Cut::Never;
    }
    match rng.below(10) {
        0 => Cut::BeforePoll,
        1..=6 => Cut::After {
            polls: rng.between(1, 3) as u32,
            idle: if rng.chance(40) {
                rng.between(1, 3) as u32
            } else {
                0
            },
        },
        _ => Cut::Deadline(Duration::from_micros(rng.below(400))),
    }
}

struct Cutter<F: Future> {
    fut: Option<Pin<Box<F>>>,
    polls: u32,
    idle: u32,
}

impl<F: Future> Future for Cutter<F> {
    type Output = Option<F::Output>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(f) = this.fut.as_mut() else {
            return Poll::Ready(None);
        };
        if this.polls > 0 {
            this.polls -= 1;
            if let Poll::Ready(v) = f.as_mut().poll(cx) {
                this.fut = None;
                return Poll::Ready(Some(v));
            }
        } else if this.idle > 0 {
            this.idle -= 1;
        }
        if this.polls == 0 && this.idle == 0 {
            this.fut = None;
            return Poll::Ready(None);
        }
        // Come back next turn (the loop does not block meanwhile).
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Runs `f` and drops it where `cut` says; counts one operation.
async fn run_cut<F: Future>(cut: Cut, f: F) -> Outcome<F::Output> {
    count_ops(1);
    match cut {
        Cut::Never => Outcome::Done(f.await),
        Cut::BeforePoll => {
            drop(f);
            Outcome::NotStarted
        }
        Cut::After { polls, idle } => match (Cutter {
            fut: Some(Box::pin(f)),
            polls,
            idle,
        })
        .await
        {
            Some(v) => Outcome::Done(v),
            None => Outcome::Cut,
        },
        Cut::Deadline(d) => match wait_for(f, d).await {
            Ok(v) => Outcome::Done(v),
            Err(Error::Timeout) => Outcome::Cut,
            Err(e) => panic!("wait_for failed: {e}"),
        },
    }
}

/// A random short pause: nothing, a few turns, or a short sleep (itself
/// sometimes cut).
async fn pause(rng: &mut Rng) {
    match rng.below(5) {
        0 => {}
        1 => {
            count_ops(1);
            sleep(Duration::ZERO).await.unwrap();
        }
        2 => {
            for _ in 0..rng.between(1, 4) {
                count_ops(1);
                sleep(Duration::ZERO).await.unwrap();
            }
        }
        _ => {
            let cut = pick_cut(rng, 30);
            let d = Duration::from_micros(rng.between(1, 300));
            if let Outcome::Done(r) = run_cut(cut, sleep(d)).await {
                r.unwrap();
            }
        }
    }
}

/// Awaits `t` for at most `limit`: `None` if it was cancelled; a panic in
/// it is re-raised here (with its own message); a timeout panics with
/// `stalled()`.
async fn join<T: 'static>(
    t: Task<T>,
    limit: Duration,
    stalled: impl FnOnce() -> String,
) -> Option<T> {
    match wait_for(t, limit).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(Error::Cancelled(_))) => None,
        Ok(Err(Error::Panic(msg))) => panic!("{msg}"),
        Ok(Err(e)) => panic!("task failed: {e}"),
        Err(Error::Timeout) => panic!("{}", stalled()),
        Err(e) => panic!("wait_for: {e}"),
    }
}

/// Runs a round's async body on `lp`, with the loop's own timer as a
/// backstop: a panic in it is re-raised with its message.
fn block<F>(lp: &EventLoop, fut: F) -> F::Output
where
    F: Future + 'static,
    F::Output: 'static,
{
    let l2 = lp.clone();
    let guard = lp.call_later(ROUND_LIMIT, move || l2.stop()).unwrap();
    let out = match lp.run_until_complete(fut) {
        Ok(v) => v,
        Err(Error::Panic(msg)) => panic!("{msg}"),
        Err(e) => panic!("round body did not finish within {ROUND_LIMIT:?}: {e}"),
    };
    guard.cancel();
    out
}

/// `close()`, which must neither fail nor panic, with ops in flight.
fn close_under_load(lp: &EventLoop) {
    let in_flight = lp.ops_in_flight();
    match catch_unwind(AssertUnwindSafe(|| lp.close())) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("close() with {in_flight} ops in flight failed: {e}"),
        Err(p) => panic!(
            "close() with {in_flight} ops in flight panicked (issue 11 item 3?): {}",
            panic_text(&*p)
        ),
    }
    let st = lp.driver_stats();
    assert_eq!(
        st.leaked_at_close, 0,
        "ops leaked at close ({in_flight} were in flight): {st:?}"
    );
    assert_eq!(
        lp.ops_in_flight(),
        0,
        "ops in flight after close ({in_flight} before)"
    );
}

// ---------------------------------------------------------------- byte streams

/// Byte `i` of stream `key`: position-dependent, so a lost, duplicated or
/// reordered chunk never lines up.
fn pattern(key: u64, start: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut i = start;
    let end = start + len as u64;
    while i < end {
        let word = splitmix(key.wrapping_add(i >> 3)).to_le_bytes();
        let from = (i & 7) as usize;
        let take = (8 - from).min((end - i) as usize);
        out.extend_from_slice(&word[from..from + take]);
        i += take as u64;
    }
    out
}

fn cap_for(rng: &mut Rng) -> usize {
    match rng.below(8) {
        0 => 1,
        1 => rng.between(2, 16) as usize,
        2 | 3 => rng.between(17, 512) as usize,
        4 | 5 => rng.between(513, 4096) as usize,
        6 => rng.between(4097, 16384) as usize,
        _ => 65536,
    }
}

/// One end of a byte stream.
#[derive(Clone)]
enum End {
    Sock(Rc<Socket>),
    Pipe(Rc<Pipe>),
}

impl End {
    fn fd(&self) -> RawFd {
        match self {
            End::Sock(s) => s.as_raw_fd(),
            End::Pipe(p) => p.as_raw_fd(),
        }
    }

    async fn read_vec(&self, lp: &EventLoop, cap: usize) -> ringloop::Result<Vec<u8>> {
        match self {
            End::Sock(s) => lp.sock_recv(s, cap).await,
            End::Pipe(p) => {
                let (r, buf) = lp.pipe_read_into(p, Vec::with_capacity(cap)).await;
                r.map(|_| buf)
            }
        }
    }

    async fn read_into(&self, lp: &EventLoop, buf: Vec<u8>) -> (ringloop::Result<usize>, Vec<u8>) {
        match self {
            End::Sock(s) => lp.sock_recv_into(s, buf).await,
            End::Pipe(p) => lp.pipe_read_into(p, buf).await,
        }
    }

    async fn write_all(&self, lp: &EventLoop, data: Vec<u8>) -> ringloop::Result<()> {
        match self {
            End::Sock(s) => lp.sock_sendall(s, data).await,
            End::Pipe(p) => lp.pipe_write_all(p, data).await,
        }
    }

    /// The writer is done: the reader should see EOF. A pipe's write end
    /// closes when its last holder (the writer) drops it.
    fn finish_writing(self) {
        if let End::Sock(s) = &self {
            let _ = s.shutdown(Shutdown::Write);
        }
    }
}

/// A connected pair of stream ends, (writer side, reader side).
fn stream_pair(rng: &mut Rng, pipe: bool, small_bufs: bool) -> (End, End, &'static str) {
    if pipe {
        let (r, w) = ringloop::pipe().unwrap();
        return (End::Pipe(Rc::new(w)), End::Pipe(Rc::new(r)), "pipe");
    }
    let (a, b, kind) = if rng.chance(50) {
        let (a, b) = UnixStream::pair().unwrap();
        (Socket::from(a), Socket::from(b), "unix")
    } else {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        a.set_nodelay(rng.chance(50)).unwrap();
        (Socket::from(a), Socket::from(b), "tcp")
    };
    if small_bufs {
        let n = rng.between(2048, 32768) as usize;
        a.with(|s| s.set_send_buffer_size(n)).unwrap();
        b.with(|s| s.set_recv_buffer_size(n)).unwrap();
    }
    (End::Sock(Rc::new(a)), End::Sock(Rc::new(b)), kind)
}

/// The bookkeeping of one stream: what was sent, what arrived.
struct Flow {
    name: String,
    key: u64,
    total: u64,
    /// Bytes whose send completed.
    sent: Cell<u64>,
    /// Bytes handed to sends that may have gone out (>= sent).
    attempted: Cell<u64>,
    writer_done: Cell<bool>,
    /// The stream ended early at a cut send (or a killed writer): how much
    /// of the last send went out is unknown.
    writer_cut: Cell<bool>,
    /// The reader's own socket was shut down: EOF may come early.
    shut: Cell<bool>,
    got: Cell<u64>,
    eof: Cell<bool>,
    reads: Cell<u64>,
    cut_reads: Cell<u64>,
    reader_fd: RawFd,
}

impl Flow {
    fn new(name: String, key: u64, total: u64, reader_fd: RawFd) -> Rc<Flow> {
        Rc::new(Flow {
            name,
            key,
            total,
            sent: Cell::new(0),
            attempted: Cell::new(0),
            writer_done: Cell::new(false),
            writer_cut: Cell::new(false),
            shut: Cell::new(false),
            got: Cell::new(0),
            eof: Cell::new(false),
            reads: Cell::new(0),
            cut_reads: Cell::new(0),
            reader_fd,
        })
    }

    fn state(&self) -> String {
        let lp = get_running_loop().ok();
        let stashed = lp.as_ref().map_or(0, |lp| lp.stashed_bytes(self.reader_fd));
        let in_flight = lp.as_ref().map_or(0, |lp| lp.ops_in_flight());
        format!(
            "{}: sent {} (attempted {}, of {}; writer {}) got {} (eof {}) after {} reads, {} cut; {} bytes stashed on the reader fd {}, {} ops in flight",
            self.name,
            self.sent.get(),
            self.attempted.get(),
            self.total,
            if self.writer_cut.get() {
                "cut"
            } else if self.writer_done.get() {
                "done"
            } else {
                "running"
            },
            self.got.get(),
            self.eof.get(),
            self.reads.get(),
            self.cut_reads.get(),
            stashed,
            self.reader_fd,
            in_flight,
        )
    }

    /// The reader got `data` (empty: EOF); checks it continues the stream.
    fn deliver(&self, data: &[u8]) {
        let at = self.got.get();
        if data.is_empty() {
            // The reader's fd is alive (the reader holds it): nothing may
            // wait in the stash once the kernel reports EOF.
            let lp = get_running_loop().unwrap();
            let stashed = lp.stashed_bytes(self.reader_fd);
            assert_eq!(
                stashed,
                0,
                "EOF while {stashed} bytes wait in the stash (stranded: issue 11 item 2): {}",
                self.state()
            );
            assert!(
                at >= self.sent.get() || self.shut.get(),
                "EOF with bytes lost: {}",
                self.state()
            );
            assert!(
                self.writer_done.get() || self.writer_cut.get() || self.shut.get(),
                "EOF before the writer finished: {}",
                self.state()
            );
            self.eof.set(true);
            return;
        }
        assert!(
            !self.eof.get(),
            "{} bytes after EOF: {}",
            data.len(),
            self.state()
        );
        let end = at + data.len() as u64;
        assert!(
            end <= self.attempted.get(),
            "received {} bytes more than were ever sent (duplicated): {}",
            end - self.attempted.get(),
            self.state()
        );
        let want = pattern(self.key, at, data.len());
        if let Some(i) = want.iter().zip(data).position(|(a, b)| a != b) {
            // Where did the wrong bytes come from? (Another offset of this
            // stream: later = something before them was skipped or is
            // delivered late; earlier = duplicated.)
            let probe = &data[i..data.len().min(i + 16)];
            let from = if probe.len() < 6 {
                "too few to place".to_string()
            } else {
                let lo = at.saturating_sub(1 << 20);
                match (lo..self.attempted.get())
                    .find(|&o| pattern(self.key, o, probe.len()) == probe)
                {
                    Some(o) => format!("they belong at stream offset {o}"),
                    None => "they are not from this stream".to_string(),
                }
            };
            panic!(
                "stream bytes lost, duplicated or reordered (issue 11 item 2: a cancelled read's late data handed out after newer data?): a {}-byte read at offset {at} is wrong from offset {} on (expected {:02x?}, got {:02x?}; {from}): {}",
                data.len(),
                at + i as u64,
                &want[i..want.len().min(i + 8)],
                &data[i..data.len().min(i + 8)],
                self.state()
            );
        }
        self.got.set(end);
    }

    /// After the reader saw EOF: everything sent arrived, nothing more.
    fn check_complete(&self) {
        assert!(self.eof.get(), "no EOF: {}", self.state());
        if self.shut.get() {
            return;
        }
        if self.writer_cut.get() {
            assert!(
                self.sent.get() <= self.got.get() && self.got.get() <= self.attempted.get(),
                "{}",
                self.state()
            );
        } else {
            assert_eq!(self.got.get(), self.total, "{}", self.state());
        }
    }
}

/// One read (a random kind and size), cut or not; delivers what it got.
/// `RINGLOOP_FUZZ_SETTLE=1` (a diagnostic, weaker form): after each cut
/// or killed read, wait 2 ms, so the cancelled read's final completion
/// comes before the next read is issued (what the driver's read gate
/// ensures by itself: a failure only without this mode points at the gate).
async fn settle() {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| env_flag("RINGLOOP_FUZZ_SETTLE")) {
        sleep(Duration::from_millis(2)).await.unwrap();
    }
}

async fn one_read(lp: &EventLoop, end: &End, flow: &Flow, rng: &mut Rng, cut_pct: u64) {
    let cap = cap_for(rng);
    let cut = pick_cut(rng, cut_pct);
    flow.reads.set(flow.reads.get() + 1);
    // A TCP socket shut down for reading resets the connection when more
    // data comes: after a shutdown, that is an EOF.
    let reset_is_eof =
        |e: &Error| flow.shut.get() && e.io_kind() == Some(std::io::ErrorKind::ConnectionReset);
    let fail = |e: Error| -> ! { panic!("read failed: {e}: {}", flow.state()) };
    if rng.chance(50) {
        match run_cut(cut, end.read_vec(lp, cap)).await {
            Outcome::Done(Err(e)) if reset_is_eof(&e) => flow.deliver(&[]),
            Outcome::Done(r) => flow.deliver(&r.unwrap_or_else(|e| fail(e))),
            _ => {
                flow.cut_reads.set(flow.cut_reads.get() + 1);
                settle().await
            }
        }
    } else {
        // Into a buffer that already holds a prefix: only the spare
        // capacity may be written, whether by the kernel or the stash.
        let pre = if rng.chance(50) {
            0
        } else {
            rng.between(1, 32) as usize
        };
        let mut buf = Vec::with_capacity(pre + cap);
        buf.resize(pre, 0xEE);
        match run_cut(cut, end.read_into(lp, buf)).await {
            Outcome::Done((Err(e), _)) if reset_is_eof(&e) => flow.deliver(&[]),
            Outcome::Done((r, buf)) => {
                let n = r.unwrap_or_else(|e| fail(e));
                assert_eq!(buf.len(), pre + n, "recv_into length: {}", flow.state());
                assert!(
                    buf[..pre].iter().all(|&b| b == 0xEE),
                    "recv_into overwrote the prefix"
                );
                flow.deliver(&buf[pre..]);
            }
            _ => {
                flow.cut_reads.set(flow.cut_reads.get() + 1);
                settle().await
            }
        }
    }
}

/// A task's worth of reads, then it returns (the supervisor starts another).
async fn reader_burst(end: End, flow: Rc<Flow>, mut rng: Rng, cut_pct: u64) {
    let lp = get_running_loop().unwrap();
    for _ in 0..rng.between(1, 12) {
        if flow.eof.get() {
            break;
        }
        if rng.chance(15) {
            pause(&mut rng).await;
        }
        one_read(&lp, &end, &flow, &mut rng, cut_pct).await;
    }
}

/// Reads `flow` to EOF through a succession of reader tasks, some of them
/// cancelled from outside while a read is in flight (and awaited, so the
/// next read is only issued once the cancelled task is gone, as a program
/// would do). Never drains the loop between a cancel and the next read.
async fn supervise_reader(end: End, flow: Rc<Flow>, mut rng: Rng, cut_pct: u64, kill_pct: u64) {
    let lp = get_running_loop().unwrap();
    while !flow.eof.get() {
        let t = spawn(
            &lp,
            reader_burst(end.clone(), flow.clone(), rng.fork(), cut_pct),
        );
        if rng.chance(kill_pct) {
            pause(&mut rng).await;
            t.cancel(None);
        }
        let f2 = flow.clone();
        let t2 = t.clone();
        join(t, STALL, move || {
            format!(
                "stalled for {STALL:?} (a cancelled read's late data stranded, issue 11 item 2?): {}",
                f2.state()
            )
        })
        .await;
        if t2.cancelled() {
            settle().await
        }
    }
    flow.check_complete();
}

/// Reads `flow` to EOF in this task (its end dies with it).
async fn read_direct(end: End, flow: Rc<Flow>, mut rng: Rng, cut_pct: u64) {
    let lp = get_running_loop().unwrap();
    while !flow.eof.get() {
        if rng.chance(10) {
            pause(&mut rng).await;
        }
        one_read(&lp, &end, &flow, &mut rng, cut_pct).await;
    }
}

/// Sends `flow.total` bytes of the stream in random chunks; a cut send ends
/// the stream there (how much of it went out is unknown). Returns the first
/// send error, if any.
async fn write_flow(
    end: End,
    flow: Rc<Flow>,
    mut rng: Rng,
    cut_pct: u64,
    max_chunk: u64,
) -> ringloop::Result<()> {
    let lp = get_running_loop().unwrap();
    while flow.attempted.get() < flow.total {
        if rng.chance(30) {
            pause(&mut rng).await;
        }
        let at = flow.attempted.get();
        let len = rng.between(1, max_chunk).min(flow.total - at);
        let data = pattern(flow.key, at, len as usize);
        let cut = pick_cut(&mut rng, cut_pct);
        flow.attempted.set(at + len);
        match run_cut(cut, end.write_all(&lp, data)).await {
            Outcome::Done(Ok(())) => flow.sent.set(flow.sent.get() + len),
            Outcome::Done(Err(e)) => return Err(e),
            Outcome::NotStarted => flow.attempted.set(at),
            Outcome::Cut => {
                flow.writer_cut.set(true);
                break;
            }
        }
    }
    flow.writer_done.set(true);
    end.finish_writing();
    Ok(())
}

struct StreamPlan {
    pipes: bool,
    writer_cut_pct: u64,
    reader_cut_pct: u64,
    kill_pct: u64,
    small_bufs_pct: u64,
    max_total: u64,
}

/// 1–3 streams (sockets both ways, or pipes), written and read concurrently
/// with cuts, each checked byte for byte.
fn stream_round(lp: &EventLoop, rng: &mut Rng, plan: StreamPlan) {
    let mut flows = Vec::new();
    for i in 0..rng.between(1, 3) {
        let small = rng.chance(plan.small_bufs_pct);
        let (w, r, kind) = stream_pair(rng, plan.pipes, small);
        let mut dirs = vec![(w.clone(), r.clone())];
        if !plan.pipes && rng.chance(30) {
            dirs.push((r, w)); // and the other way, on the same sockets
        }
        for (j, (w, r)) in dirs.into_iter().enumerate() {
            let max_chunk = [16, 1500, 16384, 65536][rng.below(4) as usize];
            // About 5 to 150 sends.
            let sends = rng.between(5, 150);
            let total = rng.between(1, plan.max_total.min(max_chunk * sends / 2));
            let name = format!("{kind} stream {i}.{j}");
            let flow = Flow::new(name, rng.next(), total, r.fd());
            flows.push((w, r, flow, max_chunk, rng.fork()));
        }
    }
    let plan = Rc::new(plan);
    block(lp, async move {
        let lp = get_running_loop().unwrap();
        let mut tasks = Vec::new();
        for (w, r, flow, max_chunk, mut rng) in flows {
            let wt = spawn(
                &lp,
                write_flow(w, flow.clone(), rng.fork(), plan.writer_cut_pct, max_chunk),
            );
            let rt = spawn(
                &lp,
                supervise_reader(
                    r,
                    flow.clone(),
                    rng.fork(),
                    plan.reader_cut_pct,
                    plan.kill_pct,
                ),
            );
            tasks.push((wt, rt, flow));
        }
        for (wt, rt, flow) in tasks {
            let f2 = flow.clone();
            join(rt, ROUND_LIMIT, move || format!("reader: {}", f2.state())).await;
            let f2 = flow.clone();
            let w = join(wt, STALL, move || format!("writer stalled: {}", f2.state())).await;
            if let Some(Err(e)) = w {
                panic!("send failed: {e}: {}", flow.state());
            }
        }
    });
}

// ---------------------------------------------------------------- scenario families

both_backends! {
    /// Reads (`sock_recv`, `sock_recv_into`) cut at every point and re-issued
    /// at once while a writer keeps sending: the reader's bytes are an exact
    /// prefix of the stream and, at EOF, all of it.
    serial fn reads_cancelled_and_reissued(lp) {
        fuzz(lp, "reads_cancelled_and_reissued", 5000, 20_000, |lp, rng, _| {
            let plan = StreamPlan {
                pipes: false,
                writer_cut_pct: 0,
                reader_cut_pct: rng.between(30, 70),
                kill_pct: rng.between(10, 40),
                small_bufs_pct: 30,
                max_total: 48 << 10,
            };
            stream_round(lp, rng, plan);
        });
    }
}

both_backends! {
    /// `sock_sendall` cut mid-transfer (small socket buffers, large chunks),
    /// readers cut too: what arrives is a prefix of what was handed to the
    /// sends, and at least everything whose send completed.
    serial fn sends_cancelled_mid_transfer(lp) {
        fuzz(lp, "sends_cancelled_mid_transfer", 1500, 12_000, |lp, rng, _| {
            let plan = StreamPlan {
                pipes: false,
                writer_cut_pct: rng.between(5, 30),
                reader_cut_pct: rng.between(0, 40),
                kill_pct: 15,
                small_bufs_pct: 70,
                max_total: 256 << 10,
            };
            stream_round(lp, rng, plan);
        });
    }
}

both_backends! {
    /// Pipe reads and writes cut as above.
    serial fn pipes_cancelled(lp) {
        fuzz(lp, "pipes_cancelled", 3000, 12_000, |lp, rng, _| {
            let plan = StreamPlan {
                pipes: true,
                writer_cut_pct: if rng.chance(50) { 0 } else { rng.between(2, 20) },
                reader_cut_pct: rng.between(30, 70),
                kill_pct: rng.between(10, 40),
                small_bufs_pct: 0,
                max_total: 96 << 10,
            };
            stream_round(lp, rng, plan);
        });
    }
}

// ---------------------------------------------------------------- UDP

/// Datagram `seq` of the run keyed `key`: a header (seq, length) and a
/// keyed payload.
fn datagram(key: u64, seq: u32, len: usize) -> Vec<u8> {
    let mut d = Vec::with_capacity(6 + len);
    d.extend_from_slice(&seq.to_le_bytes());
    d.extend_from_slice(&(len as u16).to_le_bytes());
    d.extend_from_slice(&pattern(key ^ u64::from(seq) << 40, 0, len));
    d
}

/// The sequence number of the datagram that follows the last one.
const FIN: u32 = u32::MAX;
const NEVER_SENT: u8 = 0;
const MAYBE: u8 = 1;
const CONFIRMED: u8 = 2;
const MAX_DGRAM: u64 = 1200;
const UDP_WINDOW: usize = 12;

struct Dgrams {
    key: u64,
    n: usize,
    src: SocketAddr,
    reader_fd: RawFd,
    status: RefCell<Vec<u8>>,
    seen: RefCell<Vec<bool>>,
    order: RefCell<Vec<u32>>,
    sender_done: Cell<bool>,
    reads: Cell<u64>,
}

impl Dgrams {
    fn count(&self, st: u8) -> usize {
        self.status.borrow().iter().filter(|&&s| s == st).count()
    }

    /// Confirmed datagrams not received yet.
    fn outstanding(&self) -> usize {
        let seen = self.seen.borrow();
        self.status
            .borrow()
            .iter()
            .zip(seen.iter())
            .filter(|(s, seen)| **s == CONFIRMED && !**seen)
            .count()
    }

    fn state(&self) -> String {
        let lp = get_running_loop().ok();
        format!(
            "udp: {} datagrams planned, sent {} (+{} cut, may or may not have gone), got {} after {} reads ({} confirmed missing); {} bytes stashed on the reader fd, {} ops in flight",
            self.n,
            self.count(CONFIRMED),
            self.count(MAYBE),
            self.order.borrow().len(),
            self.reads.get(),
            self.outstanding(),
            lp.as_ref().map_or(0, |lp| lp.stashed_bytes(self.reader_fd)),
            lp.as_ref().map_or(0, |lp| lp.ops_in_flight()),
        )
    }

    fn deliver(&self, d: &[u8], from: &SockAddr) {
        assert_eq!(
            from.as_socket(),
            Some(self.src),
            "datagram from a wrong address: {}",
            self.state()
        );
        assert!(
            d.len() >= 6,
            "short datagram ({} bytes): {}",
            d.len(),
            self.state()
        );
        let seq = u32::from_le_bytes(d[..4].try_into().unwrap());
        let len = u16::from_le_bytes(d[4..6].try_into().unwrap()) as usize;
        if seq == FIN {
            // The sender is done; this only wakes a reader waiting for more.
            assert_eq!(d, &datagram(self.key, FIN, 0)[..], "corrupt end datagram");
            return;
        }
        assert!(
            (seq as usize) < self.n,
            "datagram with seq {seq}: {}",
            self.state()
        );
        assert_eq!(
            d,
            &datagram(self.key, seq, len)[..],
            "datagram {seq} corrupt or truncated ({} bytes): {}",
            d.len(),
            self.state()
        );
        assert_ne!(
            self.status.borrow()[seq as usize],
            NEVER_SENT,
            "datagram {seq} arrived though its send never started: {}",
            self.state()
        );
        let mut seen = self.seen.borrow_mut();
        assert!(
            !seen[seq as usize],
            "datagram {seq} delivered twice: {}",
            self.state()
        );
        seen[seq as usize] = true;
        self.order.borrow_mut().push(seq);
    }

    fn done(&self) -> bool {
        self.sender_done.get() && self.outstanding() == 0
    }

    fn check_complete(&self) {
        let status = self.status.borrow();
        let seen = self.seen.borrow();
        for (seq, (&st, &seen)) in status.iter().zip(seen.iter()).enumerate() {
            assert!(
                st != CONFIRMED || seen,
                "datagram {seq} was sent but never received: {}",
                self.state()
            );
        }
        // Confirmed datagrams arrive in the order they were sent.
        let confirmed: Vec<u32> = self
            .order
            .borrow()
            .iter()
            .copied()
            .filter(|&s| status[s as usize] == CONFIRMED)
            .collect();
        if let Some(w) = confirmed.windows(2).find(|w| w[0] > w[1]) {
            panic!(
                "datagrams delivered out of order: {} before {} (a cancelled recvfrom's datagram handed out late?): {}",
                w[0],
                w[1],
                self.state()
            );
        }
    }
}

async fn udp_sender(sock: Rc<Socket>, to: SockAddr, st: Rc<Dgrams>, mut rng: Rng, cut_pct: u64) {
    let lp = get_running_loop().unwrap();
    for seq in 0..st.n {
        // Keep what is queued at the receiver far below its buffer, so a
        // missing datagram is ringloop's loss, not the kernel's.
        let t0 = Instant::now();
        while st.outstanding() >= UDP_WINDOW {
            assert!(
                t0.elapsed() < STALL,
                "stalled for {STALL:?} (issue 11 item 2?): {}",
                st.state()
            );
            sleep(Duration::from_micros(100)).await.unwrap();
        }
        if rng.chance(20) {
            pause(&mut rng).await;
        }
        let d = datagram(st.key, seq as u32, rng.below(MAX_DGRAM) as usize);
        let len = d.len();
        st.status.borrow_mut()[seq] = MAYBE;
        let cut = pick_cut(&mut rng, cut_pct);
        match run_cut(cut, lp.sock_sendto(&sock, d, &to)).await {
            Outcome::Done(Ok(n)) => {
                assert_eq!(n, len, "short sendto");
                st.status.borrow_mut()[seq] = CONFIRMED;
            }
            Outcome::Done(Err(e)) => panic!("sendto failed: {e}: {}", st.state()),
            Outcome::NotStarted => {
                assert!(
                    !st.seen.borrow()[seq],
                    "a datagram whose send never started arrived"
                );
                st.status.borrow_mut()[seq] = NEVER_SENT;
            }
            Outcome::Cut => {}
        }
    }
    st.sender_done.set(true);
    // A reader may be waiting already (it saw the last datagram before this
    // task ran again): one more, uncut, ends its wait.
    let fin = datagram(st.key, FIN, 0);
    lp.sock_sendto(&sock, fin, &to).await.unwrap();
}

async fn udp_reader_burst(sock: Rc<Socket>, st: Rc<Dgrams>, mut rng: Rng, cut_pct: u64) {
    let lp = get_running_loop().unwrap();
    for _ in 0..rng.between(1, 10) {
        if st.done() {
            break;
        }
        if rng.chance(10) {
            pause(&mut rng).await;
        }
        let cut = pick_cut(&mut rng, cut_pct);
        st.reads.set(st.reads.get() + 1);
        if rng.chance(50) {
            if let Outcome::Done(r) =
                run_cut(cut, lp.sock_recvfrom(&sock, MAX_DGRAM as usize + 64)).await
            {
                let (d, from) =
                    r.unwrap_or_else(|e| panic!("recvfrom failed: {e}: {}", st.state()));
                st.deliver(&d, &from);
            } else {
                settle().await
            }
        } else {
            let pre = if rng.chance(50) {
                0
            } else {
                rng.between(1, 16) as usize
            };
            let mut buf = Vec::with_capacity(pre + MAX_DGRAM as usize + 64);
            buf.resize(pre, 0xEE);
            if let Outcome::Done((r, buf)) = run_cut(cut, lp.sock_recvfrom_into(&sock, buf)).await {
                let (n, from) =
                    r.unwrap_or_else(|e| panic!("recvfrom_into failed: {e}: {}", st.state()));
                assert_eq!(buf.len(), pre + n);
                assert!(
                    buf[..pre].iter().all(|&b| b == 0xEE),
                    "recvfrom_into overwrote the prefix"
                );
                st.deliver(&buf[pre..], &from);
            } else {
                settle().await
            }
        }
    }
}

both_backends! {
    /// UDP: `sock_sendto`, `sock_recvfrom`, `sock_recvfrom_into` cut at every
    /// point: datagrams arrive whole, once, in order, none lost.
    serial fn udp_cancelled(lp) {
        fuzz(lp, "udp_cancelled", 2000, 12_000, |lp, rng, _| {
            let a = Rc::new(Socket::from(UdpSocket::bind("127.0.0.1:0").unwrap()));
            let b = Rc::new(Socket::from(UdpSocket::bind("127.0.0.1:0").unwrap()));
            let n = rng.between(10, 200) as usize;
            let st = Rc::new(Dgrams {
                key: rng.next(),
                n,
                src: a.local_addr().unwrap().as_socket().unwrap(),
                reader_fd: b.as_raw_fd(),
                status: RefCell::new(vec![NEVER_SENT; n]),
                seen: RefCell::new(vec![false; n]),
                order: RefCell::new(Vec::new()),
                sender_done: Cell::new(false),
                reads: Cell::new(0),
            });
            let to = b.local_addr().unwrap();
            let send_cut = rng.between(0, 30);
            let recv_cut = rng.between(20, 70);
            let kill_pct = rng.between(10, 40);
            let (mut r1, mut r2) = (rng.fork(), rng.fork());
            block(lp, async move {
                let lp = get_running_loop().unwrap();
                let sender = spawn(&lp, udp_sender(a, to, st.clone(), r1.fork(), send_cut));
                while !st.done() {
                    let t = spawn(&lp, udp_reader_burst(b.clone(), st.clone(), r2.fork(), recv_cut));
                    if r2.chance(kill_pct) {
                        pause(&mut r2).await;
                        t.cancel(None);
                    }
                    let t2 = t.clone();
                    let s2 = st.clone();
                    join(t, STALL, move || format!("stalled for {STALL:?} (issue 11 item 2?): {}", s2.state())).await;
                    if t2.cancelled() { settle().await }
                }
                let s2 = st.clone();
                join(sender, STALL, move || format!("sender: {}", s2.state())).await;
                // Datagrams whose send was cut may still come: take them (and
                // check them) until the socket stays quiet.
                loop {
                    let buf = Vec::with_capacity(MAX_DGRAM as usize + 64);
                    match wait_for(lp.sock_recvfrom_into(&b, buf), Duration::from_millis(20)).await {
                        Ok((Ok((_, from)), buf)) => st.deliver(&buf, &from),
                        Ok((Err(e), _)) => panic!("recvfrom_into: {e}"),
                        Err(_) => break,
                    }
                }
                st.check_complete();
            });
        });
    }
}

// ---------------------------------------------------------------- accept / connect

fn peer_sees_eof(lp: &EventLoop, s: Rc<Socket>) -> std::result::Result<(), String> {
    block(lp, async move {
        let lp = get_running_loop().unwrap();
        let t0 = Instant::now();
        loop {
            match wait_for(lp.sock_recv(&s, 4096), STALL).await {
                Ok(Ok(d)) if d.is_empty() => return Ok(()),
                Ok(Ok(_)) if t0.elapsed() < STALL => continue,
                Ok(Ok(d)) => return Err(format!("still receiving data ({} bytes)", d.len())),
                Ok(Err(e)) if e.io_kind() == Some(std::io::ErrorKind::ConnectionReset) => {
                    return Ok(());
                }
                Ok(Err(e)) => return Err(format!("recv failed: {e}")),
                Err(_) => return Err(format!("no EOF within {STALL:?}")),
            }
        }
    })
}

#[derive(Default)]
struct Conns {
    /// Client sockets whose connect completed, by local port.
    clients: HashMap<u16, Rc<Socket>>,
    /// Accepted sockets with their peer's port.
    accepted: Vec<(Rc<Socket>, u16)>,
    connects: u64,
    accepts: u64,
}

async fn accept_one(l: Rc<Socket>, conns: Rc<RefCell<Conns>>, mut rng: Rng) {
    let lp = get_running_loop().unwrap();
    conns.borrow_mut().accepts += 1;
    let cut = pick_cut(&mut rng, 50);
    if let Outcome::Done(r) = run_cut(cut, lp.sock_accept(&l)).await {
        let (s, addr) = r.unwrap_or_else(|e| panic!("accept failed: {e}"));
        let port = addr.as_socket().unwrap().port();
        conns.borrow_mut().accepted.push((Rc::new(s), port));
    }
}

async fn accept_multi(l: Rc<Socket>, conns: Rc<RefCell<Conns>>, mut rng: Rng) {
    let lp = get_running_loop().unwrap();
    let mut acc = Acceptor::new(&lp, &l);
    for _ in 0..rng.between(1, 4) {
        conns.borrow_mut().accepts += 1;
        let cut = pick_cut(&mut rng, 40);
        match run_cut(cut, acc.accept()).await {
            Outcome::Done(r) => {
                let s = r.unwrap_or_else(|e| panic!("Acceptor::accept failed: {e}"));
                // (0 if the client is already gone: then it must see EOF.)
                let port = s
                    .peer_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .map_or(0, |a| a.port());
                conns.borrow_mut().accepted.push((Rc::new(s), port));
            }
            _ => break,
        }
    }
    // Dropped here: connections the multishot accept still takes are closed.
}

async fn connect_one(addr: SocketAddr, conns: Rc<RefCell<Conns>>, mut rng: Rng) {
    let lp = get_running_loop().unwrap();
    conns.borrow_mut().connects += 1;
    let s = Socket::tcp_for(&addr).unwrap();
    let cut = pick_cut(&mut rng, 50);
    if let Outcome::Done(r) = run_cut(cut, lp.sock_connect(&s, &addr.into())).await {
        r.unwrap_or_else(|e| panic!("connect to {addr} failed: {e}"));
        let port = s.local_addr().unwrap().as_socket().unwrap().port();
        conns.borrow_mut().clients.insert(port, Rc::new(s));
    }
    // A cut connect drops its socket here, connected or not.
}

both_backends! {
    /// `sock_accept`, a multishot `Acceptor` and `sock_connect` cut at every
    /// point, with tasks cancelled from outside: every connection is either
    /// handed to one live accept, or closed (its client sees EOF); no fd leaks.
    serial fn accept_connect_cancelled(lp) {
        fuzz(lp, "accept_connect_cancelled", 800, 8_000, |lp, rng, _| {
            let l = Rc::new(Socket::tcp_listener(&"127.0.0.1:0".parse().unwrap(), 1024).unwrap());
            let addr = l.local_addr().unwrap().as_socket().unwrap();
            let conns: Rc<RefCell<Conns>> = Rc::default();
            let steps = rng.between(10, 80);
            let mut rng = rng.fork();
            let (l2, c2) = (l.clone(), conns.clone());
            block(lp, async move {
                let lp = get_running_loop().unwrap();
                let mut tasks: Vec<Task<()>> = Vec::new();
                for _ in 0..steps {
                    let t = match rng.below(10) {
                        0..=3 => spawn(&lp, accept_one(l2.clone(), c2.clone(), rng.fork())),
                        4 => spawn(&lp, accept_multi(l2.clone(), c2.clone(), rng.fork())),
                        _ => spawn(&lp, connect_one(addr, c2.clone(), rng.fork())),
                    };
                    tasks.push(t);
                    if rng.chance(20) && !tasks.is_empty() {
                        let i = rng.below(tasks.len() as u64) as usize;
                        tasks[i].cancel(None);
                    }
                    pause(&mut rng).await;
                }
                // Accepts still waiting are cancelled; everything else ends.
                for t in &tasks {
                    if rng.chance(50) {
                        t.cancel(None);
                    }
                }
                sleep(Duration::from_millis(2)).await.unwrap();
                for t in &tasks {
                    t.cancel(None);
                }
                for t in tasks {
                    join(t, STALL, || "an accept/connect task did not end".into()).await;
                }
            });
            common::drain(lp, STALL);
            // What is still in the backlog goes to a last accept.
            let l3 = l.clone();
            let late = block(lp, async move {
                let lp = get_running_loop().unwrap();
                let mut v = Vec::new();
                while let Ok(r) = wait_for(lp.sock_accept(&l3), Duration::from_millis(10)).await {
                    let (s, a) = r.unwrap();
                    v.push((Rc::new(s), a.as_socket().unwrap().port()));
                }
                v
            });
            common::drain(lp, STALL);
            let mut c = conns.borrow_mut();
            c.accepted.extend(late);
            let accepted = std::mem::take(&mut c.accepted);
            let mut clients = std::mem::take(&mut c.clients);
            drop(c);
            for (srv, port) in accepted {
                match clients.remove(&port) {
                    Some(cli) => {
                        // A live pair: bytes flow both ways.
                        let token = port.to_le_bytes().to_vec();
                        let got = block(lp, async move {
                            let lp = get_running_loop().unwrap();
                            lp.sock_sendall(&cli, token).await.unwrap();
                            let a = wait_for(lp.sock_recv(&srv, 16), STALL).await;
                            lp.sock_sendall(&srv, b"ok".to_vec()).await.unwrap();
                            let b = wait_for(lp.sock_recv(&cli, 16), STALL).await;
                            (a.map(|r| r.unwrap()).ok(), b.map(|r| r.unwrap()).ok())
                        });
                        assert_eq!(got, (Some(port.to_le_bytes().to_vec()), Some(b"ok".to_vec())), "accepted pair for port {port}");
                    }
                    None => {
                        // Its client's connect was cut and the socket dropped.
                        peer_sees_eof(lp, srv).unwrap_or_else(|e| {
                            panic!("accepted connection from port {port}, whose client was dropped: {e}")
                        });
                    }
                }
            }
            for (port, cli) in clients {
                // Connected, never accepted by a live accept: a cut accept got
                // it and must have closed it.
                peer_sees_eof(lp, cli).unwrap_or_else(|e| {
                    panic!("client port {port}: its connection was neither handed to an accept nor closed (an accepted fd leaked?): {e}")
                });
            }
            drop(l);
            common::drain(lp, STALL);
        });
    }
}

// ---------------------------------------------------------------- fds closed under ops

/// A stream whose ends are owned by its reader and writer tasks only, so
/// cancelling a task closes its end under the op in flight.
struct Lane {
    flow: Rc<Flow>,
    reader: Task<()>,
    writer: Task<ringloop::Result<()>>,
    /// The reader's socket, kept to shut it down under its read.
    held: Option<Rc<Socket>>,
}

fn open_lane(lp: &EventLoop, rng: &mut Rng, n: u64) -> Lane {
    let pipe = rng.chance(30);
    let small = rng.chance(30);
    let (w, r, kind) = stream_pair(rng, pipe, small);
    let held = match (&r, rng.chance(30)) {
        (End::Sock(s), true) => Some(s.clone()),
        _ => None,
    };
    let max_chunk = [64, 4096, 32768][rng.below(3) as usize];
    let sends = rng.between(5, 60);
    let total = rng.between(1, (64 << 10u64).min(max_chunk * sends / 2));
    let flow = Flow::new(format!("{kind} lane {n}"), rng.next(), total, r.fd());
    let writer = spawn(lp, write_flow(w, flow.clone(), rng.fork(), 0, max_chunk));
    let reader = spawn(lp, read_direct(r, flow.clone(), rng.fork(), 40));
    Lane {
        flow,
        reader,
        writer,
        held,
    }
}

fn peer_gone(e: &Error) -> bool {
    matches!(
        e.io_kind(),
        Some(std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset)
    )
}

both_backends! {
    /// Reader or writer tasks that own a socket or pipe end are cancelled
    /// with ops in flight (so the fd is closed under them), sockets are shut
    /// down under a read, and new fds (reusing the numbers) start at once:
    /// the peer sees EOF or EPIPE, the new streams are exact (no stale
    /// completion or stashed data reaches a reused fd number), no fd leaks.
    serial fn fd_closed_under_ops(lp) {
        fuzz(lp, "fd_closed_under_ops", 3000, 12_000, |lp, rng, _| {
            let mut rng = rng.fork();
            block(lp, async move {
                let lp = get_running_loop().unwrap();
                let mut n = 0;
                let mut lanes: Vec<Lane> = Vec::new();
                for _ in 0..rng.between(2, 4) {
                    lanes.push(open_lane(&lp, &mut rng, n));
                    n += 1;
                }
                // Lanes taken apart, to be checked at the end: (lane, how).
                let mut ended: Vec<(Lane, &'static str)> = Vec::new();
                for _ in 0..rng.between(4, 16) {
                    pause(&mut rng).await;
                    if rng.chance(50) {
                        sleep(Duration::from_micros(rng.between(1, 500))).await.unwrap();
                    }
                    let i = rng.below(lanes.len() as u64) as usize;
                    let how = match rng.below(8) {
                        0 | 1 => "reader killed",
                        2 | 3 => "writer killed",
                        4 => "both killed",
                        5 if lanes[i].held.is_some() => "shut down",
                        _ => continue,
                    };
                    let mut lane = lanes.swap_remove(i);
                    match how {
                        "reader killed" => {
                            // Its task holds the last reference: the fd closes
                            // once the read in flight is over.
                            lane.held = None;
                            lane.reader.cancel(None);
                        }
                        "writer killed" => {
                            lane.flow.writer_cut.set(true);
                            lane.writer.cancel(None);
                        }
                        "both killed" => {
                            lane.held = None;
                            lane.reader.cancel(None);
                            lane.writer.cancel(None);
                        }
                        _ => {
                            lane.flow.shut.set(true);
                            let how = if rng.chance(50) { Shutdown::Read } else { Shutdown::Both };
                            lane.held.as_ref().unwrap().shutdown(how).unwrap();
                        }
                    }
                    ended.push((lane, how));
                    // A new lane at once, likely on the numbers just freed.
                    lanes.push(open_lane(&lp, &mut rng, n));
                    n += 1;
                }
                for lane in lanes {
                    let f2 = lane.flow.clone();
                    join(lane.reader, STALL, move || format!("reader stalled: {}", f2.state())).await;
                    let f2 = lane.flow.clone();
                    let w = join(lane.writer, STALL, move || format!("writer stalled: {}", f2.state())).await;
                    if let Some(Err(e)) = w {
                        panic!("send failed: {e}: {}", lane.flow.state());
                    }
                    lane.flow.check_complete();
                }
                for (lane, how) in ended {
                    let Lane { flow, reader, writer, held } = lane;
                    match how {
                        "reader killed" => {
                            // The writer sees the peer gone (or had finished).
                            let f2 = flow.clone();
                            let w = join(writer, STALL, move || format!("writer never saw its peer closed (the killed reader's fd leaked?): {}", f2.state())).await;
                            if let Some(Err(e)) = w {
                                assert!(peer_gone(&e), "send failed: {e}: {}", flow.state());
                            }
                        }
                        "writer killed" => {
                            let f2 = flow.clone();
                            join(reader, STALL, move || format!("reader never saw EOF after its writer was killed (its fd leaked?): {}", f2.state())).await;
                            flow.check_complete();
                        }
                        "both killed" => {}
                        _ => {
                            let f2 = flow.clone();
                            join(reader, STALL, move || format!("read not ended by shutdown: {}", f2.state())).await;
                            writer.cancel(None);
                            let _ = writer.await;
                        }
                    }
                    drop(held);
                }
            });
        });
    }
}

// ---------------------------------------------------------------- loops closed under ops

/// Reads a std end until EOF (or reset), bounded.
fn std_sees_eof(s: &mut dyn Read, what: &str) {
    let t0 = Instant::now();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("{what}: read failed: {e}"),
        }
        assert!(
            t0.elapsed() < STALL,
            "{what}: no EOF {STALL:?} after the loop closed (a socket or pipe leaked at close)"
        );
    }
}

/// The std side of a socket or pipe whose other end a loop's tasks own
/// (non-blocking).
enum StdPeer {
    Unix(UnixStream),
    Tcp(TcpStream),
    /// The read end of a pipe the loop writes.
    PipeReader(std::fs::File),
    /// The write end of a pipe the loop reads.
    PipeWriter(std::fs::File),
}

impl StdPeer {
    fn write_some(&mut self, data: &[u8]) {
        let _ = match self {
            StdPeer::Unix(s) => s.write(data),
            StdPeer::Tcp(s) => s.write(data),
            StdPeer::PipeWriter(f) => f.write(data),
            StdPeer::PipeReader(_) => Ok(0),
        };
    }

    /// The loop's end is closed: EOF, a reset, or (pipe) `EPIPE`.
    fn sees_eof(&mut self, what: &str) {
        match self {
            StdPeer::Unix(s) => std_sees_eof(s, what),
            StdPeer::Tcp(s) => std_sees_eof(s, what),
            StdPeer::PipeReader(f) => std_sees_eof(f, what),
            StdPeer::PipeWriter(f) => {
                let t0 = Instant::now();
                loop {
                    match f.write(b"x") {
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(1))
                        }
                        Err(e) => panic!("{what}: write failed: {e}"),
                    }
                    assert!(
                        t0.elapsed() < STALL,
                        "{what}: the pipe's read end is still open {STALL:?} after the loop closed (leaked at close)"
                    );
                }
            }
        }
    }
}

/// A ringloop socket and its std peer.
fn std_pair(rng: &mut Rng) -> (Rc<Socket>, StdPeer) {
    if rng.chance(50) {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        (Rc::new(Socket::from(a)), StdPeer::Unix(b))
    } else {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        b.set_nonblocking(true).unwrap();
        (Rc::new(Socket::from(a)), StdPeer::Tcp(b))
    }
}

/// A pipe: the loop's end (reading or writing) and the std peer.
fn std_pipe(loop_reads: bool) -> (Rc<Pipe>, StdPeer) {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK).unwrap();
    if loop_reads {
        (
            Rc::new(Pipe::from_owned(r).unwrap()),
            StdPeer::PipeWriter(std::fs::File::from(w)),
        )
    } else {
        (
            Rc::new(Pipe::from_owned(w).unwrap()),
            StdPeer::PipeReader(std::fs::File::from(r)),
        )
    }
}

/// Spawns a random op-running task on `sock`: reads, a large send, or small
/// sends, with cuts.
fn spawn_sock_task(lp: &EventLoop, sock: Rc<Socket>, rng: &mut Rng) {
    let mut rng = rng.fork();
    spawn(lp, async move {
        let lp = get_running_loop().unwrap();
        match rng.below(3) {
            0 => loop {
                let cut = pick_cut(&mut rng, 40);
                if let Outcome::Done(r) = run_cut(cut, lp.sock_recv(&sock, cap_for(&mut rng))).await
                {
                    if !r.is_ok_and(|d| !d.is_empty()) {
                        break;
                    }
                }
                sleep(Duration::ZERO).await.unwrap();
            },
            1 => {
                let n = rng.between(1 << 10, 4 << 20) as usize;
                let _ = run_cut(
                    pick_cut(&mut rng, 30),
                    lp.sock_sendall(&sock, vec![0x5a; n]),
                )
                .await;
            }
            _ => loop {
                let cut = pick_cut(&mut rng, 30);
                let n = rng.between(1, 4096) as usize;
                if let Outcome::Done(Err(_)) =
                    run_cut(cut, lp.sock_sendall(&sock, vec![1; n])).await
                {
                    break;
                }
                sleep(Duration::ZERO).await.unwrap();
            },
        }
    });
}

both_backends! {
    /// Whole loops closed with a random mix of ops in flight (reads, large
    /// and small sends, accepts, connects, pipe reads and writes, UDP
    /// receives, sleeps), some cut just before: close neither panics nor
    /// leaks, nothing stays in flight, poisoned buffers are untouched, every
    /// socket the loop's tasks owned is closed (its peer sees EOF).
    serial fn loop_closed_with_ops_in_flight(lp) {
        fuzz(lp, "loop_closed_with_ops_in_flight", 3000, 8_000, |lp, rng, _| {
            let mut peers: Vec<(StdPeer, String)> = Vec::new();
            for i in 0..rng.between(1, 4) {
                let (sock, peer) = std_pair(rng);
                for _ in 0..rng.between(1, 3) {
                    spawn_sock_task(lp, sock.clone(), rng);
                }
                peers.push((peer, format!("socket pair {i}")));
            }
            if rng.chance(70) {
                let l = Rc::new(Socket::tcp_listener(&"127.0.0.1:0".parse().unwrap(), 64).unwrap());
                let addr = l.local_addr().unwrap().as_socket().unwrap();
                let conns: Rc<RefCell<Conns>> = Rc::default();
                for _ in 0..rng.between(1, 6) {
                    match rng.below(3) {
                        0 => spawn(lp, accept_one(l.clone(), conns.clone(), rng.fork())),
                        1 => spawn(lp, accept_multi(l.clone(), conns.clone(), rng.fork())),
                        _ => spawn(lp, connect_one(addr, conns.clone(), rng.fork())),
                    };
                }
                // The connections made live in `conns`, held by those tasks
                // only: closing the loop must release them all. The
                // listener lives as long as the loop's tasks.
                spawn(lp, async move {
                    let _l = l;
                    std::future::pending::<()>().await
                });
            }
            for i in 0..rng.between(0, 2) {
                let loop_reads = rng.chance(50);
                let (p, mut peer) = std_pipe(loop_reads);
                let mut r2 = rng.fork();
                if loop_reads {
                    if rng.chance(50) {
                        peer.write_some(&vec![7u8; rng.between(1, 8192) as usize]);
                    }
                    spawn(lp, async move {
                        let lp = get_running_loop().unwrap();
                        loop {
                            let cut = pick_cut(&mut r2, 40);
                            let f = lp.pipe_read_into(&p, Vec::with_capacity(cap_for(&mut r2)));
                            if let Outcome::Done((r, _)) = run_cut(cut, f).await {
                                if !r.is_ok_and(|n| n > 0) {
                                    break;
                                }
                            }
                            sleep(Duration::ZERO).await.unwrap();
                        }
                    });
                } else {
                    spawn(lp, async move {
                        let lp = get_running_loop().unwrap();
                        let n = r2.between(1, 1 << 20) as usize;
                        let _ = run_cut(pick_cut(&mut r2, 30), lp.pipe_write_all(&p, vec![3u8; n])).await;
                    });
                }
                peers.push((peer, format!("pipe {i} (the loop {})", if loop_reads { "reads" } else { "writes" })));
            }
            if rng.chance(50) {
                let u = Rc::new(Socket::from(UdpSocket::bind("127.0.0.1:0").unwrap()));
                let to = u.local_addr().unwrap();
                let mut r2 = rng.fork();
                spawn(lp, async move {
                    let lp = get_running_loop().unwrap();
                    loop {
                        if r2.chance(30) {
                            let _ = lp.sock_sendto(&u, vec![9u8; 100], &to).await;
                        }
                        let cut = pick_cut(&mut r2, 40);
                        let _ = run_cut(cut, lp.sock_recvfrom(&u, 2048)).await;
                        sleep(Duration::ZERO).await.unwrap();
                    }
                });
            }
            for _ in 0..rng.between(0, 3) {
                let d = Duration::from_micros(rng.between(1, 5000));
                spawn(lp, async move {
                    count_ops(1);
                    sleep(d).await.unwrap();
                });
            }
            // Run a little, with data arriving between turns.
            for _ in 0..rng.between(0, 6) {
                if rng.chance(50) {
                    turns(lp, rng.between(1, 4) as usize);
                } else {
                    let d = Duration::from_micros(rng.between(1, 3000));
                    block(lp, async move { sleep(d).await.unwrap() });
                }
                for (p, _) in peers.iter_mut() {
                    if rng.chance(40) {
                        p.write_some(&vec![0x42; rng.between(1, 2048) as usize]);
                    }
                }
            }
            close_under_load(lp);
            for (p, what) in peers.iter_mut() {
                p.sees_eof(what);
            }
        });
    }
}

both_backends! {
    /// A loop closed with thousands of ops in flight (5,000 in every other
    /// round, 1,000–5,000 in the rest: receives on many sockets, pipe reads,
    /// accepts, UDP receives, blocked sends, some just cancelled): close
    /// cancels them all, drains within its bound, leaks nothing, and panics
    /// not (issue 11 item 3).
    serial fn many_ops_in_flight_at_close(lp) {
        fuzz(lp, "many_ops_in_flight_at_close", 10_000, 20_000, |lp, rng, seed| {
            let n = if seed & 1 == 0 { 5000 } else { rng.between(1000, 5000) as usize };
            let mut socks = Vec::new();
            let mut peers = Vec::new();
            for _ in 0..32 {
                let (s, p) = std_pair(rng);
                socks.push(s);
                peers.push(p);
            }
            let mut pipes = Vec::new();
            for _ in 0..4 {
                let (p, w) = std_pipe(true);
                pipes.push(p);
                peers.push(w);
            }
            let l = Rc::new(Socket::tcp_listener(&"127.0.0.1:0".parse().unwrap(), 64).unwrap());
            let u = Rc::new(Socket::from(UdpSocket::bind("127.0.0.1:0").unwrap()));
            let mut tasks = Vec::with_capacity(n);
            for _ in 0..n {
                let t = match rng.below(100) {
                    0..=69 => {
                        let s = socks[rng.below(32) as usize].clone();
                        let cap = cap_for(rng).min(4096);
                        spawn(lp, async move {
                            let _ = get_running_loop().unwrap().sock_recv(&s, cap).await;
                        })
                    }
                    70..=79 => {
                        let p = pipes[rng.below(4) as usize].clone();
                        spawn(lp, async move {
                            let _ = get_running_loop().unwrap().pipe_read_into(&p, Vec::with_capacity(512)).await;
                        })
                    }
                    80..=89 => {
                        let l = l.clone();
                        spawn(lp, async move {
                            let _ = get_running_loop().unwrap().sock_accept(&l).await;
                        })
                    }
                    90..=98 => {
                        let u = u.clone();
                        spawn(lp, async move {
                            let _ = get_running_loop().unwrap().sock_recvfrom(&u, 256).await;
                        })
                    }
                    _ => {
                        let s = socks[rng.below(32) as usize].clone();
                        let big = rng.between(64 << 10, 256 << 10) as usize;
                        spawn(lp, async move {
                            let _ = get_running_loop().unwrap().sock_sendall(&s, vec![0x33; big]).await;
                        })
                    }
                };
                tasks.push(t);
            }
            count_ops(n);
            drop((socks, pipes, l, u));
            turns(lp, 2);
            let submitted = lp.ops_in_flight();
            assert!(submitted >= n * 9 / 10, "only {submitted} of {n} ops in flight");
            // Data for some of them; some cancelled (dropped in a turn, or
            // destroyed by close itself).
            for _ in 0..rng.below(12) {
                let i = rng.below(peers.len() as u64) as usize;
                peers[i].write_some(&vec![1u8; 300]);
            }
            for t in &tasks {
                if rng.chance(20) {
                    t.cancel(None);
                }
            }
            if rng.chance(50) {
                turns(lp, 1);
            }
            drop(tasks);
            let in_flight = lp.ops_in_flight();
            close_under_load(lp);
            for (i, p) in peers.iter_mut().enumerate() {
                p.sees_eof(&format!("peer {i} ({in_flight} ops in flight at close)"));
            }
        });
    }
}
