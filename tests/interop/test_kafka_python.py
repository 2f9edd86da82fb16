"""kafka-python (pure Python client) against runnel: every codec, groups with commit and
resume, admin topics, group listing and description, end_offsets and offsets_for_times."""

from __future__ import annotations

import os
import time

import kafka
import kafka.codec
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from interop_util import unique, wait_for

BASE_TS = 1_700_000_000_000

CODEC_AVAILABLE = {
    "none": lambda: True,
    "gzip": kafka.codec.has_gzip,
    "snappy": kafka.codec.has_snappy,
    "lz4": kafka.codec.has_lz4,
    "zstd": kafka.codec.has_zstd,
}
CODEC_LIBRARY = {"snappy": "python-snappy", "lz4": "lz4", "zstd": "zstandard", "gzip": "zlib"}


def producer(broker, **kw) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=10000, **kw)


def consumer(broker, *topics, **kw) -> KafkaConsumer:
    kw.setdefault("auto_offset_reset", "earliest")
    kw.setdefault("enable_auto_commit", False)
    kw.setdefault("request_timeout_ms", 15000)
    return KafkaConsumer(*topics, bootstrap_servers=broker.bootstrap, **kw)


def admin_client(broker) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=10000)


def read(c: KafkaConsumer, count: int, timeout: float = 30.0, settle: float = 0.0):
    """Polls until `count` records arrived, then `settle` seconds more for extras."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=500).values():
            out.extend(recs)
    assert len(out) >= count, f"got {len(out)} of {count}: {[(r.offset, r.value) for r in out]}"
    end = time.monotonic() + settle
    while time.monotonic() < end:
        for recs in c.poll(timeout_ms=200).values():
            out.extend(recs)
    return out


def send_all(p: KafkaProducer, topic: str, records):
    futures = [p.send(topic, key=r["key"], value=r["value"], headers=r["headers"],
                      partition=r.get("partition"), timestamp_ms=r["timestamp"])
               for r in records]
    p.flush(timeout=30)
    return [f.get(timeout=10) for f in futures]


# --- every codec ------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_codec_round_trip(broker, codec):
    if not CODEC_AVAILABLE[codec]():
        reason = f"kafka-python cannot use {codec}: {CODEC_LIBRARY[codec]} is not importable"
        print(reason)
        pytest.skip(reason)
    topic, group = unique(f"kp-{codec}"), unique("kp-g")
    records = [{"key": f"key-{i}".encode(),
                "value": (f"{codec}-{i}-" + "0123456789" * 20).encode(),
                "headers": [("i", str(i).encode()), ("codec", codec.encode())],
                "timestamp": BASE_TS + i * 10} for i in range(40)]
    p = producer(broker, compression_type=None if codec == "none" else codec,
                 linger_ms=20, batch_size=64 * 1024)
    try:
        meta = send_all(p, topic, records)
    finally:
        p.close()
    assert [m.offset for m in meta] == list(range(len(records)))

    c = consumer(broker, topic, group_id=group)
    try:
        got = read(c, len(records), settle=0.5)
    finally:
        c.close()
    assert [(r.offset, r.key, r.value, list(r.headers), r.timestamp, r.timestamp_type)
            for r in got] == \
        [(i, r["key"], r["value"], r["headers"], r["timestamp"], 0)
         for i, r in enumerate(records)]


# --- commit and resume ------------------------------------------------------------------------

def test_commit_and_resume(broker):
    topic, group = unique("kp-resume"), unique("kp-g")
    p = producer(broker)
    try:
        send_all(p, topic, [{"key": None, "value": f"v{i}".encode(), "headers": [],
                             "timestamp": BASE_TS + i} for i in range(10)])
    finally:
        p.close()
    tp = TopicPartition(topic, 0)

    c = consumer(broker, topic, group_id=group, max_poll_records=4)
    try:
        got = read(c, 4)
        assert [r.value for r in got[:4]] == [f"v{i}".encode() for i in range(4)]
        c.commit({tp: OffsetAndMetadata(4, "after-4", -1)})
        assert c.committed(tp) == 4
        assert c.committed(tp, metadata=True).metadata == "after-4"
    finally:
        c.close()

    c = consumer(broker, topic, group_id=group)
    try:
        got = read(c, 6, settle=1.0)
        assert [(r.offset, r.value) for r in got] == [(i, f"v{i}".encode()) for i in range(4, 10)]
        c.commit()  # the position: 10
        assert c.committed(tp) == 10
    finally:
        c.close()

    # A third consumer of the group finds nothing left to read: once it has joined the group
    # (which may take a while), and for 3 s after.
    c = consumer(broker, topic, group_id=group)
    try:
        read_records = 0
        deadline = time.monotonic() + 30
        while not c.assignment() and time.monotonic() < deadline:
            read_records += sum(len(v) for v in c.poll(timeout_ms=200).values())
        assert c.assignment() == {tp}, "the third consumer joined its group"
        read_records += sum(len(v) for v in c.poll(timeout_ms=3000).values())
        assert read_records == 0
        assert c.position(tp) == 10
    finally:
        c.close()


def test_delete_group_offsets(broker):
    """OffsetDelete (kafka-consumer-groups --delete-offsets): the partitions' committed offsets
    go; a topic the group's live members subscribe to keeps its offsets
    (GROUP_SUBSCRIBED_TO_TOPIC); a partition the broker does not have is
    UNKNOWN_TOPIC_OR_PARTITION; an unknown group is GROUP_ID_NOT_FOUND."""
    a_topic, b_topic, group = unique("kp-del-a"), unique("kp-del-b"), unique("kp-del-g")
    p = producer(broker)
    try:
        for t in (a_topic, b_topic):
            send_all(p, t, [{"key": None, "value": b"x", "headers": [], "timestamp": BASE_TS}])
    finally:
        p.close()
    a, b = TopicPartition(a_topic, 0), TopicPartition(b_topic, 0)
    c = consumer(broker, b_topic, group_id=group)
    admin = admin_client(broker)
    try:
        read(c, 1)
        c.commit({a: OffsetAndMetadata(1, "", -1), b: OffsetAndMetadata(1, "", -1)})
        got = admin.delete_group_offsets(group, [a, b])
        assert got[a] is kafka.errors.NoError
        assert got[b] is kafka.errors.GroupSubscribedToTopicError
        offsets = admin.list_group_offsets(group)[group]  # kafka-python 3: by group
        assert a not in offsets and offsets[b].offset == 1, offsets
        # Partitions the broker does not have: UNKNOWN_TOPIC_OR_PARTITION, as in Kafka.
        nosuch, beyond = TopicPartition(unique("kp-none"), 0), TopicPartition(a_topic, 5)
        got = admin.delete_group_offsets(group, [nosuch, beyond])
        assert got[nosuch] is kafka.errors.UnknownTopicOrPartitionError, got
        assert got[beyond] is kafka.errors.UnknownTopicOrPartitionError, got
        c.close()
        # Once the group is empty, b's offsets can go too.
        got = admin.delete_group_offsets(group, [b])
        assert got[b] is kafka.errors.NoError
        assert admin.list_group_offsets(group).get(group, {}) == {}
        with pytest.raises(kafka.errors.GroupIdNotFoundError):
            admin.delete_group_offsets(unique("kp-none"), [a])
    finally:
        c.close()
        admin.close()


# --- admin: topics ----------------------------------------------------------------------------

def test_admin_create_and_delete_topics(broker):
    a = admin_client(broker)
    try:
        t1, t2 = unique("kp-admin"), unique("kp-admin")
        res = a.create_topics({t1: {"num_partitions": 3, "replication_factor": 1},
                               t2: {"num_partitions": 1, "replication_factor": 1}})
        assert sorted((t["name"], t["error_code"]) for t in res["topics"]) == \
            sorted([(t1, 0), (t2, 0)]), res
        topics = a.list_topics()
        assert t1 in topics and t2 in topics
        c = consumer(broker)
        try:
            assert c.partitions_for_topic(t1) == {0, 1, 2}
        finally:
            c.close()

        res = a.delete_topics([t1, t2])
        assert sorted((t["name"], t["error_code"]) for t in res["topics"]) == \
            sorted([(t1, 0), (t2, 0)]), res
        wait_for(lambda: t1 not in a.list_topics() and t2 not in a.list_topics(), 10,
                 what="deleted topics to disappear")
    finally:
        a.close()


# --- admin: consumer groups -------------------------------------------------------------------

def list_consumer_groups(a: KafkaAdminClient) -> dict:
    """{group_id: protocol_type}. kafka-python 2.x names it list_consumer_groups() and
    returns tuples; 3.x renamed it list_groups() and returns dicts."""
    if hasattr(a, "list_consumer_groups"):
        return {g[0]: g[1] for g in a.list_consumer_groups()}
    return {g["group_id"]: g["protocol_type"] for g in a.list_groups()}


def describe_consumer_group(a: KafkaAdminClient, group: str) -> dict:
    """{'state', 'protocol_type', 'members': [{'client_id', 'assignment'}]} for one group
    (describe_consumer_groups() in kafka-python 2.x, describe_groups() in 3.x)."""
    if hasattr(a, "describe_consumer_groups"):
        d = a.describe_consumer_groups([group])[0]
        return {"state": d.state, "protocol_type": d.protocol_type,
                "members": [{"client_id": m.client_id, "assignment": repr(m.member_assignment)}
                            for m in d.members]}
    d = a.describe_groups([group])[group]
    assert d["error"] is None, d
    return {"state": d["group_state"], "protocol_type": d["protocol_type"],
            "members": [{"client_id": m["client_id"], "assignment": repr(m)}
                        for m in d["members"]]}


def test_list_and_describe_consumer_groups(broker):
    topic, group = unique("kp-groups"), unique("kp-g")
    p = producer(broker)
    try:
        send_all(p, topic, [{"key": None, "value": b"x", "headers": [], "timestamp": BASE_TS}])
    finally:
        p.close()

    a = admin_client(broker)
    c = consumer(broker, topic, group_id=group, client_id="kp-describer")
    try:
        read(c, 1)
        c.commit()
        assert group in list_consumer_groups(a)
        assert list_consumer_groups(a)[group] == "consumer"
        d = describe_consumer_group(a, group)
        assert d["state"] == "Stable", d
        assert d["protocol_type"] == "consumer"
        assert len(d["members"]) == 1, d
        assert d["members"][0]["client_id"] == "kp-describer"
        assert topic in d["members"][0]["assignment"], d

        c.close()
        d = wait_for(lambda: (lambda d: d if d["state"] == "Empty" else None)(
            describe_consumer_group(a, group)), 15, what="the group to become Empty")
        assert d["members"] == []
        assert group in list_consumer_groups(a), "an empty group with offsets is still listed"
        if hasattr(a, "list_group_offsets"):
            offsets = a.list_group_offsets(group)[group]
            assert {tp: o.offset for tp, o in offsets.items()} == {TopicPartition(topic, 0): 1}
        elif hasattr(a, "list_consumer_group_offsets"):
            offsets = a.list_consumer_group_offsets(group)
            assert {tp: o.offset for tp, o in offsets.items()} == {TopicPartition(topic, 0): 1}
    finally:
        c.close()
        a.close()


def test_a_groups_own_configs_from_the_admin_client(broker):
    """Kafka 4's group configs (ConfigResourceType.GROUP): described over the broker's values,
    set within the bounds, refused outside them with the reason, and reset."""
    from kafka.admin import ConfigResource, ConfigResourceType
    group = unique("kp-gconf")
    resource = lambda configs=None: ConfigResource(ConfigResourceType.GROUP, group, configs)
    a = admin_client(broker)
    try:
        every = a.describe_configs([resource()], include_synonyms=True,
                                   config_filter="all")["group"][group]
        assert set(every) == {"consumer.session.timeout.ms", "consumer.heartbeat.interval.ms"}
        session = every["consumer.session.timeout.ms"]
        assert session["value"] == "45000" and session["config_source"] == "DEFAULT_CONFIG"
        assert session["synonyms"][0]["name"] == "group.consumer.session.timeout.ms"
        assert not session["read_only"]

        done = a.alter_configs([resource({"consumer.session.timeout.ms": "50000"})])
        assert done == {"group": {group: "OK"}}, done
        modified = a.describe_configs([resource()])["group"][group]
        assert list(modified) == ["consumer.session.timeout.ms"], modified
        assert modified["consumer.session.timeout.ms"]["value"] == "50000"
        assert modified["consumer.session.timeout.ms"]["config_source"] == "DYNAMIC_GROUP_CONFIG"

        refused = a.alter_configs([resource({"consumer.heartbeat.interval.ms": "60000"})])
        said = refused["group"][group]
        assert "InvalidConfigurationError" in said and "(60000) is more than" in said, said

        assert a.reset_configs([resource(["consumer.session.timeout.ms"])]) == \
            {"group": {group: "OK"}}
        assert a.describe_configs([resource()])["group"][group] == {}
    finally:
        a.close()


# --- offsets ----------------------------------------------------------------------------------

def test_end_offsets_and_offsets_for_times(broker):
    topic = unique("kp-times")
    p = producer(broker)
    try:
        # Ten records one second apart.
        send_all(p, topic, [{"key": None, "value": f"t{i}".encode(), "headers": [],
                             "timestamp": BASE_TS + i * 1000} for i in range(10)])
    finally:
        p.close()
    tp = TopicPartition(topic, 0)
    c = consumer(broker)
    try:
        assert c.end_offsets([tp]) == {tp: 10}
        assert c.beginning_offsets([tp]) == {tp: 0}

        def lookup(ts):
            r = c.offsets_for_times({tp: ts})[tp]
            return None if r is None else (r.offset, r.timestamp)

        assert lookup(0) == (0, BASE_TS)
        assert lookup(BASE_TS) == (0, BASE_TS)
        assert lookup(BASE_TS + 3000) == (3, BASE_TS + 3000)
        assert lookup(BASE_TS + 3500) == (4, BASE_TS + 4000)   # first at or after
        assert lookup(BASE_TS + 9000) == (9, BASE_TS + 9000)
        assert lookup(BASE_TS + 9001) is None                    # after the last record

        # Seeking to the offset found reads from there.
        c.assign([tp])
        c.seek(tp, 4)
        got = read(c, 6)
        assert [r.value for r in got[:6]] == [f"t{i}".encode() for i in range(4, 10)]
    finally:
        c.close()



@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_login(broker_factory, mechanism):
    """kafka-python's SASL (PLAIN, and its own SCRAM client) against a listener with
    `sasl_plain_file`: the right secret produces and consumes; a wrong one fails to connect."""
    b = broker_factory(sasl_users={"alice": "a11ce-s3cret"})
    login = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism,
             "sasl_plain_username": "alice", "sasl_plain_password": "a11ce-s3cret"}
    topic = unique("kp-sasl")
    p = producer(b, **login)
    for i in range(5):
        p.send(topic, key=b"k", value=f"v{i}".encode()).get(timeout=30)
    p.close()
    c = consumer(b, topic, **login)
    assert [r.value for r in read(c, 5)] == [f"v{i}".encode() for i in range(5)]
    c.close()
    with pytest.raises(kafka.errors.KafkaError):
        bad = producer(b, **{**login, "sasl_plain_password": "guess"},
                       max_block_ms=5000, reconnect_backoff_max_ms=200)
        bad.send(topic, value=b"never").get(timeout=10)


def test_acls_from_the_admin_client_decide_who_writes_reads_and_joins(broker_factory):
    """KafkaAdminClient's create_acls, describe_acls and delete_acls, by a super user of a
    broker with ACLs on; the ACLs hold for kafka-python's producer and group consumer: alice
    writes and bob reads in group kp-dash; bob may not write, join another group or list ACLs."""
    from kafka.admin import (ACL, ACLFilter, ACLOperation, ACLPermissionType,
                             ACLResourcePatternType, ResourcePattern, ResourcePatternFilter,
                             ResourceType)
    b = broker_factory(sasl_users={"admin": "adm1n-s3cret", "alice": "a11ce-s3cret",
                                   "bob": "b0b-s3cret"}, super_users=["User:admin"])

    def login(user: str, secret: str) -> dict:
        return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": user, "sasl_plain_password": secret}

    alice, bob = login("alice", "a11ce-s3cret"), login("bob", "b0b-s3cret")
    admin = KafkaAdminClient(bootstrap_servers=b.bootstrap, request_timeout_ms=10000,
                             **login("admin", "adm1n-s3cret"))
    topic = unique("kp-acl")

    def allow(principal: str, kind, name: str, op) -> ACL:
        return ACL(principal, "*", op, ACLPermissionType.ALLOW,
                   ResourcePattern(kind, name, ACLResourcePatternType.LITERAL))

    acls = [allow("User:alice", ResourceType.TOPIC, topic, ACLOperation.WRITE),
            allow("User:alice", ResourceType.TOPIC, topic, ACLOperation.CREATE),
            allow("User:bob", ResourceType.TOPIC, topic, ACLOperation.READ),
            allow("User:bob", ResourceType.GROUP, "kp-dash", ACLOperation.READ)]
    made = admin.create_acls(acls)
    assert (made["succeeded"], made["failed"]) == (acls, [])
    everything = ACLFilter(None, None, ACLOperation.ANY, ACLPermissionType.ANY,
                           ResourcePatternFilter(ResourceType.ANY, None,
                                                 ACLResourcePatternType.ANY))
    listed, error = admin.describe_acls(everything)
    assert error is kafka.errors.NoError and sorted(map(repr, listed)) == sorted(map(repr, acls))

    p = producer(b, **alice)
    for i in range(3):
        p.send(topic, value=f"r{i}".encode()).get(timeout=30)
    p.close()
    c = consumer(b, topic, group_id="kp-dash", **bob)
    assert [r.value for r in read(c, 3)] == [b"r0", b"r1", b"r2"]
    c.commit()
    c.close()

    # Bob may write to no topic: his (idempotent) producer may not even get a producer id, as
    # in Kafka (KIP-679); without idempotence the topic refuses him.
    p = producer(b, max_block_ms=10000, **bob)
    with pytest.raises(kafka.errors.KafkaError, match="ClusterAuthorizationFailed"):
        p.send(topic, value=b"never").get(timeout=30)
    p.close()
    p = producer(b, max_block_ms=10000, enable_idempotence=False, **bob)
    with pytest.raises(kafka.errors.TopicAuthorizationFailedError):
        p.send(topic, value=b"never").get(timeout=30)
    p.close()
    c = consumer(b, topic, group_id="kp-other", **bob)
    with pytest.raises(kafka.errors.GroupAuthorizationFailedError):
        for _ in range(20):
            c.poll(timeout_ms=500)
    c.close()
    bob_admin = KafkaAdminClient(bootstrap_servers=b.bootstrap, request_timeout_ms=10000, **bob)
    with pytest.raises(kafka.errors.ClusterAuthorizationFailedError):
        bob_admin.describe_acls(everything)
    bob_admin.close()

    results = admin.delete_acls([everything])
    assert len(results) == 1 and results[0][2] is kafka.errors.NoError
    assert sorted(map(repr, results[0][1])) == sorted(map(repr, acls))
    assert admin.describe_acls(everything)[0] == []
    admin.close()


# --- admin: log dirs --------------------------------------------------------------------------

def test_describe_log_dirs(broker):
    """describe_log_dirs() (DescribeLogDirs): the data dir, with the bytes of the produced
    topic's log."""
    topic = unique("kp-log-dirs")
    p = producer(broker)
    for i in range(5):
        p.send(topic, key=b"k", value=f"reading-{i}".encode(), partition=0).get(timeout=30)
    p.close()
    a = admin_client(broker)
    try:
        res = a.describe_log_dirs()
        assert len(res) == 1, res
        dirs = res[0]["log_dirs"]
        assert [(d["error_code"], d["log_dir"]) for d in dirs] == \
            [(0, str(broker.data_dir.absolute()))], dirs
        sizes = {(t["name"], part["partition_index"]): part["partition_size"]
                 for t in dirs[0]["topics"] for part in t["partitions"]}
        assert sizes.get((topic, 0), 0) > 0, sizes
    finally:
        a.close()


