//! Per-topic overrides with Kafka config names, both directions.

use std::time::Duration;

use edge_config::{
    CleanupPolicy, FIXED_TOPIC_CONFIGS, FlushPolicy, LogConfig, TOPIC_CONFIG_NAMES, TimestampType,
};

fn apply(pairs: &[(&str, &str)]) -> LogConfig {
    let mut log = LogConfig::default();
    for (name, value) in pairs {
        log.apply_topic_override(name, value)
            .unwrap_or_else(|e| panic!("{name}={value}: {e}"));
    }
    log
}

fn apply_err(name: &str, value: &str) -> String {
    let mut log = LogConfig::default();
    let e = log
        .apply_topic_override(name, value)
        .unwrap_err()
        .to_string();
    assert_eq!(
        log,
        LogConfig::default(),
        "a failed override changed the config"
    );
    e
}

#[test]
fn kafka_names_map_onto_log_config() {
    let log = apply(&[
        ("segment.bytes", "1048576"),
        ("segment.ms", "3600000"),
        ("retention.ms", "86400000"),
        ("retention.bytes", "5000000"),
        ("cleanup.policy", "compact,delete"),
        ("message.timestamp.type", "LogAppendTime"),
        ("max.message.bytes", "2097152"),
        ("delete.retention.ms", "1000"),
        ("index.interval.bytes", "0"),
        ("flush.ms", "500"),
        ("min.insync.replicas", "2"),
    ]);
    assert_eq!(log.segment_bytes, 1 << 20);
    assert_eq!(log.segment_age, Duration::from_secs(3600));
    assert_eq!(log.retention, Some(Duration::from_secs(86_400)));
    assert_eq!(log.retention_bytes, Some(5_000_000));
    assert_eq!(log.cleanup_policy, CleanupPolicy::CompactDelete);
    assert_eq!(log.timestamp_type, TimestampType::LogAppendTime);
    assert_eq!(log.max_message_bytes, 2 << 20);
    assert_eq!(log.delete_retention, Duration::from_secs(1));
    assert_eq!(log.index_interval_bytes, 0);
    assert_eq!(log.flush, FlushPolicy::Interval);
    assert_eq!(log.flush_interval, Duration::from_millis(500));
    assert_eq!(log.min_insync_replicas, 2);
}

#[test]
fn minus_one_means_forever_and_unlimited() {
    let log = apply(&[
        ("retention.ms", "-1"),
        ("retention.bytes", "-1"),
        ("cleanup.policy", "compact"),
    ]);
    assert_eq!(log.retention, None);
    assert_eq!(log.retention_bytes, None);
    assert!(log.cleanup_policy.compact() && !log.cleanup_policy.delete());
}

#[test]
fn flush_ms_maps_to_the_flush_policy() {
    let log = apply(&[("flush.ms", "0")]);
    assert_eq!(log.flush, FlushPolicy::Always);
    assert_eq!(
        log.flush_interval,
        Duration::from_secs(1),
        "interval left alone"
    );
    let log = apply(&[("flush.ms", "9223372036854775807")]);
    assert_eq!(log.flush, FlushPolicy::Never);
    let log = apply(&[("flush.ms", "9223372036854775806")]);
    assert_eq!(log.flush, FlushPolicy::Interval);
}

#[test]
fn defaults_render_with_kafka_names_and_units() {
    let configs = LogConfig::default().to_topic_configs();
    let names: Vec<&str> = configs.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, TOPIC_CONFIG_NAMES);
    let expected = [
        ("segment.bytes", "1073741824"),
        ("segment.ms", "604800000"),
        ("retention.ms", "604800000"),
        ("retention.bytes", "-1"),
        ("cleanup.policy", "delete"),
        ("message.timestamp.type", "CreateTime"),
        ("max.message.bytes", "1048588"),
        ("delete.retention.ms", "86400000"),
        ("index.interval.bytes", "4096"),
        ("flush.ms", "1000"),
        ("min.cleanable.dirty.ratio", "0.5"),
        ("message.timestamp.before.max.ms", "9223372036854775807"),
        ("message.timestamp.after.max.ms", "9223372036854775807"),
        ("min.insync.replicas", "1"),
    ];
    let got: Vec<(&str, &str)> = configs.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(got[..expected.len()], expected);
    // Then the configs with one value, at Kafka's defaults.
    let fixed: Vec<(&str, &str)> = FIXED_TOPIC_CONFIGS
        .iter()
        .map(|(n, v, _)| (*n, *v))
        .collect();
    assert_eq!(got[expected.len()..], fixed);
    assert!(fixed.contains(&("compression.type", "producer")));
    assert!(fixed.contains(&("unclean.leader.election.enable", "false")));
}

