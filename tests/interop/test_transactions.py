"""Transactions (exactly-once) against runnel, with confluent-kafka (librdkafka) and
kafka-python: transactional producers commit and abort across partitions and topics,
read_committed consumers see committed records only and stop at the last stable offset (LSO)
of an open transaction, control markers take one offset each and are never delivered,
consume-transform-produce commits the group's offsets with the transaction, a second producer
with the same transactional.id fences the first and aborts its open transaction, the broker
aborts a transaction that outlives its timeout, and transaction state survives a restart.

Negative checks ("never visible") do not rely on waiting long enough: each ends with a
committed sentinel after the records that must stay hidden, and a read_committed consumer must
reach the sentinel, so it has read past them.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import (OFFSET_BEGINNING, Consumer, ConsumerGroupTopicPartitions,
                             IsolationLevel, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, OffsetSpec

from ck_util import Deliveries, conf, consumer_conf, create_topic
from interop_util import ck_consume, unique, wait_for

# The ways librdkafka reports that a newer producer with the same transactional.id fenced
# this one (it normalises the broker's PRODUCER_FENCED / INVALID_PRODUCER_EPOCH to _FENCED).
FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


# --- helpers ----------------------------------------------------------------------------------

def txn_producer(bootstrap: str, tid: str | None = None, timeout_ms: int = 10000,
                 errors: list | None = None, **extra) -> Producer:
    """A confluent-kafka transactional producer, already through init_transactions.

    socket.timeout.ms is left to librdkafka: it must not exceed transaction.timeout.ms + 100.
    """
    c = {"bootstrap.servers": bootstrap, "transactional.id": tid or unique("txn-id"),
         "transaction.timeout.ms": timeout_ms}
    if errors is not None:
        c["error_cb"] = errors.append
    c.update(extra)
    p = Producer(c)
    p.init_transactions(20)
    return p


def produce_in_txn(p: Producer, items, end: str | None = "commit") -> list[tuple]:
    """One transaction of `items` ((topic, partition, value) each): begin, produce, flush, then
    commit, abort, or (end=None) leave it open. Returns the deliveries as
    (topic, partition, offset, value), in produce order."""
    d = Deliveries()
    p.begin_transaction()
    for topic, partition, value in items:
        p.produce(topic, value=value, partition=partition, on_delivery=d)
        p.poll(0)
    assert p.flush(15) == 0, "transactional records still queued after 15 s"
    assert not d.failed, f"transactional produce failed: {d.failed}"
    assert len(d.ok) == len(items), (len(d.ok), len(items))
    if end == "commit":
        p.commit_transaction(15)
    elif end == "abort":
        p.abort_transaction(15)
    else:
        assert end is None, end
    by_value = {m.value(): m for m in d.ok}
    return [(t, part, by_value[v].offset(), v) for t, part, v in items]


def plain_produce(bootstrap: str, topic: str, partition: int, values) -> list[int]:
    """Non-transactional produce (acks=all); returns the offsets."""
    d = Deliveries()
    p = Producer(conf(bootstrap, acks="all"))
    for v in values:
        p.produce(topic, value=v, partition=partition, on_delivery=d)
    assert p.flush(15) == 0, "records still queued after 15 s"
    assert not d.failed, d.failed
    return [m.offset() for m in sorted(d.ok, key=lambda m: m.offset())]


def read_back(bootstrap: str, tps, isolation: str, count: int, timeout: float = 20.0,
              settle: float = 1.5) -> list[tuple]:
    """Reads every assigned partition from the beginning with `isolation.level` until `count`
    records arrived (and `settle` seconds more for extras): (topic, partition, offset, value)
    sorted by topic, partition and offset."""
    c = Consumer(consumer_conf(bootstrap, unique("txn-reader"), **{"isolation.level": isolation}))
    try:
        c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in tps])
        msgs = ck_consume(c, count, timeout=timeout, settle=settle)
    finally:
        c.close()
    return sorted((m.topic(), m.partition(), m.offset(), m.value()) for m in msgs)


def stable_and_high(admin: AdminClient, topic: str, partition: int = 0) -> tuple[int, int]:
    """(last stable offset, high watermark) from ListOffsets latest with READ_COMMITTED and
    READ_UNCOMMITTED."""
    tp = TopicPartition(topic, partition)
    out = []
    for level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED):
        f = admin.list_offsets({tp: OffsetSpec.latest()}, isolation_level=level,
                               request_timeout=10)
        out.append(f[tp].result(timeout=15).offset)
    return out[0], out[1]


def values(rows) -> list[bytes]:
    return [r[3] for r in rows]


# --- commit and abort, read_committed and read_uncommitted ----------------------------------

def test_commit_is_seen_abort_only_by_read_uncommitted(broker):
    """One transaction over 3 partitions of one topic and 1 of another is committed, the next
    (same partitions) aborted, a third committed: read_committed gets the first and third
    whole, read_uncommitted all three, and neither gets a control marker."""
    admin = AdminClient(conf(broker.bootstrap))
    ta, tb = unique("txn-a"), unique("txn-b")
    create_topic(admin, ta, 3)
    create_topic(admin, tb, 1)
    parts = [(ta, 0), (ta, 1), (ta, 2), (tb, 0)]
    p = txn_producer(broker.bootstrap)

    def batch(tag: str):
        return [(t, part, f"{tag}-{t[-4:]}-{part}-{i}".encode())
                for t, part in parts for i in range(3)]

    committed = produce_in_txn(p, batch("t1"), "commit")
    aborted = produce_in_txn(p, batch("t2"), "abort")
    sentinel = produce_in_txn(p, batch("t3"), "commit")

    rc = read_back(broker.bootstrap, parts, "read_committed", len(committed) + len(sentinel))
    assert rc == sorted(committed + sentinel), (
        "read_committed must get exactly the committed transactions' records:\n"
        f"got      {rc}\nexpected {sorted(committed + sentinel)}")

    ru = read_back(broker.bootstrap, parts, "read_uncommitted",
                   len(committed) + len(aborted) + len(sentinel))
    assert ru == sorted(committed + aborted + sentinel), (
        "read_uncommitted must get every data record (aborted ones too) and no control "
        f"marker:\ngot      {ru}\nexpected {sorted(committed + aborted + sentinel)}")


def test_interleaved_transactions_leave_marker_gaps(broker):
    """Commit T1, abort T2, commit T3 on one partition: each transaction's end writes one
    control marker, so T1 is at 0-2, T2 at 4-6, T3 at 8-10 and the high watermark is 12;
    read_committed sees T1 then T3 in order, read_uncommitted all nine."""
    admin = AdminClient(conf(broker.bootstrap))
    topic = unique("txn-gaps")
    create_topic(admin, topic, 1)
    p = txn_producer(broker.bootstrap)
    t1 = produce_in_txn(p, [(topic, 0, f"T1-{i}".encode()) for i in range(3)], "commit")
    t2 = produce_in_txn(p, [(topic, 0, f"T2-{i}".encode()) for i in range(3)], "abort")
    t3 = produce_in_txn(p, [(topic, 0, f"T3-{i}".encode()) for i in range(3)], "commit")
    offsets = [[r[2] for r in t] for t in (t1, t2, t3)]
    assert offsets == [[0, 1, 2], [4, 5, 6], [8, 9, 10]], (
        f"each commit or abort marker should take one offset: got {offsets}")
    assert wait_for(lambda: stable_and_high(admin, topic) == (12, 12), 10,
                    what="LSO and high watermark 12 (9 records, 3 markers)")

    rc = read_back(broker.bootstrap, [(topic, 0)], "read_committed", 6)
    assert [(r[2], r[3]) for r in rc] == [(r[2], r[3]) for r in t1 + t3], rc
    ru = read_back(broker.bootstrap, [(topic, 0)], "read_uncommitted", 9)
    assert [(r[2], r[3]) for r in ru] == [(r[2], r[3]) for r in t1 + t2 + t3], ru


def test_open_transaction_holds_back_read_committed(broker):
    """While a transaction is open (produced and flushed, not committed) the last stable offset
    stays at its first record: read_committed consumers stop there, read_uncommitted ones read
    on to the high watermark. On commit the LSO moves past the marker and the records arrive."""
    admin = AdminClient(conf(broker.bootstrap))
    topic = unique("txn-open")
    create_topic(admin, topic, 1)
    p = txn_producer(broker.bootstrap)
    t1 = produce_in_txn(p, [(topic, 0, f"T1-{i}".encode()) for i in range(2)], "commit")
    t2 = produce_in_txn(p, [(topic, 0, f"T2-{i}".encode()) for i in range(3)], end=None)
    assert [r[2] for r in t1 + t2] == [0, 1, 3, 4, 5], t1 + t2

    assert stable_and_high(admin, topic) == (3, 6), (
        "with T2 open from offset 3, ListOffsets should give LSO 3 (read_committed) and "
        "high watermark 6 (read_uncommitted)")
    ru = read_back(broker.bootstrap, [(topic, 0)], "read_uncommitted", 5)
    assert values(ru) == values(t1 + t2), ru

    c = Consumer(consumer_conf(broker.bootstrap, unique("txn-reader"),
                               **{"isolation.level": "read_committed"}))
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        before = ck_consume(c, 2, timeout=20, settle=2.0)
        assert [(m.offset(), m.value()) for m in before] == [(r[2], r[3]) for r in t1], (
            "read_committed must stop before the open transaction: got "
            f"{[(m.offset(), m.value()) for m in before]}")
        # A read_committed consumer's watermark query asks for the last stable offset.
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        assert (low, high) == (0, 3), (low, high)

        p.commit_transaction(15)
        after = ck_consume(c, 3, timeout=20, settle=1.0)
        assert [(m.offset(), m.value()) for m in after] == [(r[2], r[3]) for r in t2], (
            f"after the commit T2 arrives: got {[(m.offset(), m.value()) for m in after]}")
    finally:
        c.close()
    assert stable_and_high(admin, topic) == (7, 7), "the commit marker at 6 ends the transaction"


# --- consume-transform-produce ----------------------------------------------------------------

def committed_offsets(c: Consumer, topic: str, partitions: int) -> dict[int, int]:
    got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    assert all(tp.error is None for tp in got), got
    return {tp.partition: tp.offset for tp in got}


def test_consume_transform_produce_commits_offsets_with_the_transaction(broker):
    """A member of group G reads 10 input records; a transactional producer writes one output
    per input and send_offsets_to_transaction(positions, group metadata): on commit the
    group's committed offsets are the positions, and the outputs visible. The next round is
    aborted: the group's offsets stay, its outputs never appear, and a new member of G resumes
    from the committed offsets."""
    admin = AdminClient(conf(broker.bootstrap))
    src, dst, group = unique("txn-in"), unique("txn-out"), unique("txn-g")
    create_topic(admin, src, 2)
    create_topic(admin, dst, 1)
    for part in range(2):
        plain_produce(broker.bootstrap, src, part, [f"in-{part}-{i}".encode() for i in range(5)])
    p = txn_producer(broker.bootstrap)

    def transform(c: Consumer, n: int, end: str) -> list[tuple]:
        msgs = ck_consume(c, n, timeout=20)
        d = Deliveries()
        p.begin_transaction()
        for m in msgs:
            p.produce(dst, value=b"out:" + m.value(), partition=0, on_delivery=d)
        assert p.flush(15) == 0
        assert not d.failed, d.failed
        p.send_offsets_to_transaction(c.position(c.assignment()), c.consumer_group_metadata(),
                                      15)
        if end == "commit":
            p.commit_transaction(15)
        else:
            p.abort_transaction(15)
        return sorted((m.topic(), m.partition(), m.offset(), m.value()) for m in d.ok)

    c = Consumer(consumer_conf(broker.bootstrap, group, **{"isolation.level": "read_committed"}))
    try:
        c.subscribe([src])
        first = transform(c, 10, "commit")
        wait_for(lambda: committed_offsets(c, src, 2) == {0: 5, 1: 5}, 10,
                 what="the committed transaction's offsets {0: 5, 1: 5} for the group")
        listed = admin.list_consumer_group_offsets(
            [_group_partitions(group, src, 2)])[group].result(timeout=15)
        assert {tp.partition: tp.offset for tp in listed.topic_partitions} == {0: 5, 1: 5}, (
            listed.topic_partitions)

        for part in range(2):
            plain_produce(broker.bootstrap, src, part, [f"in-{part}-{i}".encode()
                                                        for i in range(5, 7)])
        second = transform(c, 4, "abort")
        assert len(second) == 4
        # A committed sentinel: its commit also means the abort has completed.
        sentinel = produce_in_txn(p, [(dst, 0, b"sentinel")], "commit")
        assert committed_offsets(c, src, 2) == {0: 5, 1: 5}, (
            "an aborted transaction's offsets must not be committed")
    finally:
        c.close()

    out = read_back(broker.bootstrap, [(dst, 0)], "read_committed", 11)
    assert values(out) == values(first) + values(sentinel), (
        f"read_committed output must be the committed round and the sentinel: {out}")

    c = Consumer(consumer_conf(broker.bootstrap, group, **{"isolation.level": "read_committed"}))
    try:
        c.subscribe([src])
        rest = ck_consume(c, 4, timeout=20, settle=1.0)
        assert sorted((m.partition(), m.offset()) for m in rest) == \
            [(0, 5), (0, 6), (1, 5), (1, 6)], (
            "a new member resumes from the transaction's committed offsets: "
            f"{sorted((m.partition(), m.offset()) for m in rest)}")
    finally:
        c.close()


def _group_partitions(group: str, topic: str, partitions: int) -> ConsumerGroupTopicPartitions:
    return ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p)
                                                for p in range(partitions)])


# --- fencing ----------------------------------------------------------------------------------

def test_second_producer_fences_the_first_and_aborts_its_transaction(broker):
    """Producer 1 has a transaction open when producer 2 with the same transactional.id calls
    init_transactions: producer 1's commit then fails with a fatal fenced error, its records
    never become visible to read_committed, and producer 2 commits normally."""
    admin = AdminClient(conf(broker.bootstrap))
    topic = unique("txn-fence")
    create_topic(admin, topic, 1)
    tid = unique("txn-fence-id")
    errors1: list = []
    p1 = txn_producer(broker.bootstrap, tid, errors=errors1)
    zombie = produce_in_txn(p1, [(topic, 0, f"zombie-{i}".encode()) for i in range(3)], None)

    p2 = txn_producer(broker.bootstrap, tid)
    with pytest.raises(KafkaException) as e:
        p1.commit_transaction(15)
    err = e.value.args[0]
    assert err.fatal() and err.code() in FENCED, (
        f"the fenced producer's commit should fail fatally with a fenced error: {err!r} "
        f"(fatal={err.fatal()}, code={err.code()}); error_cb got {errors1}")

    fresh = produce_in_txn(p2, [(topic, 0, f"p2-{i}".encode()) for i in range(2)], "commit")
    rc = read_back(broker.bootstrap, [(topic, 0)], "read_committed", 2)
    assert values(rc) == values(fresh), (
        f"read_committed must see only producer 2's records, never the fenced ones: {rc}")
    ru = read_back(broker.bootstrap, [(topic, 0)], "read_uncommitted", 5)
    assert values(ru) == values(zombie) + values(fresh), ru
    lso, high = stable_and_high(admin, topic)
    # zombie 0-2, abort marker 3, p2 4-5, commit marker 6
    assert (lso, high) == (7, 7), (lso, high)


# --- transaction timeout ----------------------------------------------------------------------

def test_broker_aborts_a_transaction_that_outlives_its_timeout(broker):
    """A producer with transaction.timeout.ms=3000 produces in a transaction and then stalls:
    the broker aborts it, so read_committed reads past it to records a plain producer wrote
    after it, the stalled records never appear, and the stalled producer cannot commit."""
    admin = AdminClient(conf(broker.bootstrap))
    topic = unique("txn-timeout")
    create_topic(admin, topic, 1)
    stalled_p = txn_producer(broker.bootstrap, timeout_ms=3000)
    started = time.monotonic()
    stalled = produce_in_txn(stalled_p, [(topic, 0, f"stalled-{i}".encode()) for i in range(3)],
                             None)
    after_offsets = plain_produce(broker.bootstrap, topic, 0, [b"after-0", b"after-1"])
    lso, high = stable_and_high(admin, topic)
    if time.monotonic() - started < 1.5:  # well within the timeout: still open
        assert after_offsets == [3, 4], after_offsets
        assert (lso, high) == (0, 5), (
            f"the open transaction at 0 should hold the LSO at 0 (high watermark 5): {lso, high}")

    rc = read_back(broker.bootstrap, [(topic, 0)], "read_committed", 2, timeout=20)
    assert values(rc) == [b"after-0", b"after-1"], (
        f"read_committed should get past the timed-out transaction, never seeing it: {rc}")
    assert wait_for(lambda: (lambda o: o[0] == o[1] == 6)(stable_and_high(admin, topic)), 10,
                    what="LSO = high watermark = 6 (the abort marker after offset 4)")
    with pytest.raises(KafkaException):
        stalled_p.commit_transaction(15)
    ru = read_back(broker.bootstrap, [(topic, 0)], "read_uncommitted", 5)
    assert values(ru) == values(stalled) + [b"after-0", b"after-1"], ru


# --- restart ----------------------------------------------------------------------------------

@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_transactions_survive_restart(broker_factory, stop):
    """A committed transaction and an open one (60 s timeout), then a restart: read_committed
    still sees the committed records, the open transaction still holds back the LSO, a new
    producer with its transactional.id aborts it, and the committed producer goes on
    committing."""
    b = broker_factory()
    topic = unique("txn-restart")
    create_topic(AdminClient(conf(b.bootstrap)), topic, 1)
    p1 = txn_producer(b.bootstrap)
    t1 = produce_in_txn(p1, [(topic, 0, f"T1-{i}".encode()) for i in range(3)], "commit")
    open_tid = unique("txn-open-id")
    p2 = txn_producer(b.bootstrap, open_tid, timeout_ms=60000)
    open_rows = produce_in_txn(p2, [(topic, 0, f"open-{i}".encode()) for i in range(2)], None)
    assert [r[2] for r in t1 + open_rows] == [0, 1, 2, 4, 5], t1 + open_rows

    if stop == "sigterm":
        assert b.stop() == 0, "SIGTERM should stop runnel cleanly"
    else:
        b.kill()
    b.start()
    admin = AdminClient(conf(b.bootstrap))

    rc = read_back(b.bootstrap, [(topic, 0)], "read_committed", 3)
    assert values(rc) == values(t1), f"the committed transaction after restart: {rc}"
    wait_for(lambda: stable_and_high(admin, topic) == (4, 6), 10,
             what="the open transaction to hold the LSO at 4 (high watermark 6) after restart")

    p3 = txn_producer(b.bootstrap, open_tid, timeout_ms=60000)
    wait_for(lambda: (lambda o: o[0] == o[1] == 7)(stable_and_high(admin, topic)), 10,
             what="re-init to abort the open transaction (marker at 6)")
    with pytest.raises(KafkaException) as e:
        p2.commit_transaction(15)
    assert e.value.args[0].code() in FENCED, (
        f"the producer of the open transaction is fenced by the re-init: {e.value.args[0]!r}")
    t3 = produce_in_txn(p3, [(topic, 0, b"p3")], "commit")
    t4 = produce_in_txn(p1, [(topic, 0, b"p1-after-restart")], "commit")
    rc = read_back(b.bootstrap, [(topic, 0)], "read_committed", 5)
    assert values(rc) == values(t1) + values(t3) + values(t4), (
        f"committed records only, the open transaction's never: {rc}")


def test_open_transaction_times_out_after_restart(broker_factory):
    """An open transaction (5 s timeout) is still open across a restart, and the broker aborts
    it once the timeout has passed: read_committed then reads past it."""
    b = broker_factory()
    topic = unique("txn-restart-to")
    create_topic(AdminClient(conf(b.bootstrap)), topic, 1)
    p = txn_producer(b.bootstrap, timeout_ms=5000)
    started = time.monotonic()
    stalled = produce_in_txn(p, [(topic, 0, f"stalled-{i}".encode()) for i in range(2)], None)
    b.restart()
    admin = AdminClient(conf(b.bootstrap))
    lso, high = stable_and_high(admin, topic)
    if time.monotonic() - started < 3.0:
        assert (lso, high) == (0, 2), (
            f"the transaction should still be open after the restart: LSO, HW = {lso, high}")
    plain_produce(b.bootstrap, topic, 0, [b"after"])
    rc = read_back(b.bootstrap, [(topic, 0)], "read_committed", 1, timeout=20)
    assert values(rc) == [b"after"], (
        f"read_committed should get past the timed-out transaction, never seeing it: {rc}")
    ru = read_back(b.bootstrap, [(topic, 0)], "read_uncommitted", 3)
    assert values(ru) == values(stalled) + [b"after"], ru


# --- kafka-python -----------------------------------------------------------------------------

def kp_txn_producer(broker, tid: str | None = None):
    from kafka import KafkaProducer
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=tid or unique("kp-tid"),
                      transaction_timeout_ms=10000, request_timeout_ms=10000, max_block_ms=20000)
    p.init_transactions()
    return p


def kp_read(broker, topic: str, isolation: str, count: int, timeout: float = 20.0,
            settle: float = 1.5):
    from kafka import KafkaConsumer, TopicPartition as KTP
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, isolation_level=isolation,
                      enable_auto_commit=False, request_timeout_ms=15000)
    tp = KTP(topic, 0)
    try:
        c.assign([tp])
        c.seek_to_beginning(tp)
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                out.extend(recs)
        end = time.monotonic() + settle
        while time.monotonic() < end:
            for recs in c.poll(timeout_ms=200).values():
                out.extend(recs)
        ends = c.end_offsets([tp])[tp]
    finally:
        c.close()
    return [(r.offset, r.value) for r in out], ends


def test_kafka_python_commit_and_abort(broker):
    """kafka-python's transactional producer: commit 3, abort 2, commit 1 on one partition;
    kafka-python's read_committed consumer gets the 4 committed records (offsets 0-2 and 7),
    read_uncommitted all 6, and confluent-kafka's read_committed consumer agrees."""
    topic = unique("kp-txn")
    create_topic(AdminClient(conf(broker.bootstrap)), topic, 1)
    p = kp_txn_producer(broker)
    try:
        def txn(vals, commit: bool) -> list[tuple]:
            p.begin_transaction()
            futures = [p.send(topic, value=v, partition=0) for v in vals]
            p.flush(timeout=15)
            offsets = [f.get(timeout=10).offset for f in futures]
            (p.commit_transaction if commit else p.abort_transaction)()
            return list(zip(offsets, vals))

        t1 = txn([f"T1-{i}".encode() for i in range(3)], True)
        t2 = txn([f"T2-{i}".encode() for i in range(2)], False)
        t3 = txn([b"T3-0"], True)
    finally:
        p.close(timeout=10)
    assert [o for o, _ in t1 + t2 + t3] == [0, 1, 2, 4, 5, 7], (
        f"each commit or abort marker takes one offset: {t1 + t2 + t3}")

    rc, rc_end = kp_read(broker, topic, "read_committed", 4)
    assert rc == t1 + t3, f"kafka-python read_committed: {rc}"
    assert rc_end == 9, f"end offset (LSO) after the last marker should be 9: {rc_end}"
    ru, ru_end = kp_read(broker, topic, "read_uncommitted", 6)
    assert ru == t1 + t2 + t3, f"kafka-python read_uncommitted: {ru}"
    assert ru_end == 9, ru_end
    ck = read_back(broker.bootstrap, [(topic, 0)], "read_committed", 4)
    assert [(r[2], r[3]) for r in ck] == t1 + t3, f"confluent-kafka read_committed: {ck}"


