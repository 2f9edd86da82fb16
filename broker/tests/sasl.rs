//! SASL PLAIN and SCRAM on the Kafka listeners (`sasl_plain_file`): librdkafka clients with the
//! right credentials produce and consume as `User:<user>`; wrong or missing credentials get an
//! authentication error, the connection is closed and nothing is written.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::{
    DescribeUserScramCredentialsRequest, MetadataRequest, SaslAuthenticateRequest,
    SaslHandshakeRequest,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

/// Whether the broker closes `raw` instead of answering a Metadata request sent on it.
async fn unanswered(raw: &mut common::RawClient) -> bool {
    let metadata = common::request_frame(&MetadataRequest::default(), 9, 99, "raw");
    raw.send_raw(&metadata).await;
    raw.read_frame().await.is_none()
}

/// How long a delivery that must succeed may take.
const DELIVERED_WITHIN: Duration = Duration::from_secs(20);
/// How long a producer that must be refused gets to fail.
const REFUSED_WITHIN: Duration = Duration::from_secs(5);

const USERS: &str = "# users of the plaintext listener\nalice a11ce-s3cret\nbob b0b-s3cret\n";

/// A librdkafka config for `bootstrap` logging in as `user` with `secret` over SASL PLAIN.
fn sasl_client(bootstrap: &str, user: &str, secret: &str) -> ClientConfig {
    sasl_client_with("PLAIN", bootstrap, user, secret)
}

/// The same with the SASL `mechanism` given.
fn sasl_client_with(mechanism: &str, bootstrap: &str, user: &str, secret: &str) -> ClientConfig {
    common::sasl_client_config(mechanism, bootstrap, user, secret)
}