def test_describe_cluster(broker):
    """describe_cluster() (DescribeCluster, with a fallback to Metadata that must not be taken):
    this broker, the controller and the cluster id, with the operations allowed on the
    cluster."""
    a = admin_client(broker)
    try:
        got = a.describe_cluster()
        host, port = broker.bootstrap.rsplit(":", 1)
        assert got["controller_id"] == 1, got
        assert [(b["broker_id"], b["host"], b["port"], b["is_fenced"]) for b in got["brokers"]] \
            == [(1, host, int(port), False)], got
        assert got["cluster_id"], got
        # Metadata, the fallback, carries no is_fenced; without ACLs every operation is allowed.
        assert set(got["authorized_operations"]) == {
            "CREATE", "ALTER", "DESCRIBE", "CLUSTER_ACTION", "DESCRIBE_CONFIGS", "ALTER_CONFIGS",
            "IDEMPOTENT_WRITE"}, got
    finally:
        a.close()


# --- incremental fetch sessions (KIP-227) -----------------------------------------------------

def test_incremental_fetch_sessions_across_a_restart(fresh_broker):
    """kafka-python fetches in an incremental session (its default): a consumer of four
    partitions reads waves of records written to one partition at a time, each once and in
    order, while its requests name only what changed; a broker restart loses the session, and
    the client makes a new one."""
    from kafka.admin import NewTopic

    b = fresh_broker
    topic = unique("kp-sess")
    a = admin_client(b)
    a.create_topics([NewTopic(topic, 4, 1)])
    a.close()
    p = producer(b, retries=10)
    c = consumer(b, fetch_max_wait_ms=200)
    c.assign([TopicPartition(topic, i) for i in range(4)])
    got: list = []

    def session():
        handlers = c._fetcher._session_handlers
        assert len(handlers) == 1, handlers
        meta = next(iter(handlers.values())).next_metadata
        return meta.session_id, meta.epoch

    def wave(n: int) -> None:
        part = n % 4
        for i in range(25):
            p.send(topic, value=f"w{n}-{i}".encode(), partition=part)
        p.flush(timeout=30)
        got.extend(read(c, 25, timeout=30))

    for n in range(4):
        wave(n)
    before, epoch = session()
    assert before != 0 and epoch >= 4, f"no incremental session was used: {(before, epoch)}"
    assert b.restart() == 0
    for n in range(4, 8):
        wave(n)
    after, epoch = session()
    assert after not in (0, before) and epoch >= 3, (before, after, epoch)
    c.close()
    p.close()

    by_part: dict = {}
    for r in got:
        by_part.setdefault(r.partition, []).append((r.offset, r.value.decode()))
    for part in range(4):
        expected = [(i, f"w{n}-{j}") for i, (n, j) in
                    enumerate((n, j) for n in (part, part + 4) for j in range(25))]
        assert by_part.get(part) == expected, f"partition {part}: {by_part.get(part)}"


