//! DescribeConfigs (key 32): a topic's effective configs in Kafka names and units, each marked
//! as a per-topic override (DYNAMIC_TOPIC_CONFIG), set by the broker's `[log]` section
//! (STATIC_BROKER_CONFIG) or Kafka's default (DEFAULT_CONFIG), with synonyms on request; for the
//! broker resource, the `[log]` settings under Kafka's broker config names (`log.retention.ms`,
//! `message.max.bytes`, ...) and the other settings Kafka tools look for (`num.partitions`,
//! `auto.create.topics.enable`, `log.dirs`, the group timeouts, ...); for a group resource, its
//! own `consumer.session.timeout.ms` and `consumer.heartbeat.interval.ms` over the broker's
//! (`crate::groups::config`, source GROUP_CONFIG); the broker's log levels (BROKER_LOGGER). The
//! client needs DescribeConfigs on the topic or group, or on the cluster for the broker
//! (`crate::acl`).

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::s;
use crate::acl::{Operation, ResourceType};
use crate::protocol::Ctx;

/// Whether the ACLs refuse the client `op` (DescribeConfigs or AlterConfigs) on a config
/// resource: TOPIC_AUTHORIZATION_FAILED for a topic, GROUP_AUTHORIZATION_FAILED for a group,
/// CLUSTER_AUTHORIZATION_FAILED for the broker and its loggers.
pub(crate) fn refused(ctx: &Ctx, op: Operation, resource_type: i8, name: &str) -> Option<i16> {
    let (resource, name, code) = match resource_type {
        RESOURCE_TOPIC => (ResourceType::Topic, name, E::TopicAuthorizationFailed),
        RESOURCE_GROUP => (ResourceType::Group, name, E::GroupAuthorizationFailed),
        RESOURCE_BROKER | RESOURCE_BROKER_LOGGER => (
            ResourceType::Cluster,
            crate::acl::CLUSTER_NAME,
            E::ClusterAuthorizationFailed,
        ),
        _ => return None,
    };
    (!ctx.allowed(op, resource, name)).then_some(code.code())
}

pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;
/// The broker's log levels (`crate::logging`), Kafka's broker loggers.
pub const RESOURCE_BROKER_LOGGER: i8 = 8;
/// A consumer group's own configs (`crate::groups::config`).
pub const RESOURCE_GROUP: i8 = 32;

/// Why a broker resource named `name` is not this broker's (`me`), as Kafka says it: a broker
/// answers for itself only ("" asks for the cluster's defaults, which its loggers have not).
pub(crate) fn other_broker(resource_type: i8, name: &str, me: i32) -> Option<String> {
    if name.is_empty() {
        return (resource_type == RESOURCE_BROKER_LOGGER)
            .then(|| "Broker id must not be empty".to_string());
    }
    match name.parse::<i32>() {
        Ok(id) if id == me => None,
        Ok(id) => Some(format!(
            "Unexpected broker id, expected {me} or empty string, but received {id}"
        )),
        Err(_) => Some(format!(
            "Broker id must be an integer, but it is: {}",
            crate::log_budget::client_text(name)
        )),
    }
}
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
const SOURCE_BROKER_LOGGER: i8 = 6;
const SOURCE_GROUP: i8 = 8;
/// Kafka's `ConfigType` of an int.
const TYPE_INT: i8 = 3;

