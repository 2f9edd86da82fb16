"""confluent-kafka helpers shared by the interop tests."""

from __future__ import annotations

from collections import defaultdict

from confluent_kafka import TIMESTAMP_CREATE_TIME, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from interop_util import wait_for

BASE_TS = 1_700_000_000_000


def conf(bootstrap: str, tls=None, **extra) -> dict:
    c = {"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000}
    if tls is not None:
        c.update({"security.protocol": "ssl", "ssl.ca.location": str(tls.ca_cert),
                  "ssl.endpoint.identification.algorithm": "https"})
    c.update({k if k.endswith("_cb") else k.replace("_", "."): v for k, v in extra.items()})
    return c


def consumer_conf(bootstrap, group, tls=None, **extra) -> dict:
    c = conf(bootstrap, tls, **{"group.id": group, "auto.offset.reset": "earliest",
                                "enable.auto.commit": False, "session.timeout.ms": 10000,
                                "heartbeat.interval.ms": 500})
    c.update(extra)
    return c


def create_topic(admin: AdminClient, topic: str, partitions: int, config=None) -> None:
    fs = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                       config=config or {})], operation_timeout=10)
    fs[topic].result(timeout=20)
    wait_for(lambda: len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
             == partitions, 10, what=f"{topic} to show {partitions} partitions")


class Deliveries:
    """Collects delivery reports; every one must succeed."""

    def __init__(self):
        self.ok: list = []
        self.failed: list = []

    def __call__(self, err, msg):
        if err is not None:
            self.failed.append((err, msg.topic(), msg.partition()))
        else:
            self.ok.append(msg)

    def offsets_by_partition(self) -> dict[int, list[int]]:
        out = defaultdict(list)
        for m in self.ok:
            out[m.partition()].append(m.offset())
        return {p: sorted(o) for p, o in out.items()}


def record_set(n: int, partitions: int):
    """Records with every feature a client can set: keys (and a null key), values (and a
    null value), headers (repeated names, empty values, none at all) and CreateTimes."""
    out = []
    for i in range(n):
        headers = [("seq", str(i).encode()), ("dup", b"first"), ("dup", b"second"),
                   ("empty", b""), ("bin", bytes([0, 255, i % 256]))]
        if i % 10 == 4:
            headers = None
        out.append({
            "partition": i % partitions,
            "key": None if i % 10 == 5 else f"key-{i}".encode(),
            "value": None if i % 10 == 7 else f"value-{i}-\u00e9".encode(),
            "headers": headers,
            "timestamp": BASE_TS + i * 1000,
        })
    return out


def produce_records(producer: Producer, topic: str, records) -> Deliveries:
    d = Deliveries()
    for r in records:
        kwargs = dict(partition=r["partition"], key=r["key"], value=r["value"],
                      timestamp=r["timestamp"], on_delivery=d)
        if r["headers"] is not None:
            kwargs["headers"] = r["headers"]
        producer.produce(topic, **kwargs)
        producer.poll(0)
    assert producer.flush(30) == 0, "messages still queued after 30 s"
    assert not d.failed, d.failed
    return d


def assert_same_records(msgs, records, partitions: int):
    """Consumed messages equal the produced records, per partition in order."""
    got = defaultdict(list)
    for m in msgs:
        got[m.partition()].append(m)
    want = defaultdict(list)
    for r in records:
        want[r["partition"]].append(r)
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    for p in range(partitions):
        g, w = got[p], want[p]
        assert [m.offset() for m in g] == list(range(len(w))), p
        for m, r in zip(g, w):
            assert m.key() == r["key"], (p, m.offset())
            assert m.value() == r["value"], (p, m.offset())
            # No headers comes back as None (or as an empty list).
            assert (m.headers() or None) == r["headers"], (p, m.offset(), m.headers())
            assert m.timestamp() == (TIMESTAMP_CREATE_TIME, r["timestamp"]), (p, m.offset())
