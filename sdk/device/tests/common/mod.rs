//! Shared by the device tests: a real broker started in-process with a QUIC listener, and a
//! device config that trusts it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

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

/// A Kafka admin client (librdkafka) of the broker at `bootstrap`.
pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .create()
        .unwrap()
}

/// Produces `values` (key `cmd`) to partition 0 of `topic` with librdkafka, in order, as a
/// Kafka application sending commands to devices would.
pub async fn kafka_produce(bootstrap: String, topic: &'static str, values: Vec<String>) {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    tokio::task::spawn_blocking(move || {
        let p: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("broker.address.family", "v4")
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        for v in &values {
            p.send(
                BaseRecord::<str, str>::to(topic)
                    .partition(0)
                    .key("cmd")
                    .payload(v),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        }
        p.flush(Duration::from_secs(30)).unwrap();
    })
    .await
    .unwrap()
}
