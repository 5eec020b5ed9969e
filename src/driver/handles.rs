//! The handles through which the layers above hold ops: `Op` (a future),
//! `HandlerOp` (a single-shot op told to a handler), `ReusableOp` (a send
//! that stays in the driver between uses) and `MultiOp` (multishot).
//! Dropping any of them before the op's end cancels it without freeing
//! anything the kernel still uses.

use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use super::DriverRef;
use super::notify::{Notify, Token, Waiter};
use super::ops::OpAble;

/// The typed op back from the slab (the key was issued for a `T`).
fn downcast_op<T: OpAble>(op: Box<dyn OpAble>) -> Box<T> {
    op.into_any()
        .downcast::<T>()
        .expect("ringloop driver: op type mismatch")
}

/// A submitted op, as a future: resolves to the op's result and the op itself
/// (its fd and buffers), whether it succeeded or failed. Dropping it before
/// completion cancels the op without freeing anything the kernel still uses.
pub(crate) struct Op<T> {
    driver: DriverRef,
    key: Option<usize>,
    _t: PhantomData<fn() -> T>,
}

impl<T: OpAble> Op<T> {
    pub(crate) fn submit(driver: &DriverRef, op: T) -> Op<T> {
        let key = driver.borrow_mut().submit(Box::new(op), Waiter::None);
        Self::with_key(driver, key)
    }

    fn with_key(driver: &DriverRef, key: usize) -> Op<T> {
        Op {
            driver: driver.clone(),
            key: Some(key),
            _t: PhantomData,
        }
    }
}

impl<T: OpAble> std::future::Future for Op<T> {
    type Output = (io::Result<u32>, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let key = self.key.expect("ringloop: Op polled after completion");
        let r = self.driver.borrow_mut().poll_op(key, cx);
        r.map(|(res, op)| {
            self.key = None;
            (res, *downcast_op::<T>(op))
        })
    }
}

impl<T> Drop for Op<T> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.driver.borrow_mut().drop_op(key);
        }
    }
}

/// A submitted single-shot op whose completion goes to a [`Notify`]
/// handler (`Event::Ready`); the handler takes the result with
/// [`HandlerOp::take`]. Dropping it before completion cancels the op, as
/// for [`Op`] (whose key and drop it uses).
pub(crate) struct HandlerOp<T>(Op<T>, Token);

impl<T: OpAble> HandlerOp<T> {
    pub(crate) fn submit(driver: &DriverRef, op: Box<T>, h: Rc<dyn Notify>) -> HandlerOp<T> {
        let mut d = driver.borrow_mut();
        let key = d.submit(op, Waiter::Handler(h));
        let tok = d.ops.token(key);
        drop(d);
        HandlerOp(Op::with_key(driver, key), tok)
    }

    /// Is this notification for this op?
    pub(crate) fn is(&self, token: Token) -> bool {
        self.0.key.is_some() && self.1 == token
    }

    /// The result and the op back, once it completed.
    pub(crate) fn take(&mut self) -> Option<(io::Result<u32>, Box<T>)> {
        let key = self.0.key?;
        let (res, op) = self.0.driver.borrow_mut().take_done(key)?;
        self.0.key = None;
        Some((res, downcast_op(op)))
    }
}

