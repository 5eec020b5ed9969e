//! hyper 1.x on the loop (cargo feature `hyper`): an I/O adapter, a `!Send`
//! executor, a timer on the loop's timers, and serve and client helpers.
//!
//! * [`HyperIo`] implements `hyper::rt::Read` and `hyper::rt::Write` on a
//!   ringloop [`Transport`] (plain TCP, Unix or TLS) through a protocol of
//!   its own: received pool buffers wait in a queue for hyper to read them
//!   (one copy, into hyper's buffer), reading pauses while more than
//!   64 KiB wait; a write is refused (`Pending`) while the transport is
//!   over its high-water mark and goes on after `resume_writing`.
//! * [`LoopExecutor`] spawns hyper's background futures (HTTP/2 streams,
//!   client connections) as tasks on the loop: they need not be `Send`.
//! * [`LoopTimer`] gives hyper sleeps on the loop's timer heap. hyper wants
//!   its sleeps `Send + Sync`; a [`LoopSleep`] holds only plain data (its
//!   deadline, the id of the thread that made it, a key into that thread's
//!   registry and a [`LoopHandle`]), so it is `Send + Sync` without any
//!   hand-written `Send`/`Sync` implementation, and it panics if polled or
//!   reset on another thread.
//! * [`serve`] / [`serve_with`] run a server (hyper-util's HTTP/1 + HTTP/2
//!   auto-detecting builder on every accepted connection) with graceful
//!   shutdown ([`HyperServer::shutdown`]); [`connect`], [`http1_client`]
//!   and [`http2_client`] are the client side.
//!
//! HTTP upgrades (`CONNECT`, WebSocket) are not offered: hyper's
//! `Upgraded` boxes the I/O as `Send`, and a loop's transport is not.
//!
//! # Example
//!
//! ```
//! use http_body_util::{BodyExt, Full};
//! use hyper::body::{Bytes, Incoming};
//! use hyper::{Request, Response};
//! use ringloop::{ConnectOptions, ServerOptions};
//!
//! ringloop::run(async {
//!     let server = ringloop::hyper::serve(
//!         |_conn| {
//!             hyper::service::service_fn(|_req: Request<Incoming>| async {
//!                 Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
//!                     "Hello, world!",
//!                 ))))
//!             })
//!         },
//!         ServerOptions { hosts: vec!["127.0.0.1".into()], ..Default::default() },
//!     )
//!     .await?;
//!     let port = server.sockets()[0].as_socket().unwrap().port();
//!
//!     let io = ringloop::hyper::connect(ConnectOptions {
//!         host: Some("127.0.0.1".into()),
//!         port,
//!         ..Default::default()
//!     })
//!     .await?;
//!     let mut client = ringloop::hyper::http1_client(io).await?;
//!     let req = Request::get("/").header("host", "x").body(Full::new(Bytes::new())).unwrap();
//!     let res = client.send_request(req).await.map_err(ringloop::hyper::to_error)?;
//!     let body = res.into_body().collect().await.map_err(ringloop::hyper::to_error)?;
//!     assert_eq!(body.to_bytes(), "Hello, world!");
//!
//!     server.shutdown();
//!     server.wait_closed().await;
//!     Ok::<(), ringloop::Error>(())
//! })??;
//! # Ok::<(), ringloop::Error>(())
//! ```
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use ::hyper::body::{Body, Incoming};
use ::hyper::rt::{Executor, Read, ReadBufCursor, Sleep, Timer, Write};
use ::hyper::service::Service;
use ::hyper::{Request, Response};
use bytes::{Buf, Bytes};
use hyper_util::server::conn::auto;
use slab::Slab;

use crate::RecvBuf;
use crate::base_loop::{EventLoop, LoopHandle};
use crate::connect::ConnectOptions;
use crate::error::{Error, Result};
use crate::events::{AbstractEventLoop, TimerHandle, get_running_loop};
use crate::protocols::{BaseProtocol, Protocol};
use crate::server::{Server, ServerOptions};
use crate::sock::SockAddr;
use crate::transports::Transport;

/// Reading pauses while more than this many received bytes wait for hyper.
const READ_HIGH: usize = 64 * 1024;
/// ... and goes on once hyper has taken them down to this.
const READ_LOW: usize = 16 * 1024;

/// A hyper error (or any error) as a ringloop [`Error::Io`] (kind `Other`,
/// the error as its source).
pub fn to_error(e: impl Into<Box<dyn StdError + Send + Sync>>) -> Error {
    Error::from(io::Error::other(e))
}

fn to_io(e: &Error) -> io::Error {
    match e {
        Error::Io(io) => io::Error::new(io.kind(), io.to_string()),
        other => io::Error::other(other.to_string()),
    }
}

