//! `runnel bench federation`: how fast a gateway forwards its topics to a central cluster.
//!
//! Starts two brokers in this process on loopback, the gateway ("edge") and a stand-in for the
//! central cluster, with one `[[federation.links]]` entry from the edge to central at its
//! defaults (only the retry waits are shortened). Each run measures, on fresh topics of
//! `--partitions` partitions:
//! 1. **live**: `--records` records of `--record-size` bytes produced to the edge as fast as it
//!    acknowledges them (librdkafka, acks=1); the forwarded rate is the records over the time
//!    from the first send until central's log holds all of them;
//! 2. **catch-up**: central is stopped, the same number of records produced to the edge (they
//!    wait in its log), central started again on the same address; the catch-up rate is the
//!    records over the time from the first to the last arriving at central (how long the edge
//!    took to notice central was back is reported beside it);
//! 3. **latency**: `--rate` records/s for `--latency-duration`, each carrying its send time; a
//!    consumer on central reads them, and the time from the send at the edge to the read at
//!    central gives p50, p99 and the maximum.
//!
//! Arrival is read from central's catalog (its log end offsets), not through a client, so the
//! waiting costs central nothing. Both brokers, the producer and the consumer share this
//! process and the machine's cores; medians of the runs are reported.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use edge_config::{Config, FederationLink};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Runtime;

use super::bench_plugins::{Counts, median};
use crate::BrokerHandle;

#[derive(clap::Args, Clone, Debug)]
pub struct FederationArgs {
    /// Records per run of the live and the catch-up measure.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Value size in bytes (at least 8: the latency measure writes the send time into it).
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Partitions of each forwarded topic.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Runs (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Rate of the latency measure, records/s.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Duration of the latency measure.
    #[arg(long, default_value = "10s", value_parser = super::bench::parse_duration)]
    pub latency_duration: Duration,
    /// Append the results as a Markdown table to this file (e.g. BENCHMARKS.md).
    #[arg(long)]
    pub markdown: Option<std::path::PathBuf>,
}

/// Longest wait for records to reach central before the bench gives up.
const DEADLINE: Duration = Duration::from_secs(300);
/// Remote topic names: the local name with this in front.
const REMOTE_PREFIX: &str = "central.";
/// The send time written into a warm-up record of the latency measure.
const WARM_UP: u64 = 0;

/// What one run measured.
struct Run {
    produced_per_s: f64,
    live_per_s: f64,
    /// Time from central's restart to the first record arriving there.
    noticed_ms: f64,
    catch_up_per_s: f64,
    latency: Latency,
}

struct Latency {
    records: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// The two brokers and the runtime they run on.
struct Pair {
    runtime: Runtime,
    edge: BrokerHandle,
    /// `None` while it is stopped for the catch-up measure.
    central: Option<BrokerHandle>,
    central_dir: std::path::PathBuf,
    central_addr: std::net::SocketAddr,
}

fn broker_config(dir: &Path) -> anyhow::Result<Config> {
    let mut cfg = Config::default();
    cfg.broker.data_dir = dir.to_path_buf();
    cfg.listeners.kafka.address = "127.0.0.1:0".parse()?;
    cfg.listeners.quic.enabled = false;
    cfg.listeners.admin.enabled = false;
    Ok(cfg)
}

impl Pair {
    fn start(dir: &Path) -> anyhow::Result<Pair> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let central_dir = dir.join("central");
        let central = runtime.block_on(crate::start_broker(broker_config(&central_dir)?))?;
        let central_addr = central
            .kafka_addr
            .context("central has no Kafka listener")?;
        let mut cfg = broker_config(&dir.join("edge"))?;
        // The edge should notice central's return within a second, not librdkafka's 10 s.
        cfg.federation.retry_backoff = Duration::from_millis(100);
        cfg.federation.retry_backoff_max = Duration::from_secs(1);
        cfg.federation.links.push(FederationLink {
            name: "central".into(),
            bootstrap_servers: central_addr.to_string(),
            topics: vec!["bench.*".into()],
            remote_topic: format!("{REMOTE_PREFIX}{{topic}}"),
            client: [("reconnect.backoff.max.ms".to_owned(), "500".to_owned())].into(),
        });
        let edge = runtime.block_on(crate::start_broker(cfg))?;
        Ok(Pair {
            runtime,
            edge,
            central: Some(central),
            central_dir,
            central_addr,
        })
    }

