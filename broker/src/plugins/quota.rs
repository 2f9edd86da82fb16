//! Quota policies (`[[plugins.quotas]]`): plugins of the `quota` world asked, per request, to
//! allow, throttle or reject it; and how their answers reach clients, the Kafka way.
//!
//! The map:
//! - [`QuotaPolicy`]: one loaded quota plugin, ONE live instance behind a mutex. A policy keeps
//!   state (token buckets) in its instance, so every call of a policy must see the same
//!   instance; the call is small (~1 us), so serializing it costs little. After a fault the
//!   instance is rebuilt (and `init` run again): its state starts over.
//! - [`Quotas`]: the bindings of `[[plugins.quotas]]`, with [`Quotas::matching`] picking the
//!   policies a request is asked about (API, listener, principal).
//! - [`produce`] and [`fetch`]: what the handlers call. Produce asks once per topic of the
//!   request, with that topic's record-data bytes and record count, before anything is
//!   appended; a rejected topic's partitions get POLICY_VIOLATION and nothing of that topic is
//!   written. Fetch asks once per topic of the built response, with the record bytes it returns
//!   (Kafka's fetch quota counts response bytes); a rejected topic's partitions lose their
//!   records and get POLICY_VIOLATION.
//! - Throttling: the longest throttle of a request becomes its `throttle_time_ms`, and the
//!   connection is muted that long ([`Ctx::throttle_ms`], read by `net::conn`): no further
//!   request of that connection is read or handled until the time has passed. The response is
//!   sent at once, whatever its version, as Kafka does since 2.0 (KIP-219): clients of the newer
//!   versions hold back by themselves, older ones find their next request waiting.
//!
//! Invariants:
//! - No policy matches -> no call, no allocation: [`Quotas::matching`] returns `None` before
//!   building anything.
//! - Every policy matching a request is asked; the strictest answer wins ([`strictest`]).
//! - A failing call (trap, timeout, memory cap) costs that call only: the binding's `on_error`
//!   allows (fail-open) or rejects (fail-closed) and the policy's fault counter rises.
//! - Calls are blocking wasm calls: they run under `spawn_blocking`, one task per request.
//!
//! Why POLICY_VIOLATION for a rejection: clients treat it as permanent (librdkafka fails the
//! messages and reports "Broker: Policy violation"; the Java client raises a non-retriable
//! PolicyViolationException), so a refused producer is told why and does not retry in a loop.
//! THROTTLING_QUOTA_EXCEEDED is retriable (and meant for topic-admin quotas), and an
//! authorization error would misstate the cause.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use edge_config::{OnError, PluginSpec, PluginsConfig, QuotaApi};
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::{ApiKey, FetchResponse, ProduceRequest};
use wasmtime::Store;
use wasmtime::component::{ComponentType, Lift, Lower, TypedFunc};

use super::PluginError;
use super::host::{Host, Linked, State, Stats};
use crate::broker::now_ms;
use crate::log_budget::{LogBudget, within_budget};
use crate::protocol::Ctx;
use crate::storage::BatchHeader;

/// Failed quota calls said a minute (each is counted in runnel_plugin_faults_total).
static CALL_FAILED: LogBudget = LogBudget::new(20);

/// The `request-info` record of the `quota` world (`sdk/wit/plugin.wit`); field order is the
/// WIT order.
#[derive(ComponentType, Lower, Clone, Debug)]
#[component(record)]
pub struct RequestInfo {
    #[component(name = "client-id")]
    pub client_id: String,
    pub principal: String,
    pub listener: String,
    #[component(name = "api-key")]
    pub api_key: i16,
    pub topic: String,
    pub bytes: u64,
    pub records: u32,
}

/// The `decision` variant of the `quota` world.
#[derive(ComponentType, Lift, Clone, Debug, PartialEq, Eq)]
#[component(variant)]
pub enum Decision {
    #[component(name = "allow")]
    Allow,
    /// Throttle the client this many milliseconds.
    #[component(name = "throttle")]
    Throttle(u32),
    /// Refuse, with this reason.
    #[component(name = "reject")]
    Reject(String),
}

type InitFn = TypedFunc<(String,), (Result<(), String>,)>;
type DecideFn = TypedFunc<(RequestInfo, i64), (Decision,)>;

/// One live instance of a policy and its store.
struct Live {
    store: Store<State>,
    decide: DecideFn,
}

/// A loaded quota plugin.
pub struct QuotaPolicy {
    linked: Linked,
    config: String,
    live: Mutex<Option<Live>>,
    /// Shared across reloads, as a filter's ([`crate::plugins::host::Plugin::stats`]).
    pub stats: Arc<Stats>,
}

