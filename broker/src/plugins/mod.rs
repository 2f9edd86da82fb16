//! WebAssembly plugins on the produce path: filters and transforms.
//!
//! The map:
//! - [`host`]: the wasmtime engine, the on-disk cache of compiled components, the per-call
//!   limits (epoch deadline, memory cap), the reusable instances of one [`host::Plugin`], and
//!   disabling a plugin that keeps failing;
//! - [`output`]: a transform's answer (the output frame) and the partition of a routed record;
//! - [`quota`]: quota policies (`[[plugins.quotas]]`), asked per produce/fetch request;
//! - this file: [`PluginError`], the registry built from `[plugins]` ([`Plugins`]), and
//!   [`run_chain`], which runs a topic's chain over the record batches of one produce partition.
//!
//! Invariants:
//! - A topic without a binding never reaches this module: its batches stay zero-copy.
//! - A batch is decoded only when its topic has a chain, into [`OwnedRecord`]s (every header
//!   in order, a name given twice kept twice, as Kafka keeps it); batches whose records come
//!   out of the chain unchanged (every filter kept all, every transform gave back the same
//!   records and routed none) are stored byte for byte as received. Otherwise the records for
//!   the produced partition are re-encoded with the producer's codec as ONE batch, keeping the
//!   producer's attributes, id and epoch ([`reencode`]). A chain of filters only takes a
//!   shorter way: records framed from the (uncompressed) batch in place and the kept ones
//!   copied into the new batch, no record values made ([`raw`]).
//! - Offsets: a rewritten batch keeps the producer's span of offsets (its lastOffsetDelta), and
//!   each record a filter kept stays at the offset delta it was produced at, so the offsets a
//!   producer computes from the produce response (base offset + the record's position in its
//!   batch) are those its kept records are read at; the offsets of dropped records stay
//!   unused, as after compaction. A batch that loses every record is stored as an empty
//!   (header-only) batch, so the producer still gets a base offset (librdkafka reports -1 + i
//!   for record i of a batch answered with -1). A transform that answers as many records for
//!   the partition as it was given keeps their offsets in order; one that answers more or
//!   fewer renumbers the batch from its base (for an idempotent producer within its span).
//! - A chain runs filters and transforms in order. A transform's outputs without a topic go on
//!   through the rest of the chain; outputs naming a topic leave the chain and are appended to
//!   that topic as they are (its own chain does not run on them, so chains cannot loop), in the
//!   partition [`output::partition_for`] picks, auto-creating the topic when the broker
//!   auto-creates topics (else the call fails: the binding's policy applies).
//! - Idempotent producers (a producer id and baseSequence >= 0): the re-encoded batch keeps the producer's
//!   baseSequence and its lastOffsetDelta (the original count - 1) even when it holds fewer
//!   records, so it spans the sequence numbers the producer used and its next batch is in
//!   sequence. Storage accepts rewritten batches only through `append_rewritten`; Fetch sends
//!   a consumer empty ones only with a batch after them (librdkafka takes an answer of nothing
//!   else for a message too large to fetch). A transform that writes MORE records to the
//!   partition than the idempotent batch held cannot be stored in sequence: refused
//!   (POLICY_VIOLATION). Routed records are appended without a producer id.
//! - A plugin that could not be called in time because every instance stayed busy (an
//!   overloaded broker, not the plugin's fault) refuses the batch with a retriable error,
//!   whatever the binding's policy: see [`ProduceFilterError::Overloaded`].
//! - A failing call (trap, timeout, memory cap, error result, bad answer, disabled plugin)
//!   fails that call only; the binding's `on_error` decides: fail-open passes the batch through
//!   that plugin unchanged, fail-closed refuses the partition's produce with POLICY_VIOLATION,
//!   dead-letter sends the batch's records as produced to the dead-letter topic with headers
//!   [`DLT_PLUGIN`], [`DLT_ERROR`], [`DLT_TOPIC`], [`DLT_PARTITION`] and leaves an empty batch
//!   in the bound partition (see above). When the dead-letter topic does not exist and cannot
//!   be auto-created, the batch is refused as with fail-closed.
//! - Plugins get no WASI: every import of a component is defined as a trap (see `host`).
//!
//! The batch frame handed to a plugin and the output frame a transform answers with are
//! documented in `sdk/wit/plugin.wit`; [`frame_records`] writes the first, [`output`] reads the
//! second.

pub mod host;
pub mod output;
pub mod quota;
pub(crate) mod raw;
pub mod reload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use edge_config::{OnError, PluginsConfig};

use crate::log_budget::{LogBudget, within_budget};
use crate::storage::record_spans::{self, Records};
use crate::storage::{self, BatchHeader};

pub use crate::storage::record_spans::OwnedRecord;
pub use host::{Host, HostLimits, Kind, Plugin};
pub use output::{OutRecord, partition_for};
pub use reload::{PluginSet, ReloadError, ReloadReport};

