//! Subscriptions whose position the partition does not hold (an explicit offset past the end, a
//! committed offset removed by DeleteRecords) or whose topic does not exist yet, against a real
//! broker started in-process; the commands come from librdkafka.

use std::path::Path;
use std::time::Duration;

use rdkafka::admin::AdminOptions;
use rdkafka::{Offset, TopicPartitionList};
use runnel::BrokerHandle;
use runnel_device::{
    Device, DeviceConfig, DeviceError, Message, OffsetReset, StartAt, Subscription,
};

mod common;

use common::{broker_config, start_with};

/// Starts a broker in `dir`.
async fn start(dir: &Path) -> BrokerHandle {
    start_with(broker_config(dir, "127.0.0.1:0".parse().unwrap())).await
}

fn device_config(broker: &BrokerHandle) -> DeviceConfig {
    common::device_config(broker, "valve-3")
}

fn command(i: i64) -> String {
    format!("cmd-{i}")
}

/// Produces the commands `range` to partition 0 of `topic` with librdkafka, in order.
async fn kafka_produce(bootstrap: String, topic: &'static str, range: std::ops::Range<i64>) {
    common::kafka_produce(bootstrap, topic, range.map(command).collect()).await
}

/// Deletes the records of partition 0 of `topic` before `before` with the broker's
/// DeleteRecords (librdkafka's admin client); the partition's new first offset.
async fn delete_records(bootstrap: &str, topic: &str, before: Offset) -> i64 {
    let admin = common::admin(bootstrap);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, before).unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let done = admin.delete_records(&tpl, &opts).await.unwrap();
    let part = done.find_partition(topic, 0).unwrap();
    part.error().unwrap();
    match part.offset() {
        Offset::Offset(o) => o,
        other => panic!("DeleteRecords answered {other:?}"),
    }
}

/// The subscription's next record, within 20 s.
async fn next(sub: &mut Subscription) -> Message {
    tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("a record in time")
        .unwrap()
}

/// Checks that the subscription yields the commands `range` in order, at their own offsets.
async fn expect_commands(sub: &mut Subscription, range: std::ops::Range<i64>) {
    for i in range {
        let m = next(sub).await;
        assert_eq!(
            (m.offset, m.value.as_deref()),
            (i, Some(command(i).as_bytes()))
        );
    }
}

/// Waits a little on `sub`, which must have nothing to read, so its first read (and any reset
/// of its position) has happened; then its position is `want`.
async fn expect_waiting_at(sub: &mut Subscription, want: i64) {
    // The reset takes a Fetch and a ListOffsets; on a loaded machine that may take a while.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let read = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
        assert!(read.is_err(), "nothing to read, got {read:?}");
        if sub.position() == want || tokio::time::Instant::now() > deadline {
            break;
        }
    }
    assert_eq!(sub.position(), want);
}

/// An explicit offset past the end of a partition that keeps offsets 0..11: by default the
/// subscription starts again at the first kept record; with `Latest` it waits at the end for the
/// next command; with `Fail` every `next()` says so and the position stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_past_the_end_moves_as_the_offset_reset_says() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    kafka_produce(broker.bootstrap(), "commands", 0..11).await;
    let device = Device::connect(device_config(&broker)).await.unwrap();
    let past_the_end = || device.subscribe("commands", 0, StartAt::Offset(1000));

    let mut earliest = past_the_end().await.unwrap();
    assert_eq!(earliest.position(), 1000, "the start is taken as given");
    expect_commands(&mut earliest, 0..11).await;

    let mut latest = past_the_end()
        .await
        .unwrap()
        .with_offset_reset(OffsetReset::Latest);
    expect_waiting_at(&mut latest, 11).await;
    kafka_produce(broker.bootstrap(), "commands", 11..12).await;
    expect_commands(&mut latest, 11..12).await;
    expect_commands(&mut earliest, 11..12).await;

    let mut fail = past_the_end()
        .await
        .unwrap()
        .with_offset_reset(OffsetReset::Fail);
    let out_of_range = DeviceError::OffsetOutOfRange {
        position: 1000,
        log_start: 0,
        log_end: 12,
    };
    for _ in 0..2 {
        let read = tokio::time::timeout(Duration::from_secs(20), fail.next())
            .await
            .expect("an answer in time");
        assert_eq!(read, Err(out_of_range.clone()));
        assert_eq!(fail.position(), 1000, "the position does not move");
    }
    // The application moves it itself.
    assert_eq!(fail.seek(-1), Err(DeviceError::InvalidOffset(-1)));
    fail.seek(10).unwrap();
    expect_commands(&mut fail, 10..12).await;
    drop((earliest, latest, fail));
    device.close().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_offset_is_refused_at_subscribe() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let device = Device::connect(device_config(&broker)).await.unwrap();

    let plain = device.subscribe("commands", 0, StartAt::Offset(-5)).await;
    assert!(matches!(plain, Err(DeviceError::InvalidOffset(-5))));
    let group = device
        .subscribe_group("valve-3", "commands", 0, StartAt::Offset(-1))
        .await;
    assert!(matches!(group, Err(DeviceError::InvalidOffset(-1))));
    // Offset 0 is fine on an empty partition.
    let mut zero = device
        .subscribe("commands", 0, StartAt::Offset(0))
        .await
        .unwrap();
    kafka_produce(broker.bootstrap(), "commands", 0..1).await;
    expect_commands(&mut zero, 0..1).await;
    drop(zero);
    device.close().await;
    broker.shutdown().await;
}

