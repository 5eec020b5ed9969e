//! Certificates for the TLS examples: loaded from a directory
//! (`cert.pem`, `key.pem`), or made there on first use as a test CA and a
//! leaf for `localhost` / 127.0.0.1 (`ca.pem` is what clients trust:
//! `curl --cacert DIR/ca.pem`). Configs use ringloop's crypto provider.

use std::io;
use std::path::Path;
use std::sync::Arc;

use ringloop::tls::rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Makes `dir/{ca,cert,key}.pem` unless `cert.pem` is there already
/// (`cert.pem` last; two processes making one directory at once could
/// still mix their files: give each its own).
pub fn ensure_certs(dir: &Path) -> io::Result<()> {
    if dir.join("cert.pem").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let fail = |e: rcgen::Error| io::Error::other(e.to_string());
    let ca_key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "ringloop example CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(fail)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).map_err(fail)?;
    leaf.subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = leaf.signed_by(&key, &issuer).map_err(fail)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
    std::fs::write(dir.join("cert.pem"), cert.pem())?;
    Ok(())
}

/// A server config from `dir/cert.pem` (the chain) and `dir/key.pem`.
pub fn server_config(dir: &Path, alpn: &[&[u8]]) -> io::Result<Arc<ServerConfig>> {
    let bad = |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let chain = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).map_err(|e| bad(&e))?;
    let mut c = ServerConfig::builder_with_provider(ringloop::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| bad(&e))?;
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(c))
}

/// A client config trusting `dir/ca.pem` only.
pub fn client_config(dir: &Path) -> io::Result<Arc<ClientConfig>> {
    let bad = |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).map_err(|e| bad(&e))? {
        roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    Ok(Arc::new(
        ClientConfig::builder_with_provider(ringloop::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// A fresh directory under the temp dir for this process's certificates.
pub fn temp_cert_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ringloop-{name}-{}", std::process::id()))
}
