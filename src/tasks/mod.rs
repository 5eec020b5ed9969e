//! Tasks: futures scheduled on the loop, with asyncio's `Task` API.
//!
//! A task's future is polled by the loop whenever its waker fires. Cancelling
//! a task (asyncio `Task.cancel`) marks it; at its next turn the loop *drops*
//! the future instead of polling it (cleanup runs in `Drop`) and the task ends
//! with [`Error::Cancelled`]. Dropping a [`Task`] handle detaches the task: it
//! keeps running.
#![deny(unsafe_code)] // except `slot` (the future pinned in place) and `lent` (a stack waker)

pub(crate) mod api;
#[allow(unsafe_code)]
mod lent;
#[allow(unsafe_code)]
mod slot;

use std::cell::{Cell, OnceCell, RefCell};
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

use crate::base_loop::{Core, EventLoop};
use crate::error::{Error, Result, panic_message};
use crate::events::ExceptionContext;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Pending,
    Ok,
    Failed,
    Cancelled,
}

/// The type-erased part of every task.
/// What most tasks never have: a name, a pending cancel request and the
/// error a failed body returned (boxed on first use, so a task stays small).
#[derive(Default)]
struct Rare {
    name: Option<String>,
    /// The message of a pending cancel request (`TaskHeader::cancel_requested`).
    cancel_msg: Option<String>,
    /// The `Err` a body of a recognised fallible output type returned
    /// ([`body_error`]), reported if nobody retrieves the result.
    body_error: Option<Error>,
}

pub(crate) struct TaskHeader {
    id: u64,
    rare: RefCell<Option<Box<Rare>>>,
    outcome: Cell<Outcome>,
    cancelling: Cell<u32>,
    /// `cancel` asked for cancellation; not acted on yet (its message, if
    /// any, is in `rare`, so a cancel without one allocates nothing).
    cancel_requested: Cell<bool>,
    /// The task's slot waker, fetched when a poll first clones its waker
    /// (until then polls get a lent one, `lent.rs`): a task cancelled
    /// before it ran, or one that finishes without keeping its waker,
    /// never touches the slot's.
    waker: OnceCell<Waker>,
    /// The task's slot in the loop and its generation (what its waker
    /// carries): `cancel` schedules the task through them.
    idx: u32,
    generation: u32,
    core: Weak<Core>,
    /// Loop-internal tasks (fd watchers) are hidden from `all_tasks`.
    pub(crate) internal: bool,
    retrieved: Cell<bool>,
}

impl TaskHeader {
    pub(crate) fn new(
        id: u64,
        name: Option<String>,
        (idx, generation): (u32, u32),
        core: Weak<Core>,
        internal: bool,
    ) -> Self {
        TaskHeader {
            id,
            rare: RefCell::new(name.map(|n| {
                Box::new(Rare {
                    name: Some(n),
                    ..Rare::default()
                })
            })),
            outcome: Cell::new(Outcome::Pending),
            cancelling: Cell::new(0),
            cancel_requested: Cell::new(false),
            waker: OnceCell::new(),
            idx,
            generation,
            core,
            internal,
            retrieved: Cell::new(false),
        }
    }

    fn name(&self) -> String {
        self.rare
            .borrow()
            .as_ref()
            .and_then(|r| r.name.clone())
            .unwrap_or_else(|| format!("Task-{}", self.id))
    }

    fn set_name(&self, name: String) {
        self.rare.borrow_mut().get_or_insert_with(Box::default).name = Some(name);
    }

    /// Takes the pending cancel request, if any.
    fn take_cancel_request(&self) -> Option<Option<String>> {
        if !self.cancel_requested.replace(false) {
            return None;
        }
        Some(
            self.rare
                .borrow_mut()
                .as_mut()
                .and_then(|r| r.cancel_msg.take()),
        )
    }

    fn done(&self) -> bool {
        self.outcome.get() != Outcome::Pending
    }

