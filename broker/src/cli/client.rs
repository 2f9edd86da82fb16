//! Kafka client commands, built on librdkafka (the rdkafka crate), so they work against Runnel
//! and any other Kafka-compatible broker alike.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::TopicPartitionList;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use super::{Conn, TopicsCommand};

pub(super) const TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Admin requests give up after [`TIMEOUT`].
pub(super) fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(TIMEOUT))
        .request_timeout(Some(TIMEOUT))
}

pub(super) fn admin(conn: &Conn) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    conn.client_config()?
        .create()
        .map_err(|e| super::client_error(e, "cannot create a Kafka admin client"))
}

pub fn topics(cmd: TopicsCommand) -> anyhow::Result<()> {
    match cmd {
        TopicsCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
            if_not_exists,
            conn,
        } => {
            let pairs = config_pairs(&configs)?;
            // -1: the broker's default (every broker of a cluster holds every topic).
            let replication = TopicReplication::Fixed(replication_factor);
            let mut topic = NewTopic::new(&name, partitions, replication);
            for (k, v) in &pairs {
                topic = topic.set(k, v);
            }
            let admin = admin(&conn)?;
            let results = runtime()?.block_on(admin.create_topics([&topic], &admin_options()))?;
            for r in results {
                match r {
                    Ok(t) => out!("created topic {t}"),
                    Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))
                        if if_not_exists => {}
                    // librdkafka's admin result carries the code without the broker's message:
                    // the broker's reason, asked again without changing anything, else what is
                    // wrong with the configs given, by the same check Runnel runs.
                    Err((t, code)) => match refusal_of_create(
                        &conn,
                        &topic_request(&name, partitions, replication_factor, &pairs),
                    ) {
                        Some(why) => bail!("cannot create topic {t}: {why}"),
                        None if code == rdkafka::types::RDKafkaErrorCode::InvalidConfig => {
                            bail!("cannot create topic {t}: {code}{}", config_refusal(&pairs))
                        }
                        None => bail!("cannot create topic {t}: {code}"),
                    },
                }
            }
            Ok(())
        }
        TopicsCommand::Alter {
            name,
            partitions,
            configs,
            delete_configs,
            conn,
        } => alter_topic(&conn, &name, partitions, &configs, &delete_configs),
        TopicsCommand::Delete {
            name,
            if_exists,
            conn,
        } => {
            let admin = admin(&conn)?;
            let results = runtime()?.block_on(admin.delete_topics(&[&name], &admin_options()))?;
            for r in results {
                match r {
                    Ok(t) => out!("deleted topic {t}"),
                    Err((_, rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition))
                        if if_exists => {}
                    Err((t, code)) => bail!("cannot delete topic {t}: {code}"),
                }
            }
            Ok(())
        }
        TopicsCommand::List { conn } => {
            let consumer = plain_consumer(&conn)?;
            let md = metadata(&consumer, None)?;
            for t in md.topics() {
                out!("{}", t.name());
            }
            Ok(())
        }
        TopicsCommand::Describe {
            name,
            under_replicated_partitions,
            unavailable_partitions,
            conn,
        } => {
            let consumer = plain_consumer(&conn)?;
            let md = metadata(&consumer, name.as_deref())?;
            if let Some(name) = &name {
                let Some(t) = md.topics().first() else {
                    bail!("no metadata for {name}")
                };
                if let Some(e) = t.error() {
                    bail!(
                        "topic {name}: {}",
                        rdkafka::types::RDKafkaErrorCode::from(e)
                    );
                }
            }
            let shown = |p: &rdkafka::metadata::MetadataPartition| {
                if under_replicated_partitions {
                    p.isr().len() < p.replicas().len()
                } else if unavailable_partitions {
                    p.leader() < 0
                } else {
                    true
                }
            };
            let filtered = under_replicated_partitions || unavailable_partitions;
            let admin = admin(&conn)?;
            let mut topics: Vec<_> = md.topics().iter().collect();
            topics.sort_by_key(|t| t.name());
            for t in topics {
                let partitions: Vec<_> = t.partitions().iter().filter(|p| shown(p)).collect();
                if filtered && partitions.is_empty() {
                    continue;
                }
                out!("topic: {}  partitions: {}", t.name(), t.partitions().len());
                for p in partitions {
                    let (low, high) = consumer
                        .fetch_watermarks(t.name(), p.id(), TIMEOUT)
                        .unwrap_or((-1, -1));
                    out!(
                        "  partition {}  leader {}  replicas {:?}  isr {:?}  offsets {}..{}",
                        p.id(),
                        p.leader(),
                        p.replicas(),
                        p.isr(),
                        low,
                        high
                    );
                }
                // The topic's own configs, as kafka-topics --describe lists them.
                if !filtered {
                    let own = own_configs(&admin, t.name())?;
                    if !own.is_empty() {
                        let own: Vec<String> =
                            own.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        out!("  configs: {}", own.join(" "));
                    }
                }
            }
            Ok(())
        }
    }
}

