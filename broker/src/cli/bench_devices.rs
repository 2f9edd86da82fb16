//! `runnel bench devices`: many simulated devices, each with its own QUIC connection (its own
//! client endpoint and UDP socket) made by the device SDK (`runnel-device`), sending acknowledged
//! readings at a fixed rate to one broker; or, with `--tcp`, the same load shape from librdkafka
//! producers over Kafka TCP (one producer, i.e. one connection, per device).
//!
//! Reported: acknowledged readings/s (all acknowledged readings over the time from the first
//! send to the last acknowledgement, so a backlog drained after the sending stops counts
//! against the rate), acknowledgement latency p50/p99/max (from handing the reading to the
//! client library to its acknowledgement), readings refused by a full buffer or failed, the
//! broker's peak resident memory (`VmHWM` in `/proc/<pid>/status`) and the CPU time the broker
//! and this process used while sending, and UDP receive-buffer drops on the machine.
//!
//! The devices run on one single-thread tokio runtime per CPU (`--runtimes`), each device's
//! tasks on one thread, as each real device runs on its own; `--runtimes 0` puts them all on one
//! multi-thread runtime instead.
//!
//! Without `--server`/`--bootstrap` the bench starts `runnel serve` (this same executable) as a
//! child process on free loopback ports and a fresh temporary data dir, so that its memory is
//! measured alone; with them, pass `--broker-pid` to get the broker's memory.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use runnel_device::{Acks, Delivery, Device, DeviceConfig, DeviceError, Trust};

#[derive(clap::Args, Clone, Debug)]
pub struct DevicesArgs {
    /// Simulated devices, each with its own connection.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Readings per second per device.
    #[arg(long, default_value_t = 250.0)]
    pub rate: f64,
    /// How long the devices send.
    #[arg(long, default_value = "20s", value_parser = super::bench::parse_duration)]
    pub duration: Duration,
    /// Bytes of each reading's value.
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// The client's linger (SDK `linger`, librdkafka `linger.ms`).
    #[arg(long, default_value = "5ms", value_parser = super::bench::parse_duration)]
    pub linger: Duration,
    /// How often each device hands the readings that fell due to the client library.
    #[arg(long, default_value = "5ms", value_parser = super::bench::parse_duration)]
    pub tick: Duration,
    /// Partitions of the readings topic; device i writes to partition i mod this.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Send over Kafka TCP with one librdkafka producer per device instead of QUIC.
    #[arg(long)]
    pub tcp: bool,
    /// The QUIC listener of a broker already running (default: start one as a child process).
    #[arg(long, requires = "fingerprint")]
    pub server: Option<SocketAddr>,
    /// The SHA-256 fingerprint of that broker's QUIC certificate.
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// The Kafka listener of a broker already running (for --tcp, and to create the topic).
    #[arg(long)]
    pub bootstrap: Option<String>,
    /// The process id of a broker already running, to report its memory and CPU.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// How the simulated devices share this process's CPUs: N splits them over N
    /// single-thread tokio runtimes, each on an OS thread of its own, so that a device's tasks
    /// (the SDK's, quinn's) never wake another thread, as on a real device; 0 runs them all on
    /// one multi-thread runtime. Default: one per CPU.
    #[arg(long)]
    pub runtimes: Option<usize>,
    /// Devices connecting at the same time during set-up.
    #[arg(long, default_value_t = 50)]
    pub connect_concurrency: usize,
    /// Append the result as a Markdown table row to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Label of the row.
    #[arg(long, default_value = "runnel")]
    pub label: String,
}

/// What one device (or producer) saw.
#[derive(Default)]
struct DeviceStats {
    acked: u64,
    failed: u64,
    refused: u64,
    latencies_us: Vec<u32>,
    last_ack: Option<Instant>,
}