/// Produces `n` readings with a producer on `c`, each delivered within `timeout` (a fresh
/// producer's first delivery includes connecting and the SASL exchange).
async fn produce(c: &ClientConfig, topic: &str, n: usize, timeout: Duration) -> Result<(), String> {
    let producer: FutureProducer = c
        .clone()
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .create()
        .unwrap();
    for i in 0..n {
        let value = format!("reading-{i}");
        producer
            .send(
                FutureRecord::<(), _>::to(topic).payload(&value),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e.to_string())?;
    }
    producer.flush(timeout).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_log_in_with_sasl_plain_and_the_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, USERS).unwrap();
    let mut cfg = common::test_config(&dir.path().join("data"));
    cfg.listeners.kafka.sasl_plain_file = users.clone();
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();

    // alice produces; bob reads it back.
    produce(
        &sasl_client(&bootstrap, "alice", "a11ce-s3cret"),
        "secure",
        10,
        DELIVERED_WITHIN,
    )
    .await
    .unwrap();
    let bob = sasl_client(&bootstrap, "bob", "b0b-s3cret");
    let values = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = bob
            .clone()
            .set("group.id", "bob")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["secure"]).unwrap();
        let mut values = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while values.len() < 10 && std::time::Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                values.push(m.unwrap().payload().unwrap().to_vec());
            }
        }
        values
    })
    .await
    .unwrap();
    let want: Vec<Vec<u8>> = (0..10)
        .map(|i| format!("reading-{i}").into_bytes())
        .collect();
    assert_eq!(values, want);

    // A wrong secret, another user's secret, no SASL at all: refused, nothing written.
    for c in [
        sasl_client(&bootstrap, "alice", "guess"),
        sasl_client(&bootstrap, "alice", "b0b-s3cret"),
        common::client_config(&bootstrap),
    ] {
        // Never delivered: the timeout only bounds how long the failure takes to show.
        let err = produce(&c, "secure", 1, REFUSED_WITHIN).await.unwrap_err();
        assert!(!err.is_empty());
    }
    let metrics = broker.broker.metrics.render(&broker.broker);
    for p in ["User:alice", "User:bob"] {
        assert!(
            metrics.contains(&format!("runnel_authenticated_total{{principal=\"{p}\"}}")),
            "{metrics}"
        );
    }
    assert!(broker.broker.metrics.auth_failures.load(Ordering::Relaxed) >= 2);
    assert_eq!(broker.broker.metrics.records_in.load(Ordering::Relaxed), 10);

    // The file changes while the broker runs: carol is added and can log in at once.
    std::fs::write(&users, format!("{USERS}carol c4rol-s3cret-new\n")).unwrap();
    produce(
        &sasl_client(&bootstrap, "carol", "c4rol-s3cret-new"),
        "secure",
        1,
        DELIVERED_WITHIN,
    )
    .await
    .unwrap();
    assert_eq!(broker.broker.metrics.records_in.load(Ordering::Relaxed), 11);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_log_in_with_scram_sha_256_and_512_and_wrong_passwords_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    // bob is changing his password: both work until the old line goes.
    std::fs::write(&users, format!("{USERS}bob b0b-n3w\n")).unwrap();
    let mut cfg = common::test_config(&dir.path().join("data"));
    cfg.listeners.kafka.sasl_plain_file = users;
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();
    let records = || broker.broker.metrics.records_in.load(Ordering::Relaxed);

    for (mechanism, user, secret) in [
        ("SCRAM-SHA-256", "alice", "a11ce-s3cret"),
        ("SCRAM-SHA-512", "bob", "b0b-s3cret"),
        ("SCRAM-SHA-512", "bob", "b0b-n3w"),
    ] {
        let before = records();
        let c = sasl_client_with(mechanism, &bootstrap, user, secret);
        produce(&c, "scram", 3, DELIVERED_WITHIN)
            .await
            .unwrap_or_else(|e| panic!("{mechanism} as {user}: {e}"));
        assert_eq!(records(), before + 3, "{mechanism} as {user}");
    }
    let metrics = broker.broker.metrics.render(&broker.broker);
    for p in ["User:alice", "User:bob"] {
        assert!(
            metrics.contains(&format!("runnel_authenticated_total{{principal=\"{p}\"}}")),
            "{metrics}"
        );
    }

    // A wrong password, another user's password, a user who does not exist: refused, and
    // nothing is written.
    let failures = broker.broker.metrics.auth_failures.load(Ordering::Relaxed);
    let before = records();
    for (mechanism, user, secret) in [
        ("SCRAM-SHA-256", "alice", "guess"),
        ("SCRAM-SHA-512", "alice", "b0b-s3cret"),
        ("SCRAM-SHA-256", "mallory", "a11ce-s3cret"),
    ] {
        let c = sasl_client_with(mechanism, &bootstrap, user, secret);
        let err = produce(&c, "scram", 1, REFUSED_WITHIN).await.unwrap_err();
        assert!(!err.is_empty(), "{mechanism} as {user}");
    }
    assert_eq!(records(), before);
    assert!(broker.broker.metrics.auth_failures.load(Ordering::Relaxed) >= failures + 3);

    // The broker says why over the wire, and which mechanisms it has.
    let mut raw = common::RawClient::connect(&bootstrap).await;
    let hs = raw
        .call(
            &SaslHandshakeRequest::default()
                .with_mechanism(StrBytes::from_static_str("SCRAM-SHA-256")),
            1,
        )
        .await;
    assert_eq!(hs.error_code, 0);
    let offered: Vec<&str> = hs.mechanisms.iter().map(|m| m.as_str()).collect();
    assert_eq!(offered, ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]);
    let first = raw
        .call(
            &SaslAuthenticateRequest::default()
                .with_auth_bytes(Bytes::from_static(b"n,,n=alice,r=0123456789abcdef")),
            2,
        )
        .await;
    assert_eq!(first.error_code, 0);
    let challenge = String::from_utf8(first.auth_bytes.to_vec()).unwrap();
    assert!(
        challenge.starts_with("r=0123456789abcdef") && challenge.ends_with(",i=4096"),
        "{challenge}"
    );
    let nonce = challenge.split(',').next().unwrap();
    let last = format!("c=biws,{nonce},p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let refused = raw
        .call(
            &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(last)),
            2,
        )
        .await;
    assert_eq!(
        refused.error_code,
        kafka_protocol::error::ResponseError::SaslAuthenticationFailed.code()
    );
    let message = refused.error_message.unwrap();
    assert!(
        message.contains("wrong password for user \"alice\""),
        "{message}"
    );
    assert!(raw.is_closed().await, "closed after the failed login");

    // Starting again in the middle of an exchange (to try another user name) ends the
    // connection, as in Kafka.
    let mut raw = common::RawClient::connect(&bootstrap).await;
    let scram =
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("SCRAM-SHA-512"));
    assert_eq!(raw.call(&scram, 1).await.error_code, 0);
    let first = raw
        .call(
            &SaslAuthenticateRequest::default()
                .with_auth_bytes(Bytes::from_static(b"n,,n=alice,r=abc")),
            2,
        )
        .await;
    assert_eq!(first.error_code, 0);
    let again = raw.call(&scram, 1).await;
    assert_eq!(
        again.error_code,
        kafka_protocol::error::ResponseError::IllegalSaslState.code()
    );
    assert!(
        raw.is_closed().await,
        "closed after a handshake mid-exchange"
    );

    // A mechanism not served: the list, and the connection closed, as Kafka does.
    let mut raw = common::RawClient::connect(&bootstrap).await;
    let gssapi = raw
        .call(
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("GSSAPI")),
            1,
        )
        .await;
    assert_eq!(
        gssapi.error_code,
        kafka_protocol::error::ResponseError::UnsupportedSaslMechanism.code()
    );
    assert_eq!(gssapi.mechanisms.len(), 3);
    assert!(
        raw.is_closed().await,
        "closed after an unsupported mechanism"
    );

    // DescribeUserScramCredentials lists the users of the file, each with both mechanisms.
    let mut raw = common::RawClient::connect(&bootstrap).await;
    assert_eq!(raw.login_plain(b"\0bob\0b0b-n3w").await.error_code, 0);
    let all = raw
        .call(&DescribeUserScramCredentialsRequest::default(), 0)
        .await;
    let described: Vec<(String, Vec<(i8, i32)>)> = all
        .results
        .iter()
        .map(|r| {
            let infos = r
                .credential_infos
                .iter()
                .map(|i| (i.mechanism, i.iterations))
                .collect();
            (r.user.to_string(), infos)
        })
        .collect();
    let both = vec![(1, 4096), (2, 4096)];
    assert_eq!(
        described,
        [
            ("alice".to_string(), both.clone()),
            ("bob".to_string(), both)
        ]
    );
    let name = |n: &'static str| UserName::default().with_name(StrBytes::from_static_str(n));
    let some = raw
        .call(
            &DescribeUserScramCredentialsRequest::default().with_users(Some(vec![
                name("alice"),
                name("nobody"),
                name("bob"),
                name("bob"),
            ])),
            0,
        )
        .await;
    let codes: Vec<(String, i16)> = some
        .results
        .iter()
        .map(|r| (r.user.to_string(), r.error_code))
        .collect();
    assert_eq!(
        codes,
        [
            ("alice".to_string(), 0),
            ("nobody".to_string(), 91), // RESOURCE_NOT_FOUND
            ("bob".to_string(), 92),    // DUPLICATE_RESOURCE
        ]
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_login_is_answered_with_the_reason_and_the_connection_closed() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, USERS).unwrap();
    let mut cfg = common::test_config(&dir.path().join("data"));
    cfg.listeners.kafka.sasl_plain_file = users;
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();

    // Anything but authentication first closes the connection unanswered.
    let mut raw = common::RawClient::connect(&bootstrap).await;
    assert!(unanswered(&mut raw).await, "no answer before SASL");

    // Handshake v0 (raw SASL frames after it) is not served; it is said so.
    let mut raw = common::RawClient::connect(&bootstrap).await;
    let hs = raw
        .call(
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
            0,
        )
        .await;
    assert_eq!(hs.error_code, 35, "UNSUPPORTED_VERSION");

    // SaslAuthenticate before a handshake, even with the right secret: ILLEGAL_SASL_STATE with
    // why, and the connection ends (Kafka closes it).
    let mut raw = common::RawClient::connect(&bootstrap).await;
    let auth = raw
        .call(
            &SaslAuthenticateRequest::default()
                .with_auth_bytes(Bytes::from_static(b"\0bob\0b0b-s3cret")),
            2,
        )
        .await;
    assert_eq!(auth.error_code, 34, "ILLEGAL_SASL_STATE");
    let reason = auth.error_message.unwrap().to_string();
    assert!(reason.contains("SaslHandshake"), "{reason}");
    assert!(
        raw.is_closed().await,
        "closed after SaslAuthenticate without a handshake"
    );

    // A bad secret: SASL_AUTHENTICATION_FAILED with the reason, then the connection ends.
    // It is answered after Kafka's 100 ms pause, which slows guessing.
    let mut raw = common::RawClient::connect(&bootstrap).await;
    let asked = std::time::Instant::now();
    let auth = raw.login_plain(b"\0alice\0guess").await;
    assert!(
        asked.elapsed() >= Duration::from_millis(100),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(auth.error_code, 58, "SASL_AUTHENTICATION_FAILED");
    let reason = auth.error_message.unwrap().to_string();
    assert!(
        reason.contains(r#"unknown user "alice" or wrong password"#),
        "{reason}"
    );
    assert!(raw.is_closed().await, "closed after the failed login");

    // A user name of 100,000 bytes, a newline in it: answered all the same, the name cut and
    // escaped in the reason (the whole of it made the answer too long to encode).
    let mut raw = common::RawClient::connect(&bootstrap).await;
    let mut plain = b"\0forged\nINFO ".to_vec();
    plain.extend(std::iter::repeat_n(b'u', 100_000));
    plain.extend_from_slice(b"\0guess");
    let auth = raw.login_plain(Box::leak(plain.into_boxed_slice())).await;
    assert_eq!(auth.error_code, 58, "SASL_AUTHENTICATION_FAILED");
    let reason = auth.error_message.unwrap().to_string();
    assert!(
        reason.len() < 500 && reason.contains("forged\\nINFO uuu") && reason.contains("more bytes"),
        "{reason}"
    );
    assert!(raw.is_closed().await, "closed after the failed login");

    // The right secret: authenticated, then served.
    let mut raw = common::RawClient::connect(&bootstrap).await;
    let auth = raw.login_plain(b"\0bob\0b0b-s3cret").await;
    assert_eq!(auth.error_code, 0, "{:?}", auth.error_message);
    let md = raw.call(&MetadataRequest::default(), 9).await;
    assert_eq!(md.brokers.len(), 1);
    broker.shutdown().await;
}

/// How many times `principal` logged in, from the broker's metrics.
fn logins(broker: &runnel::BrokerHandle, principal: &str) -> u64 {
    let line = format!("runnel_authenticated_total{{principal=\"{principal}\"}} ");
    let metrics = broker.broker.metrics.render(&broker.broker);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .map_or(0, |n| n.parse().unwrap())
}

/// With `broker.connections_max_reauth`, a login lasts that long (SaslAuthenticate says so),
/// and the client logs in again on its connection (KIP-368): librdkafka does, and produces on
/// without a gap; a connection that does not is closed at its next request; a re-login as
/// another principal, or by a user removed from the users file meanwhile, is refused and the
/// connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_run_out_and_clients_log_in_again_on_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, USERS).unwrap();
    let mut cfg = common::test_config(&dir.path().join("data"));
    cfg.listeners.kafka.sasl_plain_file = users.clone();
    cfg.broker.connections_max_reauth = Duration::from_millis(1500);
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();
    let handshake =
        || SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
    let plain = |m: &'static [u8]| {
        SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(m))
    };

    // The login says how long it lasts; before then it is renewed on the connection, not as
    // someone else.
    let mut raw = common::RawClient::connect(&bootstrap).await;
    let auth = raw.login_plain(b"\0alice\0a11ce-s3cret").await;
    assert_eq!((auth.error_code, auth.session_lifetime_ms), (0, 1500));
    assert_eq!(raw.call(&handshake(), 1).await.error_code, 0);
    let again = raw.call(&plain(b"\0alice\0a11ce-s3cret"), 2).await;
    assert_eq!((again.error_code, again.session_lifetime_ms), (0, 1500));
    assert_eq!(
        raw.call(&MetadataRequest::default(), 9).await.brokers.len(),
        1
    );
    assert_eq!(raw.call(&handshake(), 1).await.error_code, 0);
    let other = raw.call(&plain(b"\0bob\0b0b-s3cret"), 2).await;
    assert_eq!(other.error_code, 58, "SASL_AUTHENTICATION_FAILED");
    let why = other.error_message.unwrap().to_string();
    assert!(why.contains("User:alice"), "{why}");
    assert!(raw.is_closed().await);

    // Between a re-login's handshake and its SaslAuthenticate nothing else is taken.
    let mut raw = common::RawClient::connect(&bootstrap).await;
    assert_eq!(
        raw.login_plain(b"\0alice\0a11ce-s3cret").await.error_code,
        0
    );
    assert_eq!(raw.call(&handshake(), 1).await.error_code, 0);
    assert!(
        unanswered(&mut raw).await,
        "no answer in the middle of a re-login"
    );

    // A login that ran out: anything but logging in again closes the connection unanswered.
    let mut raw = common::RawClient::connect(&bootstrap).await;
    assert_eq!(
        raw.login_plain(b"\0alice\0a11ce-s3cret").await.error_code,
        0
    );
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert!(
        unanswered(&mut raw).await,
        "no answer after the login ran out"
    );

    // librdkafka logs in again by itself: a producer keeps delivering across several
    // lifetimes, every record delivered.
    let before = logins(&broker, "User:alice");
    let c = sasl_client(&bootstrap, "alice", "a11ce-s3cret");
    let producer: FutureProducer = c
        .clone()
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    let started = std::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(5) {
        let value = format!("reading-{sent}");
        producer
            .send(
                FutureRecord::<(), _>::to("renewed").payload(&value),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e.to_string())
            .expect("delivered across re-logins");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let renewed = logins(&broker, "User:alice") - before;
    assert!(renewed >= 3, "{renewed} logins in 5 s at a 1.5 s lifetime");
    let stored = broker
        .broker
        .catalog
        .get("renewed")
        .unwrap()
        .partition(0)
        .unwrap();
    assert_eq!(stored.log().log_end_offset(), sent);

    // A user removed from the users file loses the connections it has at its next re-login.
    let mut raw = common::RawClient::connect(&bootstrap).await;
    assert_eq!(raw.login_plain(b"\0bob\0b0b-s3cret").await.error_code, 0);
    std::fs::write(&users, "alice a11ce-s3cret\n").unwrap();
    assert_eq!(raw.call(&handshake(), 1).await.error_code, 0);
    let revoked = raw.call(&plain(b"\0bob\0b0b-s3cret"), 2).await;
    assert_eq!(revoked.error_code, 58, "SASL_AUTHENTICATION_FAILED");
    assert!(raw.is_closed().await);
    broker.shutdown().await;
}

