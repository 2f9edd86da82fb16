//! `runnel bench replication`: what a follower costs the producers of a leader.
//!
//! Each run starts, in this process on loopback, a broker alone and then a two-broker cluster
//! (`[cluster]`, `min_insync_replicas = 2`: acks=all waits for the follower), and runs the same
//! phases of `runnel bench` against each, on fresh brokers and topics:
//! 1. produce throughput with acks=1 and with acks=all (`--records` records of
//!    `--record-size` bytes, as fast as the broker acknowledges them);
//! 2. produce latency with acks=all at `--rate` records/s for `--latency-duration`: the time
//!    from `send` to the delivery report, p50 and p99;
//! 3. commits: `--committers` groups, each on its own connection, committing an offset of one
//!    partition one after another (OffsetCommit, answered once the follower has it) for
//!    `--commit-duration`: commits/s and the time of one commit, p50 and p99.
//!
//! For the cluster, the follower's log end is checked to equal the leader's after the acks=all
//! phase (every acknowledged record copied). The brokers, the follower and the client share
//! this process and the machine's cores, as two brokers on one gateway would not: the figures
//! are a ratio between the two set-ups in one run, medians of `--runs`.

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use edge_config::Config;

use super::bench::{BenchArgs, latency_phase, produce_phase};
use super::bench_plugins::median;
use crate::BrokerHandle;