def test_kafka_python_send_offsets_to_transaction(broker):
    """kafka-python consume-transform-produce: the offsets sent with a committed transaction
    become the group's committed offsets; those sent with an aborted one do not."""
    from kafka import KafkaConsumer, TopicPartition as KTP
    from kafka.structs import OffsetAndMetadata

    src, dst, group = unique("kp-txn-in"), unique("kp-txn-out"), unique("kp-txn-g")
    admin = AdminClient(conf(broker.bootstrap))
    create_topic(admin, src, 1)
    create_topic(admin, dst, 1)
    plain_produce(broker.bootstrap, src, 0, [f"in-{i}".encode() for i in range(6)])
    tp = KTP(src, 0)
    p = kp_txn_producer(broker)
    c = KafkaConsumer(src, bootstrap_servers=broker.bootstrap, group_id=group,
                      isolation_level="read_committed", auto_offset_reset="earliest",
                      enable_auto_commit=False, request_timeout_ms=15000, max_poll_records=3)
    try:
        def round_trip(n: int, commit: bool):
            got = []
            deadline = time.monotonic() + 20
            while len(got) < n and time.monotonic() < deadline:
                for recs in c.poll(timeout_ms=500, max_records=n - len(got)).values():
                    got.extend(recs)
            assert len(got) == n, f"consumed {len(got)} of {n}"
            p.begin_transaction()
            for r in got:
                p.send(dst, value=b"out:" + r.value, partition=0)
            p.send_offsets_to_transaction({tp: OffsetAndMetadata(c.position(tp), "", -1)},
                                          c.group_metadata())
            (p.commit_transaction if commit else p.abort_transaction)()
            return [b"out:" + r.value for r in got]

        first = round_trip(3, True)
        wait_for(lambda: c.committed(tp) == 3, 10, what="committed offset 3 for the group")
        round_trip(3, False)
        # A committed transaction after the abort means the abort has completed.
        p.begin_transaction()
        p.send(dst, value=b"sentinel", partition=0)
        p.commit_transaction()
        assert c.committed(tp) == 3, (
            f"the aborted transaction's offset must not be committed: {c.committed(tp)}")
    finally:
        c.close()
        p.close(timeout=10)
    out, _ = kp_read(broker, dst, "read_committed", 4)
    assert [v for _, v in out] == first + [b"sentinel"], out