/// `KEY=VALUE` arguments as pairs.
pub(super) fn config_pairs(configs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    configs
        .iter()
        .map(|c| {
            c.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--config {c}: expected KEY=VALUE"))
        })
        .collect()
}

/// What is wrong with the configs given, by the same check Runnel runs: librdkafka's admin
/// results carry INVALID_CONFIG without the broker's message.
fn config_refusal(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .find_map(|(k, v)| {
            edge_config::LogConfig::default()
                .apply_topic_override(k, v)
                .err()
        })
        .map_or_else(String::new, |why| format!(": {why}"))
}

/// A topic's own config overrides, sorted by name.
fn own_configs(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let specifier = rdkafka::admin::ResourceSpecifier::Topic(topic);
    let described = runtime()?.block_on(admin.describe_configs([&specifier], &admin_options()))?;
    let mut own = std::collections::BTreeMap::new();
    for result in described {
        let result = result.map_err(|code| anyhow::anyhow!("topic {topic}: {code}"))?;
        for e in result.entries {
            if e.source == rdkafka::admin::ConfigSource::DynamicTopic {
                own.insert(e.name, e.value.unwrap_or_default());
            }
        }
    }
    Ok(own)
}

fn alter_topic(
    conn: &Conn,
    name: &str,
    partitions: Option<i32>,
    configs: &[String],
    delete_configs: &[String],
) -> anyhow::Result<()> {
    if partitions.is_none() && configs.is_empty() && delete_configs.is_empty() {
        bail!("say what to change: --partitions N, --config KEY=VALUE or --delete-config KEY");
    }
    let pairs = config_pairs(configs)?;
    let admin = admin(conn)?;
    let rt = runtime()?;
    // As kafka-configs: deleting a config the topic does not set is a mistake (a typo, say).
    if !delete_configs.is_empty() {
        let own = own_configs(&admin, name)?;
        let unset: Vec<&str> = delete_configs
            .iter()
            .filter(|k| !own.contains_key(*k))
            .map(String::as_str)
            .collect();
        if !unset.is_empty() {
            bail!(
                "topic {name} has no config of its own named {}: nothing to delete (its own: {})",
                unset.join(", "),
                if own.is_empty() {
                    "none".to_string()
                } else {
                    own.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            );
        }
    }
    // The config changes are checked by the broker (validate_only) before anything changes,
    // so that a refused value leaves the partitions as they were too.
    let configs_request = (!pairs.is_empty() || !delete_configs.is_empty())
        .then(|| incremental_alter_request(TOPIC, name, &pairs, delete_configs));
    let mut peer = match &configs_request {
        Some(request) => {
            let mut peer = rt.block_on(super::quotas::controller(conn))?;
            let checked = request.clone().with_validate_only(true);
            config_refusal_of(name, rt.block_on(peer.call(&checked, 0))?)?;
            Some(peer)
        }
        None => None,
    };
    if let Some(n) = partitions {
        let count = usize::try_from(n)
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("--partitions {n}: expected a number of partitions"))?;
        let new = rdkafka::admin::NewPartitions::new(name, count);
        for r in rt.block_on(admin.create_partitions([&new], &admin_options()))? {
            match r {
                Ok(t) => out!("topic {t}: {count} partitions"),
                Err((t, code)) => {
                    // librdkafka keeps the broker's message from us: asked again, without
                    // changing anything, else the likely reason.
                    if let Some(why) = refusal_of_partitions(conn, name, n) {
                        bail!("cannot change the partitions of {t}: {why}");
                    }
                    let has = plain_consumer(conn)
                        .ok()
                        .and_then(|c| metadata(&c, Some(name)).ok())
                        .and_then(|md| md.topics().first().map(|t| t.partitions().len()))
                        .filter(|&has| has >= count)
                        .map(|has| format!(" (it has {has}: partitions can be added, not removed)"))
                        .unwrap_or_default();
                    bail!("cannot change the partitions of {t}: {code}{has}")
                }
            }
        }
    }
    let (Some(peer), Some(request)) = (peer.as_mut(), configs_request) else {
        return Ok(());
    };
    config_refusal_of(name, rt.block_on(peer.call(&request, 0))?)?;
    let own = own_configs(&admin, name)?;
    let shown: Vec<String> = own.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if shown.is_empty() {
        out!("topic {name}: configs: none of its own (the broker's defaults)");
    } else {
        out!("topic {name}: configs: {}", shown.join(" "));
    }
    Ok(())
}

