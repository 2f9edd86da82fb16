//! `runnel bench`: a load generator built on librdkafka, pointed at any Kafka-compatible broker
//! with `--bootstrap`, so Runnel and another broker can be measured side by side.
//!
//! Three phases, each on its own fresh topic:
//! 1. produce throughput: N records of S bytes as fast as the broker acknowledges them, once with
//!    acks=1 and once with acks=all;
//! 2. consume throughput: read the acks=1 topic back from the beginning;
//! 3. produce latency: a fixed rate (records/s) for a fixed time; the time from `send` to the
//!    delivery report of each record, p50/p99/max.
//!
//! `runnel bench devices` is the device benchmark instead (`bench_devices.rs`): many QUIC
//! devices, or as many librdkafka producers over TCP, sending acknowledged readings;
//! `bench plugins` and `bench federation` measure a filter plugin and forwarding to a central
//! cluster; `bench transactions` what exactly-once costs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

#[derive(clap::Args, Clone, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub mode: Option<BenchMode>,
    /// Broker to load (any Kafka-compatible broker).
    #[arg(long, short, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Records per throughput phase.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Partitions of each bench topic.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Consumer clients in the consume phase, each on its own thread with its share of the
    /// partitions (at most one per partition).
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Rate of the latency phase, records/s.
    #[arg(long, default_value_t = 50_000)]
    pub rate: u64,
    /// Duration of the latency phase.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub latency_duration: Duration,
    /// Append the results as a Markdown section to this file (e.g. BENCHMARKS.md).
    #[arg(long)]
    pub markdown: Option<std::path::PathBuf>,
    /// Label for the broker under test in the Markdown output.
    #[arg(long, default_value = "runnel")]
    pub label: String,
}

/// Other benchmarks than the librdkafka produce/consume/latency phases.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum BenchMode {
    /// Many devices, each its own QUIC connection, sending acknowledged readings (or with
    /// --tcp, one librdkafka producer per device).
    Devices(super::bench_devices::DevicesArgs),
    /// Produce throughput with a filter plugin on the topic versus none (a broker in this
    /// process), and how long loading a compiled plugin and a hot reload take.
    Plugins(super::bench_plugins::PluginsArgs),
    /// A gateway forwarding to a central cluster (two brokers in this process): forwarded
    /// records/s live and catching up after an outage, and the latency from edge to central.
    Federation(super::bench_federation::FederationArgs),
    /// The QUIC round trips of `bench devices` in quinn alone (an echo server, no broker, no
    /// SDK): the floor under the devices bench on this machine.
    QuicFloor(super::bench_quic_floor::QuicFloorArgs),
    /// Produce throughput and acks=all latency of a broker alone against a leader with a
    /// follower (`[cluster]`, brokers in this process).
    Replication(super::bench_replication::ReplicationArgs),
    /// What exactly-once costs: an idempotent producer against transactional ones committing
    /// every N records, and read_committed against read_uncommitted consumers.
    Transactions(super::bench_transactions::TransactionsArgs),
}

/// Appends `text` and a newline to `path` (the `--markdown` file of the benches).
pub(super) fn append_markdown(
    path: &std::path::Path,
    text: std::fmt::Arguments<'_>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{text}").with_context(|| format!("cannot write {}", path.display()))
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    edge_config::units::parse_duration(s).ok_or_else(|| format!("invalid duration {s:?}"))
}

/// Counts delivery reports and records the latency of each.
struct Reports {
    ok: AtomicU64,
    failed: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    track_latency: bool,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                if self.track_latency {
                    let us = sent.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    self.latencies_us.lock().unwrap().push(us);
                }
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn producer(
    args: &BenchArgs,
    acks: &str,
    track_latency: bool,
    linger_ms: &str,
) -> anyhow::Result<ThreadedProducer<Reports>> {
    let ctx = Reports {
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        latencies_us: Mutex::new(Vec::new()),
        track_latency,
    };
    ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("acks", acks)
        .set("linger.ms", linger_ms)
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("compression.codec", "none")
        .create_with_context(ctx)
        .context("cannot create the bench producer")
}

fn create_topic(args: &BenchArgs, name: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .create()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // -1: the broker's default replication factor (every broker of a Runnel cluster).
    let topic = NewTopic::new(name, args.partitions, TopicReplication::Fixed(-1));
    let res = rt
        .block_on(admin.create_topics(
            [&topic],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(15))),
        ))
        .with_context(|| format!("cannot create the bench topic on {}", args.bootstrap))?;
    for r in res {
        if let Err((t, e)) = r
            && e != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
        {
            bail!("cannot create bench topic {t}: {e}");
        }
    }
    Ok(())
}

fn send(p: &ThreadedProducer<Reports>, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
    let mut rec =
        BaseRecord::<[u8], [u8], Box<Instant>>::with_opaque_to(topic, Box::new(Instant::now()))
            .payload(payload);
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                std::thread::sleep(Duration::from_micros(200));
            }
            Err((e, _)) => bail!("send failed: {e}"),
        }
    }
}

pub(super) struct Throughput {
    records: u64,
    secs: f64,
}

impl Throughput {
    pub(super) fn rate(&self) -> f64 {
        self.records as f64 / self.secs
    }
}