// ------------------------------------------------------------------ I/O

/// Received bytes hyper has not read yet: a receive-pool buffer as it came
/// (no copy), or bytes copied (a TLS plaintext slice, a plain receive, or
/// a pool buffer while the pool runs low).
enum Chunk {
    Pool(RecvBuf),
    Owned(Bytes),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Pool(b) => b,
            Chunk::Owned(b) => b,
        }
    }
    fn advance(&mut self, n: usize) {
        match self {
            Chunk::Pool(b) => b.advance(n),
            Chunk::Owned(b) => b.advance(n),
        }
    }
}

/// What the protocol and the [`HyperIo`] share.
#[derive(Default)]
struct IoState {
    chunks: VecDeque<Chunk>,
    buffered: usize,
    read_paused: bool,
    eof: bool,
    lost: bool,
    error: Option<Error>,
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// The transport, to pause its reading (dropped at the loss: the
    /// protocol and its transport hold each other until then).
    transport: Option<Transport>,
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl IoState {
    fn push(&mut self, c: Chunk) -> Option<Transport> {
        self.buffered += c.bytes().len();
        self.chunks.push_back(c);
        if let Some(w) = self.reader.take() {
            w.wake();
        }
        if !self.read_paused && self.buffered > READ_HIGH {
            self.read_paused = true;
            return self.transport.clone();
        }
        None
    }
}

/// The protocol under a [`HyperIo`].
struct HyperProtocol {
    st: Rc<RefCell<IoState>>,
    on_connect: Option<Box<dyn FnOnce(HyperIo)>>,
}

impl HyperProtocol {
    fn deliver(&mut self, c: Chunk) {
        let pause = self.st.borrow_mut().push(c);
        if let Some(t) = pause {
            t.pause_reading();
        }
    }
}

impl BaseProtocol for HyperProtocol {
    fn connection_made(&mut self, transport: Transport) {
        self.st.borrow_mut().transport = Some(transport.clone());
        if let Some(f) = self.on_connect.take() {
            f(HyperIo {
                st: self.st.clone(),
                transport,
            });
        }
    }
    fn eof_received(&mut self) -> bool {
        let mut st = self.st.borrow_mut();
        st.eof = true;
        if let Some(w) = st.reader.take() {
            w.wake();
        }
        // Keep the write side open: hyper may still answer a client that
        // half-closed, then shuts down or drops the connection itself.
        true
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        let (r, w, t) = {
            let mut st = self.st.borrow_mut();
            st.lost = true;
            st.error = exc;
            (st.reader.take(), st.writer.take(), st.transport.take())
        };
        drop(t);
        r.into_iter().chain(w).for_each(Waker::wake);
    }
    fn resume_writing(&mut self) {
        let w = self.st.borrow_mut().writer.take();
        if let Some(w) = w {
            w.wake();
        }
    }
}

impl Protocol for HyperProtocol {
    fn data_received(&mut self, data: &[u8]) {
        if !data.is_empty() {
            self.deliver(Chunk::Owned(Bytes::copy_from_slice(data)));
        }
    }
    fn data_received_owned(&mut self, data: RecvBuf) {
        if data.is_empty() {
            return;
        }
        // Keep the pool buffer itself unless the pool runs low: then copy
        // and give it back at once, so waiting requests cannot starve the
        // loop's receives.
        if data.pool_is_low() {
            self.deliver(Chunk::Owned(Bytes::copy_from_slice(&data)));
        } else {
            self.deliver(Chunk::Pool(data));
        }
    }
}

/// A ringloop connection as hyper's I/O: `hyper::rt::Read` +
/// `hyper::rt::Write` on a [`Transport`] (TCP, Unix socket or TLS).
///
/// * Reading hands hyper the received bytes in order (receive-pool buffers
///   are kept as they came until hyper copies them into its own buffer);
///   more than 64 KiB waiting pauses the transport's reading until hyper
///   takes them down to 16 KiB, so a request body nobody reads stops the
///   sender (TCP back-pressure) instead of filling memory.
/// * Writing copies hyper's bytes into one owned buffer per call
///   (vectored writes are gathered into one) and queues it on the
///   transport; while the transport is over its high-water mark
///   ([`Transport::set_write_buffer_limits`]) `poll_write` is `Pending`
///   until it drains to its low-water mark. `poll_flush` is ready at once:
///   what was written leaves with the loop's next turn.
/// * `poll_shutdown` is [`Transport::write_eof`] where the transport can
///   half-close (TCP, Unix) and [`Transport::close`] otherwise (TLS: a
///   `close_notify` after the buffered data).
/// * Dropping it closes the transport (after the buffered data is sent).
///
/// Made by [`connect`] (a client) or by [`serve`] for each accepted
/// connection. `!Send`, as the loop it runs on.
pub struct HyperIo {
    st: Rc<RefCell<IoState>>,
    transport: Transport,
}

impl HyperIo {
    /// The transport underneath (peer address, TLS extra info, write
    /// buffer limits).
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Is writing refused for now? Registers the waker if so.
    fn write_blocked(&self, cx: &Context<'_>) -> Option<Poll<io::Result<usize>>> {
        {
            let st = self.st.borrow();
            if st.lost {
                return Some(Poll::Ready(Err(st.error.as_ref().map_or_else(
                    || io::Error::new(io::ErrorKind::BrokenPipe, "connection lost"),
                    to_io,
                ))));
            }
        }
        if self.transport.is_writing_paused() {
            set_waker(&mut self.st.borrow_mut().writer, cx);
            return Some(Poll::Pending);
        }
        None
    }

