//! `AbstractEventLoop` for `EventLoop`: the public face, delegating to the
//! implementations in `base_loop`, `sock` and `readers`.
#![forbid(unsafe_code)]

use std::future::Future;
use std::os::fd::RawFd;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::{EventLoop, LoopHandle, default_handler};
use crate::driver::buf::{IoBuf, IoBufMut};
use crate::error::{Error, Result};
use crate::events::{AbstractEventLoop, ExceptionContext, ExceptionHandler, Handle, TimerHandle};
use crate::futures::LoopFuture;
use crate::sock::{SockAddr, Socket};
use crate::tasks::Task;
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
}
