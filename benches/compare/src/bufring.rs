//! A provided-buffer ring for the floor server (a raw io_uring loop):
//! `count` buffers of `len` bytes that the kernel picks for multishot
//! receives and that are handed back by id.
//!
//! Drop it only after the `IoUring` it is registered with (a local made
//! before the ring, or a struct field declared after it): the kernel may
//! write into the buffers until the ring is gone.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

pub struct BufRing {
    entries: *mut BufRingEntry,
    map_len: usize,
    mask: u16,
    tail: u16,
    len: usize,
    bufs: Vec<u8>,
}

impl BufRing {
    /// `count` (a power of two, at most 32,768) buffers of `len` bytes.
    pub fn new(count: u16, len: usize) -> io::Result<BufRing> {
        assert!(count.is_power_of_two() && count <= 32768);
        let map_len = std::mem::size_of::<BufRingEntry>() * count as usize;
        // SAFETY: an anonymous private mapping, checked for failure below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut r = BufRing {
            entries: p.cast(),
            map_len,
            mask: count - 1,
            tail: 0,
            len,
            bufs: vec![0; count as usize * len],
        };
        for bid in 0..count {
            r.give_back(bid);
        }
        Ok(r)
    }

    /// Registers the ring as buffer group `bgid` of `ring`'s submitter,
    /// with `flags` (`IOU_PBUF_RING_*`).
    pub fn register(
        &self,
        submitter: &io_uring::Submitter<'_>,
        bgid: u16,
        flags: u16,
    ) -> io::Result<()> {
        // SAFETY: the entries are a page-aligned mapping of `mask + 1`
        // entries that outlives the ring (see the module docs).
        unsafe {
            submitter.register_buf_ring_with_flags(self.entries as u64, self.mask + 1, bgid, flags)
        }
    }

    /// Hands buffer `bid` to the kernel again.
    pub fn give_back(&mut self, bid: u16) {
        let idx = (self.tail & self.mask) as usize;
        // SAFETY: entry `idx` is past the published tail, so the kernel does
        // not read it until the store below; the buffer lies inside `bufs`.
        unsafe {
            let e = &mut *self.entries.add(idx);
            e.set_addr(self.buf(bid, 0) as u64);
            e.set_len(self.len as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field lives in entry 0 of the ring; the release
        // store publishes the entry written above.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Byte `off` of buffer `bid`.
    pub fn buf(&self, bid: u16, off: usize) -> *const u8 {
        assert!(bid <= self.mask && off <= self.len);
        // SAFETY: in bounds, checked above.
        unsafe { self.bufs.as_ptr().add(bid as usize * self.len + off) }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the ring that used it is gone (module docs).
        unsafe { libc::munmap(self.entries.cast(), self.map_len) };
    }
}