/// A broker config in `dir` whose plaintext listener takes OAUTHBEARER tokens of the identity
/// provider returned, with the JWKS file it reads.
fn oauthbearer_config(
    dir: &std::path::Path,
) -> (common::TestIdp, std::path::PathBuf, runnel::Config) {
    let idp = common::TestIdp::new("key-1");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, idp.jwks()).unwrap();
    let mut cfg = common::test_config(&dir.join("data"));
    cfg.listeners.kafka.sasl_oauthbearer = true;
    cfg.oauthbearer.jwks_file = jwks.clone();
    (idp, jwks, cfg)
}

/// An OAUTHBEARER login lasts no longer than its token, whatever `connections_max_reauth`
/// allows, and also when it is 0 (as in Kafka); a re-login brings a new token, and a client
/// that keeps using the connection past the token's expiry without one is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauthbearer_login_lasts_no_longer_than_its_token() {
    for max_reauth in [Duration::from_secs(3600), Duration::ZERO] {
        let dir = tempfile::tempdir().unwrap();
        let (idp, _, mut cfg) = oauthbearer_config(dir.path());
        cfg.broker.connections_max_reauth = max_reauth;
        let broker = common::start_with(cfg).await;
        let mut raw = common::RawClient::connect(&broker.bootstrap()).await;
        let mut login = async |token: String| {
            let handshake = SaslHandshakeRequest::default()
                .with_mechanism(StrBytes::from_static_str("OAUTHBEARER"));
            assert_eq!(raw.call(&handshake, 1).await.error_code, 0);
            let message = format!("n,,\x01auth=Bearer {token}\x01\x01");
            let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(message));
            let auth = raw.call(&request, 2).await;
            assert_eq!(auth.error_code, 0, "{:?}", auth.error_message);
            auth.session_lifetime_ms
        };
        let first = login(idp.token("gateway-7", "runnel", 60)).await;
        assert!(
            (55_000..=60_000).contains(&first),
            "{first} ms for a token of 60 s"
        );
        let second = login(idp.token("gateway-7", "runnel", 600)).await;
        assert!(
            (595_000..=600_000).contains(&second),
            "{second} ms for a token of 600 s"
        );
        // A token with a second left: the connection ends when it does.
        let short = login(idp.token("gateway-7", "runnel", 1)).await;
        assert!(short <= 1000, "{short} ms");
        tokio::time::sleep(Duration::from_millis(short as u64 + 200)).await;
        assert!(
            unanswered(&mut raw).await,
            "closed after the token's expiry"
        );
        broker.shutdown().await;
    }
}