/// Header of a dead-lettered record: the name of the plugin whose call failed.
pub const DLT_PLUGIN: &str = "runnel.dlt.plugin";
/// Header of a dead-lettered record: the error of the failed call.
pub const DLT_ERROR: &str = "runnel.dlt.error";
/// Header of a dead-lettered record: the topic it was produced to.
pub const DLT_TOPIC: &str = "runnel.dlt.topic";
/// Header of a dead-lettered record: the partition it was produced to (decimal).
pub const DLT_PARTITION: &str = "runnel.dlt.partition";

/// Why a plugin could not be loaded or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin engine: {message}")]
    Engine { message: String },
    #[error("plugin {name}: cannot read {}: {source}", path.display())]
    Read {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("plugin {name}: not a valid component: {message}")]
    Compile { name: String, message: String },
    #[error(
        "plugin {name}: does not implement the runnel:plugin filter or transform world: {message}"
    )]
    Interface { name: String, message: String },
    #[error("plugin {name}: does not implement the runnel:plugin {world} world: {message}")]
    World {
        name: String,
        world: &'static str,
        message: String,
    },
    #[error("plugin {name}: init refused its config: {message}")]
    Init { name: String, message: String },
    #[error("plugin {name}: call exceeded plugins.call_timeout ({limit:?})")]
    Timeout { name: String, limit: Duration },
    #[error("plugin {name}: call exceeded plugins.memory_limit ({limit} bytes)")]
    MemoryLimit { name: String, limit: u64 },
    #[error("plugin {name}: trapped: {message}")]
    Trap { name: String, message: String },
    #[error("plugin {name}: returned an error: {message}")]
    Failed { name: String, message: String },
    #[error("plugin {name}: bad answer: {message}")]
    BadAnswer { name: String, message: String },
    #[error("plugin {name}: disabled after failing plugins.disable_after calls in a row")]
    Disabled { name: String },
    /// Every instance was busy for `plugins.call_timeout`: the broker is overloaded, the plugin
    /// did nothing wrong (not counted towards `disable_after`).
    #[error("plugin {name}: every instance stayed busy for plugins.call_timeout ({limit:?})")]
    Busy { name: String, limit: Duration },
}

impl PluginError {
    /// The plugin the error is about, if it is about one.
    pub fn plugin(&self) -> Option<&str> {
        use PluginError::*;
        match self {
            Engine { .. } => None,
            Read { name, .. }
            | Compile { name, .. }
            | Interface { name, .. }
            | World { name, .. }
            | Init { name, .. }
            | Timeout { name, .. }
            | MemoryLimit { name, .. }
            | Trap { name, .. }
            | Failed { name, .. }
            | BadAnswer { name, .. }
            | Disabled { name }
            | Busy { name, .. } => Some(name),
        }
    }

    /// Where in `config` the plugin it is about was named (`plugins.load[i]`), for a load error.
    pub fn config_key(&self, config: &PluginsConfig) -> Option<String> {
        let name = self.plugin()?;
        let i = config.load.iter().position(|p| p.name == name)?;
        Some(format!("plugins.load[{i}]"))
    }

    /// Where the error points in the config: `<file>:<line>: plugins.load[i]` as config errors
    /// say it, or as much of that as is known.
    pub fn config_place(&self, config: &PluginsConfig, file: Option<&std::path::Path>) -> String {
        let key = self.config_key(config);
        let line = file
            .zip(key.as_deref())
            .and_then(|(file, key)| edge_config::key_line(file, key));
        match (file, line, key) {
            (Some(file), Some(line), Some(key)) => format!("{}:{line}: {key}", file.display()),
            (Some(file), None, Some(key)) => format!("{}: {key}", file.display()),
            (Some(file), _, None) => file.display().to_string(),
            (None, _, Some(key)) => key,
            (None, _, None) => "[plugins]".to_string(),
        }
    }
}

/// Why a produce batch was refused by the plugin path.
#[derive(Debug, thiserror::Error)]
pub enum ProduceFilterError {
    /// A plugin call failed and its binding is fail-closed (or dead-letter without a usable
    /// dead-letter topic).
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// A plugin could not be called in time: every instance stayed busy (the broker is
    /// overloaded). Whatever the binding's `on_error`, the producer is asked to retry: the
    /// batch neither passes unfiltered nor goes to the dead-letter topic for the broker's load.
    #[error("{0}; retry later")]
    Overloaded(PluginError),
    /// The batch could not be decoded or re-encoded.
    #[error("record batch: {0}")]
    Corrupt(String),
    /// A transform wrote more records to the produced partition than an idempotent producer's
    /// batch held: they cannot be stored within the batch's sequence numbers.
    #[error(
        "plugins turned an idempotent producer's batch of {produced} records into {written} for \
         the same partition; an idempotent batch cannot grow (route the extra records to \
         another topic, or produce with enable.idempotence=false)"
    )]
    Idempotent { produced: i32, written: usize },
}

