#!/usr/bin/env python3
"""Compaction beside producers: segment files, disk writes, pass and swap times, producer latency.

Starts `runnel serve` (the binary given) on free ports with maintenance every second, makes a
compacted topic of one partition (--segment-bytes, --segment-ms, --dirty as its
min.cleanable.dirty.ratio when given), and for --duration seconds has one confluent-kafka
producer (acks=all, idempotent, linger 5 ms) write --rate records/s of --value-size bytes over
--keys random keys (or, with --lifecycle, creates keys and deletes each 1,000 records later).
Every 5 s it prints the partition's segment files, the broker's open
descriptors and RSS. At the end it reads the topic back and counts keys whose latest
acknowledged value is missing or wrong (must be 0), and prints one RESULT line: producer
latency p50/p99 and the seconds whose p99 passed 50 ms, the most segments and descriptors, the
largest RSS sampled and the broker's peak (VmHWM), bytes the broker wrote to disk over bytes
produced, and the median and largest pass and swap times from the broker's compaction log
lines (a pass that changes nothing is not logged).

    ./scripts/bench_compaction.py target/release/runnel --segment-bytes 1048576 --keys 100000
    ./scripts/bench_compaction.py target/release/runnel --segment-ms 100 --rate 200 --keys 50000

Needs confluent-kafka (the interop venv has it).
"""
import argparse
import os
import random
import re
import socket
import statistics
import time

from bench_broker import Broker
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runnel")
    ap.add_argument("--segment-bytes", type=int, default=1 << 20)
    ap.add_argument("--segment-ms", type=int, default=7 * 86_400_000)
    ap.add_argument("--dirty", help="the topic's min.cleanable.dirty.ratio (broker default if not given)")
    ap.add_argument("--rate", type=int, default=4000)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--lifecycle", action="store_true",
                    help="keys are created and deleted 1,000 records later, never reused "
                         "(a tombstone in every segment); --keys is then not used")
    ap.add_argument("--key-size", type=int, default=0,
                    help="pad keys to this many bytes (device ids are often 30-40)")
    ap.add_argument("--duration", type=float, default=90.0)
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    with Broker(args.runnel, "runnel-compaction-", log='retention_check_interval = "1s"') as b:
        run(args, b)


def run(args, b):
    bootstrap, work, log_path = b.bootstrap, b.work, b.log_path
    host, port = bootstrap.split(":")
    for _ in range(100):
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic_config = {"cleanup.policy": "compact", "segment.bytes": str(args.segment_bytes),
                    "segment.ms": str(args.segment_ms)}
    if args.dirty is not None:
        topic_config["min.cleanable.dirty.ratio"] = args.dirty
    admin.create_topics([NewTopic("state", 1, 1, config=topic_config)])["state"].result()
    partition_dir = next(os.path.join(root, d) for root, dirs, _ in os.walk(f"{work}/data")
                         for d in dirs if d.startswith("state-0"))

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 5, "message.timeout.ms": 120_000})
    acked = {}
    latencies = []  # (second since the start, ms)
    failed = [0]
    start = time.time()

    def delivered(key, value, sent):
        def callback(err, _msg):
            if err is not None:
                failed[0] += 1
                return
            now = time.time()
            latencies.append((int(now - start), (now - sent) * 1000))
            acked[key] = value
        return callback

    rng = random.Random(7)
    pad = "x" * args.value_size
    sent = produced = 0
    samples = []
    next_sample = start + 5
    while time.time() - start < args.duration:
        due = int((time.time() - start) * args.rate)
        while sent < due:
            if args.lifecycle:
                # Even records create s<n>, odd ones delete the key created 1,000 records ago.
                n = sent // 2 - (sent % 2) * 500
                key = f"s{max(n, 0)}"
                value = None if sent % 2 else f"{sent}:{pad}"
            else:
                key, value = f"k{rng.randrange(args.keys)}", f"{sent}:{pad}"
            key = key.rjust(args.key_size, "-")
            try:
                producer.produce("state", key=key, value=value,
                                 callback=delivered(key, value, time.time()))
            except BufferError:
                producer.poll(0.01)
                continue
            sent += 1
            produced += len(key) + len(value or "")
        producer.poll(0.002)
        if time.time() >= next_sample:
            segments = [f for f in os.listdir(partition_dir) if f.endswith(".log")]
            fds = len(os.listdir(f"/proc/{b.pid}/fd"))
            with open(f"/proc/{b.pid}/status") as f:
                rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) // 1024
            samples.append((len(segments), fds, rss))
            print(f"t={time.time() - start:.0f}s segments={len(segments)} fds={fds} rss={rss}MiB "
                  f"sent={sent} acknowledged={len(latencies)}", flush=True)
            next_sample += 5
    producer.flush(120)
    with open(f"/proc/{b.pid}/status") as f:
        rss_peak = int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) // 1024
    with open(f"/proc/{b.pid}/io") as f:
        written = int(dict(line.split(": ") for line in f.read().splitlines())["write_bytes"])

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-compaction",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition("state", 0, 0)])
    seen, idle = {}, time.time()
    while time.time() - idle < 5:
        m = consumer.poll(0.5)
        if m is None or m.error():
            continue
        idle = time.time()
        seen[m.key().decode()] = m.value().decode() if m.value() is not None else None
    consumer.close()
    wrong = sum(1 for k, v in acked.items() if seen.get(k) != v)

    per_second = {}
    for second, ms in latencies:
        per_second.setdefault(second, []).append(ms)
    p99s = [quantile(v, 0.99) for v in per_second.values() if len(v) >= 10]
    all_ms = [ms for _, ms in latencies]
    with open(log_path) as f:
        text = f.read()
    swaps = [int(x) for x in re.findall(r"swap_ms=(\d+)", text)]
    passes = [int(x) for x in re.findall(r"pass_ms=(\d+)", text)]
    print(f"RESULT {args.label} sent={sent} acknowledged={len(latencies)} failed={failed[0]} "
          f"keys={len(acked)} missing_or_wrong={wrong} "
          f"p50={quantile(all_ms, 0.5):.1f}ms p99={quantile(all_ms, 0.99):.1f}ms "
          f"seconds_p99_over_50ms={sum(1 for x in p99s if x > 50)}/{len(p99s)} "
          f"segments_last={samples[-1][0] if samples else 0} segments_max={max((s[0] for s in samples), default=0)} "
          f"fds_max={max((s[1] for s in samples), default=0)} rss_max={max((s[2] for s in samples), default=0)}MiB "
          f"rss_peak={rss_peak}MiB "
          f"disk_written/produced={written / max(produced, 1):.1f} "
          f"passes_logged={len(passes)} pass_ms_median={statistics.median(passes) if passes else 0} "
          f"swap_ms_median={statistics.median(swaps) if swaps else 0} swap_ms_max={max(swaps, default=0)}")


if __name__ == "__main__":
    main()