/// Until it has logged in, a client may send small requests only (Kafka's
/// `sasl.server.max.receive.size`, 512 KiB), and it must log in within
/// `broker.handshake_timeout`: an unauthenticated client cannot make the broker hold a large
/// request, nor hold a connection slot for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_login_requests_are_small_and_the_login_is_timed() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, USERS).unwrap();
    let mut cfg = common::test_config(&dir.path().join("data"));
    cfg.listeners.kafka.sasl_plain_file = users;
    cfg.broker.handshake_timeout = Duration::from_secs(3);
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();
    let failures = || broker.broker.metrics.auth_failures.load(Ordering::Relaxed);

    // A 1 MiB frame before logging in: closed after its size, unanswered.
    let mut raw = common::RawClient::connect(&bootstrap).await;
    raw.send_raw(&(1i32 << 20).to_be_bytes()).await;
    assert!(raw.is_closed().await, "closed at the size of the frame");
    assert_eq!(failures(), 1);

    // ApiVersions is answered, but a client that does not log in is closed after the timeout.
    let mut raw = common::RawClient::connect(&bootstrap).await;
    let versions = raw
        .call(&kafka_protocol::messages::ApiVersionsRequest::default(), 3)
        .await;
    assert_eq!(versions.error_code, 0);
    let waited = std::time::Instant::now();
    assert!(raw.is_closed().await, "closed for not logging in");
    assert!(waited.elapsed() < Duration::from_secs(8));
    assert_eq!(failures(), 2);

    // A client that logs in stays past the timeout and may send large requests.
    let mut raw = common::RawClient::connect(&bootstrap).await;
    let auth = raw.login_plain(b"\0bob\0b0b-s3cret").await;
    assert_eq!(auth.error_code, 0, "{:?}", auth.error_message);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let big_topic = "t".repeat(200);
    let topics = (0..3000)
        .map(|i| {
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default().with_name(
                Some(kafka_protocol::messages::TopicName(StrBytes::from_string(
                    format!("{big_topic}{i}"),
                ))),
            )
        })
        .collect();
    let md = raw
        .call(
            &MetadataRequest::default()
                .with_topics(Some(topics))
                .with_allow_auto_topic_creation(false),
            9,
        )
        .await;
    assert_eq!(
        md.topics.len(),
        3000,
        "a 600 KB request is served once logged in"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_bad_credentials_file_stops_the_start_naming_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "alice a11ce-s3cret\nbob\n").unwrap();
    let mut cfg = common::test_config(&dir.path().join("data"));
    cfg.listeners.kafka.sasl_plain_file = users;
    let err = runnel::start_broker(cfg).await.err().expect("refused");
    let err = format!("{err:#}");
    assert!(err.contains("listeners.kafka.sasl_plain_file"), "{err}");
    assert!(err.contains("users:2"), "{err}");
}

