//! # ringloop
//!
//! Python's asyncio event-loop model in Rust, on Linux: a completion-based
//! **proactor** loop on io_uring, and an epoll **selector** loop as the
//! fallback, behind one [`AbstractEventLoop`] trait.
//!
//! ## Architecture in a screen
//!
//! ```text
//!  user code: async fns, callbacks, tasks
//!  ──────────────────────────────────────────────────────────────
//!  loop core   EventLoop: ready queue, timer heap, tasks, futures,
//!              run_once, exception handler, debug mode, LoopHandle
//!  socket API  sock_* and add_reader/add_writer, written once
//!  driver      owned-buffer ops + turn(timeout)
//!              ├── io_uring (proactor): one SQE per op, CQE completes it
//!              └── epoll (selector): try the syscall, park on EAGAIN
//! ```
//!
//! * An operation takes its buffers by value and hands them back with its
//!   result ([`IoBuf`], [`IoBufMut`]); dropping its future mid-flight is
//!   memory-safe (the driver keeps the buffers until the kernel's final
//!   completion) and loses nothing (data a cancelled receive still got is
//!   kept for the next receive; an fd a cancelled accept still got is closed).
//! * Each loop iteration is CPython's `_run_once`: one wait on the driver
//!   (at most one `io_uring_enter` on the proactor), due timers, then exactly
//!   the callbacks ready at that moment.
//! * [`EventLoop::new`] picks the proactor when io_uring works here (probing
//!   every opcode and feature it uses) and the selector otherwise, e.g. under
//!   Docker's default seccomp profile; `RINGLOOP_BACKEND=proactor|selector`
//!   forces one.
//! * A loop belongs to one thread (`!Send`); other threads use [`LoopHandle`].
//! * Every loop method (callbacks, tasks, `sock_*`, connections, servers,
//!   datagram endpoints, DNS, executors, fd watchers, pipes) is a method of
//!   [`AbstractEventLoop`], which [`EventLoop`] implements on both backends
//!   and the [`prelude`] brings into scope; code generic over
//!   `L: AbstractEventLoop` can do everything a loop does.
//! * With the `hyper` cargo feature, `ringloop::hyper` runs hyper 1.x on
//!   the loop: an I/O adapter on transports (plain and TLS), a `!Send`
//!   executor, a timer on the loop's timers, and serve / client helpers.
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//! use ringloop::prelude::*;
//!
//! let lp = EventLoop::new()?;
//! let order = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
//! let o = order.clone();
//! lp.call_later(Duration::from_millis(5), move || o.borrow_mut().push("later"))?;
//! let o = order.clone();
//! lp.call_soon(move || o.borrow_mut().push("soon"))?;
//! let l2 = lp.clone();
//! lp.call_later(Duration::from_millis(10), move || l2.stop())?;
//! lp.run_forever()?;
//! assert_eq!(*order.borrow(), ["soon", "later"]);
//! lp.close()?;
//! # Ok::<(), ringloop::Error>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod base_loop;
mod connect;
pub mod driver;
mod error;
mod events;
mod executor;
mod futures;
#[cfg(feature = "hyper")]
pub mod hyper;
pub mod locks;
pub mod protocols;
pub mod queues;
mod runners;
// One loop per core (issue 16).
mod per_core;
// The loop's socket, pipe and fd-watcher API lives with the loop.
pub(crate) use base_loop::{pipes, sock};
mod server;
mod streams;
pub mod subprocess;
mod taskgroups;
mod tasks;
mod timeouts;
pub mod transports;

pub use base_loop::{
    EventLoop, LoopHandle, ProactorEventLoop, SelectorEventLoop, UnhandledPanic, default_backend,
    proactor_available,
};
pub use connect::{ConnectOptions, DatagramOptions};
pub use driver::buf::{IoBuf, IoBufMut, WriteBuf};
pub use driver::pool::RecvBuf;
pub use driver::{Backend, DriverStats};
pub use error::{Error, Result};
pub use events::{
    AbstractEventLoop, ExceptionContext, ExceptionHandler, Handle, TimerHandle, get_running_loop,
};
pub use executor::{ConcurrentFuture, ThreadPool, to_thread};
pub use futures::LoopFuture;
pub use pipes::{Pipe, pipe};
// One loop per core (issue 16).
pub use per_core::{
    PerCoreContext, PerCoreOptions, PerCoreStop, allowed_cpus, run_per_core, serve_per_core,
    serve_per_core_streams,
};
pub use protocols::{BaseProtocol, BufferedProtocol, DatagramProtocol, Protocol};
pub use runners::{EXECUTOR_SHUTDOWN_TIMEOUT, Runner, SigintHandling, run};
pub use server::{Server, ServerOptions};
pub use sock::{Acceptor, Domain, SockAddr, SockProtocol, Socket, Type};
pub use streams::{
    DEFAULT_LIMIT, StreamReader, StreamWriter, open_connection, open_connection_with,
    open_unix_connection, open_unix_connection_with, start_server, start_server_with,
    start_unix_server, start_unix_server_with,
};
pub use subprocess::{
    Process, Stdio, SubprocessOptions, SubprocessProtocol, SubprocessTransport,
    create_subprocess_exec, create_subprocess_shell,
};
pub use taskgroups::TaskGroup;
pub use tasks::api::{
    AsCompleted, ReturnWhen, as_completed, gather, gather_all, shield, shield_task, sleep,
    sleep_until, wait, wait_for, wait_for_task,
};
pub use tasks::{Task, TaskHook, TaskRef, all_tasks, current_task};
pub use timeouts::{Timeout, timeout, timeout_at};
pub use transports::{DatagramTransport, ExtraInfo, StartTlsOptions, TlsConfig, Transport};

/// TLS (rustls): the configuration types, the crypto provider configs are
/// built with, and the rustls crate itself (the version ringloop uses).
pub mod tls {
    pub use crate::transports::crypto_provider;
    pub use crate::transports::tls::{DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT};
    pub use crate::transports::{StartTlsOptions, TlsConfig};
    pub use rustls;
}

/// The names most programs need: `use ringloop::prelude::*;`.
pub mod prelude {
    pub use crate::{
        AbstractEventLoop, Backend, BaseProtocol, Error, EventLoop, LoopFuture, Result, SockAddr,
        Socket, Task, TaskGroup, all_tasks, current_task, gather, get_running_loop, run, sleep,
        timeout, wait_for,
    };
}
