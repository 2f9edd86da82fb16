//! Shared test harness: a real broker on ephemeral ports in a temp dir, real Kafka clients
//! (rdkafka), and a raw protocol client for byte-level checks.
#![allow(dead_code)]

pub mod wasm;

use std::path::Path;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use rdkafka::config::ClientConfig;
use runnel::{BrokerHandle, Config, start_broker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The whole HTTP/1.1 response (status line, headers, body) to a GET of `path` on `addr`: for
/// the admin listener's `/metrics` and endpoints.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: runnel\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A config for tests: data in `dir`, Kafka on 127.0.0.1:0, nothing else listening.
pub fn test_config(dir: &Path) -> Config {
    let mut cfg = Config::default();
    cfg.broker.data_dir = dir.to_path_buf();
    cfg.listeners.kafka.address = "127.0.0.1:0".parse().unwrap();
    cfg.listeners.quic.enabled = false;
    cfg.listeners.admin.enabled = false;
    cfg.groups.min_session_timeout = Duration::from_millis(500);
    // A plugin call's limit is wall time: on a loaded machine a healthy call may be
    // descheduled past the default 100 ms and count as a fault. Tests of timeouts set their own.
    cfg.plugins.call_timeout = Duration::from_secs(5);
    cfg
}

pub async fn start(dir: &Path) -> BrokerHandle {
    start_with(test_config(dir)).await
}

pub async fn start_with(cfg: Config) -> BrokerHandle {
    init_logs();
    start_broker(cfg).await.expect("broker starts")
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A loopback TCP port free now, for a listener whose address must be known before it starts
/// (a cluster's brokers name each other's, a restarted broker keeps its own). Taken below the
/// kernel's ephemeral range (32768 and up by default), so that no client connection of a test
/// running meanwhile takes it as its own port before the broker binds it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// [`test_config`] with data in `dir/data` and SASL (PLAIN and SCRAM) on the Kafka listener
/// for the `<user> <secret>` lines of `users` (written to `dir/users`), and ACLs on with
/// `User:admin` a super user.
pub fn secured_config(dir: &Path, users: &str) -> Config {
    let file = dir.join("users");
    std::fs::write(&file, users).unwrap();
    let mut cfg = test_config(&dir.join("data"));
    cfg.listeners.kafka.sasl_plain_file = file;
    cfg.acls.enabled = true;
    cfg.acls.super_users = vec!["User:admin".into()];
    cfg
}

/// A librdkafka client config pointed at `bootstrap`, with test-friendly timeouts.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("message.timeout.ms", "20000")
        .set("socket.timeout.ms", "10000");
    c
}

/// [`client_config`] logging in over SASL_PLAINTEXT with `mechanism` as `user` with `secret`.
pub fn sasl_client_config(
    mechanism: &str,
    bootstrap: &str,
    user: &str,
    secret: &str,
) -> ClientConfig {
    let mut c = client_config(bootstrap);
    c.set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", mechanism)
        .set("sasl.username", user)
        .set("sasl.password", secret);
    c
}

/// A raw connection that sends as a chosen client id and times each answer (for quotas, which
/// count per client id, and the mutes they put on a connection).
pub struct NamedClient {
    pub raw: RawClient,
    pub id: &'static str,
    correlation: i32,
}

impl NamedClient {
    pub async fn connect(addr: &str, id: &'static str) -> NamedClient {
        NamedClient {
            raw: RawClient::connect(addr).await,
            id,
            correlation: 0,
        }
    }

    /// Logged in with SASL PLAIN as `plain` (`NUL user NUL secret`).
    pub async fn logged_in(addr: &str, id: &'static str, plain: &'static [u8]) -> NamedClient {
        NamedClient {
            raw: RawClient::logged_in(addr, plain).await,
            id,
            correlation: 10,
        }
    }

    /// Sends `req` and returns its response and how long the answer took.
    pub async fn call<R: Request>(&mut self, req: &R, version: i16) -> (R::Response, Duration) {
        self.correlation += 1;
        let frame = request_frame(req, version, self.correlation, self.id);
        let sent = std::time::Instant::now();
        self.raw.send_raw(&frame).await;
        let answer = self.raw.read_frame().await.expect("a response");
        let took = sent.elapsed();
        let response = decode_response::<R>(answer, version, self.correlation);
        (response, took)
    }

    /// Creates `topic` with one partition.
    pub async fn create(&mut self, topic: &str) {
        use kafka_protocol::messages::create_topics_request::CreatableTopic;
        use kafka_protocol::messages::{CreateTopicsRequest, TopicName};
        let req = CreateTopicsRequest::default().with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ]);
        let (r, _) = self.call(&req, 5).await;
        assert_eq!(r.topics[0].error_code, 0);
    }
}