    fn central(&self) -> &BrokerHandle {
        self.central.as_ref().expect("central is running")
    }

    fn stop_central(&mut self) {
        if let Some(c) = self.central.take() {
            self.runtime.block_on(c.shutdown());
        }
    }

    /// Starts central again on its address; the port may stay busy for a moment.
    fn restart_central(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let mut cfg = broker_config(&self.central_dir)?;
            cfg.listeners.kafka.address = self.central_addr;
            match self.runtime.block_on(crate::start_broker(cfg)) {
                Ok(c) => {
                    self.central = Some(c);
                    return Ok(());
                }
                Err(e) if started.elapsed() < Duration::from_secs(10) => {
                    tracing::debug!(error = %e, "central does not start yet");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e.context("central does not start again")),
            }
        }
    }

    /// Records in `topic` on central (0 if there is no such topic).
    fn central_count(&self, topic: &str) -> u64 {
        let Some(t) = self.central().broker.catalog.get(topic) else {
            return 0;
        };
        t.partitions()
            .iter()
            .map(|p| {
                let log = p.log();
                (log.log_end_offset() - log.log_start_offset()).max(0) as u64
            })
            .sum()
    }

    /// Waits until central holds `n` records of `topic`; returns when the first and the last
    /// of them were seen there.
    fn await_central(&self, topic: &str, n: u64) -> anyhow::Result<(Instant, Instant)> {
        let started = Instant::now();
        let mut first = None;
        loop {
            let got = self.central_count(topic);
            let now = Instant::now();
            if got > 0 && first.is_none() {
                first = Some(now);
            }
            if got >= n {
                return Ok((first.unwrap_or(now), now));
            }
            if started.elapsed() > DEADLINE {
                bail!("{topic}: central holds {got} of {n} records after {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Creates `name` on the edge and waits until the link forwards each of its partitions.
    fn create_forwarded(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        create_topic(&self.runtime, &self.edge.bootstrap(), name, partitions)?;
        let started = Instant::now();
        loop {
            let forwarded = self
                .edge
                .broker
                .federation
                .cursors()
                .iter()
                .filter(|c| c.topic == name)
                .count();
            if forwarded == partitions as usize {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the link does not pick up {name}: {forwarded} of {partitions} partitions");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn shutdown(mut self) {
        self.stop_central();
        self.runtime.block_on(self.edge.shutdown());
    }
}

fn create_topic(
    runtime: &Runtime,
    bootstrap: &str,
    name: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let res = runtime
        .block_on(admin.create_topics(
            [&topic],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(15))),
        ))
        .with_context(|| format!("cannot create {name} on {bootstrap}"))?;
    for r in res {
        if let Err((t, e)) = r {
            bail!("cannot create {t} on {bootstrap}: {e}");
        }
    }
    Ok(())
}

fn producer(bootstrap: &str) -> anyhow::Result<ThreadedProducer<Counts>> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "1")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("enable.idempotence", "false")
        .create_with_context(Counts::default())
        .context("cannot create the producer")
}

fn send(p: &ThreadedProducer<Counts>, topic: &str, value: &[u8]) {
    let mut rec = BaseRecord::<(), [u8], ()>::to(topic).payload(value);
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((_, back)) => {
                rec = back;
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

fn drain(p: &ThreadedProducer<Counts>, topic: &str, n: u64) -> anyhow::Result<()> {
    p.flush(Duration::from_secs(120))
        .context("the producer did not drain")?;
    let (ok, failed) = (
        p.context().ok.load(Ordering::Relaxed),
        p.context().failed.load(Ordering::Relaxed),
    );
    if failed > 0 || ok != n {
        bail!("{topic}: {ok} of {n} records acknowledged by the edge, {failed} failed");
    }
    Ok(())
}

/// Produces `n` records of `size` bytes to `topic` on the edge, round-robin over the
/// partitions; returns the acknowledged rate and when the first send was.
fn produce(bootstrap: &str, topic: &str, n: u64, size: usize) -> anyhow::Result<(f64, Instant)> {
    let p = producer(bootstrap)?;
    let value = vec![b'r'; size];
    let started = Instant::now();
    for _ in 0..n {
        send(&p, topic, &value);
    }
    drain(&p, topic, n)?;
    Ok((n as f64 / started.elapsed().as_secs_f64(), started))
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The latency measure: records at `rate` for `duration` to the edge, read at central.
fn latency(pair: &Pair, topic: &str, args: &FederationArgs) -> anyhow::Result<Latency> {
    let remote = format!("{REMOTE_PREFIX}{topic}");
    // The remote topic made beforehand, so the consumer can be placed before the first record.
    create_topic(
        &pair.runtime,
        &pair.central().bootstrap(),
        &remote,
        args.partitions,
    )?;
    pair.create_forwarded(topic, args.partitions)?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", pair.central().bootstrap())
        .set("group.id", "runnel-bench-federation")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .context("cannot create the consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..args.partitions {
        tpl.add_partition_offset(&remote, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let total = (args.rate as f64 * args.latency_duration.as_secs_f64()) as u64;
    let sent = Arc::new(AtomicU64::new(0));
    let warmed = Arc::new(AtomicU64::new(0));
    let reader = {
        let (sent, warmed) = (sent.clone(), warmed.clone());
        std::thread::spawn(move || -> anyhow::Result<Vec<u64>> {
            let mut latencies = Vec::with_capacity(total as usize);
            let mut last = Instant::now();
            while (latencies.len() as u64) < total {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        let at = now_us();
                        let v = m.payload().unwrap_or_default();
                        let Some(stamp) = v.get(..8) else {
                            bail!("a record of {} bytes arrived", v.len());
                        };
                        let stamp = u64::from_be_bytes(stamp.try_into()?);
                        if stamp == WARM_UP {
                            warmed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        latencies.push(at.saturating_sub(stamp));
                        last = Instant::now();
                    }
                    Some(Err(e)) => bail!("consume failed: {e}"),
                    None if last.elapsed() > Duration::from_secs(60)
                        && sent.load(Ordering::Relaxed) >= total =>
                    {
                        bail!("{} of {total} records arrived at central", latencies.len())
                    }
                    None => {}
                }
            }
            Ok(latencies)
        })
    };
    let p = producer(&pair.edge.bootstrap())?;
    let mut value = vec![b'l'; args.record_size];
    // Warm-up records, not measured: the first ones wait for both clients to learn where the
    // topics are.
    value[..8].copy_from_slice(&WARM_UP.to_be_bytes());
    let warm_up = 100 * args.partitions as u64;
    for _ in 0..warm_up {
        send(&p, topic, &value);
    }
    pair.await_central(&remote, warm_up)?;
    let waiting = Instant::now();
    while warmed.load(Ordering::Relaxed) < warm_up {
        if waiting.elapsed() > Duration::from_secs(30) || reader.is_finished() {
            bail!("the consumer at central does not read the warm-up records");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    let every = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    for i in 0..total {
        let due = started + every.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        value[..8].copy_from_slice(&now_us().to_be_bytes());
        send(&p, topic, &value);
        sent.store(i + 1, Ordering::Relaxed);
    }
    drain(&p, topic, warm_up + total)?;
    let mut l = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))??;
    l.sort_unstable();
    let pct = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)] as f64 / 1000.0;
    Ok(Latency {
        records: l.len(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: *l.last().unwrap_or(&0) as f64 / 1000.0,
    })
}

fn one_run(pair: &mut Pair, run: usize, args: &FederationArgs) -> anyhow::Result<Run> {
    let n = args.records;
    let live = format!("bench.live-{run}");
    pair.create_forwarded(&live, args.partitions)?;
    let (produced_per_s, first_send) = produce(&pair.edge.bootstrap(), &live, n, args.record_size)?;
    let (_, all) = pair.await_central(&format!("{REMOTE_PREFIX}{live}"), n)?;
    let live_per_s = n as f64 / (all - first_send).as_secs_f64();

    let catch_up = format!("bench.catch-up-{run}");
    pair.create_forwarded(&catch_up, args.partitions)?;
    pair.stop_central();
    produce(&pair.edge.bootstrap(), &catch_up, n, args.record_size)?;
    let back = Instant::now();
    pair.restart_central()?;
    let (first, all) = pair.await_central(&format!("{REMOTE_PREFIX}{catch_up}"), n)?;
    let catch_up_per_s = n as f64 / (all - first).as_secs_f64().max(1e-3);
    let noticed_ms = (first - back).as_secs_f64() * 1000.0;

    let latency = latency(pair, &format!("bench.latency-{run}"), args)?;
    Ok(Run {
        produced_per_s,
        live_per_s,
        noticed_ms,
        catch_up_per_s,
        latency,
    })
}

pub fn run(args: FederationArgs) -> anyhow::Result<()> {
    if args.runs == 0 || args.records == 0 || args.partitions < 1 {
        bail!("--runs, --records and --partitions must be at least 1");
    }
    if args.record_size < 8 {
        bail!("--record-size must be at least 8 (the latency measure writes a time into it)");
    }
    let dir = std::env::temp_dir().join(format!("runnel-bench-federation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut pair = Pair::start(&dir)?;
    out!(
        "bench federation: {} records of {} bytes per measure, {} partitions, {} runs; latency at {} records/s for {:?}",
        args.records,
        args.record_size,
        args.partitions,
        args.runs,
        args.rate,
        args.latency_duration
    );
    let mut runs = Vec::new();
    for run in 0..args.runs {
        let r = match one_run(&mut pair, run, &args) {
            Ok(r) => r,
            Err(e) => {
                pair.shutdown();
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        out!(
            "  run {}: produced {:.0}/s, forwarded live {:.0}/s; catch-up {:.0}/s (first record {:.0} ms after central's return); latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} records)",
            run + 1,
            r.produced_per_s,
            r.live_per_s,
            r.catch_up_per_s,
            r.noticed_ms,
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.latency.max_ms,
            r.latency.records
        );
        runs.push(r);
    }
    pair.shutdown();
    let _ = std::fs::remove_dir_all(&dir);

    let m = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let (produced, live, catch_up, noticed) = (
        m(|r| r.produced_per_s),
        m(|r| r.live_per_s),
        m(|r| r.catch_up_per_s),
        m(|r| r.noticed_ms),
    );
    let (p50, p99, max) = (
        m(|r| r.latency.p50_ms),
        m(|r| r.latency.p99_ms),
        m(|r| r.latency.max_ms),
    );
    out!("produced to the edge   {produced:>10.0} records/s (median)");
    out!("forwarded, live        {live:>10.0} records/s (median)");
    out!(
        "forwarded, catch-up    {catch_up:>10.0} records/s (median; first record {noticed:.0} ms after central's return)"
    );
    out!(
        "latency edge->central  p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms at {} records/s (medians)",
        args.rate
    );
    if let Some(path) = &args.markdown {
        super::bench::append_markdown(
            path,
            format_args!(
                "\n| federation bench ({} x {} B, {} partitions, median of {}) | |\n| --- | ---: |\n| produced to the edge | {produced:.0} records/s |\n| forwarded, live | {live:.0} records/s |\n| forwarded, catch-up after an outage | {catch_up:.0} records/s |\n| first record after central's return | {noticed:.0} ms |\n| latency edge to central consumer at {} records/s, p50 / p99 / max | {p50:.1} / {p99:.1} / {max:.1} ms |",
                args.records, args.record_size, args.partitions, args.runs, args.rate
            ),
        )?;
    }
    Ok(())
}
