//! The example as its README runs it: `sensor-fleet` sends readings from a few devices to a real
//! broker's QUIC listener, and `fleet-consumer` reads them back over Kafka with librdkafka.

use std::process::Command;

/// Runs one of this package's programs with `args`; returns its standard output.
async fn run(program: &'static str, args: Vec<String>) -> String {
    let out = tokio::task::spawn_blocking(move || Command::new(program).args(&args).output())
        .await
        .unwrap()
        .expect("the program runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_is_acknowledged_and_read_back_in_order_over_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = runnel::Config::default();
    cfg.broker.data_dir = dir.path().to_path_buf();
    cfg.listeners.kafka.address = "127.0.0.1:0".parse().unwrap();
    cfg.listeners.quic.address = "127.0.0.1:0".parse().unwrap();
    cfg.listeners.admin.enabled = false;
    let broker = runnel::start_broker(cfg).await.expect("broker starts");
    let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();

    // 5 devices, 20 readings a second each for 2 s: 40 readings each.
    let server = broker.quic_addr.unwrap().to_string();
    let fingerprint = broker.quic_fingerprint.clone().unwrap();
    let sent = run(
        env!("CARGO_BIN_EXE_sensor-fleet"),
        args(&[
            "--server",
            &server,
            "--fingerprint",
            &fingerprint,
            "--devices",
            "5",
            "--rate",
            "20",
            "--seconds",
            "2",
            "--topic",
            "fleet",
        ]),
    )
    .await;
    let summary = sent.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("devices 5 sent 200 acknowledged 200 (")
            && summary.contains(" refused 0 lost 0 latency p50 "),
        "{sent}"
    );

    let read = run(
        env!("CARGO_BIN_EXE_fleet-consumer"),
        args(&[
            "--bootstrap",
            &broker.bootstrap(),
            "--topic",
            "fleet",
            "--idle-seconds",
            "2",
        ]),
    )
    .await;
    assert!(
        read.contains(
            "readings 200 sensors 5 runs 1 in order 200 gaps 0 duplicate or reordered 0 other records 0"
        ),
        "{read}"
    );
    broker.shutdown().await;
}