#[test]
fn rendered_configs_apply_back_to_the_same_config() {
    let mut custom = LogConfig {
        segment_bytes: 64 << 20,
        segment_age: Duration::from_secs(600),
        retention: None,
        retention_bytes: Some(10 << 30),
        index_interval_bytes: 1024,
        flush: FlushPolicy::Interval,
        flush_interval: Duration::from_millis(200),
        cleanup_policy: CleanupPolicy::Compact,
        timestamp_type: TimestampType::LogAppendTime,
        max_message_bytes: 4 << 20,
        delete_retention: Duration::from_secs(60),
        min_cleanable_dirty_ratio: 0.25,
        timestamp_before_max: Some(Duration::from_secs(30 * 86_400)),
        timestamp_after_max: Some(Duration::from_secs(3600)),
        min_insync_replicas: 3,
        ..LogConfig::default()
    };
    for flush in [
        FlushPolicy::Interval,
        FlushPolicy::Never,
        FlushPolicy::Always,
    ] {
        custom.flush = flush;
        // flush_interval travels only with `interval`; start from it so the others compare.
        let mut back = LogConfig {
            flush_interval: custom.flush_interval,
            ..LogConfig::default()
        };
        for (name, value) in custom.to_topic_configs() {
            back.apply_topic_override(name, &value).unwrap();
        }
        assert_eq!(back, custom, "{flush:?}");
    }
    let flush_ms = |flush| {
        let log = LogConfig {
            flush,
            ..LogConfig::default()
        };
        log.to_topic_configs()
            .into_iter()
            .find(|(n, _)| *n == "flush.ms")
            .unwrap()
            .1
    };
    assert_eq!(flush_ms(FlushPolicy::Never), "9223372036854775807");
    assert_eq!(flush_ms(FlushPolicy::Always), "0");
}

#[test]
fn bad_overrides_name_the_config() {
    // A typo is named before the list of allowed names, which clients may cut short.
    assert!(
        apply_err("retention.msx", "1").starts_with(
            "unknown topic config retention.msx (did you mean retention.ms?); allowed: "
        )
    );
    assert_eq!(
        apply_err("retention.hours", "1"),
        format!(
            "unknown topic config retention.hours; allowed: segment.bytes, segment.ms, \
             retention.ms, retention.bytes, cleanup.policy, message.timestamp.type, \
             max.message.bytes, delete.retention.ms, index.interval.bytes, flush.ms, \
             min.cleanable.dirty.ratio, message.timestamp.before.max.ms, \
             message.timestamp.after.max.ms, min.insync.replicas, {}",
            FIXED_TOPIC_CONFIGS
                .iter()
                .map(|(n, ..)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )
    );
    assert_eq!(
        apply_err("min.cleanable.dirty.ratio", "1.5"),
        "topic config min.cleanable.dirty.ratio: 1.5 is out of range; allowed: 0.0..=1.0"
    );
    assert_eq!(
        apply_err("message.timestamp.after.max.ms", "-1"),
        "topic config message.timestamp.after.max.ms: -1 is out of range; allowed: 0 or more \
         (9223372036854775807: no bound)"
    );
    assert_eq!(
        apply_err("retention.ms", "7d"),
        "topic config retention.ms: invalid value \"7d\"; expected an integer number of \
         milliseconds, or -1 for forever"
    );
    assert_eq!(
        apply_err("retention.bytes", "-2"),
        "topic config retention.bytes: -2 is out of range; allowed: -1 or 0 or more"
    );
    assert_eq!(
        apply_err("segment.bytes", "100"),
        "topic config segment.bytes: 100 is out of range; allowed: 1024..=2147483647 (1KiB up to 2GiB less a byte)"
    );
    assert_eq!(
        apply_err("segment.ms", "0"),
        "topic config segment.ms: 0 is out of range; allowed: 1 or more"
    );
    assert_eq!(
        apply_err("cleanup.policy", "forget"),
        "topic config cleanup.policy: unknown value \"forget\"; allowed: delete, compact, \
         compact,delete"
    );
    assert_eq!(
        apply_err("message.timestamp.type", "createtime"),
        "topic config message.timestamp.type: unknown value \"createtime\"; allowed: CreateTime, \
         LogAppendTime"
    );
    assert_eq!(
        apply_err("flush.ms", "-1"),
        "topic config flush.ms: -1 is out of range; allowed: 0 or more"
    );
    for bad in ["0", "-1", "2147483648"] {
        assert_eq!(
            apply_err("min.insync.replicas", bad),
            format!(
                "topic config min.insync.replicas: {bad} is out of range; allowed: 1..=2147483647"
            )
        );
    }
    assert_eq!(
        apply_err("max.message.bytes", "0"),
        "topic config max.message.bytes: 0 is out of range; allowed: 1..=2147483647 (1 up to 2GiB less a byte)"
    );
}

/// Configs this broker has one value of by design are accepted with that value (so tools and
/// manifests that set them work) and refused with the reason otherwise.
#[test]
fn fixed_configs_take_their_one_value() {
    let mut log = LogConfig::default();
    log.apply_topic_override("compression.type", "producer")
        .unwrap();
    assert_eq!(log, LogConfig::default(), "nothing to change");
    let err = log
        .apply_topic_override("compression.type", "zstd")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("compression.type") && err.contains("as the producer compressed"),
        "{err}"
    );
    // What provisioning tools copy from a Kafka cluster's defaults is accepted and changes
    // nothing; another value is refused with the reason.
    for (name, value) in [
        ("unclean.leader.election.enable", "false"),
        ("min.compaction.lag.ms", "0"),
        ("preallocate", "false"),
        ("segment.jitter.ms", "0"),
        ("leader.replication.throttled.replicas", ""),
        ("local.retention.ms", "-2"),
    ] {
        log.apply_topic_override(name, value).unwrap();
    }
    assert_eq!(log, LogConfig::default());
    let err = log
        .apply_topic_override("min.compaction.lag.ms", "3600000")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("only \"0\" is supported") && err.contains("sealed segment"),
        "{err}"
    );
}