/// Each topic config with its broker-level name (Kafka's synonyms, which the broker resource
/// lists) and its type (Kafka's `ConfigType`: 1 boolean, 2 string, 3 int, 5 long, 6 double,
/// 7 list).
const NAMES: &[(&str, &str, i8)] = &[
    ("segment.bytes", "log.segment.bytes", 3),
    ("segment.ms", "log.roll.ms", 5),
    ("retention.ms", "log.retention.ms", 5),
    ("retention.bytes", "log.retention.bytes", 5),
    ("cleanup.policy", "log.cleanup.policy", 7),
    ("message.timestamp.type", "log.message.timestamp.type", 2),
    ("max.message.bytes", "message.max.bytes", 3),
    ("delete.retention.ms", "log.cleaner.delete.retention.ms", 5),
    ("index.interval.bytes", "log.index.interval.bytes", 3),
    ("flush.ms", "log.flush.interval.ms", 5),
    (
        "min.cleanable.dirty.ratio",
        "log.cleaner.min.cleanable.ratio",
        6,
    ),
    ("file.delete.delay.ms", "log.segment.delete.delay.ms", 5),
    ("compression.type", "compression.type", 2),
    ("min.insync.replicas", "min.insync.replicas", 3),
    (
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
        1,
    ),
    (
        "leader.replication.throttled.replicas",
        "leader.replication.throttled.replicas",
        7,
    ),
    (
        "follower.replication.throttled.replicas",
        "follower.replication.throttled.replicas",
        7,
    ),
    (
        "min.compaction.lag.ms",
        "log.cleaner.min.compaction.lag.ms",
        5,
    ),
    (
        "max.compaction.lag.ms",
        "log.cleaner.max.compaction.lag.ms",
        5,
    ),
    ("segment.index.bytes", "log.index.size.max.bytes", 3),
    ("segment.jitter.ms", "log.roll.jitter.ms", 5),
    ("preallocate", "log.preallocate", 1),
    ("flush.messages", "log.flush.interval.messages", 5),
    (
        "message.timestamp.difference.max.ms",
        "log.message.timestamp.difference.max.ms",
        5,
    ),
    (
        "message.timestamp.before.max.ms",
        "log.message.timestamp.before.max.ms",
        5,
    ),
    (
        "message.timestamp.after.max.ms",
        "log.message.timestamp.after.max.ms",
        5,
    ),
    ("remote.storage.enable", "remote.storage.enable", 1),
    ("local.retention.ms", "log.local.retention.ms", 5),
    ("local.retention.bytes", "log.local.retention.bytes", 5),
    ("compression.gzip.level", "compression.gzip.level", 3),
    ("compression.lz4.level", "compression.lz4.level", 3),
    ("compression.zstd.level", "compression.zstd.level", 3),
];

/// What a topic config does, as DescribeConfigs tells a client that asks for documentation
/// (v3+); the broker-level name of one is looked up by its topic name.
fn documentation(name: &str) -> Option<&'static str> {
    let topic_name = NAMES
        .iter()
        .find(|(n, bn, _)| *n == name || *bn == name)
        .map_or(name, |(n, _, _)| n);
    Some(match topic_name {
        "segment.bytes" => {
            "The size at which a partition's active segment file is closed and a new one started."
        }
        "segment.ms" => {
            "The age at which a partition's active segment is closed, even if not full, so that retention and compaction can act on it."
        }
        "retention.ms" => {
            "How long records are kept before their segment may be deleted (-1: no time limit). Applies with cleanup.policy delete."
        }
        "retention.bytes" => {
            "The most bytes a partition keeps before its oldest segments are deleted (-1: no size limit)."
        }
        "cleanup.policy" => {
            "What happens to old segments: delete (by retention.ms and retention.bytes), compact (keep the latest record of each key), or both."
        }
        "message.timestamp.type" => {
            "Whether records keep the timestamp the producer gave (CreateTime) or take the broker's clock when written (LogAppendTime)."
        }
        "max.message.bytes" => {
            "The largest record batch the broker accepts for the topic, after compression."
        }
        "delete.retention.ms" => {
            "On compacted topics, how long a tombstone (a null value) and a transaction marker are kept after compaction reaches them, so consumers can see the delete."
        }
        "index.interval.bytes" => {
            "How many bytes of records lie between two entries of a segment's offset index."
        }
        "flush.ms" => {
            "How often written records are forced to disk with fsync; otherwise the operating system writes them when it chooses."
        }
        "min.cleanable.dirty.ratio" => {
            "The share of a compacted partition written since its last cleaning at which it is cleaned again."
        }
        "file.delete.delay.ms" => {
            "How long a deleted segment's files wait before they are removed from disk."
        }
        "compression.type" => {
            "The codec the broker stores batches with; producer keeps the producer's."
        }
        "min.insync.replicas" => {
            "The least number of in-sync replicas for a write with acks=all to be accepted."
        }
        "unclean.leader.election.enable" => {
            "Whether a replica that is not in sync may become leader, losing records."
        }
        "leader.replication.throttled.replicas" => {
            "Replicas whose replication traffic is throttled on the leader's side."
        }
        "follower.replication.throttled.replicas" => {
            "Replicas whose replication traffic is throttled on the follower's side."
        }
        "min.compaction.lag.ms" => "The least time a record stays uncompacted after it is written.",
        "max.compaction.lag.ms" => "The longest a record may stay uncompacted after it is written.",
        "segment.index.bytes" => "The size of a segment's offset index file.",
        "segment.jitter.ms" => {
            "A random time subtracted from segment.ms, so that segments of many partitions do not roll at once."
        }
        "preallocate" => "Whether a new segment file is allocated on disk at its full size.",
        "flush.messages" => "How many records are written between two fsyncs of the partition.",
        "message.timestamp.difference.max.ms" => {
            "The largest difference allowed between a CreateTime record's timestamp and the broker's clock (replaced by the before and after bounds)."
        }
        "message.timestamp.before.max.ms" => {
            "How far in the past a CreateTime record's timestamp may be, compared with the broker's clock."
        }
        "message.timestamp.after.max.ms" => {
            "How far in the future a CreateTime record's timestamp may be, compared with the broker's clock."
        }
        "remote.storage.enable" => {
            "Whether the topic's older segments are moved to remote (tiered) storage."
        }
        "local.retention.ms" => {
            "With remote storage, how long segments stay on local disk (-2: retention.ms)."
        }
        "local.retention.bytes" => {
            "With remote storage, how many bytes stay on local disk (-2: retention.bytes)."
        }
        "compression.gzip.level" => {
            "The gzip level the broker compresses with, when it compresses."
        }
        "compression.lz4.level" => "The lz4 level the broker compresses with, when it compresses.",
        "compression.zstd.level" => {
            "The zstd level the broker compresses with, when it compresses."
        }
        "consumer.session.timeout.ms" => {
            "How long a consumer of the group (group.protocol=consumer) may go without a heartbeat before it leaves the group."
        }
        "consumer.heartbeat.interval.ms" => {
            "How often the group's consumers (group.protocol=consumer) are told to heartbeat."
        }
        _ => return None,
    })
}

