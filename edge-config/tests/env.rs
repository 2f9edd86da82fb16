//! `RUNNEL_*` environment overrides.

use std::path::PathBuf;
use std::time::Duration;

use edge_config::{Config, FlushPolicy};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse(text: &str, pairs: &[(&str, &str)]) -> Result<Config, String> {
    Config::from_toml_str(text, "runnel.toml", &env(pairs)).map_err(|e| e.to_string())
}

const FILE: &str = "\
[broker]
data_dir = \"/srv/runnel\"
node_id = 2

[listeners.kafka]
address = \"127.0.0.1:19092\"

[log]
retention = \"7d\"
flush = \"never\"
";

#[test]
fn env_wins_over_file_which_wins_over_defaults() {
    let c = parse(
        FILE,
        &[
            ("RUNNEL_BROKER__DATA_DIR", "/var/lib/runnel"),
            ("RUNNEL_LISTENERS__KAFKA__ADDRESS", "0.0.0.0:9092"),
            ("RUNNEL_LOG__RETENTION", "3d"),
        ],
    )
    .unwrap();
    assert_eq!(c.broker.data_dir, PathBuf::from("/var/lib/runnel"));
    assert_eq!(c.listeners.kafka.address.to_string(), "0.0.0.0:9092");
    assert_eq!(c.log.retention, Some(Duration::from_secs(3 * 86_400)));
    // From the file, untouched by env.
    assert_eq!(c.broker.node_id, 2);
    assert_eq!(c.log.flush, FlushPolicy::Never);
    // Neither: the default.
    assert_eq!(c.broker.max_connections, 10_000);
}

#[test]
fn env_values_are_typed_by_their_key() {
    let c = parse(
        "",
        &[
            ("RUNNEL_BROKER__NODE_ID", "7"),
            ("RUNNEL_BROKER__AUTO_CREATE_TOPICS", "false"),
            ("RUNNEL_BROKER__ADVERTISED_HOST", "10"),
            ("RUNNEL_BROKER__DATA_DIR", "1234"),
            ("RUNNEL_BROKER__MAX_REQUEST_BYTES", "2MiB"),
            ("RUNNEL_LOG__SEGMENT_BYTES", "1048576"),
            ("RUNNEL_LOG__RETENTION", "-1"),
            ("RUNNEL_LOG__RETENTION_BYTES", "unlimited"),
            ("RUNNEL_LOG__FLUSH_INTERVAL", "250"),
            ("RUNNEL_LOG__CLEANUP_POLICY", "compact,delete"),
            ("RUNNEL_LISTENERS__KAFKA_TLS__CLIENT_CA", "ca.pem"),
        ],
    )
    .unwrap();
    assert_eq!(c.broker.node_id, 7);
    assert!(!c.broker.auto_create_topics);
    assert_eq!(c.broker.advertised_host, "10");
    assert_eq!(c.broker.data_dir, PathBuf::from("1234"));
    assert_eq!(c.broker.max_request_bytes, 2 << 20);
    assert_eq!(c.log.segment_bytes, 1 << 20);
    assert_eq!(c.log.retention, None);
    assert_eq!(c.log.retention_bytes, None);
    assert_eq!(c.log.flush_interval, Duration::from_millis(250));
    assert!(c.log.cleanup_policy.compact() && c.log.cleanup_policy.delete());
    assert_eq!(c.listeners.kafka_tls.client_ca, PathBuf::from("ca.pem"));
}

#[test]
fn env_segments_ignore_case_and_last_value_wins() {
    let c = parse(
        "",
        &[
            ("RUNNEL_log__Retention", "1d"),
            ("RUNNEL_BROKER__NODE_ID", "3"),
            ("RUNNEL_BROKER__NODE_ID", "4"),
        ],
    )
    .unwrap();
    assert_eq!(c.log.retention, Some(Duration::from_secs(86_400)));
    assert_eq!(c.broker.node_id, 4);
}

