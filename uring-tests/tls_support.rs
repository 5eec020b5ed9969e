//! Certificates made at test time (a CA and separate leaves: a
//! self-signed certificate used as both is rejected by rustls) and the
//! rustls configs and the protocols and helpers the TLS tests share.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use ringloop::prelude::*;
use ringloop::tls::rustls;
use ringloop::{BaseProtocol, ConnectOptions, Protocol, ServerOptions, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// A leaf certificate and its key.
pub struct Leaf {
    pub cert: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_der: Vec<u8>,
    pub key_pem: String,
}

pub struct Pki {
    pub ca: CertificateDer<'static>,
    pub ca_pem: String,
    /// Valid for `localhost` and 127.0.0.1, signed by `ca`.
    pub leaf: Leaf,
    /// Expired (2020), otherwise as `leaf`.
    pub expired: Leaf,
    /// Another CA nobody trusts, and a leaf it signed for `localhost`.
    pub other_ca: CertificateDer<'static>,
    pub untrusted: Leaf,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, rcgen::Certificate) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p.self_signed(&key).unwrap();
    (p, key, cert)
}

fn leaf(issuer: &Issuer<'_, KeyPair>, expired: bool) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    p.distinguished_name.push(DnType::CommonName, "localhost");
    if expired {
        p.not_before = rcgen::date_time_ymd(2019, 1, 1);
        p.not_after = rcgen::date_time_ymd(2020, 1, 1);
    }
    let cert = p.signed_by(&key, issuer).unwrap();
    Leaf {
        cert: cert.der().clone(),
        cert_pem: cert.pem(),
        key_der: key.serialize_der(),
        key_pem: key.serialize_pem(),
    }
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let (ca_params, ca_key, ca_cert) = ca("ringloop test CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let (o_params, o_key, o_cert) = ca("untrusted test CA");
        let o_issuer = Issuer::new(o_params, o_key);
        Pki {
            ca: ca_cert.der().clone(),
            ca_pem: ca_cert.pem(),
            leaf: leaf(&issuer, false),
            expired: leaf(&issuer, true),
            other_ca: o_cert.der().clone(),
            untrusted: leaf(&o_issuer, false),
        }
    })
}

pub fn server_config_for(l: &Leaf, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let mut c = ServerConfig::builder_with_provider(ringloop::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![l.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(l.key_der.clone())),
        )
        .unwrap();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// The server config with the good leaf.
pub fn server_config() -> Arc<ServerConfig> {
    server_config_for(&pki().leaf, &[])
}

/// A client trusting `ca` only.
pub fn client_config_trusting(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut c = ClientConfig::builder_with_provider(ringloop::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// A client trusting the test CA.
pub fn client_config() -> Arc<ClientConfig> {
    client_config_trusting(&pki().ca, &[])
}

/// A client trusting the test CA, limited to one protocol version.
pub fn client_config_version(v: &'static rustls::SupportedProtocolVersion) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki().ca.clone()).unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(ringloop::tls::crypto_provider())
            .with_protocol_versions(&[v])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Writes the PEM files real peers read into a fresh directory.
pub fn pem_dir(tag: &str) -> std::path::PathBuf {
    let p = pki();
    let dir = std::env::temp_dir().join(format!("ringloop-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), &p.ca_pem).unwrap();
    std::fs::write(dir.join("cert.pem"), &p.leaf.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &p.leaf.key_pem).unwrap();
    dir
}

pub const LIMIT: Duration = Duration::from_secs(30);

/// Echoes everything back.
pub struct Echo(pub Option<Transport>);

impl BaseProtocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
}

impl Protocol for Echo {
    fn data_received(&mut self, data: &[u8]) {
        self.0.as_ref().unwrap().write_slice(data).unwrap();
    }
}

/// Records callbacks and data; completes `done` on connection_lost.
#[derive(Default)]
pub struct Rec {
    pub events: Vec<String>,
    pub data: Vec<u8>,
    pub t: Option<Transport>,
    pub done: Option<LoopFuture<()>>,
    /// Completes once this many bytes arrived.
    pub want: usize,
    pub got_enough: Option<LoopFuture<()>>,
}

impl BaseProtocol for Rec {
    fn connection_made(&mut self, t: Transport) {
        self.events.push("made".into());
        self.t = Some(t);
    }
    fn eof_received(&mut self) -> bool {
        self.events.push("eof".into());
        false
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        self.events.push(format!(
            "lost:{}",
            exc.map_or("none".into(), |e| e.to_string())
        ));
        if let Some(d) = self.done.take() {
            let _ = d.set_result(());
        }
    }
}

impl Protocol for Rec {
    fn data_received(&mut self, data: &[u8]) {
        self.data.extend_from_slice(data);
        if self.data.len() >= self.want {
            if let Some(f) = self.got_enough.take() {
                let _ = f.set_result(());
            }
        }
    }
}

/// Waits (in loop turns) until `cond` holds; the test's watchdog bounds it.
pub async fn until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        ringloop::sleep(Duration::from_millis(1)).await.unwrap();
    }
}

pub fn port_of(s: &ringloop::Server) -> u16 {
    s.sockets()[0].as_socket().unwrap().port()
}

pub fn tls_server_opts(cfg: Arc<rustls::ServerConfig>) -> ServerOptions {
    ServerOptions {
        hosts: vec!["127.0.0.1".into()],
        ssl: Some(cfg),
        ..Default::default()
    }
}

pub fn tls_connect_opts(port: u16) -> ConnectOptions {
    ConnectOptions {
        host: Some("127.0.0.1".into()),
        port,
        ssl: Some(client_config()),
        ..Default::default()
    }
}
