//! ringloop's error type: asyncio's exceptions as enum variants.

use std::fmt;
use std::io;
use std::sync::Arc;

/// The error every public ringloop call returns.
///
/// Equivalent to asyncio's exception classes (`CancelledError`,
/// `TimeoutError`, `InvalidStateError`, …) plus `OSError` as [`Error::Io`].
/// It is `Clone` (I/O errors sit behind an [`Arc`]) because a future's result
/// may be read more than once.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Error {
    /// The operation or task was cancelled (`asyncio.CancelledError`), with
    /// the message given to `cancel(msg)`, if any.
    Cancelled(Option<String>),
    /// A deadline passed (`TimeoutError`).
    Timeout,
    /// The object is not in a state that allows the call
    /// (`asyncio.InvalidStateError`, or `RuntimeError` for loop misuse).
    InvalidState(String),
    /// An argument was out of range or malformed (`ValueError`, `TypeError`).
    InvalidArgument(String),
    /// The loop, transport or resource is closed.
    Closed(String),
    /// A task or callback panicked; the payload's message.
    Panic(String),
    /// The requested backend cannot run here (for example io_uring forced
    /// with `RINGLOOP_BACKEND=proactor` where the kernel refuses it).
    Unsupported(String),
    /// EOF came before the expected data (`asyncio.IncompleteReadError`):
    /// what was read, and how much was expected (`None` for `readuntil`).
    IncompleteRead {
        /// The bytes read before EOF.
        partial: bytes::Bytes,
        /// The byte count that was asked for.
        expected: Option<usize>,
    },
    /// A separator was not found within the stream's limit
    /// (`asyncio.LimitOverrunError`); the data stays buffered.
    LimitOverrun {
        /// How many bytes would have to be consumed to reach the separator
        /// (or were searched).
        consumed: usize,
    },
    /// A barrier was aborted or reset while waiting (`asyncio.BrokenBarrierError`).
    BrokenBarrier,
    /// `get_nowait` on an empty queue (`asyncio.QueueEmpty`).
    QueueEmpty,
    /// `put_nowait` on a full queue (`asyncio.QueueFull`).
    QueueFull,
    /// The queue was shut down (`asyncio.QueueShutDown`).
    QueueShutDown,
    /// The main task was cancelled by Ctrl-C (asyncio's `KeyboardInterrupt`
    /// out of `asyncio.run` / `Runner.run`).
    Interrupted,
    /// `sendfile` cannot send zero-copy here (not a regular file, a TLS
    /// transport) and `fallback` was false (`asyncio.SendfileNotAvailableError`).
    SendfileNotAvailable(String),
    /// Several errors at once, as a `TaskGroup` collects them (`ExceptionGroup`).
    Group(Vec<Error>),
    /// An operating-system error (`OSError`).
    Io(Arc<io::Error>),
    /// A TLS failure (`ssl.SSLError`) with rustls's reason: a bad or
    /// untrusted certificate, a protocol violation, an alert from the peer.
    /// (Behind an [`Arc`], as [`Error::Io`]: rustls's error is large, and
    /// every task's result holds an `Error`.)
    Tls(Arc<rustls::Error>),
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True for [`Error::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Cancelled(_))
    }

    /// The underlying I/O error kind, for [`Error::Io`].
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Error::Io(e) => Some(e.kind()),
            _ => None,
        }
    }

    pub(crate) fn state(msg: impl Into<String>) -> Error {
        Error::InvalidState(msg.into())
    }

    pub(crate) fn closed(msg: impl Into<String>) -> Error {
        Error::Closed(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Cancelled(None) => f.write_str("cancelled"),
            Error::Cancelled(Some(m)) => write!(f, "cancelled: {m}"),
            Error::Timeout => f.write_str("timed out"),
            Error::InvalidState(m) => write!(f, "invalid state: {m}"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::Closed(m) => write!(f, "closed: {m}"),
            Error::Panic(m) => write!(f, "panicked: {m}"),
            Error::Unsupported(m) => write!(f, "unsupported: {m}"),
            Error::IncompleteRead { partial, expected } => write!(
                f,
                "{} bytes read on a total of {} expected bytes",
                partial.len(),
                expected.map_or("undefined".to_string(), |e| e.to_string())
            ),
            Error::LimitOverrun { consumed } => {
                write!(
                    f,
                    "separator is not found within the limit ({consumed} bytes)"
                )
            }
            Error::BrokenBarrier => f.write_str("barrier is broken"),
            Error::Interrupted => f.write_str("interrupted (SIGINT)"),
            Error::QueueEmpty => f.write_str("queue is empty"),
            Error::QueueFull => f.write_str("queue is full"),
            Error::QueueShutDown => f.write_str("queue is shut down"),
            Error::SendfileNotAvailable(m) => write!(f, "sendfile is not available: {m}"),
            Error::Group(es) => {
                write!(f, "{} errors:", es.len())?;
                for e in es {
                    write!(f, " [{e}]")?;
                }
                Ok(())
            }
            Error::Io(e) => write!(f, "{e}"),
            Error::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(&**e),
            Error::Tls(e) => Some(&**e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(Arc::new(e))
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

impl From<rustls::Error> for Error {
    fn from(e: rustls::Error) -> Error {
        Error::Tls(Arc::new(e))
    }
}