    fn send(&self, data: Vec<u8>) -> Poll<io::Result<usize>> {
        let n = data.len();
        match self.transport.write(data) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(Error::Closed(_)) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the transport is closing",
            ))),
            Err(e) => Poll::Ready(Err(to_io(&e))),
        }
    }
}

impl Drop for HyperIo {
    fn drop(&mut self) {
        self.transport.close();
    }
}

impl fmt::Debug for HyperIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.st.borrow();
        write!(
            f,
            "<HyperIo {:?} buffered={} eof={} lost={}>",
            self.transport, st.buffered, st.eof, st.lost
        )
    }
}

impl Read for HyperIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.st.borrow_mut();
        if st.chunks.is_empty() {
            if let Some(e) = &st.error {
                return Poll::Ready(Err(to_io(e)));
            }
            if st.eof || st.lost {
                return Poll::Ready(Ok(()));
            }
            set_waker(&mut st.reader, cx);
            return Poll::Pending;
        }
        while buf.remaining() > 0 {
            let Some(c) = st.chunks.front_mut() else {
                break;
            };
            let b = c.bytes();
            let n = b.len().min(buf.remaining());
            buf.put_slice(&b[..n]);
            if n == b.len() {
                st.chunks.pop_front();
            } else {
                c.advance(n);
            }
            st.buffered -= n;
        }
        let resume = st.read_paused && st.buffered <= READ_LOW;
        if resume {
            st.read_paused = false;
        }
        drop(st);
        if resume {
            self.transport.resume_reading();
        }
        Poll::Ready(Ok(()))
    }
}

impl Write for HyperIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(p) = self.write_blocked(cx) {
            return p;
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send(buf.to_vec())
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(p) = self.write_blocked(cx) {
            return p;
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut v = Vec::with_capacity(total);
        for b in bufs {
            v.extend_from_slice(b);
        }
        self.send(v)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let st = self.st.borrow();
        match (&st.error, st.lost) {
            (Some(e), _) => Poll::Ready(Err(to_io(e))),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.transport.can_write_eof() {
            // (Already sent, or closing: nothing more to do.)
            let _ = self.transport.write_eof();
        } else {
            self.transport.close();
        }
        Poll::Ready(Ok(()))
    }
}

impl HyperIo {
    fn pair(on_connect: Option<Box<dyn FnOnce(HyperIo)>>) -> (HyperProtocol, Rc<RefCell<IoState>>) {
        let st = Rc::new(RefCell::new(IoState::default()));
        (
            HyperProtocol {
                st: st.clone(),
                on_connect,
            },
            st,
        )
    }
}

// ------------------------------------------------------------------ executor

/// hyper's executor on a ringloop loop: each future hyper hands it (an
/// HTTP/2 stream, a client connection) becomes a task on the loop, so it
/// need not be `Send`. Equivalent to tokio's `spawn_local`.
///
/// ```
/// use hyper::rt::Executor;
/// use ringloop::AbstractEventLoop;
///
/// ringloop::run(async {
///     let lp = ringloop::get_running_loop()?;
///     let done = lp.create_future::<u32>();
///     // A !Send future (it holds an Rc) runs as a task on the loop.
///     let (d2, rc) = (done.clone(), std::rc::Rc::new(7));
///     ringloop::hyper::LoopExecutor::new(&lp).execute(async move {
///         let _ = d2.set_result(*rc);
///     });
///     assert_eq!(done.await?, 7);
///     Ok::<(), ringloop::Error>(())
/// })??;
/// # Ok::<(), ringloop::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LoopExecutor {
    lp: EventLoop,
}

impl LoopExecutor {
    /// An executor spawning on `lp`.
    pub fn new(lp: &EventLoop) -> LoopExecutor {
        LoopExecutor { lp: lp.clone() }
    }

