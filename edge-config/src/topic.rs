//! Per-topic overrides of [`LogConfig`] with Kafka's own config names and units, as sent in
//! CreateTopics, AlterConfigs and IncrementalAlterConfigs and returned by DescribeConfigs.
//!
//! Kafka units: times are integer milliseconds, sizes integer bytes, and -1 means "no limit"
//! for `retention.ms` and `retention.bytes`. Human units ("7d") are not accepted here: Kafka
//! clients and tools send integers.
//!
//! `flush.ms` maps onto [`FlushPolicy`] as follows (Kafka has no single equivalent of our
//! policy; this keeps the three choices reachable from Kafka tools):
//!
//! | `flush.ms`                              | `flush`    | `flush_interval` |
//! |-----------------------------------------|------------|------------------|
//! | `0`                                     | `always`   | unchanged        |
//! | `1` ..= `9223372036854775806`           | `interval` | that many ms     |
//! | `9223372036854775807` (Kafka's default) | `never`    | unchanged        |
//!
//! so `to_topic_configs` renders `never` as 9223372036854775807 and `always` as 0, and applying
//! what it renders reproduces the config.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::error::ConfigError;
use crate::units::{self, format_bytes};
use crate::validate::{INDEX_INTERVAL_BYTES, MESSAGE_BYTES, SEGMENT_BYTES};
use crate::{CleanupPolicy, FlushPolicy, LogConfig, TimestampType};

/// The Kafka topic config names [`LogConfig::apply_topic_override`] accepts, in the order
/// [`LogConfig::to_topic_configs`] renders them.
pub const TOPIC_CONFIG_NAMES: &[&str] = &[
    "segment.bytes",
    "segment.ms",
    "retention.ms",
    "retention.bytes",
    "cleanup.policy",
    "message.timestamp.type",
    "max.message.bytes",
    "delete.retention.ms",
    "index.interval.bytes",
    "flush.ms",
    "min.cleanable.dirty.ratio",
    "message.timestamp.before.max.ms",
    "message.timestamp.after.max.ms",
    "min.insync.replicas",
    "compression.type",
    "unclean.leader.election.enable",
    "leader.replication.throttled.replicas",
    "follower.replication.throttled.replicas",
    "min.compaction.lag.ms",
    "max.compaction.lag.ms",
    "segment.index.bytes",
    "segment.jitter.ms",
    "preallocate",
    "flush.messages",
    "message.timestamp.difference.max.ms",
    "remote.storage.enable",
    "local.retention.ms",
    "local.retention.bytes",
    "compression.gzip.level",
    "compression.lz4.level",
    "compression.zstd.level",
    "file.delete.delay.ms",
];

/// Kafka topic configs this broker has one value of by design: (name, that value, why). They are
/// accepted with that value (Kafka's default), so that tools and manifests which set them work,
/// and refused with the reason for any other value.
pub const FIXED_TOPIC_CONFIGS: &[(&str, &str, &str)] = &[
    (
        "compression.type",
        "producer",
        "batches are stored as the producer compressed them",
    ),
    (
        "unclean.leader.election.enable",
        "false",
        "the lead moves only by configuration, to a broker an operator chose (docs/replication.md)",
    ),
    (
        "leader.replication.throttled.replicas",
        "",
        "replication is not throttled",
    ),
    (
        "follower.replication.throttled.replicas",
        "",
        "replication is not throttled",
    ),
    (
        "min.compaction.lag.ms",
        "0",
        "compaction may clean any record of a sealed segment",
    ),
    (
        "max.compaction.lag.ms",
        "9223372036854775807",
        "compaction runs on the broker's own schedule",
    ),
    (
        "segment.index.bytes",
        "10485760",
        "offset indexes are sparse and sized by their segment",
    ),
    (
        "segment.jitter.ms",
        "0",
        "segments roll at segment.ms exactly",
    ),
    (
        "preallocate",
        "false",
        "segment files grow as they are written",
    ),
    (
        "flush.messages",
        "9223372036854775807",
        "fsyncs follow flush.ms",
    ),
    (
        "message.timestamp.difference.max.ms",
        "9223372036854775807",
        "it is gone from Kafka 4.0: use message.timestamp.before.max.ms and message.timestamp.after.max.ms",
    ),
    (
        "remote.storage.enable",
        "false",
        "there is no tiered storage",
    ),
    (
        "local.retention.ms",
        "-2",
        "there is no tiered storage: retention.ms covers all data",
    ),
    (
        "local.retention.bytes",
        "-2",
        "there is no tiered storage: retention.bytes covers all data",
    ),
    (
        "compression.gzip.level",
        "-1",
        "batches are stored as the producer compressed them",
    ),
    (
        "compression.lz4.level",
        "9",
        "batches are stored as the producer compressed them",
    ),
    (
        "compression.zstd.level",
        "3",
        "batches are stored as the producer compressed them",
    ),
    (
        "file.delete.delay.ms",
        "60000",
        "a deleted segment's file goes once no fetch reads it",
    ),
];

