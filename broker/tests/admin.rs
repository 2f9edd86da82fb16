//! Admin HTTP: health and Prometheus metrics reflect real traffic.

mod common;

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: runnel\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_report_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.listeners.admin.enabled = true;
    cfg.listeners.admin.address = "127.0.0.1:0".parse().unwrap();
    let broker = common::start_with(cfg).await;
    let admin = broker.admin_addr.unwrap();
    assert!(get(admin, "/health").await.starts_with("HTTP/1.1 200"));

    let p: FutureProducer = common::client_config(&broker.bootstrap()).create().unwrap();
    for i in 0..7 {
        p.send(
            FutureRecord::<(), _>::to("metered")
                .payload(&format!("r{i}"))
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
    let m = get(admin, "/metrics").await;
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(
        m.contains("runnel_log_end_offset{topic=\"metered\",partition=\"0\"} 7"),
        "{m}"
    );
    assert!(m.contains("runnel_records_in_total 7"), "{m}");
    assert!(m.contains("runnel_requests_total{api=\"Produce\"}"), "{m}");
    assert!(m.contains("runnel_connections_open "), "{m}");

    // A group that committed offset 3 of the 7: its committed offset and lag 4, and no members
    // once its consumer is gone.
    {
        use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
        let c: BaseConsumer = common::client_config(&broker.bootstrap())
            .set("group.id", "dash\"board")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset("metered", 0, rdkafka::Offset::Offset(3))
            .unwrap();
        tokio::task::block_in_place(|| c.commit(&tpl, CommitMode::Sync)).unwrap();
    }
    let m = get(admin, "/metrics").await;
    let labels = r#"{group="dash\"board",topic="metered",partition="0"}"#;
    assert!(
        m.contains(&format!("runnel_group_committed_offset{labels} 3")),
        "{m}"
    );
    assert!(m.contains(&format!("runnel_group_lag{labels} 4")), "{m}");
    assert!(
        m.contains(r#"runnel_group_members{group="dash\"board"} 0"#),
        "{m}"
    );
    assert!(get(admin, "/nope").await.starts_with("HTTP/1.1 404"));
    broker.shutdown().await;
}
