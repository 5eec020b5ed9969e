//! Synchronisation primitives for tasks of one loop: asyncio's `Lock`,
//! `Event`, `Condition`, `Semaphore`, `BoundedSemaphore` and `Barrier`.
//!
//! They are single-threaded (`!Send`), need no loop reference, and cost no
//! allocation when uncontended. Ownership moves to waiters directly: a
//! released lock or semaphore permit is handed to the first waiter (FIFO,
//! no barging), a `notify` is given to a waiter. A waiting future may be
//! dropped at any point (that is how a task is cancelled); a waiter dropped
//! after being handed something passes it on, so cancellation never loses a
//! wake-up, a permit or the lock.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::error::{Error, Result};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum WState {
    Waiting,
    /// Handed the lock / a permit / a notification, not yet observed.
    Granted,
    /// Observed (or withdrawn): nothing more to do.
    Done,
}

struct Waiter {
    state: Cell<WState>,
    waker: RefCell<Option<Waker>>,
}

impl Waiter {
    fn new() -> Rc<Waiter> {
        Rc::new(Waiter {
            state: Cell::new(WState::Waiting),
            waker: RefCell::new(None),
        })
    }

    fn grant(&self) {
        self.state.set(WState::Granted);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// A FIFO of waiters; withdrawn ones are skipped lazily.
#[derive(Default)]
struct WaitQueue(RefCell<VecDeque<Rc<Waiter>>>);

impl WaitQueue {
    fn push(&self, w: Rc<Waiter>) {
        self.0.borrow_mut().push_back(w);
    }

    /// Grants the first waiting waiter; false if there is none.
    fn grant_one(&self) -> bool {
        loop {
            let next = self.0.borrow_mut().pop_front();
            match next {
                Some(w) if w.state.get() == WState::Waiting => {
                    w.grant();
                    return true;
                }
                Some(_) => continue,
                None => return false,
            }
        }
    }

    fn has_waiting(&self) -> bool {
        self.0
            .borrow()
            .iter()
            .any(|w| w.state.get() == WState::Waiting)
    }

    fn count_waiting(&self) -> usize {
        self.0
            .borrow()
            .iter()
            .filter(|w| w.state.get() == WState::Waiting)
            .count()
    }
}

/// Waits until its waiter is granted; on drop, `on_unobserved_grant` runs
/// if it was granted but never observed (to pass the grant on).
struct Wait<'a> {
    waiter: Rc<Waiter>,
    on_lost_grant: &'a dyn Fn(),
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.waiter.state.get() == WState::Granted {
            self.waiter.state.set(WState::Done);
            return Poll::Ready(());
        }
        *self.waiter.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        match self.waiter.state.replace(WState::Done) {
            WState::Granted => (self.on_lost_grant)(),
            WState::Waiting | WState::Done => {}
        }
    }
}

// ------------------------------------------------------------------ Lock

struct LockInner {
    locked: Cell<bool>,
    waiters: WaitQueue,
}

/// A mutual-exclusion lock for tasks. Equivalent to `asyncio.Lock`.
///
/// Clones share the lock. Acquisition is FIFO-fair: a released lock goes
/// to the longest waiter, never to a newcomer. Use [`lock`](Self::lock) for
/// a guard that releases on drop (`async with lock:`), or
/// [`acquire`](Self::acquire) / [`release`](Self::release).
///
/// # Examples
///
/// ```
/// use ringloop::locks::Lock;
/// ringloop::run(async {
///     let lock = Lock::new();
///     {
///         let _g = lock.lock().await;
///         assert!(lock.locked());
///     }
///     assert!(!lock.locked());
///     assert!(lock.release().is_err(), "releasing an unlocked lock is an error");
/// }).unwrap();
/// ```
#[derive(Clone)]
pub struct Lock(Rc<LockInner>);

impl Default for Lock {
    fn default() -> Self {
        Lock::new()
    }
}

impl Lock {
    /// An unlocked lock.
    pub fn new() -> Lock {
        Lock(Rc::new(LockInner {
            locked: Cell::new(false),
            waiters: WaitQueue::default(),
        }))
    }