/// A raw Kafka protocol connection for byte-level tests.
pub struct RawClient {
    pub stream: TcpStream,
    correlation: i32,
}

impl RawClient {
    pub async fn connect(addr: &str) -> RawClient {
        RawClient {
            stream: TcpStream::connect(addr).await.expect("connect"),
            correlation: 0,
        }
    }

    /// Creates topic `name` with one partition (CreateTopics v5), which must succeed.
    pub async fn create_topic(&mut self, name: &str) {
        use kafka_protocol::messages::create_topics_request::CreatableTopic;
        let req = kafka_protocol::messages::CreateTopicsRequest::default().with_topics(vec![
            CreatableTopic::default()
                .with_name(kafka_protocol::messages::TopicName(StrBytes::from_string(
                    name.to_string(),
                )))
                .with_num_partitions(1)
                .with_replication_factor(-1),
        ]);
        let created = self.call(&req, 5).await;
        assert_eq!(created.topics[0].error_code, 0, "creating {name}");
    }

    /// Deletes topic `name` (DeleteTopics v5), which must succeed.
    pub async fn delete_topic(&mut self, name: &str) {
        let req = kafka_protocol::messages::DeleteTopicsRequest::default()
            .with_topic_names(vec![kafka_protocol::messages::TopicName(
                StrBytes::from_string(name.to_string()),
            )])
            .with_timeout_ms(5000);
        let deleted = self.call(&req, 5).await;
        assert_eq!(deleted.responses[0].error_code, 0, "deleting {name}");
    }

    /// A client on a connection made elsewhere (for socket options).
    pub fn from_stream(stream: TcpStream) -> RawClient {
        RawClient {
            stream,
            correlation: 100,
        }
    }

    /// Sends `req` at `version` and decodes the response.
    pub async fn call<R: Request>(&mut self, req: &R, version: i16) -> R::Response {
        self.correlation += 1;
        let frame = request_frame(req, version, self.correlation, "raw-test");
        self.send_raw(&frame).await;
        let frame = self.read_frame().await.expect("a response frame");
        decode_response::<R>(frame, version, self.correlation)
    }

    /// A connection to `addr` logged in with SASL PLAIN as `plain` (`NUL user NUL secret`).
    pub async fn logged_in(addr: &str, plain: &'static [u8]) -> RawClient {
        let mut raw = RawClient::connect(addr).await;
        let auth = raw.login_plain(plain).await;
        assert_eq!(auth.error_code, 0, "{:?}", auth.error_message);
        raw
    }

    /// SaslHandshake (PLAIN) and SaslAuthenticate with `plain` (`authzid NUL user NUL secret`).
    pub async fn login_plain(
        &mut self,
        plain: &'static [u8],
    ) -> kafka_protocol::messages::SaslAuthenticateResponse {
        use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
        let hs = self
            .call(
                &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
                1,
            )
            .await;
        assert_eq!(hs.error_code, 0);
        self.call(
            &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(plain)),
            2,
        )
        .await
    }

    pub async fn send_frame(&mut self, body: &[u8]) {
        let mut buf = BytesMut::with_capacity(body.len() + 4);
        buf.put_i32(body.len() as i32);
        buf.put_slice(body);
        self.stream.write_all(&buf).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next response frame, or None when the broker closed the connection.
    pub async fn read_frame(&mut self) -> Option<Bytes> {
        let read = async {
            let mut len = [0u8; 4];
            self.stream.read_exact(&mut len).await.ok()?;
            let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
            self.stream.read_exact(&mut body).await.ok()?;
            Some(Bytes::from(body))
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("broker answers or closes")
    }

    /// True once the broker has closed this connection.
    pub async fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// A whole request frame (size prefix, header, body) for `req` at `version`.
pub fn request_frame<R: Request>(
    req: &R,
    version: i16,
    correlation_id: i32,
    client_id: &'static str,
) -> Bytes {
    let api = ApiKey::try_from(R::KEY).unwrap();
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(client_id)))
        .encode(&mut buf, api.request_header_version(version))
        .unwrap();
    req.encode(&mut buf, version).unwrap();
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    buf.freeze()
}