#[test]
fn env_without_double_underscore_or_prefix_is_ignored() {
    let c = parse(
        "",
        &[
            ("RUNNEL_LOG", "debug"),
            ("RUNNEL_CONFIG", "/etc/runnel.toml"),
            ("RUNNEL", "x"),
            ("PATH", "/usr/bin"),
            ("OTHER__LOG__RETENTION", "nonsense"),
            ("runnel_log__retention", "nonsense"),
        ],
    )
    .unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn bad_env_values_name_the_variable_and_key() {
    assert_eq!(
        parse(FILE, &[("RUNNEL_LOG__RETENTION", "3 parsecs")]).unwrap_err(),
        r#"env RUNNEL_LOG__RETENTION: log.retention: invalid duration "3 parsecs""#
    );
    assert_eq!(
        parse(FILE, &[("RUNNEL_LOG__FLUSH", "sometimes")]).unwrap_err(),
        r#"env RUNNEL_LOG__FLUSH: log.flush: unknown value "sometimes"; allowed: never, interval, always"#
    );
    assert_eq!(
        parse("", &[("RUNNEL_BROKER__DEFAULT_PARTITIONS", "0")]).unwrap_err(),
        "env RUNNEL_BROKER__DEFAULT_PARTITIONS: broker.default_partitions: 0 is out of range; \
         allowed: 1..=10000"
    );
    assert_eq!(
        parse(
            "[groups]\nmax_session_timeout = \"10s\"\n",
            &[("RUNNEL_GROUPS__MIN_SESSION_TIMEOUT", "1m")]
        )
        .unwrap_err(),
        "env RUNNEL_GROUPS__MIN_SESSION_TIMEOUT: groups.min_session_timeout: 1m is more than \
         groups.max_session_timeout (10s)"
    );
    let e = parse("", &[("RUNNEL_BROKER__AUTO_CREATE_TOPICS", "yes")]).unwrap_err();
    assert!(
        e.starts_with(
            "env RUNNEL_BROKER__AUTO_CREATE_TOPICS: broker.auto_create_topics: invalid type"
        ),
        "{e}"
    );
}

#[test]
fn unknown_env_keys_are_errors_naming_the_variable() {
    assert_eq!(
        parse("", &[("RUNNEL_LISTENERS__KAFKA__ADRESS", "0.0.0.0:9092")]).unwrap_err(),
        "env RUNNEL_LISTENERS__KAFKA__ADRESS: unknown key listeners.kafka.adress \
         (did you mean address?); allowed keys: enabled, address, sasl_plain_file, \
         sasl_oauthbearer"
    );
    assert_eq!(
        parse("", &[("RUNNEL_LISTENER__KAFKA__ADDRESS", "0.0.0.0:9092")]).unwrap_err(),
        "env RUNNEL_LISTENER__KAFKA__ADDRESS: unknown key listener \
         (did you mean listeners?); allowed keys: broker, listeners, log, groups, acls, oauthbearer, cluster, plugins, federation"
    );
    assert_eq!(
        parse("", &[("RUNNEL_LOG__", "1")]).unwrap_err(),
        "env RUNNEL_LOG__: unknown key log.; allowed keys: segment_bytes, segment_age, retention, \
         retention_bytes, index_interval_bytes, flush, flush_interval, cleanup_policy, \
         timestamp_type, max_message_bytes, delete_retention, min_cleanable_dirty_ratio, \
         timestamp_before_max, timestamp_after_max, retention_check_interval, \
         compaction_check_interval"
    );
    assert_eq!(
        parse("", &[("RUNNEL_LISTENERS__KAFKA", "x")]).unwrap_err(),
        "env RUNNEL_LISTENERS__KAFKA: listeners.kafka: is a section, not a key; \
         set one of its keys: enabled, address, sasl_plain_file, sasl_oauthbearer"
    );
    assert_eq!(
        parse("", &[("RUNNEL_LOG__FLUSH__MODE", "x")]).unwrap_err(),
        "env RUNNEL_LOG__FLUSH__MODE: log.flush.mode: log.flush is a key, not a section"
    );
}

#[test]
fn env_can_fill_sections_the_file_lacks() {
    let c = parse(
        "[broker]\nnode_id = 5\n",
        &[
            ("RUNNEL_LISTENERS__KAFKA_TLS__ENABLED", "true"),
            ("RUNNEL_LISTENERS__KAFKA_TLS__CERT", "/etc/runnel/cert.pem"),
            ("RUNNEL_LISTENERS__KAFKA_TLS__KEY", "/etc/runnel/key.pem"),
        ],
    )
    .unwrap();
    assert!(c.listeners.kafka_tls.enabled);
    assert_eq!(
        c.listeners.kafka_tls.cert,
        PathBuf::from("/etc/runnel/cert.pem")
    );
}

#[test]
fn load_without_a_file_is_the_defaults() {
    // The test process has no RUNNEL_ variables unless someone exports them; skip then.
    if std::env::vars().any(|(k, _)| k.starts_with("RUNNEL_") && k.contains("__")) {
        return;
    }
    assert_eq!(Config::load(None).unwrap(), Config::default());
}

#[test]
fn a_single_underscore_where_two_belong_is_an_error_not_ignored() {
    let err = parse("", &[("RUNNEL_LOG_RETENTION", "1h")]).unwrap_err();
    assert!(err.contains("did you mean RUNNEL_LOG__RETENTION?"), "{err}");
    let err = parse("", &[("RUNNEL_BROKER_DATA_DIR", "/srv")]).unwrap_err();
    assert!(err.contains("RUNNEL_BROKER__DATA_DIR"), "{err}");
    let err = parse("", &[("RUNNEL_LISTENERS_KAFKA_ADDRESS", "0.0.0.0:9092")]).unwrap_err();
    assert!(err.contains("RUNNEL_LISTENERS__KAFKA__ADDRESS?"), "{err}");
    // Variables of the binary and its scripts are not config keys: left alone.
    for var in [
        "RUNNEL_BOOTSTRAP",
        "RUNNEL_CLIENT_CONFIG",
        "RUNNEL_INTEROP_GO_BIN",
        "RUNNEL_LOG",
    ] {
        assert!(parse("", &[(var, "x")]).is_ok(), "{var}");
    }
}