/// A topic's ordered plugin chain.
pub struct Chain {
    pub plugins: Vec<Arc<Plugin>>,
    pub on_error: OnError,
    /// With `OnError::DeadLetter`: where failing batches go.
    pub dead_letter_topic: Option<String>,
}

/// Every loaded plugin and the topic bindings; empty when `[plugins]` names none.
#[derive(Default)]
pub struct Plugins {
    pub loaded: Vec<Arc<Plugin>>,
    chains: HashMap<String, Arc<Chain>>,
    /// Quota policies and their bindings (`[[plugins.quotas]]`).
    pub quotas: quota::Quotas,
}

impl Plugins {
    /// Loads the plugins of `config` (compiling into, or loading from, `cache_dir`). A plugin
    /// named as one of `earlier` (the set a reload replaces) keeps counting in its counters.
    pub fn load(
        config: &PluginsConfig,
        cache_dir: PathBuf,
        earlier: Option<&Plugins>,
    ) -> Result<Plugins, PluginError> {
        if config.load.is_empty() {
            return Ok(Plugins::default());
        }
        let limits = HostLimits {
            call_timeout: config.call_timeout,
            memory_limit: config.memory_limit,
            disable_after: config.disable_after,
        };
        // Instances alive at once: each plugin's calls at once (a quota policy has one).
        let max_instances = config.load.len() as u32 * host::CALLS_PER_PLUGIN;
        let host = Host::new(limits, cache_dir, max_instances)?;
        let mut by_name = HashMap::new();
        let mut loaded = Vec::new();
        for spec in &config.load {
            if config.is_quota_plugin(&spec.name) {
                continue; // a quota-world plugin: loaded by `quota::Quotas::load` below
            }
            let mut plugin = host.load(&spec.name, &spec.path, &spec.config)?;
            let was = earlier.and_then(|e| e.loaded.iter().find(|p| p.name() == spec.name));
            if let Some(was) = was {
                plugin.stats = was.stats.clone();
            }
            let plugin = Arc::new(plugin);
            tracing::info!(plugin = %spec.name, kind = ?plugin.kind(), path = %spec.path.display(), "plugin loaded");
            by_name.insert(spec.name.clone(), plugin.clone());
            loaded.push(plugin);
        }
        let chains = config
            .bindings
            .iter()
            .map(|b| {
                let plugins = b.chain.iter().map(|n| by_name[n].clone()).collect();
                let chain = Chain {
                    plugins,
                    on_error: b.on_error,
                    dead_letter_topic: b.dead_letter_topic.clone(),
                };
                (b.topic.clone(), Arc::new(chain))
            })
            .collect();
        let quotas = quota::Quotas::load(&host, config, earlier.map(|e| &e.quotas))?;
        Ok(Plugins {
            loaded,
            chains,
            quotas,
        })
    }

    /// The chain bound to `topic`.
    pub fn chain(&self, topic: &str) -> Option<Arc<Chain>> {
        self.chains.get(topic).cloned()
    }
}

/// What a chain made of one produce partition's record data.
#[derive(Debug, Default)]
pub struct ChainOutput {
    /// What to append to the produced partition: the record data itself when nothing changed,
    /// else the batches as the chain left them (an emptied batch as one without records).
    pub records: Bytes,
    /// Whether `records` holds batches the chain rewrote (a wider span of offsets than records,
    /// or none): append them with `append_rewritten`.
    pub rewritten: bool,
    /// Records for other topics (transform outputs naming a topic, dead-lettered batches), one
    /// batch per (topic, partition), to append once the produced partition's append succeeded.
    pub routed: Vec<RoutedBatch>,
}

/// One batch for another topic's partition.
#[derive(Debug)]
pub struct RoutedBatch {
    pub topic: String,
    pub partition: i32,
    pub records: Bytes,
}

impl RoutedBatch {
    /// The batch's records as two batches of half as many each (with its compression), for a
    /// target topic whose `max.message.bytes` the whole is over; `None` for a single record,
    /// or a batch that does not decode.
    pub fn halves(&self) -> Option<[RoutedBatch; 2]> {
        let h = storage::check_batch(&self.records).ok()?;
        let (mut first, _) = decode(&self.records, &h).ok()?;
        if first.len() < 2 {
            return None;
        }
        let second = first.split_off(first.len() / 2);
        let half = |records: Vec<OwnedRecord>| {
            record_spans::encode(&self.records, &records)
                .ok()
                .map(|b| RoutedBatch {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    records: Bytes::from(b),
                })
        };
        Some([half(first)?, half(second)?])
    }
}

/// Failed plugin calls said a minute.
static CALL_FAILED: LogBudget = LogBudget::new(20);