/// The CreateTopics request for `name`, as validate_only: what librdkafka sent, to be asked
/// again by Runnel's own client for the broker's reason.
fn topic_request(
    name: &str,
    partitions: i32,
    replication_factor: i32,
    pairs: &[(String, String)],
) -> kafka_protocol::messages::CreateTopicsRequest {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::{CreateTopicsRequest, TopicName};
    let st = |t: &str| kafka_protocol::protocol::StrBytes::from_string(t.to_string());
    let configs = pairs
        .iter()
        .map(|(k, v)| {
            CreatableTopicConfig::default()
                .with_name(st(k))
                .with_value(Some(st(v)))
        })
        .collect();
    CreateTopicsRequest::default()
        .with_validate_only(true)
        .with_timeout_ms(10_000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(st(name)))
                .with_num_partitions(partitions)
                .with_replication_factor(i16::try_from(replication_factor).unwrap_or(i16::MAX))
                .with_configs(configs),
        ])
}

/// The broker's reason for refusing `request` (validate_only), asked by Runnel's own client;
/// `None` if it cannot be asked (a login it does not speak, say) or gives none.
fn refusal_of_create(
    conn: &Conn,
    request: &kafka_protocol::messages::CreateTopicsRequest,
) -> Option<String> {
    let answer = runtime().ok()?.block_on(async {
        let mut peer = super::quotas::controller(conn).await.ok()?;
        peer.call(request, 5).await.ok()
    })?;
    // A topic the first request made after all (its answer timed out) is no reason it failed.
    const TOPIC_ALREADY_EXISTS: i16 = 36;
    let t = answer
        .topics
        .first()
        .filter(|t| t.error_code != 0 && t.error_code != TOPIC_ALREADY_EXISTS)?;
    Some(super::quotas::refusal(
        t.error_code,
        t.error_message.as_deref(),
    ))
}

/// [`refusal_of_create`] for growing topic `name` to `count` partitions.
fn refusal_of_partitions(conn: &Conn, name: &str, count: i32) -> Option<String> {
    use kafka_protocol::messages::CreatePartitionsRequest;
    use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
    let request = CreatePartitionsRequest::default()
        .with_validate_only(true)
        .with_timeout_ms(10_000)
        .with_topics(vec![
            CreatePartitionsTopic::default()
                .with_name(kafka_protocol::messages::TopicName(
                    kafka_protocol::protocol::StrBytes::from_string(name.to_string()),
                ))
                .with_count(count),
        ]);
    let answer = runtime().ok()?.block_on(async {
        let mut peer = super::quotas::controller(conn).await.ok()?;
        peer.call(&request, 1).await.ok()
    })?;
    let t = answer.results.first().filter(|t| t.error_code != 0)?;
    Some(super::quotas::refusal(
        t.error_code,
        t.error_message.as_deref(),
    ))
}

