//! sensor-fleet: N simulated devices, each sending a reading at R Hz for D seconds to a Runnel
//! broker over QUIC with `runnel-device`; prints a progress line every second and a summary
//! (sent, acknowledged, refused, lost, acknowledgement latency p50/p99).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use runnel_device::{Acks, Compression, Device, DeviceConfig, DeviceError, Record, Trust};

#[derive(Parser)]
#[command(about = "Simulate devices sending readings to Runnel over QUIC")]
struct Args {
    /// The broker's QUIC listener.
    #[arg(long, default_value = "127.0.0.1:9093")]
    server: SocketAddr,
    /// The broker certificate's SHA-256 fingerprint (printed by the broker at start).
    #[arg(long, env = "RUNNEL_FINGERPRINT")]
    fingerprint: String,
    /// Number of devices (one QUIC connection each).
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Readings per second per device.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The topic the readings go to.
    #[arg(long, default_value = "readings")]
    topic: String,
    /// How the devices compress their batches.
    #[arg(long, value_enum, default_value_t = Codec::None)]
    compression: Codec,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl From<Codec> for Compression {
    fn from(c: Codec) -> Compression {
        match c {
            Codec::None => Compression::None,
            Codec::Gzip => Compression::Gzip,
            Codec::Snappy => Compression::Snappy,
            Codec::Lz4 => Compression::Lz4,
            Codec::Zstd => Compression::Zstd,
        }
    }
}

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    acked: AtomicU64,
    refused: AtomicU64,
    lost: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let stats = Arc::new(Stats::default());
    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let duration = Duration::from_secs(args.seconds);
    // This run's id (its start, ms since the Unix epoch): each run numbers its readings from 0,
    // and fleet-consumer checks the order run by run.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    // Every device connects first, and then all start sending: the rate is that of the whole
    // fleet sending, not of the first devices sending while the others connect.
    let mut devices = Vec::new();
    for n in 0..args.devices {
        let mut cfg = DeviceConfig::new(args.server, Trust::Fingerprint(args.fingerprint.clone()));
        cfg.client_id = format!("sensor-{n}");
        cfg.acks = Acks::All;
        cfg.compression = args.compression.into();
        devices.push(Arc::new(Device::connect(cfg).await?));
    }
    // R readings a second for D seconds: R x D readings per device.
    let readings = (args.rate * duration.as_secs_f64()).round() as u64;
    let mut fleet = Vec::new();
    for (n, device) in devices.into_iter().enumerate() {
        let (stats, topic) = (stats.clone(), args.topic.clone());
        fleet.push(tokio::spawn(async move {
            let key = format!("sensor-{n}");
            let mut tick = tokio::time::interval(period);
            for seq in 0..readings {
                tick.tick().await;
                let reading = format!(
                    "{{\"run\":{run},\"sensor\":{n},\"seq\":{seq},\"temp\":21.5,\"pad\":\"{:040}\"}}",
                    0
                );
                let sent_at = Instant::now();
                let record = Record::new(&topic, reading)
                    .key(&key)
                    .header("content-type", "application/json");
                match device.enqueue_record(record) {
                    Ok(delivery) => {
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                        let stats = stats.clone();
                        tokio::spawn(async move {
                            match delivery.await {
                                Ok(_) => {
                                    let us = sent_at.elapsed().as_micros() as u64;
                                    stats.acked.fetch_add(1, Ordering::Relaxed);
                                    stats.latencies_us.lock().unwrap().push(us);
                                }
                                Err(_) => {
                                    stats.lost.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        });
                    }
                    Err(DeviceError::BufferFull) => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        stats.lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), device.flush()).await;
        }));
    }
    let progress = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                println!(
                    "sent {} acknowledged {} refused {} lost {}",
                    stats.sent.load(Ordering::Relaxed),
                    stats.acked.load(Ordering::Relaxed),
                    stats.refused.load(Ordering::Relaxed),
                    stats.lost.load(Ordering::Relaxed)
                );
            }
        })
    };
    let started = Instant::now();
    for device in fleet {
        device.await?;
    }
    // Let the last acknowledgements be counted.
    tokio::time::sleep(Duration::from_millis(100)).await;
    progress.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = std::mem::take(&mut *stats.latencies_us.lock().unwrap());
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)));
    let acked = stats.acked.load(Ordering::Relaxed);
    println!(
        "devices {} sent {} acknowledged {} ({:.0}/s) refused {} lost {} latency p50 {:.2} ms p99 {:.2} ms",
        args.devices,
        stats.sent.load(Ordering::Relaxed),
        acked,
        acked as f64 / elapsed,
        stats.refused.load(Ordering::Relaxed),
        stats.lost.load(Ordering::Relaxed),
        pct(0.50).copied().unwrap_or(0) as f64 / 1000.0,
        pct(0.99).copied().unwrap_or(0) as f64 / 1000.0,
    );
    Ok(())
}