def test_kafka_python_finds_and_aborts_a_hanging_transaction(broker):
    """The operator's way out of a hanging transaction, with kafka-python's admin client:
    describe_producers (DescribeProducers) shows the transaction open in the partition and where
    it starts, abort_transaction (WriteTxnMarkers) ends it, and read_committed readers then read
    to the end of the partition."""
    from kafka import KafkaAdminClient, KafkaProducer, TopicPartition as KTP
    from kafka.admin import AbortTransactionSpec

    topic = unique("kp-hanging")
    create_topic(AdminClient(conf(broker.bootstrap)), topic, 1)
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=unique("kp-hang"),
                      transaction_timeout_ms=60000, request_timeout_ms=10000, max_block_ms=20000)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        p.init_transactions()
        p.begin_transaction()
        assert p.send(topic, value=b"stuck", partition=0).get(timeout=10).offset == 0
        p.flush(timeout=10)
        tp = KTP(topic, 0)
        producers = admin.describe_producers([tp])[tp].active_producers
        assert len(producers) == 1, producers
        open_one = producers[0]
        assert open_one.current_transaction_start_offset == 0, open_one
        assert open_one.last_sequence == 0, open_one
        _, end = kp_read(broker, topic, "read_committed", 0, timeout=1, settle=0)
        assert end == 0, f"the open transaction holds read_committed readers at 0: {end}"

        admin.abort_transaction(AbortTransactionSpec(
            topic_partition=tp, producer_id=open_one.producer_id,
            producer_epoch=open_one.producer_epoch))
        after = admin.describe_producers([tp])[tp].active_producers
        assert [x.current_transaction_start_offset for x in after] == [-1], after
        got, end = kp_read(broker, topic, "read_committed", 0, timeout=1, settle=0.5)
        assert (got, end) == ([], 2), f"aborted, and the marker took offset 1: {got} {end}"
    finally:
        admin.close()
        p.close(timeout=5)