    /// True while held. Equivalent to `Lock.locked`.
    pub fn locked(&self) -> bool {
        self.0.locked.get()
    }

    /// Waits for the lock and takes it. Equivalent to `Lock.acquire`.
    pub async fn acquire(&self) {
        let inner = &self.0;
        if !inner.locked.get() && !inner.waiters.has_waiting() {
            inner.locked.set(true);
            return;
        }
        let waiter = Waiter::new();
        inner.waiters.push(waiter.clone());
        let pass_on = || self.hand_off();
        // A grant means the lock is ours (it stayed locked in the hand-off).
        Wait {
            waiter,
            on_lost_grant: &pass_on,
        }
        .await;
    }

    /// Releases the lock, handing it to the first waiter.
    /// Equivalent to `Lock.release`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] if the lock is not locked (asyncio's RuntimeError).
    pub fn release(&self) -> Result<()> {
        if !self.0.locked.get() {
            return Err(Error::state("Lock is not acquired"));
        }
        self.hand_off();
        Ok(())
    }

    fn hand_off(&self) {
        if !self.0.waiters.grant_one() {
            self.0.locked.set(false);
        }
    }

    /// Acquires and returns a guard that releases on drop.
    pub async fn lock(&self) -> LockGuard {
        self.acquire().await;
        LockGuard(self.clone())
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<Lock locked={} waiters={}>",
            self.locked(),
            self.0.waiters.count_waiting()
        )
    }
}

/// Holds a [`Lock`]; releases it when dropped.
#[derive(Debug)]
pub struct LockGuard(Lock);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = self.0.release();
    }
}

// ------------------------------------------------------------------ Event

struct EventInner {
    set: Cell<bool>,
    waiters: RefCell<Vec<Rc<Waiter>>>,
}

/// A flag tasks can wait for. Equivalent to `asyncio.Event`.
///
/// # Examples
///
/// ```
/// use ringloop::locks::Event;
/// use ringloop::prelude::*;
/// ringloop::run(async {
///     let ev = Event::new();
///     let e2 = ev.clone();
///     get_running_loop().unwrap().call_soon(move || e2.set()).unwrap();
///     ev.wait().await;
///     assert!(ev.is_set());
/// }).unwrap();
/// ```
#[derive(Clone)]
pub struct Event(Rc<EventInner>);

impl Default for Event {
    fn default() -> Self {
        Event::new()
    }
}

impl Event {
    /// An unset event.
    pub fn new() -> Event {
        Event(Rc::new(EventInner {
            set: Cell::new(false),
            waiters: RefCell::new(Vec::new()),
        }))
    }

    /// Sets the flag and wakes every waiter (they return even if the flag
    /// is cleared before they run). Equivalent to `Event.set`.
    pub fn set(&self) {
        if self.0.set.replace(true) {
            return;
        }
        for w in self.0.waiters.borrow_mut().drain(..) {
            w.grant();
        }
    }

    /// Clears the flag. Equivalent to `Event.clear`.
    pub fn clear(&self) {
        self.0.set.set(false);
    }

    /// True while set. Equivalent to `Event.is_set`.
    pub fn is_set(&self) -> bool {
        self.0.set.get()
    }

    /// Waits until the event is set. Equivalent to `Event.wait`.
    pub async fn wait(&self) {
        if self.0.set.get() {
            return;
        }
        let waiter = Waiter::new();
        self.0.waiters.borrow_mut().push(waiter.clone());
        let nothing = || {};
        Wait {
            waiter,
            on_lost_grant: &nothing,
        }
        .await;
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<Event set={}>", self.is_set())
    }
}

// ------------------------------------------------------------------ Condition