/// Runs `chain` over every batch of one produce partition's record data. `partitions` tells
/// the partition count of a topic a record is routed to, creating the topic if the broker
/// auto-creates topics, or `None` when there is no such topic. Blocking (wasm calls): the
/// produce handler runs it with `spawn_blocking`.
pub fn run_chain(
    chain: &Chain,
    topic: &str,
    partition: i32,
    records: &Bytes,
    partitions: &dyn Fn(&str) -> Option<i32>,
) -> Result<ChainOutput, ProduceFilterError> {
    let mut out = BytesMut::new();
    let mut changed = false;
    let mut routed: Vec<(String, OwnedRecord)> = Vec::new();
    // The codec routed records are stored with: the producer's.
    let mut codec = 0;
    let mut pos = 0;
    while pos < records.len() {
        let h = BatchHeader::parse(&records[pos..])
            .map_err(|e| ProduceFilterError::Corrupt(e.to_string()))?;
        let end = pos + h.total_size();
        if end > records.len() {
            return Err(ProduceFilterError::Corrupt(
                "batch runs past the record data".into(),
            ));
        }
        let raw = records.slice(pos..end);
        pos = end;
        if h.is_control() {
            out.extend_from_slice(&raw);
            continue;
        }
        if chain.plugins.iter().all(|p| p.kind() == Kind::Filter) {
            // Filters only: over the batch's records in place, without decoding them (see `raw`).
            codec = h.compression();
            let Some(ran) = run_filters_raw(chain, topic, partition, &raw, &h, partitions)? else {
                out.extend_from_slice(&raw);
                continue;
            };
            changed = true;
            routed.extend(ran.routed);
            push_rewritten(&mut out, &raw, &h, ran.batch);
            continue;
        }
        codec = h.compression();
        let ran = run_batch(chain, topic, partition, decode(&raw, &h)?, partitions)?;
        if !ran.changed {
            out.extend_from_slice(&raw);
            continue;
        }
        changed = true;
        routed.extend(ran.routed);
        let kept = ran.records;
        // Idempotent: keep the producer's sequence span (see the module docs).
        if idempotent(&h) && ran.deltas.is_none() && kept.len() > h.record_count.max(0) as usize {
            return Err(ProduceFilterError::Idempotent {
                produced: h.record_count,
                written: kept.len(),
            });
        }
        let batch = match (kept.is_empty(), ran.deltas) {
            (true, _) => None,
            (false, Some(deltas)) => Some(reencode_at(&raw, &h, &kept, &deltas)?),
            (false, None) => Some(reencode(&raw, &kept)?),
        };
        push_rewritten(&mut out, &raw, &h, batch);
    }
    Ok(ChainOutput {
        records: if changed {
            out.freeze()
        } else {
            records.clone()
        },
        rewritten: changed,
        routed: encode_routed(routed, codec, partitions)?,
    })
}

/// What the chain made of one batch's records.
struct BatchRun {
    /// Whether anything differs from the batch as produced.
    changed: bool,
    /// The records for the produced partition.
    records: Vec<OwnedRecord>,
    /// The offset delta each of `records` was produced at, while the chain keeps track of it
    /// (see the module docs); `None` once a transform changed their number.
    deltas: Option<Vec<i32>>,
    /// Records for other topics.
    routed: Vec<(String, OwnedRecord)>,
}

/// Whether a batch is an idempotent producer's, whose sequence span a rewrite keeps: it has a
/// producer id and a sequence, as storage takes it (a sequence without a producer id means
/// nothing, as in Kafka).
fn idempotent(h: &BatchHeader) -> bool {
    h.producer_id >= 0 && h.base_sequence >= 0
}

/// Appends the batch a chain made of the produced batch `raw` (header `h`) to `out`: `batch` is
/// the kept records re-encoded, `None` when none were kept, which goes in as an empty batch
/// (see the module docs). For an idempotent producer the batch keeps the producer's sequence
/// span: its lastOffsetDelta is the produced one (a batch renumbered by a transform gets it
/// here).
fn push_rewritten(out: &mut BytesMut, raw: &[u8], h: &BatchHeader, batch: Option<Vec<u8>>) {
    match batch {
        Some(mut batch) => {
            if idempotent(h) {
                storage::put_i32(
                    &mut batch,
                    storage::LAST_OFFSET_DELTA_POS,
                    h.last_offset_delta,
                );
                storage::rewrite_crc(&mut batch);
            }
            out.extend_from_slice(&batch);
        }
        None => out.extend_from_slice(&storage::empty_batch(raw, h)),
    }
}

