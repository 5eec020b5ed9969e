//! The floor: a TCP echo server that does only the kernel's work, on one raw
//! io_uring with no runtime, no protocol and no allocation per request.
//!
//! It exists to answer one question the other columns cannot: how fast can
//! *any* single-threaded server echo on this machine with this load client?
//! Its data path is the one the ringloop proactor uses (multishot accept,
//! multishot receive into a provided-buffer ring, the reply sent from the
//! receive buffer itself, `SINGLE_ISSUER | DEFER_TASKRUN`, one
//! `io_uring_enter` per turn that waits only when nothing is posted), minus
//! everything above the ring. A server's distance to this column is its
//! own overhead; the distance between this column and tokio is the most
//! any server could gain over tokio here.
//!
//! Sends are serialised per connection, as any correct server must (two
//! sends in flight on one socket may complete out of order once one of them
//! has to wait for buffer space): a receive's completion sends at once if
//! no send is in flight (one `SEND` for one buffer), otherwise its buffer
//! waits and the next send carries everything queued (one `SENDMSG`, at
//! most `MAX_IOV` buffers). ringloop's writer instead coalesces a turn's
//! writes into one send at the turn's end.
//!
//! With `Ring::Inc` (server kind `floor-uring-inc`, issue 17's experiment) the
//! ring is registered with `IOU_PBUF_RING_INC` (Linux 6.12): 128 buffers
//! of 128 KiB (the same 16 MiB), each consumed a receive at a time, so a
//! receive takes what arrived, up to what is left of the head buffer, and
//! a buffer goes back to the ring once the kernel has used all of it
//! (no `IORING_CQE_F_BUF_MORE`) and every slice of it has been sent.
//!
//! With `Ring::Bundle` (`floor-uring-bundle`) receives are bundles over
//! the usual ring, capped as the proactor caps them (64 KiB with one
//! connection, 128 KiB with more): one completion names its first buffer
//! and fills the ring's next entries in order, which a mirror of the
//! ring's order maps back to buffer ids.
//!
//! Its ring always holds all 1,024 buffers, the proactor's pool as it was
//! before its ring learned to hold only what the traffic needs: at 1 KiB
//! that makes no measurable difference, at 100 KiB the proactor now beats
//! this column (see `docs/benchmarks.md`), so it is a ceiling for small
//! messages only.

use std::collections::VecDeque;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

#[path = "bufring.rs"]
mod bufring;
use bufring::BufRing;

/// Receive buffers: as many and as large as ringloop's pool (all of them in
/// the ring, see the module docs).
const BUFS: u16 = 1024;
const BUF_LEN: usize = 16 * 1024;
const BGID: u16 = 0;
/// The incremental ring: as many bytes in fewer, larger buffers.
const INC_BUFS: u16 = 128;
const INC_BUF_LEN: usize = 128 * 1024;

/// `IORING_ENTER_GETEVENTS` (the crate does not export its `sys` module).
const GETEVENTS: u32 = 1;
/// `IORING_RECV_MULTISHOT` and `IORING_RECVSEND_BUNDLE` (io_uring.h).
const RECV_MULTISHOT: u16 = 1 << 1;
const RECVSEND_BUNDLE: u16 = 1 << 4;
const ACCEPT: u64 = u64::MAX;
const RECV: u64 = 0;
const SEND: u64 = 1;

/// At most this many buffers go out in one `SENDMSG`.
const MAX_IOV: usize = 64;

struct Conn {
    /// Slices received and not yet sent back whole: (buffer id, offset in
    /// it, length).
    queue: VecDeque<(u16, u32, u32)>,
    /// Bytes of the queue's front already sent.
    off: u32,
    /// A send is in flight (it is for the queue's front).
    sending: bool,
    /// The peer closed (or the connection failed): close once nothing is
    /// in flight.
    eof: bool,
    recv_armed: bool,
    /// The in-flight `SENDMSG`'s header and vectors (boxed: the kernel reads
    /// them at submission, and may again if the send has to wait).
    msg: Box<(libc::msghdr, [libc::iovec; MAX_IOV])>,
}

impl Default for Conn {
    fn default() -> Conn {
        // SAFETY: msghdr and iovec are plain C data; all-zero is valid.
        let msg = unsafe { Box::new(std::mem::zeroed()) };
        Conn {
            queue: VecDeque::new(),
            off: 0,
            sending: false,
            eof: false,
            recv_armed: false,
            msg,
        }
    }
}

struct Floor {
    // Fields drop in order: the ring before the buffers it may write into.
    ring: IoUring<squeue::Entry, cqueue::Entry>,
    bufs: BufRing,
    /// Incremental consumption: per buffer, the bytes the kernel has
    /// filled, the slices not yet sent, and whether the kernel is done
    /// with it (empty unless `Ring::Inc`).
    filled: Vec<u32>,
    slices: Vec<u32>,
    used_up: Vec<bool>,
    /// Bundles: the buffer ids in the ring's order (empty otherwise).
    order: VecDeque<u16>,
    mode: Ring,
    /// Connections with a receive armed (for the bundle cap).
    receiving: usize,
    conns: Vec<Conn>,
    sqes: Vec<squeue::Entry>,
    listener: RawFd,
}

