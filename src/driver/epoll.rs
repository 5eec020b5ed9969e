//! The selector backend: epoll.
//!
//! It emulates completion semantics: an op's non-blocking syscall is tried at
//! once; on `EAGAIN` the op parks on its fd's read or write list and is tried
//! again when epoll reports an edge for that fd. Each fd is registered once,
//! edge-triggered for in and out, with a generation in its token so an event
//! for an fd number that was closed and reused is ignored.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use super::lifecycle::Lifecycle;
use super::notify::Notifier;
use super::ops::Interest;
use super::pool::PoolRef;
use super::table::Ops;

const WAKE_TOKEN: u64 = u64::MAX;

struct Reg {
    /// `SharedFd::id` of the registered descriptor (0: a raw fd).
    owner: u64,
    generation: u32,
    readers: VecDeque<usize>,
    writers: VecDeque<usize>,
}

pub(crate) struct Epoll {
    /// The epoll instance; closed with the loop (`None` after shutdown).
    epfd: Option<OwnedFd>,
    regs: HashMap<RawFd, Reg>,
    /// Which fd and list each parked op sits on, to unpark it on drop.
    parked: HashMap<usize, (RawFd, Interest)>,
    next_generation: u32,
    events: Vec<libc::epoll_event>,
    /// Multishot ops that used their turn's budget with more to come:
    /// tried again next turn (which then does not block).
    again: Vec<usize>,
}