fn run_batch(
    chain: &Chain,
    topic: &str,
    partition: i32,
    (original, deltas): (Vec<OwnedRecord>, Vec<i32>),
    partitions: &dyn Fn(&str) -> Option<i32>,
) -> Result<BatchRun, ProduceFilterError> {
    // `records` starts as the batch as produced; a copy of that is kept only when a plugin
    // changes it and a later failure could send the batch to the dead-letter topic.
    let dead_letter = chain.on_error == OnError::DeadLetter;
    let mut records = original;
    let mut deltas = Some(deltas);
    let mut original: Option<Vec<OwnedRecord>> = None;
    let mut routed = Vec::new();
    let mut changed = false;
    for plugin in &chain.plugins {
        if records.is_empty() {
            break;
        }
        let frame = frame_records(topic, partition, &records);
        let result = match plugin.kind() {
            Kind::Filter => plugin
                .call(frame, |bitmap| {
                    check_bitmap(&bitmap, records.len()).map(|()| bitmap)
                })
                .map(|bitmap| {
                    if (0..records.len()).all(|i| bitmap[i / 8] & (1 << (i % 8)) != 0) {
                        return;
                    }
                    if dead_letter && original.is_none() {
                        original = Some(records.clone());
                    }
                    keep_marked(&mut records, &bitmap);
                    if let Some(deltas) = &mut deltas {
                        keep_marked(deltas, &bitmap);
                    }
                    changed = true;
                }),
            Kind::Transform => plugin
                .call(frame, |answer| {
                    let outs = output::parse_output(Bytes::from(answer))?;
                    for name in outs.iter().filter_map(|o| o.topic.as_deref()) {
                        if partitions(name).is_none() {
                            return Err(format!(
                                "routes a record to topic {name:?}, which does not exist \
                                 (and broker.auto_create_topics is off or the name is invalid)"
                            ));
                        }
                    }
                    Ok(outs)
                })
                .map(|outs| {
                    let mut mine = Vec::with_capacity(outs.len());
                    for o in outs {
                        let r = OwnedRecord {
                            timestamp: o.timestamp,
                            key: o.key,
                            value: o.value,
                            headers: o.headers,
                        };
                        match o.topic {
                            None => mine.push(r),
                            Some(t) => routed.push((t, r)),
                        }
                    }
                    changed |= !routed.is_empty() || records != mine;
                    if mine.len() != records.len() {
                        deltas = None;
                    }
                    let before = std::mem::replace(&mut records, mine);
                    if dead_letter && original.is_none() {
                        original = Some(before);
                    }
                }),
        };
        if let Err(e) = result {
            let as_produced = || {
                Ok(original
                    .take()
                    .unwrap_or_else(|| std::mem::take(&mut records)))
            };
            if let Some(routed) = on_failure(chain, e, topic, partition, partitions, as_produced)? {
                return Ok(BatchRun {
                    changed: true,
                    records: Vec::new(),
                    deltas: None,
                    routed,
                });
            }
        }
    }
    Ok(BatchRun {
        changed,
        records,
        deltas,
        routed,
    })
}

/// Applies the binding's `on_error` policy to a failed call: `Ok(None)` goes on as if the
/// plugin were not there (fail-open), `Ok(Some(records))` are the batch's records as produced
/// (from `as_produced`) for the dead-letter topic, and an error refuses the batch (fail-closed,
/// a dead-letter topic that does not exist, or, whatever the policy, a plugin too busy to be
/// called: [`ProduceFilterError::Overloaded`]).
fn on_failure(
    chain: &Chain,
    e: PluginError,
    topic: &str,
    partition: i32,
    partitions: &dyn Fn(&str) -> Option<i32>,
    as_produced: impl FnOnce() -> Result<Vec<OwnedRecord>, ProduceFilterError>,
) -> Result<Option<Vec<(String, OwnedRecord)>>, ProduceFilterError> {
    if matches!(e, PluginError::Busy { .. }) {
        within_budget!(CALL_FAILED, warn, topic, partition, error = %e, "plugin busy; produce refused as retriable");
        return Err(ProduceFilterError::Overloaded(e));
    }
    let policy = chain.on_error.as_str();
    if matches!(e, PluginError::Disabled { .. }) {
        // Said once, with the reason, when the plugin was disabled.
        tracing::debug!(topic, partition, error = %e, policy, "plugin disabled; on_error applies");
    } else {
        // A plugin that fails now and then never reaches disable_after: its failures are
        // said within a budget (each is counted in runnel_plugin_faults_total).
        within_budget!(CALL_FAILED, warn, topic, partition, error = %e, policy, "plugin failed; on_error applies");
    }
    match chain.on_error {
        OnError::FailOpen => Ok(None),
        OnError::FailClosed => Err(e.into()),
        OnError::DeadLetter => {
            let dlt = chain.dead_letter_topic.as_deref().unwrap_or_default();
            if partitions(dlt).is_none() {
                tracing::warn!(
                    topic,
                    partition,
                    dead_letter_topic = dlt,
                    "the dead-letter topic does not exist and is not auto-created; produce refused"
                );
                return Err(e.into());
            }
            let plugin = e.plugin().unwrap_or_default();
            let routed = as_produced()?
                .into_iter()
                .map(|r| (dlt.to_owned(), dead_letter(r, plugin, &e, topic, partition)))
                .collect();
            Ok(Some(routed))
        }
    }
}