/// A single-shot op that stays in the driver between uses (a transport's
/// send): no slab insert or remove and no box per use. Each completion goes
/// to the handler with its result (`Event::Completed`), and the op is idle
/// again: [`completed`](Self::completed) reaches its buffers,
/// [`submit_with`](Self::submit_with) loads and sends it again. Dropping it
/// while in flight cancels it as for [`Op`]: the driver keeps the buffers
/// until the kernel lets go.
pub(crate) struct ReusableOp<T> {
    driver: DriverRef,
    key: usize,
    token: Token,
    /// Weak: the handler (a transport) owns this op, so a strong reference
    /// would be a cycle that outlives the connection.
    handler: std::rc::Weak<dyn Notify>,
    in_flight: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T: OpAble> ReusableOp<T> {
    /// Puts `op` in the driver, idle (not submitted).
    pub(crate) fn new(driver: &DriverRef, op: Box<T>, handler: &Rc<dyn Notify>) -> Self {
        let mut d = driver.borrow_mut();
        let key = d.ops.insert(op, super::lifecycle::Lifecycle::Idle);
        let token = d.ops.token(key);
        drop(d);
        ReusableOp {
            driver: driver.clone(),
            key,
            token,
            handler: Rc::downgrade(handler),
            in_flight: false,
            _t: PhantomData,
        }
    }

    /// Is this notification for this op?
    pub(crate) fn is(&self, token: Token) -> bool {
        self.token == token
    }

    /// Submitted and its result not delivered yet?
    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// The op in the slab, as the type its key was issued for. The slot's
    /// generation is checked (a freed and reused key is another op); the
    /// type is then known without asking (no `type_id` call per send).
    fn typed(d: &mut super::Driver, key: usize, token: Token) -> &mut T {
        let slot = &mut d.ops.slab[key];
        assert!(
            super::notify::token(key, slot.generation) == token,
            "ringloop driver: a reusable op's slot was taken by another op"
        );
        debug_assert!(
            slot.op.as_any_mut().is::<T>(),
            "ringloop driver: op type mismatch"
        );
        let p: *mut dyn OpAble = &mut *slot.op;
        // SAFETY: this handle put a `T` at `key` (`new`), and the slot's
        // generation is still that op's, so the box holds that `T`; the
        // reference borrows the driver, so nothing else reaches the op.
        unsafe { &mut *p.cast::<T>() }
    }

    /// The handler got this op's result: the op is idle again, and `f`
    /// runs on it (to take back what the kernel is done with). `f` must not
    /// call into the loop (the driver is borrowed).
    #[inline]
    pub(crate) fn completed<R>(&mut self, f: impl FnOnce(&mut T) -> R) -> R {
        assert!(self.in_flight, "ringloop driver: completion of an idle op");
        self.in_flight = false;
        f(Self::typed(
            &mut self.driver.borrow_mut(),
            self.key,
            self.token,
        ))
    }

    /// Runs `f` on the idle op (to load it), then submits it. `f` must not
    /// call into the loop (the driver is borrowed).
    #[inline]
    pub(crate) fn submit_with(&mut self, f: impl FnOnce(&mut T)) {
        assert!(!self.in_flight, "ringloop driver: op submitted twice");
        let handler = self
            .handler
            .upgrade()
            .expect("ringloop driver: a reusable op outlived its handler");
        self.in_flight = true;
        self.driver
            .borrow_mut()
            .submit_reusable::<T>(self.key, self.token, handler, f);
    }
}

impl<T> Drop for ReusableOp<T> {
    fn drop(&mut self) {
        self.driver.borrow_mut().drop_op(self.key);
    }
}

/// A submitted multishot op, as a stream of results.
pub(crate) struct MultiOp {
    driver: DriverRef,
    key: Option<usize>,
    token: Token,
}

impl MultiOp {
    pub(crate) fn submit(driver: &DriverRef, op: Box<dyn OpAble>) -> MultiOp {
        Self::submit_for(driver, op, Waiter::None)
    }

    fn submit_for(driver: &DriverRef, op: Box<dyn OpAble>, w: Waiter) -> MultiOp {
        let mut d = driver.borrow_mut();
        let key = d.submit(op, w);
        let token = d.ops.token(key);
        drop(d);
        MultiOp {
            driver: driver.clone(),
            key: Some(key),
            token,
        }
    }

    /// Submits a multishot op whose results go to `h`, each with its
    /// notification (nothing is queued for [`poll_next`](Self::poll_next)).
    pub(crate) fn submit_stream(
        driver: &DriverRef,
        op: Box<dyn OpAble>,
        h: Rc<dyn Notify>,
    ) -> MultiOp {
        Self::submit_for(driver, op, Waiter::Stream(h))
    }

    /// Is this notification for this op?
    pub(crate) fn is(&self, token: Token) -> bool {
        self.key.is_some() && self.token == token
    }

    /// Ends the op but keeps its handler: results already on their way
    /// still arrive, then a final one (`ECANCELED` if the cancel ended it).
    /// Nothing newer can arrive after that, so a reader that waits for it
    /// before it receives again keeps every byte in order.
    pub(crate) fn cancel(&self) {
        if let Some(key) = self.key {
            self.driver.borrow_mut().cancel_keep(key);
        }
    }

    /// True once the kernel posted the op's final completion (results may
    /// still be queued).
    pub(crate) fn is_finished(&self) -> bool {
        self.key
            .is_none_or(|k| self.driver.borrow().ops.is_finished(k))
    }

    /// Next result; `None` when the op has ended (submit a new one to go on).
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<u32>>> {
        let Some(key) = self.key else {
            return Poll::Ready(None);
        };
        let mut d = self.driver.borrow_mut();
        let r = d.ops.poll_multi(key, Some(cx));
        if let Poll::Ready(None) = r {
            if d.ops.is_finished(key) {
                d.drop_op(key);
                self.key = None;
            }
        }
        r
    }
}

impl Drop for MultiOp {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.driver.borrow_mut().drop_op(key);
        }
    }
}