impl QuotaPolicy {
    /// Links the component of `spec` and builds its instance (running `init`), so a plugin of
    /// the wrong world or a config its `init` refuses fails at start-up.
    /// `stats`: the counters it counts in (those of the policy a reload replaces, or new).
    pub fn load(
        host: &Host,
        spec: &PluginSpec,
        stats: Arc<Stats>,
    ) -> Result<QuotaPolicy, PluginError> {
        let policy = QuotaPolicy {
            linked: host.link(&spec.name, &spec.path)?,
            config: spec.config.clone(),
            live: Mutex::new(None),
            stats,
        };
        let live = policy.instantiate()?;
        *policy.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(live);
        Ok(policy)
    }

    pub fn name(&self) -> &str {
        self.linked.name()
    }

    fn instantiate(&self) -> Result<Live, PluginError> {
        self.stats.instantiations.fetch_add(1, Ordering::Relaxed);
        let (mut store, instance) = self.linked.instantiate()?;
        let world = |e: wasmtime::Error| PluginError::World {
            name: self.name().to_owned(),
            world: "quota",
            message: format!("{e:#}"),
        };
        let init: InitFn = instance.get_typed_func(&mut store, "init").map_err(world)?;
        let decide: DecideFn = instance
            .get_typed_func(&mut store, "decide")
            .map_err(world)?;
        let (result,) = init
            .call(&mut store, (self.config.clone(),))
            .map_err(|e| self.linked.classify(&mut store, e))?;
        result.map_err(|message| PluginError::Init {
            name: self.name().to_owned(),
            message,
        })?;
        Ok(Live { store, decide })
    }

    /// Asks the policy about one request. Blocking: run it off the async workers.
    pub fn decide(&self, request: &RequestInfo, now_ms: i64) -> Result<Decision, PluginError> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let result = self.decide_inner(request, now_ms);
        self.stats
            .busy_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if result.is_err() {
            self.stats.faults.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn decide_inner(&self, request: &RequestInfo, now_ms: i64) -> Result<Decision, PluginError> {
        let mut slot = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let mut live = match slot.take() {
            Some(live) => live,
            None => self.instantiate()?,
        };
        self.linked.arm(&mut live.store);
        // On a trap the instance is dropped here (not put back): the next call rebuilds it, as
        // a component instance is unusable after a trap.
        let (decision,) = live
            .decide
            .call(&mut live.store, (request.clone(), now_ms))
            .map_err(|e| self.linked.classify(&mut live.store, e))?;
        *slot = Some(live);
        Ok(decision)
    }
}

/// One `[[plugins.quotas]]` entry with its loaded policy.
struct Bound {
    policy: Arc<QuotaPolicy>,
    binding: edge_config::QuotaBinding,
}

/// A policy asked about one request, and what its failure decides.
#[derive(Clone)]
pub struct Matched {
    pub policy: Arc<QuotaPolicy>,
    pub on_error: OnError,
}

/// The quota bindings; empty (and free) when `[[plugins.quotas]]` names none.
#[derive(Default)]
pub struct Quotas {
    bound: Vec<Bound>,
    /// The loaded policies, once each, in `[[plugins.load]]` order.
    pub loaded: Vec<Arc<QuotaPolicy>>,
}

impl Quotas {
    /// Loads the plugins named by `[[plugins.quotas]]` entries (each once) into `host`.
    /// A policy named as one of `earlier` (the set a reload replaces) keeps its counters.
    pub fn load(
        host: &Host,
        config: &PluginsConfig,
        earlier: Option<&Quotas>,
    ) -> Result<Quotas, PluginError> {
        let mut loaded: Vec<Arc<QuotaPolicy>> = Vec::new();
        for spec in config
            .load
            .iter()
            .filter(|s| config.is_quota_plugin(&s.name))
        {
            let stats = earlier
                .and_then(|e| e.loaded.iter().find(|p| p.name() == spec.name))
                .map_or_else(Arc::default, |p| p.stats.clone());
            let policy = QuotaPolicy::load(host, spec, stats)?;
            tracing::info!(plugin = %spec.name, path = %spec.path.display(), "quota policy loaded");
            loaded.push(Arc::new(policy));
        }
        let bound = config
            .quotas
            .iter()
            .filter_map(|b| {
                let policy = loaded.iter().find(|p| p.name() == b.plugin)?.clone();
                Some(Bound {
                    policy,
                    binding: b.clone(),
                })
            })
            .collect();
        Ok(Quotas { bound, loaded })
    }

