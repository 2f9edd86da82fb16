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

fn certs(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("listeners.kafka_tls.{key}: cannot read {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("listeners.kafka_tls.{key}: bad PEM in {}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "listeners.kafka_tls.{key}: no certificate in {}",
            path.display()
        );
    }
    Ok(certs)
}

/// Builds the acceptor for `[listeners.kafka_tls]`: server chain and key, and when `client_ca`
/// is set, mandatory client certificates signed by that CA.
pub fn acceptor(cfg: &edge_config::TlsListener) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&cfg.cert, "cert")?;
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
        let mut roots = RootCertStore::empty();
        for ca in certs(&cfg.client_ca, "client_ca")? {
            roots
                .add(ca)
                .context("listeners.kafka_tls.client_ca: unusable CA certificate")?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .context("listeners.kafka_tls.client_ca")?;
        builder.with_client_cert_verifier(verifier)
    };
    let config = builder
        .with_single_cert(chain, key)
        .context("listeners.kafka_tls: certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