/// A condition variable over a [`Lock`]. Equivalent to `asyncio.Condition`.
///
/// # Examples
///
/// ```
/// use std::cell::Cell;
/// use std::rc::Rc;
/// use ringloop::locks::Condition;
/// use ringloop::prelude::*;
/// ringloop::run(async {
///     let cond = Condition::new();
///     let ready = Rc::new(Cell::new(false));
///     let (c2, r2) = (cond.clone(), ready.clone());
///     let lp = get_running_loop().unwrap();
///     lp.create_task(async move {
///         c2.acquire().await;
///         r2.set(true);
///         c2.notify_all().unwrap();
///         c2.release().unwrap();
///     });
///     cond.acquire().await;
///     cond.wait_for(|| ready.get()).await.unwrap();
///     cond.release().unwrap();
/// }).unwrap();
/// ```
#[derive(Clone)]
pub struct Condition {
    lock: Lock,
    waiters: Rc<WaitQueue>,
}

impl Default for Condition {
    fn default() -> Self {
        Condition::new()
    }
}

impl Condition {
    /// A condition with its own lock.
    pub fn new() -> Condition {
        Condition::with_lock(Lock::new())
    }

    /// A condition over an existing lock (shared with other conditions).
    pub fn with_lock(lock: Lock) -> Condition {
        Condition {
            lock,
            waiters: Rc::new(WaitQueue::default()),
        }
    }

    /// The underlying lock.
    pub fn lock_ref(&self) -> &Lock {
        &self.lock
    }

    /// Acquires the underlying lock. Equivalent to `Condition.acquire`.
    pub async fn acquire(&self) {
        self.lock.acquire().await
    }

    /// Releases the underlying lock. Equivalent to `Condition.release`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] if not locked.
    pub fn release(&self) -> Result<()> {
        self.lock.release()
    }

    /// True while the lock is held. Equivalent to `Condition.locked`.
    pub fn locked(&self) -> bool {
        self.lock.locked()
    }

    /// Releases the lock, waits for a notify, re-acquires the lock.
    /// Equivalent to `Condition.wait`.
    ///
    /// If the waiting future is dropped after it was notified, the
    /// notification goes to another waiter.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] if the lock is not held.
    pub async fn wait(&self) -> Result<()> {
        if !self.lock.locked() {
            return Err(Error::state("cannot wait on an un-acquired lock"));
        }
        let waiter = Waiter::new();
        self.waiters.push(waiter.clone());
        self.lock.release()?;
        let pass_on = || {
            self.waiters.grant_one();
        };
        Wait {
            waiter,
            on_lost_grant: &pass_on,
        }
        .await;
        self.lock.acquire().await;
        Ok(())
    }

    /// Waits until `predicate` is true (checked with the lock held).
    /// Equivalent to `Condition.wait_for`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] if the lock is not held.
    pub async fn wait_for(&self, mut predicate: impl FnMut() -> bool) -> Result<()> {
        while !predicate() {
            self.wait().await?;
        }
        Ok(())
    }

    /// Wakes up to `n` waiters. Equivalent to `Condition.notify`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] if the lock is not held.
    pub fn notify(&self, n: usize) -> Result<()> {
        if !self.lock.locked() {
            return Err(Error::state("cannot notify on an un-acquired lock"));
        }
        for _ in 0..n {
            if !self.waiters.grant_one() {
                break;
            }
        }
        Ok(())
    }

    /// Wakes every waiter. Equivalent to `Condition.notify_all`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] if the lock is not held.
    pub fn notify_all(&self) -> Result<()> {
        self.notify(usize::MAX)
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<Condition locked={} waiters={}>",
            self.locked(),
            self.waiters.count_waiting()
        )
    }
}

// ------------------------------------------------------------------ Semaphore

struct SemInner {
    value: Cell<usize>,
    bound: Option<usize>,
    waiters: WaitQueue,
}

/// A counting semaphore. Equivalent to `asyncio.Semaphore`.
///
/// A released permit goes to the first waiter (FIFO).
///
/// # Examples
///
/// ```
/// use ringloop::locks::Semaphore;
/// ringloop::run(async {
///     let sem = Semaphore::new(2);
///     sem.acquire().await;
///     sem.acquire().await;
///     assert!(sem.locked());
///     sem.release().unwrap();
///     assert!(!sem.locked());
/// }).unwrap();
/// ```
#[derive(Clone)]
pub struct Semaphore(Rc<SemInner>);

