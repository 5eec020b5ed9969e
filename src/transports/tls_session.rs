//! The TLS engine behind the TLS transport: the one file that names
//! rustls's connection API (0.23's buffered `ClientConnection` /
//! `ServerConnection`: `read_tls`, `process_new_packets`, `write_tls`), so
//! the move to rustls 0.24's caller-owned buffers touches this file only.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ServerConfig};

use crate::base_loop::io::SocketInput;
use crate::error::{Error, Result};

/// Received ciphertext for [`Session::feed`]: bytes the transport
/// received ([`Bytes`]), or the socket itself (readiness mode).
pub(crate) trait Ciphertext: Read {
    /// Nothing more to take now (all taken; or the socket would block,
    /// ended, failed, or spent its budget).
    fn exhausted(&self) -> bool;
    /// Bytes taken so far.
    fn taken(&self) -> usize;
}

/// Ciphertext the transport received, taken from the front.
pub(crate) struct Bytes<'a> {
    rest: &'a [u8],
    len: usize,
}

impl<'a> Bytes<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes {
            rest: data,
            len: data.len(),
        }
    }

    /// What was not taken.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

impl Read for Bytes<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.rest.read(buf)
    }
}

impl Ciphertext for Bytes<'_> {
    fn exhausted(&self) -> bool {
        self.rest.is_empty()
    }
    fn taken(&self) -> usize {
        self.len - self.rest.len()
    }
}

impl Ciphertext for SocketInput {
    fn exhausted(&self) -> bool {
        SocketInput::exhausted(self)
    }
    fn taken(&self) -> usize {
        SocketInput::taken(self)
    }
}

/// What feeding received bytes gave.
#[derive(Default)]
pub(crate) struct Fed {
    /// The peer sent `close_notify`.
    pub(crate) peer_closed: bool,
}

/// One TLS connection's state machine: ciphertext in and out, plaintext in
/// and out, no I/O of its own.
pub(crate) struct Session {
    conn: rustls::Connection,
}

impl Session {
    /// A client session checking the server's certificate against
    /// `server_name` (an empty name: no name; see `tls.rs`).
    pub(crate) fn client(config: Arc<ClientConfig>, server_name: &str) -> Result<Session> {
        let name = if server_name.is_empty() {
            // No name to check: an unspecified address is never a
            // certificate's name and sends no SNI, so only a verifier that
            // ignores names (the config's choice) accepts the peer.
            ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into())
        } else {
            ServerName::try_from(server_name.to_owned()).map_err(|e| {
                Error::InvalidArgument(format!("server_hostname {server_name:?}: {e}"))
            })?
        };
        let mut conn = rustls::ClientConnection::new(config, name).map_err(Error::from)?;
        // The transport above does its own flow control.
        conn.set_buffer_limit(None);
        Ok(Session { conn: conn.into() })
    }

    /// A server session.
    pub(crate) fn server(config: Arc<ServerConfig>) -> Result<Session> {
        let mut conn = rustls::ServerConnection::new(config).map_err(Error::from)?;
        conn.set_buffer_limit(None);
        Ok(Session { conn: conn.into() })
    }

    /// Takes ciphertext from `input` (as much as the engine accepts before
    /// its plaintext must be read, or until the input is exhausted) and
    /// processes it. A socket's own error or EOF is not the engine's: the
    /// input keeps it for the transport.
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] with rustls's reason; the alert for the peer is then
    /// queued ([`take_tls`](Self::take_tls)).
    pub(crate) fn feed(&mut self, input: &mut dyn Ciphertext) -> Result<Fed> {
        let mut fed = Fed::default();
        while !input.exhausted() {
            match self.conn.read_tls(input) {
                // (All taken, EOF, or the peer's close_notify came before.)
                Ok(0) => break,
                Ok(_) => {}
                // The socket would block, ended or failed (the input says
                // which), or the read budget is spent.
                Err(_) if input.exhausted() => break,
                // The received-plaintext buffer is full: read it first.
                Err(e) if e.kind() == io::ErrorKind::Other => break,
                Err(e) => return Err(e.into()),
            }
            let st = self.conn.process_new_packets().map_err(Error::from)?;
            fed.peer_closed |= st.peer_has_closed();
            if st.plaintext_bytes_to_read() > 0 {
                break;
            }
        }
        Ok(fed)
    }

    /// Tells the engine the peer closed the TCP stream.
    pub(crate) fn feed_eof(&mut self) {
        let _ = self.conn.read_tls(&mut &[][..]);
    }

    /// Copies decrypted bytes into `out`; how many (0: none are ready).
    pub(crate) fn read_plain(&mut self, out: &mut [u8]) -> usize {
        // WouldBlock: nothing yet; UnexpectedEof: closed without
        // close_notify (a normal EOF for the application): both 0 here.
        self.conn.reader().read(out).unwrap_or_default()
    }

    /// Decrypted bytes are waiting to be read.
    pub(crate) fn has_plaintext(&mut self) -> bool {
        self.conn
            .process_new_packets()
            .is_ok_and(|st| st.plaintext_bytes_to_read() > 0)
    }

    /// Encrypts `data` (buffered until the handshake is done).
    pub(crate) fn write_plain(&mut self, data: &[u8]) -> Result<()> {
        self.conn.writer().write_all(data).map_err(Error::from)
    }

    /// Writes the ciphertext waiting to be sent to `out` until it is all
    /// taken or `out` takes no more (what is left stays queued here).
    pub(crate) fn send_tls(&mut self, out: &mut dyn Write) {
        while self.conn.wants_write() {
            match self.conn.write_tls(out) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }

    /// Moves the ciphertext waiting to be sent into `out`.
    pub(crate) fn take_tls(&mut self, out: &mut Vec<u8>) {
        // (Writing to a Vec cannot fail.)
        self.send_tls(out);
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Queues `close_notify`.
    pub(crate) fn send_close_notify(&mut self) {
        self.conn.send_close_notify();
    }

    /// The peer's certificate chain, leaf first.
    pub(crate) fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.conn.peer_certificates().map(|c| c.to_vec())
    }

    /// The cipher suite's name, protocol, and secret bits.
    pub(crate) fn cipher(&self) -> Option<(String, String, u32)> {
        let s = self.conn.negotiated_cipher_suite()?;
        let name = format!("{:?}", s.suite());
        let bits = if name.contains("AES_128") { 128 } else { 256 };
        Some((name, version_name(s.version().version), bits))
    }

    /// `"TLSv1.3"` or `"TLSv1.2"`.
    pub(crate) fn version(&self) -> Option<String> {
        self.conn.protocol_version().map(version_name)
    }

    /// The negotiated ALPN protocol.
    pub(crate) fn alpn_protocol(&self) -> Option<Vec<u8>> {
        self.conn.alpn_protocol().map(<[u8]>::to_vec)
    }

    /// The name the client asked for (server side, SNI).
    pub(crate) fn sni(&self) -> Option<String> {
        match &self.conn {
            rustls::Connection::Server(s) => s.server_name().map(str::to_owned),
            rustls::Connection::Client(_) => None,
        }
    }
}

fn version_name(v: rustls::ProtocolVersion) -> String {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        other => format!("{other:?}"),
    }
}

/// The crypto provider configs are built with: `ring` by default,
/// `aws-lc-rs` with that cargo feature.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    return Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    return Arc::new(rustls::crypto::ring::default_provider());
}

#[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
compile_error!("ringloop needs a TLS crypto provider: enable the `ring` or `aws-lc-rs` feature");
