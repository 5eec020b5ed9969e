//! Timeout scopes: asyncio's `timeout` / `timeout_at` context managers.
//!
//! A [`Timeout`] runs one body future. When its deadline passes, the body is
//! dropped (cancelled, synchronously) and the scope yields
//! [`Error::Timeout`]. Because each scope drops only its own body, nested
//! scopes attribute expiry correctly by construction: an inner expiry is seen
//! as `Err(Timeout)` inside the outer body; an outer expiry drops the whole
//! inner scope.
#![forbid(unsafe_code)]

use std::cell::{Cell, OnceCell, RefCell};
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::events::{AbstractEventLoop, TimerHandle, get_running_loop};

/// A scope's plain state (no drop glue: a scope that never shares it
/// costs nothing to drop).
struct State {
    /// The deadline once fixed (`None`: never, or not yet fixed while
    /// `delay` holds the delay to count from the first need).
    when: Cell<Option<Instant>>,
    /// `timeout(delay)`'s delay until the deadline is first needed.
    delay: Cell<Option<Duration>>,
    expired: Cell<bool>,
    /// The scope's body finished (or was dropped): no more rescheduling.
    exited: Cell<bool>,
}

/// The state once shared, with what only a waiting body has: the armed
/// timer and the body's waker.
struct Shared {
    state: State,
    timer: RefCell<Option<TimerHandle>>,
    waker: RefCell<Option<Waker>>,
}

impl State {
    fn new(when: Option<Instant>, delay: Option<Duration>) -> State {
        State {
            when: Cell::new(when),
            delay: Cell::new(delay),
            expired: Cell::new(false),
            exited: Cell::new(false),
        }
    }

    /// The deadline, fixing a pending delay against the clock now (one
    /// clock read, the first time only).
    fn deadline(&self) -> Option<Instant> {
        if let Some(d) = self.delay.take() {
            self.when.set(Instant::now().checked_add(d));
        }
        self.when.get()
    }
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
pub struct Timeout {
    /// The scope's state while it is the only handle and no timer is armed:
    /// a scope whose body is ready at once (the common `wait_for` around
    /// an operation that completes) costs no allocation at all. (Measured:
    /// the `Rc` was ~130 of the ~390 instructions of such a scope.)
    local: State,
    /// The state once shared: moved here from `local` by the first
    /// `clone` or when the body first waits (the timer's callback holds a
    /// `Weak`); from then on every handle reads this one.
    shared: OnceCell<Rc<Shared>>,
}

impl Clone for Timeout {
    fn clone(&self) -> Self {
        Timeout {
            local: State::new(None, None),
            shared: OnceCell::from(self.share().clone()),
        }
    }
}

/// A scope that expires `delay` from now (`None`: never, until rescheduled).
///
/// Equivalent to `asyncio.timeout(delay)`, with one difference: the clock
/// is read when the deadline is first needed — at the end of the body's
/// first poll if the body has to wait, or by [`Timeout::when`] — not at
/// creation, so a body that is ready at once never reads the clock. A
/// scope created and run at once (as asyncio's `async with
/// timeout(delay):` always is) gets its deadline a first poll later than
/// asyncio's: synchronous work the body does before its first wait is not
/// counted (it never expires early). A scope created early and run later
/// counts the delay from its run; use [`timeout_at`] for a deadline fixed
/// in advance.
pub fn timeout(delay: Option<Duration>) -> Timeout {
    Timeout {
        local: State::new(None, delay),
        shared: OnceCell::new(),
    }
}

/// A scope that expires at `when` (`None`: never, until rescheduled).
///
/// Equivalent to `asyncio.timeout_at(when)`.
pub fn timeout_at(when: Option<Instant>) -> Timeout {
    Timeout {
        local: State::new(when, None),
        shared: OnceCell::new(),
    }
}

impl Timeout {
    /// The scope's state: shared once shared, else this handle's own.
    fn inner(&self) -> &State {
        match self.shared.get() {
            Some(rc) => &rc.state,
            None => &self.local,
        }
    }

    /// Shares the state (moving it out of `local` the first time).
    fn share(&self) -> &Rc<Shared> {
        self.shared.get_or_init(|| {
            let l = &self.local;
            Rc::new(Shared {
                state: State {
                    when: Cell::new(l.when.get()),
                    delay: Cell::new(l.delay.get()),
                    expired: Cell::new(l.expired.get()),
                    exited: Cell::new(l.exited.get()),
                },
                timer: RefCell::new(None),
                waker: RefCell::new(None),
            })
        })
    }

    /// The current deadline. Equivalent to `asyncio.Timeout.when`.
    pub fn when(&self) -> Option<Instant> {
        self.inner().deadline()
    }

    /// True once the deadline passed and the body was dropped.
    /// Equivalent to `asyncio.Timeout.expired`.
    pub fn expired(&self) -> bool {
        self.inner().expired.get()
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
        if self.inner().expired.get() || self.inner().exited.get() {
            return Err(Error::state(
                "cannot reschedule an expired or finished timeout",
            ));
        }
        self.inner().delay.set(None);
        self.inner().when.set(when);
        // (Unshared: the body never waited, so there is no timer to move.)
        if let Some(sh) = self.shared.get() {
            if let Some(t) = sh.timer.borrow_mut().take() {
                t.cancel();
            }
            if sh.waker.borrow().is_some() {
                self.arm()?;
            }
        }
        Ok(())
    }

    fn arm(&self) -> Result<()> {
        let Some(when) = self.inner().deadline() else {
            return Ok(());
        };
        let lp = get_running_loop()?;
        let me = Rc::downgrade(self.share());
        let th = lp.call_at(when, move || {
            if let Some(sh) = me.upgrade() {
                if !sh.state.exited.get() {
                    sh.state.expired.set(true);
                    if let Some(w) = sh.waker.borrow_mut().take() {
                        w.wake();
                    }
                }
            }
        })?;
        *self.share().timer.borrow_mut() = Some(th);
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
        if self.inner().exited.get() {
            return Err(Error::state(
                "a Timeout scope runs one body; make a new one",
            ));
        }
        let _exit = ExitGuard(self);
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
                    self.inner().expired.set(false);
                    return Poll::Ready(Ok(v));
                }
            }
            // (The clock is read only for a body that has to wait; its
            // first wait fixes a pending delay.)
            let inner = self.inner();
            let expired = inner.expired.get()
                || (!armed && inner.deadline().is_some_and(|w| w <= Instant::now()));
            if expired {
                inner.expired.set(true);
                body.set(None);
                return Poll::Ready(Err(Error::Timeout));
            }
            *self.share().waker.borrow_mut() = Some(cx.waker().clone());
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
struct ExitGuard<'a>(&'a Timeout);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        let Some(sh) = self.0.shared.get() else {
            // Never shared: no timer was armed, no clone can see a waker.
            self.0.local.exited.set(true);
            return;
        };
        sh.state.exited.set(true);
        sh.waker.borrow_mut().take();
        if let Some(t) = sh.timer.borrow_mut().take() {
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