# --- transactions on a compacted topic ---------------------------------------------------------

def control_batches(data_dir, topic: str) -> int:
    """The control batches (transaction markers) in the partition's segment files, read from
    the v2 batch headers (attributes bit 5)."""
    parts = [d for d in data_dir.rglob(f"{topic}-0") if d.is_dir()]
    assert len(parts) == 1, parts
    count = 0
    for seg in parts[0].glob("*.log"):
        data = seg.read_bytes()
        pos = 0
        while pos + 61 <= len(data):
            length = int.from_bytes(data[pos + 8:pos + 12], "big")
            attributes = int.from_bytes(data[pos + 21:pos + 23], "big")
            count += bool(attributes & 0x20)
            pos += 12 + length
    return count


def test_a_compacted_changelog_keeps_no_marker_per_transaction(broker_factory):
    """A compacted topic written by a transactional producer, one key rewritten in each of 30
    transactions (as Kafka Streams writes a changelog under exactly-once): once the cleaner has
    removed the superseded values and delete.retention.ms has passed, their transactions'
    markers go too, as in Kafka; read_committed still reads the latest value, the LSO is the
    high watermark, and after a restart the producer commits again."""
    b = broker_factory(extra_config='[log]\nretention_check_interval = "200ms"')
    topic = unique("txn-changelog")
    admin = AdminClient(conf(b.bootstrap))
    create_topic(admin, topic, 1, {"cleanup.policy": "compact", "segment.ms": "100",
                                   "delete.retention.ms": "1000",
                                   "min.cleanable.dirty.ratio": "0"})
    p = txn_producer(b.bootstrap)
    for i in range(30):
        p.begin_transaction()
        p.produce(topic, key=b"state", value=f"v{i}".encode(), partition=0)
        p.commit_transaction(15)
        time.sleep(0.15)  # each transaction in a segment of its own
    # 60 offsets: each transaction's record and its marker.
    wait_for(lambda: control_batches(b.data_dir, topic) <= 2, 30, interval=0.5,
             what="the markers of the superseded transactions to go")
    rows = read_back(b.bootstrap, [(topic, 0)], "read_committed", 1)
    assert values(rows) == [b"v29"], rows
    wait_for(lambda: (lambda o: o[0] == o[1] == 60)(stable_and_high(admin, topic)), 10,
             what="the LSO to be the high watermark (60)")
    assert b.stop() == 0
    b.start()
    rows = read_back(b.bootstrap, [(topic, 0)], "read_committed", 1)
    assert values(rows) == [b"v29"], rows
    admin = AdminClient(conf(b.bootstrap))
    wait_for(lambda: (lambda o: o[0] == o[1] == 60)(stable_and_high(admin, topic)), 10,
             what="the LSO to be the high watermark after a restart")
    p.begin_transaction()
    p.produce(topic, key=b"state", value=b"after", partition=0)
    p.commit_transaction(15)
    rows = read_back(b.bootstrap, [(topic, 0)], "read_committed", 1)
    assert values(rows) == [b"after"], rows
