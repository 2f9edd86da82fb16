//! `runnel bench plugins`: what a filter plugin costs on the produce path.
//!
//! Starts a broker in this process (temp data dir, loopback) with one topic bound to the given
//! filter plugin (fail-open) and one without, then produces the same 100-byte JSON readings to
//! each with librdkafka (acks=1, batches of up to 1,000 records), alternating runs so both see
//! the same machine load; reports the median throughput of each and their ratio, the plugin's
//! time per call and per record, the cost of the call alone (no broker or client around it),
//! and how long loading a compiled plugin and a hot reload take.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use edge_config::{Binding, Config, OnError, PluginSpec};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

use crate::plugins::{Host, HostLimits};
use crate::storage::record_spans::OwnedRecord;

#[derive(clap::Args, Clone, Debug)]
pub struct PluginsArgs {
    /// The filter plugin to measure (e.g. the JSON field filter, `json_filter.wasm`).
    #[arg(long)]
    pub wasm: PathBuf,
    /// Its config string.
    #[arg(long, default_value = "temp > 20")]
    pub config: String,
    /// Records per run and topic.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// The producer's `compression.codec` (none, gzip, snappy, lz4, zstd).
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Runs per topic (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Append the results as a Markdown section to this file (e.g. BENCHMARKS.md).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

/// Delivery reports: how many succeeded and failed.
#[derive(Default)]
pub(super) struct Counts {
    pub(super) ok: AtomicU64,
    pub(super) failed: AtomicU64,
}

impl ClientContext for Counts {}

impl ProducerContext for Counts {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// The `i`-th reading: JSON of exactly 100 bytes whose `temp` runs over 0..40, so a
/// `temp > 20` filter keeps about half.
pub fn reading(i: u64) -> Vec<u8> {
    let head = format!(
        r#"{{"device":"d{:05}","temp":{}.{},"hum":{},"seq":{i},"pad":""#,
        i % 1000,
        i % 40,
        i % 10,
        40 + i % 20
    );
    let mut v = head.into_bytes();
    while v.len() < 98 {
        v.push(b'x');
    }
    v.extend_from_slice(b"\"}");
    v
}

/// A reading as the broker decodes it from a produce request.
fn record(value: Vec<u8>) -> OwnedRecord {
    OwnedRecord {
        timestamp: 1_700_000_000_000,
        key: None,
        value: Some(Bytes::from(value)),
        headers: Vec::new(),
    }
}

/// Produces `n` readings to `topic` and returns records/s (acknowledged).
fn produce(bootstrap: &str, topic: &str, n: u64, codec: &str) -> anyhow::Result<f64> {
    let p: ThreadedProducer<Counts> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.codec", codec)
        .set("acks", "1")
        .set("linger.ms", "5")
        .set("batch.num.messages", "1000")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("enable.idempotence", "false")
        .create_with_context(Counts::default())
        .context("cannot create the producer")?;
    let payloads: Vec<Vec<u8>> = (0..1000).map(reading).collect();
    let started = Instant::now();
    for i in 0..n {
        let payload = &payloads[(i % 1000) as usize];
        let mut rec = BaseRecord::<(), [u8], ()>::to(topic)
            .payload(payload)
            .partition(0);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }
    p.flush(Duration::from_secs(120))
        .context("the producer did not drain")?;
    let secs = started.elapsed().as_secs_f64();
    let (ok, failed) = (
        p.context().ok.load(Ordering::Relaxed),
        p.context().failed.load(Ordering::Relaxed),
    );
    if failed > 0 || ok != n {
        bail!("{topic}: {ok} of {n} records acknowledged, {failed} failed");
    }
    Ok(n as f64 / secs)
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(args: PluginsArgs) -> anyhow::Result<()> {
    if args.runs == 0 || args.records == 0 {
        bail!("--runs and --records must be at least 1");
    }
    let wasm = std::fs::canonicalize(&args.wasm)
        .with_context(|| format!("cannot find {}", args.wasm.display()))?;
    let dir = std::env::temp_dir().join(format!("runnel-bench-plugins-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = Config::default();
    cfg.broker.data_dir = dir.join("data");
    cfg.listeners.kafka.address = "127.0.0.1:0".parse()?;
    cfg.listeners.quic.enabled = false;
    cfg.listeners.admin.enabled = false;
    cfg.log.flush = edge_config::FlushPolicy::Never;
    cfg.plugins.load = vec![PluginSpec {
        name: "filter".into(),
        path: wasm.clone(),
        config: args.config.clone(),
    }];
    cfg.plugins.bindings = vec![Binding {
        topic: "filtered".into(),
        chain: vec!["filter".into()],
        on_error: OnError::FailOpen,
        dead_letter_topic: None,
    }];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let handle = runtime.block_on(crate::start_broker(cfg))?;
    let bootstrap = handle.bootstrap();
    out!(
        "bench plugins: {} x 100-byte JSON readings per run ({}), {} runs per topic, filter {} ({:?})",
        args.records,
        args.compression,
        args.runs,
        wasm.display(),
        args.config
    );
    // Warm up both topics (creation, page cache, plugin instances).
    produce(&bootstrap, "plain", 20_000, &args.compression)?;
    produce(&bootstrap, "filtered", 20_000, &args.compression)?;
    let set = handle.broker.plugins.current();
    let stats = &set.loaded[0].stats;
    let (calls0, busy0) = (
        stats.calls.load(Ordering::Relaxed),
        stats.busy_nanos.load(Ordering::Relaxed),
    );
    let (mut plain, mut filtered) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        let a = produce(&bootstrap, "plain", args.records, &args.compression)?;
        let b = produce(&bootstrap, "filtered", args.records, &args.compression)?;
        out!(
            "  run {}: no plugin {a:.0} records/s, filter {b:.0} records/s",
            run + 1
        );
        plain.push(a);
        filtered.push(b);
    }
    let calls = stats.calls.load(Ordering::Relaxed) - calls0;
    let busy = stats.busy_nanos.load(Ordering::Relaxed) - busy0;
    let faults = stats.faults.load(Ordering::Relaxed);
    drop(set);
    let records = args.records * args.runs as u64;
    let per_call_us = busy as f64 / calls.max(1) as f64 / 1000.0;
    let per_record_ns = busy as f64 / records as f64;

    // Loading a compiled plugin (engine, cached artifact, instance, init) and a hot reload.
    let new_host = || {
        Host::new(
            HostLimits {
                call_timeout: Duration::from_millis(100),
                memory_limit: 64 << 20,
                disable_after: 0,
            },
            dir.join("data/plugin-cache"),
            16,
        )
    };
    let mut loads = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        new_host()?.load("filter", &wasm, &args.config)?;
        loads.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    // The plugin call alone, away from the broker and the client: the frame of 1,000
    // readings, called `CALLS` times in a row on one instance; the median is what the machine's
    // noise leaves least touched.
    const CALLS: usize = 301;
    let readings: Vec<OwnedRecord> = (0..1000).map(|i| record(reading(i))).collect();
    let frame = crate::plugins::frame_records("filtered", 0, &readings);
    let plugin = new_host()?.load("filter", &wasm, &args.config)?;
    let mut alone = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let frame = frame.clone();
        let started = Instant::now();
        plugin.call(frame, Ok)?;
        alone.push(started.elapsed().as_secs_f64() * 1e9 / readings.len() as f64);
    }
    let alone_best = alone.iter().copied().fold(f64::INFINITY, f64::min);
    let alone_ns = median(alone);
    let mut reloads = Vec::new();
    for _ in 0..5 {
        let report = handle.broker.reload_plugins()?;
        reloads.push(report.elapsed_us as f64 / 1000.0);
    }
    runtime.block_on(handle.shutdown());
    let _ = std::fs::remove_dir_all(&dir);

    let (p, f) = (median(plain), median(filtered));
    let cost = (1.0 - f / p) * 100.0;
    let (load_ms, reload_ms) = (median(loads), median(reloads));
    out!("no plugin      {p:>12.0} records/s (median)");
    out!("json filter    {f:>12.0} records/s (median): {cost:.1}% lower");
    out!(
        "plugin time    {per_call_us:.1} us per call ({calls} calls, ~{:.0} records each), {per_record_ns:.0} ns per record, {faults} faults",
        records as f64 / calls.max(1) as f64
    );
    out!(
        "plugin alone   {alone_ns:.0} ns per record (median of {CALLS} calls of 1,000 readings; fastest {alone_best:.0} ns)"
    );
    out!("load compiled  {load_ms:.2} ms (median of 5: engine, cached artifact, instance, init)");
    out!("hot reload     {reload_ms:.2} ms (median of 5: read config, load, swap)");
    if let Some(path) = &args.markdown {
        super::bench::append_markdown(
            path,
            format_args!(
                "\n| plugin bench | records/s (median of {}) |\n| --- | ---: |\n| no plugin | {p:.0} |\n| JSON filter `{}` | {f:.0} ({cost:.1}% lower) |\n| plugin time per call / per record | {per_call_us:.1} us / {per_record_ns:.0} ns |\n| plugin call alone, per record (median / fastest of {CALLS}) | {alone_ns:.0} ns / {alone_best:.0} ns |\n| load compiled plugin / hot reload | {load_ms:.2} ms / {reload_ms:.2} ms |",
                args.runs, args.config
            ),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn readings_are_100_byte_json_with_temps_on_both_sides_of_20() {
        let mut hot = 0;
        for i in 0..1000 {
            let r = super::reading(i);
            assert_eq!(r.len(), 100, "{}", String::from_utf8_lossy(&r));
            let v: serde_json::Value = serde_json::from_slice(&r).unwrap();
            hot += (v["temp"].as_f64().unwrap() > 20.0) as usize;
        }
        assert!((400..=600).contains(&hot), "{hot}");
    }
}