/// The records of the batch `raw` (header `h`), every header as produced, and their offset
/// deltas.
fn decode(
    raw: &Bytes,
    h: &BatchHeader,
) -> Result<(Vec<OwnedRecord>, Vec<i32>), ProduceFilterError> {
    // The CRC first: the batch is written again with a new one.
    storage::check_batch(raw).map_err(|e| ProduceFilterError::Corrupt(e.to_string()))?;
    let plain = record_spans::plain_batch(raw.clone(), h).map_err(ProduceFilterError::Corrupt)?;
    let records = Records::parse(&plain, h).map_err(ProduceFilterError::Corrupt)?;
    Ok((records.owned(&plain), records.offset_deltas()))
}

/// What a chain of filters made of a batch (see [`raw`]).
struct RawRun {
    /// The kept records as a new batch; `None` when none is left.
    batch: Option<Vec<u8>>,
    /// Dead letters.
    routed: Vec<(String, OwnedRecord)>,
}

/// Runs a chain of filters over the records of `batch` (header `h`) in place, uncompressed
/// first if they are compressed; `None` when every record was kept.
fn run_filters_raw(
    chain: &Chain,
    topic: &str,
    partition: i32,
    batch: &Bytes,
    h: &BatchHeader,
    partitions: &dyn Fn(&str) -> Option<i32>,
) -> Result<Option<RawRun>, ProduceFilterError> {
    // The CRC first: the batch is written again with a new one.
    storage::check_batch(batch).map_err(|e| ProduceFilterError::Corrupt(e.to_string()))?;
    let plain = record_spans::plain_batch(batch.clone(), h).map_err(ProduceFilterError::Corrupt)?;
    let records = Records::parse(&plain, h).map_err(ProduceFilterError::Corrupt)?;
    let mut kept: Vec<usize> = (0..records.len()).collect();
    for plugin in &chain.plugins {
        if kept.is_empty() {
            break;
        }
        let frame = raw::frame(&records, topic, partition, &kept);
        let result = plugin.call(frame, |bitmap| {
            check_bitmap(&bitmap, kept.len()).map(|()| bitmap)
        });
        match result {
            Ok(bitmap) => keep_marked(&mut kept, &bitmap),
            Err(e) => {
                let as_produced = || Ok(records.owned(&plain));
                if let Some(routed) =
                    on_failure(chain, e, topic, partition, partitions, as_produced)?
                {
                    return Ok(Some(RawRun {
                        batch: None,
                        routed,
                    }));
                }
            }
        }
    }
    if kept.len() == records.len() {
        return Ok(None);
    }
    let batch = match kept.is_empty() {
        true => None,
        false => Some(
            record_spans::compressed(records.keep_offsets(h, &kept, None))
                .map_err(ProduceFilterError::Corrupt)?,
        ),
    };
    Ok(Some(RawRun {
        batch,
        routed: Vec::new(),
    }))
}

/// Keeps the items a filter's keep bitmap marks (item i: bit i % 8 of byte i / 8), in order;
/// the bitmap was checked to cover them ([`check_bitmap`]).
fn keep_marked<T>(items: &mut Vec<T>, bitmap: &[u8]) {
    let mut i = 0;
    items.retain(|_| {
        let keep = bitmap[i / 8] & (1 << (i % 8)) != 0;
        i += 1;
        keep
    });
}

/// Checks a filter's keep bitmap holds one bit per record.
pub fn check_bitmap(bitmap: &[u8], count: usize) -> Result<(), String> {
    if bitmap.len() == count.div_ceil(8) {
        Ok(())
    } else {
        Err(format!(
            "keep bitmap of {} bytes for {count} records (expected {})",
            bitmap.len(),
            count.div_ceil(8)
        ))
    }
}

/// A produced record as it goes to the dead-letter topic: unchanged, plus the DLT headers.
fn dead_letter(
    mut r: OwnedRecord,
    plugin: &str,
    e: &PluginError,
    topic: &str,
    partition: i32,
) -> OwnedRecord {
    let added = [
        (DLT_PLUGIN, plugin.to_owned()),
        (DLT_ERROR, e.to_string()),
        (DLT_TOPIC, topic.to_owned()),
        (DLT_PARTITION, partition.to_string()),
    ];
    // A record dead-lettered before (copied back by hand, say) gets this failure's headers.
    r.headers
        .retain(|(k, _)| !added.iter().any(|(name, _)| k == name));
    r.headers.extend(
        added
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Some(Bytes::from(v)))),
    );
    r
}