    /// An executor spawning on the running loop.
    ///
    /// # Errors
    ///
    /// As [`get_running_loop`].
    pub fn current() -> Result<LoopExecutor> {
        Ok(LoopExecutor {
            lp: get_running_loop()?,
        })
    }
}

impl<F> Executor<F> for LoopExecutor
where
    F: Future + 'static,
    F::Output: 'static,
{
    fn execute(&self, fut: F) {
        // (Dropping the handle detaches the task.)
        drop(self.lp.spawn_task(fut, None));
    }
}

// ------------------------------------------------------------------ timer

/// hyper's timer on the loop's timer heap (the timers of `call_at`).
///
/// Its sleeps are [`LoopSleep`]s. Use it on the loop's thread; it holds
/// nothing, so it is `Send + Sync` as hyper's builders ask.
///
/// ```
/// use std::time::{Duration, Instant};
/// use hyper::rt::Timer;
/// use ringloop::hyper::LoopTimer;
///
/// ringloop::run(async {
///     let t0 = Instant::now();
///     LoopTimer.sleep(Duration::from_millis(5)).await;
///     assert!(t0.elapsed() >= Duration::from_millis(5));
///     // A sleep moved by `reset` ends at its new deadline.
///     let mut s = LoopTimer.sleep(Duration::from_secs(3600));
///     LoopTimer.reset(&mut s, Instant::now());
///     s.await;
/// })?;
/// # Ok::<(), ringloop::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopTimer;