    fn cancel(&self, msg: Option<String>) -> bool {
        if self.done() {
            return false;
        }
        self.cancelling.set(self.cancelling.get() + 1);
        self.cancel_requested.set(true);
        // The latest request's message wins (asyncio's `_cancel_message`).
        let mut rare = self.rare.borrow_mut();
        match (msg, rare.as_mut()) {
            (Some(m), _) => rare.get_or_insert_with(Box::default).cancel_msg = Some(m),
            (None, Some(r)) => r.cancel_msg = None,
            (None, None) => {}
        }
        drop(rare);
        // Scheduled straight on the loop (cancel runs on the loop's
        // thread: a `TaskRef` is not `Send`), as the task's waker would.
        if let Some(core) = self.core.upgrade() {
            core.schedule_task(self.idx, self.generation);
        }
        true
    }

    fn uncancel(&self) -> u32 {
        let n = self.cancelling.get().saturating_sub(1);
        self.cancelling.set(n);
        if n == 0 {
            // Python 3.13: a fully uncancelled task forgets a pending request.
            self.take_cancel_request();
        }
        n
    }

    fn describe(&self) -> String {
        format!("<Task {} {:?}>", self.name(), self.outcome.get())
    }

    /// Marks the result as looked at: no "never retrieved" report.
    pub(crate) fn mark_retrieved(&self) {
        self.retrieved.set(true);
    }
}

/// The error in a task's output, for the output types the loop can
/// recognise as fallible: ringloop's `Result<()>` and `std::io::Result<()>`
/// (what a detached task, such as a connection handler, returns). Rust has
/// no specialization, so an arbitrary output type cannot be asked whether
/// it is an error; the check is a type-id comparison the compiler folds
/// away for every other type.
fn body_error<T: 'static>(out: &T) -> Option<Error> {
    let any = out as &dyn std::any::Any;
    if let Some(Err(e)) = any.downcast_ref::<Result<()>>() {
        return (!e.is_cancelled()).then(|| e.clone());
    }
    if let Some(Err(e)) = any.downcast_ref::<std::io::Result<()>>() {
        return Some(Error::from(std::io::Error::new(e.kind(), e.to_string())));
    }
    None
}

/// What the loop needs from a task, whatever its output type.
pub(crate) trait RawTask {
    fn header(&self) -> &TaskHeader;
    /// Polls the task once; true when it has finished.
    fn step(self: Rc<Self>, core: &Core) -> bool;
    /// Drops the future without running it further (loop close).
    fn destroy(self: Rc<Self>);
}

