//! TLS for the Kafka listener: a rustls server config from the PEM files in the config.
//!
//! The workspace builds rustls with the `ring` provider only, and the provider is passed
//! explicitly, so no process-wide default has to be installed.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use edge_config::CertPrincipal;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The certificates in a PEM file; `key` is the config key that named it (for errors).
pub(crate) fn pem_certs(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{key}: cannot read {}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(pem_error)
        .with_context(|| format!("{key}: bad PEM in {}", path.display()))?;
    if certs.is_empty() {
        bail!("{key}: no certificate in {}", path.display());
    }
    Ok(certs)
}

/// The private key in a PEM file; `key` is the config key that named it (for errors). An
/// encrypted key is refused with what to do: the broker has no passphrase to open it with.
pub(crate) fn pem_key(path: &Path, key: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
            anyhow::anyhow!(
                "{key}: the private key in {} is encrypted; give it without a passphrase \
                 (e.g. `openssl pkey -in {0} -out key.pem`, readable by the broker's user only)",
                path.display()
            )
        } else {
            pem_error(e).context(format!(
                "{key}: no usable private key in {}",
                path.display()
            ))
        }
    })
}

/// A PEM file's error, with the marker or line it names as text (the library gives bytes).
fn pem_error(e: rustls_pki_types::pem::Error) -> anyhow::Error {
    use rustls_pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => anyhow::anyhow!(
            "its {} section has no END line (the file is cut short?)",
            String::from_utf8_lossy(&end_marker).trim()
        ),
        Error::IllegalSectionStart { line } => anyhow::anyhow!(
            "a section starts with the bad line \"{}\"",
            String::from_utf8_lossy(&line).trim()
        ),
        other => anyhow::Error::new(other),
    }
}

fn certs(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    pem_certs(path, &format!("listeners.kafka_tls.{key}"))
}

