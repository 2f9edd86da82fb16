#!/usr/bin/env python3
"""What incremental fetch sessions (KIP-227) save: one consumer of many partitions, a trickle.

Starts `runnel serve` (the binary given) on free ports with `broker.max_fetch_sessions` set to
--sessions (1000: on, 0: off), makes a topic of --partitions partitions, and for --duration
seconds has one kafka-python consumer (incremental sessions on, its default; fetch.max.wait
100 ms) assigned every partition while a producer writes one 100-byte record to a random
partition per consumer poll. Printed: records sent and read, Fetch requests, request and
response bytes per fetch (the broker's runnel_bytes_in/out_total) and the broker's CPU time.

    ./scripts/bench_fetch_sessions.py target/release/runnel --sessions 1000
    ./scripts/bench_fetch_sessions.py target/release/runnel --sessions 0

Needs kafka-python (the interop venv has it).
"""
import argparse
import os
import random
import re
import time
import urllib.request

from bench_broker import Broker
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runnel")
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=200)
    ap.add_argument("--duration", type=float, default=12.0)
    args = ap.parse_args()
    b = Broker(args.runnel, "runnel-sessions-", broker=f"max_fetch_sessions = {args.sessions}")
    broker, bootstrap, admin = b.process, b.bootstrap, b.admin_port

    def metrics():
        text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
        def get(name):
            m = re.search(rf"^{re.escape(name)} (\d+)", text, re.M)
            return int(m.group(1)) if m else 0
        return (get("runnel_bytes_in_total"), get("runnel_bytes_out_total"),
                get('runnel_requests_total{api="Fetch"}'))

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                metrics()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        a = KafkaAdminClient(bootstrap_servers=bootstrap)
        a.create_topics([NewTopic("sessions", args.partitions, 1)])
        a.close()
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                 fetch_max_wait_ms=100)
        consumer.assign([TopicPartition("sessions", i) for i in range(args.partitions)])
        consumer.poll(timeout_ms=2000)
        before, cpu_before, start = metrics(), cpu_seconds(broker.pid), time.monotonic()
        sent = got = 0
        while time.monotonic() - start < args.duration:
            producer.send("sessions", value=b"x" * 100,
                          partition=random.randrange(args.partitions))
            sent += 1
            got += sum(len(r) for r in consumer.poll(timeout_ms=20).values())
        producer.flush()
        end = time.monotonic() + 5
        while got < sent and time.monotonic() < end:
            got += sum(len(r) for r in consumer.poll(timeout_ms=100).values())
        after, cpu_after = metrics(), cpu_seconds(broker.pid)
        fetches = max(after[2] - before[2], 1)
        print(f"sessions={args.sessions} partitions={args.partitions} sent={sent} read={got} "
              f"fetches={fetches} request_bytes_per_fetch={(after[0] - before[0]) / fetches:.0f} "
              f"response_bytes_per_fetch={(after[1] - before[1]) / fetches:.0f} "
              f"broker_cpu_s={cpu_after - cpu_before:.2f} "
              f"broker_cpu_per_fetch_us={(cpu_after - cpu_before) / fetches * 1e6:.0f}")
        consumer.close()
        producer.close()
    finally:
        broker.terminate()
        broker.wait()


if __name__ == "__main__":
    main()
