#!/usr/bin/env python3
"""Producer latency on a partition while consumers read its backlog again and again.

The edge case this measures: an uplink or a late consumer catching up on a partition that
devices keep producing to. It writes a backlog to partition 0 of a fresh topic, then for
--duration seconds produces --rate small records/s to the same partition (acks=1, linger 0,
each record timed from produce() to its delivery report) while a consumer reads the backlog
from offset 0 to its end, pass after pass, each pass with a new consumer. Printed: passes
completed, the producer's latency p50/p99/p99.9/max, and with --broker-pid the broker's CPU
time during the run.

    ./scripts/bench_catchup.py --bootstrap 127.0.0.1:9092 --broker-pid "$(pgrep -f 'runnel serve')"

Needs confluent-kafka (pip install confluent-kafka). --per-batch 1 makes every backlog record
its own batch, as QUIC datagrams and unbatched producers store them.
"""
import argparse
import statistics
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--topic", default=f"catchup-{int(time.time())}")
    ap.add_argument("--backlog", type=int, default=300_000, help="records written first")
    ap.add_argument("--value-size", type=int, default=200)
    ap.add_argument("--per-batch", type=int, default=1, help="records per backlog batch")
    ap.add_argument("--rate", type=int, default=2000, help="timed records/s during the run")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--broker-pid", type=int)
    args = ap.parse_args()

    backlog = Producer({
        "bootstrap.servers": args.bootstrap, "linger.ms": 20, "acks": 1,
        "batch.num.messages": args.per_batch, "queue.buffering.max.messages": 2_000_000,
    })
    value = b"x" * args.value_size
    for _ in range(args.backlog):
        while True:
            try:
                backlog.produce(args.topic, value, partition=0)
                break
            except BufferError:
                backlog.poll(0.01)
    backlog.flush()

    stop = threading.Event()
    passes = [0]

    def reread():
        while not stop.is_set():
            c = Consumer({
                "bootstrap.servers": args.bootstrap, "group.id": "catchup",
                "enable.auto.commit": False,
                "max.partition.fetch.bytes": 8 << 20, "fetch.max.bytes": 64 << 20,
            })
            c.assign([TopicPartition(args.topic, 0, 0)])
            done = False
            while not done and not stop.is_set():
                done = any(m.offset() >= args.backlog - 1 for m in c.consume(10_000, 0.2))
            passes[0] += done
            c.close()

    cpu0 = cpu_seconds(args.broker_pid) if args.broker_pid else None
    reader = threading.Thread(target=reread)
    reader.start()
    latencies = []

    def delivered(err, msg):
        if err is None:
            latencies.append(msg.latency())

    timed = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 0, "acks": 1})
    start, sent = time.time(), 0
    while time.time() - start < args.duration:
        while sent < int((time.time() - start) * args.rate):
            timed.produce(args.topic, value, partition=0, callback=delivered)
            sent += 1
        timed.poll(0.001)
    timed.flush()
    stop.set()
    reader.join()

    lat = sorted(latencies)
    ms = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] * 1000
    line = (f"{args.backlog} backlog records ({args.per_batch} per batch) read {passes[0]} times; "
            f"{len(lat)} timed records: p50 {statistics.median(lat) * 1000:.2f} ms, "
            f"p99 {ms(0.99):.2f} ms, p99.9 {ms(0.999):.2f} ms, max {lat[-1] * 1000:.2f} ms")
    if cpu0 is not None:
        line += f"; broker CPU {cpu_seconds(args.broker_pid) - cpu0:.2f} s"
    print(line)


if __name__ == "__main__":
    main()