    /// The policies asked about a request of `api` from `ctx`'s connection; `None` (without
    /// allocating) when there are none.
    pub fn matching(&self, api: QuotaApi, ctx: &Ctx) -> Option<Vec<Matched>> {
        let listener = ctx.session.listener.name();
        let principal = principal_of(ctx);
        let applies = |b: &&Bound| b.binding.applies(api, listener, principal);
        if !self.bound.iter().any(|b| applies(&b)) {
            return None;
        }
        Some(
            self.bound
                .iter()
                .filter(applies)
                .map(|b| Matched {
                    policy: b.policy.clone(),
                    on_error: b.binding.on_error,
                })
                .collect(),
        )
    }
}

/// The stricter of two decisions: a reject over a throttle over an allow; the longer of two
/// throttles; the first of two rejects.
pub fn strictest(a: Decision, b: Decision) -> Decision {
    match (a, b) {
        (r @ Decision::Reject(_), _) | (_, r @ Decision::Reject(_)) => r,
        (Decision::Throttle(x), Decision::Throttle(y)) => Decision::Throttle(x.max(y)),
        (t @ Decision::Throttle(_), Decision::Allow)
        | (Decision::Allow, t @ Decision::Throttle(_)) => t,
        (Decision::Allow, Decision::Allow) => Decision::Allow,
    }
}

/// Asks every policy about every request; one combined decision per request. Blocking.
pub fn ask(policies: &[Matched], requests: &[RequestInfo], now_ms: i64) -> Vec<Decision> {
    requests
        .iter()
        .map(|request| {
            policies.iter().fold(Decision::Allow, |acc, m| {
                let decision = match m.policy.decide(request, now_ms) {
                    Ok(Decision::Throttle(0)) => Decision::Allow,
                    Ok(d) => d,
                    Err(e) => match m.on_error {
                        OnError::FailOpen => {
                            within_budget!(CALL_FAILED, warn, topic = %request.topic, error = %e, "quota call failed; request allowed (fail-open)");
                            Decision::Allow
                        }
                        // The config refuses dead-letter for quota policies; reject if it ever came.
                        OnError::FailClosed | OnError::DeadLetter => {
                            within_budget!(CALL_FAILED, warn, topic = %request.topic, error = %e, "quota call failed; request rejected (fail-closed)");
                            Decision::Reject(e.to_string())
                        }
                    },
                };
                strictest(acc, decision)
            })
        })
        .collect()
}

/// Runs [`ask`] on the blocking pool. A failed task (a panic in the host code, never the
/// plugin's) rejects, with a log line.
async fn ask_blocking(policies: Vec<Matched>, requests: Vec<RequestInfo>) -> Vec<Decision> {
    let n = requests.len();
    let now = now_ms();
    match tokio::task::spawn_blocking(move || ask(&policies, &requests, now)).await {
        Ok(decisions) => decisions,
        Err(e) => {
            tracing::error!(error = %e, "quota task failed");
            vec![Decision::Reject("quota check failed in the broker".into()); n]
        }
    }
}

/// The connection's principal; `User:ANONYMOUS` until a SASL client has authenticated (it gets
/// no request but the SASL ones handled before that).
fn principal_of(ctx: &Ctx) -> &str {
    ctx.session.identity.principal().unwrap_or("User:ANONYMOUS")
}

fn request_info(ctx: &Ctx, api: ApiKey, topic: &str, bytes: u64, records: u32) -> RequestInfo {
    RequestInfo {
        client_id: ctx.client_id.to_string(),
        principal: principal_of(ctx).to_owned(),
        listener: ctx.session.listener.name().to_owned(),
        api_key: api as i16,
        topic: topic.to_owned(),
        bytes,
        records,
    }
}

/// Records in the whole batches of `data` (batch headers only, no CRC check; a malformed tail
/// is not counted: storage refuses it later anyway).
fn count_records(data: &[u8]) -> u32 {
    let mut pos = 0;
    let mut n = 0u32;
    while pos < data.len() {
        let Ok(h) = BatchHeader::parse(&data[pos..]) else {
            break;
        };
        if h.batch_length <= 0 || h.total_size() > data.len() - pos {
            break;
        }
        n = n.saturating_add(h.record_count.max(0) as u32);
        pos += h.total_size();
    }
    n
}

/// The decision for each topic of a produce request (in request order), or `None` when no
/// policy applies to it.
pub async fn produce(ctx: &Ctx, req: &ProduceRequest) -> Option<Vec<Decision>> {
    let policies = ctx
        .broker
        .plugins
        .current()
        .quotas
        .matching(QuotaApi::Produce, ctx)?;
    let requests = req
        .topic_data
        .iter()
        .map(|t| {
            let (bytes, records) = t
                .partition_data
                .iter()
                .filter_map(|p| p.records.as_ref())
                .fold((0u64, 0u32), |(b, r), data| {
                    (b + data.len() as u64, r.saturating_add(count_records(data)))
                });
            request_info(ctx, ApiKey::Produce, &t.name, bytes, records)
        })
        .collect();
    Some(ask_blocking(policies, requests).await)
}

/// Asks the fetch policies about each topic of `response` and applies their answers: rejected
/// topics lose their records (POLICY_VIOLATION), and the longest throttle is set on the response
/// and the connection. `name_of` gives a topic's name from the one the response holds (Fetch
/// v13+ holds topics by id); a topic it gives none for (an id no topic has) is not asked about.
pub async fn fetch(
    ctx: &Ctx,
    response: &mut FetchResponse,
    name_of: impl Fn(&str) -> Option<String>,
) {
    let Some(policies) = ctx
        .broker
        .plugins
        .current()
        .quotas
        .matching(QuotaApi::Fetch, ctx)
    else {
        return;
    };
    // The topics asked about: (index in the response, request).
    let (asked, requests): (Vec<usize>, Vec<RequestInfo>) = response
        .responses
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let name = name_of(&t.topic)?;
            let (bytes, records) = t
                .partitions
                .iter()
                .filter_map(|p| p.records.as_ref())
                .fold((0u64, 0u32), |(b, r), data| {
                    (b + data.len() as u64, r.saturating_add(count_records(data)))
                });
            Some((i, request_info(ctx, ApiKey::Fetch, &name, bytes, records)))
        })
        .unzip();
    if requests.is_empty() {
        return;
    }
    let decisions = ask_blocking(policies, requests).await;
    for (&i, decision) in asked.iter().zip(&decisions) {
        let topic = &mut response.responses[i];
        if let Decision::Reject(reason) = decision {
            tracing::debug!(topic = ?topic.topic, reason, "fetch rejected by a quota policy");
            for p in &mut topic.partitions {
                p.error_code = E::PolicyViolation.code();
                p.records = Some(Default::default());
            }
        }
    }
    response.throttle_time_ms = throttle(ctx, &decisions);
}