/// The config resource types of DescribeConfigs and IncrementalAlterConfigs.
const TOPIC: i8 = 2;
pub(super) const GROUP: i8 = 32;

/// IncrementalAlterConfigs of resource `name` (a topic, a group): `pairs` set, `deletes`
/// removed. Sent by the broker's own client (as `runnel quotas`): librdkafka here has only the
/// legacy AlterConfigs, which replaces every override, and rust-rdkafka's result of it drops
/// the broker's refusal.
pub(super) fn incremental_alter_request(
    resource_type: i8,
    name: &str,
    pairs: &[(String, String)],
    deletes: &[String],
) -> kafka_protocol::messages::IncrementalAlterConfigsRequest {
    use kafka_protocol::messages::IncrementalAlterConfigsRequest;
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    let st = |t: &str| kafka_protocol::protocol::StrBytes::from_string(t.to_string());
    const SET: i8 = 0;
    const DELETE: i8 = 1;
    let changes = pairs
        .iter()
        .map(|(k, v)| {
            AlterableConfig::default()
                .with_name(st(k))
                .with_config_operation(SET)
                .with_value(Some(st(v)))
        })
        .chain(deletes.iter().map(|k| {
            AlterableConfig::default()
                .with_name(st(k))
                .with_config_operation(DELETE)
        }))
        .collect();
    IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(st(name))
            .with_configs(changes),
    ])
}

/// The broker's refusal of an IncrementalAlterConfigs of `name`, as an error.
pub(super) fn config_refusal_of(
    name: &str,
    response: kafka_protocol::messages::IncrementalAlterConfigsResponse,
) -> anyhow::Result<()> {
    match response.responses.first() {
        Some(r) if r.error_code != 0 => bail!(
            "cannot change the configs of {name}: {}",
            super::quotas::refusal(r.error_code, r.error_message.as_deref())
        ),
        Some(_) => Ok(()),
        None => bail!("the broker answered with no result"),
    }
}

fn plain_consumer(conn: &Conn) -> anyhow::Result<BaseConsumer<AuthWatch>> {
    conn.client_config()?
        .create_with_context(AuthWatch::default())
        .map_err(|e| super::client_error(e, "cannot create a Kafka client"))
}

/// Keeps the first login the broker refused, so that a command stops with that reason at once
/// instead of retrying until its timeout and then naming a transport error. Other client errors
/// are logged, as librdkafka's default does, but an error repeated (librdkafka reports an
/// unreachable broker twice a second) only every [`REPEAT_AFTER`].
#[derive(Default)]
pub(super) struct AuthWatch {
    refused: std::sync::Mutex<Option<String>>,
    /// When each kind of error was last logged.
    logged: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
    /// A consumer that joins no group: the group's refusals do not matter.
    groupless: bool,
    /// The ACLs refused the client's group (kept, not logged, for [`AuthWatch::group_refused`]).
    group_refused: std::sync::atomic::AtomicBool,
}

/// How long an error already logged is not logged again.
const REPEAT_AFTER: Duration = Duration::from_secs(10);

impl rdkafka::ClientContext for AuthWatch {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::Authentication) {
            self.refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(|| reason.to_string());
            return;
        }
        if error.rdkafka_error_code()
            == Some(rdkafka::types::RDKafkaErrorCode::GroupAuthorizationFailed)
        {
            // Said by `check` (or, for the groups commands, `group_refused`) instead.
            self.group_refused
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let kind = error.to_string();
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let repeated = logged
            .get(&kind)
            .is_some_and(|at| at.elapsed() < REPEAT_AFTER);
        if !repeated {
            use rdkafka::types::RDKafkaErrorCode as C;
            match error.rdkafka_error_code() {
                // librdkafka connects again by itself (a broker restarting, say).
                Some(C::BrokerTransportFailure | C::AllBrokersDown) => {
                    tracing::warn!("librdkafka: {kind}: {reason} (retrying)")
                }
                _ => tracing::error!("librdkafka: {kind}: {reason}"),
            }
            logged.insert(kind, Instant::now());
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        // A lost or refused connection: `error` above reports it once every REPEAT_AFTER, where
        // librdkafka logs it at each attempt.
        if facility == "FAIL" {
            tracing::debug!(target: "librdkafka", "{facility} {message}");
            return;
        }
        rdkafka::client::DefaultClientContext.log(level, facility, message);
    }
}