/// A broker the bench started, killed when dropped.
struct ChildBroker {
    child: Child,
    /// The broker's data dir, removed when the bench ends.
    data: tempfile::TempDir,
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the broker under test listens.
struct Target {
    quic: Option<(SocketAddr, String)>,
    bootstrap: Option<String>,
    pid: Option<u32>,
    _child: Option<ChildBroker>,
}

fn free_port(udp: bool) -> anyhow::Result<u16> {
    Ok(if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    })
}

/// Starts `runnel serve` from this executable on free loopback ports and a temporary data dir;
/// returns once both listeners answer.
fn start_child() -> anyhow::Result<Target> {
    let data = tempfile::tempdir()?;
    let (tcp, udp) = (free_port(false)?, free_port(true)?);
    let exe = std::env::current_exe().context("cannot find the runnel executable")?;
    let child = Command::new(exe)
        .arg("serve")
        .env("RUST_LOG", "warn")
        .env("RUNNEL_BROKER__DATA_DIR", data.path())
        .env(
            "RUNNEL_LISTENERS__KAFKA__ADDRESS",
            format!("127.0.0.1:{tcp}"),
        )
        .env("RUNNEL_LISTENERS__QUIC__ENABLED", "true")
        .env(
            "RUNNEL_LISTENERS__QUIC__ADDRESS",
            format!("127.0.0.1:{udp}"),
        )
        .env("RUNNEL_LISTENERS__ADMIN__ENABLED", "false")
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start the broker")?;
    let pid = child.id();
    let mut broker = ChildBroker { child, data };
    let cert = broker.data.path().join("quic").join("cert.pem");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = broker.child.try_wait()? {
            bail!("the broker exited at start: {status}");
        }
        let up = std::net::TcpStream::connect(("127.0.0.1", tcp)).is_ok();
        if up && cert.is_file() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the broker did not start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let fingerprint = cert_fingerprint(&cert)?;
    eprintln!("broker started: pid {pid}, quic 127.0.0.1:{udp}, kafka 127.0.0.1:{tcp}");
    Ok(Target {
        quic: Some((SocketAddr::from(([127, 0, 0, 1], udp)), fingerprint)),
        bootstrap: Some(format!("127.0.0.1:{tcp}")),
        pid: Some(pid),
        _child: Some(broker),
    })
}

fn cert_fingerprint(pem: &Path) -> anyhow::Result<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(pem)
        .with_context(|| format!("cannot read the broker certificate {}", pem.display()))?;
    Ok(runnel_device::fingerprint_of(&der))
}

/// `VmHWM` and `VmRSS` of `pid`, in KiB.
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// User + system CPU seconds of `pid` ("self" for this process).
pub(super) fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// UDP datagrams dropped by the kernel for full receive buffers, machine-wide.
fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let i = names.iter().position(|n| *n == "RcvbufErrors")?;
    values.get(i)?.parse().ok()
}

fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let created = rt
        .block_on(admin.create_topics(
            [&t],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(15))),
        ))
        .with_context(|| format!("cannot create the bench topic on {bootstrap}"))?;
    for r in created {
        if let Err((t, e)) = r
            && e != RDKafkaErrorCode::TopicAlreadyExists
        {
            bail!("cannot create bench topic {t}: {e}");
        }
    }
    Ok(())
}

struct Outcome {
    stats: Vec<DeviceStats>,
    started: Instant,
    stopped_sending: Instant,
    broker_cpu: Option<f64>,
    client_cpu: Option<f64>,
}