/// Counts the request's decisions in the metrics, and returns its throttle (the longest one)
/// after handing it to the connection to mute it.
/// The longest throttle applied, whatever a policy answers: a connection muted longer than a
/// client's request timeout (30 s by default in Kafka clients) only turns into timeouts and
/// reconnects, and a buggy policy must not mute a client for days.
pub const MAX_THROTTLE_MS: u32 = 30_000;

pub fn throttle(ctx: &Ctx, decisions: &[Decision]) -> i32 {
    let metrics = &ctx.broker.metrics;
    let mut ms = 0u32;
    let mut rejected = false;
    for d in decisions {
        match d {
            Decision::Allow => {}
            Decision::Throttle(t) => ms = ms.max(*t),
            Decision::Reject(_) => rejected = true,
        }
    }
    if rejected {
        metrics.quota_rejected.fetch_add(1, Ordering::Relaxed);
    }
    if ms > MAX_THROTTLE_MS {
        tracing::debug!(
            asked = ms,
            applied = MAX_THROTTLE_MS,
            "quota throttle capped"
        );
        ms = MAX_THROTTLE_MS;
    }
    if ms > 0 {
        metrics.quota_throttled.fetch_add(1, Ordering::Relaxed);
        ctx.throttle_ms.fetch_max(ms, Ordering::Relaxed);
    }
    ms.min(i32::MAX as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strictest_decision_wins() {
        use Decision::*;
        let r = |s: &str| Reject(s.into());
        assert_eq!(strictest(Allow, Allow), Allow);
        assert_eq!(strictest(Allow, Throttle(5)), Throttle(5));
        assert_eq!(strictest(Throttle(9), Throttle(5)), Throttle(9));
        assert_eq!(strictest(Throttle(9), r("x")), r("x"));
        assert_eq!(strictest(r("first"), r("second")), r("first"));
        assert_eq!(strictest(r("x"), Allow), r("x"));
    }

    #[test]
    fn records_are_counted_from_batch_headers() {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions,
        };
        let records: Vec<Record> = (0..7)
            .map(|i| Record {
                offset: i,
                sequence: i as i32,
                ..crate::storage::plain_record(0, None, Some(bytes::Bytes::from_static(b"v")))
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        let opts = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, &records[..3], &opts).unwrap();
        RecordBatchEncoder::encode(&mut buf, &records[3..], &opts).unwrap();
        assert_eq!(count_records(&buf), 7);
        // A torn second batch is not counted; garbage counts nothing; nothing panics.
        assert_eq!(count_records(&buf[..buf.len() - 1]), 3);
        assert_eq!(count_records(b"garbage"), 0);
        for cut in 0..buf.len() {
            count_records(&buf[..cut]);
        }
    }
}