/// How the floor receives.
#[derive(Clone, Copy, PartialEq)]
pub enum Ring {
    /// One 16 KiB buffer per completion.
    Plain,
    /// `IOU_PBUF_RING_INC`: large buffers consumed a receive at a time.
    Inc,
    /// `IORING_RECVSEND_BUNDLE`: several 16 KiB buffers per completion.
    Bundle,
}

fn ud(fd: RawFd, kind: u64) -> u64 {
    ((fd as u64) << 1) | kind
}

impl Floor {
    fn new(listener: RawFd, mode: Ring) -> io::Result<Floor> {
        let inc = mode == Ring::Inc;
        let (count, len) = if inc {
            (INC_BUFS, INC_BUF_LEN)
        } else {
            (BUFS, BUF_LEN)
        };
        let bufs = BufRing::new(count, len)?;
        let ring = IoUring::<squeue::Entry, cqueue::Entry>::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(8192)
            .build(4096)?;
        let flags = if inc { types::IOU_PBUF_RING_INC } else { 0 };
        bufs.register(&ring.submitter(), BGID, flags as u16)?;
        let n = if inc { count as usize } else { 0 };
        let mut f = Floor {
            ring,
            bufs,
            filled: vec![0; n],
            slices: vec![0; n],
            used_up: vec![false; n],
            order: match mode {
                Ring::Bundle => (0..count).collect(),
                _ => VecDeque::new(),
            },
            mode,
            receiving: 0,
            conns: Vec::new(),
            sqes: Vec::new(),
            listener,
        };
        f.arm_accept();
        Ok(f)
    }

    fn conn(&mut self, fd: RawFd) -> &mut Conn {
        let i = fd as usize;
        if self.conns.len() <= i {
            self.conns.resize_with(i + 1, Conn::default);
        }
        &mut self.conns[i]
    }

    fn arm_accept(&mut self) {
        let e = opcode::AcceptMulti::new(types::Fd(self.listener))
            .build()
            .user_data(ACCEPT);
        self.sqes.push(e);
    }