/// A verifier of client certificates signed by one of the CAs in `ca_file` (named by the config
/// key `key`), which `mandatory` requires: without one the handshake then fails with a TLS
/// alert (`certificate_required`); a certificate presented is always checked (`unknown_ca`,
/// `bad_certificate`, ...).
pub fn client_verifier(
    ca_file: &Path,
    key: &str,
    mandatory: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for ca in pem_certs(ca_file, key)? {
        roots
            .add(ca)
            .with_context(|| format!("{key}: unusable CA certificate"))?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if mandatory {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    let webpki = builder.build().with_context(|| key.to_string())?;
    Ok(Arc::new(SaysWhyVersion1(webpki)))
}

/// The WebPKI verifier, which says in the log why it refused a client certificate of X.509
/// version 1: the TLS alert the client gets (`certificate_unknown`) cannot say it, and Kafka's
/// Java TLS accepts such certificates (`openssl x509 -req` without extensions makes them), so
/// a gateway taking over from Kafka could otherwise refuse its clients with no reason given.
#[derive(Debug)]
struct SaysWhyVersion1(Arc<dyn rustls::server::danger::ClientCertVerifier>);

/// Version 1 certificates refused, said a minute.
static VERSION_1_REFUSED: crate::log_budget::LogBudget = crate::log_budget::LogBudget::new(60);

/// The subject of the first X.509 version 1 certificate of a chain, if it holds one.
fn version_1_subject(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Option<String> {
    std::iter::once(end_entity)
        .chain(intermediates)
        .filter_map(|c| x509_parser::parse_x509_certificate(c).ok())
        .find(|(_, c)| c.version() == x509_parser::x509::X509Version::V1)
        .map(|(_, c)| c.subject().to_string())
}

impl rustls::server::danger::ClientCertVerifier for SaysWhyVersion1 {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.0
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|_| {
                if let Some(subject) = version_1_subject(end_entity, intermediates) {
                    crate::log_budget::within_budget!(
                        VERSION_1_REFUSED,
                        warn,
                        subject,
                        "refused a client certificate chain holding an X.509 version 1 \
                         certificate: only version 3 certificates are accepted (Kafka's Java TLS \
                         also takes version 1); issue it again as version 3, e.g. with \
                         `openssl x509 -req ... -extfile <(echo basicConstraints=CA:FALSE)`"
                    );
                }
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.0.requires_raw_public_keys()
    }
}

/// How the TLS listener names a client by its certificate: `client_principal`, or the mapping
/// rules when there are any.
#[derive(Debug, Clone)]
pub struct CertNaming {
    how: CertPrincipal,
    rules: super::principal_rules::PrincipalRules,
}

impl CertNaming {
    /// The principal of a verified client certificate, or why it names no client.
    pub fn principal(&self, cert: &[u8]) -> Result<String, String> {
        if self.rules.is_empty() {
            return principal_of(cert, self.how).map_err(str::to_string);
        }
        let dn = principal_of(cert, CertPrincipal::Dn)?;
        let dn = dn.strip_prefix("User:").unwrap_or(&dn);
        match self.rules.apply(dn) {
            Some(name) => Ok(format!("User:{name}")),
            None => Err(format!(
                "no rule of listeners.kafka_tls.client_principal_rules names the client \
                 certificate's DN {dn:?}"
            )),
        }
    }
}

/// The TLS listener's acceptor and how it names its clients.
#[derive(Clone)]
pub struct TlsServer {
    pub acceptor: TlsAcceptor,
    pub naming: Arc<CertNaming>,
}

/// The principal of a (verified) client certificate: `User:<CN>` of its subject, or with
/// [`CertPrincipal::Dn`] `User:<subject DN>` as Kafka writes it. Refused, with the reason, when
/// it has no common name (or, for a DN, no subject), or more than one: a subject of two CNs
/// names no one client (one reading would take the first, another the last).
pub fn principal_of(cert: &[u8], how: CertPrincipal) -> Result<String, &'static str> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|_| "the client certificate cannot be read")?;
    match how {
        CertPrincipal::Cn => {
            let mut names = parsed.subject().iter_common_name();
            let cn = names
                .next()
                .ok_or("the client certificate has no subject common name (CN)")?;
            if names.next().is_some() {
                return Err("the client certificate's subject has more than one common name (CN)");
            }
            let cn = cn
                .as_str()
                .map_err(|_| "the client certificate's common name (CN) is not text")?;
            Ok(format!("User:{cn}"))
        }
        CertPrincipal::Dn => rfc2253(parsed.subject())
            .map(|dn| format!("User:{dn}"))
            .ok_or("the client certificate has no subject"),
    }
}

/// A distinguished name as Java's `X500Principal.getName()` writes it, the form of Kafka's
/// default TLS principal (RFC 2253): the RDNs from the last encoded (most specific) to the first,
/// joined by `,`, the attributes of one RDN by `+`; the keywords CN, C, L, ST, O, OU, STREET,
/// DC and UID, other attribute types as their dotted OID with `#` and the value's DER in hex;
/// `,=+<>#;"\` escaped with `\` wherever they are, as are leading and trailing spaces.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> Option<String> {
    use x509_parser::asn1_rs::ToDer as _;
    let mut rdns = Vec::new();
    for rdn in name.iter_rdn() {
        let mut attrs = Vec::new();
        for attr in rdn.iter() {
            let oid = attr.attr_type().to_id_string();
            let keyword = match oid.as_str() {
                "2.5.4.3" => Some("CN"),
                "2.5.4.6" => Some("C"),
                "2.5.4.7" => Some("L"),
                "2.5.4.8" => Some("ST"),
                "2.5.4.10" => Some("O"),
                "2.5.4.11" => Some("OU"),
                "2.5.4.9" => Some("STREET"),
                "0.9.2342.19200300.100.1.25" => Some("DC"),
                "0.9.2342.19200300.100.1.1" => Some("UID"),
                _ => None,
            };
            match (keyword, attr.as_str()) {
                (Some(k), Ok(value)) => attrs.push(format!("{k}={}", escape_dn_value(value))),
                _ => {
                    let der = attr.attr_value().to_der_vec().ok()?;
                    let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
                    attrs.push(format!("{oid}=#{hex}"));
                }
            }
        }
        rdns.push(attrs.join("+"));
    }
    if rdns.is_empty() {
        return None;
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// An attribute value escaped as RFC 2253 asks.
fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    // Every space of a leading or trailing run is escaped, as Java does.
    let chars: Vec<char> = value.chars().collect();
    let lead = chars.iter().take_while(|c| **c == ' ').count();
    let trail = chars.len() - chars.iter().rev().take_while(|c| **c == ' ').count();
    for (i, &c) in chars.iter().enumerate() {
        // Java escapes `=` and `#` wherever they are, more than RFC 2253 asks.
        let special = matches!(c, ',' | '=' | '+' | '<' | '>' | '#' | ';' | '"' | '\\')
            || i < lead
            || i >= trail;
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
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
        tracing::warn!(key, %not_after, "this certificate has expired: the other side will refuse it");
    } else if left < 30 * 24 * 3600 {
        tracing::warn!(key, %not_after, days_left = left / (24 * 3600), "this certificate expires soon");
    }
}

/// Builds the acceptor for `[listeners.kafka_tls]`: server chain and key, and when `client_ca`
/// is set, client certificates signed by that CA (required unless `client_auth = "requested"`)
/// and how they name their clients.
pub fn acceptor(cfg: &edge_config::TlsListener) -> anyhow::Result<TlsServer> {
    let rules = super::principal_rules::PrincipalRules::parse(&cfg.client_principal_rules)
        .map_err(|why| anyhow::anyhow!("listeners.kafka_tls.client_principal_rules: {why}"))?;
    let naming = Arc::new(CertNaming {
        how: cfg.client_principal,
        rules,
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&cfg.cert, "cert")?;
    if let Some(leaf) = chain.first() {
        warn_if_expiring(leaf, "listeners.kafka_tls.cert");
    }
    let key = pem_key(&cfg.key, "listeners.kafka_tls.key")?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = if cfg.client_ca.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        builder.with_client_cert_verifier(client_verifier(
            &cfg.client_ca,
            "listeners.kafka_tls.client_ca",
            cfg.client_auth == edge_config::TlsClientAuth::Required,
            provider,
        )?)
    };
    let config = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "listeners.kafka_tls: the certificate in {} and the key in {} do not match",
            cfg.cert.display(),
            cfg.key.display()
        )
    })?;
    Ok(TlsServer {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        naming,
    })
}