pub fn run(args: DevicesArgs) -> anyhow::Result<()> {
    if args.devices == 0 || args.rate <= 0.0 {
        bail!("--devices and --rate must be positive");
    }
    let target = match (&args.server, &args.bootstrap) {
        (None, None) => start_child()?,
        (server, bootstrap) => Target {
            quic: server.map(|s| (s, args.fingerprint.clone().unwrap_or_default())),
            bootstrap: bootstrap.clone(),
            pid: args.broker_pid,
            _child: None,
        },
    };
    let topic = format!("bench-devices-{}", crate::broker::now_ms());
    match &target.bootstrap {
        Some(b) => create_topic(b, &topic, args.partitions)?,
        None if args.partitions > 1 => bail!("--partitions > 1 needs --bootstrap"),
        None => {}
    }
    let transport = if args.tcp {
        "Kafka/TCP (librdkafka)"
    } else {
        "QUIC (runnel-device)"
    };
    let runtimes = match device_runtimes(&args) {
        _ if args.tcp => String::new(),
        0 => ", devices on one multi-thread runtime".into(),
        n => format!(", devices on {n} single-thread runtimes"),
    };
    eprintln!(
        "bench devices: {} devices x {} readings/s of {} bytes for {:?} over {transport}, linger {:?}{runtimes}",
        args.devices, args.rate, args.record_size, args.duration, args.linger
    );
    let drops_before = udp_rcvbuf_errors();
    let outcome = if args.tcp {
        let Some(bootstrap) = target.bootstrap.clone() else {
            bail!("--tcp needs --bootstrap (or no --server, to start a broker)");
        };
        run_tcp(&args, &bootstrap, &topic, target.pid)?
    } else {
        let Some((server, fingerprint)) = target.quic.clone() else {
            bail!("QUIC devices need --server and --fingerprint (or neither, to start a broker)");
        };
        run_quic_on_runtimes(&args, server, &fingerprint, &topic, target.pid)?
    };
    let drops = match (drops_before, udp_rcvbuf_errors()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    report(&args, transport, &outcome, target.pid, drops)
}

fn report(
    args: &DevicesArgs,
    transport: &str,
    o: &Outcome,
    pid: Option<u32>,
    udp_drops: Option<u64>,
) -> anyhow::Result<()> {
    let acked: u64 = o.stats.iter().map(|s| s.acked).sum();
    let failed: u64 = o.stats.iter().map(|s| s.failed).sum();
    let refused: u64 = o.stats.iter().map(|s| s.refused).sum();
    let last = o.stats.iter().filter_map(|s| s.last_ack).max();
    let secs = last
        .unwrap_or(o.stopped_sending)
        .max(o.stopped_sending)
        .duration_since(o.started)
        .as_secs_f64();
    let mut lat: Vec<u32> = o
        .stats
        .iter()
        .flat_map(|s| s.latencies_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    let rate = acked as f64 / secs;
    let mem = pid.and_then(memory_kib);
    out!(
        "{transport}: {} devices, {acked} acknowledged in {secs:.2}s = {rate:.0} readings/s; \
         failed {failed}, refused {refused}; latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        args.devices,
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    if let Some((hwm, rss)) = mem {
        out!(
            "broker memory: peak {:.1} MiB (VmHWM), now {:.1} MiB (VmRSS)",
            hwm as f64 / 1024.0,
            rss as f64 / 1024.0
        );
    }
    let cpu = |c: Option<f64>| c.map_or("?".to_string(), |c| format!("{c:.1}"));
    out!(
        "cpu while sending: broker {} s, bench {} s; UDP receive-buffer drops {}",
        cpu(o.broker_cpu),
        cpu(o.client_cpu),
        udp_drops.map_or("?".to_string(), |d| d.to_string())
    );
    if let Some(path) = &args.markdown {
        super::bench::append_markdown(
            path,
            format_args!(
                "| {} | {transport} | {} | {} | {rate:.0} | {:.2} | {:.2} | {} | {} | {} |",
                args.label,
                args.devices,
                (args.devices as f64 * args.rate) as u64,
                pct(0.50),
                pct(0.99),
                mem.map_or("?".to_string(), |(h, _)| format!(
                    "{:.0}",
                    h as f64 / 1024.0
                )),
                cpu(o.broker_cpu),
                cpu(o.client_cpu),
            ),
        )?;
    }
    Ok(())
}

/// The value of every reading.
fn payload(size: usize) -> Vec<u8> {
    vec![b'r'; size]
}

/// How many readings are due `elapsed` after a device's start at `rate` per second.
fn due(rate: f64, elapsed: Duration) -> u64 {
    (rate * elapsed.as_secs_f64()) as u64
}

/// Runs the QUIC devices on the runtimes `--runtimes` asks for; see [`run_quic`].
fn run_quic_on_runtimes(
    args: &DevicesArgs,
    server: SocketAddr,
    fingerprint: &str,
    topic: &str,
    pid: Option<u32>,
) -> anyhow::Result<Outcome> {
    let acked_total = Arc::new(AtomicU64::new(0));
    // Every runtime simulates one shard of the devices on its own thread.
    let simulate = |rt: tokio::runtime::Runtime, shard: Shard| {
        rt.block_on(run_quic(
            args,
            server,
            fingerprint,
            topic,
            pid,
            shard,
            acked_total.clone(),
        ))
    };
    let runtimes = device_runtimes(args);
    if runtimes == 0 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let shard = Shard {
            devices: 0..args.devices,
            start: Arc::new(tokio::sync::Barrier::new(1)),
            lead: true,
        };
        return simulate(rt, shard);
    }
    let n = runtimes.min(args.devices);
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let outcomes = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let shard = Shard {
                    devices: args.devices * i / n..args.devices * (i + 1) / n,
                    start: start.clone(),
                    lead: i == 0,
                };
                let simulate = &simulate;
                scope.spawn(move || -> anyhow::Result<Outcome> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    simulate(rt, shard)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| anyhow::anyhow!("a device runtime panicked"))?
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let mut outcomes = outcomes.into_iter();
    let mut all = outcomes.next().context("no device runtime")?;
    for o in outcomes {
        all.stats.extend(o.stats);
        all.started = all.started.min(o.started);
    }
    Ok(all)
}

/// `--runtimes`, or one per CPU.
fn device_runtimes(args: &DevicesArgs) -> usize {
    args.runtimes.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    })
}

