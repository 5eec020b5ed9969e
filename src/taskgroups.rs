//! Task groups: asyncio's `TaskGroup` (structured concurrency).
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

use crate::base_loop::EventLoop;
use crate::error::{Error, Result};
use crate::events::{AbstractEventLoop, get_running_loop};
use crate::tasks::{Task, TaskRef};

struct Inner {
    lp: EventLoop,
    children: RefCell<Vec<TaskRef>>,
    pending: Cell<usize>,
    errors: RefCell<Vec<Error>>,
    /// The first [`Error::Interrupted`] (asyncio's KeyboardInterrupt /
    /// SystemExit), re-raised bare once every child is done.
    base_error: RefCell<Option<Error>>,
    aborting: Cell<bool>,
    closed: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Inner {
    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Records a child's or the body's error and aborts the group.
    fn fail(&self, e: Error) {
        if matches!(e, Error::Interrupted) {
            self.base_error.borrow_mut().get_or_insert(e);
        } else {
            self.errors.borrow_mut().push(e);
        }
        self.abort();
    }

    /// Cancels the children not yet done and (through `run`) the body.
    fn abort(&self) {
        if self.aborting.replace(true) {
            return;
        }
        for t in self.children.borrow().iter() {
            if !t.done() {
                t.cancel(None);
            }
        }
        self.wake();
    }
}

/// A group of tasks that all end before the group does.
///
/// Equivalent to `asyncio.TaskGroup`, run as [`TaskGroup::run`]: the body
/// gets the group and spawns children with [`create_task`](Self::create_task).
/// When the body returns, every child is awaited. The first child (or body)
/// error cancels the other children and the body; no new task is accepted
/// after that, and all errors come back together as [`Error::Group`].
/// Children the group cancelled itself, and children cancelled by anyone
/// else, are not errors. A child (or body) ending with
/// [`Error::Interrupted`] (asyncio's `KeyboardInterrupt` / `SystemExit`)
/// also cancels the rest, and once every child is done the group ends with
/// that error itself, not wrapped in a group (as asyncio re-raises the base
/// error bare). Dropping the `run` future (cancelling the task that
/// awaits it) cancels every child; since `Drop` cannot wait, the children
/// finish cancelling at their next turn.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ringloop::{Error, TaskGroup, sleep};
/// ringloop::run(async {
///     let r = TaskGroup::run(|tg| async move {
///         let a = tg.create_task(async { Ok(1) })?;
///         let b = tg.create_task(async { sleep(Duration::from_millis(1)).await?; Ok(2) })?;
///         Ok((a, b))
///     }).await.unwrap();
///     assert_eq!((r.0.result().unwrap().unwrap(), r.1.result().unwrap().unwrap()), (1, 2));
///
///     let failed = TaskGroup::run(|tg| async move {
///         tg.create_task(async { Err::<(), _>(Error::InvalidArgument("bad".into())) })?;
///         tg.create_task(async { sleep(Duration::from_secs(10)).await })?; // cancelled
///         Ok(())
///     }).await;
///     assert!(matches!(failed, Err(Error::Group(es)) if es.len() == 1));
/// }).unwrap();
/// ```
#[derive(Clone)]
pub struct TaskGroup(Rc<Inner>);

impl TaskGroup {
    /// Runs `body` with a new group, then waits for every child.
    ///
    /// # Errors
    ///
    /// [`Error::Interrupted`], bare, if a child or the body ended with it;
    /// else [`Error::Group`] with every child and body error (cancellations
    /// excluded); [`Error::Cancelled`] if the body was cancelled without any
    /// error; [`Error::InvalidState`] without a running loop.
    pub async fn run<F, Fut, T>(body: F) -> Result<T>
    where
        F: FnOnce(TaskGroup) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let tg = TaskGroup(Rc::new(Inner {
            lp: get_running_loop()?,
            children: RefCell::new(Vec::new()),
            pending: Cell::new(0),
            errors: RefCell::new(Vec::new()),
            base_error: RefCell::new(None),
            aborting: Cell::new(false),
            closed: Cell::new(false),
            waker: RefCell::new(None),
        }));
        let _guard = Guard(tg.clone());
        let inner = &tg.0;
        let mut body = pin!(Some(body(tg.clone())));
        // The body runs until it returns or the group aborts.
        let out = std::future::poll_fn(|cx| {
            *inner.waker.borrow_mut() = Some(cx.waker().clone());
            if inner.aborting.get() {
                body.set(None);
                return Poll::Ready(None);
            }
            match body.as_mut().as_pin_mut().map(|f| f.poll(cx)) {
                Some(Poll::Ready(r)) => {
                    body.set(None);
                    Poll::Ready(Some(r))
                }
                _ => Poll::Pending,
            }
        })
        .await;
        let mut body_cancelled = out.is_none();
        let value = match out {
            Some(Ok(v)) => Some(v),
            Some(Err(e)) if e.is_cancelled() => {
                body_cancelled = true;
                inner.abort();
                None
            }
            Some(Err(e)) => {
                inner.fail(e);
                None
            }
            None => None,
        };
        // Every child ends before the group does.
        std::future::poll_fn(|cx| {
            if inner.pending.get() == 0 {
                Poll::Ready(())
            } else {
                *inner.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        inner.closed.set(true);
        if let Some(e) = inner.base_error.borrow_mut().take() {
            return Err(e);
        }
        let errors = std::mem::take(&mut *inner.errors.borrow_mut());
        if !errors.is_empty() {
            return Err(Error::Group(errors));
        }
        match value {
            Some(v) if !body_cancelled => Ok(v),
            _ => Err(Error::Cancelled(None)),
        }
    }

    /// Spawns a child task in the group.
    ///
    /// Equivalent to `asyncio.TaskGroup.create_task`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] once the group is shutting down (a child
    /// failed) or has finished.
    pub fn create_task<F, T>(&self, fut: F) -> Result<Task<Result<T>>>
    where
        F: Future<Output = Result<T>> + 'static,
        T: 'static,
    {
        self.spawn(None, fut)
    }

    /// As [`create_task`](Self::create_task), with a task name.
    ///
    /// # Errors
    ///
    /// As [`create_task`](Self::create_task).
    pub fn create_named_task<F, T>(
        &self,
        name: impl Into<String>,
        fut: F,
    ) -> Result<Task<Result<T>>>
    where
        F: Future<Output = Result<T>> + 'static,
        T: 'static,
    {
        self.spawn(Some(name.into()), fut)
    }

    fn spawn<F, T>(&self, name: Option<String>, fut: F) -> Result<Task<Result<T>>>
    where
        F: Future<Output = Result<T>> + 'static,
        T: 'static,
    {
        let inner = &self.0;
        if inner.closed.get() {
            return Err(Error::state("TaskGroup has finished"));
        }
        if inner.aborting.get() {
            return Err(Error::state("TaskGroup is shutting down"));
        }
        let task = match name {
            Some(n) => inner.lp.create_named_task(n, fut),
            None => inner.lp.create_task(fut),
        };
        inner.pending.set(inner.pending.get() + 1);
        inner.children.borrow_mut().push(task.as_ref());
        let weak = Rc::downgrade(inner);
        task.add_done_callback(move |t| {
            let Some(inner) = weak.upgrade() else { return };
            // The group collects the error (asyncio calls `exception()`).
            t.mark_retrieved();
            let err = t.peek(|r| match r {
                Some(Err(e)) | Some(Ok(Err(e))) if !e.is_cancelled() => Some(e.clone()),
                _ => None,
            });
            inner.pending.set(inner.pending.get() - 1);
            if let Some(e) = err {
                inner.fail(e);
            }
            inner.wake();
        });
        Ok(task)
    }
}

/// Cancels the children if the group's `run` future is dropped early.
struct Guard(TaskGroup);

impl Drop for Guard {
    fn drop(&mut self) {
        let inner = &self.0.0;
        if !inner.closed.replace(true) {
            for t in inner.children.borrow().iter() {
                if !t.done() {
                    t.cancel(None);
                }
            }
        }
    }
}

impl fmt::Debug for TaskGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<TaskGroup pending={} errors={} aborting={}>",
            self.0.pending.get(),
            self.0.errors.borrow().len(),
            self.0.aborting.get()
        )
    }
}
