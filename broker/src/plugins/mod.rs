//! WebAssembly plugins on the produce path (filters, for now).
//!
//! The map:
//! - [`host`]: the wasmtime engine, the on-disk cache of compiled components, the per-call
//!   limits (epoch deadline, memory cap) and the reusable instances of one [`host::Plugin`];
//! - [`quota`]: quota policies (`[[plugins.quotas]]`), asked per produce/fetch request;
//! - this file: [`PluginError`], the registry built from `[plugins]` ([`Plugins`]), and
//!   [`Plugins::filter_produce`], which runs a topic's chain over the record batches of one
//!   produce partition.
//!
//! Invariants:
//! - A topic without a binding never reaches this module: its batches stay zero-copy.
//! - A batch is decoded only when its topic has a chain; batches whose records are all kept are
//!   stored byte for byte as received. Otherwise the kept records are re-encoded with the
//!   producer's codec as ONE batch with contiguous offset deltas (storage, like Kafka, refuses
//!   produced batches with gaps), keeping the producer's attributes, id and epoch ([`reencode`]);
//!   a batch that loses every record is not stored at all.
//! - Batches of idempotent producers (baseSequence >= 0) cannot lose records yet: the stored
//!   batch would cover fewer sequence numbers than the producer used, and its next batch would be
//!   refused as out of order. Such a batch is refused (POLICY_VIOLATION) when a filter drops any
//!   of its records; batches it keeps whole pass as usual.
//! - A failing call (trap, timeout, memory cap, error result, wrong answer) fails that call only;
//!   the binding's `on_error` decides: fail-open passes the batch through that plugin unchanged,
//!   fail-closed refuses the partition's produce with POLICY_VIOLATION.
//! - Plugins get no WASI: every import of a component is defined as a trap (see `host`).
//!
//! The batch frame handed to a filter is documented in `sdk/wit/plugin.wit`; [`frame_records`]
//! writes it.

pub mod host;
pub mod quota;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use edge_config::{OnError, PluginsConfig};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
};

use crate::storage::{self, BatchHeader};

pub use host::{Host, HostLimits, Plugin};

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
    #[error("plugin {name}: does not implement the runnel:plugin filter world: {message}")]
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
}

/// Why a produce batch was refused by the plugin path.
#[derive(Debug, thiserror::Error)]
pub enum ProduceFilterError {
    /// A plugin call failed and its binding is fail-closed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The batch could not be decoded or re-encoded.
    #[error("record batch: {0}")]
    Corrupt(String),
    /// A filter dropped records of an idempotent producer's batch (not supported yet).
    #[error(
        "plugins dropped records of an idempotent producer's batch, which is not supported yet; \
         produce to this topic with enable.idempotence=false"
    )]
    Idempotent,
}

/// A topic's ordered plugin chain.
pub struct Chain {
    pub plugins: Vec<Arc<Plugin>>,
    pub on_error: OnError,
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
    /// Loads the plugins of `config` (compiling into, or loading from, `cache_dir`).
    pub fn load(config: &PluginsConfig, cache_dir: PathBuf) -> Result<Plugins, PluginError> {
        if config.load.is_empty() {
            return Ok(Plugins::default());
        }
        let limits = HostLimits {
            call_timeout: config.call_timeout,
            memory_limit: config.memory_limit,
        };
        // Instances alive at once: a few concurrent calls per plugin.
        let max_instances = (config.load.len() as u32 * 8).max(16);
        let host = Host::new(limits, cache_dir, max_instances)?;
        let mut by_name = HashMap::new();
        let mut loaded = Vec::new();
        for spec in &config.load {
            if config.is_quota_plugin(&spec.name) {
                continue; // a quota-world plugin: loaded by `quota::Quotas::load` below
            }
            let plugin = Arc::new(host.load(&spec.name, &spec.path, &spec.config)?);
            tracing::info!(plugin = %spec.name, path = %spec.path.display(), "plugin loaded");
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
                };
                (b.topic.clone(), Arc::new(chain))
            })
            .collect();
        let quotas = quota::Quotas::load(&host, config)?;
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

/// Runs `chain` over every batch of one produce partition's record data and returns what to
/// append (`records` itself when every record is kept; empty when none is). Blocking (wasm calls): the produce
/// handler runs it with `spawn_blocking`.
pub fn filter_produce(
    chain: &Chain,
    topic: &str,
    partition: i32,
    records: &Bytes,
) -> Result<Bytes, ProduceFilterError> {
    let mut out = BytesMut::new();
    let mut changed = false;
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
        let mut set = RecordBatchDecoder::decode(&mut raw.clone())
            .map_err(|e| ProduceFilterError::Corrupt(format!("{e:#}")))?;
        let before = set.records.len();
        for plugin in &chain.plugins {
            if set.records.is_empty() {
                break;
            }
            let frame = frame_records(topic, partition, &set.records);
            match plugin.filter(frame, set.records.len()) {
                Ok(bitmap) => {
                    let mut i = 0;
                    set.records.retain(|_| {
                        let keep = bitmap[i / 8] & (1 << (i % 8)) != 0;
                        i += 1;
                        keep
                    });
                }
                Err(e) => match chain.on_error {
                    OnError::FailOpen => {
                        tracing::warn!(topic, partition, error = %e, "plugin failed; batch passes it (fail-open)");
                    }
                    OnError::FailClosed => {
                        tracing::warn!(topic, partition, error = %e, "plugin failed; produce refused (fail-closed)");
                        return Err(e.into());
                    }
                },
            }
        }
        if set.records.len() == before {
            out.extend_from_slice(&raw);
            continue;
        }
        if h.base_sequence >= 0 {
            return Err(ProduceFilterError::Idempotent);
        }
        changed = true;
        if !set.records.is_empty() {
            let rewritten = reencode(&h, set.records, set.compression)?;
            out.extend_from_slice(&rewritten);
        }
    }
    Ok(if changed {
        out.freeze()
    } else {
        records.clone()
    })
}

