//! The loop's receive-buffer pool: what lets an idle connection hold no
//! read buffer at all.
//!
//! On the proactor the pool is an io_uring *provided-buffer ring*: a
//! multishot `RECV` picks a buffer from it only when data arrives, and the
//! completion names the buffer. On the selector the same pool is a free
//! list the non-blocking `recv` takes from after readiness. Either way the
//! receiver gets a [`RecvBuf`] that gives the buffer back when dropped
//! (to the ring's tail, or to the free list).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::RefCell;
use std::io;
use std::ops::Deref;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::{opcode, squeue, types};

use super::fd::SharedFd;
use super::ops::{Interest, OpAble, Stash};

/// Buffers per loop (a power of two: the ring's size). 1,024 × 16 KiB is
/// 16 MiB of address space, costing RSS only as traffic touches it; with 256
/// the pool ran dry under 100 KiB echoes on 100 connections (~7 buffers in
/// flight each) and receives fell back to plain ones (0.77× tokio there).
pub(crate) const POOL_BUFS: u16 = 1024;
/// Bytes per buffer.
pub(crate) const POOL_BUF_SIZE: usize = 16 * 1024;
// A completion value carries the length in 16 bits (see `encode`).
const _: () = assert!(POOL_BUF_SIZE < 1 << 16 && (POOL_BUFS as u32) < 1 << 15);
/// Buffers the proactor keeps in the kernel's ring at first; the rest wait
/// in a LIFO free list. The ring hands buffers out in FIFO order, so a ring
/// holding all 1,024 cycles every receive through 16 MiB, four times this
/// machine's L2: each receive then writes into a cold buffer. Holding only
/// what the traffic needs keeps the buffers in use hot. The target doubles
/// each time the ring runs dry (`ENOBUFS`), up to the whole pool, and comes
/// back down to twice the most receives one loop turn took, measured over
/// every `RING_WINDOW` receives, once a burst is over. The bookkeeping runs
/// once per turn (`BufPool::turn`), not per receive.
const RING_START: u16 = 64;
/// Receives per window of the ring's peak demand.
const RING_WINDOW: u32 = 4096;
/// Selector: receives one connection's multishot receive makes per loop
/// turn (64 KiB, asyncio's selector reads up to 256 KiB per event). The
/// protocol sees each turn's data before the next receive, so a pause takes
/// effect within a turn's worth, and one fast sender cannot hold the pool or
/// the loop while others wait.
const RECV_TURN_BUDGET: u32 = 4;
/// `IORING_RECV_MULTISHOT` and `IORING_RECVSEND_BUNDLE` (io_uring.h): the
/// `ioprio` bits of a receive (io-uring's builder for a capped multishot
/// bundle is the plain `Recv` one).
const RECV_MULTISHOT: u16 = 1 << 1;
const RECVSEND_BUNDLE: u16 = 1 << 4;
/// Most bytes one receive bundle takes while the loop has one socket
/// receive (four pool buffers): a request/response connection on its own
/// is bound by latency, and a smaller bundle lets its reply start while the
/// rest of a large message is still arriving.
pub(crate) const BUNDLE_MAX: usize = 4 * POOL_BUF_SIZE;
/// Most bytes one receive bundle takes once the loop has more than
/// `FEW_RECEIVERS` socket receives (eight pool buffers): with many
/// connections the turn batches anyway, and a bundle that holds a whole
/// 100 KiB message halves the completions and sends per message.
const BUNDLE_MAX_BUSY: usize = 8 * POOL_BUF_SIZE;
/// See [`BUNDLE_MAX_BUSY`].
const FEW_RECEIVERS: usize = 1;
/// The buffer group id of the ring.
pub(crate) const BGID: u16 = 0;
/// Marks a completion value that names a pool buffer: `BIT | bid << 16 | len`.
pub(crate) const BUF_BIT: u32 = 1 << 31;

/// Anonymous memory: zero pages the kernel fills in on first touch, so a
/// loop's pool costs neither a memset at start nor RSS until used.
fn map_anon(len: usize) -> NonNull<u8> {
    // SAFETY: an anonymous private mapping with no address hint; checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        panic!(
            "ringloop: mmap of the receive pool failed: {}",
            io::Error::last_os_error()
        );
    }
    NonNull::new(p.cast()).expect("mmap returned null")
}

const POOL_BYTES: usize = POOL_BUF_SIZE * POOL_BUFS as usize;

