//! The operations both drivers run: one plain struct per op, owning its fd
//! and buffers, with one method per backend.
//!
//! The proactor calls [`OpAble::uring_entry`] once the op sits boxed in the
//! driver's slab (so every pointer it hands the kernel is stable until the
//! final completion). The selector calls [`OpAble::legacy_call`], the same
//! operation as a non-blocking syscall, at once and again on each readiness
//! edge while it answers `EAGAIN`.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::marker::PhantomData;
use std::mem;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};
use socket2::{SockAddr, SockAddrStorage};

use super::buf::{IoBuf, IoBufMut};
use super::fd::SharedFd;

/// Which readiness the selector parks an op on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interest {
    Read,
    Write,
}

/// Lets the driver hand a boxed op back to its typed future.
pub(crate) trait AsAny: Any {
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any> AsAny for T {
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// One operation, as both backends see it.
///
/// # Safety
///
/// The driver hands the kernel the pointers in [`uring_entry`]'s SQE (and
/// lets [`legacy_call`] pass them to a syscall), so an implementation
/// promises:
///
/// - every pointer in the SQE points into memory the op itself owns (its
///   buffers, address storage, msghdr/iovec), valid for the length given
///   and, for writes, writable; none points into a temporary;
/// - that memory stays where it is and valid while the op is alive and
///   not changed by the op between `uring_entry` and the op's final
///   completion (the driver keeps the boxed op in its slab until then,
///   also after its future is dropped);
/// - the fd it names is one the op keeps open (a `SharedFd` it holds) or
///   a raw fd the caller vouches for ([`PollAdd`]);
/// - `salvage` and `take_stashed` write only into that same owned memory.
///
/// [`uring_entry`]: OpAble::uring_entry
/// [`legacy_call`]: OpAble::legacy_call
pub(crate) unsafe trait OpAble: AsAny {
    /// The SQE for this op. Called when the op is at its final heap address.
    fn uring_entry(&mut self) -> squeue::Entry;
    /// The fd the op works on, and what readiness it waits for on the selector
    /// (and on the proactor after an `EAGAIN` from a non-blocking file).
    fn interest(&self) -> (RawFd, Interest);
    /// The [`SharedFd::id`] of the op's fd; 0 for a raw fd the loop does not own.
    fn fd_id(&self) -> u64;
    /// The same operation as a non-blocking syscall; `WouldBlock` parks it.
    fn legacy_call(&mut self) -> io::Result<u32>;
    /// Completes the op from data a cancelled op received earlier, if any.
    fn take_stashed(&mut self, _stash: &mut Stash) -> Option<io::Result<u32>> {
        None
    }
    /// The op completed after its future was dropped: keep what it received
    /// (data into the stash, fds closed) so nothing is lost or leaked.
    fn salvage(&mut self, _res: i32, _stash: &mut Stash) {}
    /// Gives up the buffer the kernel may have written into, for the poison
    /// checker, with the region to poison; the rest of the op (its fd)
    /// drops as usual.
    fn into_buffer(self: Box<Self>) -> Option<Released> {
        None
    }
    /// A receive whose cancelled data is kept for the next receive on its
    /// fd: such receives take turns per fd ([`SharedFd::gate_enter`]).
    fn read_gate(&self) -> Option<&SharedFd> {
        None
    }
    /// Multishot ops post many completions; the last lacks `F_MORE`.
    fn is_multishot(&self) -> bool {
        false
    }
    /// Selector: how many results a multishot op may produce in one loop
    /// turn before it waits for the next (then it is tried again without
    /// waiting for a new edge).
    fn turn_budget(&self) -> u32 {
        64
    }
    /// Selector: a multishot result after which the op is over (EOF).
    fn is_final(&self, _res: &io::Result<u32>) -> bool {
        false
    }
}

/// Bytes (or datagrams) that a cancelled receive took off a socket, kept for
/// the next receive on the same fd.
#[derive(Debug, Default)]
pub(crate) struct Stash {
    map: HashMap<RawFd, VecDeque<Stashed>>,
}

#[derive(Debug)]
struct Stashed {
    /// The `SharedFd::id` the data came from; a reused fd number must not see it.
    id: u64,
    data: Vec<u8>,
    addr: Option<SockAddr>,
}

impl Stash {
    fn push(&mut self, fd: &SharedFd, data: Vec<u8>, addr: Option<SockAddr>) {
        let q = self.map.entry(fd.raw()).or_default();
        q.retain(|s| s.id == fd.id());
        q.push_back(Stashed {
            id: fd.id(),
            data,
            addr,
        });
    }

    pub(crate) fn push_data(&mut self, fd: &SharedFd, data: Vec<u8>) {
        self.push(fd, data, None);
    }

    /// Everything kept for `fd`, in order (stream data only).
    pub(crate) fn take_all(&mut self, fd: &SharedFd) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(s) = self.pop(fd) {
            out.push(s.data);
        }
        out
    }

    fn pop(&mut self, fd: &SharedFd) -> Option<Stashed> {
        let q = self.map.get_mut(&fd.raw())?;
        q.retain(|s| s.id == fd.id());
        let item = q.pop_front();
        if q.is_empty() {
            self.map.remove(&fd.raw());
        }
        item
    }

    fn push_front(&mut self, fd: RawFd, item: Stashed) {
        self.map.entry(fd).or_default().push_front(item);
    }

    /// Items kept for `fd`.
    pub(crate) fn items(&self, fd: &SharedFd) -> usize {
        self.map
            .get(&fd.raw())
            .map_or(0, |q| q.iter().filter(|s| s.id == fd.id()).count())
    }

    /// Moves the item pushed last for `fd` to the front: data of a receive
    /// that had finished before anything now kept arrived (it is older).
    pub(crate) fn last_to_front(&mut self, fd: &SharedFd) {
        if let Some(q) = self.map.get_mut(&fd.raw()) {
            if let Some(item) = q.pop_back() {
                q.push_front(item);
            }
        }
    }

    /// Is anything kept for `fd`?
    pub(crate) fn has(&self, fd: &SharedFd) -> bool {
        !self.map.is_empty()
            && self
                .map
                .get(&fd.raw())
                .is_some_and(|q| q.iter().any(|s| s.id == fd.id()))
    }

    /// Bytes held for `fd` (tests and stats).
    #[cfg_attr(not(feature = "diagnostics"), allow(dead_code))]
    pub(crate) fn held(&self, fd: RawFd) -> usize {
        self.map
            .get(&fd)
            .map_or(0, |q| q.iter().map(|s| s.data.len()).sum())
    }
}

/// A copy of a kernel-filled address storage, for building a `SockAddr`.
fn copy_storage(st: &SockAddrStorage) -> SockAddrStorage {
    let mut out = SockAddrStorage::zeroed();
    let src: *const SockAddrStorage = st;
    // SAFETY: both are the same plain-data type; copying all its bytes is a
    // valid way to duplicate it.
    unsafe { std::ptr::copy_nonoverlapping(src, &mut out, 1) };
    out
}

fn cvt(r: isize) -> io::Result<u32> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u32)
    }
}