/// A device commits, goes away, and DeleteRecords removes its committed position: it comes back
/// at the first record still kept (by default), or at the end with `OffsetReset::Latest`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_whose_committed_offset_was_deleted_resumes_at_the_first_kept_record() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    kafka_produce(broker.bootstrap(), "commands", 0..10).await;
    let device = Device::connect(device_config(&broker)).await.unwrap();
    for group in ["valve-3", "valve-4"] {
        let mut sub = device
            .subscribe_group(group, "commands", 0, StartAt::Earliest)
            .await
            .unwrap();
        expect_commands(&mut sub, 0..3).await;
        sub.commit().await.unwrap();
    }
    device.close().await;

    assert_eq!(
        delete_records(&broker.bootstrap(), "commands", Offset::Offset(6)).await,
        6
    );
    let device = Device::connect(device_config(&broker)).await.unwrap();
    let mut earliest = device
        .subscribe_group("valve-3", "commands", 0, StartAt::Latest)
        .await
        .unwrap();
    assert_eq!(earliest.position(), 3, "starts at the commit");
    expect_commands(&mut earliest, 6..10).await;
    earliest.commit().await.unwrap();
    let mut latest = device
        .subscribe_group("valve-4", "commands", 0, StartAt::Earliest)
        .await
        .unwrap()
        .with_offset_reset(OffsetReset::Latest);
    expect_waiting_at(&mut latest, 10).await;

    kafka_produce(broker.bootstrap(), "commands", 10..11).await;
    expect_commands(&mut earliest, 10..11).await;
    expect_commands(&mut latest, 10..11).await;
    drop((earliest, latest));
    device.close().await;
    broker.shutdown().await;
}

/// The partition was emptied (DeleteRecords up to its end) while the device was away: its
/// committed position is gone, and the next command sent arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_on_a_partition_emptied_while_away_gets_the_next_command() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    kafka_produce(broker.bootstrap(), "commands", 0..5).await;
    let device = Device::connect(device_config(&broker)).await.unwrap();
    let mut sub = device
        .subscribe_group("valve-3", "commands", 0, StartAt::Earliest)
        .await
        .unwrap();
    expect_commands(&mut sub, 0..2).await;
    sub.commit().await.unwrap();
    drop(sub);
    device.close().await;

    assert_eq!(
        delete_records(&broker.bootstrap(), "commands", Offset::End).await,
        5
    );
    let device = Device::connect(device_config(&broker)).await.unwrap();
    let mut sub = device
        .subscribe_group("valve-3", "commands", 0, StartAt::Earliest)
        .await
        .unwrap();
    expect_waiting_at(&mut sub, 5).await;
    kafka_produce(broker.bootstrap(), "commands", 5..6).await;
    expect_commands(&mut sub, 5..6).await;
    drop(sub);
    device.close().await;
    broker.shutdown().await;
}

/// A subscription at an offset of a topic that does not exist yet (topics are not created on
/// use here) waits for it, as Kafka consumers do, and gets the first command once it is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_waits_for_its_topic_to_be_made() {
    use rdkafka::admin::{NewTopic, TopicReplication};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = broker_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.broker.auto_create_topics = false;
    let broker = start_with(cfg).await;
    let device = Device::connect(device_config(&broker)).await.unwrap();
    let mut sub = device
        .subscribe("later", 0, StartAt::Offset(0))
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let m = tokio::time::timeout(Duration::from_secs(30), sub.next()).await;
        (m, sub)
    });
    // Long enough for a few refused fetches.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let admin = common::admin(&broker.bootstrap());
    let made = admin
        .create_topics(
            &[NewTopic::new("later", 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(made.iter().all(Result::is_ok), "{made:?}");
    kafka_produce(broker.bootstrap(), "later", 0..1).await;
    let (m, sub) = waiting.await.unwrap();
    let m = m.expect("the command arrives").unwrap();
    assert_eq!(
        (m.offset, m.value.as_deref()),
        (0, Some(command(0).as_bytes()))
    );
    drop(sub);
    device.close().await;
    broker.shutdown().await;
}