struct Ring {
    entries: NonNull<BufRingEntry>,
    layout: Layout,
    tail: u16,
    /// `BufPool::taken` at the start of the last turn.
    taken_at_turn: u16,
    /// How many the ring should hold (see `RING_START`).
    target: u16,
    /// Receives in the current window, and the most one turn took in it.
    window: u32,
    peak: u16,
    /// Times the ring ran dry.
    dry: u64,
}

/// The pool; shared (`Rc`) by the driver, the ops and the buffers handed out.
pub(crate) struct BufPool {
    mem: NonNull<u8>,
    ring: Option<Ring>,
    free: Vec<u16>,
    /// Buffers handed out and not back yet (stats, tests).
    pub(crate) out: usize,
    /// Proactor: buffers the kernel picked from the ring, ever (wrapping
    /// like the ring's tail): the ring holds `tail - taken` unpicked ones.
    taken: u16,
    /// Proactor: stream receives are bundles (`IORING_RECVSEND_BUNDLE`,
    /// Linux 6.10): one completion may fill several buffers, consecutive
    /// ring entries from the one it names. Off with `RINGLOOP_NO_RECV_BUNDLE`.
    pub(crate) bundle: bool,
    /// Proactor: the buffer id at each ring entry, and the entry each
    /// buffer was last put at, so a bundle's buffers after its first are
    /// known.
    ring_bid: [u16; POOL_BUFS as usize],
    ring_at: [u16; POOL_BUFS as usize],
    /// Socket receives into the pool that exist now ([`RecvPooled`]s on
    /// sockets; pipes never take bundles): what a new bundle's cap is
    /// chosen by.
    receivers: usize,
}

pub(crate) type PoolRef = Rc<RefCell<BufPool>>;

impl BufPool {
    /// A pool for the selector: a free list.
    pub(crate) fn new_free_list() -> PoolRef {
        let mem = map_anon(POOL_BYTES);
        Rc::new(RefCell::new(BufPool {
            mem,
            ring: None,
            free: (0..POOL_BUFS).rev().collect(),
            out: 0,
            taken: 0,
            bundle: false,
            ring_bid: [0; POOL_BUFS as usize],
            ring_at: [0; POOL_BUFS as usize],
            receivers: 0,
        }))
    }

    /// A pool for the proactor: a provided-buffer ring registered on `ring`.
    pub(crate) fn new_ring(submitter: &io_uring::Submitter<'_>) -> io::Result<PoolRef> {
        let mem = map_anon(POOL_BYTES);
        let layout = Layout::from_size_align(
            std::mem::size_of::<BufRingEntry>() * POOL_BUFS as usize,
            4096,
        )
        .expect("ring layout");
        // SAFETY: non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        let entries = NonNull::new(p.cast::<BufRingEntry>())
            .unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        // SAFETY: the ring memory is page-aligned, zeroed, and stays
        // allocated until the group is unregistered (in `Drop`, or leaked
        // with the ring when ops are still in flight at close).
        let r = unsafe {
            submitter.register_buf_ring_with_flags(entries.as_ptr() as u64, POOL_BUFS, BGID, 0)
        };
        if let Err(e) = r {
            // SAFETY: allocated/mapped above, never registered.
            unsafe {
                dealloc(p, layout);
                libc::munmap(mem.as_ptr().cast(), POOL_BYTES);
            }
            return Err(e);
        }
        let pool = Rc::new(RefCell::new(BufPool {
            mem,
            ring: Some(Ring {
                entries,
                layout,
                tail: 0,
                taken_at_turn: 0,
                target: RING_START,
                window: 0,
                peak: 0,
                dry: 0,
            }),
            // Popped from the end: the low ids first.
            free: (RING_START..POOL_BUFS).rev().collect(),
            out: 0,
            taken: 0,
            bundle: false,
            ring_bid: [0; POOL_BUFS as usize],
            ring_at: [0; POOL_BUFS as usize],
            receivers: 0,
        }));
        {
            let mut p = pool.borrow_mut();
            for bid in 0..RING_START {
                p.push_ring(bid);
            }
            p.out = 0;
        }
        Ok(pool)
    }

    fn buf_ptr(&self, bid: u16) -> *mut u8 {
        // SAFETY: bid < POOL_BUFS, so the offset is inside the allocation.
        unsafe { self.mem.as_ptr().add(bid as usize * POOL_BUF_SIZE) }
    }