impl Timer for LoopTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        // (A duration past the clock's end is a sleep that never ends.)
        let deadline = Instant::now()
            .checked_add(duration)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86400 * 365 * 30));
        Box::pin(LoopSleep::until(deadline))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(LoopSleep::until(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<LoopSleep>() {
            Some(s) => s.get_mut().reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// A loop timer a slot holds: its handle, the epoch its callback names,
/// its deadline and the loop it runs on.
struct SlotTimer {
    handle: TimerHandle,
    epoch: u64,
    at: Instant,
    loop_id: u64,
}

/// One sleep's state, in its thread's registry. A slot whose sleep is gone
/// (`generation == 0`) is idle and may keep its loop timer pending, for
/// the next sleep to adopt.
struct Slot {
    /// The owning sleep's generation; 0 while idle.
    generation: u64,
    fired: bool,
    waker: Option<Waker>,
    /// The owning sleep's deadline (the timer may be due earlier).
    deadline: Instant,
    timer: Option<SlotTimer>,
}

/// The sleeps of one thread. A [`LoopSleep`] names its slot by key and
/// generation and its thread by the registry's id.
struct Registry {
    id: u64,
    generation: u64,
    epoch: u64,
    slots: Slab<Slot>,
    /// Idle slots, the latest last.
    idle: Vec<usize>,
}

/// Idle slots kept with their loop timer pending; past this a dropped
/// sleep's timer is cancelled.
const IDLE_TIMERS: usize = 1024;

static NEXT_REGISTRY: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static REGISTRY: RefCell<Registry> = RefCell::new(Registry {
        id: NEXT_REGISTRY.fetch_add(1, Ordering::Relaxed),
        generation: 0,
        epoch: 0,
        slots: Slab::new(),
        idle: Vec::new(),
    });
}

/// Sleeps armed on this thread and not yet dropped (a `diagnostics`
/// test hook: a dropped sleep must free its slot, on any thread).
#[cfg(feature = "diagnostics")]
pub fn armed_sleeps() -> usize {
    REGISTRY.with(|r| r.borrow().slots.len() - r.borrow().idle.len())
}

fn registry_id() -> u64 {
    REGISTRY.with(|r| r.borrow().id)
}

/// Arms a loop timer for slot `key` at `at` on `lp`.
fn start_timer(r: &mut Registry, lp: &EventLoop, loop_id: u64, key: usize, at: Instant) -> bool {
    r.epoch += 1;
    let epoch = r.epoch;
    match lp.call_at(at, move || fire(key, epoch)) {
        Ok(handle) => {
            r.slots[key].timer = Some(SlotTimer {
                handle,
                epoch,
                at,
                loop_id,
            });
            true
        }
        Err(_) => false,
    }
}

/// Takes a slot for a new sleep until `deadline` on `lp`; `None` if the
/// loop is closed. An idle slot whose loop timer is due no later than
/// `deadline` (on the same loop) keeps that timer: when it fires early,
/// [`fire`] arms it again for the rest. (hyper's HTTP/1 server makes one
/// sleep per request head; this way a steady connection costs no loop
/// timer per request.)
fn arm(deadline: Instant, waker: Waker, lp: &EventLoop) -> Option<(usize, u64)> {
    let loop_id = lp.handle().remote.loop_id;
    let (stale, ok, key, generation) = REGISTRY.with(|r| {
        let r = &mut *r.borrow_mut();
        r.generation += 1;
        let generation = r.generation;
        let key = match r.idle.pop() {
            Some(k) => k,
            None => r.slots.insert(Slot {
                generation: 0,
                fired: false,
                waker: None,
                deadline,
                timer: None,
            }),
        };
        let s = &mut r.slots[key];
        s.generation = generation;
        s.fired = false;
        s.waker = Some(waker);
        s.deadline = deadline;
        let mut stale = None;
        let keep = s
            .timer
            .as_ref()
            .is_some_and(|t| t.at <= deadline && t.loop_id == loop_id);
        if !keep {
            stale = s.timer.take();
        }
        let ok = keep || start_timer(r, lp, loop_id, key, deadline);
        if !ok {
            let s = &mut r.slots[key];
            s.generation = 0;
            s.waker = None;
            r.idle.push(key);
        }
        (stale, ok, key, generation)
    });
    // (Cancelled outside the borrow: the timer is the loop's.)
    if let Some(t) = stale {
        t.handle.cancel();
    }
    ok.then_some((key, generation))
}

/// The loop timer of epoch `epoch` of slot `key` fired.
fn fire(key: usize, epoch: u64) {
    let w = REGISTRY.with(|r| {
        let r = &mut *r.borrow_mut();
        let s = r.slots.get_mut(key)?;
        let t = s.timer.take_if(|t| t.epoch == epoch)?;
        if s.generation == 0 {
            return None;
        }
        if t.at < s.deadline {
            // An adopted timer, due before this sleep's deadline: again
            // for the rest (in a loop callback: the loop is running).
            let deadline = s.deadline;
            if let Ok(lp) = get_running_loop() {
                if start_timer(r, &lp, t.loop_id, key, deadline) {
                    return None;
                }
            }
            let s = &mut r.slots[key];
            s.fired = true;
            return s.waker.take();
        }
        s.fired = true;
        s.waker.take()
    });
    if let Some(w) = w {
        w.wake();
    }
}

/// Gives slot `(key, generation)` of this thread's registry back: idle,
/// its loop timer left pending for the next sleep to adopt (cancelled
/// past [`IDLE_TIMERS`] idle slots).
fn disarm(key: usize, generation: u64) {
    let stale = REGISTRY.try_with(|r| {
        let r = &mut *r.borrow_mut();
        let s = r.slots.get_mut(key)?;
        if s.generation != generation {
            return None;
        }
        s.generation = 0;
        s.fired = false;
        let w = s.waker.take();
        let t = if r.idle.len() >= IDLE_TIMERS {
            s.timer.take()
        } else {
            None
        };
        r.idle.push(key);
        Some((w, t))
    });
    // (Dropped outside the borrow: the timer and the waker are the loop's.)
    if let Ok(Some((w, t))) = stale {
        drop(w);
        if let Some(t) = t {
            t.handle.cancel();
        }
    }
}

/// A hyper sleep on the loop's timers, made by [`LoopTimer`].
///
/// hyper requires `Send + Sync` sleeps; a loop's timers are neither. This
/// type holds only `Send + Sync` data: the deadline, the id of the thread
/// that made it, and once polled a key into that thread's registry of
/// armed sleeps (where the waker and the loop's [`TimerHandle`] live) and a
/// [`LoopHandle`] to the loop it was armed on. It is armed lazily, on the
/// first poll, with the running loop's `call_at`, or by adopting the loop
/// timer a dropped sleep left pending when that one is due no later (it
/// is armed again for the rest when it fires early): hyper's per-request
/// header timeout then costs no loop timer per request.
///
/// # Panics
///
/// Polling or resetting it on another thread than the one that made it
/// panics (a loop and its timers belong to one thread), and so does a
/// first poll with no ringloop loop running on the thread. Dropping it on
/// another thread is allowed: its slot is freed on its loop's thread
/// through the [`LoopHandle`] (`call_soon_threadsafe`).
pub struct LoopSleep {
    deadline: Instant,
    home: u64,
    armed: Option<(usize, u64)>,
    handle: Option<LoopHandle>,
}

impl LoopSleep {
    /// A sleep until `deadline`, belonging to the calling thread.
    pub fn until(deadline: Instant) -> LoopSleep {
        LoopSleep {
            deadline,
            home: registry_id(),
            armed: None,
            handle: None,
        }
    }

    /// The deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    fn check_thread(&self, what: &str) {
        assert!(
            registry_id() == self.home,
            "a ringloop hyper sleep was {what} on another thread than the one that made it \
             (a loop and its timers belong to one thread)"
        );
    }

    /// Moves the deadline (hyper's `Timer::reset`): disarms it; the next
    /// poll arms it again.
    ///
    /// # Panics
    ///
    /// On another thread than the one that made it.
    pub fn reset(&mut self, deadline: Instant) {
        self.check_thread("reset");
        if let Some((key, generation)) = self.armed.take() {
            disarm(key, generation);
        }
        self.deadline = deadline;
    }
}

impl Future for LoopSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.check_thread("polled");
        if let Some((key, generation)) = this.armed {
            return REGISTRY.with(|r| {
                let mut r = r.borrow_mut();
                match r.slots.get_mut(key) {
                    Some(s) if s.generation == generation => {
                        if s.fired {
                            Poll::Ready(())
                        } else {
                            set_waker(&mut s.waker, cx);
                            Poll::Pending
                        }
                    }
                    // (Freed under it: cannot happen on its own thread.)
                    _ => Poll::Ready(()),
                }
            });
        }
        if Instant::now() >= this.deadline {
            return Poll::Ready(());
        }
        let lp = match get_running_loop() {
            Ok(lp) => lp,
            Err(_) => panic!("a ringloop hyper sleep was polled with no ringloop loop running"),
        };
        match arm(this.deadline, cx.waker().clone(), &lp) {
            Some(slot) => {
                this.armed = Some(slot);
                this.handle = Some(lp.handle());
                Poll::Pending
            }
            // A closed loop: nothing will run.
            None => Poll::Ready(()),
        }
    }
}

