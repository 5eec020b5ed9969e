//! Queues for tasks of one loop: asyncio's `Queue`, `PriorityQueue` and
//! `LifoQueue`, with `task_done` / `join` and `shutdown`.
//!
//! One generic core ([`Queue`]) holds the items in a [`Storage`]: FIFO,
//! LIFO or priority order. Single-threaded (`!Send`); clones share the queue.
//! A blocked `get` or `put` may be dropped at any point (task cancellation):
//! a getter (or putter) that was woken and then dropped wakes the next one,
//! so no wake-up is lost and no item is taken twice.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::rc::Rc;
use std::task::{Poll, Waker};

use crate::error::{Error, Result};

/// How a queue orders its items.
pub trait Storage<T>: Default {
    /// Adds an item.
    fn push(&mut self, item: T);
    /// Removes the next item.
    fn pop(&mut self) -> Option<T>;
    /// Items held.
    fn len(&self) -> usize;
    /// True when empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// First in, first out.
#[derive(Debug)]
pub struct Fifo<T>(VecDeque<T>);

impl<T> Default for Fifo<T> {
    fn default() -> Self {
        Fifo(VecDeque::new())
    }
}

impl<T> Storage<T> for Fifo<T> {
    fn push(&mut self, item: T) {
        self.0.push_back(item)
    }
    fn pop(&mut self) -> Option<T> {
        self.0.pop_front()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Last in, first out.
#[derive(Debug)]
pub struct Lifo<T>(Vec<T>);

impl<T> Default for Lifo<T> {
    fn default() -> Self {
        Lifo(Vec::new())
    }
}

impl<T> Storage<T> for Lifo<T> {
    fn push(&mut self, item: T) {
        self.0.push(item)
    }
    fn pop(&mut self) -> Option<T> {
        self.0.pop()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Smallest first; equal items in insertion order (as Python's
/// `(priority, seq, item)` idiom with `heapq`).
#[derive(Debug)]
pub struct Priority<T: Ord> {
    heap: BinaryHeap<Reverse<(T, u64)>>,
    seq: u64,
}

impl<T: Ord> Default for Priority<T> {
    fn default() -> Self {
        Priority {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<T: Ord> Storage<T> for Priority<T> {
    fn push(&mut self, item: T) {
        self.seq += 1;
        self.heap.push(Reverse((item, self.seq)));
    }
    fn pop(&mut self) -> Option<T> {
        self.heap.pop().map(|Reverse((t, _))| t)
    }
    fn len(&self) -> usize {
        self.heap.len()
    }
}

/// A blocked getter or putter.
struct Waiter {
    woken: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

#[derive(Default)]
struct Waiters(RefCell<VecDeque<Rc<Waiter>>>);

impl Waiters {
    /// Wakes the first waiter still waiting.
    fn wake_next(&self) {
        loop {
            let w = self.0.borrow_mut().pop_front();
            match w {
                Some(w) if Rc::strong_count(&w) > 1 => {
                    w.woken.set(true);
                    if let Some(k) = w.waker.borrow_mut().take() {
                        k.wake();
                    }
                    return;
                }
                // Its future is gone.
                Some(_) => continue,
                None => return,
            }
        }
    }

    fn wake_all(&self) {
        for w in self.0.borrow_mut().drain(..) {
            w.woken.set(true);
            if let Some(k) = w.waker.borrow_mut().take() {
                k.wake();
            }
        }
    }
}

struct Inner<T, S> {
    items: RefCell<S>,
    maxsize: usize,
    getters: Waiters,
    putters: Waiters,
    unfinished: Cell<usize>,
    joiners: RefCell<Vec<Waker>>,
    shutdown: Cell<bool>,
    _t: std::marker::PhantomData<T>,
}

/// A queue of items for producer and consumer tasks.
///
/// Equivalent to `asyncio.Queue` (with `Fifo` storage, the default),
/// `asyncio.LifoQueue` ([`LifoQueue`]) and `asyncio.PriorityQueue`
/// ([`PriorityQueue`]).
///
/// # Examples
///
/// ```
/// use ringloop::queues::Queue;
/// use ringloop::prelude::*;
/// ringloop::run(async {
///     let q: Queue<u32> = Queue::new(2);
///     let q2 = q.clone();
///     let lp = get_running_loop().unwrap();
///     let consumer = lp.create_task(async move {
///         let mut sum = 0;
///         while let Ok(v) = q2.get().await {
///             sum += v;
///             q2.task_done().unwrap();
///         }
///         sum
///     });
///     for v in 1..=10 {
///         q.put(v).await.unwrap(); // waits while 2 items are queued
///     }
///     q.join().await;
///     q.shutdown(false);
///     assert_eq!(consumer.await.unwrap(), 55);
/// }).unwrap();
/// ```
pub struct Queue<T, S: Storage<T> = Fifo<T>>(Rc<Inner<T, S>>);

/// Last in, first out. Equivalent to `asyncio.LifoQueue`.
pub type LifoQueue<T> = Queue<T, Lifo<T>>;

/// Smallest first. Equivalent to `asyncio.PriorityQueue`.
pub type PriorityQueue<T> = Queue<T, Priority<T>>;

impl<T, S: Storage<T>> Clone for Queue<T, S> {
    fn clone(&self) -> Self {
        Queue(self.0.clone())
    }
}

impl<T, S: Storage<T>> Queue<T, S> {
    /// A queue holding at most `maxsize` items (0: unbounded).
    pub fn new(maxsize: usize) -> Self {
        Queue(Rc::new(Inner {
            items: RefCell::new(S::default()),
            maxsize,
            getters: Waiters::default(),
            putters: Waiters::default(),
            unfinished: Cell::new(0),
            joiners: RefCell::new(Vec::new()),
            shutdown: Cell::new(false),
            _t: std::marker::PhantomData,
        }))
    }

    /// Items in the queue. Equivalent to `Queue.qsize`.
    pub fn qsize(&self) -> usize {
        self.0.items.borrow().len()
    }

    /// True when empty. Equivalent to `Queue.empty`.
    pub fn empty(&self) -> bool {
        self.qsize() == 0
    }

    /// True when holding `maxsize` items. Equivalent to `Queue.full`.
    pub fn full(&self) -> bool {
        self.0.maxsize > 0 && self.qsize() >= self.0.maxsize
    }

    /// The capacity (0: unbounded). Equivalent to `Queue.maxsize`.
    pub fn maxsize(&self) -> usize {
        self.0.maxsize
    }

    /// Adds `item` without waiting. Equivalent to `Queue.put_nowait`.
    ///
    /// # Errors
    ///
    /// [`Error::QueueFull`] when full; [`Error::QueueShutDown`] after
    /// [`shutdown`](Self::shutdown) (the item is dropped, as in asyncio).
    pub fn put_nowait(&self, item: T) -> Result<()> {
        if self.0.shutdown.get() {
            return Err(Error::QueueShutDown);
        }
        if self.full() {
            return Err(Error::QueueFull);
        }
        self.0.items.borrow_mut().push(item);
        self.0.unfinished.set(self.0.unfinished.get() + 1);
        self.0.getters.wake_next();
        Ok(())
    }

    /// Adds `item`, waiting for room. Equivalent to `Queue.put`.
    ///
    /// # Errors
    ///
    /// [`Error::QueueShutDown`] if the queue is (or gets) shut down.
    pub async fn put(&self, item: T) -> Result<()> {
        Put {
            q: self,
            item: Some(item),
            me: None,
        }
        .await
    }

    /// Removes an item without waiting. Equivalent to `Queue.get_nowait`.
    ///
    /// # Errors
    ///
    /// [`Error::QueueEmpty`] when empty; [`Error::QueueShutDown`] when
    /// empty and shut down.
    pub fn get_nowait(&self) -> Result<T> {
        let item = self.0.items.borrow_mut().pop();
        match item {
            Some(v) => {
                self.0.putters.wake_next();
                Ok(v)
            }
            None if self.0.shutdown.get() => Err(Error::QueueShutDown),
            None => Err(Error::QueueEmpty),
        }
    }

    /// Removes an item, waiting for one. Equivalent to `Queue.get`.
    ///
    /// # Errors
    ///
    /// [`Error::QueueShutDown`] once the queue is shut down and empty.
    pub async fn get(&self) -> Result<T> {
        Get { q: self, me: None }.await
    }

    /// Marks one item processed. Equivalent to `Queue.task_done`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if called more times than items were put
    /// (asyncio's ValueError).
    pub fn task_done(&self) -> Result<()> {
        let n = self.0.unfinished.get();
        if n == 0 {
            return Err(Error::InvalidArgument(
                "task_done() called too many times".into(),
            ));
        }
        self.0.unfinished.set(n - 1);
        if n == 1 {
            for w in self.0.joiners.borrow_mut().drain(..) {
                w.wake();
            }
        }
        Ok(())
    }

    /// Waits until every item put was marked done. Equivalent to `Queue.join`.
    pub async fn join(&self) {
        std::future::poll_fn(|cx| {
            if self.0.unfinished.get() == 0 {
                Poll::Ready(())
            } else {
                self.0.joiners.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Shuts the queue down: `put` fails from now on, and every blocked
    /// putter is woken with [`Error::QueueShutDown`]; `get` drains what is
    /// left, then fails too. With `immediate`, the items left are dropped
    /// (each counted as done, so `join` returns) and blocked getters fail at
    /// once. Equivalent to `Queue.shutdown(immediate)`.
    pub fn shutdown(&self, immediate: bool) {
        self.0.shutdown.set(true);
        if immediate {
            let mut n = 0;
            while self.0.items.borrow_mut().pop().is_some() {
                n += 1;
            }
            let left = self.0.unfinished.get().saturating_sub(n);
            self.0.unfinished.set(left);
            if left == 0 {
                for w in self.0.joiners.borrow_mut().drain(..) {
                    w.wake();
                }
            }
        }
        self.0.getters.wake_all();
        self.0.putters.wake_all();
    }

    /// True after [`shutdown`](Self::shutdown).
    pub fn is_shut_down(&self) -> bool {
        self.0.shutdown.get()
    }
}

/// Registers (or refreshes) a blocked waiter.
fn register(list: &Waiters, me: &mut Option<Rc<Waiter>>, waker: &Waker) {
    match me {
        Some(w) if !w.woken.get() => {
            *w.waker.borrow_mut() = Some(waker.clone());
        }
        _ => {
            // First wait, or woken but the item was taken by someone else:
            // queue up again.
            let w = Rc::new(Waiter {
                woken: Cell::new(false),
                waker: RefCell::new(Some(waker.clone())),
            });
            list.0.borrow_mut().push_back(w.clone());
            *me = Some(w);
        }
    }
}

/// A blocked `get`.
struct Get<'a, T, S: Storage<T>> {
    q: &'a Queue<T, S>,
    me: Option<Rc<Waiter>>,
}

impl<T, S: Storage<T>> std::future::Future for Get<'_, T, S> {
    type Output = Result<T>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<T>> {
        let this = &mut *self;
        match this.q.get_nowait() {
            Ok(v) => {
                this.me = None;
                Poll::Ready(Ok(v))
            }
            Err(Error::QueueEmpty) => {
                register(&this.q.0.getters, &mut this.me, cx.waker());
                Poll::Pending
            }
            Err(e) => {
                this.me = None;
                Poll::Ready(Err(e))
            }
        }
    }
}

impl<T, S: Storage<T>> Drop for Get<'_, T, S> {
    fn drop(&mut self) {
        // Woken for an item, but cancelled before taking it: the wake-up
        // goes to the next getter.
        if self.me.as_ref().is_some_and(|w| w.woken.get()) && !self.q.empty() {
            self.q.0.getters.wake_next();
        }
    }
}

/// A blocked `put`.
struct Put<'a, T, S: Storage<T>> {
    q: &'a Queue<T, S>,
    item: Option<T>,
    me: Option<Rc<Waiter>>,
}

impl<T, S: Storage<T>> Unpin for Put<'_, T, S> {}

impl<T, S: Storage<T>> std::future::Future for Put<'_, T, S> {
    type Output = Result<()>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<()>> {
        let this = &mut *self;
        if this.q.0.shutdown.get() {
            this.me = None;
            return Poll::Ready(Err(Error::QueueShutDown));
        }
        if !this.q.full() {
            this.me = None;
            let item = this.item.take().expect("a put completes once");
            return Poll::Ready(this.q.put_nowait(item));
        }
        register(&this.q.0.putters, &mut this.me, cx.waker());
        Poll::Pending
    }
}

impl<T, S: Storage<T>> Drop for Put<'_, T, S> {
    fn drop(&mut self) {
        // Woken for room, but cancelled before using it: pass it on. The
        // item is dropped with the future, never inserted.
        if self.me.as_ref().is_some_and(|w| w.woken.get()) && !self.q.full() {
            self.q.0.putters.wake_next();
        }
    }
}

impl<T, S: Storage<T>> fmt::Debug for Queue<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<Queue maxsize={} qsize={} unfinished={} shutdown={}>",
            self.0.maxsize,
            self.qsize(),
            self.0.unfinished.get(),
            self.0.shutdown.get()
        )
    }
}