impl rdkafka::consumer::ConsumerContext for AuthWatch {}

impl AuthWatch {
    /// Whether the broker refused the client access to its group (GROUP_AUTHORIZATION_FAILED).
    pub(super) fn group_refused(&self) -> bool {
        self.group_refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fails with the broker's reason once a login was refused, or, for a consumer in a
    /// group, the group.
    pub(super) fn check(&self) -> anyhow::Result<()> {
        if let Some(why) = &*self.refused.lock().unwrap_or_else(|e| e.into_inner()) {
            bail!("the broker refused the login: {why}");
        }
        if !self.groupless && self.group_refused() {
            bail!("not authorized to access the consumer group (GROUP_AUTHORIZATION_FAILED)");
        }
        Ok(())
    }
}

/// The cluster's metadata (of `topic` only, if given), or why the broker refused it: a refused
/// login rather than the transport failure librdkafka reports after its timeout.
pub(super) fn metadata(
    consumer: &BaseConsumer<AuthWatch>,
    topic: Option<&str>,
) -> anyhow::Result<rdkafka::metadata::Metadata> {
    // Asked in short steps: librdkafka hands its error events (a refused login among them) to
    // the context only when the client is polled, and a refused client would otherwise wait
    // out the whole timeout.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match consumer.fetch_metadata(topic, Duration::from_millis(500)) {
            Ok(md) => return Ok(md),
            Err(e) => {
                // No assignment yet: polling only serves the client's events.
                let _ = consumer.poll(Duration::from_millis(50));
                consumer.context().check()?;
                if Instant::now() >= deadline {
                    use rdkafka::types::RDKafkaErrorCode as C;
                    let hint = match e.rdkafka_error_code() {
                        Some(
                            C::BrokerTransportFailure
                            | C::AllBrokersDown
                            | C::OperationTimedOut
                            | C::RequestTimedOut,
                        ) => {
                            " (no answer: is the broker at that address, and does this client \
                             use its listener's security.protocol? A SASL or TLS listener closes \
                             a client that does not log in or speak TLS; see -X)"
                        }
                        _ => "",
                    };
                    return Err(e).context(format!("metadata request failed{hint}"));
                }
            }
        }
    }
}

/// Counts the records the broker refused (or that could not be delivered), keeping the first
/// reason, and whether it was the delivery timeout.
#[derive(Default)]
struct Deliveries {
    failed: std::sync::atomic::AtomicU64,
    first_error: std::sync::Mutex<Option<(String, bool)>>,
    auth: AuthWatch,
}

impl rdkafka::ClientContext for Deliveries {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.auth.error(error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.auth.log(level, facility, message);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.first_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(|| {
                    let timed_out = e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::MessageTimedOut);
                    (e.to_string(), timed_out)
                });
        }
    }
}

/// How long `produce` waits for a record's acknowledgement unless `-X message.timeout.ms`
/// says otherwise: librdkafka retries what the broker refuses for a while (a partition with
/// too few replicas in sync, say) until then.
const DELIVERY_TIMEOUT_MS: &str = "30000";