impl Sleep for LoopSleep {}

impl Drop for LoopSleep {
    fn drop(&mut self) {
        let Some((key, generation)) = self.armed.take() else {
            return;
        };
        // (A thread that is ending has no registry any more: nothing to free.)
        let home = REGISTRY
            .try_with(|r| r.borrow().id)
            .is_ok_and(|id| id == self.home);
        if home {
            disarm(key, generation);
        } else if let Some(h) = self.handle.take() {
            // Freed on the loop's own thread; a closed loop freed it already.
            let _ = h.call_soon_threadsafe(move || disarm(key, generation));
        }
    }
}

impl fmt::Debug for LoopSleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopSleep")
            .field("deadline", &self.deadline)
            .field("armed", &self.armed.is_some())
            .finish()
    }
}

// ------------------------------------------------------------------ server

/// hyper-util's HTTP/1 + HTTP/2 server builder with the loop's executor
/// ([`LoopExecutor`]) and timer ([`LoopTimer`]) on both protocols (so
/// hyper's timeouts, e.g. HTTP/1's `header_read_timeout`, 30 s by default
/// with a timer, work). Tune it (`b.http1().header_read_timeout(..)`,
/// `b.http2().max_concurrent_streams(..)`, `http1_only()`, …) and pass it
/// to [`serve_with`].
///
/// ```
/// use std::time::Duration;
/// use http_body_util::Full;
/// use hyper::body::{Bytes, Incoming};
/// use hyper::{Request, Response};
/// use ringloop::ServerOptions;
///
/// ringloop::run(async {
///     let mut b = ringloop::hyper::builder()?;
///     b.http1().header_read_timeout(Duration::from_secs(5));
///     let b = b.http1_only();
///     let server = ringloop::hyper::serve_with(
///         b,
///         |_conn| hyper::service::service_fn(|_req: Request<Incoming>| async {
///             Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("hi"))))
///         }),
///         ServerOptions { hosts: vec!["127.0.0.1".into()], ..Default::default() },
///     )
///     .await?;
///     assert_eq!(server.active_connections(), 0);
///     // No connection open: the graceful shutdown is over at once.
///     assert!(server.graceful_shutdown(Duration::from_secs(1)).await);
///     Ok::<(), ringloop::Error>(())
/// })??;
/// # Ok::<(), ringloop::Error>(())
/// ```
///
/// # Errors
///
/// As [`get_running_loop`].
pub fn builder() -> Result<auto::Builder<LoopExecutor>> {
    let mut b = auto::Builder::new(LoopExecutor::current()?);
    b.http1().timer(LoopTimer);
    b.http2().timer(LoopTimer);
    Ok(b)
}

/// What the server's connections share.
struct Shared<F> {
    builder: auto::Builder<LoopExecutor>,
    make_service: F,
    shutdown: Cell<bool>,
    /// Each open connection's waker, told when a shutdown is asked.
    conns: RefCell<Slab<Waker>>,
}

/// A hyper server on ringloop: the [`Server`] accepting, and one task per
/// connection running hyper's `serve_connection`.
///
/// Dropping every handle to it stops the accepting (as [`Server`]'s scope
/// rule); open connections go on. Clones share the server.
#[derive(Clone)]
pub struct HyperServer {
    server: Server,
    shutdown: Rc<dyn Fn()>,
}