/// Topic configs whose Kafka default lives under an hours key: Kafka reports that default as
/// the synonym `log.retention.hours=168`, not under the milliseconds name the broker sets.
const DEFAULT_IN_HOURS: &[(&str, &str)] = &[
    ("retention.ms", "log.retention.hours"),
    ("segment.ms", "log.roll.hours"),
    ("segment.jitter.ms", "log.roll.jitter.hours"),
];

const MS_PER_HOUR: i64 = 3_600_000;

/// The name and value under which Kafka reports topic config `k`'s default `value`, as a
/// synonym of source DEFAULT_CONFIG.
fn default_synonym(k: &str, broker_name: &str, value: String) -> (String, String) {
    let hours = DEFAULT_IN_HOURS.iter().find(|(n, _)| *n == k);
    match (hours, value.parse::<i64>()) {
        (Some((_, name)), Ok(ms)) if ms >= 0 && ms % MS_PER_HOUR == 0 => {
            (name.to_string(), (ms / MS_PER_HOUR).to_string())
        }
        _ => (broker_name.to_string(), value),
    }
}

/// The broker's settings outside `[log]` under Kafka's broker config names: (name, value,
/// Kafka's default where it has one (a value equal to it is reported as the default), type).
/// Read-only, as the whole broker resource is: they change with the config file and a restart.
fn broker_settings(
    cfg: &edge_config::Config,
) -> Vec<(&'static str, String, Option<&'static str>, i8)> {
    let ms = |d: std::time::Duration| edge_config::units::duration_millis(d).to_string();
    let node = cfg.broker.node_id.to_string();
    vec![
        ("node.id", node.clone(), None, 3),
        ("broker.id", node, None, 3),
        (
            "log.dirs",
            cfg.broker.data_dir.display().to_string(),
            None,
            2,
        ),
        (
            "num.partitions",
            cfg.broker.default_partitions.to_string(),
            Some("1"),
            3,
        ),
        (
            "auto.create.topics.enable",
            cfg.broker.auto_create_topics.to_string(),
            Some("true"),
            1,
        ),
        (
            "default.replication.factor",
            cfg.cluster.brokers.len().max(1).to_string(),
            Some("1"),
            3,
        ),
        (
            "socket.request.max.bytes",
            cfg.broker.max_request_bytes.to_string(),
            Some("104857600"),
            3,
        ),
        (
            "connections.max.idle.ms",
            ms(cfg.broker.connections_max_idle),
            Some("600000"),
            5,
        ),
        (
            "connections.max.reauth.ms",
            ms(cfg.broker.connections_max_reauth),
            Some("0"),
            5,
        ),
        (
            "max.connections.per.ip",
            match cfg.broker.max_connections_per_ip {
                0 => i32::MAX.to_string(),
                n => n.to_string(),
            },
            Some("2147483647"),
            3,
        ),
        (
            "max.connections.per.ip.overrides",
            cfg.broker.max_connections_per_ip_overrides.join(","),
            Some(""),
            2,
        ),
        (
            "fetch.max.bytes",
            cfg.broker.fetch_max_bytes.to_string(),
            Some("57671680"),
            3,
        ),
        (
            "max.incremental.fetch.session.cache.slots",
            cfg.broker.max_fetch_sessions.to_string(),
            Some("1000"),
            3,
        ),
        ("log.retention.hours", "168".to_string(), Some("168"), 3),
        (
            "log.retention.check.interval.ms",
            ms(cfg.log.retention_check_interval),
            Some("300000"),
            5,
        ),
        (
            "log.cleaner.backoff.ms",
            // As the broker looks: at least as often as retention does.
            ms(cfg
                .log
                .compaction_check_interval
                .min(cfg.log.retention_check_interval)),
            Some("15000"),
            5,
        ),
        (
            "offsets.retention.minutes",
            (cfg.groups.offsets_retention.as_secs() / 60).to_string(),
            Some("10080"),
            3,
        ),
        (
            "group.consumer.session.timeout.ms",
            ms(cfg.groups.consumer_session_timeout),
            Some("45000"),
            3,
        ),
        (
            "group.consumer.heartbeat.interval.ms",
            ms(cfg.groups.consumer_heartbeat_interval),
            Some("5000"),
            3,
        ),
        (
            "group.consumer.min.session.timeout.ms",
            ms(cfg.groups.consumer_min_session_timeout),
            Some(KAFKA_BOUNDS[0]),
            3,
        ),
        (
            "group.consumer.max.session.timeout.ms",
            ms(cfg.groups.consumer_max_session_timeout),
            Some(KAFKA_BOUNDS[1]),
            3,
        ),
        (
            "group.consumer.min.heartbeat.interval.ms",
            ms(cfg.groups.consumer_min_heartbeat_interval),
            Some(KAFKA_BOUNDS[2]),
            3,
        ),
        (
            "group.consumer.max.heartbeat.interval.ms",
            ms(cfg.groups.consumer_max_heartbeat_interval),
            Some(KAFKA_BOUNDS[3]),
            3,
        ),
        (
            "group.min.session.timeout.ms",
            ms(cfg.groups.min_session_timeout),
            Some("6000"),
            3,
        ),
        (
            "group.max.session.timeout.ms",
            ms(cfg.groups.max_session_timeout),
            Some("1800000"),
            3,
        ),
        (
            "group.initial.rebalance.delay.ms",
            ms(cfg.groups.initial_rebalance_delay),
            Some("3000"),
            3,
        ),
    ]
}

