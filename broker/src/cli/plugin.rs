//! `runnel plugin list|reload`: the plugins of a running broker, through its admin HTTP
//! listener (`GET /plugins`, `POST /plugins/reload`); `runnel plugin test`: one plugin run
//! locally over sample records or requests, with the broker's host and limits.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use edge_config::{PluginSpec, PluginsConfig};
use serde_json::value::RawValue;

use crate::admin::plugins::PluginList;
use crate::plugins::output::parse_output;
use crate::plugins::quota::{Decision, QuotaPolicy, RequestInfo};
use crate::plugins::{Host, HostLimits, Kind, Plugin, PluginError, check_bitmap, frame_records};
use crate::storage::record_spans::OwnedRecord;

fn agent() -> ureq::Agent {
    // Non-2xx answers carry a JSON error body worth showing.
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into()
}

fn answer(
    what: &str,
    admin: &str,
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> anyhow::Result<serde_json::Value> {
    let mut response = response.with_context(|| {
        format!("cannot reach the admin listener at {admin} (is the broker running with [listeners.admin] enabled?)")
    })?;
    let status = response.status();
    let body = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("{what}: cannot read the answer"))?;
    let value: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("{what}: not JSON (HTTP {status}): {body}"))?;
    if !status.is_success() {
        let error = value["error"].as_str().unwrap_or(body.as_str());
        bail!("{what} failed: {error}");
    }
    Ok(value)
}

/// Prints one line per loaded plugin.
pub fn list(admin: &str) -> anyhow::Result<()> {
    let url = format!("http://{admin}/plugins");
    let value = answer("plugin list", admin, agent().get(&url).call())?;
    let list: PluginList = serde_json::from_value(value).context("unexpected /plugins answer")?;
    if list.plugins.is_empty() {
        out!("no plugins loaded");
        return Ok(());
    }
    out!(
        "{:<20} {:<9} {:<8} {:>10} {:>8} {:>9} {:>12} {:>10}  TOPICS  PATH",
        "NAME",
        "KIND",
        "STATE",
        "CALLS",
        "FAULTS",
        "INSTANCES",
        "TIME",
        "PER CALL"
    );
    for p in &list.plugins {
        let per_call = p
            .busy_us
            .checked_div(p.calls)
            .map_or_else(|| "-".to_string(), |us| format!("{us}us"));
        out!(
            "{:<20} {:<9} {:<8} {:>10} {:>8} {:>9} {:>12} {:>10}  {}  {}",
            p.name,
            p.kind,
            if p.disabled { "disabled" } else { "ok" },
            p.calls,
            p.faults,
            p.instantiations,
            format!("{:.3}s", p.busy_us as f64 / 1e6),
            per_call,
            if p.topics.is_empty() {
                "-".to_string()
            } else {
                p.topics.join(",")
            },
            p.path
        );
    }
    out!("reloads since start: {}", list.reloads);
    Ok(())
}

/// Asks the broker to reload `[plugins]` and prints what it did.
pub fn reload(admin: &str) -> anyhow::Result<()> {
    let url = format!("http://{admin}/plugins/reload");
    let report = answer("plugin reload", admin, agent().post(&url).send_empty())?;
    out!(
        "reloaded: {} plugins, {} bindings in {:.1} ms",
        report["plugins"],
        report["bindings"],
        report["elapsed_us"].as_f64().unwrap_or(0.0) / 1000.0
    );
    if let Some(sections) = report["needs_restart"].as_array().filter(|s| !s.is_empty()) {
        let names: Vec<&str> = sections.iter().filter_map(|s| s.as_str()).collect();
        out!(
            "note: [{}] changed too; those take effect after a restart",
            names.join("], [")
        );
    }
    Ok(())
}

/// What `runnel plugin test` runs.
pub struct TestArgs<'a> {
    pub wasm: &'a Path,
    pub input: &'a Path,
    pub config: &'a str,
    /// The topic and partition the records claim to be produced to.
    pub topic: &'a str,
    pub partition: i32,
    /// Records per call (filters and transforms); 0 = the whole file in one batch.
    pub batch: usize,
}

