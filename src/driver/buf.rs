//! Owned buffers that move into an operation and come back with its result.
//!
//! The kernel may read or write a buffer until the operation's final
//! completion, so a buffer handed to an op must keep a stable address for as
//! long as the op lives, even if the future that started it is dropped. These
//! traits promise exactly that: the pointer they return stays valid while the
//! value is alive and not mutated through another path, and moving the value
//! (the `Vec` header, not its heap block) does not move the bytes.

/// A buffer the kernel reads from (send, write).
///
/// # Safety
///
/// `stable_ptr()` must point to `bytes_init()` initialised bytes that stay at
/// the same address and are not freed while the value is alive, however often
/// the value itself is moved.
pub unsafe trait IoBuf: 'static {
    /// Pointer to the first byte.
    fn stable_ptr(&self) -> *const u8;
    /// Number of initialised bytes, all of which are sent.
    fn bytes_init(&self) -> usize;
}

/// A buffer the kernel writes into (recv, read).
///
/// Data lands in the spare capacity after `bytes_init()` (as in tokio-uring):
/// a `Vec::with_capacity(4096)` receives up to 4096 bytes and its length grows
/// by the number received.
///
/// # Safety
///
/// Besides [`IoBuf`]'s promise, `stable_mut_ptr()` must be valid for writes
/// of `bytes_total()` bytes, and `set_init(n)` may only be called with
/// `n <= bytes_total()` once those bytes are initialised.
pub unsafe trait IoBufMut: IoBuf {
    /// Pointer to the first byte, writable.
    fn stable_mut_ptr(&mut self) -> *mut u8;
    /// Capacity in bytes.
    fn bytes_total(&self) -> usize;
    /// Marks the first `n` bytes initialised.
    ///
    /// # Safety
    ///
    /// The first `n` bytes must have been initialised, and `n <= bytes_total()`.
    unsafe fn set_init(&mut self, n: usize);
}

// SAFETY: a Vec's heap block does not move when the Vec is moved; it is freed
// only when the Vec is dropped or grown, and neither happens while an op owns it.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: as above; capacity is the writable extent of the heap block.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_init(&mut self, n: usize) {
        if self.len() < n {
            // SAFETY: the caller promises n <= capacity and the bytes are initialised.
            unsafe { self.set_len(n) };
        }
    }
}

// SAFETY: `Bytes` is an immutable, reference-counted view; its data never moves.
unsafe impl IoBuf for bytes::Bytes {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: `BytesMut`'s block does not move while it is not grown or split.
unsafe impl IoBuf for bytes::BytesMut {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: as above; capacity is the writable extent.
unsafe impl IoBufMut for bytes::BytesMut {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_init(&mut self, n: usize) {
        if self.len() < n {
            // SAFETY: the caller promises n <= capacity and the bytes are initialised.
            unsafe { self.set_len(n) };
        }
    }
}

// SAFETY: static data lives for the whole program.
unsafe impl IoBuf for &'static [u8] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: static data lives for the whole program.
unsafe impl IoBuf for &'static str {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: a String's heap block does not move when the String is moved.
unsafe impl IoBuf for String {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

/// What [`Transport::write`](crate::Transport::write) takes: bytes in one of
/// the usual owned forms (converted to [`Bytes`](bytes::Bytes) as
/// `Bytes::from` does, so a `Vec` or a `String` is not copied), or a
/// [`RecvBuf`](crate::RecvBuf) from the receive pool, sent as it is.
pub struct WriteBuf(pub(crate) Chunk);

pub(crate) enum Chunk {
    Bytes(bytes::Bytes),
    Recv(crate::driver::pool::RecvBuf),
}

impl WriteBuf {
    /// A receive-pool buffer is copied (and given back at once) while its
    /// pool runs low, so buffers held for sending cannot starve the loop's
    /// receives; anything else is kept as it is.
    #[inline(always)]
    pub(crate) fn detach_if_pool_low(&mut self) {
        if let Chunk::Recv(b) = &self.0 {
            if b.pool_is_low() {
                self.detach();
            }
        }
    }

    #[cold]
    fn detach(&mut self) {
        if let Chunk::Recv(b) = &self.0 {
            self.0 = Chunk::Bytes(bytes::Bytes::copy_from_slice(b));
        }
    }

    /// The bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Chunk::Bytes(b) => b,
            Chunk::Recv(b) => b,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True if there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the first `n` bytes (a send took them).
    pub(crate) fn advance(&mut self, n: usize) {
        match &mut self.0 {
            Chunk::Bytes(b) => bytes::Buf::advance(b, n),
            Chunk::Recv(b) => b.advance(n),
        }
    }
}

impl std::fmt::Debug for WriteBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteBuf({} bytes)", self.len())
    }
}

// SAFETY: both variants keep their bytes at a stable address while alive.
unsafe impl IoBuf for WriteBuf {
    fn stable_ptr(&self) -> *const u8 {
        match &self.0 {
            Chunk::Bytes(b) => b.as_ptr(),
            Chunk::Recv(b) => b.stable_ptr(),
        }
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

impl From<crate::driver::pool::RecvBuf> for WriteBuf {
    fn from(b: crate::driver::pool::RecvBuf) -> Self {
        WriteBuf(Chunk::Recv(b))
    }
}

macro_rules! write_buf_from_bytes {
    ($($t:ty),*) => {$(
        impl From<$t> for WriteBuf {
            fn from(b: $t) -> Self {
                WriteBuf(Chunk::Bytes(bytes::Bytes::from(b)))
            }
        }
    )*};
}

write_buf_from_bytes!(
    bytes::Bytes,
    bytes::BytesMut,
    Vec<u8>,
    Box<[u8]>,
    String,
    &'static [u8],
    &'static str
);