    /// Hands buffer `bid` to the kernel again (ring tail).
    #[inline(always)]
    fn push_ring(&mut self, bid: u16) {
        let addr = self.buf_ptr(bid) as u64;
        let ring = self.ring.as_mut().expect("ring pool");
        let idx = (ring.tail & (POOL_BUFS - 1)) as usize;
        // SAFETY: idx < POOL_BUFS entries of ring memory we own; the kernel
        // only reads entries between its head and our published tail, and
        // this one is past the tail until the store below.
        unsafe {
            let e = &mut *ring.entries.as_ptr().add(idx);
            e.set_addr(addr);
            e.set_len(POOL_BUF_SIZE as u32);
            e.set_bid(bid);
        }
        ring.tail = ring.tail.wrapping_add(1);
        self.ring_bid[idx & (POOL_BUFS as usize - 1)] = bid;
        self.ring_at[bid as usize & (POOL_BUFS as usize - 1)] = idx as u16;
        let (entries, tail_now) = (ring.entries, ring.tail);
        // SAFETY: the tail field lives in entry 0 of our ring; the kernel
        // reads it with acquire semantics, so publish with release.
        unsafe {
            let tail = BufRingEntry::tail(entries.as_ptr()) as *const AtomicU16;
            (*tail).store(tail_now, Ordering::Release);
        }
    }

    /// The ring entry a bundle starting with buffer `first` starts at: the
    /// kernel takes a bundle's buffers from consecutive entries, and a
    /// buffer is in the ring at most once, at the entry it was last put at.
    pub(crate) fn bundle_start(&self, first: u16) -> usize {
        self.ring_at[first as usize & (POOL_BUFS as usize - 1)] as usize
    }

    /// The buffer at ring entry `at` (see [`bundle_start`](Self::bundle_start)).
    pub(crate) fn bid_at(&self, at: usize) -> u16 {
        self.ring_bid[at & (POOL_BUFS as usize - 1)]
    }

    /// Takes a free buffer (selector): `(id, ptr, len)`, or `None` when
    /// every buffer is out. The receive then fails with `ENOBUFS`, as a
    /// proactor receive does when the kernel's ring is empty, and the
    /// transport falls back to a plain receive of its own: the pool never
    /// grows past its 16 MiB, however fast the peers send.
    fn take(&mut self) -> Option<(u16, *mut u8, usize)> {
        let bid = self.free.pop()?;
        self.out += 1;
        Some((bid, self.buf_ptr(bid), POOL_BUF_SIZE))
    }

    /// Gives buffer `bid` back: to the ring if it holds fewer than its
    /// target, else to the free list.
    #[inline]
    pub(crate) fn give_back(&mut self, bid: u16) {
        self.out -= 1;
        if self.ring_below_target() {
            self.push_ring(bid);
        } else {
            self.give_back_elsewhere(bid);
        }
    }

    /// The free list (the selector's pool, or a ring at its target); kept
    /// out of line: `give_back` runs inside every send's completion.
    #[inline(never)]
    fn give_back_elsewhere(&mut self, bid: u16) {
        self.free.push(bid);
    }

    fn slice_ptr(&self, bid: u16) -> *const u8 {
        assert!(
            bid < POOL_BUFS,
            "ringloop: pool buffer id {bid} out of range"
        );
        self.buf_ptr(bid)
    }

    /// Marks a buffer the kernel picked from the ring as handed out.
    pub(crate) fn note_out(&mut self) {
        self.out += 1;
        self.taken = self.taken.wrapping_add(1);
    }

    /// Is this a ring pool whose ring holds fewer unpicked buffers than its
    /// target?
    fn ring_below_target(&self) -> bool {
        self.ring
            .as_ref()
            .is_some_and(|r| r.tail.wrapping_sub(self.taken) < r.target)
    }