/// The devices one runtime simulates.
struct Shard {
    devices: std::ops::Range<usize>,
    /// Every runtime's devices start sending together, once all are connected.
    start: Arc<tokio::sync::Barrier>,
    /// The one runtime that reports progress and measures the CPU used.
    lead: bool,
}

async fn run_quic(
    args: &DevicesArgs,
    server: SocketAddr,
    fingerprint: &str,
    topic: &str,
    pid: Option<u32>,
    shard: Shard,
    acked_total: Arc<AtomicU64>,
) -> anyhow::Result<Outcome> {
    let gate = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency.max(1)));
    let mut connecting = Vec::new();
    for n in shard.devices.clone() {
        let mut cfg = DeviceConfig::new(server, Trust::Fingerprint(fingerprint.to_string()));
        cfg.client_id = format!("bench-device-{n}");
        cfg.acks = Acks::All;
        cfg.linger = args.linger;
        let gate = gate.clone();
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            Device::connect(cfg).await
        }));
    }
    let set_up = Instant::now();
    let mut devices = Vec::new();
    let mut failed = None;
    for c in connecting {
        match c
            .await
            .map_err(anyhow::Error::from)
            .and_then(|d| d.context("a device cannot connect"))
        {
            Ok(d) => devices.push(d),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    // Every runtime passes both barriers (the start and the end), even one that failed, so
    // that the others do not wait for it for ever.
    shard.start.wait().await;
    if let Some(e) = failed {
        shard.start.wait().await;
        return Err(e);
    }
    if shard.lead {
        eprintln!(
            "{} devices connected in {:.1}s",
            args.devices,
            set_up.elapsed().as_secs_f64()
        );
    }
    let progress = shard.lead.then(|| spawn_progress(acked_total.clone()));
    let (broker_cpu0, client_cpu0) = (pid.and_then(|p| cpu_secs(&p.to_string())), cpu_secs("self"));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (n, device) in shard.devices.clone().zip(devices) {
        let partition = n as i32 % args.partitions.max(1);
        // Spread the devices' ticks over one tick period.
        let offset = args.tick.mul_f64(n as f64 / args.devices as f64);
        let sim = Sim {
            topic: topic.to_string(),
            partition,
            rate: args.rate,
            tick: args.tick,
            duration: args.duration,
            value: payload(args.record_size),
            key: format!("device-{n}").into_bytes(),
            acked_total: acked_total.clone(),
        };
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            let stats = sim.run(&device).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), device.close()).await;
            stats
        }));
    }
    let stopped_sending = started + args.duration;
    let mut stats = Vec::new();
    let mut failed = None;
    for t in tasks {
        match t.await {
            Ok(s) => stats.push(s),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    // The CPU is measured once every runtime's devices are done.
    shard.start.wait().await;
    if let Some(e) = failed {
        return Err(e.into());
    }
    if let Some(p) = progress {
        p.abort();
    }
    Ok(Outcome {
        stats,
        started,
        stopped_sending,
        broker_cpu: broker_cpu0
            .zip(pid.and_then(|p| cpu_secs(&p.to_string())))
            .map(|(a, b)| b - a),
        client_cpu: client_cpu0.zip(cpu_secs("self")).map(|(a, b)| b - a),
    })
}

fn spawn_progress(acked: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = 0;
        loop {
            tick.tick().await;
            let now = acked.load(Ordering::Relaxed);
            eprintln!("acknowledged {now} ({}/s)", now - last);
            last = now;
        }
    })
}