/// Parses one override value; errors name the Kafka config.
struct Value<'a> {
    name: &'a str,
    text: &'a str,
}

impl Value<'_> {
    fn error(&self, message: String) -> ConfigError {
        ConfigError::InvalidTopicConfig {
            name: self.name.to_owned(),
            message,
        }
    }

    fn integer(&self, expected: &str) -> Result<i64, ConfigError> {
        self.text.trim().parse().map_err(|_| {
            self.error(format!(
                "invalid value {:?}; expected {expected}",
                self.text
            ))
        })
    }

    /// A config this broker has one value of by design (accepted so that tools which set it
    /// work, refused with `why` for any other value).
    fn fixed(&self, only: &str, why: &str) -> Result<(), ConfigError> {
        if self.text.trim().eq_ignore_ascii_case(only) {
            Ok(())
        } else {
            Err(self.error(format!(
                "invalid value {:?}; only {only:?} is supported: {why}",
                self.text
            )))
        }
    }

    fn bytes(&self, range: RangeInclusive<u64>) -> Result<u64, ConfigError> {
        let n = self.integer("an integer number of bytes")?;
        match u64::try_from(n) {
            Ok(n) if range.contains(&n) => Ok(n),
            // The most a client may set is Kafka's INT maximum (2 GiB itself, which earlier
            // builds stored, is still read).
            _ => Err(self.error(format!(
                "{n} is out of range; allowed: {}..={} ({} up to 2GiB less a byte)",
                range.start(),
                (*range.end()).min(i32::MAX as u64),
                format_bytes(*range.start()),
            ))),
        }
    }

    /// Milliseconds `>= min`.
    fn millis(&self, min: i64) -> Result<Duration, ConfigError> {
        let n = self.integer("an integer number of milliseconds")?;
        if n < min {
            return Err(self.error(format!("{n} is out of range; allowed: {min} or more")));
        }
        Ok(Duration::from_millis(n as u64))
    }

    /// Milliseconds `>= 0`, or -1 for `None`.
    fn opt_millis(&self) -> Result<Option<Duration>, ConfigError> {
        let expected = "an integer number of milliseconds, or -1 for forever";
        match self.integer(expected)? {
            -1 => Ok(None),
            n if n >= 0 => Ok(Some(Duration::from_millis(n as u64))),
            n => Err(self.error(format!("{n} is out of range; allowed: -1 or 0 or more"))),
        }
    }

    /// A number in 0.0..=1.0.
    fn ratio(&self) -> Result<f64, ConfigError> {
        let n: f64 = self.text.trim().parse().map_err(|_| {
            self.error(format!(
                "invalid value {:?}; expected a number from 0.0 to 1.0",
                self.text
            ))
        })?;
        if !(0.0..=1.0).contains(&n) {
            return Err(self.error(format!("{n} is out of range; allowed: 0.0..=1.0")));
        }
        Ok(n)
    }

    /// Milliseconds `>= 0`, or 9223372036854775807 (Kafka's "no bound") for `None`.
    fn bound_millis(&self) -> Result<Option<Duration>, ConfigError> {
        match self.integer("an integer number of milliseconds")? {
            i64::MAX => Ok(None),
            n if n >= 0 => Ok(Some(Duration::from_millis(n as u64))),
            n => Err(self.error(format!(
                "{n} is out of range; allowed: 0 or more (9223372036854775807: no bound)"
            ))),
        }
    }

    /// A whole number from 1 (Kafka's int config of at least 1).
    fn count(&self) -> Result<i32, ConfigError> {
        let n = self.integer("a whole number of 1 or more")?;
        match i32::try_from(n) {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(self.error(format!("{n} is out of range; allowed: 1..={}", i32::MAX))),
        }
    }

    /// Bytes `>= 0`, or -1 for `None`.
    fn opt_bytes(&self) -> Result<Option<u64>, ConfigError> {
        let expected = "an integer number of bytes, or -1 for unlimited";
        match self.integer(expected)? {
            -1 => Ok(None),
            n if n >= 0 => Ok(Some(n as u64)),
            n => Err(self.error(format!("{n} is out of range; allowed: -1 or 0 or more"))),
        }
    }

    fn choice<T: std::str::FromStr<Err = crate::UnknownValue>>(&self) -> Result<T, ConfigError> {
        self.text
            .trim()
            .parse()
            .map_err(|e: crate::UnknownValue| self.error(e.to_string()))
    }
}