/// Runs a syscall, retrying on `EINTR`.
fn syscall(mut f: impl FnMut() -> isize) -> io::Result<u32> {
    loop {
        match cvt(f()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Copies a stashed item into a receive buffer; returns the count copied.
fn fill_from<B: IoBufMut>(buf: &mut B, item: &mut Stashed) -> usize {
    let init = buf.bytes_init();
    let n = item.data.len().min(buf.bytes_total() - init);
    // SAFETY: `n` bytes fit in the buffer's spare capacity, and the source is
    // a separate Vec, so the ranges do not overlap. The length is left alone:
    // `finish` marks the bytes initialised, as after a kernel completion.
    unsafe { std::ptr::copy_nonoverlapping(item.data.as_ptr(), buf.stable_mut_ptr().add(init), n) };
    item.data.drain(..n);
    n
}

/// Keeps `n` bytes a dropped receive got, from the spare capacity of `buf`.
fn stash_received<B: IoBufMut>(buf: &mut B, n: usize) -> Vec<u8> {
    let init = buf.bytes_init();
    let mut data = vec![0; n];
    // SAFETY: the kernel initialised `n` bytes after `init`.
    unsafe { std::ptr::copy_nonoverlapping(buf.stable_mut_ptr().add(init), data.as_mut_ptr(), n) };
    data
}

/// Serves a stream receive from the stash. The count is returned and
/// `finish` marks it initialised, as for a kernel completion.
fn stash_into<B: IoBufMut>(
    fd: &SharedFd,
    buf: &mut B,
    stash: &mut Stash,
) -> Option<io::Result<u32>> {
    let mut item = stash.pop(fd)?;
    let n = fill_from(buf, &mut item);
    if !item.data.is_empty() {
        stash.push_front(fd.raw(), item);
    }
    Some(Ok(n as u32))
}

/// A receive buffer kept by the poison checker, and its spare region.
pub(crate) struct Released {
    pub(crate) _owner: Box<dyn Any>,
    pub(crate) ptr: *mut u8,
    pub(crate) len: usize,
}

fn release<B: IoBufMut>(mut buf: B) -> Option<Released> {
    let (ptr, len) = spare_region(&mut buf);
    // Moving the buffer into a box moves its header, not its heap block, so
    // `ptr` stays valid while the box lives.
    Some(Released {
        _owner: Box::new(buf),
        ptr,
        len,
    })
}

fn spare_region<B: IoBufMut>(buf: &mut B) -> (*mut u8, usize) {
    let init = buf.bytes_init();
    // SAFETY: `init <= bytes_total()`, so the pointer stays inside the block.
    (
        unsafe { buf.stable_mut_ptr().add(init) },
        buf.bytes_total() - init,
    )
}

// ---------------------------------------------------------------- recv / read, send / write

/// What a byte-stream op runs as: `recv`/`send` on sockets, `read`/`write`
/// at the current position on other fds (pipes, ttys, eventfds).
pub(crate) trait Kind: 'static {
    fn read_entry(fd: RawFd, ptr: *mut u8, len: u32) -> squeue::Entry;
    fn write_entry(fd: RawFd, ptr: *const u8, len: u32) -> squeue::Entry;
    /// # Safety
    /// `ptr` must be valid for writes of `len` bytes.
    unsafe fn read(fd: RawFd, ptr: *mut u8, len: usize) -> isize;
    /// # Safety
    /// `ptr` must be valid for reads of `len` bytes.
    unsafe fn write(fd: RawFd, ptr: *const u8, len: usize) -> isize;
}

/// Sockets: `recv(2)` / `send(2)` (no SIGPIPE).
pub(crate) struct SockKind;

impl Kind for SockKind {
    fn read_entry(fd: RawFd, ptr: *mut u8, len: u32) -> squeue::Entry {
        opcode::Recv::new(types::Fd(fd), ptr, len).build()
    }
    fn write_entry(fd: RawFd, ptr: *const u8, len: u32) -> squeue::Entry {
        opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
    }
    unsafe fn read(fd: RawFd, ptr: *mut u8, len: usize) -> isize {
        // SAFETY: the caller passes a writable region of `len` bytes.
        unsafe { libc::recv(fd, ptr.cast(), len, 0) }
    }
    unsafe fn write(fd: RawFd, ptr: *const u8, len: usize) -> isize {
        // SAFETY: the caller passes a readable region of `len` bytes.
        unsafe { libc::send(fd, ptr.cast(), len, libc::MSG_NOSIGNAL) }
    }
}

/// Other fds: `read(2)` / `write(2)` at the current file position.
pub(crate) struct FileKind;

impl Kind for FileKind {
    fn read_entry(fd: RawFd, ptr: *mut u8, len: u32) -> squeue::Entry {
        opcode::Read::new(types::Fd(fd), ptr, len)
            .offset(u64::MAX)
            .build()
    }
    fn write_entry(fd: RawFd, ptr: *const u8, len: u32) -> squeue::Entry {
        opcode::Write::new(types::Fd(fd), ptr, len)
            .offset(u64::MAX)
            .build()
    }
    unsafe fn read(fd: RawFd, ptr: *mut u8, len: usize) -> isize {
        // SAFETY: the caller passes a writable region of `len` bytes.
        unsafe { libc::read(fd, ptr.cast(), len) }
    }
    unsafe fn write(fd: RawFd, ptr: *const u8, len: usize) -> isize {
        // SAFETY: the caller passes a readable region of `len` bytes.
        unsafe { libc::write(fd, ptr.cast(), len) }
    }
}

/// A receive into the spare capacity of `buf` (`Recv` on sockets, `Read`
/// on other fds).
pub(crate) struct Inbound<B, K> {
    pub(crate) fd: SharedFd,
    pub(crate) buf: B,
    kind: PhantomData<K>,
}

/// `recv(2)` into the spare capacity of `buf`.
pub(crate) type Recv<B> = Inbound<B, SockKind>;
/// `read(2)` at the current file position.
pub(crate) type Read<B> = Inbound<B, FileKind>;

impl<B: IoBufMut, K: Kind> Inbound<B, K> {
    pub(crate) fn new(fd: SharedFd, buf: B) -> Self {
        Inbound {
            fd,
            buf,
            kind: PhantomData,
        }
    }

    /// Marks the received bytes initialised and hands the buffer back.
    pub(crate) fn finish(mut self, res: io::Result<u32>) -> (io::Result<usize>, B) {
        if let Ok(n) = res {
            let init = self.buf.bytes_init();
            // SAFETY: the kernel (or the stash copy) wrote `n` bytes after `init`.
            unsafe { self.buf.set_init(init + n as usize) };
        }
        (res.map(|n| n as usize), self.buf)
    }
}

// SAFETY: the SQE points at the spare capacity of `buf`, which the op owns
// (an `IoBufMut`: stable while not moved by its owner) and keeps, with `fd`.
unsafe impl<B: IoBufMut, K: Kind> OpAble for Inbound<B, K> {
    fn uring_entry(&mut self) -> squeue::Entry {
        let (ptr, len) = spare_region(&mut self.buf);
        K::read_entry(self.fd.raw(), ptr, len as u32)
    }
    fn interest(&self) -> (RawFd, Interest) {
        (self.fd.raw(), Interest::Read)
    }
    fn fd_id(&self) -> u64 {
        self.fd.id()
    }
    fn legacy_call(&mut self) -> io::Result<u32> {
        let (ptr, len) = spare_region(&mut self.buf);
        let fd = self.fd.raw();
        // SAFETY: ptr/len describe the buffer's spare capacity, owned by this op.
        syscall(|| unsafe { K::read(fd, ptr, len) })
    }
    fn take_stashed(&mut self, stash: &mut Stash) -> Option<io::Result<u32>> {
        stash_into(&self.fd, &mut self.buf, stash)
    }
    fn read_gate(&self) -> Option<&SharedFd> {
        Some(&self.fd)
    }
    fn salvage(&mut self, res: i32, stash: &mut Stash) {
        if res > 0 {
            let data = stash_received(&mut self.buf, res as usize);
            stash.push(&self.fd, data, None);
        }
    }
    fn into_buffer(self: Box<Self>) -> Option<Released> {
        release(self.buf)
    }
}

/// A send of the part of `buf` after `offset` (`Send` on sockets, `Write`
/// on other fds); the caller loops on short writes.
pub(crate) struct Outbound<B, K> {
    pub(crate) fd: SharedFd,
    pub(crate) buf: B,
    /// Bytes of `buf` already sent by earlier ops; this op sends the rest.
    pub(crate) offset: usize,
    kind: PhantomData<K>,
}

/// `send(2)` of the unsent part of a buffer.
pub(crate) type Send<B> = Outbound<B, SockKind>;
/// `write(2)` of the unwritten part of a buffer.
pub(crate) type Write<B> = Outbound<B, FileKind>;

impl<B: IoBuf, K: Kind> Outbound<B, K> {
    pub(crate) fn new(fd: SharedFd, buf: B) -> Self {
        Outbound {
            fd,
            buf,
            offset: 0,
            kind: PhantomData,
        }
    }

    /// The bytes still to send.
    fn rest(&self) -> (*const u8, usize) {
        // SAFETY: offset <= bytes_init(), so the pointer stays in the buffer.
        let ptr = unsafe { self.buf.stable_ptr().add(self.offset) };
        (ptr, self.buf.bytes_init() - self.offset)
    }
}

// SAFETY: the SQE points at the unsent bytes of `buf`, owned by the op.
unsafe impl<B: IoBuf, K: Kind> OpAble for Outbound<B, K> {
    fn uring_entry(&mut self) -> squeue::Entry {
        let (ptr, len) = self.rest();
        K::write_entry(self.fd.raw(), ptr, len as u32)
    }
    fn interest(&self) -> (RawFd, Interest) {
        (self.fd.raw(), Interest::Write)
    }
    fn fd_id(&self) -> u64 {
        self.fd.id()
    }
    fn legacy_call(&mut self) -> io::Result<u32> {
        let fd = self.fd.raw();
        let (ptr, len) = self.rest();
        // SAFETY: ptr/len describe initialised bytes owned by this op.
        syscall(|| unsafe { K::write(fd, ptr, len) })
    }
}

/// `sendmsg(2)` of several buffers at once (writev for sockets), optionally
/// to an address (sendto); on a pipe, `write(2)` / `writev(2)`.
pub(crate) struct SendMsg<B> {
    pub(crate) fd: SharedFd,
    pub(crate) bufs: Vec<B>,
    pub(crate) addr: Option<SockAddr>,
    /// The fd is a pipe (or another non-socket stream): write, not send.
    pipe: bool,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

impl<B: IoBuf> SendMsg<B> {
    pub(crate) fn new(fd: SharedFd, bufs: Vec<B>, addr: Option<SockAddr>) -> Self {
        SendMsg {
            fd,
            bufs,
            addr,
            pipe: false,
            iov: Vec::new(),
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            msg: unsafe { mem::zeroed() },
        }
    }

    /// The same op on a pipe: `write(2)` of one buffer, `writev(2)` of
    /// several (a write to a pipe whose reader is gone fails with `EPIPE`;
    /// SIGPIPE is ignored in Rust programs).
    pub(crate) fn for_pipe(fd: SharedFd) -> Self {
        let mut op = SendMsg::new(fd, Vec::new(), None);
        op.pipe = true;
        op
    }

    /// Points the header at the buffers; the op is at its final address.
    fn prepare(&mut self) -> *const libc::msghdr {
        self.iov.clear();
        self.iov.extend(self.bufs.iter().map(|b| libc::iovec {
            iov_base: b.stable_ptr() as *mut _,
            iov_len: b.bytes_init(),
        }));
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len() as _;
        match &self.addr {
            Some(a) => {
                self.msg.msg_name = a.as_ptr() as *mut _;
                self.msg.msg_namelen = a.len();
            }
            // (A reused op may have had an address before.)
            None => {
                self.msg.msg_name = std::ptr::null_mut();
                self.msg.msg_namelen = 0;
            }
        }
        &self.msg
    }

    /// The pipe's SQE: `write` of one buffer, `writev` of several. Out of
    /// line so a socket's send (the hot path) stays small enough to inline.
    #[cold]
    #[inline(never)]
    fn pipe_entry(&mut self) -> squeue::Entry {
        if let [b] = self.bufs.as_slice() {
            return opcode::Write::new(
                types::Fd(self.fd.raw()),
                b.stable_ptr(),
                b.bytes_init() as u32,
            )
            .offset(u64::MAX)
            .build();
        }
        self.prepare();
        opcode::Writev::new(
            types::Fd(self.fd.raw()),
            self.iov.as_ptr(),
            self.iov.len() as u32,
        )
        .offset(u64::MAX)
        .build()
    }
}

// SAFETY: the SQE points at the op's own msghdr, iovec vector, buffers and
// address, which stay in place while the op sits boxed in the slab.
unsafe impl<B: IoBuf> OpAble for SendMsg<B> {
    #[inline]
    fn uring_entry(&mut self) -> squeue::Entry {
        if self.pipe {
            return self.pipe_entry();
        }
        if let ([b], None) = (self.bufs.as_slice(), &self.addr) {
            // One buffer, no address: plain SEND skips the kernel's msghdr
            // and iovec import.
            return opcode::Send::new(
                types::Fd(self.fd.raw()),
                b.stable_ptr(),
                b.bytes_init() as u32,
            )
            .flags(libc::MSG_NOSIGNAL)
            .build();
        }
        let msg = self.prepare();
        opcode::SendMsg::new(types::Fd(self.fd.raw()), msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
    }
    fn interest(&self) -> (RawFd, Interest) {
        (self.fd.raw(), Interest::Write)
    }
    fn fd_id(&self) -> u64 {
        self.fd.id()
    }
    fn legacy_call(&mut self) -> io::Result<u32> {
        let msg = self.prepare();
        let fd = self.fd.raw();
        if self.pipe {
            let (iov, n) = (self.iov.as_ptr(), self.iov.len() as libc::c_int);
            // SAFETY: the vector points at buffers this op owns.
            return syscall(|| unsafe { libc::writev(fd, iov, n) });
        }
        // SAFETY: the header points at buffers and an address this op owns.
        syscall(|| unsafe { libc::sendmsg(fd, msg, libc::MSG_NOSIGNAL) })
    }
}

/// `recvmsg(2)` of one datagram with its source address (recvfrom).
pub(crate) struct RecvFrom<B> {
    pub(crate) fd: SharedFd,
    pub(crate) buf: B,
    storage: Box<SockAddrStorage>,
    iov: libc::iovec,
    msg: libc::msghdr,
}

impl<B: IoBufMut> RecvFrom<B> {
    pub(crate) fn new(fd: SharedFd, buf: B) -> Self {
        RecvFrom {
            fd,
            buf,
            storage: Box::new(SockAddrStorage::zeroed()),
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            msg: unsafe { mem::zeroed() },
        }
    }

    fn prepare(&mut self) -> *mut libc::msghdr {
        let (ptr, len) = spare_region(&mut self.buf);
        self.iov = libc::iovec {
            iov_base: ptr.cast(),
            iov_len: len,
        };
        self.msg.msg_iov = &mut self.iov;
        self.msg.msg_iovlen = 1;
        self.msg.msg_name = (&mut *self.storage as *mut SockAddrStorage).cast();
        self.msg.msg_namelen = self.storage.size_of();
        &mut self.msg
    }

    fn addr(&self) -> SockAddr {
        // SAFETY: the kernel filled `msg_namelen` bytes of the storage.
        unsafe { SockAddr::new(copy_storage(&self.storage), self.msg.msg_namelen) }
    }

    pub(crate) fn finish(self, res: io::Result<u32>) -> (io::Result<(usize, SockAddr)>, B) {
        let addr = self.addr();
        let (r, buf) = Recv::new(self.fd, self.buf).finish(res);
        (r.map(|n| (n, addr)), buf)
    }
}

// SAFETY: the SQE points at the op's own msghdr, iovec, boxed address
// storage and the spare capacity of its buffer.
unsafe impl<B: IoBufMut> OpAble for RecvFrom<B> {
    fn uring_entry(&mut self) -> squeue::Entry {
        let msg = self.prepare();
        opcode::RecvMsg::new(types::Fd(self.fd.raw()), msg).build()
    }
    fn interest(&self) -> (RawFd, Interest) {
        (self.fd.raw(), Interest::Read)
    }
    fn fd_id(&self) -> u64 {
        self.fd.id()
    }
    fn legacy_call(&mut self) -> io::Result<u32> {
        let msg = self.prepare();
        let fd = self.fd.raw();
        // SAFETY: the header points at a buffer and storage this op owns.
        syscall(|| unsafe { libc::recvmsg(fd, msg, 0) })
    }
    fn read_gate(&self) -> Option<&SharedFd> {
        Some(&self.fd)
    }
    fn take_stashed(&mut self, stash: &mut Stash) -> Option<io::Result<u32>> {
        let mut item = stash.pop(&self.fd)?;
        let n = fill_from(&mut self.buf, &mut item);
        if let Some(a) = item.addr {
            // SAFETY: the storage is large enough for any address and `a`
            // holds `a.len()` valid bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    a.as_ptr().cast::<u8>(),
                    (&mut *self.storage as *mut SockAddrStorage).cast::<u8>(),
                    a.len() as usize,
                )
            };
            self.msg.msg_namelen = a.len();
        }
        Some(Ok(n as u32))
    }
    fn salvage(&mut self, res: i32, stash: &mut Stash) {
        if res >= 0 {
            let addr = self.addr();
            let data = stash_received(&mut self.buf, res as usize);
            stash.push(&self.fd, data, Some(addr));
        }
    }
    fn into_buffer(self: Box<Self>) -> Option<Released> {
        release(self.buf)
    }
}

// ---------------------------------------------------------------- accept / connect

/// `accept4(2)` of one connection, with the peer's address; the new fd is
/// `CLOEXEC | NONBLOCK`.
pub(crate) struct Accept {
    pub(crate) fd: SharedFd,
    storage: Box<SockAddrStorage>,
    len: libc::socklen_t,
}

const ACCEPT_FLAGS: i32 = libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;

impl Accept {
    pub(crate) fn new(fd: SharedFd) -> Self {
        let storage = Box::new(SockAddrStorage::zeroed());
        let len = storage.size_of();
        Accept { fd, storage, len }
    }

    pub(crate) fn addr(&self) -> SockAddr {
        // SAFETY: the kernel filled `len` bytes of the storage.
        unsafe { SockAddr::new(copy_storage(&self.storage), self.len) }
    }

    fn storage_ptr(&mut self) -> *mut libc::sockaddr {
        (&mut *self.storage as *mut SockAddrStorage).cast()
    }
}

// SAFETY: the SQE points at the op's boxed address storage and its length field.
unsafe impl OpAble for Accept {
    fn uring_entry(&mut self) -> squeue::Entry {
        self.len = self.storage.size_of();
        let addr = self.storage_ptr();
        opcode::Accept::new(types::Fd(self.fd.raw()), addr, &mut self.len)
            .flags(ACCEPT_FLAGS)
            .build()
    }
    fn interest(&self) -> (RawFd, Interest) {
        (self.fd.raw(), Interest::Read)
    }
    fn fd_id(&self) -> u64 {
        self.fd.id()
    }
    fn legacy_call(&mut self) -> io::Result<u32> {
        self.len = self.storage.size_of();
        let addr = self.storage_ptr();
        let fd = self.fd.raw();
        let len: *mut libc::socklen_t = &mut self.len;
        // SAFETY: storage and len are owned by this op and sized correctly.
        syscall(|| unsafe { libc::accept4(fd, addr, len, ACCEPT_FLAGS) as isize })
    }
    fn salvage(&mut self, res: i32, _stash: &mut Stash) {
        if res >= 0 {
            // A connection accepted for nobody: close it rather than leak it.
            super::fd::close_now(res);
        }
    }
}

/// Multishot accept: one submission, one completion per connection.
pub(crate) struct AcceptMulti {
    pub(crate) fd: SharedFd,
}

// SAFETY: no pointers: multishot accept takes no address buffer.
unsafe impl OpAble for AcceptMulti {
    fn uring_entry(&mut self) -> squeue::Entry {
        opcode::AcceptMulti::new(types::Fd(self.fd.raw()))
            .flags(ACCEPT_FLAGS)
            .build()
    }
    fn interest(&self) -> (RawFd, Interest) {
        (self.fd.raw(), Interest::Read)
    }
    fn fd_id(&self) -> u64 {
        self.fd.id()
    }
    fn legacy_call(&mut self) -> io::Result<u32> {
        let fd = self.fd.raw();
        // SAFETY: null address pointers are allowed by accept4.
        syscall(|| unsafe {
            libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), ACCEPT_FLAGS) as isize
        })
    }
    fn salvage(&mut self, res: i32, _stash: &mut Stash) {
        if res >= 0 {
            super::fd::close_now(res);
        }
    }
    fn is_multishot(&self) -> bool {
        true
    }
}

