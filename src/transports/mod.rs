//! Transports: the byte pipes protocols talk through (asyncio's
//! `Transport`, `DatagramTransport`), written once on the driver's ops so
//! they behave the same on the proactor and the selector.
#![forbid(unsafe_code)]

pub(crate) mod base;
mod cell;
mod datagram;
mod handle;
mod stream;
pub(crate) mod tls;
mod tls_session;

use std::os::fd::RawFd;

pub use datagram::DatagramTransport;
#[allow(unused_imports)]
pub(crate) use handle::Layered;
pub use handle::Transport;
pub use tls::{StartTlsOptions, TlsConfig};
pub use tls_session::crypto_provider;

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
    /// The peer's certificate chain, leaf first, DER-encoded (TLS:
    /// `peercert`; asyncio gives the decoded leaf).
    PeerCertificates(Vec<rustls::pki_types::CertificateDer<'static>>),
    /// The negotiated cipher suite (TLS: `cipher`, asyncio's 3-tuple).
    Cipher {
        /// The suite's IANA-style name, e.g. `TLS13_AES_256_GCM_SHA384`.
        name: String,
        /// The protocol version that defines it, e.g. `TLSv1.3`.
        protocol: String,
        /// The secret key's size in bits.
        secret_bits: u32,
    },
    /// A text value (TLS: `tls_version` as `TLSv1.3`, `server_hostname`).
    Text(String),
    /// Raw bytes (TLS: `alpn_protocol`).
    Bytes(Vec<u8>),
    /// The TLS configuration (`sslcontext`).
    TlsConfig(TlsConfig),
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