pub fn produce(conn: &Conn, topic: &str, acks: &str, compression: &str) -> anyhow::Result<()> {
    let mut cfg = conn.client_config()?;
    // (delivery.timeout.ms is librdkafka's other name for it; 0 waits for ever.)
    let given = cfg
        .get("message.timeout.ms")
        .or_else(|| cfg.get("delivery.timeout.ms"))
        .map(str::to_string);
    if given.is_none() {
        cfg.set("message.timeout.ms", DELIVERY_TIMEOUT_MS);
    }
    let delivery_timeout = match given.as_deref().unwrap_or(DELIVERY_TIMEOUT_MS).parse() {
        Ok(0) => None,
        Ok(ms) => Some(Duration::from_millis(ms)),
        // librdkafka refuses it when the producer is made.
        Err(_) => None,
    };
    // Idempotent unless told otherwise, as Kafka's own producers are since 3.0: a retry of a
    // write the broker stored but could not acknowledge (say, a follower left the in-sync set
    // before it copied the write) is not stored twice. It needs acks=all.
    let all_acks = matches!(acks, "all" | "-1");
    if all_acks && cfg.get("enable.idempotence").is_none() {
        cfg.set("enable.idempotence", "true");
    }
    // Keys placed as Kafka's Java producer and console producer place them (murmur2), not by
    // librdkafka's default (CRC32): records of one key from `runnel produce` and from a Java,
    // kafkajs or franz-go producer then share a partition, and so their order.
    if cfg.get("partitioner").is_none() {
        cfg.set("partitioner", "murmur2_random");
    }
    let producer: ThreadedProducer<Deliveries> = cfg
        .set("acks", acks)
        .set("compression.codec", compression)
        .set("linger.ms", "5")
        .create_with_context(Deliveries::default())
        .map_err(|e| super::client_error(e, "cannot create a Kafka producer"))?;
    // Lines are bytes, not text: a value need not be UTF-8, as with kafka-console-producer.
    let mut stdin = std::io::stdin().lock();
    let mut line = Vec::new();
    let mut count = 0u64;
    let read_error = loop {
        line.clear();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) => break None,
            Ok(_) => {}
            Err(e) => break Some(e),
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        let (key, value) = match line.iter().position(|&b| b == b'\t') {
            Some(tab) => (Some(&line[..tab]), &line[tab + 1..]),
            None => (None, &line[..]),
        };
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(value);
        if let Some(k) = key {
            record = record.key(k);
        }
        let mut pending = record;
        loop {
            match producer.send(pending) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    producer.context().auth.check()?;
                    pending = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => bail!("produce failed after {count} records were sent: {e}"),
            }
        }
        count += 1;
    };
    // Flushed in short steps, so that a refused login ends the command at once. A record not
    // acknowledged within the delivery timeout comes back as failed, so this ends too.
    let deadline = delivery_timeout.map(|t| Instant::now() + t + Duration::from_secs(5));
    loop {
        producer.context().auth.check()?;
        match producer.flush(Duration::from_millis(100)) {
            Ok(()) => break,
            Err(rdkafka::error::KafkaError::Flush(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            )) if deadline.is_none_or(|d| Instant::now() < d) => {}
            Err(e) => {
                let why = why_undelivered(conn, &producer, topic, acks);
                return Err(e).with_context(|| {
                    format!(
                        "{} of {count} records were not acknowledged{why}",
                        producer.in_flight_count()
                    )
                });
            }
        }
    }
    let failed = producer
        .context()
        .failed
        .load(std::sync::atomic::Ordering::Relaxed);
    let produced = format!("{} produced to {topic}", records(count - failed.min(count)));
    if failed > 0 {
        let first = producer
            .context()
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let (mut why, timed_out) = first.unwrap_or_default();
        // A fatal error (say, InitProducerId refused) purges the records still queued: they
        // fail with PurgeQueue, which says nothing of the reason.
        if let Some((code, reason)) = producer.client().fatal_error() {
            let fatal = format!("the producer stopped on a fatal error: {code:?}: {reason}");
            why = if why.is_empty() || why.contains("PurgeQueue") {
                fatal
            } else {
                format!("{why}; {fatal}")
            };
        }
        let diagnosis = if timed_out {
            why_undelivered(conn, &producer, topic, acks)
        } else {
            String::new()
        };
        bail!(
            "{failed} of {count} records were refused by the broker or not delivered (first: {why}){diagnosis}; {produced}"
        );
    }
    if let Some(e) = read_error {
        bail!("reading stdin: {e}; the lines before it were sent: {produced}");
    }
    eprintln!("{produced}");
    Ok(())
}

/// "1 record", "2 records".
fn records(n: u64) -> String {
    format!("{n} record{}", if n == 1 { "" } else { "s" })
}

