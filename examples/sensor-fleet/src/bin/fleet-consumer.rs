//! fleet-consumer: reads the readings sensor-fleet sent, with a Kafka client (librdkafka over
//! TCP), from the beginning of every partition; checks each sensor's readings arrive in order
//! (`seq` counting up from 0) and prints counts: records, sensors, in order, gaps (readings
//! missing between two that arrived, e.g. refused by a full device buffer; those after a
//! sensor's last reading cannot be seen here), duplicates or reordered ones. Each run of
//! sensor-fleet numbers its readings from 0 again under a `run` id of its own, so the readings of
//! several runs on one topic are checked run by run; records that are not sensor-fleet readings
//! (say, those the README's tour wrote to the same topic) are counted apart.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

#[derive(Parser)]
#[command(about = "Read sensor-fleet's readings with a Kafka client and check their order")]
struct Args {
    /// The broker's Kafka listener.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// The topic the readings went to.
    #[arg(long, default_value = "readings")]
    topic: String,
    /// Stop after this many seconds without a record.
    #[arg(long, default_value_t = 5)]
    idle_seconds: u64,
}

/// What one sensor's readings looked like so far.
#[derive(Default)]
struct Sensor {
    next_seq: u64,
    in_order: u64,
    gaps: u64,
    behind: u64,
}

/// The number after `"name":` in a reading such as `{"sensor":3,"seq":17,...}`.
fn field(value: &str, name: &str) -> Option<u64> {
    let start = value.find(&format!("\"{name}\":"))? + name.len() + 3;
    let digits: String = value[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("group.id", "fleet-consumer")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&args.topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(&args.topic, p.id(), Offset::Beginning)?;
        }
    }
    if tpl.count() == 0 {
        return Err(format!("topic {} has no partitions (does it exist?)", args.topic).into());
    }
    consumer.assign(&tpl)?;
    // By (run, sensor); readings of a sensor-fleet from before runs were named have run 0.
    let mut sensors: HashMap<(u64, u64), Sensor> = HashMap::new();
    let (mut records, mut others) = (0u64, 0u64);
    let idle = Duration::from_secs(args.idle_seconds);
    let mut last_record = Instant::now();
    let mut last_progress = Instant::now();
    while last_record.elapsed() < idle {
        if last_progress.elapsed() >= Duration::from_secs(1) {
            println!("read {records} records");
            last_progress = Instant::now();
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m?;
        last_record = Instant::now();
        records += 1;
        let value = m.payload().map(String::from_utf8_lossy).unwrap_or_default();
        let (Some(id), Some(seq)) = (field(&value, "sensor"), field(&value, "seq")) else {
            others += 1;
            continue;
        };
        let run = field(&value, "run").unwrap_or(0);
        let s = sensors.entry((run, id)).or_default();
        if seq == s.next_seq {
            s.in_order += 1;
        } else if seq > s.next_seq {
            s.gaps += seq - s.next_seq;
            s.in_order += 1;
        } else {
            s.behind += 1;
            continue;
        }
        s.next_seq = seq + 1;
    }
    let sum = |f: fn(&Sensor) -> u64| sensors.values().map(f).sum::<u64>();
    let runs: HashSet<u64> = sensors.keys().map(|(run, _)| *run).collect();
    let ids: HashSet<u64> = sensors.keys().map(|(_, id)| *id).collect();
    println!(
        "readings {} sensors {} runs {} in order {} gaps {} duplicate or reordered {} \
         other records {others}",
        records - others,
        ids.len(),
        runs.len(),
        sum(|s| s.in_order),
        sum(|s| s.gaps),
        sum(|s| s.behind),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn fields_are_read_from_a_reading() {
        let r = r#"{"sensor":12,"seq":3407,"temp":21.5,"pad":"000"}"#;
        assert_eq!(
            (field(r, "sensor"), field(r, "seq")),
            (Some(12), Some(3407))
        );
        assert_eq!(field(r, "missing"), None);
    }
}