/// One simulated device's load.
struct Sim {
    topic: String,
    partition: i32,
    rate: f64,
    tick: Duration,
    duration: Duration,
    value: Vec<u8>,
    key: Vec<u8>,
    acked_total: Arc<AtomicU64>,
}

impl Sim {
    /// Every tick, hands the readings due since the last one to the device; meanwhile takes
    /// the acknowledgements (they come in order) and times them. Ends when all are answered
    /// (or 30 s after the sending stopped).
    async fn run(&self, device: &Device) -> DeviceStats {
        let mut stats = DeviceStats::default();
        let mut pending: VecDeque<(Instant, Delivery)> = VecDeque::new();
        let start = Instant::now();
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent = 0u64;
        let mut sending = true;
        let give_up = tokio::time::sleep(self.duration + Duration::from_secs(30));
        tokio::pin!(give_up);
        loop {
            tokio::select! {
                r = next_ack(&mut pending) => {
                    let (at, result) = r;
                    match result {
                        Ok(_) => {
                            let now = Instant::now();
                            stats.acked += 1;
                            stats.last_ack = Some(now);
                            let us = now.duration_since(at).as_micros().min(u32::MAX as u128);
                            stats.latencies_us.push(us as u32);
                            self.acked_total.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => stats.failed += 1,
                    }
                }
                _ = tick.tick(), if sending => {
                    let elapsed = start.elapsed();
                    if elapsed >= self.duration {
                        sending = false;
                    }
                    let target = due(self.rate, elapsed.min(self.duration));
                    let now = Instant::now();
                    while sent < target {
                        sent += 1;
                        match device.enqueue(&self.topic, self.partition, Some(&self.key), &self.value) {
                            Ok(d) => pending.push_back((now, d)),
                            Err(DeviceError::BufferFull) => stats.refused += 1,
                            Err(_) => stats.failed += 1,
                        }
                    }
                }
                _ = &mut give_up => {
                    stats.failed += pending.len() as u64;
                    break;
                }
            }
            if !sending && pending.is_empty() {
                break;
            }
        }
        stats
    }
}

/// The oldest pending reading's acknowledgement; never resolves while there is none.
async fn next_ack(
    pending: &mut VecDeque<(Instant, Delivery)>,
) -> (Instant, Result<runnel_device::Ack, DeviceError>) {
    let Some((at, d)) = pending.front_mut() else {
        return std::future::pending().await;
    };
    let at = *at;
    let r = d.await;
    pending.pop_front();
    (at, r)
}

/// Counts the delivery reports of one librdkafka producer and times them.
struct Reports {
    stats: Mutex<DeviceStats>,
    acked_total: Arc<AtomicU64>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(_) => {
                let now = Instant::now();
                s.acked += 1;
                s.last_ack = Some(now);
                let us = now.duration_since(*sent).as_micros().min(u32::MAX as u128);
                s.latencies_us.push(us as u32);
                self.acked_total.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => s.failed += 1,
        }
    }
}