impl Semaphore {
    /// A semaphore with `value` permits.
    pub fn new(value: usize) -> Semaphore {
        Semaphore(Rc::new(SemInner {
            value: Cell::new(value),
            bound: None,
            waiters: WaitQueue::default(),
        }))
    }

    /// True if `acquire` would wait. Equivalent to `Semaphore.locked`.
    pub fn locked(&self) -> bool {
        self.0.value.get() == 0 || self.0.waiters.has_waiting()
    }

    /// Permits available now.
    pub fn value(&self) -> usize {
        self.0.value.get()
    }

    /// Waits for a permit and takes it. Equivalent to `Semaphore.acquire`.
    pub async fn acquire(&self) {
        let inner = &self.0;
        if inner.value.get() > 0 && !inner.waiters.has_waiting() {
            inner.value.set(inner.value.get() - 1);
            return;
        }
        let waiter = Waiter::new();
        inner.waiters.push(waiter.clone());
        let pass_on = || self.give(1);
        Wait {
            waiter,
            on_lost_grant: &pass_on,
        }
        .await;
    }

    fn give(&self, _n: usize) {
        if !self.0.waiters.grant_one() {
            self.0.value.set(self.0.value.get() + 1);
        }
    }

    /// Returns a permit (to the first waiter, if any).
    /// Equivalent to `Semaphore.release`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a [`BoundedSemaphore`] released above
    /// its initial value (asyncio's ValueError).
    pub fn release(&self) -> Result<()> {
        if let Some(bound) = self.0.bound {
            if self.0.value.get() >= bound {
                return Err(Error::InvalidArgument(
                    "BoundedSemaphore released too many times".into(),
                ));
            }
        }
        self.give(1);
        Ok(())
    }

    /// Acquires and returns a guard that releases on drop.
    pub async fn permit(&self) -> SemaphorePermit {
        self.acquire().await;
        SemaphorePermit(self.clone())
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<Semaphore value={} waiters={}>",
            self.value(),
            self.0.waiters.count_waiting()
        )
    }
}

/// A held permit; released when dropped.
#[derive(Debug)]
pub struct SemaphorePermit(Semaphore);

impl Drop for SemaphorePermit {
    fn drop(&mut self) {
        let _ = self.0.release();
    }
}

/// A semaphore that refuses to be released above its initial value.
/// Equivalent to `asyncio.BoundedSemaphore`.
///
/// # Examples
///
/// ```
/// use ringloop::locks::BoundedSemaphore;
/// ringloop::run(async {
///     let s = BoundedSemaphore::new(1);
///     assert!(s.release().is_err(), "over-release is an error");
///     let _p = s.permit().await;
///     assert!(s.locked());
/// }).unwrap();
/// ```
pub struct BoundedSemaphore;

impl BoundedSemaphore {
    /// A [`Semaphore`] whose `release` fails above `value` permits.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(value: usize) -> Semaphore {
        Semaphore(Rc::new(SemInner {
            value: Cell::new(value),
            bound: Some(value),
            waiters: WaitQueue::default(),
        }))
    }
}

impl fmt::Debug for BoundedSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BoundedSemaphore")
    }
}

// ------------------------------------------------------------------ Barrier

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum BState {
    Filling,
    Draining,
    Resetting,
    Broken,
}

struct BarrierInner {
    parties: usize,
    state: Cell<BState>,
    count: Cell<usize>,
    wakers: RefCell<Vec<Waker>>,
}

