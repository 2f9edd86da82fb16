"""Restarts: records, committed group offsets and producer state survive a broker restart
on the same data directory (clean SIGTERM and SIGKILL)."""

from __future__ import annotations

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from ck_util import (BASE_TS, assert_same_records, conf, consumer_conf, create_topic,
                     produce_records, record_set)
from interop_util import ck_consume, unique


def read_all(broker, topic, count, group=None):
    c = Consumer(consumer_conf(broker.bootstrap, group or unique("rs-reader")))
    try:
        c.subscribe([topic])
        return ck_consume(c, count, timeout=30, settle=1.0)
    finally:
        c.close()


def test_sigterm_stops_cleanly(broker_factory):
    b = broker_factory()
    produce_records(Producer(conf(b.bootstrap)), unique("rs-term"),
                    [{"partition": 0, "key": b"k", "value": b"v", "headers": None,
                      "timestamp": BASE_TS}])
    assert b.stop() == 0, f"runnel exited with {b.exit_codes[-1]} on SIGTERM"


def test_restart_keeps_records_and_group_offsets(fresh_broker):
    b = fresh_broker
    topic, group = unique("rs-topic"), unique("rs-g")
    create_topic(AdminClient(conf(b.bootstrap)), topic, 3)
    records = record_set(60, 3)          # 20 records in each of 3 partitions
    produce_records(Producer(conf(b.bootstrap, acks="all")), topic, records)

    committed = {0: 5, 1: 12, 2: 20}
    c = Consumer(consumer_conf(b.bootstrap, group))
    try:
        c.subscribe([topic])
        ck_consume(c, 60)
        done = c.commit(offsets=[TopicPartition(topic, p, o, f"meta-{p}")
                                 for p, o in committed.items()], asynchronous=False)
        assert all(tp.error is None for tp in done), done
    finally:
        c.close()

    assert b.restart() == 0, "SIGTERM should stop runnel cleanly"

    # Every record is back, in order, with keys, headers and timestamps.
    msgs = read_all(b, topic, len(records))
    assert len(msgs) == len(records), "records were duplicated across the restart"
    assert_same_records(msgs, records, 3)

    # The group's committed offsets (and their metadata) survived.
    c = Consumer(consumer_conf(b.bootstrap, group))
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
        assert {tp.partition: (tp.offset, tp.metadata) for tp in got} == \
            {p: (o, f"meta-{p}") for p, o in committed.items()}
        # And the group resumes from them.
        c.subscribe([topic])
        rest = ck_consume(c, 15 + 8, timeout=30, settle=1.0)
        assert sorted((m.partition(), m.offset()) for m in rest) == \
            sorted((p, o) for p, start in committed.items() for o in range(start, 20))
    finally:
        c.close()

    # New records continue each partition's offsets.
    p = Producer(conf(b.bootstrap, acks="all"))
    more = [{"partition": i, "key": b"after", "value": b"restart", "headers": None,
             "timestamp": BASE_TS} for i in range(3)]
    d = produce_records(p, topic, more)
    assert d.offsets_by_partition() == {0: [20], 1: [20], 2: [20]}


def test_acknowledged_records_survive_kill(broker_factory):
    """SIGKILL right after acks=all: nothing acknowledged may be lost or duplicated."""
    b = broker_factory()
    topic = unique("rs-kill")
    records = [{"partition": 0, "key": f"k{i}".encode(), "value": f"v{i}".encode(),
                "headers": [("i", str(i).encode())], "timestamp": BASE_TS + i}
               for i in range(200)]
    produce_records(Producer(conf(b.bootstrap, acks="all", linger_ms=1)), topic, records)
    b.kill()
    b.start()
    msgs = read_all(b, topic, len(records))
    assert len(msgs) == len(records)
    assert_same_records(msgs, records, 1)


def test_idempotent_producer_across_restart(broker_factory):
    """One idempotent producer keeps producing while the broker restarts: the broker must
    remember its producer id and sequences, so nothing is lost, duplicated or refused."""
    b = broker_factory()
    topic = unique("rs-idem")
    errors = []
    p = Producer(conf(b.bootstrap, enable_idempotence=True, acks="all", linger_ms=2,
                      error_cb=lambda e: errors.append(e)))
    first = [{"partition": 0, "key": None, "value": f"seq-{i}".encode(), "headers": None,
              "timestamp": BASE_TS + i} for i in range(100)]
    produce_records(p, topic, first)
    b.stop()
    b.start()
    second = [{"partition": 0, "key": None, "value": f"seq-{i}".encode(), "headers": None,
               "timestamp": BASE_TS + i} for i in range(100, 200)]
    d = produce_records(p, topic, second)
    assert not [e for e in errors if e.fatal()], errors
    assert d.offsets_by_partition() == {0: list(range(100, 200))}
    msgs = read_all(b, topic, 200)
    assert len(msgs) == 200
    assert_same_records(msgs, first + second, 1)


def test_group_consumers_read_on_across_restarts(broker_factory):
    """A confluent-kafka and a kafka-python group consumer keep running while the broker
    restarts (SIGTERM, then SIGKILL). Each start leads at a new leader epoch, so their next
    fetches name an older epoch and are fenced; they read the new epoch from Metadata, check
    their positions (librdkafka asks OffsetForLeaderEpoch) and read on: every record once."""
    import time

    from kafka import KafkaConsumer

    b = broker_factory()
    topic = unique("rs-epochs")
    create_topic(AdminClient(conf(b.bootstrap)), topic, 2)
    ck = Consumer(consumer_conf(b.bootstrap, unique("rs-ck"), **{"enable.auto.commit": True,
                                                                  "auto.commit.interval.ms": 200}))
    ck.subscribe([topic])
    kp = KafkaConsumer(topic, bootstrap_servers=b.bootstrap, group_id=unique("rs-kp"),
                       auto_offset_reset="earliest", enable_auto_commit=True,
                       auto_commit_interval_ms=200, request_timeout_ms=15000)
    seen = {"ck": [], "kp": []}

    def take(m, recs) -> None:
        # Transport errors while the broker is down are reported and passed over.
        if m is not None and not m.error():
            seen["ck"].append((m.partition(), m.offset()))
        for rs in recs.values():
            seen["kp"].extend((r.partition, r.offset) for r in rs)

    def poll_both(until: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while min(len(v) for v in seen.values()) < until:
            assert time.monotonic() < deadline, {k: len(v) for k, v in seen.items()}
            take(ck.poll(0.2), kp.poll(timeout_ms=200))

    def settle(seconds: float) -> None:
        """Polls on: auto-commits go out, and anything read twice shows."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            take(ck.poll(0.2), kp.poll(timeout_ms=200))

    def produce_batch(n: int, start: int) -> None:
        produce_records(Producer(conf(b.bootstrap, acks="all")), topic,
                        [{"partition": i % 2, "key": None, "value": f"v{start + i}".encode(),
                          "headers": None, "timestamp": BASE_TS + start + i}
                         for i in range(n)])

    try:
        produce_batch(40, 0)
        poll_both(40)
        settle(1)
        assert b.restart() == 0
        produce_batch(40, 40)
        poll_both(80)
        settle(1)
        b.kill()
        b.start()
        produce_batch(40, 80)
        poll_both(120)
        settle(2)
        expected = sorted((p, o) for p in range(2) for o in range(60))
        for name, got in seen.items():
            assert sorted(got) == expected, f"{name} read {len(got)}: {sorted(got)}"
    finally:
        ck.close()
        kp.close()
