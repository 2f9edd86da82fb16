//! TLS for the Kafka listener: a rustls server config from the PEM files in the config.
//!
//! The workspace builds rustls with the `ring` provider only, and the provider is passed
//! explicitly, so no process-wide default has to be installed.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The certificates in a PEM file; `key` is the config key that named it (for errors).
fn pem_certs(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{key}: cannot read {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{key}: bad PEM in {}", path.display()))?;
    if certs.is_empty() {
        bail!("{key}: no certificate in {}", path.display());
    }
    Ok(certs)
}

fn certs(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    pem_certs(path, &format!("listeners.kafka_tls.{key}"))
}

/// A verifier that requires a client certificate signed by one of the CAs in `ca_file` (named
/// by the config key `key`). Without one the handshake fails with a TLS alert
/// (`certificate_required`, `unknown_ca`, `bad_certificate`, ...).
pub fn client_verifier(
    ca_file: &Path,
    key: &str,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for ca in pem_certs(ca_file, key)? {
        roots
            .add(ca)
            .with_context(|| format!("{key}: unusable CA certificate"))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .with_context(|| key.to_string())
}

/// `User:<CN>` from the subject of a (verified) client certificate, or `None` when it has no
/// common name.
pub fn principal_of(cert: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    Some(format!("User:{cn}"))
}

/// Warns when the server certificate `leaf` (from config key `key`) has expired or expires
/// within 30 days: clients refuse an expired one, and the broker would otherwise start without
/// a word about it.
pub fn warn_if_expiring(leaf: &[u8], key: &str) {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return;
    };
    let not_after = cert.validity().not_after;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let left = not_after.timestamp() - now;
    if left <= 0 {
        tracing::warn!(key, %not_after, "the server certificate has expired: clients will refuse it");
    } else if left < 30 * 24 * 3600 {
        tracing::warn!(key, %not_after, days_left = left / (24 * 3600), "the server certificate expires soon");
    }
}

/// Builds the acceptor for `[listeners.kafka_tls]`: server chain and key, and when `client_ca`
/// is set, mandatory client certificates signed by that CA.
pub fn acceptor(cfg: &edge_config::TlsListener) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&cfg.cert, "cert")?;
    if let Some(leaf) = chain.first() {
        warn_if_expiring(leaf, "listeners.kafka_tls.cert");
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).with_context(|| {
        format!(
            "listeners.kafka_tls.key: no usable private key in {}",
            cfg.key.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = if cfg.client_ca.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        builder.with_client_cert_verifier(client_verifier(
            &cfg.client_ca,
            "listeners.kafka_tls.client_ca",
            provider,
        )?)
    };
    let config = builder
        .with_single_cert(chain, key)
        .context("listeners.kafka_tls: certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_is_the_subject_common_name() {
        let mut params = rcgen::CertificateParams::new(vec!["dev.local".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sensor-42");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(principal_of(cert.der()).as_deref(), Some("User:sensor-42"));
        // rcgen's default subject is a CN too; without any subject there is no principal.
        let mut bare = rcgen::CertificateParams::new(vec!["dev.local".to_string()]).unwrap();
        bare.distinguished_name = rcgen::DistinguishedName::new();
        let cert = bare.self_signed(&key).unwrap();
        assert_eq!(principal_of(cert.der()), None);
        assert_eq!(principal_of(b"not a certificate"), None);
    }
}
