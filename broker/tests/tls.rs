//! Kafka over TLS: plaintext and TLS listeners side by side, and mutual TLS with `client_ca`.

mod common;

use std::path::Path;
use std::sync::Arc;

use kafka_protocol::messages::{
    ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
};
use kafka_protocol::protocol::Request;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

struct Pki {
    ca_der: CertificateDer<'static>,
    client_chain: Vec<CertificateDer<'static>>,
    client_key_der: Vec<u8>,
    /// A client certificate of the same CA whose subject has two CNs (admin, then eve).
    two_cn_chain: Vec<CertificateDer<'static>>,
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, written to `dir`.
fn make_pki(dir: &Path) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["sensor-7".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    let mut two_cn = CertificateParams::new(vec!["sensor-8".to_string()]).unwrap();
    two_cn.distinguished_name = rcgen::DistinguishedName::new();
    two_cn
        .distinguished_name
        .push(rcgen::DnType::CommonName, "admin");
    // rcgen keeps one value per attribute type: the second CN by its OID.
    two_cn
        .distinguished_name
        .push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 3]), "eve");
    let two_cn = two_cn.signed_by(&client_key, &ca).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem() + &ca.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    Pki {
        ca_der: ca.der().clone(),
        client_chain: vec![client.der().clone()],
        client_key_der: client_key.serialize_der(),
        two_cn_chain: vec![two_cn.der().clone()],
    }
}

fn connector(pki: &Pki, with_client_cert: bool) -> TlsConnector {
    let chain = with_client_cert.then(|| pki.client_chain.clone());
    connector_with(pki, chain)
}

/// A TLS client trusting the test CA, presenting `chain` (with the client key) if given.
fn connector_with(pki: &Pki, chain: Option<Vec<CertificateDer<'static>>>) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match chain {
        Some(chain) => {
            let key = PrivateKeyDer::try_from(pki.client_key_der.clone()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(config))
}

async fn call<S, R>(stream: &mut S, req: &R, version: i16) -> std::io::Result<R::Response>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: Request,
{
    stream
        .write_all(&common::request_frame(req, version, 1, "tls-test"))
        .await?;
    stream.flush().await?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut buf).await?;
    Ok(common::decode_response::<R>(
        bytes::Bytes::from(buf),
        version,
        1,
    ))
}

/// A broker config with the TLS listener on, serving the certificate `make_pki` wrote to `dir`.
fn tls_config(dir: &Path) -> runnel::Config {
    let mut cfg = common::test_config(&dir.join("data"));
    cfg.listeners.kafka_tls.enabled = true;
    cfg.listeners.kafka_tls.address = "127.0.0.1:0".parse().unwrap();
    cfg.listeners.kafka_tls.cert = dir.join("server.pem");
    cfg.listeners.kafka_tls.key = dir.join("server.key");
    cfg
}