/// Kafka's defaults of the bounds of a group's own configs (`crate::groups::ConsumerBounds`'s
/// default), in milliseconds: least and most session timeout, least and most heartbeat
/// interval.
const KAFKA_BOUNDS: [&str; 4] = ["45000", "60000", "5000", "15000"];

/// One config as reported: name, value, source, type, and its synonyms (name, value, source),
/// most specific first.
type Entry = (String, String, i8, i8, Vec<(String, String, i8)>);

/// Group `group`'s configs: each key's own value (GROUP_CONFIG) over the broker's
/// `group.consumer.*` setting (STATIC_BROKER_CONFIG where it is not Kafka's default) and
/// Kafka's default.
fn group_entries(ctx: &Ctx, group: &str) -> Vec<Entry> {
    use crate::groups::config::{self, KEYS, SESSION_TIMEOUT};
    let coordinator = &ctx.broker.groups;
    let own = coordinator.config().consumer;
    let overrides = coordinator.group_config(group);
    KEYS.iter()
        .filter_map(|&key| {
            let (broker_name, kafka_default) = config::broker_synonym(key)?;
            let broker_value = if key == SESSION_TIMEOUT {
                own.session_timeout
            } else {
                own.heartbeat_interval
            }
            .as_millis()
            .to_string();
            let mut synonyms = Vec::new();
            if let Some(v) = overrides.get(key) {
                synonyms.push((key.to_string(), v.to_string(), SOURCE_GROUP));
            }
            if broker_value != kafka_default.to_string() {
                synonyms.push((broker_name.to_string(), broker_value, SOURCE_STATIC_BROKER));
            }
            synonyms.push((
                broker_name.to_string(),
                kafka_default.to_string(),
                SOURCE_DEFAULT,
            ));
            let (value, source) = (synonyms[0].1.clone(), synonyms[0].2);
            Some((key.to_string(), value, source, TYPE_INT, synonyms))
        })
        .collect()
}

