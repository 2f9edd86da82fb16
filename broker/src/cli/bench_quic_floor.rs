//! `runnel bench quic-floor`: what the QUIC round trips of `bench devices` cost in quinn alone.
//!
//! The same shape as `bench devices` (many devices, each with its own client endpoint, UDP
//! socket, connection and one bidirectional stream, split over one single-thread runtime per
//! CPU), but no broker, no device SDK and no Kafka: each device writes a request of
//! `--request-size` bytes every `--interval` and waits for a `--response-size` reply from an
//! echo server. The server is a child process (this executable) with the broker's own QUIC
//! transport limits, receive buffer and TLS 1.3 on a self-signed certificate, on a
//! multi-thread runtime as `runnel serve` has. What it reports (round trips/s, latency from each
//! tick to its reply, CPU per round trip of each side) is the floor under the devices bench:
//! no work of ours can make a round trip cheaper than this.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use super::bench_devices::cpu_secs;

#[derive(clap::Args, Clone, Debug)]
pub struct QuicFloorArgs {
    /// Simulated devices, each with its own endpoint and connection.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Each device sends one request per interval (the devices bench's linger).
    #[arg(long, default_value = "20ms", value_parser = super::bench::parse_duration)]
    pub interval: Duration,
    /// How long the round trips are measured, after every device is connected.
    #[arg(long, default_value = "10s", value_parser = super::bench::parse_duration)]
    pub duration: Duration,
    /// Bytes of each request (five 100-byte readings in a Kafka produce request are about 640).
    #[arg(long, default_value_t = 640)]
    pub request_size: usize,
    /// Bytes of each reply (a produce response for one partition is about 64).
    #[arg(long, default_value_t = 64)]
    pub response_size: usize,
    /// Single-thread runtimes the devices are split over (default: one per CPU).
    #[arg(long)]
    pub runtimes: Option<usize>,
    /// Append the result as a Markdown table row to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Label of the row.
    #[arg(long, default_value = "quinn echo")]
    pub label: String,
    /// Internal: run the echo server with its certificate in this directory, print its port.
    #[arg(long, hide = true)]
    pub echo_server: Option<PathBuf>,
}

pub fn run(args: QuicFloorArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.echo_server {
        return echo_server(dir, &args);
    }
    if args.devices == 0 || args.interval.is_zero() || args.request_size == 0 {
        bail!("--devices, --interval and --request-size must be positive");
    }
    let dir = tempfile::tempdir()?;
    let server = EchoServer::start(dir.path(), &args)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.path().join("cert.pem"))? {
        roots.add(cert?)?;
    }
    let roots = Arc::new(roots);
    eprintln!(
        "bench quic-floor: {} devices, a {}-byte request every {:?} answered with {} bytes, \
         against a quinn echo server",
        args.devices, args.request_size, args.interval, args.response_size
    );

    let runtimes = args
        .runtimes
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, args.devices);
    let connected = Arc::new(tokio::sync::Barrier::new(runtimes + 1));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (window, latencies) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let threads: Vec<_> = (0..runtimes)
            .map(|i| {
                let devices = args.devices * (i + 1) / runtimes - args.devices * i / runtimes;
                let (roots, connected) = (roots.clone(), connected.clone());
                let (measuring, stop, args) = (measuring.clone(), stop.clone(), &args);
                scope.spawn(move || -> anyhow::Result<Vec<u32>> {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?
                        .block_on(shard(
                            args,
                            server.addr,
                            devices,
                            roots,
                            connected,
                            measuring,
                            stop,
                        ))
                })
            })
            .collect();
        // Measure once every device is connected and has run a second.
        let set_up = Instant::now();
        tokio::runtime::Builder::new_current_thread()
            .build()?
            .block_on(connected.wait());
        eprintln!(
            "{} devices connected in {:.1}s",
            args.devices,
            set_up.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_secs(1));
        let before = (cpu_secs("self"), cpu_secs(&server.pid()));
        let started = Instant::now();
        measuring.store(true, Ordering::Relaxed);
        std::thread::sleep(args.duration);
        measuring.store(false, Ordering::Relaxed);
        let after = (cpu_secs("self"), cpu_secs(&server.pid()));
        let elapsed = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let mut latencies = Vec::new();
        for t in threads {
            let shard = t
                .join()
                .map_err(|_| anyhow::anyhow!("a device runtime panicked"))??;
            latencies.extend(shard);
        }
        Ok(((before, after, elapsed), latencies))
    })?;
    report(&args, window, latencies)
}

type Cpu = (Option<f64>, Option<f64>);

fn report(
    args: &QuicFloorArgs,
    (before, after, elapsed): (Cpu, Cpu, Duration),
    mut lat: Vec<u32>,
) -> anyhow::Result<()> {
    if lat.is_empty() {
        bail!("no round trip finished while measuring");
    }
    lat.sort_unstable();
    let pct = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    let secs = elapsed.as_secs_f64();
    let trips = lat.len() as f64;
    let offered = args.devices as f64 / args.interval.as_secs_f64();
    let used = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| b - a);
    let (clients, server) = (used(before.0, after.0), used(before.1, after.1));
    let per_trip = |c: Option<f64>| c.map_or("?".into(), |c| format!("{:.1}", c / trips * 1e6));
    let machine = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let share = clients.zip(server).map_or("?".into(), |(c, s)| {
        format!("{:.0}", (c + s) / secs / machine * 100.0)
    });
    out!(
        "quinn echo: {} devices, {:.0} round trips/s of {offered:.0} offered; \
         latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        args.devices,
        trips / secs,
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    out!(
        "cpu per round trip: devices {} us, server {} us; {share}% of the machine's {machine} CPUs",
        per_trip(clients),
        per_trip(server),
    );
    if let Some(path) = &args.markdown {
        super::bench::append_markdown(
            path,
            format_args!(
                "| {} | {} | {:?} | {offered:.0} | {:.0} | {:.2} | {:.2} | {} | {} | {share} |",
                args.label,
                args.devices,
                args.interval,
                trips / secs,
                pct(0.50),
                pct(0.99),
                per_trip(clients),
                per_trip(server),
            ),
        )?;
    }
    Ok(())
}

