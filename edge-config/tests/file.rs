//! Config files: the default file, every unit form, every error form, and contradictions.

use std::path::PathBuf;
use std::time::Duration;

use edge_config::{CleanupPolicy, Config, ConfigError, FlushPolicy, Location, TimestampType};

const DAY: u64 = 86_400;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, "runnel.toml", &[])
}

fn error(text: &str) -> String {
    match parse(text) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn default_file_parses_back_to_the_defaults() {
    let text = Config::default_toml();
    assert_eq!(parse(&text).unwrap(), Config::default());
    Config::default().validate().unwrap();
}

#[test]
fn default_file_shows_every_key_with_a_comment() {
    let text = Config::default_toml();
    for expected in [
        "[broker]\n",
        "node_id = 1\n",
        "data_dir = \"./runnel-data\"\n",
        "advertised_host = \"\"\n",
        "max_request_bytes = \"100MiB\"\n",
        "handshake_timeout = \"10s\"\n",
        "connections_max_idle = \"10m\"\n",
        "[listeners.kafka]\n",
        "address = \"127.0.0.1:9092\"\n",
        "[listeners.kafka_tls]\n",
        "enabled = false\n",
        "address = \"127.0.0.1:9096\"\n",
        "[listeners.quic]\n",
        "[listeners.admin]\n",
        "[log]\n",
        "segment_bytes = \"1GiB\"\n",
        "segment_age = \"7d\"\n",
        "retention = \"7d\"\n",
        "retention_bytes = \"unlimited\"\n",
        "index_interval_bytes = \"4KiB\"\n",
        "flush = \"interval\"\n",
        "flush_interval = \"1s\"\n",
        "cleanup_policy = \"delete\"\n",
        "timestamp_type = \"CreateTime\"\n",
        "max_message_bytes = 1048588\n",
        "delete_retention = \"1d\"\n",
        "retention_check_interval = \"5m\"\n",
        "compaction_check_interval = \"15s\"\n",
        "[groups]\n",
        "min_session_timeout = \"6s\"\n",
        "max_session_timeout = \"30m\"\n",
        "initial_rebalance_delay = \"0s\"\n",
        "offsets_retention = \"7d\"\n",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    // Every key line is preceded by a comment line.
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.contains(" = ") && !line.starts_with('#') {
            assert!(lines[i - 1].starts_with('#'), "no comment above {line:?}");
        }
    }
    assert!(text.contains("# Allowed: never, interval, always."));
}

#[test]
fn documented_defaults() {
    let c = Config::default();
    assert_eq!(c.broker.node_id, 1);
    assert_eq!(c.broker.data_dir, PathBuf::from("./runnel-data"));
    assert_eq!(c.broker.max_request_bytes, 100 << 20);
    assert_eq!(c.broker.max_connections, 10_000);
    assert!(c.listeners.kafka.enabled && !c.listeners.kafka_tls.enabled);
    assert!(c.listeners.quic.enabled && c.listeners.admin.enabled);
    assert_eq!(c.listeners.quic.address.to_string(), "127.0.0.1:9093");
    assert_eq!(c.listeners.admin.address.to_string(), "127.0.0.1:9094");
    assert_eq!(c.log.segment_bytes, 1 << 30);
    assert_eq!(c.log.retention, Some(Duration::from_secs(7 * DAY)));
    assert_eq!(c.log.retention_bytes, None);
    assert_eq!(c.log.max_message_bytes, 1_048_588);
    assert_eq!(c.log.flush, FlushPolicy::Interval);
    assert_eq!(c.groups.initial_rebalance_delay, Duration::ZERO);
}

#[test]
fn empty_file_is_the_defaults() {
    assert_eq!(parse("").unwrap(), Config::default());
}

#[test]
fn every_unit_form() {
    let c = parse(
        r#"
        [broker]
        max_request_bytes = "64MiB"
        handshake_timeout = "250ms"
        [log]
        segment_bytes = "100MB"
        segment_age = "2h 30m"
        retention = "forever"
        retention_bytes = "2GiB"
        index_interval_bytes = 8192
        flush_interval = 1500
        delete_retention = "1.5s"
        retention_check_interval = "10s"
        compaction_check_interval = "2s"
        max_message_bytes = "1 MiB"
        [groups]
        max_session_timeout = "5m"
        offsets_retention = "7d"
        "#,
    )
    .unwrap();
    assert_eq!(c.broker.max_request_bytes, 64 << 20);
    assert_eq!(c.broker.handshake_timeout, Duration::from_millis(250));
    assert_eq!(c.log.segment_bytes, 100_000_000);
    assert_eq!(c.log.segment_age, Duration::from_secs(9_000));
    assert_eq!(c.log.retention, None);
    assert_eq!(c.log.retention_bytes, Some(2 << 30));
    assert_eq!(c.log.index_interval_bytes, 8192);
    assert_eq!(c.log.flush_interval, Duration::from_millis(1500));
    assert_eq!(c.log.delete_retention, Duration::from_millis(1500));
    assert_eq!(c.log.retention_check_interval, Duration::from_secs(10));
    assert_eq!(c.log.compaction_check_interval, Duration::from_secs(2));
    assert_eq!(c.log.max_message_bytes, 1 << 20);
    assert_eq!(c.groups.max_session_timeout, Duration::from_secs(300));
    assert_eq!(c.groups.offsets_retention, Duration::from_secs(7 * DAY));

    let c = parse("[log]\nretention = -1\nretention_bytes = -1\n").unwrap();
    assert_eq!((c.log.retention, c.log.retention_bytes), (None, None));
    let c = parse("[log]\nretention = 60000\nretention_bytes = \"unlimited\"\n").unwrap();
    assert_eq!(c.log.retention, Some(Duration::from_secs(60)));
    assert_eq!(c.log.retention_bytes, None);
    let c = parse("[log]\nsegment_bytes = 4096\nretention_bytes = 0\n").unwrap();
    assert_eq!(
        (c.log.segment_bytes, c.log.retention_bytes),
        (4096, Some(0))
    );
}

#[test]
fn every_enum_spelling() {
    let c = parse("[log]\nflush = \"always\"\ncleanup_policy = \"delete,compact\"\ntimestamp_type = \"LogAppendTime\"\n")
        .unwrap();
    assert_eq!(c.log.flush, FlushPolicy::Always);
    assert_eq!(c.log.cleanup_policy, CleanupPolicy::CompactDelete);
    assert_eq!(c.log.timestamp_type, TimestampType::LogAppendTime);
    let c = parse("[log]\nflush = \"never\"\ncleanup_policy = \"compact\"\n").unwrap();
    assert_eq!(c.log.flush, FlushPolicy::Never);
    assert_eq!(c.log.cleanup_policy, CleanupPolicy::Compact);
    let c = parse("[log]\ncleanup_policy = \"compact,delete\"\n").unwrap();
    assert_eq!(c.log.cleanup_policy, CleanupPolicy::CompactDelete);
}

#[test]
fn dotted_keys_and_inline_tables() {
    let c = parse("listeners.kafka.address = \"0.0.0.0:19092\"\nlog = { flush = \"never\" }\n")
        .unwrap();
    assert_eq!(c.listeners.kafka.address.to_string(), "0.0.0.0:19092");
    assert_eq!(c.log.flush, FlushPolicy::Never);
}

/// Twelve lines with `flush` on line 12.
const BAD_FLUSH: &str = "\
# Runnel
[broker]
node_id = 3

[listeners.kafka]
enabled = true
address = \"127.0.0.1:9092\"

[log]
segment_bytes = \"64MiB\"
retention = \"3d\"
flush = \"sometimes\"
";

#[test]
fn unknown_enum_value_names_line_key_and_allowed_values() {
    assert_eq!(
        error(BAD_FLUSH),
        r#"runnel.toml:12: log.flush: unknown value "sometimes"; allowed: never, interval, always"#
    );
    assert_eq!(
        error("[log]\ncleanup_policy = \"forget\"\n"),
        r#"runnel.toml:2: log.cleanup_policy: unknown value "forget"; allowed: delete, compact, compact,delete"#
    );
    assert_eq!(
        error("[log]\n\ntimestamp_type = \"createtime\"\n"),
        r#"runnel.toml:3: log.timestamp_type: unknown value "createtime"; allowed: CreateTime, LogAppendTime"#
    );
}

#[test]
fn out_of_range_names_line_key_and_range() {
    assert_eq!(
        error("[broker]\nnode_id = 1\ndefault_partitions = 0\n"),
        "runnel.toml:3: broker.default_partitions: 0 is out of range; allowed: 1..=10000"
    );
    assert_eq!(
        error("[broker]\ndefault_partitions = 10001\n"),
        "runnel.toml:2: broker.default_partitions: 10001 is out of range; allowed: 1..=10000"
    );
    assert_eq!(
        error("[broker]\nnode_id = -1\n"),
        "runnel.toml:2: broker.node_id: -1 is out of range; allowed: 0..=2147483647"
    );
    assert_eq!(
        error("[broker]\ndefault_replication_factor = 0\n"),
        "runnel.toml:2: broker.default_replication_factor: 0 is out of range; allowed: 1 (this broker is the only replica of its topics)"
    );
    // More than one replica used to pass validation and then fail every CreateTopics asking
    // for the broker's default.
    assert_eq!(
        error("[broker]\ndefault_replication_factor = 3\n"),
        "runnel.toml:2: broker.default_replication_factor: 3 is out of range; allowed: 1 (this broker is the only replica of its topics)"
    );
    assert_eq!(
        error("[broker]\nmax_request_bytes = \"3GiB\"\n"),
        "runnel.toml:2: broker.max_request_bytes: 3GiB is out of range; allowed: 1KiB..=2GiB"
    );
    assert_eq!(
        error("[broker]\nmax_request_bytes = 1000\n"),
        "runnel.toml:2: broker.max_request_bytes: 1000 is out of range; allowed: 1KiB..=2GiB"
    );
    assert_eq!(
        error("[broker]\nmax_connections = 0\n"),
        "runnel.toml:2: broker.max_connections: 0 is out of range; allowed: 1 or more"
    );
    assert_eq!(
        error("[log]\nsegment_bytes = 512\n"),
        "runnel.toml:2: log.segment_bytes: 512 is out of range; allowed: 1KiB..=2GiB"
    );
    assert_eq!(
        error("[log]\nsegment_age = \"0s\"\n"),
        "runnel.toml:2: log.segment_age: 0s is out of range; allowed: more than 0s"
    );
    assert_eq!(
        error("[log]\nmax_message_bytes = \"200MiB\"\n"),
        "runnel.toml:2: log.max_message_bytes: 200MiB is out of range; \
         allowed: 1..=100MiB (broker.max_request_bytes)"
    );
    assert_eq!(
        error("[groups]\ninitial_rebalance_delay = \"99999999999d\"\n"),
        "runnel.toml:2: groups.initial_rebalance_delay: 99999999999d is out of range; \
         allowed: at most 2147483647ms (24d)"
    );
    assert_eq!(
        error("[federation]\nretry_backoff_max = \"2d\"\n"),
        "runnel.toml:2: federation.retry_backoff_max: 2d is more than a day; allowed: up to 1d"
    );
    // Both sides of the limits are accepted.
    parse("[groups]\ninitial_rebalance_delay = \"24d\"\n").unwrap();
    parse("[broker]\nmax_request_bytes = \"1KiB\"\n[log]\nmax_message_bytes = 1024\n").unwrap();
    parse("[broker]\nmax_request_bytes = \"2GiB\"\ndefault_partitions = 10000\n").unwrap();
    parse("[log]\nsegment_bytes = \"1KiB\"\n").unwrap();
}

#[test]
fn malformed_values_name_line_and_key() {
    assert_eq!(
        error("[log]\nretention = \"3 parsecs\"\n"),
        r#"runnel.toml:2: log.retention: invalid duration "3 parsecs""#
    );
    assert_eq!(
        error("[broker]\nhandshake_timeout = -5\n"),
        "runnel.toml:2: broker.handshake_timeout: invalid duration -5"
    );
    // A size says what it takes, fractions being the usual mistake.
    const SIZES: &str = ": a whole number with an optional unit (B, KiB, MiB, GiB, TiB, or KB, MB, \
                         GB, TB), e.g. \"1536KiB\" for 1.5 MiB";
    assert_eq!(
        error("[log]\nsegment_bytes = \"12 bananas\"\n"),
        format!(r#"runnel.toml:2: log.segment_bytes: invalid size "12 bananas"{SIZES}"#)
    );
    assert_eq!(
        error("[log]\nsegment_bytes = \"1.5MiB\"\n"),
        format!(r#"runnel.toml:2: log.segment_bytes: invalid size "1.5MiB"{SIZES}"#)
    );
    assert_eq!(
        error("[log]\nretention_bytes = -2\n"),
        format!("runnel.toml:2: log.retention_bytes: invalid size -2{SIZES}")
    );
    assert_eq!(
        error("[listeners.admin]\naddress = \"localhost:9094\"\n"),
        "runnel.toml:2: listeners.admin.address: invalid socket address \"localhost:9094\"; \
         expected an IP address and port such as 127.0.0.1:9092 or [::1]:9092"
    );
    assert_eq!(
        error("[log]\nflush = 1\n"),
        "runnel.toml:2: log.flush: invalid type: integer `1`, expected one of never, interval, always"
    );
    assert_eq!(
        error("[log]\n\nflush = { a = 1 }\n"),
        "runnel.toml:3: log.flush: invalid type: map, expected one of never, interval, always"
    );
    assert_eq!(
        error("[log.flush]\nx = 1\n"),
        "runnel.toml:1: log.flush: invalid type: map, expected one of never, interval, always"
    );
    assert_eq!(
        error("[broker]\nauto_create_topics = \"yes\"\n"),
        "runnel.toml:2: broker.auto_create_topics: invalid type: string \"yes\", expected true or false"
    );
    // Rust's type names are not shown, nor the range of the type holding the value when the
    // key allows less.
    assert_eq!(
        error("[broker]\nnode_id = \"abc\"\n"),
        "runnel.toml:2: broker.node_id: invalid type: string \"abc\", expected a whole number; \
         allowed: 0 or more"
    );
    assert_eq!(
        error("[broker]\nnode_id = 99999999999\n"),
        "runnel.toml:2: broker.node_id: invalid value: integer `99999999999`, expected a whole \
         number; allowed: 0 or more, at most 2147483647"
    );
    assert_eq!(
        error("[broker]\ndefault_partitions = 2.5\n"),
        "runnel.toml:2: broker.default_partitions: invalid type: floating point `2.5`, expected \
         a whole number; allowed: 1..=10000"
    );
}

/// Seven lines with the misspelt key on line 7.
const MISSPELT: &str = "\
[broker]
node_id = 1

[listeners.kafka]
enabled = true

adress = \"0.0.0.0:9092\"
";

#[test]
fn unknown_key_names_line_and_allowed_keys() {
    assert_eq!(
        error(MISSPELT),
        "runnel.toml:7: unknown key listeners.kafka.adress (did you mean address?); allowed keys: enabled, address, sasl_plain_file, sasl_oauthbearer"
    );
    assert_eq!(
        error("[brokers]\nnode_id = 1\n"),
        "runnel.toml:1: unknown key brokers (did you mean broker?); allowed keys: broker, listeners, log, groups, acls, oauthbearer, cluster, plugins, federation"
    );
    assert_eq!(
        error("[listeners.http]\nenabled = true\n"),
        "runnel.toml:1: unknown key listeners.http; allowed keys: kafka, kafka_tls, quic, admin"
    );
    assert_eq!(
        error("[groups]\nmin_session_timeout = \"6s\"\nsession_timeout = \"10s\"\n"),
        "runnel.toml:3: unknown key groups.session_timeout; allowed keys: min_session_timeout, \
         max_session_timeout, initial_rebalance_delay, offsets_retention, \
         consumer_session_timeout, consumer_heartbeat_interval, consumer_min_session_timeout, \
         consumer_max_session_timeout, consumer_min_heartbeat_interval, \
         consumer_max_heartbeat_interval"
    );
    assert_eq!(
        error("broker = 5\n"),
        "runnel.toml:1: broker: must be a table: [broker]"
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let e = parse("[broker]\nnode_id = 1\nnode_id = 2\n").unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
    assert!(e.to_string().starts_with("runnel.toml:3: "), "{e}");
    assert!(e.to_string().ends_with("(in `node_id = 2`)"), "{e}");
    let e = error("[log]\nflush = \"never\n");
    assert!(e.starts_with("runnel.toml:2: "), "{e}");
    // A number too big for TOML: the line shows which key.
    let e = error("[broker]\nnode_id = 99999999999999999999\n");
    assert!(e.starts_with("runnel.toml:2: "), "{e}");
    assert!(e.contains("`node_id = 99999999999999999999`"), "{e}");
}

#[test]
fn contradictions() {
    assert_eq!(
        error("[listeners.kafka_tls]\nenabled = true\n"),
        "runnel.toml:2: listeners.kafka_tls.cert: required when listeners.kafka_tls.enabled = true: \
         the PEM certificate chain file"
    );
    assert_eq!(
        error("[listeners.kafka_tls]\nenabled = true\ncert = \"c.pem\"\n"),
        "runnel.toml:2: listeners.kafka_tls.key: required when listeners.kafka_tls.enabled = true: \
         the PEM private key file"
    );
    parse("[listeners.kafka_tls]\nenabled = true\ncert = \"c.pem\"\nkey = \"k.pem\"\n").unwrap();
    // A disabled TLS listener needs no certificate.
    parse("[listeners.kafka_tls]\nenabled = false\n").unwrap();

    assert_eq!(
        error("[listeners.admin]\naddress = \"127.0.0.1:9092\"\n"),
        "runnel.toml:2: listeners.admin.address: 127.0.0.1:9092 clashes with \
         listeners.kafka.address (127.0.0.1:9092); enabled TCP listeners need different ports"
    );
    assert_eq!(
        error("[listeners.kafka]\naddress = \"0.0.0.0:9094\"\n"),
        "runnel.toml:2: listeners.admin.address: 127.0.0.1:9094 clashes with \
         listeners.kafka.address (0.0.0.0:9094); enabled TCP listeners need different ports"
    );
    assert_eq!(
        error("[listeners.kafka]\nenabled = false\n[listeners.quic]\nenabled = false\n"),
        "runnel.toml:2: listeners.kafka.enabled: no client listener is enabled (kafka, kafka_tls \
         or quic): nothing could produce or consume"
    );
    parse("[listeners.kafka]\nenabled = false\n").unwrap();
    // Same port but a disabled listener, UDP vs TCP, or port 0: no clash.
    parse("[listeners.admin]\nenabled = false\naddress = \"127.0.0.1:9092\"\n").unwrap();
    parse("[listeners.quic]\naddress = \"127.0.0.1:9092\"\n").unwrap();
    parse("[listeners.kafka]\naddress = \"127.0.0.1:0\"\n[listeners.admin]\naddress = \"127.0.0.1:0\"\n")
        .unwrap();

    assert_eq!(
        error("[groups]\nmin_session_timeout = \"1h\"\n"),
        "runnel.toml:2: groups.min_session_timeout: 1h is more than groups.max_session_timeout (30m)"
    );
    // Reported where the user wrote it, even when that is the other key.
    assert_eq!(
        error("[groups]\n\nmax_session_timeout = \"5s\"\n"),
        "runnel.toml:3: groups.min_session_timeout: 6s is more than groups.max_session_timeout (5s)"
    );
    assert_eq!(
        error("[log]\nflush_interval = 0\n"),
        "runnel.toml:2: log.flush_interval: must be more than 0s when log.flush = \"interval\"; \
         use flush = \"always\" to fsync every append"
    );
    parse("[log]\nflush = \"always\"\nflush_interval = 0\n").unwrap();
    assert_eq!(
        error("[listeners.quic]\ncert = \"q.pem\"\n"),
        "runnel.toml:2: listeners.quic.cert: is set but listeners.quic.key is not; set both, or \
         neither for a self-signed certificate"
    );
}

#[test]
fn tls_between_brokers_is_checked_key_by_key() {
    let cluster = "[listeners.kafka_tls]\nenabled = true\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
                   [cluster]\nbrokers = [\"1@a:9092\", \"2@b:9092\"]\n";
    let tls_brokers = "tls_brokers = [\"1@a:9096\", \"2@b:9096\"]\n";
    let whole = format!("{cluster}{tls_brokers}tls = true\ntls_ca = \"ca.pem\"\n");
    let config = parse(&whole).unwrap();
    assert!(config.cluster.tls);
    assert_eq!(
        config.cluster.parsed_tls_brokers().unwrap()[1].address,
        "b:9096"
    );
    parse(&format!(
        "{whole}tls_cert = \"r.pem\"\ntls_key = \"r.key\"\n"
    ))
    .unwrap();
    // TLS addresses without TLS between brokers: for clients only.
    parse(&format!("{cluster}{tls_brokers}")).unwrap();

    assert_eq!(
        error(&format!(
            "{cluster}tls_brokers = [\"1@a:9096\", \"3@c:9096\"]\n"
        )),
        "runnel.toml:7: cluster.tls_brokers: must name the same node ids as cluster.brokers, one \
         TLS listener each"
    );
    assert_eq!(
        error(&format!("{cluster}tls_brokers = [\"1@a\"]\n")),
        "runnel.toml:7: cluster.tls_brokers: \"1@a\" is not \"<node_id>@<host>:<port>\""
    );
    assert_eq!(
        error(&format!("{cluster}tls = true\ntls_ca = \"ca.pem\"\n")),
        "runnel.toml:7: cluster.tls_brokers: required when cluster.tls = true: every broker's TLS \
         listener, where followers reach the leader"
    );
    assert_eq!(
        error(&format!("{cluster}{tls_brokers}tls = true\n")),
        "runnel.toml:8: cluster.tls_ca: required when cluster.tls = true: the CA file the leader's \
         certificate is checked against"
    );
    assert_eq!(
        error(&format!("{whole}tls_key = \"r.key\"\n")),
        "runnel.toml:10: cluster.tls_cert: a follower's certificate needs both cluster.tls_cert \
         and cluster.tls_key"
    );
    assert_eq!(
        error(&format!(
            "{cluster}{tls_brokers}tls_cert = \"r.pem\"\ntls_key = \"r.key\"\n"
        )),
        "runnel.toml:8: cluster.tls_cert: a follower presents a certificate only over TLS: set \
         cluster.tls = true"
    );
    assert_eq!(
        error(&format!("{cluster}{tls_brokers}tls_ca = \"ca.pem\"\n")),
        "runnel.toml:8: cluster.tls_ca: the leader's certificate is checked only over TLS: set \
         cluster.tls = true"
    );
    assert_eq!(
        error(&format!(
            "[cluster]\nbrokers = [\"1@a:9092\", \"2@b:9092\"]\n{tls_brokers}"
        )),
        "runnel.toml:3: cluster.tls_brokers: names this broker's TLS listener (node 1), but \
         listeners.kafka_tls is not enabled"
    );
}

#[test]
fn keys_left_at_their_default_are_located_as_default() {
    let mut config = Config::default();
    config.log.flush_interval = Duration::ZERO;
    // Built in code: no location at all.
    assert_eq!(
        config.validate().unwrap_err().to_string(),
        "log.flush_interval: must be more than 0s when log.flush = \"interval\"; \
         use flush = \"always\" to fsync every append"
    );
    // From a file that never mentions the key: `(default)` instead of a line.
    let e = parse(
        "[listeners.kafka_tls]\nenabled = false\n[listeners.kafka]\naddress = \"127.0.0.1:9094\"\n",
    )
    .unwrap_err();
    assert_eq!(
        e.location(),
        Some(&Location::Line {
            origin: "runnel.toml".into(),
            line: 4
        })
    );
    let e =
        parse("[log]\nflush = \"interval\"\n[broker]\nmax_request_bytes = \"1KiB\"\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "runnel.toml:4: broker.max_request_bytes: 1KiB is less than log.max_message_bytes \
         (1048588, its default): a produce request must hold the largest batch; lower \
         log.max_message_bytes too"
    );
    // Both set: the batch limit is the one out of range.
    let e = parse("[broker]\nmax_request_bytes = \"1KiB\"\n[log]\nmax_message_bytes = 2048\n")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "runnel.toml:4: log.max_message_bytes: 2KiB is out of range; \
         allowed: 1..=1KiB (broker.max_request_bytes)"
    );
    let e = Config::from_toml_str(
        "",
        "runnel.toml",
        &[("RUNNEL_LISTENERS__KAFKA_TLS__ENABLED".into(), "true".into())],
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "env RUNNEL_LISTENERS__KAFKA_TLS__ENABLED: listeners.kafka_tls.cert: required when \
         listeners.kafka_tls.enabled = true: the PEM certificate chain file"
    );
    assert_eq!(e.key(), Some("listeners.kafka_tls.cert"));
}

#[test]
fn location_display() {
    let at = |line| Location::Line {
        origin: "runnel.toml".into(),
        line,
    };
    assert_eq!(at(12).to_string(), "runnel.toml:12");
    let default = Location::Default {
        origin: Some("runnel.toml".into()),
    };
    assert_eq!(default.to_string(), "runnel.toml:(default)");
    assert_eq!(Location::Default { origin: None }.to_string(), "(default)");
    let env = Location::Env {
        var: "RUNNEL_LOG__RETENTION".into(),
    };
    assert_eq!(env.to_string(), "env RUNNEL_LOG__RETENTION");
}

#[test]
fn load_reads_a_real_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runnel.toml");
    std::fs::write(&path, "[broker]\ndata_dir = \"/var/lib/runnel\"\n").unwrap();
    let c = Config::load(Some(&path)).unwrap();
    assert_eq!(c.broker.data_dir, PathBuf::from("/var/lib/runnel"));

    // A file with nothing in it is refused (text that sets nothing is the defaults, above).
    std::fs::write(&path, " \n\n").unwrap();
    let e = Config::load(Some(&path)).unwrap_err().to_string();
    assert!(e.contains("the config file is empty"), "{e}");

    std::fs::write(&path, BAD_FLUSH).unwrap();
    let e = Config::load(Some(&path)).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:12: log.flush: unknown value \"sometimes\"; allowed: never, interval, always",
            path.display()
        )
    );

    let missing = dir.path().join("missing.toml");
    let e = Config::load(Some(&missing)).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(
        e.to_string().starts_with(&format!(
            "{}: cannot read the config file: ",
            missing.display()
        )),
        "{e}"
    );
}