/// What a typed [`Task`] handle needs.
trait TaskView<T>: RawTask {
    fn poll_join(&self, cx: &mut Context<'_>) -> Poll<Result<T>>;
    fn with_result(&self, f: &mut dyn FnMut(Option<&Result<T>>));
    fn add_callback(&self, cb: TaskCallback<T>) -> u64;
    fn remove_callback(&self, id: u64) -> usize;
}

type TaskCallback<T> = Box<dyn FnOnce(&Task<T>)>;

pub(crate) struct TaskCell<F: Future> {
    header: TaskHeader,
    /// The future, then the result (`slot.rs`).
    future: slot::FutureSlot<F>,
    /// Who waits for the task to finish.
    waiters: RefCell<Waiters<F::Output>>,
}

/// Who waits for a task: usually one awaiting waker, inline; a second
/// awaiter or any done callback moves them all to a box (most tasks have
/// neither), which keeps the task cell small.
enum Waiters<T> {
    None,
    One(Waker),
    Rare(Box<RareWaiters<T>>),
}

/// Awaiters and done callbacks in the order they came: as asyncio, where
/// an await is a done callback too, they run in that order.
struct RareWaiters<T> {
    list: Vec<Waiter<T>>,
    next_id: u64,
}

enum Waiter<T> {
    Join(Waker),
    Done(u64, TaskCallback<T>),
}

impl<T> Waiters<T> {
    /// The boxed form, made on first use (keeping an inline waker first).
    fn rare(&mut self) -> &mut RareWaiters<T> {
        if !matches!(self, Waiters::Rare(_)) {
            let mut r = Box::new(RareWaiters {
                list: Vec::new(),
                next_id: 1,
            });
            if let Waiters::One(w) = std::mem::replace(self, Waiters::None) {
                r.list.push(Waiter::Join(w));
            }
            *self = Waiters::Rare(r);
        }
        match self {
            Waiters::Rare(r) => r,
            _ => unreachable!("made above"),
        }
    }
}

impl<F> TaskCell<F>
where
    F: Future + 'static,
    F::Output: 'static,
{
    pub(crate) fn new(header: TaskHeader, fut: F) -> Rc<Self> {
        Rc::new(TaskCell {
            header,
            future: slot::FutureSlot::new(fut),
            waiters: RefCell::new(Waiters::None),
        })
    }

    fn finish(self: &Rc<Self>, result: Result<F::Output>) {
        let outcome = match &result {
            Ok(v) => {
                if let Some(e) = body_error(v) {
                    self.header
                        .rare
                        .borrow_mut()
                        .get_or_insert_with(Box::default)
                        .body_error = Some(e);
                }
                Outcome::Ok
            }
            Err(Error::Cancelled(_)) => Outcome::Cancelled,
            Err(_) => Outcome::Failed,
        };
        self.future.set_result(result);
        self.header.outcome.set(outcome);
        let rare = match std::mem::replace(&mut *self.waiters.borrow_mut(), Waiters::None) {
            Waiters::None => return,
            Waiters::One(w) => return w.wake(),
            Waiters::Rare(r) => r,
        };
        // Each in turn: a waker schedules its task, a callback is
        // scheduled with `call_soon`, on the same ready queue.
        let core = self.header.core.upgrade();
        let mut task = None;
        for w in rare.list {
            match w {
                Waiter::Join(w) => w.wake(),
                Waiter::Done(_, cb) => {
                    let Some(core) = &core else { continue };
                    let task = task
                        .get_or_insert_with(|| Task {
                            cell: self.clone(),
                            untyped: TaskRef(self.clone()),
                        })
                        .clone();
                    core.call_soon(move || cb(&task), &"task done callback");
                }
            }
        }
    }
}

impl<F> RawTask for TaskCell<F>
where
    F: Future + 'static,
    F::Output: 'static,
{
    fn header(&self) -> &TaskHeader {
        &self.header
    }

    fn step(self: Rc<Self>, core: &Core) -> bool {
        if self.header.done() {
            return true;
        }
        if let Some(msg) = self.header.take_cancel_request() {
            drop_quietly(&self.future);
            self.finish(Err(Error::Cancelled(msg)));
            return true;
        }
        let h = &self.header;
        let polled = match h.waker.get() {
            Some(w) => {
                let mut cx = Context::from_waker(w);
                catch_unwind(AssertUnwindSafe(|| self.future.poll(&mut cx)))
            }
            None => lent::with_lent_waker(h, core, |cx| {
                catch_unwind(AssertUnwindSafe(|| self.future.poll(cx)))
            }),
        };
        match polled {
            Ok(None) => true,
            Ok(Some(Poll::Pending)) => false,
            Ok(Some(Poll::Ready(v))) => {
                drop_quietly(&self.future);
                // As asyncio: a cancel requested during the task's last step
                // still ends it cancelled.
                match self.header.take_cancel_request() {
                    Some(msg) => self.finish(Err(Error::Cancelled(msg))),
                    None => self.finish(Ok(v)),
                }
                true
            }
            Err(p) => {
                drop_quietly(&self.future);
                let msg = panic_message(&*p);
                if let Some(core) = self.header.core.upgrade() {
                    core.note_panic(&msg);
                }
                self.finish(Err(Error::Panic(msg)));
                true
            }
        }
    }

    fn destroy(self: Rc<Self>) {
        if self.header.done() {
            return;
        }
        drop_quietly(&self.future);
        self.finish(Err(Error::Cancelled(Some("event loop closed".into()))));
    }
}

/// Drops a future, turning a panic in its destructor into a log line.
fn drop_quietly<F: Future>(slot: &slot::FutureSlot<F>) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| slot.drop_future())) {
        log::error!(
            "ringloop: a task's future panicked while dropped: {}",
            panic_message(&*p)
        );
    }
}

