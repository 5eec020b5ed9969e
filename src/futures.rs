//! Loop futures: asyncio's low-level `Future`, a result slot with done callbacks.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::base_loop::EventLoop;
use crate::error::{Error, Result};

type DoneCallback<T> = Box<dyn FnOnce(&LoopFuture<T>)>;

struct Inner<T> {
    lp: EventLoop,
    state: RefCell<Option<Result<T>>>,
    waiters: RefCell<Vec<Waker>>,
    callbacks: RefCell<Vec<(u64, DoneCallback<T>)>>,
    next_cb: Cell<u64>,
}

/// A result that will be set later, bound to one loop.
///
/// Equivalent to `asyncio.Future` (named so as not to shadow
/// [`std::future::Future`]). Clones share one state. Awaiting it yields a
/// clone of the result (`T: Clone`), so it can be awaited any number of
/// times. Dropping an awaiting future does not cancel it (asyncio would);
/// call [`cancel`](Self::cancel) for that.
///
/// # Examples
///
/// ```
/// use ringloop::prelude::*;
/// let lp = EventLoop::new().unwrap();
/// let fut = lp.create_future::<u32>();
/// let f2 = fut.clone();
/// lp.call_soon(move || { f2.set_result(7).unwrap(); });
/// assert_eq!(lp.run_until_complete(async move { fut.await }).unwrap().unwrap(), 7);
/// lp.close().unwrap();
/// ```
pub struct LoopFuture<T> {
    inner: Rc<Inner<T>>,
}

impl<T> Clone for LoopFuture<T> {
    fn clone(&self) -> Self {
        LoopFuture {
            inner: self.inner.clone(),
        }
    }
}

impl<T: 'static> LoopFuture<T> {
    pub(crate) fn new(lp: EventLoop) -> LoopFuture<T> {
        LoopFuture {
            inner: Rc::new(Inner {
                lp,
                state: RefCell::new(None),
                waiters: RefCell::new(Vec::new()),
                callbacks: RefCell::new(Vec::new()),
                next_cb: Cell::new(1),
            }),
        }
    }

    fn complete(&self, r: Result<T>) -> Result<()> {
        {
            let mut st = self.inner.state.borrow_mut();
            if st.is_some() {
                return Err(Error::state("future is already done"));
            }
            *st = Some(r);
        }
        for w in self.inner.waiters.borrow_mut().drain(..) {
            w.wake();
        }
        let cbs = std::mem::take(&mut *self.inner.callbacks.borrow_mut());
        for (_, cb) in cbs {
            let me = self.clone();
            self.inner
                .lp
                .call_soon_impl(move || cb(&me), &"future done callback");
        }
        Ok(())
    }

    /// Marks the future done with `value`.
    ///
    /// Equivalent to `asyncio.Future.set_result`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] if already done.
    pub fn set_result(&self, value: T) -> Result<()> {
        self.complete(Ok(value))
    }

    /// Marks the future done with an error.
    ///
    /// Equivalent to `asyncio.Future.set_exception`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] if already done; [`Error::InvalidArgument`] for
    /// [`Error::Cancelled`] (use [`cancel`](Self::cancel)).
    pub fn set_error(&self, e: Error) -> Result<()> {
        if e.is_cancelled() {
            return Err(Error::InvalidArgument(
                "set_error cannot set Cancelled; call cancel()".into(),
            ));
        }
        self.complete(Err(e))
    }

    /// Cancels the future; false if it is already done.
    ///
    /// Equivalent to `asyncio.Future.cancel`.
    pub fn cancel(&self, msg: Option<&str>) -> bool {
        self.complete(Err(Error::Cancelled(msg.map(str::to_owned))))
            .is_ok()
    }

    /// True once a result, error or cancellation is set.
    /// Equivalent to `asyncio.Future.done`.
    pub fn done(&self) -> bool {
        self.inner.state.borrow().is_some()
    }

    /// True if cancelled. Equivalent to `asyncio.Future.cancelled`.
    pub fn cancelled(&self) -> bool {
        matches!(&*self.inner.state.borrow(), Some(Err(Error::Cancelled(_))))
    }

    /// The error the future ended with, `None` for a result.
    ///
    /// Equivalent to `asyncio.Future.exception`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] while pending; [`Error::Cancelled`] if cancelled.
    pub fn exception(&self) -> Result<Option<Error>> {
        match &*self.inner.state.borrow() {
            None => Err(Error::state("future is not done")),
            Some(Err(e @ Error::Cancelled(_))) => Err(e.clone()),
            Some(Err(e)) => Ok(Some(e.clone())),
            Some(Ok(_)) => Ok(None),
        }
    }

    /// Adds `cb`, run through `call_soon` (never synchronously) once the
    /// future is done; returns an id for
    /// [`remove_done_callback`](Self::remove_done_callback).
    ///
    /// Equivalent to `asyncio.Future.add_done_callback`.
    pub fn add_done_callback(&self, cb: impl FnOnce(&LoopFuture<T>) + 'static) -> u64 {
        let id = self.inner.next_cb.get();
        self.inner.next_cb.set(id + 1);
        if self.done() {
            let me = self.clone();
            self.inner
                .lp
                .call_soon_impl(move || cb(&me), &"future done callback");
        } else {
            self.inner.callbacks.borrow_mut().push((id, Box::new(cb)));
        }
        id
    }

    /// Removes callbacks added under `id`; returns how many were removed.
    ///
    /// Equivalent to `asyncio.Future.remove_done_callback`, which compares
    /// callables; Rust closures are not comparable, so the id stands in.
    pub fn remove_done_callback(&self, id: u64) -> usize {
        let mut cbs = self.inner.callbacks.borrow_mut();
        let before = cbs.len();
        cbs.retain(|(i, _)| *i != id);
        before - cbs.len()
    }

    /// The loop this future belongs to. Equivalent to `asyncio.Future.get_loop`.
    pub fn get_loop(&self) -> EventLoop {
        self.inner.lp.clone()
    }
}

impl<T: Clone + 'static> LoopFuture<T> {
    /// The result, or the error the future ended with.
    ///
    /// Equivalent to `asyncio.Future.result`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] while pending; the stored error otherwise.
    pub fn result(&self) -> Result<T> {
        match &*self.inner.state.borrow() {
            None => Err(Error::state("future is not done")),
            Some(r) => r.clone(),
        }
    }
}

impl<T: Clone + 'static> Future for LoopFuture<T> {
    type Output = Result<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        if let Some(r) = &*self.inner.state.borrow() {
            return Poll::Ready(r.clone());
        }
        let mut w = self.inner.waiters.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl<T> fmt::Debug for LoopFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = match &*self.inner.state.borrow() {
            None => "pending",
            Some(Ok(_)) => "finished",
            Some(Err(Error::Cancelled(_))) => "cancelled",
            Some(Err(_)) => "failed",
        };
        write!(f, "<LoopFuture {st}>")
    }
}
