//! Shared by the device tests: a real broker started in-process with a QUIC listener, and a
//! device config that trusts it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use runnel::{BrokerHandle, Config};
use runnel_device::{Acks, DeviceConfig, Trust};

/// A broker config: data in `dir`, Kafka on 127.0.0.1:0, QUIC on `quic`.
pub fn broker_config(dir: &Path, quic: SocketAddr) -> Config {
    let mut cfg = Config::default();
    cfg.broker.data_dir = dir.to_path_buf();
    cfg.listeners.kafka.address = "127.0.0.1:0".parse().unwrap();
    cfg.listeners.quic.enabled = true;
    cfg.listeners.quic.address = quic;
    cfg.listeners.admin.enabled = false;
    cfg
}

/// Starts a broker on `cfg`, with logs (`RUST_LOG`, default warn) in the test's output.
pub async fn start_with(cfg: Config) -> BrokerHandle {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    runnel::start_broker(cfg).await.expect("broker starts")
}

/// A device `client_id` of `broker`, pinning its certificate, with `acks=all`.
pub fn device_config(broker: &BrokerHandle, client_id: &str) -> DeviceConfig {
    let mut cfg = DeviceConfig::new(
        broker.quic_addr.expect("QUIC listener"),
        Trust::Fingerprint(broker.quic_fingerprint.clone().expect("fingerprint")),
    );
    cfg.client_id = client_id.into();
    cfg.acks = Acks::All;
    cfg
}
