//! The protocol a transport owns, and the rules for calling it: one call at
//! a time (a call made while another is running is deferred until it
//! returns), panics caught and reported, released after `connection_lost`.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::panic_message;

type Deferred<P> = Box<dyn FnOnce(&mut P)>;

/// Why a protocol call did not happen.
pub(crate) enum Failure {
    /// The protocol is inside another callback of this transport.
    Busy,
    /// The callback panicked (the message).
    Panic(String),
}

pub(crate) struct ProtoCell<P: ?Sized> {
    p: RefCell<Option<Box<P>>>,
    deferred: RefCell<VecDeque<Deferred<P>>>,
}

impl<P: ?Sized + 'static> ProtoCell<P> {
    pub(crate) fn new(p: Box<P>) -> Self {
        ProtoCell {
            p: RefCell::new(Some(p)),
            deferred: RefCell::new(VecDeque::new()),
        }
    }

    /// Calls the protocol now. `Ok(None)`: it was already released.
    pub(crate) fn invoke<R>(&self, f: impl FnOnce(&mut P) -> R) -> Result<Option<R>, Failure> {
        let Ok(mut guard) = self.p.try_borrow_mut() else {
            return Err(Failure::Busy);
        };
        let Some(p) = guard.as_mut() else {
            return Ok(None);
        };
        let r = catch_unwind(AssertUnwindSafe(|| f(&mut **p)));
        drop(guard);
        let r = r.map_err(|e| Failure::Panic(panic_message(&*e)))?;
        // (Calls deferred while the protocol was busy: usually none.)
        if !self.deferred.borrow().is_empty() {
            self.drain()?;
        }
        Ok(Some(r))
    }

    /// Calls the protocol now, or right after the callback it is in.
    pub(crate) fn call(&self, f: impl FnOnce(&mut P) + 'static) -> Result<(), String> {
        match self.invoke_boxed(Box::new(f)) {
            Ok(()) => Ok(()),
            Err(Failure::Panic(m)) => Err(m),
            Err(Failure::Busy) => Ok(()),
        }
    }

    fn invoke_boxed(&self, f: Deferred<P>) -> Result<(), Failure> {
        if self.p.try_borrow_mut().is_err() {
            self.deferred.borrow_mut().push_back(f);
            return Err(Failure::Busy);
        }
        self.invoke(f).map(|_| ())
    }

    fn drain(&self) -> Result<(), Failure> {
        loop {
            let next = self.deferred.borrow_mut().pop_front();
            match next {
                Some(d) => self.invoke(d).map(|_| ())?,
                None => return Ok(()),
            }
        }
    }

    /// Releases the protocol (after `connection_lost`).
    pub(crate) fn release(&self) {
        self.deferred.borrow_mut().clear();
        let p = self.p.borrow_mut().take();
        drop(p);
    }

    pub(crate) fn replace(&self, p: Box<P>) -> Option<Box<P>> {
        self.p.borrow_mut().replace(p)
    }
}