fn cvt(r: i32) -> io::Result<i32> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Epoll {
    pub(crate) fn new(notifier: &Arc<Notifier>) -> io::Result<Epoll> {
        // SAFETY: plain syscall, result checked.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: a fresh descriptor we now own.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: WAKE_TOKEN,
        };
        // SAFETY: valid epoll fd, eventfd and event struct.
        cvt(unsafe {
            libc::epoll_ctl(
                epfd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                notifier.fd.as_raw_fd(),
                &mut ev,
            )
        })?;
        Ok(Epoll {
            epfd: Some(epfd),
            regs: HashMap::new(),
            parked: HashMap::new(),
            next_generation: 1,
            events: Vec::with_capacity(1024),
            again: Vec::new(),
        })
    }

    /// Submits op `key`, just inserted in the table: tried at once,
    /// parked on `EAGAIN`.
    pub(super) fn submit(&mut self, ops: &mut Ops, _pool: &PoolRef, key: usize) {
        if ops.op(key).is_multishot() {
            self.run_multishot(ops, key);
        } else {
            self.try_now(ops, key);
        }
    }

    /// Submits op `key` again (a reusable op loaded anew, a deferred
    /// receive whose turn came): tried at once, parked on `EAGAIN`.
    pub(super) fn resubmit(&mut self, ops: &mut Ops, _pool: &PoolRef, key: usize) {
        self.try_now(ops, key);
    }

    fn try_now(&mut self, ops: &mut Ops, key: usize) {
        ops.stats.syscalls_tried += 1;
        match ops.op(key).legacy_call() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.park(ops, key),
            r => ops.complete(key, r, false),
        }
    }

    /// Runs a multishot op (multishot accept or receive, emulated) until
    /// `EAGAIN` (then parks it), its end, or its budget for this turn
    /// ([`OpAble::turn_budget`]): then it goes on next turn without waiting
    /// for an edge, after the handlers saw this turn's results (a paused
    /// reader has dropped it by then).
    fn run_multishot(&mut self, ops: &mut Ops, key: usize) {
        let budget = ops.op(key).turn_budget();
        for _ in 0..budget {
            ops.stats.syscalls_tried += 1;
            match ops.op(key).legacy_call() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.park(ops, key);
                    return;
                }
                r @ Ok(_) => {
                    let last = ops.op(key).is_final(&r);
                    ops.complete(key, r, !last);
                    if last {
                        return;
                    }
                }
                Err(e) => {
                    ops.complete(key, Err(e), false);
                    return;
                }
            }
        }
        self.again.push(key);
    }

    fn park(&mut self, ops: &mut Ops, key: usize) {
        let (fd, interest) = ops.op(key).interest();
        let owner = ops.op(key).fd_id();
        let ep = self.ep();
        match self.regs.get(&fd) {
            // The same SharedFd: registered already.
            Some(r) if r.owner == owner && owner != 0 => {}
            // A raw fd (`add_reader`): its number may name another file than
            // when it was registered (closed and reused, even within one
            // turn), and epoll forgets a file when it is closed, so the
            // registration is made afresh on every wait (MOD, or ADD).
            Some(r) if r.owner == 0 && owner == 0 => {
                let mut ev = epoll_event_for(fd, r.generation);
                // SAFETY: valid epoll fd and event struct; `fd` is open (the caller's).
                let mut rc = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_MOD, fd, &mut ev) };
                if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
                    // SAFETY: as above.
                    rc = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
                }
                if rc < 0 {
                    let e = io::Error::last_os_error();
                    ops.complete(key, Err(e), false);
                    return;
                }
            }
            // Nothing, or a registration left by a closed descriptor with
            // the same number: register the new one afresh (ADD, or MOD if
            // the kernel still has the old file through a dup).
            _ => {
                if let Some(old) = self.regs.remove(&fd) {
                    debug_assert!(old.readers.is_empty() && old.writers.is_empty() || owner == 0);
                }
                let generation = self.next_generation;
                self.next_generation = self.next_generation.wrapping_add(1).max(1);
                let mut ev = epoll_event_for(fd, generation);
                // SAFETY: valid epoll fd and event struct; `fd` is open (an op holds it).
                let mut r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
                if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
                    // SAFETY: as above.
                    r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_MOD, fd, &mut ev) };
                }
                if r < 0 {
                    let e = io::Error::last_os_error();
                    ops.complete(key, Err(e), false);
                    return;
                }
                self.regs.insert(
                    fd,
                    Reg {
                        owner,
                        generation,
                        readers: VecDeque::new(),
                        writers: VecDeque::new(),
                    },
                );
            }
        }
        let reg = self.regs.get_mut(&fd).expect("registered above");
        match interest {
            Interest::Read => reg.readers.push_back(key),
            Interest::Write => reg.writers.push_back(key),
        }
        self.parked.insert(key, (fd, interest));
    }

    /// Op `key`'s handle is gone (it is `Cancelled`): nothing is in the
    /// kernel, so it is unparked and freed at once.
    pub(super) fn cancel(&mut self, ops: &mut Ops, _pool: &PoolRef, key: usize, _poll: bool) {
        self.unpark(key);
        if ops.slab.contains(key) {
            let slot = ops.remove(key);
            ops.release(slot.op);
        }
    }

    /// Asks a parked receive back (data for its fd was kept meanwhile): it
    /// completes now, from the kept data (`Ops::settle_kept`).
    pub(super) fn recall(&mut self, ops: &mut Ops, _pool: &PoolRef, key: usize) {
        if self.unpark(key) {
            ops.complete(
                key,
                Err(io::Error::from_raw_os_error(libc::ECANCELED)),
                false,
            );
        }
    }

    /// Ends an op that stays with its handler: it completes with
    /// `ECANCELED` as its final result (as io_uring's cancel does).
    pub(super) fn cancel_keep(&mut self, ops: &mut Ops, _pool: &PoolRef, key: usize, _poll: bool) {
        if self.unpark(key) {
            ops.complete(
                key,
                Err(io::Error::from_raw_os_error(libc::ECANCELED)),
                false,
            );
        }
    }

    /// Takes an op off its readiness list (or the retry list); false if it
    /// was on neither.
    fn unpark(&mut self, key: usize) -> bool {
        let mut found = false;
        if !self.again.is_empty() {
            let n = self.again.len();
            self.again.retain(|&k| k != key);
            found = self.again.len() != n;
        }
        if let Some((fd, interest)) = self.parked.remove(&key) {
            found = true;
            if let Some(reg) = self.regs.get_mut(&fd) {
                let list = match interest {
                    Interest::Read => &mut reg.readers,
                    Interest::Write => &mut reg.writers,
                };
                list.retain(|&k| k != key);
                // A raw fd (add_reader) nobody watches any more: unregister
                // it now, before the caller closes it and the number is
                // reused. Never touch a registration a SharedFd took over.
                if reg.owner == 0 && reg.readers.is_empty() && reg.writers.is_empty() {
                    self.forget(fd);
                }
            }
        }
        found
    }

    /// Drops the registration of a raw fd the loop does not own.
    pub(super) fn forget(&mut self, fd: RawFd) {
        if let Some(reg) = self.regs.get(&fd) {
            if reg.owner == 0 && reg.readers.is_empty() && reg.writers.is_empty() {
                self.regs.remove(&fd);
                // SAFETY: valid epoll fd; failure (fd already closed) is harmless.
                unsafe {
                    libc::epoll_ctl(self.ep(), libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut())
                };
            }
        }
    }

    pub(super) fn turn(
        &mut self,
        ops: &mut Ops,
        _pool: &PoolRef,
        notifier: &Notifier,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let ms = match timeout {
            _ if !self.again.is_empty() => 0,
            None => -1,
            // Round up: waking before the timer is due would spin.
            Some(t) => t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32,
        };
        let again = std::mem::take(&mut self.again);
        for key in again {
            // (Still there: a dropped op leaves this list in `cancel`.)
            self.run_multishot(ops, key);
        }
        if ms == 0 && self.parked.is_empty() {
            // Must not wait and no op waits for readiness: nothing to learn
            // (as the proactor skips an idle enter). Remote wake-ups are
            // seen through the loop's flag; the eventfd is read next wait.
            return Ok(());
        }
        self.events.clear();
        ops.stats.epoll_waits += 1;
        // SAFETY: the buffer has room for `capacity` events.
        let n = unsafe {
            libc::epoll_wait(
                self.ep(),
                self.events.as_mut_ptr(),
                self.events.capacity() as i32,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(e);
        }
        // SAFETY: epoll_wait initialised `n` entries.
        unsafe { self.events.set_len(n as usize) };
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            let (token, flags) = (ev.u64, ev.events);
            if token == WAKE_TOKEN {
                let mut v: u64 = 0;
                // SAFETY: reads 8 bytes into a valid u64 from our eventfd.
                unsafe { libc::read(notifier.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
                continue;
            }
            self.dispatch(ops, token, flags);
        }
        self.events = events;
        Ok(())
    }

    fn dispatch(&mut self, ops: &mut Ops, token: u64, flags: u32) {
        let fd = token as u32 as RawFd;
        let generation = (token >> 32) as u32;
        let Some(reg) = self.regs.get(&fd) else {
            return;
        };
        if reg.generation != generation {
            return; // a stale event for a reused fd number
        }
        let err = flags & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
        if err || flags & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 != 0 {
            self.retry(ops, fd, Interest::Read);
        }
        if err || flags & libc::EPOLLOUT as u32 != 0 {
            self.retry(ops, fd, Interest::Write);
        }
    }

    /// Tries again every op parked on `fd` for `interest`, in order.
    fn retry(&mut self, ops: &mut Ops, fd: RawFd, interest: Interest) {
        let Some(reg) = self.regs.get_mut(&fd) else {
            return;
        };
        let list = match interest {
            Interest::Read => std::mem::take(&mut reg.readers),
            Interest::Write => std::mem::take(&mut reg.writers),
        };
        let mut still = VecDeque::new();
        for key in list {
            if ops.op(key).is_multishot() {
                // (Parks itself again on EAGAIN: after `still`, below.)
                self.parked.remove(&key);
                self.run_multishot(ops, key);
                continue;
            }
            ops.stats.syscalls_tried += 1;
            match ops.op(key).legacy_call() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => still.push_back(key),
                r => {
                    self.parked.remove(&key);
                    ops.complete(key, r, false);
                }
            }
        }
        if let Some(reg) = self.regs.get_mut(&fd) {
            let list = match interest {
                Interest::Read => &mut reg.readers,
                Interest::Write => &mut reg.writers,
            };
            // Ops parked by the retries themselves (multishot) come after.
            still.extend(list.drain(..));
            *list = still;
        }
    }

    /// The epoll fd (-1 once closed: calls then fail harmlessly with EBADF).
    fn ep(&self) -> RawFd {
        self.epfd.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// Ends every parked op (`ops.shut` is already set): nothing is in the
    /// kernel on this backend. The epoll fd closes with the loop.
    pub(super) fn shutdown(&mut self, ops: &mut Ops, _pool: &PoolRef, _bound: Duration) {
        let mut keys: Vec<usize> = self.parked.keys().copied().collect();
        keys.append(&mut self.again);
        for key in keys {
            self.parked.remove(&key);
            let Some(slot) = ops.slab.get(key) else {
                continue;
            };
            if slot.life.is_cancelled() {
                let slot = ops.remove(key);
                ops.release(slot.op);
            } else if slot.life.in_kernel() {
                ops.complete(key, Err(super::closed_error()), false);
            }
        }
        // Deferred receives never reached the kernel: they end too.
        let deferred: Vec<usize> = ops
            .slab
            .iter()
            .filter(|(_, s)| matches!(s.life, Lifecycle::Deferred(_)))
            .map(|(k, _)| k)
            .collect();
        for key in deferred {
            ops.life_mut(key).start();
            ops.complete(key, Err(super::closed_error()), false);
        }
        self.regs.clear();
        self.epfd = None;
    }
}

/// Edge-triggered interest in everything, with `generation` in the token.
fn epoll_event_for(fd: RawFd, generation: u32) -> libc::epoll_event {
    libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
        u64: (u64::from(generation) << 32) | fd as u32 as u64,
    }
}