# --- compaction of compressed batches -----------------------------------------------------------

def test_compaction_keeps_offsets_and_repeated_headers_of_compressed_batches(broker_factory):
    """A compacted topic whose lz4 batches lose some records to the cleaner: the kept records
    are read back by kafka-python and librdkafka (confluent-kafka) at their own offsets, with
    every header as produced, a name given twice included (Kafka keeps both), and their own
    timestamps, also in the batch that keeps a tombstone: the cleaner stores the tombstone's
    delete horizon as that batch's first timestamp (KIP-534) and rewrites its records'
    timestamp deltas against it."""
    from confluent_kafka import Consumer

    b = broker_factory(extra_config='[log]\nretention_check_interval = "200ms"')
    topic = unique("kp-compact")
    a = admin_client(b)
    try:
        res = a.create_topics({topic: {"num_partitions": 1, "replication_factor": 1,
                                       "configs": {"cleanup.policy": "compact",
                                                   "segment.bytes": "2048"}}})
        assert [t["error_code"] for t in res["topics"]] == [0], res
    finally:
        a.close()
    # Six lz4 batches of four records: "shared", a key of its own, "shared" again, another of
    # its own. The cleaner keeps two records of each batch, the first of them not its first
    # (three of the last, whose second "shared" is the latest). Fillers of random bytes, each
    # its own batch, roll the segments so the last batch is cleaned too.
    records = []
    for round_ in range(6):
        for i, key in enumerate(["shared", f"own-{round_}-a", "shared", f"own-{round_}-b"]):
            records.append({"key": key.encode(),
                            "value": f"r{round_}-{i}-{'x' * 40}".encode(),
                            "headers": [("trace", b"a"), ("site", f"s{i}".encode()),
                                        ("trace", b"b"), ("empty", b"")],
                            "timestamp": BASE_TS + round_ * 100 + i,
                            "partition": 0})
    # The last batch's own key is deleted in it: a tombstone kept beside the latest "shared".
    records[23]["value"] = None
    p = producer(b, compression_type="lz4", linger_ms=50, batch_size=64 * 1024)
    try:
        for round_ in range(6):
            send_all(p, topic, records[round_ * 4:(round_ + 1) * 4])
        for i in range(12):
            send_all(p, topic, [{"key": f"filler-{i}".encode(), "value": os.urandom(600),
                                 "headers": [], "timestamp": BASE_TS + 10_000 + i,
                                 "partition": 0}])
    finally:
        p.close()
    want = [(o, r) for o, r in enumerate(records)
            if r["key"] != b"shared" or o == 22]
    assert len(want) == 13

    def kept_by_kafka_python():
        c = consumer(b, group_id=None)
        c.assign([TopicPartition(topic, 0)])
        try:
            got = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (not got or got[-1].offset < 35):
                for recs in c.poll(timeout_ms=300).values():
                    got.extend(recs)
            return [r for r in got if not r.key.startswith(b"filler-")]
        finally:
            c.close()

    got = wait_for(lambda: (lambda g: g if len(g) == len(want) else None)(kept_by_kafka_python()),
                   30, interval=0.5, what="the cleaner to leave the latest record of each key")
    assert [(r.offset, r.key, r.value, list(r.headers), r.timestamp) for r in got] == \
        [(o, r["key"], r["value"], r["headers"], r["timestamp"]) for o, r in want]

    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": unique("kp-compact-g"),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        c.subscribe([topic])
        msgs = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(msgs) < len(want) + 12:
            m = c.poll(0.5)
            if m is not None:
                assert m.error() is None, m.error()
                msgs.append(m)
    finally:
        c.close()
    kept = [m for m in msgs if not m.key().startswith(b"filler-")]
    assert [(m.offset(), m.key(), m.value(), m.headers(), m.timestamp()[1]) for m in kept] == \
        [(o, r["key"], r["value"], r["headers"], r["timestamp"]) for o, r in want]
