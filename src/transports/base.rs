//! What every transport shares: the connection's lifecycle as one enum,
//! flow control by asyncio's water marks, the protocol it owns (called one
//! callback at a time, a panic costing that connection only), the loop's
//! list of live transports, and `connection_lost` delivered exactly once.
//! The stream and datagram transports are built on it; the pipe,
//! subprocess and TLS transports to come will be.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use super::cell::ProtoCell;
use super::{DEFAULT_HIGH_WATER, buffer_limits};
use crate::base_loop::{EventLoop, LoopClosing};
use crate::error::{Error, Result};
use crate::events::ExceptionContext;

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Sending and receiving.
    Open,
    /// `close()` was asked: no more receives; buffered data still goes out,
    /// then the connection is lost.
    Closing,
    /// Over: `connection_lost` is delivered (or on its way), and nothing is
    /// sent or received any more.
    Lost,
}

/// The write buffer's size against asyncio's water marks: `pause_writing`
/// once strictly above `high`, `resume_writing` once at or below `low`.
#[derive(Debug)]
pub(crate) struct Flow {
    size: usize,
    high: usize,
    low: usize,
    paused: bool,
}

impl Default for Flow {
    fn default() -> Flow {
        Flow {
            size: 0,
            high: DEFAULT_HIGH_WATER,
            low: DEFAULT_HIGH_WATER / 4,
            paused: false,
        }
    }
}

impl Flow {
    /// `n` more bytes buffered. True: the protocol is to be paused now.
    pub(crate) fn add(&mut self, n: usize) -> bool {
        self.size += n;
        self.pause_due()
    }

    /// `n` buffered bytes went out. True: the protocol is to be resumed now.
    pub(crate) fn sent(&mut self, n: usize) -> bool {
        debug_assert!(n <= self.size, "sent more than was buffered");
        self.size -= n.min(self.size);
        let resume = self.paused && self.size <= self.low;
        self.paused &= !resume;
        resume
    }

    /// The buffer was dropped (abort): nothing is buffered any more.
    pub(crate) fn clear(&mut self) {
        self.size = 0;
    }

    /// Over the high-water mark and not paused yet: paused from now on.
    pub(crate) fn pause_due(&mut self) -> bool {
        let over = !self.paused && self.size > self.high;
        self.paused |= over;
        over
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    pub(crate) fn paused(&self) -> bool {
        self.paused
    }

    pub(crate) fn limits(&self) -> (usize, usize) {
        (self.low, self.high)
    }

    /// Sets the marks (asyncio's defaults and checks); true if the
    /// protocol is to be paused now.
    pub(crate) fn set_limits(&mut self, high: Option<usize>, low: Option<usize>) -> Result<bool> {
        let (high, low) = buffer_limits(high, low)?;
        self.high = high;
        self.low = low;
        Ok(self.pause_due())
    }
}

/// The state and the protocol every transport has. `P` is the protocol
/// trait object (`dyn Protocol`, `dyn DatagramProtocol`).
pub(crate) struct Base<P: ?Sized> {
    pub(crate) lp: EventLoop,
    phase: Cell<Phase>,
    pub(crate) flow: RefCell<Flow>,
    pub(crate) protocol: ProtoCell<P>,
    on_lost: RefCell<Vec<Box<dyn FnOnce()>>>,
    /// The loop's key for this live transport ([`LoopClosing`]).
    registered: Cell<Option<usize>>,
    /// What the exception handler calls the protocol ("Protocol", ...).
    kind: &'static str,
}

impl<P: ?Sized + 'static> Base<P> {
    pub(crate) fn new(lp: &EventLoop, protocol: Box<P>, kind: &'static str) -> Base<P> {
        Base {
            lp: lp.clone(),
            phase: Cell::new(Phase::Open),
            flow: RefCell::new(Flow::default()),
            protocol: ProtoCell::new(protocol),
            on_lost: RefCell::new(Vec::new()),
            registered: Cell::new(None),
            kind,
        }
    }

    /// Joins the loop's live transports: told if the loop closes under it.
    pub(crate) fn register(&self, me: Weak<dyn LoopClosing>) {
        self.registered.set(Some(self.lp.register_transport(me)));
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase.get()
    }

    /// Closing or lost (asyncio's `is_closing`).
    #[inline]
    pub(crate) fn is_closing(&self) -> bool {
        !matches!(self.phase.get(), Phase::Open)
    }

