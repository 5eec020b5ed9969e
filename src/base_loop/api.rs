//! `AbstractEventLoop` for `EventLoop`: the public face, delegating to the
//! implementations in `base_loop`, `connect`, `server`, `sock`, `readers`,
//! `pipes` and `executor` (each a `pub(crate) …_impl` method, so the trait
//! is the one public way to call them).
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::Path;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::{EventLoop, LoopHandle, default_handler};
use crate::connect::{ConnectOptions, DatagramOptions};
use crate::driver::buf::{IoBuf, IoBufMut};
use crate::error::{Error, Result};
use crate::events::{AbstractEventLoop, ExceptionContext, ExceptionHandler, Handle, TimerHandle};
use crate::executor::ThreadPool;
use crate::futures::LoopFuture;
use crate::pipes::Pipe;
use crate::protocols::{DatagramProtocol, Protocol};
use crate::server::{Server, ServerOptions};
use crate::sock::{SockAddr, Socket};
use crate::subprocess::{SubprocessOptions, SubprocessProtocol, SubprocessTransport};
use crate::tasks::{Task, TaskHook};
use crate::transports::{DatagramTransport, Transport};
use crate::{Backend, DriverStats};

impl AbstractEventLoop for EventLoop {
    fn run_until_complete<F>(&self, fut: F) -> Result<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.check_open()?;
        if self.core.running.get() {
            return Err(Error::state("this event loop is already running"));
        }
        let mut task = self.spawn_task(fut, None);
        let lp = self.clone();
        let id = task.add_done_callback(move |_| lp.stop());
        let run = self.run_forever_impl();
        task.remove_done_callback(id);
        run?;
        if !task.done() {
            return Err(Error::state(
                "event loop stopped before the future completed",
            ));
        }
        let mut cx = Context::from_waker(Waker::noop());
        match std::pin::Pin::new(&mut task).poll(&mut cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(Error::state("task done but its result is missing")),
        }
    }

    fn run_forever(&self) -> Result<()> {
        self.run_forever_impl()
    }

    fn stop(&self) {
        self.core.stopping.set(true);
    }

    fn is_running(&self) -> bool {
        self.core.running.get()
    }

    fn is_closed(&self) -> bool {
        self.core.closed.get()
    }

    fn close(&self) -> Result<()> {
        self.close_impl()
    }

    fn call_soon(&self, cb: impl FnOnce() + 'static) -> Result<Handle> {
        self.check_open()?;
        Ok(self.call_soon_impl(cb, &"callback"))
    }

    fn call_soon_threadsafe(&self, cb: impl FnOnce() + Send + 'static) -> Result<()> {
        self.handle().call_soon_threadsafe(cb)
    }

    fn call_later(&self, delay: Duration, cb: impl FnOnce() + 'static) -> Result<TimerHandle> {
        let when = Instant::now().checked_add(delay).ok_or_else(|| {
            Error::InvalidArgument(format!("delay {delay:?} overflows the clock"))
        })?;
        self.call_at(when, cb)
    }

    fn call_at(&self, when: Instant, cb: impl FnOnce() + 'static) -> Result<TimerHandle> {
        self.check_open()?;
        Ok(self.call_at_impl(when, cb))
    }

    fn time(&self) -> Instant {
        Instant::now()
    }

    fn handle(&self) -> LoopHandle {
        LoopHandle {
            remote: self.core.remote.clone(),
        }
    }

    fn create_future<T: 'static>(&self) -> LoopFuture<T> {
        LoopFuture::new(self.clone())
    }

    fn create_task<F>(&self, fut: F) -> Task<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.spawn_task(fut, None)
    }

    fn create_named_task<F>(&self, name: impl Into<String>, fut: F) -> Task<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.spawn_task(fut, Some(name.into()))
    }

    fn set_task_factory(&self, hook: Option<TaskHook>) {
        *self.core.task_hook.borrow_mut() = hook;
    }

    fn get_task_factory(&self) -> Option<TaskHook> {
        self.core.task_hook.borrow().clone()
    }

    fn set_exception_handler(&self, handler: Option<ExceptionHandler>) {
        *self.core.handler.borrow_mut() = handler;
    }

    fn get_exception_handler(&self) -> Option<ExceptionHandler> {
        self.core.handler.borrow().clone()
    }

    fn default_exception_handler(&self, ctx: &ExceptionContext) {
        default_handler(ctx)
    }

    fn call_exception_handler(&self, ctx: ExceptionContext) {
        self.call_exception_handler_impl(ctx)
    }

    fn get_debug(&self) -> bool {
        self.core.debug.get()
    }

    fn set_debug(&self, on: bool) {
        self.core.debug.set(on)
    }

    fn backend(&self) -> Backend {
        self.core.backend
    }

    fn driver_stats(&self) -> DriverStats {
        self.driver_stats_impl()
    }

    fn create_connection<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<Transport>> {
        self.create_connection_impl(factory, host, port)
    }

    fn create_connection_with<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        opts: ConnectOptions,
    ) -> impl Future<Output = Result<Transport>> {
        self.create_connection_with_impl(factory, opts)
    }

    fn create_unix_connection<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        path: impl AsRef<Path>,
    ) -> impl Future<Output = Result<Transport>> {
        self.create_unix_connection_impl(factory, path)
    }

    fn connect_accepted_socket<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        sock: Socket,
    ) -> Result<Transport> {
        self.connect_accepted_socket_impl(factory, sock)
    }

    fn create_datagram_endpoint<P: DatagramProtocol>(
        &self,
        factory: impl FnOnce() -> P,
        opts: DatagramOptions,
    ) -> impl Future<Output = Result<DatagramTransport>> {
        self.create_datagram_endpoint_impl(factory, opts)
    }

    fn create_server<P, F>(
        &self,
        factory: F,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<Server>>
    where
        P: Protocol,
        F: Fn() -> P + 'static,
    {
        self.create_server_impl(factory, host, port)
    }

    fn create_server_with<P, F>(
        &self,
        factory: F,
        opts: ServerOptions,
    ) -> impl Future<Output = Result<Server>>
    where
        P: Protocol,
        F: Fn() -> P + 'static,
    {
        self.create_server_with_impl(factory, opts)
    }

    fn create_unix_server<P, F>(
        &self,
        factory: F,
        path: impl AsRef<Path>,
    ) -> impl Future<Output = Result<Server>>
    where
        P: Protocol,
        F: Fn() -> P + 'static,
    {
        self.create_unix_server_impl(factory, path)
    }

    fn create_unix_server_with<P, F>(
        &self,
        factory: F,
        path: impl AsRef<Path>,
        opts: ServerOptions,
    ) -> impl Future<Output = Result<Server>>
    where
        P: Protocol,
        F: Fn() -> P + 'static,
    {
        self.create_unix_server_with_impl(factory, path, opts)
    }

    fn create_unix_connection_with<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        path: Option<&Path>,
        opts: ConnectOptions,
    ) -> impl Future<Output = Result<Transport>> {
        self.create_unix_connection_with_impl(factory, path, opts)
    }

    fn connect_accepted_socket_with<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        sock: Socket,
        ssl: crate::TlsConfig,
        opts: crate::StartTlsOptions,
    ) -> impl Future<Output = Result<Transport>> {
        self.connect_accepted_socket_with_impl(factory, sock, ssl, opts)
    }

    fn start_tls<P: Protocol>(
        &self,
        transport: &Transport,
        protocol: P,
        config: impl Into<crate::TlsConfig>,
        opts: crate::StartTlsOptions,
    ) -> impl Future<Output = Result<Transport>> {
        let (t, config) = (transport.clone(), config.into());
        async move {
            crate::transports::tls::start_tls(
                &t,
                Some(Box::new(protocol)),
                config,
                &opts,
                Vec::new(),
            )
            .await
        }
    }

    fn sock_recv(&self, sock: &Socket, nbytes: usize) -> impl Future<Output = Result<Vec<u8>>> {
        self.sock_recv_impl(sock, nbytes)
    }

    fn sock_recv_into<B: IoBufMut>(
        &self,
        sock: &Socket,
        buf: B,
    ) -> impl Future<Output = (Result<usize>, B)> {
        self.sock_recv_into_impl(sock, buf)
    }

    fn sock_recvfrom(
        &self,
        sock: &Socket,
        bufsize: usize,
    ) -> impl Future<Output = Result<(Vec<u8>, SockAddr)>> {
        self.sock_recvfrom_impl(sock, bufsize)
    }

    fn sock_recvfrom_into<B: IoBufMut>(
        &self,
        sock: &Socket,
        buf: B,
    ) -> impl Future<Output = (Result<(usize, SockAddr)>, B)> {
        self.sock_recvfrom_into_impl(sock, buf)
    }

    fn sock_sendall<B: IoBuf>(&self, sock: &Socket, data: B) -> impl Future<Output = Result<()>> {
        self.sock_sendall_impl(sock, data)
    }

    fn sock_sendto<B: IoBuf>(
        &self,
        sock: &Socket,
        data: B,
        addr: &SockAddr,
    ) -> impl Future<Output = Result<usize>> {
        self.sock_sendto_impl(sock, data, addr)
    }

    fn sock_connect(&self, sock: &Socket, addr: &SockAddr) -> impl Future<Output = Result<()>> {
        self.sock_connect_impl(sock, addr)
    }

    fn sock_accept(&self, sock: &Socket) -> impl Future<Output = Result<(Socket, SockAddr)>> {
        self.sock_accept_impl(sock)
    }

    fn add_reader(&self, fd: RawFd, cb: impl FnMut() + 'static) -> Result<()> {
        self.add_watcher(fd, false, cb)
    }

    fn remove_reader(&self, fd: RawFd) -> bool {
        self.remove_watcher(fd, false)
    }

    fn add_writer(&self, fd: RawFd, cb: impl FnMut() + 'static) -> Result<()> {
        self.add_watcher(fd, true, cb)
    }

    fn remove_writer(&self, fd: RawFd) -> bool {
        self.remove_watcher(fd, true)
    }

    fn sendfile<'a>(
        &'a self,
        transport: &'a Transport,
        file: &'a std::fs::File,
        offset: u64,
        count: Option<u64>,
        fallback: bool,
    ) -> impl Future<Output = Result<u64>> + 'a {
        self.sendfile_impl(transport, file, offset, count, fallback)
    }

    fn sock_sendfile<'a>(
        &'a self,
        sock: &'a Socket,
        file: &'a std::fs::File,
        offset: u64,
        count: Option<u64>,
        fallback: bool,
    ) -> impl Future<Output = Result<u64>> + 'a {
        self.sock_sendfile_impl(sock, file, offset, count, fallback)
    }

    fn add_signal_handler(&self, sig: i32, cb: impl FnMut() + 'static) -> Result<()> {
        self.add_signal_handler_impl(sig, cb)
    }

    fn remove_signal_handler(&self, sig: i32) -> bool {
        self.remove_signal_handler_impl(sig)
    }

    fn getaddrinfo(&self, host: &str, port: u16) -> impl Future<Output = Result<Vec<SocketAddr>>> {
        self.getaddrinfo_impl(host, port)
    }

    fn getnameinfo(
        &self,
        addr: SocketAddr,
        flags: i32,
    ) -> impl Future<Output = Result<(String, String)>> {
        self.getnameinfo_impl(addr, flags)
    }

    fn subprocess_exec<P, I, S>(
        &self,
        factory: impl FnOnce() -> P,
        program: impl AsRef<std::ffi::OsStr>,
        args: I,
        opts: SubprocessOptions,
    ) -> impl Future<Output = Result<SubprocessTransport>>
    where
        P: SubprocessProtocol,
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.subprocess_exec_impl(factory, program, args, opts)
    }

    fn subprocess_shell<P: SubprocessProtocol>(
        &self,
        factory: impl FnOnce() -> P,
        cmd: impl AsRef<std::ffi::OsStr>,
        opts: SubprocessOptions,
    ) -> impl Future<Output = Result<SubprocessTransport>> {
        self.subprocess_shell_impl(factory, cmd, opts)
    }

    fn connect_read_pipe<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        pipe: Pipe,
    ) -> impl Future<Output = Result<Transport>> {
        self.connect_read_pipe_impl(factory, pipe)
    }

    fn connect_write_pipe<P: Protocol>(
        &self,
        factory: impl FnOnce() -> P,
        pipe: Pipe,
    ) -> impl Future<Output = Result<Transport>> {
        self.connect_write_pipe_impl(factory, pipe)
    }

    fn pipe_read_into<B: IoBufMut>(
        &self,
        pipe: &Pipe,
        buf: B,
    ) -> impl Future<Output = (Result<usize>, B)> {
        self.pipe_read_into_impl(pipe, buf)
    }

    fn pipe_write_all<B: IoBuf>(&self, pipe: &Pipe, data: B) -> impl Future<Output = Result<()>> {
        self.pipe_write_all_impl(pipe, data)
    }

    fn run_in_executor<F, T>(&self, f: F) -> impl Future<Output = Result<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.run_in_executor_impl(f)
    }

    fn run_in_executor_on<F, T>(&self, pool: &ThreadPool, f: F) -> impl Future<Output = Result<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.run_in_executor_on_impl(pool, f)
    }

    fn set_default_executor(&self, pool: ThreadPool) {
        self.set_default_executor_impl(pool)
    }

    fn shutdown_default_executor(
        &self,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<()>> {
        self.shutdown_default_executor_impl(timeout)
    }
}