impl<F> TaskView<F::Output> for TaskCell<F>
where
    F: Future + 'static,
    F::Output: 'static,
{
    fn poll_join(&self, cx: &mut Context<'_>) -> Poll<Result<F::Output>> {
        if self.header.done() {
            self.header.retrieved.set(true);
            return Poll::Ready(self.future.take_result().unwrap_or_else(|| {
                Err(Error::state(
                    "the task's result was already taken by another await",
                ))
            }));
        }
        let mut w = self.waiters.borrow_mut();
        match &mut *w {
            Waiters::None => *w = Waiters::One(cx.waker().clone()),
            Waiters::One(one) if one.will_wake(cx.waker()) => {}
            _ => {
                let r = w.rare();
                let known = r
                    .list
                    .iter()
                    .any(|j| matches!(j, Waiter::Join(j) if j.will_wake(cx.waker())));
                if !known {
                    r.list.push(Waiter::Join(cx.waker().clone()));
                }
            }
        }
        Poll::Pending
    }

    fn with_result(&self, f: &mut dyn FnMut(Option<&Result<F::Output>>)) {
        self.future.with_result(f)
    }

    fn add_callback(&self, cb: TaskCallback<F::Output>) -> u64 {
        let mut w = self.waiters.borrow_mut();
        let r = w.rare();
        let id = r.next_id;
        r.next_id += 1;
        r.list.push(Waiter::Done(id, cb));
        id
    }

    fn remove_callback(&self, id: u64) -> usize {
        let mut w = self.waiters.borrow_mut();
        let Waiters::Rare(r) = &mut *w else { return 0 };
        let before = r.list.len();
        r.list
            .retain(|w| !matches!(w, Waiter::Done(i, _) if *i == id));
        before - r.list.len()
    }
}

impl<F: Future> Drop for TaskCell<F> {
    fn drop(&mut self) {
        if self.header.retrieved.get() || self.header.internal {
            return;
        }
        let err = match self.future.result_mut() {
            Some(Err(e)) if !e.is_cancelled() => e.clone(),
            // A body that returned `Err` nobody looked at (see `body_error`).
            Some(Ok(_)) => match self
                .header
                .rare
                .get_mut()
                .as_mut()
                .and_then(|r| r.body_error.take())
            {
                Some(e) => e,
                None => return,
            },
            _ => return,
        };
        let ctx = ExceptionContext {
            message: "Task exception was never retrieved".into(),
            exception: Some(err),
            task: Some(self.header.describe()),
            ..Default::default()
        };
        match self.header.core.upgrade() {
            Some(core) if !core.is_closed_flag() => {
                // (A panic stopped the loop when it happened, if asked to.)
                EventLoop::from_core(core).report_exception(ctx)
            }
            _ => log::error!("{}: {:?}", ctx.message, ctx.exception),
        }
    }
}

/// A scheduled future: asyncio's `Task`.
///
/// Awaiting it yields the future's output, or the error that ended it
/// ([`Error::Cancelled`], [`Error::Panic`]). The output is moved out by the
/// first await; a second await gets [`Error::InvalidState`] (use
/// [`result`](Self::result) to read a `Clone` output again). Dropping the
/// handle detaches the task; it keeps running.
///
/// A task that fails and whose result nobody retrieves (no await,
/// [`result`](Self::result) or [`exception`](Self::exception)) is reported
/// when it is dropped, as asyncio's "Task exception was never retrieved",
/// through the loop's exception handler (context keys `message`,
/// `exception`, `task`). "Fails" means a panic, and, for a task whose
/// output is `ringloop::Result<()>` or `std::io::Result<()>`, a body that
/// returned `Err` (other than [`Error::Cancelled`]). Rust difference: the
/// loop cannot ask an arbitrary output type whether it is an error (no
/// specialization), so a task with another output type that returns
/// `Err` is not reported; await it or add a done callback.
///
/// The untyped operations (`cancel`, `cancelling`, `uncancel`, `done`,
/// `cancelled`, `get_name`, `set_name`) are [`TaskRef`]'s, reached through
/// `Deref`.
pub struct Task<T> {
    cell: Rc<dyn TaskView<T>>,
    untyped: TaskRef,
}

impl<T> Clone for Task<T> {
    fn clone(&self) -> Self {
        Task {
            cell: self.cell.clone(),
            untyped: self.untyped.clone(),
        }
    }
}

