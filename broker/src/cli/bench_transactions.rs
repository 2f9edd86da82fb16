//! `runnel bench transactions`: what exactly-once costs, against any Kafka-compatible broker
//! (`--bootstrap`), each phase on a fresh topic:
//! 1. an idempotent producer (acks=all), `--records` records as fast as they are acknowledged:
//!    the baseline (after a warm-up of a tenth of that);
//! 2. a transactional producer committing every `--per-transaction` records, for each size
//!    given: records/s over the whole run, and how long each commit took (p50, p99), from the
//!    call to its return: waiting for the transaction's last records, then EndTxn;
//! 3. the last transactional topic read back from the start with `isolation.level`
//!    read_committed and with read_uncommitted.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

#[derive(clap::Args, Clone, Debug)]
pub struct TransactionsArgs {
    /// Broker to load (any Kafka-compatible broker).
    #[arg(long, short, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Records per phase.
    #[arg(long, default_value_t = 500_000)]
    pub records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Records per transaction; one transactional run per size.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    pub per_transaction: Vec<u64>,
    /// Append the results as Markdown table rows to this file (e.g. BENCHMARKS.md).
    #[arg(long)]
    pub markdown: Option<std::path::PathBuf>,
}

const TIMEOUT: Duration = Duration::from_secs(60);

/// A producer polled by the bench's own thread.
fn producer(
    args: &TransactionsArgs,
    transactional_id: Option<&str>,
) -> anyhow::Result<BaseProducer> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &args.bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("compression.codec", "none");
    if let Some(id) = transactional_id {
        cfg.set("transactional.id", id);
    }
    cfg.create().context("cannot create the bench producer")
}

fn send(p: &BaseProducer, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
    let mut rec = BaseRecord::<(), [u8]>::to(topic).payload(payload);
    loop {
        match p.send(rec) {
            Ok(()) => {
                p.poll(Duration::ZERO);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                p.poll(Duration::from_millis(1));
            }
            Err((e, _)) => bail!("send failed: {e}"),
        }
    }
}

/// Waits until every record sent is acknowledged, polling every millisecond. (The rdkafka
/// crate's `flush`, which `commit_transaction` starts with, polls in 100 ms steps and so adds up
/// to 100 ms to every commit: the client's cost, not the broker's.)
fn drain(p: &BaseProducer) -> anyhow::Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    while p.in_flight_count() > 0 {
        if Instant::now() > deadline {
            bail!("records still unacknowledged after {TIMEOUT:?}");
        }
        p.poll(Duration::from_millis(1));
    }
    Ok(())
}

struct Run {
    rate: f64,
    /// Commit latencies (transactional runs only), p50 and p99 in ms.
    commit_ms: Option<(f64, f64)>,
}

fn idempotent(args: &TransactionsArgs, topic: &str) -> anyhow::Result<Run> {
    let p = producer(args, None)?;
    let payload = vec![b'x'; args.record_size];
    let start = Instant::now();
    for _ in 0..args.records {
        send(&p, topic, &payload)?;
    }
    drain(&p)?;
    Ok(Run {
        rate: args.records as f64 / start.elapsed().as_secs_f64(),
        commit_ms: None,
    })
}

fn transactional(args: &TransactionsArgs, topic: &str, size: u64) -> anyhow::Result<Run> {
    let p = producer(args, Some(&format!("{topic}-producer")))?;
    p.init_transactions(TIMEOUT)?;
    let payload = vec![b'x'; args.record_size];
    let mut commits = Vec::new();
    let start = Instant::now();
    let mut sent = 0;
    while sent < args.records {
        p.begin_transaction()?;
        let n = size.min(args.records - sent);
        for _ in 0..n {
            send(&p, topic, &payload)?;
        }
        let committing = Instant::now();
        drain(&p)?;
        p.commit_transaction(TIMEOUT)
            .context("a transaction failed to commit")?;
        commits.push(committing.elapsed().as_secs_f64() * 1000.0);
        sent += n;
    }
    let rate = args.records as f64 / start.elapsed().as_secs_f64();
    commits.sort_by(f64::total_cmp);
    let pct = |q: f64| commits[((commits.len() as f64 * q) as usize).min(commits.len() - 1)];
    Ok(Run {
        rate,
        commit_ms: Some((pct(0.5), pct(0.99))),
    })
}

/// Reads `topic` (partition 0) from the start until `expect` records came; records/s.
fn consume(
    args: &TransactionsArgs,
    topic: &str,
    isolation: &str,
    expect: u64,
) -> anyhow::Result<f64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("group.id", "runnel-bench")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("queued.min.messages", "1000000")
        .create()?;
    c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    let start = Instant::now();
    c.assign(&tpl)?;
    let mut got = 0;
    while got < expect {
        match c.poll(Duration::from_secs(10)) {
            Some(Ok(_)) => got += 1,
            Some(Err(e)) => bail!("consume failed: {e}"),
            None => bail!("consume stalled after {got} of {expect} records"),
        }
    }
    Ok(expect as f64 / start.elapsed().as_secs_f64())
}

pub fn run(args: TransactionsArgs) -> anyhow::Result<()> {
    let tag = crate::broker::now_ms();
    let topic = |what: &str| format!("bench-{what}-{tag}");
    eprintln!(
        "bench transactions: {} records of {} bytes per phase against {}",
        args.records, args.record_size, args.bootstrap
    );
    // A warm-up first, so that the baseline does not pay for the first connections and the
    // broker's first segment files alone.
    let warm_up = TransactionsArgs {
        records: args.records / 10,
        ..args.clone()
    };
    idempotent(&warm_up, &topic("warm-up"))?;
    let base = idempotent(&args, &topic("idempotent"))?;
    eprintln!(
        "idempotent producer:           {:>10.0} records/s",
        base.rate
    );
    let mut rows = vec![("idempotent, acks=all".to_string(), base)];
    let mut last = None;
    for &size in &args.per_transaction {
        if size == 0 {
            bail!("--per-transaction sizes must be at least 1");
        }
        let t = topic(&format!("txn{size}"));
        let run = transactional(&args, &t, size)?;
        let (p50, p99) = run.commit_ms.unwrap_or_default();
        eprintln!(
            "transactions of {size:>6} records: {:>10.0} records/s ({:.2}), commit p50 {p50:.2} ms, p99 {p99:.2} ms",
            run.rate,
            run.rate / rows[0].1.rate
        );
        rows.push((format!("transactions of {size}"), run));
        last = Some(t);
    }
    let mut reads = Vec::new();
    if let Some(t) = last {
        for isolation in ["read_committed", "read_uncommitted"] {
            let rate = consume(&args, &t, isolation, args.records)?;
            eprintln!("consume {isolation:<16}       {rate:>10.0} records/s");
            reads.push((isolation, rate));
        }
    }
    if let Some(path) = &args.markdown {
        let base = rows[0].1.rate;
        for (label, run) in &rows {
            let commit = run
                .commit_ms
                .map_or("-".to_string(), |(a, b)| format!("{a:.2} / {b:.2}"));
            super::bench::append_markdown(
                path,
                format_args!(
                    "| produce, {label} | {:.0} | {:.2} | {commit} |",
                    run.rate,
                    run.rate / base
                ),
            )?;
        }
        for (isolation, rate) in reads {
            super::bench::append_markdown(
                path,
                format_args!("| consume, {isolation} | {rate:.0} | | |"),
            )?;
        }
    }
    Ok(())
}