/// `connect(2)`; on the selector, `EINPROGRESS` then `SO_ERROR` once writable.
pub(crate) struct Connect {
    pub(crate) fd: SharedFd,
    addr: SockAddr,
    started: bool,
}

impl Connect {
    pub(crate) fn new(fd: SharedFd, addr: SockAddr) -> Self {
        Connect {
            fd,
            addr,
            started: false,
        }
    }
}

// SAFETY: the SQE points at the op's own `SockAddr`.
unsafe impl OpAble for Connect {
    fn uring_entry(&mut self) -> squeue::Entry {
        opcode::Connect::new(
            types::Fd(self.fd.raw()),
            self.addr.as_ptr().cast(),
            self.addr.len(),
        )
        .build()
    }
    fn interest(&self) -> (RawFd, Interest) {
        (self.fd.raw(), Interest::Write)
    }
    fn fd_id(&self) -> u64 {
        self.fd.id()
    }
    fn legacy_call(&mut self) -> io::Result<u32> {
        let fd = self.fd.raw();
        if !self.started {
            let (addr, len) = (self.addr.as_ptr().cast(), self.addr.len());
            // SAFETY: addr/len describe a valid socket address owned by this op.
            return match syscall(|| unsafe { libc::connect(fd, addr, len) as isize }) {
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                    self.started = true;
                    Err(io::ErrorKind::WouldBlock.into())
                }
                r => r,
            };
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        syscall(|| unsafe { libc::poll(&mut pfd, 1, 0) as isize })?;
        if pfd.revents == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut err: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: err/len are valid out-pointers for SO_ERROR.
        syscall(|| unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut len,
            ) as isize
        })?;
        if err == 0 {
            Ok(0)
        } else {
            Err(io::Error::from_raw_os_error(err))
        }
    }
}