/// Why records may not have been acknowledged in time, from the topic's metadata: librdkafka
/// retries what the broker refuses (NOT_ENOUGH_REPLICAS, an unknown topic) until the delivery
/// timeout and then reports only the timeout. When the metadata shows nothing amiss, it says
/// so and where the reason is.
fn why_undelivered(
    conn: &Conn,
    producer: &ThreadedProducer<Deliveries>,
    topic: &str,
    acks: &str,
) -> String {
    let md = match producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
    {
        Ok(md) => md,
        Err(e) => return format!(" (the broker did not answer a metadata request either: {e})"),
    };
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return String::new();
    };
    let unknown = t.error().map(rdkafka::types::RDKafkaErrorCode::from)
        == Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition);
    if let Some(e) = t.error().filter(|_| !unknown) {
        return format!(
            " (topic {topic}: {})",
            rdkafka::types::RDKafkaErrorCode::from(e)
        );
    }
    if unknown || t.partitions().is_empty() {
        return format!(
            " (topic {topic} does not exist and was not made on produce: the broker's \
             auto_create_topics is off, or the client may not create it; `runnel topics create \
             {topic}` makes it)"
        );
    }
    let mut why = Vec::new();
    for p in t.partitions() {
        if p.leader() < 0 {
            why.push(format!("partition {} has no leader", p.id()));
        } else if matches!(acks, "all" | "-1") && p.isr().len() < p.replicas().len() {
            why.push(format!(
                "partition {} has {} of its {} replicas in sync",
                p.id(),
                p.isr().len(),
                p.replicas().len()
            ));
        }
    }
    // Every replica in sync, yet fewer than the topic asks for (a broker alone is its topics'
    // only replica).
    let own_min = || {
        let own = own_configs(&admin(conn).ok()?, topic).ok()?;
        own.get("min.insync.replicas")?.parse::<usize>().ok()
    };
    if why.is_empty()
        && matches!(acks, "all" | "-1")
        && let Some(needed) = own_min()
        && let Some(in_sync) = t.partitions().iter().map(|p| p.isr().len()).min()
        && in_sync < needed
    {
        return format!(
            " (topic {topic} sets min.insync.replicas = {needed} and {in_sync} of its replicas \
             are in sync: the broker answers acks=all with NOT_ENOUGH_REPLICAS, which the \
             client retries until message.timeout.ms)"
        );
    }
    if why.is_empty() {
        // A refusal of the leader's own (say, a leader that lost records its followers hold:
        // KAFKA_STORAGE_ERROR), which librdkafka retries and then reports as a timeout.
        return " (the topic's metadata shows no reason: the client retried what the broker \
                refused until message.timeout.ms; the broker's log says why)"
            .to_string();
    }
    let acks_all = if matches!(acks, "all" | "-1") {
        "; acks=all needs min.insync.replicas of them (the broker answers NOT_ENOUGH_REPLICAS, \
         which the client retries until message.timeout.ms)"
    } else {
        ""
    };
    format!(" ({}{acks_all})", why.join(", "))
}