/// Re-encodes the kept records of the batch `h` as one batch with contiguous offset deltas,
/// the producer's compression, attributes, producer id and epoch.
fn reencode(
    h: &BatchHeader,
    mut kept: Vec<Record>,
    compression: Compression,
) -> Result<Vec<u8>, ProduceFilterError> {
    // The encoder starts a new batch whenever `offset - sequence` changes: keep it constant.
    for (i, r) in kept.iter_mut().enumerate() {
        r.offset = i as i64;
        r.sequence = i as i32;
    }
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    RecordBatchEncoder::encode(&mut buf, &kept, &options)
        .map_err(|e| ProduceFilterError::Corrupt(format!("re-encode: {e:#}")))?;
    let mut out = buf.to_vec();
    let nh = BatchHeader::parse(&out).map_err(|e| ProduceFilterError::Corrupt(e.to_string()))?;
    if nh.total_size() != out.len() {
        return Err(ProduceFilterError::Corrupt(
            "re-encode split the records into several batches".into(),
        ));
    }
    storage::put_i16(&mut out, storage::ATTRIBUTES_POS, h.attributes);
    storage::put_i32(&mut out, storage::BASE_SEQUENCE_POS, h.base_sequence);
    storage::rewrite_crc(&mut out);
    Ok(out)
}

/// Writes the batch frame of `sdk/wit/plugin.wit` for `records`.
pub fn frame_records(topic: &str, partition: i32, records: &[Record]) -> Vec<u8> {
    fn nullable(buf: &mut Vec<u8>, v: Option<&[u8]>) {
        match v {
            None => buf.extend_from_slice(&(-1i32).to_le_bytes()),
            Some(v) => {
                buf.extend_from_slice(&(v.len() as i32).to_le_bytes());
                buf.extend_from_slice(v);
            }
        }
    }
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
    let topic = &topic.as_bytes()[..topic.len().min(u16::MAX as usize)];
    let mut buf = Vec::with_capacity(11 + topic.len() + payload);
    buf.push(1);
    buf.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    buf.extend_from_slice(topic);
    buf.extend_from_slice(&partition.to_le_bytes());
    buf.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        buf.extend_from_slice(&r.timestamp.to_le_bytes());
        nullable(&mut buf, r.key.as_deref());
        nullable(&mut buf, r.value.as_deref());
        buf.extend_from_slice(&(r.headers.len() as u32).to_le_bytes());
        for (k, v) in &r.headers {
            buf.extend_from_slice(&(k.len() as u32).to_le_bytes());
            buf.extend_from_slice(k.as_bytes());
            nullable(&mut buf, v.as_deref());
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::TimestampType;

    fn record(key: Option<&'static [u8]>, value: Option<&'static [u8]>) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 0x0102,
            key: key.map(Bytes::from_static),
            value: value.map(Bytes::from_static),
            headers: Default::default(),
        }
    }

    /// The exact bytes of the frame documented in sdk/wit/plugin.wit.
    #[test]
    fn frame_layout_is_exact() {
        let mut r = record(Some(b"k"), None);
        r.headers.insert(
            StrBytes::from_static_str("h"),
            Some(Bytes::from_static(b"v")),
        );
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
    /// attributes.
    #[test]
    fn reencode_makes_one_contiguous_batch() {
        let mut records: Vec<Record> = (0..5).map(|_| record(None, Some(b"v"))).collect();
        for (i, r) in records.iter_mut().enumerate() {
            r.offset = i as i64;
        }
        let mut buf = BytesMut::new();
        let opts = RecordEncodeOptions {
            version: 2,
            compression: Compression::Lz4,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &opts).unwrap();
        let h = BatchHeader::parse(&buf).unwrap();
        let kept = vec![records[1].clone(), records[4].clone()];
        let out = reencode(&h, kept, Compression::Lz4).unwrap();
        let nh = storage::check_batch(&out).unwrap();
        assert_eq!((nh.record_count, nh.last_offset_delta), (2, 1));
        assert_eq!(nh.attributes, h.attributes);
        assert_eq!(nh.base_sequence, -1);
        let set = RecordBatchDecoder::decode(&mut Bytes::from(out)).unwrap();
        assert_eq!(set.records.len(), 2);
        assert_eq!(set.compression, Compression::Lz4);
    }
}
