//! Timeout scopes: asyncio's `timeout` / `timeout_at` context managers.
//!
//! A [`Timeout`] runs one body future. When its deadline passes, the body is
//! dropped (cancelled, synchronously) and the scope yields
//! [`Error::Timeout`]. Because each scope drops only its own body, nested
//! scopes attribute expiry correctly by construction: an inner expiry is seen
//! as `Err(Timeout)` inside the outer body; an outer expiry drops the whole
//! inner scope.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::events::{AbstractEventLoop, TimerHandle, get_running_loop};

struct Inner {
    when: Cell<Option<Instant>>,
    expired: Cell<bool>,
    /// The scope's body finished (or was dropped): no more rescheduling.
    exited: Cell<bool>,
    timer: RefCell<Option<TimerHandle>>,
    waker: RefCell<Option<Waker>>,
}

/// A timeout scope; clones share it, so the body can reschedule its own
/// deadline.
///
/// Equivalent to the object `asyncio.timeout()` returns (`asyncio.Timeout`).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ringloop::{Error, sleep, timeout};
/// ringloop::run(async {
///     let t = timeout(Some(Duration::from_millis(5)));
///     let t2 = t.clone();
///     let r = t.run(async move {
///         // Push the deadline out from inside the body.
///         t2.reschedule(Some(std::time::Instant::now() + Duration::from_millis(50))).unwrap();
///         sleep(Duration::from_millis(20)).await.unwrap();
///         "finished"
///     }).await;
///     assert_eq!(r.unwrap(), "finished");
///     assert!(!t.expired());
///     let r = timeout(Some(Duration::from_millis(5))).run(sleep(Duration::from_secs(10))).await;
///     assert!(matches!(r, Err(Error::Timeout)));
/// }).unwrap();
/// ```
#[derive(Clone)]
pub struct Timeout(Rc<Inner>);

/// A scope that expires `delay` from now (`None`: never, until rescheduled).
///
/// Equivalent to `asyncio.timeout(delay)`.
pub fn timeout(delay: Option<Duration>) -> Timeout {
    timeout_at(delay.and_then(|d| Instant::now().checked_add(d)))
}

/// A scope that expires at `when` (`None`: never, until rescheduled).
///
/// Equivalent to `asyncio.timeout_at(when)`.
pub fn timeout_at(when: Option<Instant>) -> Timeout {
    Timeout(Rc::new(Inner {
        when: Cell::new(when),
        expired: Cell::new(false),
        exited: Cell::new(false),
        timer: RefCell::new(None),
        waker: RefCell::new(None),
    }))
}

impl Timeout {
    /// The current deadline. Equivalent to `asyncio.Timeout.when`.
    pub fn when(&self) -> Option<Instant> {
        self.0.when.get()
    }

    /// True once the deadline passed and the body was dropped.
    /// Equivalent to `asyncio.Timeout.expired`.
    pub fn expired(&self) -> bool {
        self.0.expired.get()
    }

    /// Moves the deadline (`None` disables it).
    ///
    /// Equivalent to `asyncio.Timeout.reschedule`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] once the scope has expired or its body has
    /// finished (asyncio's RuntimeError).
    pub fn reschedule(&self, when: Option<Instant>) -> Result<()> {
        if self.0.expired.get() || self.0.exited.get() {
            return Err(Error::state(
                "cannot reschedule an expired or finished timeout",
            ));
        }
        self.0.when.set(when);
        if let Some(t) = self.0.timer.borrow_mut().take() {
            t.cancel();
        }
        if self.0.waker.borrow().is_some() {
            self.arm()?;
        }
        Ok(())
    }

    fn arm(&self) -> Result<()> {
        let Some(when) = self.0.when.get() else {
            return Ok(());
        };
        let lp = get_running_loop()?;
        let me = Rc::downgrade(&self.0);
        let th = lp.call_at(when, move || {
            if let Some(inner) = me.upgrade() {
                if !inner.exited.get() {
                    inner.expired.set(true);
                    if let Some(w) = inner.waker.borrow_mut().take() {
                        w.wake();
                    }
                }
            }
        })?;
        *self.0.timer.borrow_mut() = Some(th);
        Ok(())
    }

    /// Runs `body` under this scope: its output, or [`Error::Timeout`] if the
    /// deadline passed first (the body is then dropped). If the body is
    /// ready in the same turn as the deadline, its output wins.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`]; [`Error::InvalidState`] without a running loop or
    /// when the scope already ran a body.
    pub async fn run<F: Future>(&self, body: F) -> Result<F::Output> {
        if self.0.exited.get() {
            return Err(Error::state(
                "a Timeout scope runs one body; make a new one",
            ));
        }
        let _exit = ExitGuard(self.clone());
        let mut body = pin!(Some(body));
        let mut armed = false;
        std::future::poll_fn(|cx| {
            // Poll the body first: a result that is ready now wins over a
            // deadline that passed (asyncio: the timeout cancels the body at
            // its next suspension, so a body that does not suspend finishes).
            if let Some(f) = body.as_mut().as_pin_mut() {
                if let Poll::Ready(v) = f.poll(cx) {
                    body.set(None);
                    // Completion won any race: the scope did not expire.
                    self.0.expired.set(false);
                    return Poll::Ready(Ok(v));
                }
            }
            // (The clock is read only for a body that has to wait.)
            let expired = self.0.expired.get()
                || (!armed && self.0.when.get().is_some_and(|w| w <= Instant::now()));
            if expired {
                self.0.expired.set(true);
                body.set(None);
                return Poll::Ready(Err(Error::Timeout));
            }
            *self.0.waker.borrow_mut() = Some(cx.waker().clone());
            // The timer is armed only once the body has to wait: a body that
            // finishes at once costs no timer at all.
            if !armed {
                armed = true;
                if let Err(e) = self.arm() {
                    return Poll::Ready(Err(e));
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// Marks the scope finished however `run` ends (completion, expiry, drop).
struct ExitGuard(Timeout);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let inner = &self.0.0;
        inner.exited.set(true);
        inner.waker.borrow_mut().take();
        if let Some(t) = inner.timer.borrow_mut().take() {
            t.cancel();
        }
    }
}

impl fmt::Debug for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<Timeout when={:?} expired={}>",
            self.when(),
            self.expired()
        )
    }
}