impl HyperServer {
    /// The ringloop server accepting the connections.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The addresses listened on.
    pub fn sockets(&self) -> Vec<SockAddr> {
        self.server.sockets()
    }

    /// Connections open now.
    pub fn active_connections(&self) -> usize {
        self.server.active_connections()
    }

    /// Starts a graceful shutdown: stops accepting ([`Server::close`]) and
    /// calls hyper's `graceful_shutdown` on every open connection (and on
    /// any opened after this): idle connections close, requests in flight
    /// finish and their connections close after the answer (HTTP/2: a
    /// `GOAWAY`, streams in flight finish). Idempotent.
    pub fn shutdown(&self) {
        self.server.close();
        (self.shutdown)();
    }

    /// Waits until the server is closed and every connection is gone.
    pub async fn wait_closed(&self) {
        self.server.wait_closed().await
    }

    /// [`shutdown`](Self::shutdown), then waits up to `grace` for the
    /// connections to finish and aborts those still open after it.
    /// Returns true if every connection finished in time.
    pub async fn graceful_shutdown(&self, grace: Duration) -> bool {
        self.shutdown();
        if crate::wait_for(self.wait_closed(), grace).await.is_ok() {
            return true;
        }
        self.server.abort_clients();
        self.wait_closed().await;
        false
    }
}

impl fmt::Debug for HyperServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<HyperServer {:?}>", self.server)
    }
}

/// Serves hyper services on every connection of a new server, with
/// [`builder`]'s settings (HTTP/1.1 and HTTP/2 with prior knowledge, told
/// apart by the connection's first bytes; over TLS too, with `ssl` in
/// `opts`: add `h2` and `http/1.1` to the config's ALPN protocols for
/// clients that negotiate).
///
/// `make_service` is called once per connection with its transport (peer
/// address, TLS info) and returns the connection's service, e.g.
/// `hyper::service::service_fn(..)`. Neither it, the service nor its
/// futures need to be `Send`. A connection's errors (a client sending
/// garbage, a header read timeout) end that connection only; they are
/// logged at debug level.
///
/// # Errors
///
/// As [`AbstractEventLoop::create_server_with`].
pub async fn serve<F, S, B>(make_service: F, opts: ServerOptions) -> Result<HyperServer>
where
    F: Fn(&Transport) -> S + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + 'static,
    S::Future: 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    LoopExecutor: auto::HttpServerConnExec<S::Future, B>,
{
    serve_with(builder()?, make_service, opts).await
}

/// [`serve`] with a builder of your own (start from [`builder`]).
///
/// # Errors
///
/// As [`AbstractEventLoop::create_server_with`].
pub async fn serve_with<F, S, B>(
    builder: auto::Builder<LoopExecutor>,
    make_service: F,
    opts: ServerOptions,
) -> Result<HyperServer>
where
    F: Fn(&Transport) -> S + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + 'static,
    S::Future: 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    LoopExecutor: auto::HttpServerConnExec<S::Future, B>,
{
    let lp = get_running_loop()?;
    let shared = Rc::new(Shared {
        builder,
        make_service,
        shutdown: Cell::new(false),
        conns: RefCell::new(Slab::new()),
    });
    let (l2, s2) = (lp.clone(), shared.clone());
    let factory = move || {
        let (l3, s3) = (l2.clone(), s2.clone());
        HyperIo::pair(Some(Box::new(move |io: HyperIo| {
            drop(l3.spawn_task(serve_one(s3, io), None));
        })))
        .0
    };
    let server = lp.create_server_with(factory, opts).await?;
    let weak = Rc::downgrade(&shared);
    Ok(HyperServer {
        server,
        shutdown: Rc::new(move || {
            let Some(s) = weak.upgrade() else { return };
            if s.shutdown.replace(true) {
                return;
            }
            let ws: Vec<Waker> = s.conns.borrow().iter().map(|(_, w)| w.clone()).collect();
            ws.into_iter().for_each(Waker::wake);
        }),
    })
}

/// One connection's task.
async fn serve_one<F, S, B>(shared: Rc<Shared<F>>, io: HyperIo)
where
    F: Fn(&Transport) -> S + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + 'static,
    S::Future: 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    LoopExecutor: auto::HttpServerConnExec<S::Future, B>,
{
    let peer = io.transport().peername();
    let service = (shared.make_service)(io.transport());
    let conn = shared.builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    struct Registered<'a>(&'a RefCell<Slab<Waker>>, usize);
    impl Drop for Registered<'_> {
        fn drop(&mut self) {
            self.0.borrow_mut().remove(self.1);
        }
    }
    let key = shared.conns.borrow_mut().insert(Waker::noop().clone());
    let _registered = Registered(&shared.conns, key);
    let mut told = false;
    let r = std::future::poll_fn(|cx| {
        if !told {
            if shared.shutdown.get() {
                conn.as_mut().graceful_shutdown();
                told = true;
            } else if let Some(w) = shared.conns.borrow_mut().get_mut(key) {
                if !w.will_wake(cx.waker()) {
                    *w = cx.waker().clone();
                }
            }
        }
        conn.as_mut().poll(cx)
    })
    .await;
    if let Err(e) = r {
        log::debug!("hyper connection from {peer:?} ended with an error: {e}");
    }
}