impl<T> std::ops::Deref for Task<T> {
    type Target = TaskRef;
    fn deref(&self) -> &TaskRef {
        &self.untyped
    }
}

impl<T: 'static> Task<T> {
    pub(crate) fn from_cell<F>(cell: Rc<TaskCell<F>>) -> Task<T>
    where
        F: Future<Output = T> + 'static,
    {
        Task {
            untyped: TaskRef(cell.clone()),
            cell,
        }
    }

    fn header(&self) -> &TaskHeader {
        self.cell.header()
    }

    /// The error that ended the task, `None` if it succeeded.
    ///
    /// Equivalent to `asyncio.Task.exception`: as there, a cancelled task
    /// has no exception to return; the call itself fails with the
    /// cancellation (as [`LoopFuture::exception`](crate::LoopFuture::exception)).
    /// A body that returned `Err(e)` succeeded as far as the task is
    /// concerned (its output is `Err(e)`, read with
    /// [`result`](Self::result) or by awaiting).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] while pending; [`Error::Cancelled`] if the
    /// task was cancelled.
    pub fn exception(&self) -> Result<Option<Error>> {
        if !self.done() {
            return Err(Error::state("task is not done"));
        }
        self.header().retrieved.set(true);
        // (Once an await took the result, the outcome still says cancelled.)
        let mut out = if self.cancelled() {
            Err(Error::Cancelled(None))
        } else {
            Ok(None)
        };
        self.cell.with_result(&mut |r| match r {
            Some(Err(e @ Error::Cancelled(_))) => out = Err(e.clone()),
            Some(Err(e)) => out = Ok(Some(e.clone())),
            _ => {}
        });
        out
    }

    /// Adds a callback run (through `call_soon`, never synchronously) once
    /// the task is done; returns an id for
    /// [`remove_done_callback`](Self::remove_done_callback).
    ///
    /// Equivalent to `asyncio.Task.add_done_callback`.
    pub fn add_done_callback(&self, cb: impl FnOnce(&Task<T>) + 'static) -> u64 {
        if self.done() {
            let me = self.clone();
            if let Ok(lp) = self.get_loop() {
                lp.call_soon_impl(move || cb(&me), &"task done callback");
            }
            return 0;
        }
        self.cell.add_callback(Box::new(cb))
    }

    /// Removes a callback added by [`add_done_callback`](Self::add_done_callback);
    /// returns how many were removed. Equivalent to `asyncio.Task.remove_done_callback`.
    pub fn remove_done_callback(&self, id: u64) -> usize {
        self.cell.remove_callback(id)
    }

    /// The loop the task runs on. Equivalent to `asyncio.Task.get_loop`.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the loop was dropped.
    pub fn get_loop(&self) -> Result<EventLoop> {
        self.header()
            .core
            .upgrade()
            .map(EventLoop::from_core)
            .ok_or_else(|| Error::closed("the task's loop is gone"))
    }

    /// Marks the result as looked at (a task group collected the error).
    pub(crate) fn mark_retrieved(&self) {
        self.header().mark_retrieved();
    }

    /// Looks at the task's result (None while pending or once taken).
    pub(crate) fn peek<R>(&self, f: impl FnOnce(Option<&Result<T>>) -> R) -> R {
        let mut f = Some(f);
        let mut out = None;
        self.cell
            .with_result(&mut |r| out = Some((f.take().expect("once"))(r)));
        out.expect("with_result calls back")
    }

    /// Takes the result of a done task without waiting (None while pending).
    pub(crate) fn try_take(&self) -> Option<Result<T>> {
        if !self.done() {
            return None;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.cell.poll_join(&mut cx) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    /// An untyped handle to this task (what [`current_task`] returns).
    pub fn as_ref(&self) -> TaskRef {
        self.untyped.clone()
    }
}

impl<T: Clone + 'static> Task<T> {
    /// The task's output (cloned), or the error that ended it.
    ///
    /// Equivalent to `asyncio.Task.result`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidState`] while pending or once an await took the
    /// output; otherwise the task's own error.
    pub fn result(&self) -> Result<T> {
        if !self.done() {
            return Err(Error::state("task is not done"));
        }
        self.header().retrieved.set(true);
        let mut out = Err(Error::state(
            "the task's result was already taken by an await",
        ));
        self.cell.with_result(&mut |r| {
            if let Some(r) = r {
                out = r.clone();
            }
        });
        out
    }
}