    /// Once per loop turn, before the kernel is entered (proactor): tops
    /// the ring up to its target from the free list (the buffer freed last
    /// first), and measures the turn's demand to shrink the target once a
    /// burst is over.
    pub(crate) fn turn(&mut self) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let taken = self.taken.wrapping_sub(ring.taken_at_turn);
        if taken > 0 {
            ring.taken_at_turn = self.taken;
            ring.peak = ring.peak.max(taken);
            ring.window += u32::from(taken);
            if ring.window >= RING_WINDOW {
                // Buffers given back go to the free list while the ring is
                // at or over its target, so a lower target takes effect as
                // the kernel uses what the ring holds.
                let want = (u32::from(ring.peak) * 2).next_power_of_two();
                let want = want.clamp(RING_START.into(), POOL_BUFS.into()) as u16;
                ring.target = ring.target.min(want);
                ring.window = 0;
                ring.peak = 0;
            }
        }
        self.top_up();
    }

    fn top_up(&mut self) {
        while self.ring_below_target() {
            let Some(bid) = self.free.pop() else { break };
            self.push_ring(bid);
        }
    }

    /// The ring ran dry (a receive failed with `ENOBUFS`): it holds twice
    /// as many buffers from now on, up to the whole pool.
    #[cold]
    pub(crate) fn ran_dry(&mut self) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        ring.target = ring.target.saturating_mul(2).min(POOL_BUFS);
        ring.dry += 1;
        self.top_up();
    }

    /// The byte cap of a stream receive armed now, if receives are
    /// bundles: by how many socket receives the loop has.
    fn bundle_cap(&self) -> Option<usize> {
        self.bundle.then_some(if self.receivers > FEW_RECEIVERS {
            BUNDLE_MAX_BUSY
        } else {
            BUNDLE_MAX
        })
    }

    /// Proactor: (buffers the ring is sized to hold now, times it ran dry).
    #[cfg_attr(not(feature = "diagnostics"), allow(dead_code))]
    pub(crate) fn ring_stats(&self) -> Option<(usize, u64)> {
        self.ring.as_ref().map(|r| (r.target.into(), r.dry))
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        // SAFETY: the pool is dropped only after the driver unregistered the
        // group (or it is leaked, never dropped); both blocks were allocated
        // with these layouts.
        unsafe {
            if let Some(r) = &self.ring {
                dealloc(r.entries.as_ptr().cast(), r.layout);
            }
            libc::munmap(self.mem.as_ptr().cast(), POOL_BYTES);
        }
    }
}

/// Decodes a completion value: `Some((bid, len))` if it names a buffer.
pub(crate) fn decode(v: u32) -> Option<(u16, usize)> {
    (v & BUF_BIT != 0).then_some((((v >> 16) & 0x7fff) as u16, (v & 0xffff) as usize))
}

/// Encodes a buffer and a length as a completion value.
pub(crate) fn encode(bid: u16, len: usize) -> u32 {
    debug_assert!(len <= POOL_BUF_SIZE && bid < 1 << 15);
    BUF_BIT | (u32::from(bid) << 16) | len as u32
}

/// Received bytes in a buffer of the loop's receive pool, owned: the buffer
/// goes back to the pool when this drops.
///
/// [`Protocol::data_received_owned`](crate::Protocol::data_received_owned)
/// hands one over, and [`Transport::write`](crate::Transport::write) takes it
/// back to send it without a copy (an echo, a proxy). The pool is shared by
/// every connection of the loop (1,024 buffers of 16 KiB): keep a `RecvBuf`
/// for as long as it takes to forward it, not as storage. While fewer than a
/// quarter of the pool's buffers are free, `write` copies a `RecvBuf` and
/// gives the buffer back at once. Not `Send`: it belongs to its loop's thread.
pub struct RecvBuf {
    pool: PoolRef,
    bid: u16,
    ptr: *const u8,
    len: usize,
}

impl RecvBuf {
    /// Wraps the buffer a completion value names, or `None` if it names none.
    #[inline]
    pub(crate) fn from_completion(pool: &PoolRef, v: u32) -> Option<RecvBuf> {
        let (bid, len) = decode(v)?;
        let ptr = pool.borrow().slice_ptr(bid);
        Some(RecvBuf {
            pool: pool.clone(),
            bid,
            ptr,
            len,
        })
    }
}

impl RecvBuf {
    /// Drops the first `n` bytes (a send took them).
    pub(crate) fn advance(&mut self, n: usize) {
        assert!(n <= self.len, "advance past the end of a RecvBuf");
        // SAFETY: n <= len, so the pointer stays inside the buffer.
        self.ptr = unsafe { self.ptr.add(n) };
        self.len -= n;
    }

    /// Did the receive fill the whole buffer (likely more behind it)?
    pub(crate) fn is_full(&self) -> bool {
        self.len == POOL_BUF_SIZE
    }