// ------------------------------------------------------------------ client

/// Connects (TCP or TLS, every [`ConnectOptions`] option) and returns the
/// connection as hyper's I/O, for hyper's client handshakes
/// ([`http1_client`], [`http2_client`], or `hyper::client::conn` with a
/// builder of your own).
///
/// # Errors
///
/// As [`AbstractEventLoop::create_connection_with`].
pub async fn connect(opts: ConnectOptions) -> Result<HyperIo> {
    let lp = get_running_loop()?;
    let (proto, st) = HyperIo::pair(None);
    let transport = lp.create_connection_with(move || proto, opts).await?;
    Ok(HyperIo { st, transport })
}

/// hyper's HTTP/1 client handshake on `io`; the connection runs as a task
/// on the loop (ending when the returned sender and its clones are gone
/// and the last answer is read).
///
/// # Errors
///
/// hyper's handshake error, as [`Error::Io`] (see [`to_error`]).
pub async fn http1_client<B>(io: HyperIo) -> Result<::hyper::client::conn::http1::SendRequest<B>>
where
    B: Body + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let lp = get_running_loop()?;
    let (send, conn) = ::hyper::client::conn::http1::handshake(io)
        .await
        .map_err(to_error)?;
    run_client_connection(&lp, conn, "HTTP/1");
    Ok(send)
}

/// Drives a client connection as a task on the loop (it ends with the
/// last `SendRequest`); an error is logged, the requests see their own.
fn run_client_connection<C, E>(lp: &EventLoop, conn: C, what: &'static str)
where
    C: Future<Output = std::result::Result<(), E>> + 'static,
    E: fmt::Display,
{
    drop(lp.spawn_task(
        async move {
            if let Err(e) = conn.await {
                log::debug!("hyper {what} client connection ended with an error: {e}");
            }
        },
        None,
    ));
}

/// hyper's HTTP/2 client handshake on `io` (prior knowledge, or ALPN `h2`
/// over TLS), with the loop's executor and timer; the connection runs as
/// a task on the loop.
///
/// ```
/// use http_body_util::{BodyExt, Empty, Full};
/// use hyper::body::{Bytes, Incoming};
/// use hyper::{Request, Response, Version};
/// use ringloop::{ConnectOptions, ServerOptions};
///
/// ringloop::run(async {
///     let server = ringloop::hyper::serve(
///         |_conn| hyper::service::service_fn(|req: Request<Incoming>| async move {
///             let v = format!("{:?}", req.version());
///             Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(v))))
///         }),
///         ServerOptions { hosts: vec!["127.0.0.1".into()], ..Default::default() },
///     )
///     .await?;
///     let port = server.sockets()[0].as_socket().unwrap().port();
///     let io = ringloop::hyper::connect(ConnectOptions {
///         host: Some("127.0.0.1".into()),
///         port,
///         ..Default::default()
///     })
///     .await?;
///     let mut h2 = ringloop::hyper::http2_client(io).await?;
///     let req = Request::get("http://127.0.0.1/").body(Empty::<Bytes>::new()).unwrap();
///     let res = h2.send_request(req).await.map_err(ringloop::hyper::to_error)?;
///     assert_eq!(res.version(), Version::HTTP_2);
///     let body = res.into_body().collect().await.map_err(ringloop::hyper::to_error)?;
///     assert_eq!(body.to_bytes(), "HTTP/2.0");
///     drop(h2);
///     server.graceful_shutdown(std::time::Duration::from_secs(5)).await;
///     Ok::<(), ringloop::Error>(())
/// })??;
/// # Ok::<(), ringloop::Error>(())
/// ```
///
/// # Errors
///
/// hyper's handshake error, as [`Error::Io`] (see [`to_error`]).
pub async fn http2_client<B>(io: HyperIo) -> Result<::hyper::client::conn::http2::SendRequest<B>>
where
    B: Body + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let lp = get_running_loop()?;
    let (send, conn) = ::hyper::client::conn::http2::Builder::new(LoopExecutor::new(&lp))
        .timer(LoopTimer)
        .handshake(io)
        .await
        .map_err(to_error)?;
    run_client_connection(&lp, conn, "HTTP/2");
    Ok(send)
}
