//! `add_signal_handler` / `remove_signal_handler`, on the process-wide
//! signal hub (`driver/sighub.rs`): a loop that handles signals has one hub
//! subscription, whose eventfd it watches with its own fd watcher
//! (`add_reader`'s machinery, so both backends), and runs each handler as
//! an ordinary callback through the ready queue, never in signal context.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::base_loop::EventLoop;
use crate::driver::sighub::{self, Subscription};
use crate::error::{Error, Result};

/// One signal's handler on one loop.
struct Entry {
    cb: RefCell<Box<dyn FnMut()>>,
    /// The hub's count for the signal when this loop last looked.
    seen: Cell<u64>,
    /// A call is queued and has not started yet (it covers what came
    /// meanwhile: bursts are coalesced).
    queued: Cell<bool>,
    /// Cleared when the handler is removed or replaced: a queued call of
    /// it then does nothing (asyncio cancels the signal's handle).
    active: Cell<bool>,
}

/// A loop's signal handlers and its hub subscription.
pub(crate) struct LoopSignals {
    sub: Subscription,
    handlers: BTreeMap<i32, Rc<Entry>>,
}

fn setup_error(sig: i32, e: std::io::Error) -> Error {
    // asyncio: RuntimeError when the handler cannot be set up.
    Error::InvalidState(format!("cannot set up a handler for signal {sig}: {e}"))
}

impl EventLoop {
    /// See [`AbstractEventLoop::add_signal_handler`](crate::AbstractEventLoop::add_signal_handler).
    pub(crate) fn add_signal_handler_impl(
        &self,
        sig: i32,
        cb: impl FnMut() + 'static,
    ) -> Result<()> {
        self.check_open()?;
        sighub::check_signal(sig).map_err(Error::InvalidArgument)?;
        let mut slot = self.core.signals.borrow_mut();
        if slot.is_none() {
            let sub = Subscription::new().map_err(|e| setup_error(sig, e))?;
            let lp = self.clone();
            self.add_watcher(sub.fd(), false, move || lp.dispatch_signals())?;
            *slot = Some(LoopSignals {
                sub,
                handlers: BTreeMap::new(),
            });
        }
        let ls = slot.as_mut().expect("made above");
        if let Err(e) = ls.sub.add(sig) {
            let empty = ls.handlers.is_empty();
            let gone = if empty { slot.take() } else { None };
            drop(slot);
            if let Some(ls) = gone {
                self.remove_watcher(ls.sub.fd(), false);
            }
            return Err(setup_error(sig, e));
        }
        // (The hub writes our eventfd for `sig` from here on: a signal that
        // comes now is either in this baseline or wakes the watcher.)
        let entry = Rc::new(Entry {
            cb: RefCell::new(Box::new(cb)),
            seen: Cell::new(sighub::count(sig)),
            queued: Cell::new(false),
            active: Cell::new(true),
        });
        let old = ls.handlers.insert(sig, entry);
        drop(slot);
        // The replaced callback is dropped outside the borrow (its drop may
        // call back into the loop).
        if let Some(old) = old {
            old.active.set(false);
        }
        Ok(())
    }

    /// See [`AbstractEventLoop::remove_signal_handler`](crate::AbstractEventLoop::remove_signal_handler).
    pub(crate) fn remove_signal_handler_impl(&self, sig: i32) -> bool {
        if sighub::check_signal(sig).is_err() {
            return false;
        }
        let mut slot = self.core.signals.borrow_mut();
        let Some(ls) = slot.as_mut() else {
            return false;
        };
        let Some(old) = ls.handlers.remove(&sig) else {
            return false;
        };
        old.active.set(false);
        ls.sub.remove(sig);
        let gone = if ls.handlers.is_empty() {
            slot.take()
        } else {
            None
        };
        drop(slot);
        if let Some(ls) = gone {
            self.remove_watcher(ls.sub.fd(), false);
        }
        drop(old);
        true
    }

    /// True if this loop has a handler for `sig` (the Runner leaves SIGINT
    /// to a program that handles it itself).
    pub(crate) fn has_signal_handler(&self, sig: i32) -> bool {
        self.core
            .signals
            .borrow()
            .as_ref()
            .is_some_and(|ls| ls.handlers.contains_key(&sig))
    }

    /// At `close()`: every handler goes, the dispositions are put back.
    pub(crate) fn close_signals(&self) {
        let gone = self.core.signals.borrow_mut().take();
        if let Some(ls) = gone {
            for e in ls.handlers.values() {
                e.active.set(false);
            }
            self.remove_watcher(ls.sub.fd(), false);
            drop(ls);
        }
    }

    /// The subscription's eventfd was readable: queue one call of each
    /// handler whose signal came since it was last looked at.
    fn dispatch_signals(&self) {
        let due: Vec<Rc<Entry>> = {
            let slot = self.core.signals.borrow();
            let Some(ls) = slot.as_ref() else { return };
            // Drained before the counts are read: a signal after the reads
            // makes the eventfd readable again.
            ls.sub.drain();
            ls.handlers
                .iter()
                .filter_map(|(&sig, e)| {
                    let n = sighub::count(sig);
                    if n == e.seen.get() {
                        return None;
                    }
                    e.seen.set(n);
                    (!e.queued.replace(true)).then(|| e.clone())
                })
                .collect()
        };
        for e in due {
            self.call_soon_impl(
                move || {
                    // Cleared before the call: a signal that comes while it
                    // runs queues the next one.
                    e.queued.set(false);
                    if e.active.get() {
                        (e.cb.borrow_mut())();
                    }
                },
                &"signal handler",
            );
        }
    }
}