/// Groups routed records by (topic, partition) in first-seen order and encodes each group as
/// one batch without a producer id, with the producer's `codec`.
fn encode_routed(
    routed: Vec<(String, OwnedRecord)>,
    codec: i16,
    partitions: &dyn Fn(&str) -> Option<i32>,
) -> Result<Vec<RoutedBatch>, ProduceFilterError> {
    let mut groups: Vec<((String, i32), Vec<OwnedRecord>)> = Vec::new();
    for (topic, r) in routed {
        let count = partitions(&topic).unwrap_or(1);
        let p = partition_for(r.key.as_deref(), count);
        match groups.iter_mut().find(|(k, _)| k.0 == topic && k.1 == p) {
            Some((_, g)) => g.push(r),
            None => groups.push(((topic, p), vec![r])),
        }
    }
    let template = record_spans::header_without_producer(codec);
    groups
        .into_iter()
        .map(|((topic, partition), records)| {
            let batch = record_spans::encode(&template, &records)
                .map_err(|e| ProduceFilterError::Corrupt(format!("re-encode: {e}")))?;
            Ok(RoutedBatch {
                topic,
                partition,
                records: Bytes::from(batch),
            })
        })
        .collect()
}

/// The records `kept` of the produced batch `raw` as one batch with contiguous offset deltas,
/// the producer's compression, attributes, producer id, epoch and base sequence.
fn reencode(raw: &[u8], kept: &[OwnedRecord]) -> Result<Vec<u8>, ProduceFilterError> {
    record_spans::encode(raw, kept)
        .map_err(|e| ProduceFilterError::Corrupt(format!("re-encode: {e}")))
}

/// The records `kept` of the produced batch `raw` (header `h`) as [`reencode`] makes them, but
/// each at its offset delta in `deltas`, within the produced batch's span of offsets.
fn reencode_at(
    raw: &[u8],
    h: &BatchHeader,
    kept: &[OwnedRecord],
    deltas: &[i32],
) -> Result<Vec<u8>, ProduceFilterError> {
    record_spans::encode_at(raw, kept, deltas, h.last_offset_delta)
        .map_err(|e| ProduceFilterError::Corrupt(format!("re-encode: {e}")))
}

/// Writes the batch frame of `sdk/wit/plugin.wit` for `records`.
pub fn frame_records(topic: &str, partition: i32, records: &[OwnedRecord]) -> Vec<u8> {
    let payload: usize = records
        .iter()
        .map(|r| {
            32 + r.key.as_ref().map_or(0, |k| k.len())
                + r.value.as_ref().map_or(0, |v| v.len())
                + r.headers
                    .iter()
                    .map(|(k, v)| 8 + k.len() + v.as_ref().map_or(0, |v| v.len()))
                    .sum::<usize>()
        })
        .sum();
    let mut buf = frame_start(topic, partition, records.len(), payload);
    for r in records {
        buf.extend_from_slice(&r.timestamp.to_le_bytes());
        put_nullable(&mut buf, r.key.as_deref());
        put_nullable(&mut buf, r.value.as_deref());
        buf.extend_from_slice(&(r.headers.len() as u32).to_le_bytes());
        for (k, v) in &r.headers {
            buf.extend_from_slice(&(k.len() as u32).to_le_bytes());
            buf.extend_from_slice(k.as_bytes());
            put_nullable(&mut buf, v.as_deref());
        }
    }
    buf
}

/// A batch frame's first 11 bytes and topic (version 1, topic, partition, record count), in a
/// buffer with room for `payload` bytes of records after them.
pub(crate) fn frame_start(topic: &str, partition: i32, count: usize, payload: usize) -> Vec<u8> {
    let topic = &topic.as_bytes()[..topic.len().min(u16::MAX as usize)];
    let mut buf = Vec::with_capacity(11 + topic.len() + payload);
    buf.push(1);
    buf.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    buf.extend_from_slice(topic);
    buf.extend_from_slice(&partition.to_le_bytes());
    buf.extend_from_slice(&(count as u32).to_le_bytes());
    buf
}