    #[inline]
    pub(crate) fn is_lost(&self) -> bool {
        matches!(self.phase.get(), Phase::Lost)
    }

    /// `close()`: Open → Closing. False if it was not open.
    pub(crate) fn begin_close(&self) -> bool {
        if self.phase.get() != Phase::Open {
            return false;
        }
        self.phase.set(Phase::Closing);
        true
    }

    /// → Lost (once). False if it was lost already. The caller then
    /// schedules `connection_lost` ([`deliver_lost`](Self::deliver_lost)).
    pub(crate) fn begin_lost(&self) -> bool {
        if self.phase.get() == Phase::Lost {
            return false;
        }
        self.phase.set(Phase::Lost);
        true
    }

    /// Fails when the transport cannot take more data.
    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.is_closing() {
            Err(Error::closed("transport is closing"))
        } else {
            Ok(())
        }
    }

    /// Calls the protocol (after the callback it is in, if it is in one).
    /// `Err(message)`: it panicked; the caller force-closes the connection
    /// after [`report_panic`](Self::report_panic).
    pub(crate) fn call(&self, f: impl FnOnce(&mut P) + 'static) -> std::result::Result<(), String> {
        self.protocol.call(f)
    }

    /// Reports a protocol callback's panic through the exception handler,
    /// with asyncio's context keys.
    pub(crate) fn report_panic(&self, msg: &str, transport: String) {
        self.lp.call_exception_handler_impl(ExceptionContext {
            message: format!("Fatal error: a {} callback panicked", self.kind),
            exception: Some(Error::Panic(msg.to_owned())),
            protocol: Some(self.kind.into()),
            transport: Some(transport),
            ..Default::default()
        });
    }

    /// Runs `f` when the connection is lost (servers count connections).
    pub(crate) fn on_lost(&self, f: impl FnOnce() + 'static) {
        if self.is_lost() && self.registered.get().is_none() {
            f();
        } else {
            self.on_lost.borrow_mut().push(Box::new(f));
        }
    }

    /// The connection is over: releases the protocol, runs the lost
    /// hooks, and leaves the loop's list of live transports.
    pub(crate) fn release(&self) {
        self.phase.set(Phase::Lost);
        self.protocol.release();
        let hooks = std::mem::take(&mut *self.on_lost.borrow_mut());
        if let Some(key) = self.registered.take() {
            self.lp.unregister_transport(key);
        }
        for h in hooks {
            h();
        }
    }
}

/// Delivers `connection_lost(exc)` to `t`'s protocol through the loop
/// (never inside the caller; the phase is `Lost` already), then `release`s
/// the transport's own resources and the base's (protocol, hooks,
/// registration): written once for every transport.
pub(crate) fn deliver_lost<T: 'static, P: ?Sized + 'static>(
    t: Rc<T>,
    base: fn(&T) -> &Base<P>,
    exc: Option<Error>,
    lost: fn(&mut P, Option<Error>),
    release: fn(&T),
) {
    let lp = base(&t).lp.clone();
    lp.call_soon_impl(
        move || {
            // (A panic here was reported by the cell's caller's rules: the
            // connection is over anyway.)
            let _ = base(&t).protocol.call(move |p| lost(p, exc));
            release(&t);
            base(&t).release();
        },
        &"connection_lost",
    );
}

#[cfg(test)]
mod tests {
    use super::Flow;

    #[test]
    fn pauses_strictly_above_high_and_resumes_at_or_below_low() {
        let mut f = Flow::default();
        assert_eq!(f.limits(), (16 * 1024, 64 * 1024));
        assert!(!f.add(64 * 1024), "at the mark: not above it");
        assert!(f.add(1), "above it");
        assert!(!f.add(10), "paused once");
        assert!(!f.sent(64 * 1024 - 16 * 1024), "still above low");
        assert!(f.sent(11), "at low");
        assert!(!f.paused());
        assert!(!f.sent(0));
    }

    #[test]
    fn limits_follow_asyncio_and_can_pause_at_once() {
        let mut f = Flow::default();
        f.add(100);
        assert!(f.set_limits(Some(50), None).unwrap());
        assert_eq!(f.limits(), (12, 50));
        assert!(f.set_limits(Some(10), Some(20)).is_err());
        f.clear();
        assert_eq!(f.size(), 0);
    }
}