/// Runs a plugin over sample records (filters, transforms) or sample requests (quota policies)
/// with the broker's own host and limits, and prints what it kept, changed or decided.
pub fn test(args: TestArgs<'_>) -> anyhow::Result<()> {
    let limits = HostLimits {
        call_timeout: PluginsConfig::default().call_timeout,
        memory_limit: PluginsConfig::default().memory_limit,
        disable_after: 0,
    };
    let cache = std::env::temp_dir().join("runnel-plugin-cache");
    let host = Host::new(limits, cache, 4)?;
    let name = args
        .wasm
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let text = std::fs::read_to_string(args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let started = Instant::now();
    match host.load(&name, args.wasm, args.config) {
        Ok(plugin) => {
            out!(
                "{name}: {} plugin, loaded in {:.1} ms",
                kind_name(plugin.kind()),
                ms(started)
            );
            let records = lines
                .iter()
                .map(|(n, l)| {
                    sample_record(l).with_context(|| format!("{}:{n}", args.input.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            test_batches(&plugin, &records, &args)
        }
        Err(PluginError::Interface { .. }) => {
            let spec = PluginSpec {
                name: name.clone(),
                path: args.wasm.to_path_buf(),
                config: args.config.to_owned(),
            };
            let policy = QuotaPolicy::load(&host, &spec, Default::default())?;
            out!("{name}: quota policy, loaded in {:.1} ms", ms(started));
            let mut failed = 0;
            for (n, line) in &lines {
                let (request, now) = sample_request(line)
                    .with_context(|| format!("{}:{n}", args.input.display()))?;
                let decision = match policy.decide(&request, now) {
                    Ok(Decision::Allow) => "allow".to_string(),
                    Ok(Decision::Throttle(ms)) => format!("throttle {ms} ms"),
                    Ok(Decision::Reject(reason)) => format!("reject: {reason}"),
                    Err(e) => {
                        failed += 1;
                        format!("FAILED: {e}")
                    }
                };
                out!(
                    "{n:>4}  {decision:<24} client_id={} principal={} api={} topic={} bytes={} records={}",
                    request.client_id,
                    request.principal,
                    api_name(request.api_key),
                    request.topic,
                    request.bytes,
                    request.records
                );
            }
            if failed > 0 {
                bail!("{failed} call(s) failed: the binding's on_error policy would apply");
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Filter => "filter",
        Kind::Transform => "transform",
    }
}

fn api_name(key: i16) -> &'static str {
    match key {
        0 => "produce",
        1 => "fetch",
        _ => "other",
    }
}

fn test_batches(
    plugin: &Plugin,
    records: &[OwnedRecord],
    args: &TestArgs<'_>,
) -> anyhow::Result<()> {
    let size = if args.batch == 0 {
        records.len().max(1)
    } else {
        args.batch
    };
    let (mut kept, mut written, mut routed, mut failed) = (0usize, 0usize, 0usize, 0usize);
    for (b, chunk) in records.chunks(size).enumerate() {
        let first = b * size;
        let frame = frame_records(args.topic, args.partition, chunk);
        let started = Instant::now();
        let fail = |e: PluginError| {
            out!(
                "batch of {} records (input lines {}..={}) FAILED: {e}",
                chunk.len(),
                first + 1,
                first + chunk.len()
            );
        };
        match plugin.kind() {
            Kind::Filter => {
                let bitmap = match plugin.call(frame, |bitmap| {
                    check_bitmap(&bitmap, chunk.len()).map(|()| bitmap)
                }) {
                    Ok(b) => b,
                    Err(e) => {
                        fail(e);
                        failed += 1;
                        continue;
                    }
                };
                let took = ms(started);
                for (i, r) in chunk.iter().enumerate() {
                    let keep = bitmap[i / 8] & (1 << (i % 8)) != 0;
                    kept += keep as usize;
                    out!(
                        "{:>4}  {:<8} {}",
                        first + i + 1,
                        if keep { "kept" } else { "dropped" },
                        show(r.key.as_deref(), r.value.as_deref(), &header_list(r))
                    );
                }
                out!("      (batch of {} in {took:.2} ms)", chunk.len());
            }
            Kind::Transform => {
                // Routes the broker refuses whatever its topics (invalid or internal names) fail
                // the call there, as here; whether a valid name exists is the broker's to say.
                let read = |answer: Vec<u8>| {
                    let outs = parse_output(answer.into())?;
                    for name in outs.iter().filter_map(|o| o.topic.as_deref()) {
                        crate::catalog::validate_topic_name(name).map_err(|e| {
                            format!("routes a record to a topic the broker refuses: {e}")
                        })?;
                    }
                    Ok(outs)
                };
                let out = match plugin.call(frame, read) {
                    Ok(out) => out,
                    Err(e) => {
                        fail(e);
                        failed += 1;
                        continue;
                    }
                };
                let took = ms(started);
                out!(
                    "batch of {} records (input lines {}..={}) -> {} records in {took:.2} ms",
                    chunk.len(),
                    first + 1,
                    first + chunk.len(),
                    out.len()
                );
                for r in &out {
                    let to = match &r.topic {
                        Some(t) => {
                            routed += 1;
                            format!("-> {t}")
                        }
                        None => format!("-> {}", args.topic),
                    };
                    written += 1;
                    let headers: Vec<(String, Option<Vec<u8>>)> = r
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_ref().map(|v| v.to_vec())))
                        .collect();
                    out!(
                        "      {to:<16} {}",
                        show(r.key.as_deref(), r.value.as_deref(), &headers)
                    );
                }
            }
        }
    }
    match plugin.kind() {
        Kind::Filter => out!("kept {kept} of {} records", records.len()),
        Kind::Transform => out!(
            "{} records in, {written} out ({routed} routed to other topics)",
            records.len()
        ),
    }
    if failed > 0 {
        bail!("{failed} call(s) failed: the binding's on_error policy would apply");
    }
    Ok(())
}

fn header_list(r: &OwnedRecord) -> Vec<(String, Option<Vec<u8>>)> {
    r.headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_ref().map(|v| v.to_vec())))
        .collect()
}

/// `key=… value=… headers={…}` with bytes shown as text when they are UTF-8.
fn show(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[(String, Option<Vec<u8>>)]) -> String {
    fn text(b: Option<&[u8]>) -> String {
        match b {
            None => "null".into(),
            Some(b) => match std::str::from_utf8(b) {
                Ok(s) => s.to_owned(),
                Err(_) => format!("<{} bytes>", b.len()),
            },
        }
    }
    let mut out = format!("key={} value={}", text(key), text(value));
    if !headers.is_empty() {
        let h: Vec<String> = headers
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v.as_deref())))
            .collect();
        out.push_str(&format!(" headers={{{}}}", h.join(", ")));
    }
    out
}