pub fn consume(
    conn: &Conn,
    topic: &str,
    group: Option<&str>,
    from_beginning: bool,
    max: Option<u64>,
    idle_timeout: Option<Duration>,
) -> anyhow::Result<()> {
    let mut cfg = conn.client_config()?;
    cfg.set("enable.partition.eof", "false").set(
        "auto.offset.reset",
        if from_beginning { "earliest" } else { "latest" },
    );
    match group {
        // Only what was printed is committed: offsets are stored by hand below. (Stored as
        // librdkafka polls them, the records it drains from its queue when the consumer closes
        // would count as read too, and the group would skip them.)
        Some(g) => cfg
            .set("group.id", g)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false"),
        // Without a group the partitions are assigned by hand and nothing is committed.
        // librdkafka needs a group id all the same (it looks up the group's coordinator, which
        // the ACLs may refuse: that is ignored below, as nothing is asked of the group).
        None => cfg
            .set("group.id", "runnel-cli")
            .set("enable.auto.commit", "false"),
    };
    let stop = stop_on_signal();
    let watch = AuthWatch {
        groupless: group.is_none(),
        ..AuthWatch::default()
    };
    let consumer: BaseConsumer<AuthWatch> = cfg
        .create_with_context(watch)
        .map_err(|e| super::client_error(e, "cannot create a Kafka consumer"))?;
    let md = metadata(&consumer, Some(topic))?;
    // Refused by the ACLs (or any error but its absence): said as the broker says it.
    if let Some(error) = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .and_then(|t| t.error())
        .map(rdkafka::types::RDKafkaErrorCode::from)
        .filter(|&e| e != rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)
    {
        bail!("topic {topic}: {error}");
    }
    let missing = md
        .topics()
        .iter()
        .all(|t| t.name() != topic || t.partitions().is_empty());
    if group.is_some() {
        if missing {
            // A subscription picks the topic up once it exists, as Kafka's console consumer.
            eprintln!("runnel: topic {topic} does not exist (yet); waiting for it");
        }
        consumer.subscribe(&[topic]).context("subscribe failed")?;
    } else {
        if missing {
            bail!("topic {topic} does not exist");
        }
        let mut tpl = TopicPartitionList::new();
        for t in md.topics() {
            for p in t.partitions() {
                let start = if from_beginning {
                    rdkafka::Offset::Beginning
                } else {
                    rdkafka::Offset::End
                };
                tpl.add_partition_offset(topic, p.id(), start)?;
            }
        }
        consumer.assign(&tpl).context("assign failed")?;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut seen = 0u64;
    let mut last = Instant::now();
    while max.is_none_or(|m| seen < m) && !stop.load(Ordering::Relaxed) {
        consumer.context().check()?;
        match consumer.poll(Duration::from_millis(200)) {
            None => {
                if idle_timeout.is_some_and(|t| last.elapsed() >= t) {
                    break;
                }
            }
            // Reported while a subscribed topic does not exist yet: go on waiting for it.
            Some(Err(rdkafka::error::KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            ))) if group.is_some() => {
                if idle_timeout.is_some_and(|t| last.elapsed() >= t) {
                    break;
                }
            }
            // librdkafka reconnects and finds the new leader or coordinator by itself (the
            // client's context has said what happened).
            Some(Err(e)) if passes(&e) => {}
            Some(Err(e))
                if group.is_none()
                    && e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::GroupAuthorizationFailed) => {}
            Some(Err(e)) => {
                consumer.context().check()?;
                bail!("consume failed: {e}")
            }
            Some(Ok(m)) => {
                last = Instant::now();
                let written = (|| {
                    if let Some(k) = m.key() {
                        out.write_all(k)?;
                        out.write_all(b"\t")?;
                    }
                    // A null value (a tombstone) as kafka-console-consumer prints it, apart
                    // from an empty one.
                    out.write_all(m.payload().unwrap_or(b"null"))?;
                    out.write_all(b"\n")
                })();
                if let Err(e) = written {
                    super::stdout_failed(&e);
                }
                seen += 1;
                if group.is_some()
                    && let Err(e) = consumer.store_offset_from_message(&m)
                {
                    eprintln!("runnel: the offset of what was printed could not be stored: {e}");
                }
            }
        }
    }
    if let Err(e) = out.flush() {
        super::stdout_failed(&e);
    }
    if group.is_some() && seen > 0 {
        let _ = consumer.commit_consumer_state(CommitMode::Sync);
    }
    // Dropping the consumer leaves the group at once, rather than after its session timeout.
    drop(consumer);
    Ok(())
}

/// Whether a consumer's error passes by itself: the broker restarting or unreachable for a
/// while, a leader or coordinator moving.
fn passes(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::OperationTimedOut
                | C::RequestTimedOut
                | C::NetworkException
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::NotCoordinator
                | C::CoordinatorNotAvailable
                | C::CoordinatorLoadInProgress
        )
    )
}

/// Set once the process is asked to stop (Ctrl-C, SIGTERM), so that a command can end
/// cleanly: a consumer commits what it printed and leaves its group. A second signal ends the
/// process at once.
fn stop_on_signal() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let Ok(rt) = runtime() else {
        return stop;
    };
    std::thread::spawn(move || {
        rt.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            flag.store(true, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            std::process::exit(130);
        });
    });
    stop
}