impl LogConfig {
    /// Applies one per-topic override given with its Kafka name and Kafka units, e.g.
    /// `("retention.ms", "-1")` or `("cleanup.policy", "compact")`. See the module docs for
    /// the names accepted and how `flush.ms` maps onto `flush`. On error `self` is unchanged.
    pub fn apply_topic_override(
        &mut self,
        kafka_name: &str,
        value: &str,
    ) -> Result<(), ConfigError> {
        let v = Value {
            name: kafka_name,
            text: value,
        };
        match kafka_name {
            "segment.bytes" => self.segment_bytes = v.bytes(SEGMENT_BYTES)?,
            "segment.ms" => self.segment_age = v.millis(1)?,
            "retention.ms" => self.retention = v.opt_millis()?,
            "retention.bytes" => self.retention_bytes = v.opt_bytes()?,
            "cleanup.policy" => self.cleanup_policy = v.choice::<CleanupPolicy>()?,
            "message.timestamp.type" => self.timestamp_type = v.choice::<TimestampType>()?,
            "max.message.bytes" => self.max_message_bytes = v.bytes(MESSAGE_BYTES)?,
            "delete.retention.ms" => self.delete_retention = v.millis(0)?,
            "index.interval.bytes" => self.index_interval_bytes = v.bytes(INDEX_INTERVAL_BYTES)?,
            "min.cleanable.dirty.ratio" => self.min_cleanable_dirty_ratio = v.ratio()?,
            "message.timestamp.before.max.ms" => self.timestamp_before_max = v.bound_millis()?,
            "message.timestamp.after.max.ms" => self.timestamp_after_max = v.bound_millis()?,
            "min.insync.replicas" => self.min_insync_replicas = v.count()?,
            "flush.ms" => match v.millis(0)? {
                d if d.is_zero() => self.flush = FlushPolicy::Always,
                d if d.as_millis() == i64::MAX as u128 => self.flush = FlushPolicy::Never,
                d => {
                    self.flush = FlushPolicy::Interval;
                    self.flush_interval = d;
                }
            },
            _ => {
                if let Some((_, only, why)) =
                    FIXED_TOPIC_CONFIGS.iter().find(|(n, ..)| *n == kafka_name)
                {
                    return v.fixed(only, why);
                }
                return Err(ConfigError::UnknownTopicConfig {
                    name: kafka_name.to_owned(),
                    allowed: TOPIC_CONFIG_NAMES,
                });
            }
        }
        Ok(())
    }

    /// These settings with Kafka names and Kafka units (ms, bytes, -1), for DescribeConfigs.
    /// The names are [`TOPIC_CONFIG_NAMES`], in that order.
    pub fn to_topic_configs(&self) -> Vec<(&'static str, String)> {
        let ms = |d: Duration| units::duration_millis(d).to_string();
        let flush_ms = match self.flush {
            FlushPolicy::Never => i64::MAX,
            FlushPolicy::Always => 0,
            // At least 1 so that a sub-millisecond interval does not read back as `always`.
            FlushPolicy::Interval => {
                units::duration_millis(self.flush_interval).clamp(1, i64::MAX - 1)
            }
        };
        let mut configs = vec![
            ("segment.bytes", self.segment_bytes.to_string()),
            ("segment.ms", ms(self.segment_age)),
            ("retention.ms", self.retention.map_or("-1".into(), ms)),
            (
                "retention.bytes",
                self.retention_bytes.map_or("-1".into(), |b| b.to_string()),
            ),
            ("cleanup.policy", self.cleanup_policy.as_str().into()),
            (
                "message.timestamp.type",
                self.timestamp_type.as_str().into(),
            ),
            ("max.message.bytes", self.max_message_bytes.to_string()),
            ("delete.retention.ms", ms(self.delete_retention)),
            (
                "index.interval.bytes",
                self.index_interval_bytes.to_string(),
            ),
            ("flush.ms", flush_ms.to_string()),
            (
                "min.cleanable.dirty.ratio",
                format!("{:?}", self.min_cleanable_dirty_ratio),
            ),
            (
                "message.timestamp.before.max.ms",
                self.timestamp_before_max.map_or(i64::MAX.to_string(), ms),
            ),
            (
                "message.timestamp.after.max.ms",
                self.timestamp_after_max.map_or(i64::MAX.to_string(), ms),
            ),
            ("min.insync.replicas", self.min_insync_replicas.to_string()),
        ];
        configs.extend(
            FIXED_TOPIC_CONFIGS
                .iter()
                .map(|(name, value, _)| (*name, value.to_string())),
        );
        configs
    }
}