impl BarrierInner {
    fn changed(&self) {
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// A task leaves the barrier (returning or dropped).
    fn exit(&self) {
        self.count.set(self.count.get() - 1);
        if self.count.get() == 0 && matches!(self.state.get(), BState::Draining | BState::Resetting)
        {
            self.state.set(BState::Filling);
        }
        self.changed();
    }
}

/// A barrier for `parties` tasks. Equivalent to `asyncio.Barrier`.
///
/// # Examples
///
/// ```
/// use ringloop::locks::Barrier;
/// use ringloop::prelude::*;
/// ringloop::run(async {
///     let b = Barrier::new(2).unwrap();
///     let b2 = b.clone();
///     let lp = get_running_loop().unwrap();
///     let t = lp.create_task(async move { b2.wait().await.unwrap() });
///     let mine = b.wait().await.unwrap();
///     let theirs = t.await.unwrap();
///     assert_eq!(mine + theirs, 1, "indices 0 and 1");
/// }).unwrap();
/// ```
#[derive(Clone)]
pub struct Barrier(Rc<BarrierInner>);

/// Leaves the barrier if a `wait` is dropped after entering it.
struct Entered<'a>(&'a BarrierInner, bool);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.exit();
        }
    }
}

impl Barrier {
    /// A barrier for `parties` tasks.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for zero parties.
    pub fn new(parties: usize) -> Result<Barrier> {
        if parties == 0 {
            return Err(Error::InvalidArgument("parties must be > 0".into()));
        }
        Ok(Barrier(Rc::new(BarrierInner {
            parties,
            state: Cell::new(BState::Filling),
            count: Cell::new(0),
            wakers: RefCell::new(Vec::new()),
        })))
    }

    fn until<'a>(
        &'a self,
        mut done: impl FnMut(BState) -> bool + 'a,
    ) -> impl Future<Output = BState> + 'a {
        std::future::poll_fn(move |cx| {
            let st = self.0.state.get();
            if done(st) {
                Poll::Ready(st)
            } else {
                self.0.wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    /// Waits until `parties` tasks are waiting; returns this task's index
    /// (0 to parties-1, distinct in each cycle). A task that is cancelled
    /// while waiting leaves the barrier.
    ///
    /// Equivalent to `Barrier.wait`.
    ///
    /// # Errors
    ///
    /// [`Error::BrokenBarrier`] if the barrier is aborted, or reset while
    /// this task waits.
    pub async fn wait(&self) -> Result<usize> {
        let inner = &*self.0;
        // Wait while the previous cycle drains or a reset is under way.
        let st = self
            .until(|s| !matches!(s, BState::Draining | BState::Resetting))
            .await;
        if st == BState::Broken {
            return Err(Error::BrokenBarrier);
        }
        let index = inner.count.get();
        inner.count.set(index + 1);
        let _entered = Entered(inner, true);
        if index + 1 == inner.parties {
            inner.state.set(BState::Draining);
            inner.changed();
            return Ok(index);
        }
        match self.until(|s| s != BState::Filling).await {
            BState::Broken | BState::Resetting => Err(Error::BrokenBarrier),
            _ => Ok(index),
        }
    }

    /// Returns the barrier to its empty state; waiting tasks get
    /// [`Error::BrokenBarrier`]. Equivalent to `Barrier.reset`.
    pub async fn reset(&self) {
        let inner = &self.0;
        if inner.count.get() > 0 {
            inner.state.set(BState::Resetting);
        } else {
            inner.state.set(BState::Filling);
        }
        inner.changed();
    }

    /// Breaks the barrier: current and future waits fail with
    /// [`Error::BrokenBarrier`]. Equivalent to `Barrier.abort`.
    pub async fn abort(&self) {
        self.0.state.set(BState::Broken);
        self.0.changed();
    }

    /// The number of tasks needed. Equivalent to `Barrier.parties`.
    pub fn parties(&self) -> usize {
        self.0.parties
    }

    /// Tasks waiting in the filling cycle. Equivalent to `Barrier.n_waiting`.
    pub fn n_waiting(&self) -> usize {
        if self.0.state.get() == BState::Filling {
            self.0.count.get()
        } else {
            0
        }
    }

    /// True once aborted. Equivalent to `Barrier.broken`.
    pub fn broken(&self) -> bool {
        self.0.state.get() == BState::Broken
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<Barrier parties={} waiting={} state={:?}>",
            self.parties(),
            self.n_waiting(),
            self.0.state.get()
        )
    }
}