/// Decodes a response frame body (size prefix already removed) of `R` at `version`, checking
/// its correlation id.
pub fn decode_response<R: Request>(
    mut frame: Bytes,
    version: i16,
    correlation_id: i32,
) -> R::Response {
    let api = ApiKey::try_from(R::KEY).unwrap();
    let rh = ResponseHeader::decode(&mut frame, api.response_header_version(version)).unwrap();
    assert_eq!(rh.correlation_id, correlation_id);
    R::Response::decode(&mut frame, version).unwrap()
}

/// Reads a response header's correlation id off a raw frame.
pub fn correlation_of(frame: &mut Bytes) -> i32 {
    frame.get_i32()
}

/// A Produce request of `records` for one partition of `topic`, with `acks` and a 5 s timeout.
pub fn produce_request(
    topic: &str,
    partition: i32,
    acks: i16,
    records: Bytes,
) -> kafka_protocol::messages::ProduceRequest {
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    kafka_protocol::messages::ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(records)),
                ]),
        ])
}

/// One plain record (no producer id) for hand-built batches.
pub fn record(
    offset: i64,
    key: Option<&[u8]>,
    value: &[u8],
    timestamp: i64,
) -> kafka_protocol::records::Record {
    kafka_protocol::records::Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: kafka_protocol::records::TimestampType::Creation,
        offset,
        // The encoder keeps records in one batch only while sequences advance with offsets.
        sequence: offset as i32,
        timestamp,
        key: key.map(Bytes::copy_from_slice),
        value: Some(Bytes::copy_from_slice(value)),
        headers: Default::default(),
    }
}

/// Encodes `records` as one record batch v2.
pub fn encode_batch(
    records: &[kafka_protocol::records::Record],
    compression: kafka_protocol::records::Compression,
) -> Bytes {
    let mut buf = BytesMut::new();
    kafka_protocol::records::RecordBatchEncoder::encode(
        &mut buf,
        records,
        &kafka_protocol::records::RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.freeze()
}

/// A librdkafka consumer assigned to partition 0 of `topic` from the earliest offset, committing
/// nothing.
pub fn reader(bootstrap: &str, topic: &str) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::Consumer;
    let consumer: rdkafka::consumer::BaseConsumer = client_config(bootstrap)
        .set("group.id", "assign-only")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    consumer
}

/// `batch` with its records replaced by `payload`, its codec set to `codec` and its length and
/// CRC made right again: a batch whose framing holds and whose records do not.
pub fn with_records(batch: &[u8], codec: u8, payload: &[u8]) -> Bytes {
    let mut b = batch[..61].to_vec();
    b.extend_from_slice(payload);
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    b[22] = (b[22] & !7) | codec;
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(b)
}

/// `data` gzipped.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The bytes of one record (key `k`, value `value`, no headers) as they follow a batch header.
pub fn one_record(value: &[u8]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, v: i64) {
        let mut zz = ((v << 1) ^ (v >> 63)) as u64;
        while zz >= 0x80 {
            out.push((zz as u8) | 0x80);
            zz >>= 7;
        }
        out.push(zz as u8);
    }
    // attributes, timestampDelta 0, offsetDelta 0, key "k"
    let mut body = vec![0u8, 0, 0, 2, b'k'];
    varint(&mut body, value.len() as i64);
    body.extend_from_slice(value);
    body.push(0); // no headers
    let mut out = Vec::new();
    varint(&mut out, body.len() as i64);
    out.extend_from_slice(&body);
    out
}

