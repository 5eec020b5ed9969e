//! `add_reader` / `add_writer`: level-triggered callbacks on raw fds, on both
//! backends. Each watcher is a loop-internal task that waits on a one-shot
//! readiness op (io_uring `POLL_ADD`, or `poll(2)` + epoll on the selector),
//! runs the callback, yields one loop turn, and re-arms.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::os::fd::RawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;

use crate::base_loop::EventLoop;
use crate::driver::Op;
use crate::driver::ops::PollAdd;
use crate::error::{Error, Result, panic_message};
use crate::events::ExceptionContext;
use crate::tasks::yield_now;

impl EventLoop {
    pub(crate) fn add_watcher(
        &self,
        fd: RawFd,
        writable: bool,
        mut cb: impl FnMut() + 'static,
    ) -> Result<()> {
        self.check_open()?;
        if fd < 0 {
            return Err(Error::InvalidArgument(format!(
                "invalid file descriptor {fd}"
            )));
        }
        // As asyncio: a second add for the same fd replaces the callback.
        self.remove_watcher(fd, writable);
        let active = Rc::new(Cell::new(true));
        let lp = self.clone();
        let still = active.clone();
        let what = if writable { "writer" } else { "reader" };
        let task = self.spawn_internal(async move {
            let _guard = ActiveGuard(still.clone());
            loop {
                let (res, _) = Op::submit(lp.driver(), PollAdd::raw(fd, writable)).await;
                if !still.get() {
                    return;
                }
                if let Err(e) = res {
                    lp.call_exception_handler_impl(
                        ExceptionContext::new(format!(
                            "fd {what} for fd {fd} failed; it is removed"
                        ))
                        .with_exception(e.into()),
                    );
                    lp.core.watchers.borrow_mut().remove(&(fd, writable));
                    return;
                }
                if let Err(p) = catch_unwind(AssertUnwindSafe(&mut cb)) {
                    lp.call_exception_handler_impl(ExceptionContext {
                        message: format!("Exception in {what} callback for fd {fd}"),
                        exception: Some(Error::Panic(panic_message(&*p))),
                        handle: Some(format!("<Handle {what} fd={fd}>")),
                        ..Default::default()
                    });
                }
                // Let the rest of the loop run before the fd is polled again:
                // a level-triggered fd that stays ready must not starve it.
                yield_now().await;
                if !still.get() {
                    return;
                }
            }
        });
        self.core
            .watchers
            .borrow_mut()
            .insert((fd, writable), (task.as_ref(), active));
        Ok(())
    }

    pub(crate) fn remove_watcher(&self, fd: RawFd, writable: bool) -> bool {
        let entry = self.core.watchers.borrow_mut().remove(&(fd, writable));
        match entry {
            Some((task, active)) => {
                active.set(false);
                task.cancel(None);
                true
            }
            None => false,
        }
    }
}

/// Marks the watcher inactive however its task ends.
struct ActiveGuard(Rc<Cell<bool>>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.set(false);
    }
}
