//! Crash safety with the real binary: kill -9 during acks=all production loses no acknowledged
//! record, and a segment cut mid-batch is recovered to its last complete batch.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// (offset, payload) of one record.
type Stored = (i64, Vec<u8>);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_broker(dir: &Path, port: u16) -> Child {
    let config = dir.join("runnel.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\ndata_dir = {:?}\n\n[listeners.kafka]\naddress = \"127.0.0.1:{port}\"\n\n\
             [listeners.quic]\nenabled = false\n\n[listeners.admin]\nenabled = false\n",
            dir.join("data")
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("runnel starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "broker did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn read_all(bootstrap: &str, topic: &str, expect_at_least: usize) -> Vec<(i64, Vec<u8>)> {
    let consumer: BaseConsumer = common::client_config(bootstrap)
        .set("group.id", "crash-check")
        .set("enable.auto.commit", "false")
        .set("check.crcs", "true")
        .create()
        .unwrap();
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (out.len() < expect_at_least || out.last().is_none_or(|(o, _)| *o + 1 < high))
        && Instant::now() < deadline
    {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("no corrupt batch is served");
            out.push((m.offset(), m.payload().unwrap_or_default().to_vec()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::zombie_processes)] // the child is killed and waited for once the kill point is reached
async fn kill_9_during_acks_all_production_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let bootstrap = format!("127.0.0.1:{port}");
    let mut child = spawn_broker(dir.path(), port);

    let producer: FutureProducer = common::client_config(&bootstrap)
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "3000")
        .set("retries", "0")
        .create()
        .unwrap();
    let acked: Arc<Mutex<Vec<Stored>>> = Arc::default();
    let started = Instant::now();
    let mut i = 0u64;
    let mut pending = Vec::new();
    let mut killed = false;
    while started.elapsed() < Duration::from_secs(4) {
        let payload = format!("record-{i:08}").into_bytes();
        let rec = FutureRecord::<(), _>::to("crash")
            .payload(&payload)
            .partition(0);
        if let Ok(f) = producer.send_result(rec) {
            let acked = acked.clone();
            pending.push(tokio::spawn(async move {
                if let Ok(Ok(d)) = f.await {
                    let offset = d.offset;
                    acked.lock().unwrap().push((offset, payload));
                }
            }));
        }
        i += 1;
        if i.is_multiple_of(200) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !killed && started.elapsed() > Duration::from_millis(1500) {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            killed = true;
        }
    }
    for p in pending {
        let _ = p.await;
    }
    drop(producer);
    let mut acked = acked.lock().unwrap().clone();
    acked.sort();
    assert!(
        acked.len() > 100,
        "the producer got acknowledgements before the kill ({})",
        acked.len()
    );

    let mut child = spawn_broker(dir.path(), port);
    let n = acked.len();
    let b = bootstrap.clone();
    let stored = tokio::task::spawn_blocking(move || read_all(&b, "crash", n))
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    // Offsets are dense and every acknowledged record is at its acknowledged offset.
    for (i, (offset, _)) in stored.iter().enumerate() {
        assert_eq!(*offset, i as i64, "offsets are dense after recovery");
    }
    for (offset, payload) in &acked {
        let got = stored.get(*offset as usize).map(|(_, p)| p);
        assert_eq!(got, Some(payload), "acknowledged record at offset {offset}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_cut_mid_batch_recovers_to_the_last_complete_batch() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::test_config(dir.path());
    let broker = common::start_with(cfg.clone()).await;
    let bootstrap = broker.bootstrap();
    let producer: FutureProducer = common::client_config(&bootstrap)
        .set("linger.ms", "0")
        .set("batch.num.messages", "10")
        .create()
        .unwrap();
    // Ten batches of ten records, each batch acknowledged before the next is sent.
    for b in 0..10 {
        let futures: Vec<_> = (0..10)
            .map(|r| {
                let payload = format!("b{b}-r{r}");
                producer
                    .send_result(
                        FutureRecord::<(), _>::to("cut")
                            .payload(&payload)
                            .partition(0),
                    )
                    .map_err(|(e, _)| e)
                    .unwrap()
            })
            .collect();
        for f in futures {
            f.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    }
    drop(producer);
    broker.shutdown().await;

    let segment = dir.path().join("cut-0").join("00000000000000000000.log");
    let len = std::fs::metadata(&segment).unwrap().len();
    // Cut the file in the middle of the last batch.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(len - 25).unwrap();
    drop(file);

    let broker = common::start_with(cfg).await;
    let b = broker.bootstrap();
    let stored = tokio::task::spawn_blocking(move || read_all(&b, "cut", 1))
        .await
        .unwrap();
    assert!(
        stored.len() >= 80 && stored.len() < 100,
        "complete batches served: {}",
        stored.len()
    );
    for (i, (offset, payload)) in stored.iter().enumerate() {
        assert_eq!(*offset, i as i64);
        assert_eq!(payload, format!("b{}-r{}", i / 10, i % 10).as_bytes());
    }
    // The next append continues right after the recovered tail.
    let producer: FutureProducer = common::client_config(&broker.bootstrap()).create().unwrap();
    let offset = producer
        .send(
            FutureRecord::<(), _>::to("cut")
                .payload("after")
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap()
        .offset;
    assert_eq!(offset, stored.len() as i64);
    broker.shutdown().await;
}