// ---------------------------------------------------------------- poll / close

/// One-shot readiness poll on a raw fd (`add_reader` / `add_writer`).
pub(crate) struct PollAdd {
    pub(crate) fd: RawFd,
    pub(crate) writable: bool,
    /// The loop's own fd, when it is one (a transport's): the selector
    /// then shares its registration with the fd's other ops.
    pub(crate) shared: Option<SharedFd>,
}

impl PollAdd {
    /// A poll on a raw fd the caller keeps open.
    pub(crate) fn raw(fd: RawFd, writable: bool) -> PollAdd {
        PollAdd {
            fd,
            writable,
            shared: None,
        }
    }

    /// A poll on one of the loop's fds (kept open by the op).
    pub(crate) fn on(fd: SharedFd, writable: bool) -> PollAdd {
        PollAdd {
            fd: fd.raw(),
            writable,
            shared: Some(fd),
        }
    }

    fn events(&self) -> u32 {
        if self.writable {
            libc::POLLOUT as u32
        } else {
            libc::POLLIN as u32
        }
    }
}

// SAFETY: no pointers; the fd is the op's own (`shared`) or the caller's
// (add_reader: the user keeps it open while it is watched, asyncio's
// contract).
unsafe impl OpAble for PollAdd {
    fn uring_entry(&mut self) -> squeue::Entry {
        opcode::PollAdd::new(types::Fd(self.fd), self.events()).build()
    }
    fn interest(&self) -> (RawFd, Interest) {
        let i = if self.writable {
            Interest::Write
        } else {
            Interest::Read
        };
        (self.fd, i)
    }
    fn fd_id(&self) -> u64 {
        self.shared.as_ref().map_or(0, SharedFd::id)
    }
    fn legacy_call(&mut self) -> io::Result<u32> {
        // Level-triggered check: the selector registers fds edge-triggered,
        // so readiness that is already there must be seen by asking.
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: self.events() as i16,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        syscall(|| unsafe { libc::poll(&mut pfd, 1, 0) as isize })?;
        if pfd.revents == 0 {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(pfd.revents as u32)
        }
    }
}