/// A frame's nullable field: its length (-1 for null), then its bytes.
#[inline]
pub(crate) fn put_nullable(buf: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => buf.extend_from_slice(&(-1i32).to_le_bytes()),
        Some(v) => {
            buf.extend_from_slice(&(v.len() as i32).to_le_bytes());
            buf.extend_from_slice(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testutil::*;
    use kafka_protocol::records::Compression;

    /// A call that failed for the plugin's fault goes by the binding's policy; one that could
    /// not be made because every instance stayed busy is a retriable refusal under every
    /// policy: the batch neither passes unfiltered nor is dead-lettered for the broker's load.
    #[test]
    fn a_busy_plugin_refuses_as_retriable_under_every_policy() {
        let busy = || PluginError::Busy {
            name: "p".into(),
            limit: Duration::from_secs(1),
        };
        let trap = || PluginError::Trap {
            name: "p".into(),
            message: "unreachable".into(),
        };
        let exists = |_: &str| Some(1);
        let produced = || Ok(vec![record(Some(b"k"), Some(b"v"))]);
        for on_error in [OnError::FailOpen, OnError::FailClosed, OnError::DeadLetter] {
            let chain = Chain {
                plugins: Vec::new(),
                on_error,
                dead_letter_topic: Some("dlt".into()),
            };
            let refused = on_failure(&chain, busy(), "t", 0, &exists, produced);
            assert!(
                matches!(
                    refused,
                    Err(ProduceFilterError::Overloaded(PluginError::Busy { .. }))
                ),
                "{on_error:?}: {refused:?}"
            );
            let failed = on_failure(&chain, trap(), "t", 0, &exists, produced);
            match on_error {
                OnError::FailOpen => assert!(matches!(failed, Ok(None))),
                OnError::FailClosed => {
                    assert!(matches!(failed, Err(ProduceFilterError::Plugin(_))))
                }
                OnError::DeadLetter => {
                    let routed = failed.unwrap().unwrap();
                    assert_eq!(routed.len(), 1);
                    assert_eq!(routed[0].0, "dlt");
                    assert!(
                        routed[0]
                            .1
                            .headers
                            .iter()
                            .any(|(k, v)| k == DLT_PLUGIN && v.as_deref() == Some(&b"p"[..]))
                    );
                }
            }
        }
    }

    fn record(key: Option<&'static [u8]>, value: Option<&'static [u8]>) -> OwnedRecord {
        OwnedRecord {
            timestamp: 0x0102,
            key: key.map(Bytes::from_static),
            value: value.map(Bytes::from_static),
            headers: Vec::new(),
        }
    }

    /// The exact bytes of the frame documented in sdk/wit/plugin.wit.
    #[test]
    fn frame_layout_is_exact() {
        let mut r = record(Some(b"k"), None);
        r.headers.push(("h".into(), Some(Bytes::from_static(b"v"))));
        let frame = frame_records("t", 2, &[r, record(None, Some(b"xy"))]);
        let mut want = vec![1u8, 1, 0, b't', 2, 0, 0, 0, 2, 0, 0, 0];
        want.extend_from_slice(&0x0102i64.to_le_bytes());
        want.extend_from_slice(&[1, 0, 0, 0, b'k']); // key
        want.extend_from_slice(&(-1i32).to_le_bytes()); // null value
        want.extend_from_slice(&[1, 0, 0, 0]); // one header
        want.extend_from_slice(&[1, 0, 0, 0, b'h', 1, 0, 0, 0, b'v']);
        want.extend_from_slice(&0x0102i64.to_le_bytes());
        want.extend_from_slice(&(-1i32).to_le_bytes()); // null key
        want.extend_from_slice(&[2, 0, 0, 0, b'x', b'y']);
        want.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(frame, want);
    }

    /// Kept records are re-encoded as one batch with contiguous offsets and the producer's
    /// attributes, every header kept.
    #[test]
    fn reencode_makes_one_contiguous_batch() {
        let mut recs: Vec<TestRec> = (0..5)
            .map(|i| kv(&format!("k{i}"), "v", 1_000 + i))
            .collect();
        recs[4].headers = vec![
            ("h".into(), Some(Bytes::from_static(b"1"))),
            ("h".into(), Some(Bytes::from_static(b"2"))),
        ];
        let raw = Bytes::from(broker_encoded_batch(&recs, Compression::Lz4));
        let h = BatchHeader::parse(&raw).unwrap();
        let (all, _) = decode(&raw, &h).unwrap();
        let kept = vec![all[1].clone(), all[4].clone()];
        let out = reencode(&raw, &kept).unwrap();
        let nh = storage::check_batch(&out).unwrap();
        assert_eq!((nh.record_count, nh.last_offset_delta), (2, 1));
        assert_eq!(nh.attributes, h.attributes);
        assert_eq!(nh.base_sequence, -1);
        assert_eq!(
            read_spans(&out),
            vec![(0, recs[1].clone()), (1, recs[4].clone())]
        );
    }

    /// A dead-lettered record keeps its headers, a name given twice included, and gets this
    /// failure's dead-letter headers in place of any it carried.
    #[test]
    fn dead_letters_keep_headers_and_replace_old_dead_letter_ones() {
        let mut r = record(Some(b"k"), Some(b"v"));
        let h = |k: &str, v: &str| (k.to_owned(), Some(Bytes::copy_from_slice(v.as_bytes())));
        r.headers = vec![h("a", "1"), h(DLT_PLUGIN, "earlier"), h("a", "2")];
        let e = PluginError::Timeout {
            name: "p".into(),
            limit: Duration::from_millis(5),
        };
        let out = dead_letter(r, "p", &e, "readings", 3);
        let names: Vec<&str> = out.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["a", "a", DLT_PLUGIN, DLT_ERROR, DLT_TOPIC, DLT_PARTITION]
        );
        assert_eq!(out.headers[2], h(DLT_PLUGIN, "p"));
        assert_eq!(out.headers[5], h(DLT_PARTITION, "3"));
    }
}