    fn arm_recv(&mut self, fd: RawFd) {
        if !self.conn(fd).recv_armed {
            self.receiving += 1;
        }
        self.conn(fd).recv_armed = true;
        let e = if self.mode == Ring::Bundle {
            let cap = if self.receiving > 1 { 8 } else { 4 } * BUF_LEN as u32;
            opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), cap)
                .ioprio(RECV_MULTISHOT | RECVSEND_BUNDLE)
                .buf_group(BGID)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        } else {
            opcode::RecvMulti::new(types::Fd(fd), BGID).build()
        };
        let e = e.user_data(ud(fd, RECV));
        self.sqes.push(e);
    }

    /// Sends what is queued, unless a send is in flight; closes a finished
    /// connection.
    fn pump(&mut self, fd: RawFd) {
        let bufs = &self.bufs;
        let c = &mut self.conns[fd as usize];
        if c.sending {
            return;
        }
        if c.queue.is_empty() {
            if c.eof && !c.recv_armed {
                *c = Conn::default();
                // SAFETY: nothing is in flight on `fd` any more.
                unsafe { libc::close(fd) };
            }
            return;
        }
        c.sending = true;
        // The buffers stay out of the ring until their send is done.
        let at = |bid: u16, off: u32| bufs.buf(bid, off as usize);
        let e = if c.queue.len() == 1 {
            let (bid, at_off, len) = c.queue[0];
            opcode::Send::new(types::Fd(fd), at(bid, at_off + c.off), len - c.off).build()
        } else {
            let (hdr, iov) = &mut *c.msg;
            let mut n = 0;
            for (i, &(bid, at_off, len)) in c.queue.iter().take(MAX_IOV).enumerate() {
                let off = if i == 0 { c.off } else { 0 };
                iov[i] = libc::iovec {
                    iov_base: at(bid, at_off + off) as *mut libc::c_void,
                    iov_len: (len - off) as usize,
                };
                n += 1;
            }
            hdr.msg_iov = iov.as_mut_ptr();
            hdr.msg_iovlen = n;
            opcode::SendMsg::new(types::Fd(fd), hdr).build()
        };
        self.sqes.push(e.user_data(ud(fd, SEND)));
    }

    fn on_cqe(&mut self, user: u64, res: i32, flags: u32) {
        if user == ACCEPT {
            if !cqueue::more(flags) {
                self.arm_accept();
            }
            if res >= 0 {
                let one: libc::c_int = 1;
                // SAFETY: `res` is a socket just accepted; `one` outlives the call.
                unsafe {
                    libc::setsockopt(
                        res,
                        libc::IPPROTO_TCP,
                        libc::TCP_NODELAY,
                        (&one as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    );
                }
                *self.conn(res) = Conn::default();
                self.arm_recv(res);
            }
            return;
        }
        let fd = (user >> 1) as RawFd;
        if user & 1 == RECV {
            if !cqueue::more(flags) {
                self.conn(fd).recv_armed = false;
                self.receiving -= 1;
            }
            if res > 0 && self.mode == Ring::Bundle {
                let first = cqueue::buffer_select(flags).expect("a provided buffer");
                let mut left = res as u32;
                while left > 0 {
                    let bid = self.order.pop_front().expect("the ring's order");
                    debug_assert!(left < res as u32 || bid == first);
                    let len = left.min(BUF_LEN as u32);
                    self.conns[fd as usize].queue.push_back((bid, 0, len));
                    left -= len;
                }
                if !cqueue::more(flags) {
                    self.arm_recv(fd);
                }
            } else if res > 0 {
                let bid = cqueue::buffer_select(flags).expect("a provided buffer");
                let mut off = 0;
                if self.mode == Ring::Inc {
                    let b = bid as usize;
                    off = self.filled[b];
                    self.filled[b] += res as u32;
                    self.slices[b] += 1;
                    self.used_up[b] = !cqueue::buffer_more(flags);
                }
                self.conns[fd as usize]
                    .queue
                    .push_back((bid, off, res as u32));
                if !cqueue::more(flags) {
                    self.arm_recv(fd);
                }
            } else if res == -libc::ENOBUFS {
                // The ring ran dry; sends in flight give buffers back.
                self.arm_recv(fd);
            } else if !self.conns[fd as usize].recv_armed {
                self.conns[fd as usize].eof = true;
            }
            self.pump(fd);
            return;
        }
        let c = &mut self.conns[fd as usize];
        c.sending = false;
        if res <= 0 {
            // The peer is gone: drop what is queued, close after the receive.
            let gone: Vec<u16> = c.queue.drain(..).map(|(b, _, _)| b).collect();
            c.eof = true;
            c.off = 0;
            for b in gone {
                self.release(b);
            }
            if self.conns[fd as usize].recv_armed {
                let e = opcode::AsyncCancel::new(ud(fd, RECV))
                    .build()
                    .user_data(ACCEPT - 1);
                self.sqes.push(e);
            }
        } else {
            let mut sent = res as u32;
            while let Some(&(bid, _, len)) = self.conns[fd as usize].queue.front() {
                let c = &mut self.conns[fd as usize];
                let rest = len - c.off;
                if sent < rest {
                    c.off += sent;
                    break;
                }
                sent -= rest;
                c.off = 0;
                c.queue.pop_front();
                self.release(bid);
            }
        }
        self.pump(fd);
    }

    /// A slice of buffer `bid` has been sent (or dropped): the buffer goes
    /// back to the ring, unless (incremental ring) the kernel is still
    /// filling it or other slices of it are still queued.
    fn release(&mut self, bid: u16) {
        if self.mode == Ring::Bundle {
            self.order.push_back(bid);
        }
        if self.mode == Ring::Inc {
            let b = bid as usize;
            self.slices[b] -= 1;
            if self.slices[b] > 0 || !self.used_up[b] {
                return;
            }
            self.filled[b] = 0;
            self.used_up[b] = false;
        }
        self.bufs.give_back(bid);
    }
}

/// Serves echo on 127.0.0.1 (an ephemeral port, passed to `announce`)
/// until the process is killed.
/// Receiving as `mode` says (see the module docs).
pub fn serve(announce: impl FnOnce(u16), mode: Ring) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    // SAFETY: `l` is a listening socket; a second listen() only deepens
    // its backlog (for c=1000).
    unsafe { libc::listen(l.as_raw_fd(), 4096) };
    let mut f = Floor::new(l.as_raw_fd(), mode).expect("io_uring");
    announce(l.local_addr().unwrap().port());
    let mut cqes = Vec::new();
    loop {
        // SAFETY: every entry points into `f.bufs`, which outlives the ring.
        unsafe {
            let mut sq = f.ring.submission();
            for e in f.sqes.drain(..) {
                sq.push(&e).expect("submission queue full");
            }
        }
        // One enter per turn, always reaping (with DEFER_TASKRUN completions
        // post only then); it waits only when nothing is posted yet.
        let n = f.ring.submission().len() as u32;
        let wait = u32::from(f.ring.completion().is_empty());
        // SAFETY: no argument pointer is passed, matching the flags.
        let r = unsafe {
            f.ring
                .submitter()
                .enter::<libc::sigset_t>(n, wait, GETEVENTS, None)
        };
        match r {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => panic!("io_uring_enter: {e}"),
        }
        cqes.clear();
        cqes.extend(
            f.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(user, res, flags) in &cqes {
            if user != ACCEPT - 1 {
                f.on_cqe(user, res, flags);
            }
        }
    }
}