/// A CA, a certificate for 127.0.0.1 that brokers serve on their TLS listeners, and a
/// client certificate with the common name `cn`, written as PEM files to `dir`: ca.pem,
/// server.pem, server.key, `<cn>.pem`, `<cn>.key`.
pub fn make_pki(dir: &Path, cn: &str) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Subjects of their own: OpenSSL (librdkafka) takes a certificate whose subject is its
    // issuer's for self-signed, and rcgen gives every certificate the same one by default.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "runnel test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut server_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    server_params
        .distinguished_name
        .push(DnType::CommonName, "runnel test broker");
    let server = server_params.signed_by(&server_key, &ca).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, cn);
    let client = client_params.signed_by(&client_key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(dir.join(format!("{cn}.pem")), client.pem()).unwrap();
    std::fs::write(dir.join(format!("{cn}.key")), client_key.serialize_pem()).unwrap();
}

// ---- SASL OAUTHBEARER ------------------------------------------------------------------------

/// An identity provider for tests: an ES256 key pair whose public half is a JWKS file.
pub struct TestIdp {
    key: ring::signature::EcdsaKeyPair,
    kid: &'static str,
}

impl TestIdp {
    pub fn new(kid: &'static str) -> TestIdp {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        TestIdp { key, kid }
    }

    pub fn jwks(&self) -> String {
        use base64::Engine as _;
        use ring::signature::KeyPair as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let point = self.key.public_key().as_ref();
        format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","alg":"ES256","use":"sig","kid":"{}","x":"{}","y":"{}"}}]}}"#,
            self.kid,
            b64.encode(&point[1..33]),
            b64.encode(&point[33..65])
        )
    }

    /// A token for `sub`, issued by the test issuer for `aud`, expiring in `ttl_s` seconds.
    pub fn token(&self, sub: &str, aud: &str, ttl_s: i64) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let header = b64.encode(format!(
            r#"{{"alg":"ES256","typ":"JWT","kid":"{}"}}"#,
            self.kid
        ));
        let claims = b64.encode(format!(
            r#"{{"sub":"{sub}","iss":"https://idp.test","aud":"{aud}","iat":{now},"exp":{}}}"#,
            now + ttl_s
        ));
        let signed = format!("{header}.{claims}");
        let sig = self
            .key
            .sign(&ring::rand::SystemRandom::new(), signed.as_bytes())
            .unwrap();
        format!("{signed}.{}", b64.encode(sig.as_ref()))
    }
}

/// An identity provider's token endpoint (OAuth client credentials) on loopback: answers every
/// request with a fresh token of `idp` for `sub` (issuer `https://idp.test`, audience
/// `runnel`). Returns its URL; it serves until the test's runtime ends.
pub async fn token_endpoint(idp: std::sync::Arc<TestIdp>, sub: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let idp = idp.clone();
            tokio::spawn(async move {
                // The request: headers, then as many body bytes as Content-Length says.
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if got.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let body = format!(
                    r#"{{"access_token":"{}","token_type":"bearer","expires_in":600}}"#,
                    idp.token(sub, "runnel", 600)
                );
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    url
}

/// A broker process a test started (`runnel serve`), killed when dropped: a test that fails
/// midway leaves no broker running behind it. Derefs to its [`std::process::Child`].
pub struct BrokerProcess(Option<std::process::Child>);

impl BrokerProcess {
    pub fn new(child: std::process::Child) -> BrokerProcess {
        BrokerProcess(Some(child))
    }

    /// Stops it with SIGTERM, as a supervisor would, and returns its output once it has exited.
    pub fn stop(mut self) -> std::process::Output {
        let child = self.0.take().expect("running");
        let pid = child.id().to_string();
        let sent = std::process::Command::new("kill")
            .arg(pid)
            .status()
            .unwrap();
        assert!(sent.success(), "SIGTERM sent");
        child.wait_with_output().unwrap()
    }

    /// Kills it with SIGKILL and returns its output.
    pub fn kill_with_output(mut self) -> std::process::Output {
        let mut child = self.0.take().expect("running");
        child.kill().unwrap();
        child.wait_with_output().unwrap()
    }
}

impl std::ops::Deref for BrokerProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        self.0.as_ref().expect("running")
    }
}

impl std::ops::DerefMut for BrokerProcess {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("running")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