/// A sample record: `{"key": "d1", "value": {...} | "text" | null, "headers": {"h": "v"},
/// "timestamp": 1700000000000}`; every field optional. A JSON value that is not a string is
/// written as compact JSON text, as a producer of JSON would send it.
fn sample_record(line: &str) -> anyhow::Result<OwnedRecord> {
    // Raw values keep a JSON value's text exactly as written (field order, spacing).
    let obj: BTreeMap<String, Box<RawValue>> =
        serde_json::from_str(line).context("not a JSON object")?;
    let bytes = |raw: Option<&RawValue>| -> anyhow::Result<Option<Bytes>> {
        let Some(raw) = raw else { return Ok(None) };
        let text = raw.get();
        Ok(match text {
            "null" => None,
            t if t.starts_with('"') => Some(Bytes::from(serde_json::from_str::<String>(t)?)),
            t => Some(Bytes::copy_from_slice(t.as_bytes())),
        })
    };
    let mut headers = Vec::new();
    if let Some(h) = obj.get("headers") {
        let h: BTreeMap<String, Box<RawValue>> =
            serde_json::from_str(h.get()).context("\"headers\" is an object of name: value")?;
        for (k, v) in h {
            headers.push((k, bytes(Some(&v))?));
        }
    }
    let timestamp = match obj.get("timestamp") {
        None => crate::broker::now_ms(),
        Some(t) => serde_json::from_str::<i64>(t.get())
            .context("\"timestamp\" is milliseconds since the epoch")?,
    };
    Ok(OwnedRecord {
        timestamp,
        key: bytes(obj.get("key").map(|v| &**v))?,
        value: bytes(obj.get("value").map(|v| &**v))?,
        headers,
    })
}
/// A sample request for a quota policy: `{"client_id": "c1", "principal": "User:ANONYMOUS",
/// "listener": "kafka", "api": "produce" | "fetch", "topic": "t", "bytes": 1000, "records": 10,
/// "now_ms": 0}`; every field optional (`now_ms` defaults to the wall clock).
fn sample_request(line: &str) -> anyhow::Result<(RequestInfo, i64)> {
    let v: serde_json::Value = serde_json::from_str(line).context("not a JSON object")?;
    let s = |k: &str, d: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or(d).to_owned();
    let api_key = match v.get("api").and_then(|x| x.as_str()).unwrap_or("produce") {
        "produce" => 0,
        "fetch" => 1,
        other => bail!("\"api\": {other:?} is not produce or fetch"),
    };
    let request = RequestInfo {
        client_id: s("client_id", ""),
        principal: s("principal", "User:ANONYMOUS"),
        listener: s("listener", "kafka"),
        api_key,
        topic: s("topic", "test"),
        bytes: v.get("bytes").and_then(|x| x.as_u64()).unwrap_or(0),
        records: v.get("records").and_then(|x| x.as_u64()).unwrap_or(0) as u32,
    };
    let now = v
        .get("now_ms")
        .and_then(|x| x.as_i64())
        .unwrap_or_else(crate::broker::now_ms);
    Ok((request, now))
}