#[derive(clap::Args, Clone, Debug)]
pub struct ReplicationArgs {
    /// Records per throughput phase.
    #[arg(long, default_value_t = 500_000)]
    pub records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Partitions of each bench topic.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Runs (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Rate of the latency phase, records/s.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Duration of the latency phase.
    #[arg(long, default_value = "5s", value_parser = super::bench::parse_duration)]
    pub latency_duration: Duration,
    /// Groups committing at once in the commit phase (0: no commit phase).
    #[arg(long, default_value_t = 100)]
    pub committers: usize,
    /// Duration of the commit phase.
    #[arg(long, default_value = "5s", value_parser = super::bench::parse_duration)]
    pub commit_duration: Duration,
    /// Append the results as a Markdown table to this file (e.g. BENCHMARKS.md).
    #[arg(long)]
    pub markdown: Option<std::path::PathBuf>,
}

/// What one set-up measured in one run.
struct Figures {
    acks1: f64,
    acks_all: f64,
    p50_ms: f64,
    p99_ms: f64,
    commits: Commits,
}

/// What the commit phase measured.
#[derive(Default)]
struct Commits {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `committers` groups committing offsets of `topic`'s partition 0 for `duration`, each on
/// its own connection, one commit after another.
fn commit_phase(
    rt: &tokio::runtime::Runtime,
    bootstrap: &str,
    topic: &str,
    committers: usize,
    duration: Duration,
) -> anyhow::Result<Commits> {
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::{GroupId, OffsetCommitRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    if committers == 0 {
        return Ok(Commits::default());
    }
    let topic = TopicName(StrBytes::from_string(topic.to_string()));
    let tasks: Vec<_> = (0..committers)
        .map(|k| {
            let (bootstrap, topic) = (bootstrap.to_string(), topic.clone());
            rt.spawn(async move {
                let mut peer = crate::replication::peer::Peer::connect_as(
                    &bootstrap,
                    "runnel-bench",
                    "the broker",
                    None,
                    Duration::from_secs(30),
                )
                .await?;
                let group = GroupId(StrBytes::from_string(format!("bench-commits-{k}")));
                let mut times = Vec::new();
                let started = std::time::Instant::now();
                let mut offset = 0;
                while started.elapsed() < duration {
                    offset += 1;
                    let request = OffsetCommitRequest::default()
                        .with_group_id(group.clone())
                        .with_generation_id_or_member_epoch(-1)
                        .with_topics(vec![
                            OffsetCommitRequestTopic::default()
                                .with_name(topic.clone())
                                .with_partitions(vec![
                                    OffsetCommitRequestPartition::default()
                                        .with_partition_index(0)
                                        .with_committed_offset(offset),
                                ]),
                        ]);
                    let sent = std::time::Instant::now();
                    let answer = peer.call(&request, 8).await?;
                    let code = answer.topics[0].partitions[0].error_code;
                    if code != 0 {
                        bail!(
                            "a commit was refused: {:?}",
                            kafka_protocol::error::ResponseError::try_from_code(code)
                        );
                    }
                    times.push(sent.elapsed());
                }
                anyhow::Ok((times, started.elapsed()))
            })
        })
        .collect();
    let mut times = Vec::new();
    let mut took = Duration::ZERO;
    for t in tasks {
        let (mine, elapsed) = rt.block_on(t)??;
        times.extend(mine);
        took = took.max(elapsed);
    }
    times.sort_unstable();
    let pct = |q: f64| {
        times
            .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(Commits {
        per_s: times.len() as f64 / took.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn config(dir: &Path, port: u16) -> Config {
    let mut cfg = Config::default();
    cfg.broker.data_dir = dir.to_path_buf();
    cfg.listeners.kafka.address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    cfg.listeners.quic.enabled = false;
    cfg.listeners.admin.enabled = false;
    cfg
}

/// Starts the brokers of one set-up: one alone, or a leader (first) and its follower.
fn start(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    replicated: bool,
) -> anyhow::Result<Vec<BrokerHandle>> {
    let ports = [free_port()?, free_port()?];
    let mut configs = vec![config(&dir.join("node1"), ports[0])];
    if replicated {
        configs.push(config(&dir.join("node2"), ports[1]));
        for (i, cfg) in configs.iter_mut().enumerate() {
            cfg.broker.node_id = i as i32 + 1;
            cfg.cluster.brokers = vec![
                format!("1@127.0.0.1:{}", ports[0]),
                format!("2@127.0.0.1:{}", ports[1]),
            ];
            cfg.cluster.min_insync_replicas = 2;
        }
    }
    configs
        .into_iter()
        .map(|cfg| rt.block_on(crate::start_broker(cfg)))
        .collect()
}

fn measure(
    args: &ReplicationArgs,
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    replicated: bool,
) -> anyhow::Result<Figures> {
    let _ = std::fs::remove_dir_all(dir);
    let brokers = start(rt, dir, replicated)?;
    let bench = BenchArgs {
        mode: None,
        bootstrap: brokers[0].bootstrap(),
        records: args.records,
        record_size: args.record_size,
        partitions: args.partitions,
        consumers: 1,
        rate: args.rate,
        latency_duration: args.latency_duration,
        markdown: None,
        label: String::new(),
    };
    let result = (|| {
        let acks1 = produce_phase(&bench, "bench-acks1", "1")?;
        let acks_all = produce_phase(&bench, "bench-acksall", "all")?;
        if let Some(follower) = brokers.get(1) {
            let end = |b: &BrokerHandle| -> i64 {
                b.broker.catalog.get("bench-acksall").map_or(-1, |t| {
                    t.partitions()
                        .iter()
                        .map(|p| p.log().log_end_offset())
                        .sum()
                })
            };
            if end(follower) != end(&brokers[0]) {
                bail!(
                    "the follower holds {} of the leader's {} acknowledged records",
                    end(follower),
                    end(&brokers[0])
                );
            }
        }
        let latency = latency_phase(&bench, "bench-latency")?;
        let commits = commit_phase(
            rt,
            &bench.bootstrap,
            "bench-acks1",
            args.committers,
            args.commit_duration,
        )?;
        Ok(Figures {
            acks1: acks1.rate(),
            acks_all: acks_all.rate(),
            p50_ms: latency.p50_us as f64 / 1000.0,
            p99_ms: latency.p99_us as f64 / 1000.0,
            commits,
        })
    })();
    // The follower first: it would warn that it lost its leader.
    for b in brokers.into_iter().rev() {
        rt.block_on(b.shutdown());
    }
    let _ = std::fs::remove_dir_all(dir);
    result
}

pub fn run(args: ReplicationArgs) -> anyhow::Result<()> {
    if args.runs == 0 || args.records == 0 {
        bail!("--runs and --records must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let dir = std::env::temp_dir().join(format!("runnel-bench-replication-{}", std::process::id()));
    let (mut alone, mut pair) = (Vec::new(), Vec::new());
    for run in 1..=args.runs {
        for (replicated, into) in [(false, &mut alone), (true, &mut pair)] {
            let f = measure(&args, &rt, &dir, replicated)?;
            eprintln!(
                "run {run} {}: acks=1 {:.0}/s, acks=all {:.0}/s, latency at {}/s p50 {:.2} ms p99 {:.2} ms, {} committers {:.0} commits/s p50 {:.2} ms p99 {:.2} ms",
                if replicated {
                    "leader+follower"
                } else {
                    "alone"
                },
                f.acks1,
                f.acks_all,
                args.rate,
                f.p50_ms,
                f.p99_ms,
                args.committers,
                f.commits.per_s,
                f.commits.p50_ms,
                f.commits.p99_ms
            );
            into.push(f);
        }
    }
    let med = |v: &[Figures], f: fn(&Figures) -> f64| median(v.iter().map(f).collect());
    let rows = [("alone", &alone), ("leader + follower", &pair)];
    let mut table = format!(
        "| set-up | produce acks=1 (records/s) | produce acks=all (records/s) | acks=all p50 at {} records/s (ms) | p99 (ms) | commits/s, {} groups | commit p50 (ms) | p99 (ms) |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
        args.rate, args.committers
    );
    for (name, v) in rows {
        table += &format!(
            "| {name} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} |\n",
            med(v, |f| f.acks1),
            med(v, |f| f.acks_all),
            med(v, |f| f.p50_ms),
            med(v, |f| f.p99_ms),
            med(v, |f| f.commits.per_s),
            med(v, |f| f.commits.p50_ms),
            med(v, |f| f.commits.p99_ms)
        );
    }
    let ratio = med(&pair, |f| f.acks_all) / med(&alone, |f| f.acks_all);
    eprintln!(
        "\nmedians of {} runs ({} records of {} bytes, {} partition(s)):\n{table}acks=all throughput with a follower: {:.2} of alone",
        args.runs, args.records, args.record_size, args.partitions, ratio
    );
    if let Some(path) = &args.markdown {
        super::bench::append_markdown(path, format_args!("{table}"))?;
    }
    Ok(())
}