/// One runtime's devices: connect them all, then each sends on its own tick until `stop`.
/// Returns the latencies (µs) of the round trips that finished while `measuring`.
async fn shard(
    args: &QuicFloorArgs,
    server: SocketAddr,
    devices: usize,
    roots: Arc<rustls::RootCertStore>,
    connected: Arc<tokio::sync::Barrier>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<u32>> {
    let streams = connect_all(server, devices, roots).await;
    // Passed even by a runtime whose devices failed to connect, so the others do not wait
    // for it for ever.
    connected.wait().await;
    let streams = streams?;
    let spread = streams.len().max(1) as u32;
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, (endpoint, send, recv))| {
            // The devices' ticks are spread over one interval.
            let phase = args.interval * i as u32 / spread;
            let (measuring, stop) = (measuring.clone(), stop.clone());
            let (interval, request, response) =
                (args.interval, args.request_size, args.response_size);
            tokio::spawn(async move {
                let _endpoint = endpoint;
                device(
                    send, recv, phase, interval, request, response, measuring, stop,
                )
                .await
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(latencies)
}

/// Connects `n` devices, fifty handshakes at a time as the devices bench does.
async fn connect_all(
    server: SocketAddr,
    n: usize,
    roots: Arc<rustls::RootCertStore>,
) -> anyhow::Result<Vec<(quinn::Endpoint, quinn::SendStream, quinn::RecvStream)>> {
    let client = client_config(roots)?;
    let mut streams = Vec::with_capacity(n);
    while streams.len() < n {
        let handshakes: Vec<_> = (streams.len()..n.min(streams.len() + 50))
            .map(|_| tokio::spawn(connect(server, client.clone())))
            .collect();
        for h in handshakes {
            streams.push(h.await??);
        }
    }
    Ok(streams)
}

fn client_config(roots: Arc<rustls::RootCertStore>) -> anyhow::Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    // As the device SDK's default.
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

const ALPN: &[u8] = b"runnel-quic-floor";

async fn connect(
    server: SocketAddr,
    client: quinn::ClientConfig,
) -> anyhow::Result<(quinn::Endpoint, quinn::SendStream, quinn::RecvStream)> {
    let mut endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into())?;
    endpoint.set_default_client_config(client);
    let conn = endpoint.connect(server, "localhost")?.await?;
    let (send, recv) = conn.open_bi().await?;
    Ok((endpoint, send, recv))
}

#[allow(clippy::too_many_arguments)]
async fn device(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    phase: Duration,
    interval: Duration,
    request_size: usize,
    response_size: usize,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<u32>> {
    let request = vec![0x5a; request_size];
    let mut response = vec![0; response_size];
    let mut latencies = Vec::new();
    tokio::time::sleep(phase).await;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        let due = tick.tick().await;
        send.write_all(&request).await?;
        recv.read_exact(&mut response).await?;
        if measuring.load(Ordering::Relaxed) {
            latencies.push(u32::try_from(due.elapsed().as_micros()).unwrap_or(u32::MAX));
        }
    }
    let _ = send.finish();
    Ok(latencies)
}

/// The echo server child process, killed when dropped.
struct EchoServer {
    child: Child,
    addr: SocketAddr,
}

impl EchoServer {
    fn start(dir: &Path, args: &QuicFloorArgs) -> anyhow::Result<EchoServer> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["bench", "quic-floor", "--echo-server"])
            .arg(dir)
            .arg("--request-size")
            .arg(args.request_size.to_string())
            .arg("--response-size")
            .arg(args.response_size.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the echo server")?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("the echo server's stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        let mut server = EchoServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        // A server that failed is killed with `server` dropped.
        let port: u16 = line
            .trim()
            .parse()
            .with_context(|| format!("the echo server did not start: {line:?}"))?;
        server.addr.set_port(port);
        Ok(server)
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child: a QUIC endpoint made as the broker's listener is, echoing on every stream.
fn echo_server(dir: &Path, args: &QuicFloorArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (cert, key) = crate::net::quic::self_signed(dir)?;
        let chain = CertificateDer::pem_file_iter(&cert)?.collect::<Result<Vec<_>, _>>()?;
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let defaults = edge_config::QuicListener::default();
        config.transport_config(Arc::new(crate::net::quic::transport(
            defaults.idle_timeout,
            defaults.max_streams,
        )?));
        let socket = crate::net::quic::bind_udp(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(config),
            socket,
            quinn::default_runtime().context("no tokio runtime")?,
        )?;
        out!("{}", endpoint.local_addr()?.port());
        let (request_size, response_size) = (args.request_size, args.response_size);
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let mut request = vec![0; request_size];
                        let response = vec![0xa5; response_size];
                        while recv.read_exact(&mut request).await.is_ok() {
                            if send.write_all(&response).await.is_err() {
                                break;
                            }
                        }
                        let _ = send.finish();
                    });
                }
            });
        }
        Ok(())
    })
}