#[tokio::test]
async fn tls_and_plaintext_listeners_serve_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let cfg = tls_config(dir.path());
    let broker = common::start_with(cfg).await;
    let tls_addr = broker.kafka_tls_addr.unwrap();

    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector(&pki, false).connect(name, tcp).await.unwrap();
    let v: ApiVersionsResponse = call(&mut tls, &ApiVersionsRequest::default(), 3)
        .await
        .unwrap();
    assert_eq!(v.error_code, 0);
    let md: MetadataResponse = call(&mut tls, &MetadataRequest::default(), 9)
        .await
        .unwrap();
    assert_eq!(
        md.brokers[0].port,
        tls_addr.port() as i32,
        "TLS clients are sent to the TLS port"
    );

    let mut plain = common::RawClient::connect(&broker.bootstrap()).await;
    let md = plain.call(&MetadataRequest::default(), 9).await;
    assert_eq!(md.brokers[0].port, broker.kafka_addr.unwrap().port() as i32);

    // A plaintext client on the TLS port gets nowhere, and harms nobody.
    let mut wrong = common::RawClient::connect(&tls_addr.to_string()).await;
    wrong
        .send_frame(&[0, 18, 0, 0, 0, 0, 0, 1, 0xff, 0xff])
        .await;
    // The broker may send a TLS alert, then closes.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        wrong.stream.read_to_end(&mut rest),
    )
    .await
    .expect("the broker closes the connection");
    assert!(
        read.is_err() || rest.len() < 16,
        "no Kafka response on the TLS port: {rest:?}"
    );
    let v: ApiVersionsResponse = call(&mut tls, &ApiVersionsRequest::default(), 3)
        .await
        .unwrap();
    assert_eq!(v.error_code, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let mut cfg = tls_config(dir.path());
    cfg.listeners.kafka_tls.client_ca = dir.path().join("ca.pem");
    let broker = common::start_with(cfg).await;
    let tls_addr = broker.kafka_tls_addr.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();

    // Without a client certificate the handshake (or the first read after it, in TLS 1.3) fails.
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let refused = match connector(&pki, false).connect(name.clone(), tcp).await {
        Err(_) => true,
        Ok(mut s) => call(&mut s, &ApiVersionsRequest::default(), 3)
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate is refused");
    // Counted as a failed authentication.
    let metrics = || broker.broker.metrics.render(&broker.broker);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !metrics().contains("runnel_auth_failures_total 1\n") {
        assert!(std::time::Instant::now() < deadline, "{}", metrics());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let mut ok = connector(&pki, true).connect(name, tcp).await.unwrap();
    let v: ApiVersionsResponse = call(&mut ok, &ApiVersionsRequest::default(), 3)
        .await
        .unwrap();
    assert_eq!(v.error_code, 0);
    // The certified client is counted under its principal.
    let m = metrics();
    assert!(
        m.contains("runnel_authenticated_total{principal=\"User:"),
        "{m}"
    );
    broker.shutdown().await;
}

/// `client_auth = "requested"` (Kafka's `ssl.client.auth=requested`): a client without a
/// certificate is served as anonymous, one with a certificate of the CA is named by it, and one
/// with a certificate the CA did not sign is still refused.
#[tokio::test]
async fn with_client_auth_requested_a_certificate_is_optional_but_checked() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let mut cfg = tls_config(dir.path());
    cfg.listeners.kafka_tls.client_ca = dir.path().join("ca.pem");
    cfg.listeners.kafka_tls.client_auth = edge_config::TlsClientAuth::Requested;
    let broker = common::start_with(cfg).await;
    let tls_addr = broker.kafka_tls_addr.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let metrics = || broker.broker.metrics.render(&broker.broker);

    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let mut bare = connector(&pki, false)
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    let v: ApiVersionsResponse = call(&mut bare, &ApiVersionsRequest::default(), 3)
        .await
        .unwrap();
    assert_eq!(v.error_code, 0);
    assert!(
        !metrics().contains("runnel_authenticated_total{"),
        "{}",
        metrics()
    );

    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let mut named = connector(&pki, true)
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    let v: ApiVersionsResponse = call(&mut named, &ApiVersionsRequest::default(), 3)
        .await
        .unwrap();
    assert_eq!(v.error_code, 0);
    assert!(
        metrics()
            .contains("runnel_authenticated_total{principal=\"User:rcgen self signed cert\"} 1"),
        "{}",
        metrics()
    );

    // Signed by no trusted CA: refused, even though a certificate is only requested.
    let key = KeyPair::try_from(pki.client_key_der.as_slice()).unwrap();
    let intruder = CertificateParams::new(vec!["intruder".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let refused = match connector_with(&pki, Some(vec![intruder.der().clone()]))
        .connect(name, tcp)
        .await
    {
        Err(_) => true,
        Ok(mut s) => call(&mut s, &ApiVersionsRequest::default(), 3)
            .await
            .is_err(),
    };
    assert!(refused, "a certificate of another CA is refused");
    broker.shutdown().await;
}

#[tokio::test]
async fn sasl_over_tls_names_the_client_even_with_a_certificate() {
    use kafka_protocol::messages::{
        SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
        SaslHandshakeResponse,
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    std::fs::write(dir.path().join("users"), "alice a11ce-s3cret\n").unwrap();
    let mut cfg = tls_config(dir.path());
    cfg.listeners.kafka_tls.client_ca = dir.path().join("ca.pem");
    cfg.listeners.kafka_tls.sasl_plain_file = dir.path().join("users");
    let broker = common::start_with(cfg).await;
    let tls_addr = broker.kafka_tls_addr.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();

    // A certificate alone is not enough: the first request that is not SASL closes it.
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let mut s = connector(&pki, true)
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    let md: std::io::Result<MetadataResponse> = call(&mut s, &MetadataRequest::default(), 9).await;
    assert!(md.is_err(), "no answer before SASL");

    // Certificate and SASL: the SASL user is the principal.
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let mut s = connector(&pki, true).connect(name, tcp).await.unwrap();
    let hs: SaslHandshakeResponse = call(
        &mut s,
        &SaslHandshakeRequest::default()
            .with_mechanism(kafka_protocol::protocol::StrBytes::from_static_str("PLAIN")),
        1,
    )
    .await
    .unwrap();
    assert_eq!(hs.error_code, 0);
    let auth: SaslAuthenticateResponse = call(
        &mut s,
        &SaslAuthenticateRequest::default()
            .with_auth_bytes(bytes::Bytes::from_static(b"\0alice\0a11ce-s3cret")),
        2,
    )
    .await
    .unwrap();
    assert_eq!(auth.error_code, 0, "{:?}", auth.error_message);
    let md: MetadataResponse = call(&mut s, &MetadataRequest::default(), 9).await.unwrap();
    assert_eq!(md.brokers.len(), 1);
    let metrics = broker.broker.metrics.render(&broker.broker);
    assert!(
        metrics.contains("runnel_authenticated_total{principal=\"User:alice\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("User:sensor-7"), "{metrics}");
    broker.shutdown().await;
}

#[tokio::test]
async fn with_client_principal_dn_a_certificate_names_its_client_as_kafka_does() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let mut cfg = tls_config(dir.path());
    cfg.listeners.kafka_tls.client_ca = dir.path().join("ca.pem");
    cfg.listeners.kafka_tls.client_principal = edge_config::CertPrincipal::Dn;
    let broker = common::start_with(cfg).await;
    let tcp = tokio::net::TcpStream::connect(broker.kafka_tls_addr.unwrap())
        .await
        .unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut ok = connector(&pki, true).connect(name, tcp).await.unwrap();
    let v: ApiVersionsResponse = call(&mut ok, &ApiVersionsRequest::default(), 3)
        .await
        .unwrap();
    assert_eq!(v.error_code, 0);
    // rcgen's client certificate has the subject CN=rcgen self signed cert.
    let m = broker.broker.metrics.render(&broker.broker);
    assert!(
        m.contains("runnel_authenticated_total{principal=\"User:CN=rcgen self signed cert\"} 1"),
        "{m}"
    );
    broker.shutdown().await;
}

/// `client_principal_rules` (Kafka's `ssl.principal.mapping.rules`): the first rule matching
/// the whole DN names the client; with no rule matching, the connection is refused.
#[tokio::test]
async fn principal_mapping_rules_name_the_client_as_kafkas_do() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let name = ServerName::try_from("127.0.0.1").unwrap();
    for (rules, expect) in [
        (
            vec![
                r"RULE:^CN=admin$/root/",
                r"RULE:^CN=rcgen (.*)$/dev-$1/U",
                "DEFAULT",
            ],
            Some("User:DEV-SELF SIGNED CERT"),
        ),
        (vec![r"RULE:^CN=admin$/root/"], None),
    ] {
        let mut cfg = tls_config(dir.path());
        cfg.listeners.kafka_tls.client_ca = dir.path().join("ca.pem");
        cfg.listeners.kafka_tls.client_principal_rules =
            rules.iter().map(|r| r.to_string()).collect();
        let broker = common::start_with(cfg).await;
        let tcp = tokio::net::TcpStream::connect(broker.kafka_tls_addr.unwrap())
            .await
            .unwrap();
        let mut s = connector(&pki, true)
            .connect(name.clone(), tcp)
            .await
            .unwrap();
        let answered = call(&mut s, &ApiVersionsRequest::default(), 3).await;
        let m = broker.broker.metrics.render(&broker.broker);
        match expect {
            Some(principal) => {
                assert_eq!(answered.unwrap().error_code, 0);
                let line = format!("runnel_authenticated_total{{principal=\"{principal}\"}} 1");
                assert!(m.contains(&line), "{m}");
            }
            None => {
                assert!(answered.is_err(), "no rule matches: refused");
                assert!(m.contains("runnel_auth_failures_total 1\n"), "{m}");
            }
        }
        broker.shutdown().await;
    }
    // A rule that does not parse stops the start with the key and the rule named.
    let mut cfg = tls_config(dir.path());
    cfg.listeners.kafka_tls.client_ca = dir.path().join("ca.pem");
    cfg.listeners.kafka_tls.client_principal_rules = vec!["RULE:^CN=(.*$/$1/".to_string()];
    let err = format!("{:#}", runnel::start_broker(cfg).await.err().unwrap());
    assert!(
        err.contains("listeners.kafka_tls.client_principal_rules: rule \"RULE:^CN=(.*$/$1/\""),
        "{err}"
    );
}

/// A certificate from the trusted CA whose subject holds two CNs names no one client: the
/// connection is closed and counted as a failed authentication (one reading of it took the
/// first CN, which could be a super user's), while a certificate of one CN is served.
#[tokio::test]
async fn a_certificate_of_two_common_names_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let mut cfg = tls_config(dir.path());
    cfg.listeners.kafka_tls.client_ca = dir.path().join("ca.pem");
    let broker = common::start_with(cfg).await;
    let addr = broker.kafka_tls_addr.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut two = connector_with(&pki, Some(pki.two_cn_chain.clone()))
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    let refused = call(&mut two, &ApiVersionsRequest::default(), 3).await;
    assert!(refused.is_err(), "served: {refused:?}");
    let m = broker.broker.metrics.render(&broker.broker);
    assert!(m.contains("runnel_auth_failures_total 1"), "{m}");
    assert!(!m.contains("User:admin") && !m.contains("User:eve"), "{m}");

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut one = connector(&pki, true).connect(name, tcp).await.unwrap();
    let v: ApiVersionsResponse = call(&mut one, &ApiVersionsRequest::default(), 3)
        .await
        .unwrap();
    assert_eq!(v.error_code, 0);
    broker.shutdown().await;
}