pub async fn handle(ctx: Ctx, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let b = &ctx.broker;
    // What `[log]` sets (the broker's static config) and Kafka's defaults, by topic config name.
    let broker_values = b.config.topic_defaults().to_topic_configs();
    let defaults = edge_config::LogConfig::default().to_topic_configs();
    let lookup = |list: &[(&'static str, String)], k: &str| {
        list.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let broker_name = |k: &str| -> String {
        NAMES
            .iter()
            .find(|(n, _, _)| *n == k)
            .map_or(k, |(_, bn, _)| *bn)
            .to_string()
    };
    // The broker-level synonyms of topic config `k`: the static `[log]` value if it differs from
    // Kafka's default, then the default.
    let broker_level = |k: &str| -> Vec<(String, String, i8)> {
        let (set, default) = (lookup(&broker_values, k), lookup(&defaults, k));
        let mut out = Vec::new();
        if set != default {
            out.push((broker_name(k), set, SOURCE_STATIC_BROKER));
        }
        let (name, value) = default_synonym(k, &broker_name(k), default);
        out.push((name, value, SOURCE_DEFAULT));
        out
    };
    let config_type = |k: &str| {
        NAMES
            .iter()
            .find(|(n, bn, _)| *n == k || *bn == k)
            .map_or(0, |(_, _, t)| *t)
    };
    let resources = super::first_of_each(req.resources, |r| {
        (
            r.resource_type,
            r.resource_name.clone(),
            r.configuration_keys.clone(),
        )
    });
    let results = resources
        .into_iter()
        .map(|r| {
            let mut out = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            if let Some(code) = refused(
                &ctx,
                Operation::DescribeConfigs,
                r.resource_type,
                &r.resource_name,
            ) {
                return out.with_error_code(code).with_error_message(None);
            }
            if let Some(why) =
                other_broker(r.resource_type, &r.resource_name, b.config.broker.node_id)
                    .filter(|_| matches!(r.resource_type, RESOURCE_BROKER | RESOURCE_BROKER_LOGGER))
            {
                out.error_code = E::InvalidRequest.code();
                out.error_message = Some(s(why));
                return out;
            }
            let entries: Vec<Entry> = match r.resource_type {
                RESOURCE_TOPIC => match b.catalog.get(&r.resource_name) {
                    Some(t) => b
                        .catalog
                        .effective_configs(&t)
                        .into_iter()
                        .map(|(k, v, overridden)| {
                            let mut synonyms = Vec::new();
                            if overridden {
                                synonyms.push((k.clone(), v.clone(), SOURCE_TOPIC));
                            }
                            synonyms.extend(broker_level(&k));
                            let source = synonyms[0].2;
                            let ty = config_type(&k);
                            (k, v, source, ty, synonyms)
                        })
                        .collect(),
                    // As Kafka: a name no topic can have is INVALID_TOPIC_EXCEPTION.
                    None => {
                        match crate::catalog::check_topic_name_syntax(&r.resource_name) {
                            Err(e) => {
                                out.error_code = E::InvalidTopicException.code();
                                out.error_message = Some(s(e.to_string()));
                            }
                            Ok(()) => {
                                out.error_code = E::UnknownTopicOrPartition.code();
                                out.error_message =
                                    Some(s(format!("unknown topic {}", r.resource_name)));
                            }
                        }
                        Vec::new()
                    }
                },
                // "": the cluster's dynamic defaults, as Kafka answers it, of which there are
                // none (every broker config comes from the config file).
                RESOURCE_BROKER if r.resource_name.is_empty() => Vec::new(),
                // The broker's own names (log.retention.ms, message.max.bytes, ...), as Kafka
                // reports its broker configs, then those of its other settings.
                RESOURCE_BROKER => broker_values
                    .iter()
                    .map(|(k, v)| {
                        let synonyms = broker_level(k);
                        let source = synonyms[0].2;
                        (broker_name(k), v.clone(), source, config_type(k), synonyms)
                    })
                    .chain(broker_settings(&b.config).into_iter().map(
                        |(name, value, kafka_default, ty)| {
                            let mut synonyms = Vec::new();
                            if kafka_default != Some(value.as_str()) {
                                synonyms.push((
                                    name.to_string(),
                                    value.clone(),
                                    SOURCE_STATIC_BROKER,
                                ));
                            }
                            if let Some(d) = kafka_default {
                                synonyms.push((name.to_string(), d.to_string(), SOURCE_DEFAULT));
                            }
                            let source = synonyms[0].2;
                            (name.to_string(), value, source, ty, synonyms)
                        },
                    ))
                    .collect(),
                // A group's own configs over the broker's, whether or not the group exists.
                RESOURCE_GROUP if r.resource_name.is_empty() => {
                    out.error_code = E::InvalidRequest.code();
                    out.error_message = Some(s("a group config needs a group id"));
                    Vec::new()
                }
                RESOURCE_GROUP => group_entries(&ctx, &r.resource_name),
                // Each logger's level, which IncrementalAlterConfigs changes.
                RESOURCE_BROKER_LOGGER => match crate::logging::describe() {
                    Ok(loggers) => loggers
                        .into_iter()
                        .map(|(name, level)| (name, level, SOURCE_BROKER_LOGGER, 2, Vec::new()))
                        .collect(),
                    Err(e) => {
                        out.error_code = E::InvalidRequest.code();
                        out.error_message = Some(s(e.to_string()));
                        Vec::new()
                    }
                },
                other => {
                    out.error_code = E::InvalidRequest.code();
                    out.error_message = Some(s(format!("unsupported resource type {other}")));
                    Vec::new()
                }
            };
            out.configs = entries
                .into_iter()
                // Null or an empty list asks for every key, as in Kafka.
                .filter(|(k, ..)| match &r.configuration_keys {
                    Some(keys) if !keys.is_empty() => keys.iter().any(|w| w.as_str() == k),
                    _ => true,
                })
                .map(|(k, v, source, ty, synonyms)| {
                    let synonyms = if req.include_synonyms {
                        synonyms
                            .into_iter()
                            .map(|(n, v, src)| {
                                DescribeConfigsSynonym::default()
                                    .with_name(s(n))
                                    .with_value(Some(s(v)))
                                    .with_source(src)
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let doc = req
                        .include_documentation
                        .then(|| documentation(&k))
                        .flatten();
                    DescribeConfigsResourceResult::default()
                        .with_documentation(doc.map(s))
                        .with_name(s(k))
                        .with_value(Some(s(v)))
                        .with_config_source(source)
                        .with_read_only(r.resource_type == RESOURCE_BROKER)
                        .with_config_type(ty)
                        .with_synonyms(synonyms)
                })
                .collect();
            out
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bounds_reported_as_kafkas_defaults_are_the_coordinators_defaults() {
        let b = crate::groups::ConsumerBounds::default();
        let ms = |d: std::time::Duration| d.as_millis().to_string();
        assert_eq!(
            super::KAFKA_BOUNDS,
            [
                ms(b.min_session_timeout),
                ms(b.max_session_timeout),
                ms(b.min_heartbeat_interval),
                ms(b.max_heartbeat_interval),
            ]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        );
    }
}