/// A SCRAM-SHA-256 salted password, as a client computes it for AlterUserScramCredentials.
fn salted_sha256(password: &str, salt: &[u8], iterations: u32) -> Bytes {
    let mut out = vec![0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations).unwrap(),
        salt,
        password.as_bytes(),
        &mut out,
    );
    Bytes::from(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_credentials_altered_over_the_protocol_log_in_and_bad_ones_are_refused() {
    use kafka_protocol::error::ResponseError as E;
    use kafka_protocol::messages::AlterUserScramCredentialsRequest;
    use kafka_protocol::messages::alter_user_scram_credentials_request::{
        ScramCredentialDeletion, ScramCredentialUpsertion,
    };
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, USERS).unwrap();
    let mut cfg = common::test_config(&dir.path().join("data"));
    cfg.listeners.kafka.sasl_plain_file = users;
    // Everyone may do what no ACL names; bob may not alter the cluster; alice may do anything.
    cfg.acls.enabled = true;
    cfg.acls.allow_if_no_acl = true;
    cfg.acls.super_users = vec!["User:alice".into()];
    let broker = common::start_with(cfg).await;
    let deny = runnel::acl::Acl::new((4, "kafka-cluster", 3), "User:bob", "*", 7, 2).unwrap();
    broker.broker.acls.create(&[deny]).unwrap();
    let bootstrap = broker.bootstrap();
    let records = || broker.broker.metrics.records_in.load(Ordering::Relaxed);
    let upsert = |user: &str, mechanism: i8, iterations: i32, password: &str| {
        ScramCredentialUpsertion::default()
            .with_name(StrBytes::from_string(user.into()))
            .with_mechanism(mechanism)
            .with_iterations(iterations)
            .with_salt(Bytes::from_static(b"pepper-and-salt"))
            .with_salted_password(salted_sha256(
                password,
                b"pepper-and-salt",
                iterations as u32,
            ))
    };
    let mut admin = common::RawClient::logged_in(&bootstrap, b"\0alice\0a11ce-s3cret").await;
    let answer = admin
        .call(
            &AlterUserScramCredentialsRequest::default()
                .with_upsertions(vec![
                    // bob's SCRAM-SHA-256 password changes; his file password stays for PLAIN.
                    upsert("bob", 1, 8192, "b0b-n3w"),
                    upsert("", 1, 4096, "x"),
                    upsert("carl", 3, 4096, "x"),
                    upsert("dina", 1, 100, "x"),
                    upsert("erin", 1, 4096, "x"),
                    upsert("erin", 1, 4096, "y"),
                    upsert("fred", 1, 4096, "x"),
                ])
                .with_deletions(vec![
                    ScramCredentialDeletion::default()
                        .with_name(StrBytes::from_static_str("alice"))
                        .with_mechanism(2),
                    // Deleted and made in one request: named twice, whatever else is wrong
                    // (it has no credential to delete), as Kafka checks.
                    ScramCredentialDeletion::default()
                        .with_name(StrBytes::from_static_str("fred"))
                        .with_mechanism(1),
                ]),
            0,
        )
        .await;
    let got: Vec<(String, i16)> = answer
        .results
        .iter()
        .map(|r| (r.user.to_string(), r.error_code))
        .collect();
    assert_eq!(
        got,
        [
            ("alice".to_string(), E::ResourceNotFound.code()),
            ("fred".to_string(), E::DuplicateResource.code()),
            ("bob".to_string(), 0),
            (String::new(), E::UnacceptableCredential.code()),
            ("carl".to_string(), E::UnsupportedSaslMechanism.code()),
            ("dina".to_string(), E::UnacceptableCredential.code()),
            ("erin".to_string(), E::DuplicateResource.code()),
        ]
    );
    // bob logs in with SCRAM-SHA-256 with the new password only; PLAIN and SCRAM-SHA-512 go on
    // with the file's.
    for (mechanism, secret) in [
        ("SCRAM-SHA-256", "b0b-n3w"),
        ("PLAIN", "b0b-s3cret"),
        ("SCRAM-SHA-512", "b0b-s3cret"),
    ] {
        let c = sasl_client_with(mechanism, &bootstrap, "bob", secret);
        produce(&c, "altered", 1, DELIVERED_WITHIN)
            .await
            .unwrap_or_else(|e| panic!("{mechanism} with {secret}: {e}"));
    }
    let before = records();
    let old = sasl_client_with("SCRAM-SHA-256", &bootstrap, "bob", "b0b-s3cret");
    assert!(produce(&old, "altered", 1, REFUSED_WITHIN).await.is_err());
    assert_eq!(records(), before);

    // Only a principal allowed Alter on the cluster may alter credentials.
    let mut bob = common::RawClient::logged_in(&bootstrap, b"\0bob\0b0b-s3cret").await;
    let answer = bob
        .call(
            &AlterUserScramCredentialsRequest::default()
                .with_upsertions(vec![upsert("bob", 1, 4096, "mine")]),
            0,
        )
        .await;
    assert_eq!(
        answer.results[0].error_code,
        E::ClusterAuthorizationFailed.code()
    );
    broker.shutdown().await;
}