pub(super) fn produce_phase(
    args: &BenchArgs,
    topic: &str,
    acks: &str,
) -> anyhow::Result<Throughput> {
    create_topic(args, topic)?;
    let p = producer(args, acks, false, "5")?;
    let payload = vec![b'x'; args.record_size];
    let start = Instant::now();
    for _ in 0..args.records {
        send(&p, topic, &payload)?;
    }
    p.flush(Duration::from_secs(120))?;
    let secs = start.elapsed().as_secs_f64();
    let ctx = p.context();
    let failed = ctx.failed.load(Ordering::Relaxed);
    if failed > 0 || ctx.ok.load(Ordering::Relaxed) != args.records {
        bail!("{failed} of {} records failed", args.records);
    }
    Ok(Throughput {
        records: args.records,
        secs,
    })
}

fn consumer(args: &BenchArgs) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("group.id", "runnel-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("queued.min.messages", "1000000")
        .create()
        .context("cannot create the bench consumer")
}

/// Reads the topic back with `--consumers` clients, each on its own thread and its own share
/// of the partitions, all started together; the rate is all records over the slowest client's
/// time.
fn consume_phase(args: &BenchArgs, topic: &str) -> anyhow::Result<Throughput> {
    let n = args.consumers.max(1).min(args.partitions.max(1) as usize);
    let mut shares = Vec::new();
    for i in 0..n {
        let c = consumer(args)?;
        // Learn the leaders and the record counts first, so the measured time is fetching.
        c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let mut tpl = TopicPartitionList::new();
        let mut expect = 0u64;
        for p in (0..args.partitions).filter(|p| *p as usize % n == i) {
            let (low, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
            expect += (high - low) as u64;
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        shares.push((c, tpl, expect));
    }
    let barrier = std::sync::Barrier::new(n);
    let start = Instant::now();
    let results: Vec<anyhow::Result<(u64, f64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|(c, tpl, expect)| {
                let barrier = &barrier;
                scope.spawn(move || -> anyhow::Result<(u64, f64)> {
                    barrier.wait();
                    c.assign(&tpl)?;
                    let mut got = 0u64;
                    let mut bytes = 0usize;
                    while got < expect {
                        match c.poll(Duration::from_secs(10)) {
                            Some(Ok(m)) => {
                                got += 1;
                                bytes += m.payload_len();
                            }
                            Some(Err(e)) => bail!("consume failed: {e}"),
                            None => bail!("consume stalled after {got} records"),
                        }
                    }
                    std::hint::black_box(bytes);
                    Ok((got, start.elapsed().as_secs_f64()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("consumer thread"))
            .collect()
    });
    let mut records = 0;
    let mut secs: f64 = 0.0;
    for r in results {
        let (got, took) = r?;
        records += got;
        secs = secs.max(took);
    }
    Ok(Throughput { records, secs })
}

pub(super) struct Latency {
    sent: u64,
    pub(super) p50_us: u32,
    pub(super) p99_us: u32,
    max_us: u32,
}

pub(super) fn latency_phase(args: &BenchArgs, topic: &str) -> anyhow::Result<Latency> {
    create_topic(args, topic)?;
    let p = producer(args, "all", true, "0")?;
    let payload = vec![b'y'; args.record_size];
    // Warm up the connection and metadata first.
    send(&p, topic, &payload)?;
    p.flush(Duration::from_secs(10))?;
    p.context().latencies_us.lock().unwrap().clear();
    let start = Instant::now();
    let total = (args.rate as f64 * args.latency_duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        send(&p, topic, &payload)?;
    }
    p.flush(Duration::from_secs(30))?;
    let mut l = std::mem::take(&mut *p.context().latencies_us.lock().unwrap());
    if l.is_empty() {
        bail!("no deliveries");
    }
    l.sort_unstable();
    let pct = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)];
    Ok(Latency {
        sent: total,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        max_us: *l.last().unwrap(),
    })
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.mode {
        Some(BenchMode::Devices(d)) => return super::bench_devices::run(d),
        Some(BenchMode::Plugins(p)) => return super::bench_plugins::run(p),
        Some(BenchMode::Federation(f)) => return super::bench_federation::run(f),
        Some(BenchMode::QuicFloor(q)) => return super::bench_quic_floor::run(q),
        Some(BenchMode::Replication(r)) => return super::bench_replication::run(r),
        Some(BenchMode::Transactions(t)) => return super::bench_transactions::run(t),
        None => {}
    }
    let tag = crate::broker::now_ms();
    let t1 = format!("bench-acks1-{tag}");
    let tall = format!("bench-acksall-{tag}");
    let tlat = format!("bench-latency-{tag}");
    eprintln!(
        "bench: {} records of {} bytes against {}",
        args.records, args.record_size, args.bootstrap
    );
    let p1 = produce_phase(&args, &t1, "1")?;
    eprintln!(
        "produce acks=1:   {:>12.0} records/s ({:.2}s)",
        p1.rate(),
        p1.secs
    );
    let pall = produce_phase(&args, &tall, "all")?;
    eprintln!(
        "produce acks=all: {:>12.0} records/s ({:.2}s)",
        pall.rate(),
        pall.secs
    );
    let c = consume_phase(&args, &t1)?;
    eprintln!(
        "consume:          {:>12.0} records/s ({:.2}s)",
        c.rate(),
        c.secs
    );
    let l = latency_phase(&args, &tlat)?;
    eprintln!(
        "latency at {} records/s (acks=all, {} records): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.rate,
        l.sent,
        l.p50_us as f64 / 1000.0,
        l.p99_us as f64 / 1000.0,
        l.max_us as f64 / 1000.0
    );
    if let Some(path) = &args.markdown {
        super::bench::append_markdown(
            path,
            format_args!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
                args.label,
                args.records,
                p1.rate(),
                pall.rate(),
                c.rate(),
                l.p50_us as f64 / 1000.0,
                l.p99_us as f64 / 1000.0
            ),
        )?;
    }
    Ok(())
}