    /// Is the pool this buffer came from running low (under a quarter free)?
    #[inline]
    pub(crate) fn pool_is_low(&self) -> bool {
        self.pool.borrow().out * 4 >= POOL_BUFS as usize * 3
    }
}

// SAFETY: the bytes live in the pool's mapping, which never moves and stays
// allocated while this guard's `pool` reference does; the buffer is not
// handed out again until the guard drops.
unsafe impl crate::driver::buf::IoBuf for RecvBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
}

impl Deref for RecvBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the buffer belongs to this guard until it drops (neither
        // the kernel nor the pool hands it out meanwhile), the pool memory
        // never moves, and `self.pool` keeps it allocated.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for RecvBuf {
    #[inline(always)]
    fn drop(&mut self) {
        self.pool.borrow_mut().give_back(self.bid);
    }
}

impl std::fmt::Debug for RecvBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecvBuf(bid={}, len={})", self.bid, self.len)
    }
}

/// A multishot receive bundle on `fd` capped at `cap` bytes per
/// completion. (A cap on a multishot receive is recent: the driver probes
/// that the kernel takes it before using bundles at all.)
pub(crate) fn bundle_entry(fd: RawFd, cap: usize) -> squeue::Entry {
    opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), cap as u32)
        .ioprio(RECV_MULTISHOT | RECVSEND_BUNDLE)
        .buf_group(BGID)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT)
}

/// Multishot receive into pool buffers: one completion per chunk received,
/// no buffer held while nothing arrives.
pub(crate) struct RecvPooled {
    fd: SharedFd,
    pool: PoolRef,
    /// The fd is a pipe (or another non-socket stream): a multishot
    /// `read` (Linux 6.7), not `recv`.
    pipe: bool,
}

impl RecvPooled {
    pub(crate) fn new(fd: SharedFd, pool: PoolRef, pipe: bool) -> RecvPooled {
        if !pipe {
            pool.borrow_mut().receivers += 1;
        }
        RecvPooled { fd, pool, pipe }
    }
}

impl Drop for RecvPooled {
    fn drop(&mut self) {
        if !self.pipe {
            self.pool.borrow_mut().receivers -= 1;
        }
    }
}

// SAFETY: no pointers: the kernel picks a buffer from the registered ring,
// which the pool keeps mapped while any op can use it.
unsafe impl OpAble for RecvPooled {
    fn uring_entry(&mut self) -> squeue::Entry {
        if self.pipe {
            // (len 0: each read fills at most one pool buffer.)
            return opcode::ReadMulti::new(types::Fd(self.fd.raw()), 0, BGID)
                .offset(u64::MAX)
                .build();
        }
        if let Some(cap) = self.pool.borrow().bundle_cap() {
            return bundle_entry(self.fd.raw(), cap);
        }
        opcode::RecvMulti::new(types::Fd(self.fd.raw()), BGID).build()
    }
    fn interest(&self) -> (RawFd, Interest) {
        (self.fd.raw(), Interest::Read)
    }
    fn fd_id(&self) -> u64 {
        self.fd.id()
    }
    fn legacy_call(&mut self) -> io::Result<u32> {
        let Some((bid, ptr, len)) = self.pool.borrow_mut().take() else {
            return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
        };
        let (fd, pipe) = (self.fd.raw(), self.pipe);
        let r = loop {
            // SAFETY: ptr/len describe a pool buffer this op took.
            let n = unsafe {
                if pipe {
                    libc::read(fd, ptr.cast(), len)
                } else {
                    libc::recv(fd, ptr.cast(), len, 0)
                }
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break Err(e);
            }
            break Ok(n as usize);
        };
        match r {
            Ok(n) if n > 0 => Ok(encode(bid, n)),
            other => {
                self.pool.borrow_mut().give_back(bid);
                other.map(|_| 0)
            }
        }
    }
    fn is_multishot(&self) -> bool {
        true
    }
    fn turn_budget(&self) -> u32 {
        RECV_TURN_BUDGET
    }
    fn is_final(&self, res: &io::Result<u32>) -> bool {
        // EOF and errors end the stream.
        !matches!(res, Ok(v) if *v != 0)
    }
    fn salvage(&mut self, res: i32, stash: &mut Stash) {
        if let Some(buf) = (res != -1)
            .then_some(res as u32)
            .and_then(|v| RecvBuf::from_completion(&self.pool, v))
        {
            stash.push_data(&self.fd, buf.to_vec());
        }
    }
}