// ---- SASL OAUTHBEARER ------------------------------------------------------------------------

/// A librdkafka client context that logs in with `token` (librdkafka asks for it, and again
/// before it expires).
struct BearerContext {
    token: String,
    sub: String,
    /// The outcome of the last delivery.
    delivered: std::sync::Mutex<Option<Result<(), String>>>,
}

impl rdkafka::ClientContext for BearerContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        Ok(rdkafka::client::OAuthToken {
            token: self.token.clone(),
            principal_name: self.sub.clone(),
            lifetime_ms: now_ms + 600_000,
        })
    }
}

impl rdkafka::producer::ProducerContext for BearerContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        *self.delivered.lock().unwrap() =
            Some(result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string()));
    }
}

/// Produces one record with a producer that logs in with `token`: `Ok` once delivered.
fn produce_with_token(bootstrap: &str, token: String, sub: &str) -> Result<(), String> {
    use rdkafka::producer::{BaseProducer, BaseRecord};
    let producer: BaseProducer<BearerContext> = common::client_config(bootstrap)
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", "OAUTHBEARER")
        .set("message.timeout.ms", "5000")
        .create_with_context(BearerContext {
            token,
            sub: sub.to_string(),
            delivered: Default::default(),
        })
        .map_err(|e| e.to_string())?;
    producer
        .send(BaseRecord::<(), _>::to("tokens").payload("reading"))
        .map_err(|(e, _)| e.to_string())?;
    producer
        .flush(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let delivered = producer.context().delivered.lock().unwrap().take();
    delivered.unwrap_or_else(|| Err("no delivery report".to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_log_in_with_oauthbearer_tokens_and_bad_tokens_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (idp, jwks, mut cfg) = oauthbearer_config(dir.path());
    cfg.oauthbearer.expected_issuer = "https://idp.test".into();
    cfg.oauthbearer.expected_audience = vec!["runnel".into()];
    // The principal a token names is the one ACLs judge.
    cfg.acls.enabled = true;
    cfg.acls.super_users = vec!["User:gateway-7".into()];
    let broker = common::start_with(cfg).await;
    let bootstrap = broker.bootstrap();

    let b = bootstrap.clone();
    let token = idp.token("gateway-7", "runnel", 600);
    tokio::task::spawn_blocking(move || produce_with_token(&b, token, "gateway-7"))
        .await
        .unwrap()
        .expect("a good token logs in and produces");
    let end = broker
        .broker
        .catalog
        .get("tokens")
        .unwrap()
        .partition(0)
        .unwrap()
        .log()
        .log_end_offset();
    assert_eq!(end, 1);
    // Another subject logs in, but the ACLs know it as User:intruder, who may not write.
    let b = bootstrap.clone();
    let token = idp.token("intruder", "runnel", 600);
    let err = tokio::task::spawn_blocking(move || produce_with_token(&b, token, "intruder"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.contains("uthoriz"), "{err}");

    // Refused at login, each with its reason: expired, for another audience, signed by a key
    // the broker does not have, not a JWT.
    let stranger = common::TestIdp::new("key-1");
    for (token, reason) in [
        (idp.token("gateway-7", "runnel", -120), "expired"),
        (idp.token("gateway-7", "elsewhere", 600), "audience"),
        (
            stranger.token("gateway-7", "runnel", 600),
            "signature does not verify",
        ),
        ("not-a-jwt".to_string(), "not a signed JWT"),
    ] {
        let mut raw = common::RawClient::connect(&bootstrap).await;
        let hs = raw
            .call(
                &SaslHandshakeRequest::default()
                    .with_mechanism(StrBytes::from_static_str("OAUTHBEARER")),
                1,
            )
            .await;
        assert_eq!(hs.error_code, 0);
        assert_eq!(
            hs.mechanisms.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            ["OAUTHBEARER"]
        );
        let message = format!("n,,\x01auth=Bearer {token}\x01\x01");
        let auth = raw
            .call(
                &kafka_protocol::messages::SaslAuthenticateRequest::default()
                    .with_auth_bytes(Bytes::from(message)),
                1,
            )
            .await;
        assert_eq!(auth.error_code, 58, "SASL_AUTHENTICATION_FAILED");
        let said = auth.error_message.unwrap().to_string();
        assert!(said.contains(reason), "{said}");
        assert!(raw.is_closed().await);
    }

    // The provider rotates its key: the broker reads the new JWKS without a restart (a new
    // key id, so the file changes length too, whatever the file system's time resolution).
    let rotated = common::TestIdp::new("rotated-key");
    std::fs::write(&jwks, rotated.jwks()).unwrap();
    let b = bootstrap.clone();
    let token = rotated.token("gateway-7", "runnel", 600);
    tokio::task::spawn_blocking(move || produce_with_token(&b, token, "gateway-7"))
        .await
        .unwrap()
        .expect("a token of the new key logs in");
    broker.shutdown().await;
}

#[tokio::test]
async fn oauthbearer_without_keys_names_the_key_and_a_bad_jwks_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(&dir.path().join("data"));
    cfg.listeners.kafka.sasl_oauthbearer = true;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("listeners.kafka.sasl_oauthbearer"), "{err}");
    assert!(err.contains("oauthbearer.jwks_file"), "{err}");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
    cfg.oauthbearer.jwks_file = jwks;
    let err = match runnel::start_broker(cfg).await {
        Ok(_) => panic!("started with no keys"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("oauthbearer.jwks_file") && err.contains("no usable RSA or EC"),
        "{err}"
    );
}