impl<T: 'static> Future for Task<T> {
    type Output = Result<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        self.cell.poll_join(cx)
    }
}

impl<T: 'static> fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header().describe())
    }
}

/// The task hook of
/// [`AbstractEventLoop::set_task_factory`](crate::AbstractEventLoop::set_task_factory):
/// called with each new task before its first step.
pub type TaskHook = Rc<dyn Fn(&TaskRef)>;

/// An untyped task handle, as returned by [`current_task`] and [`all_tasks`].
#[derive(Clone)]
pub struct TaskRef(pub(crate) Rc<dyn RawTask>);

impl TaskRef {
    fn header(&self) -> &TaskHeader {
        self.0.header()
    }
    /// Requests cancellation: at its next turn the task's future is dropped
    /// and the task ends with [`Error::Cancelled`]`(msg)`. False if the task
    /// is already done.
    ///
    /// Equivalent to `asyncio.Task.cancel`. Unlike Python, the body cannot
    /// catch the cancellation; its cleanup runs in `Drop`.
    pub fn cancel(&self, msg: Option<&str>) -> bool {
        self.header().cancel(msg.map(str::to_owned))
    }
    /// Pending cancellation requests. Equivalent to `asyncio.Task.cancelling`.
    pub fn cancelling(&self) -> u32 {
        self.header().cancelling.get()
    }
    /// Withdraws one cancellation request; returns the remaining count. At
    /// zero, a request not yet acted on is forgotten.
    /// Equivalent to `asyncio.Task.uncancel`.
    pub fn uncancel(&self) -> u32 {
        self.header().uncancel()
    }
    /// True once the task has finished, failed or been cancelled.
    /// Equivalent to `asyncio.Task.done`.
    pub fn done(&self) -> bool {
        self.header().done()
    }
    /// True if the task ended cancelled. Equivalent to `asyncio.Task.cancelled`.
    pub fn cancelled(&self) -> bool {
        self.header().outcome.get() == Outcome::Cancelled
    }
    /// The task's name (`Task-N` unless set). Equivalent to `asyncio.Task.get_name`.
    pub fn get_name(&self) -> String {
        self.header().name()
    }
    /// Renames the task. Equivalent to `asyncio.Task.set_name`.
    pub fn set_name(&self, name: impl Into<String>) {
        self.header().set_name(name.into());
    }
    /// True if both handles refer to the same task.
    pub fn same(&self, other: &TaskRef) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header().describe())
    }
}

/// The task running now on this thread's loop, if any.
///
/// Equivalent to `asyncio.current_task`.
pub fn current_task() -> Option<TaskRef> {
    crate::base_loop::running_core().and_then(|c| c.current_task())
}

/// The running loop's tasks that are not done yet.
///
/// Equivalent to `asyncio.all_tasks`. Empty when no loop is running.
pub fn all_tasks() -> Vec<TaskRef> {
    crate::base_loop::running_core().map_or_else(Vec::new, |c| c.all_tasks())
}

/// Yields to the loop once: the task is scheduled again at the end of the
/// ready queue (asyncio's `sleep(0)`).
pub(crate) fn yield_now() -> YieldNow {
    YieldNow(false)
}

pub(crate) struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}
#[cfg(test)]
mod tests {
    #[test]
    fn a_task_stays_small() {
        // Name, cancel request and done callbacks are boxed on first use;
        // one awaiting waker is inline (264 bytes before that); the future
        // and the result share a place (176 before that).
        let n = std::mem::size_of::<super::TaskCell<std::future::Ready<()>>>();
        assert!(n <= 152, "TaskCell grew to {n} bytes");
        assert!(std::mem::size_of::<super::TaskHeader>() <= 64);
        // A sleep is a small future of its own (64 bytes as an async fn).
        let s = crate::sleep(std::time::Duration::from_secs(1));
        assert!(std::mem::size_of_val(&s) <= 32);
    }
}