/// A file named by a config key or a client property (for errors).
pub(crate) type Named<'a> = (&'a Path, &'a str);

/// A TLS client config (connections to another broker): the server's certificate checked
/// against the CAs in `ca`, and with `identity` the certificate chain and private key presented
/// to a server that asks for one.
pub(crate) fn client_config(
    ca: Named<'_>,
    identity: Option<(Named<'_>, Named<'_>)>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let (ca_path, ca_key) = ca;
    let mut roots = RootCertStore::empty();
    for cert in pem_certs(ca_path, ca_key)? {
        roots.add(cert).with_context(|| {
            format!("{ca_key}: unusable CA certificate in {}", ca_path.display())
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(((cert_path, cert_key), (key_path, key_key))) => {
            let chain = pem_certs(cert_path, cert_key)?;
            if let Some(leaf) = chain.first() {
                warn_if_expiring(leaf, cert_key);
            }
            let key = pem_key(key_path, key_key)?;
            builder.with_client_auth_cert(chain, key).with_context(|| {
                format!(
                    "{cert_key} and {key_key}: the certificate in {} and the key in {} do not match",
                    cert_path.display(),
                    key_path.display()
                )
            })?
        }
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_file_cut_short_is_said_in_text() {
        let dir = tempfile::tempdir().unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let pem = made.cert.pem();
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, &pem[..pem.len() / 2]).unwrap();
        let e = format!("{:#}", pem_certs(&path, "listeners.quic.cert").unwrap_err());
        assert!(
            e.contains("bad PEM") && e.contains("its CERTIFICATE section has no END line"),
            "{e}"
        );
    }

    /// A DER element: tag, length, body.
    fn der(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match body.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(body);
        out
    }

    /// A CA (version 3, as rcgen makes them) and a client certificate of X.509 version 1 that
    /// it signed (no version field, no extensions: what `openssl x509 -req` without `-extfile`
    /// makes), written by hand since rcgen makes only version 3.
    fn ca_and_version_1_client() -> (
        rcgen::Certificate,
        rcgen::Issuer<'static, rcgen::KeyPair>,
        CertificateDer<'static>,
    ) {
        use rcgen::PublicKeyData as _;
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let ca = (ca_cert, ca);
        let (_, parsed_ca) = x509_parser::parse_x509_certificate(ca.0.der()).unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let ecdsa_sha256 = der(
            0x30,
            &der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
        );
        let subject = der(
            0x30,
            &der(
                0x31,
                &der(
                    0x30,
                    &[der(0x06, &[0x55, 0x04, 0x03]), der(0x0c, b"v1-device")].concat(),
                ),
            ),
        );
        let validity = der(
            0x30,
            &[der(0x17, b"200101000000Z"), der(0x17, b"491231235959Z")].concat(),
        );
        let tbs = der(
            0x30,
            &[
                der(0x02, &[0x01, 0x23]),
                ecdsa_sha256.clone(),
                parsed_ca.subject().as_raw().to_vec(),
                validity,
                subject,
                client_key.subject_public_key_info(),
            ]
            .concat(),
        );
        let rng = ring::rand::SystemRandom::new();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &ca_key.serialize_der(),
            &rng,
        )
        .unwrap();
        let signature = signer.sign(&rng, &tbs).unwrap();
        let bits = [&[0u8][..], signature.as_ref()].concat();
        let cert = der(0x30, &[tbs, ecdsa_sha256, der(0x03, &bits)].concat());
        (
            ca.0,
            rcgen::Issuer::new(ca.1, ca_key),
            CertificateDer::from(cert),
        )
    }

    #[test]
    fn key_file_errors_say_what_is_wrong_and_name_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gw.local".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other_key = rcgen::KeyPair::generate().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cert_file = write("gw.crt", &cert.pem());
        let other_file = write("other.key", &other_key.serialize_pem());
        // What `openssl pkcs8 -topk8` writes with a passphrase (the body is not looked at).
        let encrypted = write(
            "locked.key",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0w\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let err = pem_key(&encrypted, "listeners.kafka_tls.key").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("locked.key is encrypted"), "{text}");
        let err = pem_key(&cert_file, "listeners.kafka_tls.key").unwrap_err();
        assert!(
            format!("{err:#}").contains("no usable private key in"),
            "{err:#}"
        );
        // A certificate with another certificate's key: both files named.
        let listener = edge_config::TlsListener {
            cert: cert_file,
            key: other_file,
            ..Default::default()
        };
        let err = acceptor(&listener).err().unwrap();
        let text = format!("{err:#}");
        assert!(
            text.contains("gw.crt") && text.contains("other.key") && text.contains("do not match"),
            "{text}"
        );
    }

    #[test]
    fn a_version_1_client_certificate_is_refused_and_named() {
        let (ca, issuer, v1) = ca_and_version_1_client();
        let (_, parsed) = x509_parser::parse_x509_certificate(&v1).unwrap();
        assert_eq!(parsed.version(), x509_parser::x509::X509Version::V1);
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = client_verifier(&ca_file, "client_ca", true, provider).unwrap();
        let now = rustls_pki_types::UnixTime::now();
        // WebPKI refuses version 1 (if it ever takes them, the wrapper can go).
        let refused = verifier.verify_client_cert(&v1, &[], now).unwrap_err();
        assert!(
            format!("{refused:?}").contains("UnsupportedCertVersion"),
            "{refused:?}"
        );
        assert_eq!(version_1_subject(&v1, &[]).as_deref(), Some("CN=v1-device"));
        // A version 3 certificate from the same CA passes and is not taken for one.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "v3-device");
        let v3 = params.signed_by(&key, &issuer).unwrap();
        assert!(verifier.verify_client_cert(v3.der(), &[], now).is_ok());
        assert_eq!(version_1_subject(v3.der(), &[]), None);
        // Nor is a version 1 certificate in the chain missed behind a version 3 one.
        assert!(version_1_subject(v3.der(), std::slice::from_ref(&v1)).is_some());
    }

    #[test]
    fn principal_is_the_subject_common_name() {
        let mut params = rcgen::CertificateParams::new(vec!["dev.local".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sensor-42");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            principal_of(cert.der(), CertPrincipal::Cn).as_deref(),
            Ok("User:sensor-42")
        );
        // rcgen's default subject is a CN too; without any subject there is no principal.
        let mut bare = rcgen::CertificateParams::new(vec!["dev.local".to_string()]).unwrap();
        bare.distinguished_name = rcgen::DistinguishedName::new();
        let cert = bare.self_signed(&key).unwrap();
        assert!(principal_of(cert.der(), CertPrincipal::Cn).is_err());
        assert!(principal_of(cert.der(), CertPrincipal::Dn).is_err());
        assert!(principal_of(b"not a certificate", CertPrincipal::Dn).is_err());
        // Two CNs (as `openssl req -subj "/CN=admin/CN=eve"` makes; rcgen keeps one value per
        // attribute type, so the second is given by its OID): no principal, whichever order;
        // as a DN both are named.
        for names in [["admin", "eve"], ["eve", "admin"]] {
            let mut two = rcgen::CertificateParams::new(vec!["dev.local".to_string()]).unwrap();
            two.distinguished_name = rcgen::DistinguishedName::new();
            two.distinguished_name
                .push(rcgen::DnType::CommonName, names[0]);
            two.distinguished_name
                .push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 3]), names[1]);
            let cert = two.self_signed(&key).unwrap();
            assert_eq!(
                principal_of(cert.der(), CertPrincipal::Cn),
                Err("the client certificate's subject has more than one common name (CN)")
            );
            let dn = principal_of(cert.der(), CertPrincipal::Dn).unwrap();
            assert!(dn.contains("CN=admin") && dn.contains("CN=eve"), "{dn}");
        }
    }

    #[test]
    fn the_dn_principal_is_written_as_kafka_writes_it() {
        let mut params = rcgen::CertificateParams::new(vec!["dev.local".to_string()]).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "DE");
        dn.push(rcgen::DnType::OrganizationName, "Acme, Inc.");
        dn.push(rcgen::DnType::OrganizationalUnitName, "plant 2 #7=a");
        dn.push(rcgen::DnType::CommonName, "#sensor-42  ");
        dn.push(
            rcgen::DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            rcgen::DnValue::Ia5String("ops@acme.example".try_into().unwrap()),
        );
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        // Most specific first; the e-mail address as Java writes an attribute it has no
        // keyword for: its OID and the DER of the value (IA5String, tag 0x16).
        let hex: String = b"ops@acme.example"
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            principal_of(cert.der(), CertPrincipal::Dn).unwrap(),
            format!(
                "User:1.2.840.113549.1.9.1=#1610{hex},CN=\\#sensor-42\\ \\ ,OU=plant 2 \\#7\\=a,O=Acme\\, Inc.,C=DE"
            )
        );
    }
}