/// The same load from one idempotent librdkafka producer per device (acks=all, the same
/// linger, up to 5 requests in flight), driven by one thread that hands each producer its due
/// readings every tick.
fn run_tcp(
    args: &DevicesArgs,
    bootstrap: &str,
    topic: &str,
    pid: Option<u32>,
) -> anyhow::Result<Outcome> {
    let acked_total = Arc::new(AtomicU64::new(0));
    let linger_ms = format!("{}", args.linger.as_secs_f64() * 1000.0);
    let set_up = Instant::now();
    let mut producers = Vec::new();
    for n in 0..args.devices {
        let ctx = Reports {
            stats: Mutex::new(DeviceStats::default()),
            acked_total: acked_total.clone(),
        };
        let p: ThreadedProducer<Reports> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("client.id", format!("bench-device-{n}"))
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("max.in.flight.requests.per.connection", "5")
            .set("linger.ms", &linger_ms)
            .set("compression.codec", "none")
            .create_with_context(ctx)
            .context("cannot create a producer")?;
        producers.push(p);
    }
    // Connect and learn the topic before the clock starts.
    for p in &producers {
        p.client()
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .context("metadata")?;
    }
    eprintln!(
        "{} producers connected in {:.1}s",
        producers.len(),
        set_up.elapsed().as_secs_f64()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let progress = {
        let _g = rt.enter();
        spawn_progress(acked_total.clone())
    };
    let stop_progress = progress.abort_handle();
    let rt_thread = std::thread::spawn(move || {
        rt.block_on(async {
            let _ = progress.await;
        })
    });
    let value = payload(args.record_size);
    let (broker_cpu0, client_cpu0) = (pid.and_then(|p| cpu_secs(&p.to_string())), cpu_secs("self"));
    let started = Instant::now();
    let mut sent = vec![0u64; producers.len()];
    let mut next_tick = started;
    loop {
        let elapsed = started.elapsed().min(args.duration);
        let target = due(args.rate, elapsed);
        let now = Instant::now();
        for (n, p) in producers.iter().enumerate() {
            let key = format!("device-{n}");
            let partition = n as i32 % args.partitions.max(1);
            while sent[n] < target {
                sent[n] += 1;
                let rec = BaseRecord::with_opaque_to(topic, Box::new(now))
                    .partition(partition)
                    .key(key.as_bytes())
                    .payload(&value[..]);
                match p.send(rec) {
                    Ok(()) => {}
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        p.context()
                            .stats
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .refused += 1;
                    }
                    Err(_) => {
                        p.context()
                            .stats
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .failed += 1;
                    }
                }
            }
        }
        if elapsed >= args.duration {
            break;
        }
        next_tick += args.tick;
        if let Some(wait) = next_tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let stopped_sending = Instant::now();
    for p in &producers {
        let _ = p.flush(Duration::from_secs(30));
    }
    let broker_cpu = broker_cpu0
        .zip(pid.and_then(|p| cpu_secs(&p.to_string())))
        .map(|(a, b)| b - a);
    let client_cpu = client_cpu0.zip(cpu_secs("self")).map(|(a, b)| b - a);
    let stats = producers
        .iter()
        .map(|p| std::mem::take(&mut *p.context().stats.lock().unwrap_or_else(|e| e.into_inner())))
        .collect();
    drop(producers);
    stop_progress.abort();
    let _ = rt_thread.join();
    Ok(Outcome {
        stats,
        started,
        stopped_sending,
        broker_cpu,
        client_cpu,
    })
}
