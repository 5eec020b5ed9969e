//! Transports: the byte pipes protocols talk through (asyncio's
//! `Transport`, `DatagramTransport`), written once on the driver's ops so
//! they behave the same on the proactor and the selector.
#![forbid(unsafe_code)]

pub(crate) mod base;
mod cell;
mod datagram;
mod handle;
mod stream;

use std::os::fd::RawFd;

pub use datagram::DatagramTransport;
#[allow(unused_imports)]
pub(crate) use handle::Layered;
pub use handle::Transport;

use crate::error::{Error, Result};
use crate::sock::SockAddr;

/// Default write-buffer high-water mark (asyncio's 64 KiB).
pub const DEFAULT_HIGH_WATER: usize = 64 * 1024;

/// Something `get_extra_info` returns.
#[derive(Clone, Debug)]
pub enum ExtraInfo {
    /// An address (`peername`, `sockname`).
    Address(SockAddr),
    /// The transport's file descriptor (`socket`).
    Fd(RawFd),
}

/// asyncio's rule for write-buffer limits: `high` defaults to 64 KiB, `low`
/// to a quarter of `high`; `low` may not exceed `high`.
pub(crate) fn buffer_limits(high: Option<usize>, low: Option<usize>) -> Result<(usize, usize)> {
    let high = match (high, low) {
        (Some(h), _) => h,
        (None, Some(l)) => (4 * l).max(l),
        (None, None) => DEFAULT_HIGH_WATER,
    };
    let low = low.unwrap_or(high / 4);
    if low > high {
        return Err(Error::InvalidArgument(format!(
            "high ({high}) must be >= low ({low}) must be >= 0"
        )));
    }
    Ok((high, low))
}
