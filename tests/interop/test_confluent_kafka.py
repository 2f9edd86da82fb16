"""confluent-kafka (bundled librdkafka) against runnel: admin, exact round trips with keys,
headers and timestamps, group commit and resume, partition split, idempotence, TLS."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
import subprocess
import sys

from confluent_kafka import (TIMESTAMP_LOG_APPEND_TIME, Consumer, ConsumerGroupType,
                             KafkaError, KafkaException, Producer, TopicCollection,
                             TopicPartition)
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation,
                                   AclPermissionType, AdminClient, AlterConfigOpType, ConfigEntry,
                                   ConfigResource, ConfigSource, NewPartitions, NewTopic,
                                   OffsetSpec, ResourcePatternType, ResourceType)

from ck_util import (BASE_TS, assert_same_records, conf, consumer_conf, create_topic,
                     produce_records, record_set)
from interop_util import ck_consume, unique, wait_for


# --- admin ------------------------------------------------------------------------------------

def test_admin_create_list_describe_delete(broker):
    admin = AdminClient(conf(broker.bootstrap))
    topic = unique("ck-admin")
    create_topic(admin, topic, 3, {"retention.ms": "3600000", "cleanup.policy": "compact",
                                   "min.cleanable.dirty.ratio": "0.1"})

    md = admin.list_topics(timeout=10)
    assert [(b.id, b.host, b.port) for b in md.brokers.values()] == \
        [(1, "127.0.0.1", broker.port)]
    assert topic in md.topics
    t = md.topics[topic]
    assert t.error is None
    assert sorted(t.partitions) == [0, 1, 2]
    for p in t.partitions.values():
        assert (p.leader, p.replicas, p.isrs, p.error) == (1, [1], [1], None), p

    res = ConfigResource("topic", topic)
    configs = admin.describe_configs([res])[res].result(timeout=10)
    assert configs["retention.ms"].value == "3600000"
    assert configs["cleanup.policy"].value == "compact"
    assert configs["min.cleanable.dirty.ratio"].value == "0.1"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    # Keys the topic does not override still come back, with their default.
    assert "max.message.bytes" in configs
    assert configs["max.message.bytes"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value

    # Creating it again is refused with TOPIC_ALREADY_EXISTS.
    again = admin.create_topics([NewTopic(topic, 1, 1)], operation_timeout=10)[topic]
    with pytest.raises(KafkaException) as e:
        again.result(timeout=10)
    assert e.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS

    admin.delete_topics([topic], operation_timeout=10)[topic].result(timeout=20)
    wait_for(lambda: topic not in admin.list_topics(timeout=10).topics, 10,
             what=f"{topic} to disappear from metadata")

    # Deleting a topic that does not exist is refused with UNKNOWN_TOPIC_OR_PART.
    gone = admin.delete_topics([unique("ck-never")], operation_timeout=10)
    with pytest.raises(KafkaException) as e:
        list(gone.values())[0].result(timeout=10)
    assert e.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def group_with_a_commit(broker, admin, prefix: str) -> str:
    """A new group without members that has committed offset 0 of partition 0 of a new topic of
    the same (unique) name; returns that name."""
    name = unique(prefix)
    create_topic(admin, name, 1)
    c = Consumer(consumer_conf(broker.bootstrap, name))
    try:
        c.commit(offsets=[TopicPartition(name, 0, 0)], asynchronous=False)
    finally:
        c.close()
    return name


def test_admin_says_every_operation_is_allowed(broker):
    """Asked for the operations a principal may perform (include_authorized_operations), the
    broker, which has no ACLs, names every one the resource has, as Kafka without an authorizer
    does; tools use the list to decide what to offer (delete a group, alter a topic)."""
    admin = AdminClient(conf(broker.bootstrap))
    name = group_with_a_commit(broker, admin, "ck-ops")  # a topic and a group
    op = AclOperation

    got = admin.describe_topics(TopicCollection([name]), include_authorized_operations=True)
    assert set(got[name].result(timeout=10).authorized_operations) == {
        op.READ, op.WRITE, op.CREATE, op.DELETE, op.ALTER, op.DESCRIBE, op.DESCRIBE_CONFIGS,
        op.ALTER_CONFIGS}
    cluster = admin.describe_cluster(include_authorized_operations=True).result(timeout=10)
    assert set(cluster.authorized_operations) == {
        op.CREATE, op.ALTER, op.DESCRIBE, op.CLUSTER_ACTION, op.DESCRIBE_CONFIGS,
        op.ALTER_CONFIGS, op.IDEMPOTENT_WRITE}
    got = admin.describe_consumer_groups([name], include_authorized_operations=True)
    # Kafka 4's group operations: its own configs (DescribeConfigs, AlterConfigs) included.
    assert set(got[name].result(timeout=10).authorized_operations) == {
        op.READ, op.DESCRIBE, op.DELETE, op.DESCRIBE_CONFIGS, op.ALTER_CONFIGS}
    # Not asked: none are named.
    got = admin.describe_consumer_groups([name])
    assert not got[name].result(timeout=10).authorized_operations


def test_admin_describes_the_brokers_settings(broker):
    """The broker resource lists, besides the [log] defaults, the settings Kafka tools look for
    under Kafka's names, each as the config file set it or as Kafka's default, read-only."""
    admin = AdminClient(conf(broker.bootstrap))
    res = ConfigResource("broker", "1")
    configs = admin.describe_configs([res])[res].result(timeout=10)
    want = {
        "node.id": ("1", ConfigSource.STATIC_BROKER_CONFIG),
        "log.dirs": (str(broker.data_dir), ConfigSource.STATIC_BROKER_CONFIG),
        "num.partitions": ("1", ConfigSource.DEFAULT_CONFIG),
        "auto.create.topics.enable": ("true", ConfigSource.DEFAULT_CONFIG),
        "offsets.retention.minutes": ("10080", ConfigSource.DEFAULT_CONFIG),
        # Runnel starts a new group at once; Kafka waits 3 s for more members.
        "group.initial.rebalance.delay.ms": ("0", ConfigSource.STATIC_BROKER_CONFIG),
        "log.retention.hours": ("168", ConfigSource.DEFAULT_CONFIG),
    }
    got = {k: (configs[k].value, ConfigSource(configs[k].source)) for k in want if k in configs}
    assert got == want
    assert all(c.is_read_only for c in configs.values())


def test_admin_lists_groups_by_type(broker):
    """ListGroups v5: a group of classic consumers is listed as classic, and a filter for the
    consumer type (KIP-848's groups) leaves it out, as Kafka 4.0 does."""
    admin = AdminClient(conf(broker.bootstrap))
    group = group_with_a_commit(broker, admin, "ck-types")

    def listed(**filters):
        res = admin.list_consumer_groups(**filters).result(timeout=10)
        return {g.group_id: g.type for g in res.valid}

    assert listed()[group] == ConsumerGroupType.CLASSIC
    assert group in listed(types={ConsumerGroupType.CLASSIC})
    assert group not in listed(types={ConsumerGroupType.CONSUMER})


def test_consumer_group_protocol(broker_factory):
    """group.protocol=consumer (KIP-848, GA in librdkafka 2.12): the broker assigns the
    partitions. Two members split four partitions, between them read every record once, are
    described and listed as a consumer-type group, and the one left takes all four back."""
    b = broker_factory(extra_config='[groups]\nconsumer_heartbeat_interval = "300ms"')
    admin = AdminClient(conf(b.bootstrap))
    topic, group = unique("ck-848"), unique("ck-848-g")
    create_topic(admin, topic, 4)
    producer = Producer(conf(b.bootstrap))
    for i in range(40):
        producer.produce(topic, value=f"r{i}".encode(), partition=i % 4)
    assert producer.flush(30) == 0
    members = [Consumer({**conf(b.bootstrap), "group.id": group, "group.protocol": "consumer",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "client.id": f"m{i}"}) for i in range(2)]
    for c in members:
        c.subscribe([topic])
    values = []

    def split_evenly():
        for c in members:
            m = c.poll(0.1)
            if m is not None and not m.error():
                values.append(m.value())
                c.commit(message=m, asynchronous=False)
        held = [{tp.partition for tp in c.assignment()} for c in members]
        return all(len(h) == 2 for h in held) and held[0] | held[1] == {0, 1, 2, 3}
    wait_for(split_evenly, timeout=30, interval=0, what="two members holding two partitions each")
    wait_for(lambda: split_evenly() and len(values) >= 40, timeout=30, interval=0,
             what="every record read")
    assert sorted(values) == sorted(f"r{i}".encode() for i in range(40))

    described = admin.describe_consumer_groups([group])[group].result(timeout=10)
    assert described.type == ConsumerGroupType.CONSUMER
    assert sorted(m.client_id for m in described.members) == ["m0", "m1"]
    held = sorted(tp.partition for m in described.members
                  for tp in m.assignment.topic_partitions)
    assert held == [0, 1, 2, 3]
    listed = admin.list_consumer_groups(types={ConsumerGroupType.CONSUMER}).result(timeout=10)
    assert group in {g.group_id for g in listed.valid}

    members.pop().close()
    rest = members[0]
    wait_for(lambda: rest.poll(0.1) is None and len(rest.assignment()) == 4, timeout=30,
             interval=0, what="the member that stays holding all four partitions")
    rest.close()


def test_kafka_python_members_move_to_the_consumer_protocol_online(broker_factory):
    """Kafka's online migration across clients: two kafka-python consumers (classic protocol,
    each in a process of its own) share six partitions; a confluent-kafka consumer of
    group.protocol=consumer joins the group and gets its share while they stay members (the
    group hosts them); every record is read, and when it leaves they take everything back."""
    # A first rebalance held 3 s (Kafka's group.initial.rebalance.delay.ms; Runnel's default is
    # 0): kafka-python 3.0.12's leader, assigning before it knows the topic's partitions,
    # rejoins at once, and when that join completes while its poll() is away it never finishes
    # it (need_rejoin() no longer looks at the join in flight) and stops heartbeating, against
    # any broker. Held, it knows them by then.
    b = broker_factory(extra_config='[groups]\nconsumer_heartbeat_interval = "300ms"\n'
                                    'initial_rebalance_delay = "3s"')
    admin = AdminClient(conf(b.bootstrap))
    topic, group = unique("ck-mig"), unique("ck-mig-g")
    create_topic(admin, topic, 6)
    producer = Producer(conf(b.bootstrap))
    for i in range(60):
        producer.produce(topic, value=f"r{i}".encode(), partition=i % 6)
    assert producer.flush(30) == 0
    script = os.path.join(os.path.dirname(__file__), "kafka_python_member.py")
    classic = [subprocess.Popen([sys.executable, script, b.bootstrap, topic, group],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    held = [[] for _ in classic]
    seen = [[] for _ in classic]

    def follow(i, out):
        for line in out:
            said = json.loads(line)
            if "assigned" in said:
                held[i] = said["assigned"]
            else:
                seen[i] = said["seen"]
    readers = [threading.Thread(target=follow, args=(i, p.stdout), daemon=True)
               for i, p in enumerate(classic)]
    for r in readers:
        r.start()
    try:
        wait_for(lambda: all(len(h) == 3 for h in held)
                 and sorted(held[0] + held[1]) == list(range(6)), timeout=30,
                 what="two classic members sharing six partitions")
        newcomer = Consumer({**conf(b.bootstrap), "group.id": group, "group.protocol": "consumer",
                             "auto.offset.reset": "earliest"})
        newcomer.subscribe([topic])
        values = []

        def three_way():
            m = newcomer.poll(0.1)
            if m is not None and not m.error():
                values.append(m.value().decode())
            mine = sorted(tp.partition for tp in newcomer.assignment())
            return (len(mine) == 2 and all(len(h) == 2 for h in held)
                    and sorted(held[0] + held[1] + mine) == list(range(6)))
        wait_for(three_way, timeout=40, interval=0, what="two partitions each, none held twice")
        for i in range(60, 120):
            producer.produce(topic, value=f"r{i}".encode(), partition=i % 6)
        assert producer.flush(30) == 0
        end = time.monotonic() + 5
        while time.monotonic() < end:
            three_way()
        newcomer.close()
        wait_for(lambda: all(len(h) == 3 for h in held)
                 and sorted(held[0] + held[1]) == list(range(6)), timeout=30,
                 what="the classic members holding all six again")
    finally:
        for p in classic:
            p.stdin.close()
        for p in classic:
            p.wait(timeout=30)
        for r in readers:
            r.join(timeout=10)
    read = set(seen[0]) | set(seen[1]) | set(values)
    assert read == {f"r{i}" for i in range(120)}, sorted({f"r{i}" for i in range(120)} - read)


def test_admin_describes_the_scram_users(broker_factory):
    """describe_user_scram_credentials() (DescribeUserScramCredentials) over a SCRAM login: the
    users of the listener's file, each with both mechanisms at 4,096 iterations; a user who is
    not there is RESOURCE_NOT_FOUND."""
    b = broker_factory(sasl_users={"alice": "a11ce-s3cret", "bob": "b0b-s3cret"})
    admin = AdminClient({"bootstrap.servers": b.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                         "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "bob",
                         "sasl.password": "b0b-s3cret"})
    users = admin.describe_user_scram_credentials().result(timeout=30)
    assert sorted(users) == ["alice", "bob"]
    infos = sorted((str(i.mechanism), i.iterations) for i in users["alice"].scram_credential_infos)
    assert infos == [("ScramMechanism.SCRAM_SHA_256", 4096), ("ScramMechanism.SCRAM_SHA_512", 4096)]
    missing = admin.describe_user_scram_credentials(["zed"])["zed"]
    with pytest.raises(KafkaException) as e:
        missing.result(timeout=30)
    assert e.value.args[0].code() == KafkaError.RESOURCE_NOT_FOUND


def test_admin_manages_acls_that_decide_who_writes(broker_factory):
    """create_acls, describe_acls and delete_acls by a super user of a broker with ACLs on: a
    prefixed Write ACL lets alice produce to the topics it names and to no other
    (TOPIC_AUTHORIZATION_FAILED, nothing written); once it is deleted she is refused there too;
    she may not make ACLs herself, and her topic operations say what she may do."""
    b = broker_factory(sasl_users={"admin": "adm1n-s3cret", "alice": "a11ce-s3cret"},
                       super_users=["User:admin"])

    def as_user(user: str, secret: str) -> dict:
        return {**conf(b.bootstrap), "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": user, "sasl.password": secret}

    admin = AdminClient(as_user("admin", "adm1n-s3cret"))
    for t in ("ck-acl.readings", "ck-closed"):
        create_topic(admin, t, 1)
    write = AclBinding(ResourceType.TOPIC, "ck-acl.", ResourcePatternType.PREFIXED, "User:alice",
                       "*", AclOperation.WRITE, AclPermissionType.ALLOW)
    admin.create_acls([write])[write].result(timeout=15)
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    assert admin.describe_acls(everything).result(timeout=15) == [write]

    def produce(topic: str) -> KafkaError | None:
        outcome = []
        p = Producer({**as_user("alice", "a11ce-s3cret"), "message.timeout.ms": 10000})
        p.produce(topic, b"21.5", on_delivery=lambda err, msg: outcome.append(err))
        p.flush(15)
        assert len(outcome) == 1, "one delivery report"
        return outcome[0]

    assert produce("ck-acl.readings") is None
    refused = produce("ck-closed")
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    ends = admin.list_offsets({TopicPartition("ck-closed", 0): OffsetSpec.latest()})
    assert ends[TopicPartition("ck-closed", 0)].result(timeout=15).offset == 0

    alice = AdminClient(as_user("alice", "a11ce-s3cret"))
    read = AclBinding(ResourceType.TOPIC, "ck-closed", ResourcePatternType.LITERAL, "User:alice",
                      "*", AclOperation.READ, AclPermissionType.ALLOW)
    with pytest.raises(KafkaException) as e:
        alice.create_acls([read])[read].result(timeout=15)
    assert e.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    # Users named are refused each on its own: librdkafka (2.12-2.16) crashes its client on a
    # DescribeUserScramCredentials answer refused at the top.
    with pytest.raises(KafkaException) as e:
        alice.describe_user_scram_credentials(["admin"])["admin"].result(timeout=15)
    assert e.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    # librdkafka reads DescribeAcls' CLUSTER_AUTHORIZATION_FAILED but reports no ACLs instead.
    assert alice.describe_acls(everything).result(timeout=15) == []
    ops = alice.describe_topics(TopicCollection(["ck-acl.readings"]),
                                include_authorized_operations=True)
    assert set(ops["ck-acl.readings"].result(timeout=15).authorized_operations) == {
        AclOperation.WRITE, AclOperation.DESCRIBE}

    deleted = admin.delete_acls([everything])[everything].result(timeout=15)
    assert deleted == [write]
    assert admin.describe_acls(everything).result(timeout=15) == []
    refused = produce("ck-acl.readings")
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_admin_alters_scram_users_who_then_log_in(broker_factory):
    """alter_user_scram_credentials() (AlterUserScramCredentials): a user made over the protocol
    (librdkafka salts the password; the broker never sees it) logs in with SCRAM-SHA-512 and
    produces, is described with its iteration count, survives a restart, and once deleted is
    refused; a deletion of a users-file user is RESOURCE_NOT_FOUND and too few iterations
    UNACCEPTABLE_CREDENTIAL."""
    from confluent_kafka.admin import (ScramCredentialInfo, ScramMechanism,
                                       UserScramCredentialDeletion,
                                       UserScramCredentialUpsertion)
    b = broker_factory(sasl_users={"admin": "adm1n-s3cret"})

    def as_user(user: str, secret: str) -> dict:
        return {**conf(b.bootstrap), "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": user, "sasl.password": secret}

    admin = AdminClient(as_user("admin", "adm1n-s3cret"))
    sha512 = ScramMechanism.SCRAM_SHA_512
    made = admin.alter_user_scram_credentials([
        UserScramCredentialUpsertion("carol", ScramCredentialInfo(sha512, 8192), b"c4r0l-s3cret")])
    made["carol"].result(timeout=15)
    infos = admin.describe_user_scram_credentials(["carol"])["carol"].result(timeout=15)
    assert [(i.mechanism, i.iterations) for i in infos.scram_credential_infos] == [(sha512, 8192)]

    def delivered(user: str, secret: str, within_ms: int = 8000) -> KafkaError | None:
        outcome = []
        p = Producer({**as_user(user, secret), "message.timeout.ms": within_ms})
        p.produce("ck-scram-users", b"r", on_delivery=lambda err, msg: outcome.append(err))
        p.flush(within_ms / 1000 + 4)
        return outcome[0] if outcome else KafkaError(KafkaError._MSG_TIMED_OUT)

    assert delivered("carol", "c4r0l-s3cret") is None
    assert delivered("carol", "guess", 2000) is not None
    b.restart()
    admin = AdminClient(as_user("admin", "adm1n-s3cret"))
    assert delivered("carol", "c4r0l-s3cret") is None, "kept across a restart"

    bad = admin.alter_user_scram_credentials([
        UserScramCredentialDeletion("admin", sha512),
        UserScramCredentialUpsertion("dave", ScramCredentialInfo(sha512, 1000), b"d4ve")])
    with pytest.raises(KafkaException) as e:
        bad["admin"].result(timeout=15)
    assert e.value.args[0].code() == KafkaError.RESOURCE_NOT_FOUND
    with pytest.raises(KafkaException) as e:
        bad["dave"].result(timeout=15)
    assert e.value.args[0].code() == KafkaError.UNACCEPTABLE_CREDENTIAL

    gone = admin.alter_user_scram_credentials([UserScramCredentialDeletion("carol", sha512)])
    gone["carol"].result(timeout=15)
    assert delivered("carol", "c4r0l-s3cret", 2000) is not None
    assert sorted(admin.describe_user_scram_credentials().result(timeout=15)) == ["admin"]


def test_admin_create_partitions_and_alter_configs(broker):
    admin = AdminClient(conf(broker.bootstrap))
    topic = unique("ck-grow")
    create_topic(admin, topic, 1)
    admin.create_partitions([NewPartitions(topic, 3)])[topic].result(timeout=15)
    wait_for(lambda: sorted(admin.list_topics(topic, timeout=10).topics[topic].partitions)
             == [0, 1, 2], 10, what="3 partitions in metadata")
    d = produce_records(Producer(conf(broker.bootstrap)), topic,
                        [{"partition": 2, "key": b"k", "value": b"new partition",
                          "headers": None, "timestamp": BASE_TS}])
    assert d.offsets_by_partition() == {2: [0]}

    res = ConfigResource("topic", topic, incremental_configs=[
        ConfigEntry("retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([res])[res].result(timeout=10)
    plain = ConfigResource("topic", topic)
    got = admin.describe_configs([plain])[plain].result(timeout=10)["retention.ms"]
    assert (got.value, got.source) == ("7200000", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)

    res = ConfigResource("topic", topic, incremental_configs=[
        ConfigEntry("retention.ms", "", incremental_operation=AlterConfigOpType.DELETE)])
    admin.incremental_alter_configs([res])[res].result(timeout=10)
    got = admin.describe_configs([plain])[plain].result(timeout=10)["retention.ms"]
    assert got.value == "604800000", "deleting the override restores the default (7d)"
    assert got.source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value


def test_admin_fixed_configs_take_their_one_value(broker):
    """compression.type=producer, min.compaction.lag.ms=0 and the other Kafka defaults that
    manifests copied from a cluster set are what this broker does anyway: accepted; any other
    value is INVALID_CONFIG with the reason."""
    admin = AdminClient(conf(broker.bootstrap))
    topic = unique("ck-fixed")
    fixed = {
        "compression.type": "producer",
        "min.insync.replicas": "1",
        "unclean.leader.election.enable": "false",
        "min.compaction.lag.ms": "0",
        "message.timestamp.difference.max.ms": "9223372036854775807",
        "preallocate": "false",
    }
    admin.create_topics([NewTopic(topic, 1, 1, config=fixed)],
                        operation_timeout=10)[topic].result(timeout=10)
    res = ConfigResource("topic", topic)
    got = admin.describe_configs([res])[res].result(timeout=10)
    assert {k: got[k].value for k in fixed} == fixed
    other = unique("ck-fixed")
    refused = admin.create_topics(
        [NewTopic(other, 1, 1, config={"min.compaction.lag.ms": "60000"})],
        operation_timeout=10)[other]
    with pytest.raises(KafkaException) as e:
        refused.result(timeout=10)
    assert e.value.args[0].code() == KafkaError.INVALID_CONFIG
    assert "compaction may clean any record" in e.value.args[0].str()


def test_admin_append_and_subtract_cleanup_policy(broker):
    """kafka-configs --add-config cleanup.policy=[compact,delete] and its subtract: the list
    operations of IncrementalAlterConfigs on the one list-valued topic config."""
    admin = AdminClient(conf(broker.bootstrap))
    topic = unique("ck-policy")
    create_topic(admin, topic, 1)
    res = ConfigResource("topic", topic)

    def alter(op, value):
        change = ConfigResource("topic", topic, incremental_configs=[
            ConfigEntry("cleanup.policy", value, incremental_operation=op)])
        admin.incremental_alter_configs([change])[change].result(timeout=10)
        return admin.describe_configs([res])[res].result(timeout=10)["cleanup.policy"].value

    assert alter(AlterConfigOpType.APPEND, "compact") == "compact,delete"
    assert alter(AlterConfigOpType.SUBTRACT, "delete") == "compact"
    with pytest.raises(KafkaException) as e:
        alter(AlterConfigOpType.SUBTRACT, "compact")
    assert e.value.args[0].code() == KafkaError.INVALID_CONFIG
    bad = ConfigResource("topic", topic, incremental_configs=[
        ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.APPEND)])
    with pytest.raises(KafkaException) as e:
        admin.incremental_alter_configs([bad])[bad].result(timeout=10)
    assert e.value.args[0].code() == KafkaError.INVALID_CONFIG


def test_admin_list_offsets_and_delete_records(broker):
    admin = AdminClient(conf(broker.bootstrap))
    topic = unique("ck-offsets")
    create_topic(admin, topic, 1)
    stamps = [5000, 9000, 7000, 8000, 6000]
    for i, ts in enumerate(stamps):       # one batch per record
        produce_records(Producer(conf(broker.bootstrap)), topic,
                        [{"partition": 0, "key": None, "value": f"r{i}".encode(),
                          "headers": None, "timestamp": BASE_TS + ts}])
    tp = TopicPartition(topic, 0)

    def lookup(spec):
        r = admin.list_offsets({tp: spec})[tp].result(timeout=10)
        return r.offset, r.timestamp

    assert lookup(OffsetSpec.earliest())[0] == 0
    assert lookup(OffsetSpec.latest())[0] == 5
    assert lookup(OffsetSpec.max_timestamp()) == (1, BASE_TS + 9000)
    assert lookup(OffsetSpec.for_timestamp(BASE_TS + 7500)) == (1, BASE_TS + 9000)
    assert lookup(OffsetSpec.for_timestamp(BASE_TS + 9001))[0] == -1   # none at or after

    deleted = admin.delete_records([TopicPartition(topic, 0, 2)])[tp].result(timeout=10)
    assert deleted.low_watermark == 2
    assert lookup(OffsetSpec.earliest())[0] == 2
    assert lookup(OffsetSpec.latest())[0] == 5
    # The oldest remaining record at or after the time now is offset 2.
    assert lookup(OffsetSpec.for_timestamp(BASE_TS))[0] == 2

    # A consumer asked to start before the log start is reset to it.
    c = Consumer(consumer_conf(broker.bootstrap, unique("ck-g")))
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        msgs = ck_consume(c, 3, settle=0.5)
    finally:
        c.close()
    assert [(m.offset(), m.value()) for m in msgs] == [(2, b"r2"), (3, b"r3"), (4, b"r4")]

    # A compacted topic keeps its keys' latest values: DeleteRecords is refused, as in Kafka.
    compacted = unique("ck-compacted")
    create_topic(admin, compacted, 1, {"cleanup.policy": "compact"})
    produce_records(Producer(conf(broker.bootstrap)), compacted,
                    [{"partition": 0, "key": b"k", "value": b"v", "headers": None,
                      "timestamp": BASE_TS}])
    ctp = TopicPartition(compacted, 0, 1)
    with pytest.raises(KafkaException) as refused:
        admin.delete_records([ctp])[TopicPartition(compacted, 0)].result(timeout=10)
    assert refused.value.args[0].code() == KafkaError.POLICY_VIOLATION
    assert admin.list_offsets({TopicPartition(compacted, 0): OffsetSpec.earliest()})[
        TopicPartition(compacted, 0)].result(timeout=10).offset == 0
    # With delete among its policies, records may be deleted.
    both = unique("ck-compact-delete")
    create_topic(admin, both, 1, {"cleanup.policy": "compact,delete"})
    produce_records(Producer(conf(broker.bootstrap)), both,
                    [{"partition": 0, "key": f"k{i}".encode(), "value": b"v", "headers": None,
                      "timestamp": BASE_TS} for i in range(2)])
    deleted = admin.delete_records([TopicPartition(both, 0, 1)])[
        TopicPartition(both, 0)].result(timeout=10)
    assert deleted.low_watermark == 1


def test_max_timestamp_offset_within_one_batch(broker):
    """ListOffsets MAX_TIMESTAMP (KIP-734) names the record that holds the largest
    timestamp, even when it is not the last record of its batch."""
    admin = AdminClient(conf(broker.bootstrap))
    topic = unique("ck-maxts")
    create_topic(admin, topic, 1)
    p = Producer(conf(broker.bootstrap, linger_ms=100))
    d = produce_records(p, topic, [{"partition": 0, "key": None, "value": f"r{i}".encode(),
                                    "headers": None, "timestamp": BASE_TS + ts}
                                   for i, ts in enumerate([5000, 9000, 7000, 8000])])
    assert d.offsets_by_partition() == {0: [0, 1, 2, 3]}
    tp = TopicPartition(topic, 0)
    r = admin.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result(timeout=10)
    assert (r.offset, r.timestamp) == (1, BASE_TS + 9000)


def test_max_timestamp_after_delete_records(broker):
    """Once DeleteRecords removed the record with the largest timestamp, MAX_TIMESTAMP
    names the largest among the records that remain (not "no record")."""
    admin = AdminClient(conf(broker.bootstrap))
    topic = unique("ck-maxts-del")
    create_topic(admin, topic, 1)
    for i, ts in enumerate([5000, 9000, 7000, 8000, 6000]):     # one batch per record
        produce_records(Producer(conf(broker.bootstrap)), topic,
                        [{"partition": 0, "key": None, "value": f"r{i}".encode(),
                          "headers": None, "timestamp": BASE_TS + ts}])
    tp = TopicPartition(topic, 0)

    def max_ts():
        r = admin.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result(timeout=10)
        return r.offset, r.timestamp

    assert max_ts() == (1, BASE_TS + 9000)
    admin.delete_records([TopicPartition(topic, 0, 2)])[tp].result(timeout=10)
    assert max_ts() == (3, BASE_TS + 8000)


def test_record_timestamps_held_to_the_topics_bounds(broker):
    """message.timestamp.before.max.ms / after.max.ms: a batch with a record dated further from
    the broker's clock is refused with INVALID_TIMESTAMP (a device whose clock runs a year
    ahead would otherwise write records that outlive retention); within the bounds, and on a
    LogAppendTime topic, records are stored."""
    admin = AdminClient(conf(broker.bootstrap))
    topic, stamped = unique("ck-tsbound"), unique("ck-tsbound-lat")
    bounds = {"message.timestamp.before.max.ms": str(86_400_000),
              "message.timestamp.after.max.ms": str(60_000)}
    create_topic(admin, topic, 1, bounds)
    create_topic(admin, stamped, 1, {**bounds, "message.timestamp.type": "LogAppendTime"})
    res = ConfigResource("topic", topic)
    configs = admin.describe_configs([res])[res].result(timeout=10)
    assert configs["message.timestamp.after.max.ms"].value == "60000"

    now = int(time.time() * 1000)
    p = Producer(conf(broker.bootstrap))
    results = {}

    def send(t, name, ts):
        def report(err, msg):
            results[(t, name)] = err
        p.produce(t, value=name.encode(), timestamp=ts, on_delivery=report)
        assert p.flush(30) == 0

    send(topic, "now", now)
    send(topic, "a-year-ahead", now + 365 * 86_400_000)
    send(topic, "two-days-old", now - 2 * 86_400_000)
    send(stamped, "a-year-ahead", now + 365 * 86_400_000)
    assert results[(topic, "now")] is None
    for name in ("a-year-ahead", "two-days-old"):
        err = results[(topic, name)]
        assert err is not None and err.code() == KafkaError.INVALID_TIMESTAMP, (name, err)
    assert results[(stamped, "a-year-ahead")] is None, "LogAppendTime topics stamp instead"

    c = Consumer(consumer_conf(broker.bootstrap, unique("ck-g")))
    try:
        c.subscribe([topic])
        msgs = ck_consume(c, 1, settle=1.0)
    finally:
        c.close()
    assert [m.value() for m in msgs] == [b"now"]


def test_log_append_time_topic(broker):
    """A topic with message.timestamp.type=LogAppendTime stamps records with the broker's
    clock and says so in the batch (consumers see TIMESTAMP_LOG_APPEND_TIME)."""
    admin = AdminClient(conf(broker.bootstrap))
    topic = unique("ck-lat")
    create_topic(admin, topic, 1, {"message.timestamp.type": "LogAppendTime"})
    before = int(time.time() * 1000)
    produce_records(Producer(conf(broker.bootstrap)), topic,
                    [{"partition": 0, "key": None, "value": f"v{i}".encode(),
                      "headers": None, "timestamp": BASE_TS} for i in range(3)])
    after = int(time.time() * 1000)
    c = Consumer(consumer_conf(broker.bootstrap, unique("ck-g")))
    try:
        c.subscribe([topic])
        msgs = ck_consume(c, 3)
    finally:
        c.close()
    for m in msgs:
        kind, ts = m.timestamp()
        assert kind == TIMESTAMP_LOG_APPEND_TIME, m.timestamp()
        assert before - 1000 <= ts <= after + 1000, (ts, before, after)


# --- exact round trip -------------------------------------------------------------------------

def test_produce_consume_exact(broker):
    admin = AdminClient(conf(broker.bootstrap))
    topic, group = unique("ck-exact"), unique("ck-g")
    create_topic(admin, topic, 3)
    records = record_set(30, 3)
    d = produce_records(Producer(conf(broker.bootstrap, acks="all", linger_ms=5)),
                        topic, records)
    assert d.offsets_by_partition() == {p: list(range(10)) for p in range(3)}

    c = Consumer(consumer_conf(broker.bootstrap, group))
    try:
        c.subscribe([topic])
        msgs = ck_consume(c, len(records), timeout=30, settle=1.0)
    finally:
        c.close()
    assert len(msgs) == len(records), "extra messages arrived"
    assert_same_records(msgs, records, 3)


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_codec_round_trip(broker, codec):
    topic, group = unique(f"ck-{codec}"), unique("ck-g")
    records = [{"partition": 0, "key": f"k{i}".encode(),
                "value": (f"{codec}-{i}-" + "xyz" * 50).encode(),
                "headers": [("codec", codec.encode())], "timestamp": BASE_TS + i}
               for i in range(50)]
    produce_records(Producer(conf(broker.bootstrap, compression_type=codec, linger_ms=20)),
                    topic, records)
    c = Consumer(consumer_conf(broker.bootstrap, group))
    try:
        c.subscribe([topic])
        msgs = ck_consume(c, len(records), settle=0.5)
    finally:
        c.close()
    assert len(msgs) == len(records)
    assert_same_records(msgs, records, 1)


# --- commit and resume ------------------------------------------------------------------------

def test_commit_close_and_resume(broker):
    topic, group = unique("ck-resume"), unique("ck-g")
    records = [{"partition": 0, "key": f"k{i}".encode(), "value": f"v{i}".encode(),
                "headers": None, "timestamp": BASE_TS + i} for i in range(10)]
    produce_records(Producer(conf(broker.bootstrap)), topic, records)
    tp = TopicPartition(topic, 0)

    c = Consumer(consumer_conf(broker.bootstrap, group))
    try:
        c.subscribe([topic])
        msgs = ck_consume(c, 6)
        assert [m.value() for m in msgs[:6]] == [f"v{i}".encode() for i in range(6)]
        c.commit(message=msgs[5], asynchronous=False)
        assert c.committed([tp], timeout=10)[0].offset == 6
    finally:
        c.close()

    c = Consumer(consumer_conf(broker.bootstrap, group))
    try:
        c.subscribe([topic])
        msgs = ck_consume(c, 4, settle=1.0)
        assert [(m.offset(), m.value()) for m in msgs] == \
            [(i, f"v{i}".encode()) for i in range(6, 10)]
        # Commit with metadata; it must come back with the offset.
        done = c.commit(offsets=[TopicPartition(topic, 0, 10, "checkpoint-10")],
                        asynchronous=False)
        assert [(x.offset, x.error) for x in done] == [(10, None)]
        got = c.committed([tp], timeout=10)[0]
        assert (got.offset, got.metadata) == (10, "checkpoint-10")
    finally:
        c.close()

    # A consumer of another group is unaffected by these commits.
    other = Consumer(consumer_conf(broker.bootstrap, unique("ck-other")))
    try:
        assert other.committed([tp], timeout=10)[0].offset < 0
    finally:
        other.close()


# --- two consumers in one group ---------------------------------------------------------------

def test_two_consumers_split_partitions(broker):
    admin = AdminClient(conf(broker.bootstrap))
    topic, group = unique("ck-split"), unique("ck-g")
    create_topic(admin, topic, 4)
    all_parts = {0, 1, 2, 3}

    def assigned(c):
        return {tp.partition for tp in c.assignment()}

    c1 = Consumer(consumer_conf(broker.bootstrap, group, **{"client.id": "c1"}))
    c2 = Consumer(consumer_conf(broker.bootstrap, group, **{"client.id": "c2"}))
    received = {c1: [], c2: []}

    def pump(*consumers):
        for c in consumers:
            m = c.poll(0.2)
            if m is not None and not m.error():
                received[c].append(m)

    try:
        c1.subscribe([topic])
        deadline = time.monotonic() + 30
        while assigned(c1) != all_parts and time.monotonic() < deadline:
            pump(c1)
        assert assigned(c1) == all_parts, "a lone consumer should own every partition"

        c2.subscribe([topic])
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            pump(c1, c2)
            a1, a2 = assigned(c1), assigned(c2)
            if a1 and a2 and not (a1 & a2) and (a1 | a2) == all_parts:
                break
        a1, a2 = assigned(c1), assigned(c2)
        assert a1 and a2, f"both consumers should get partitions: c1={a1} c2={a2}"
        assert not (a1 & a2) and (a1 | a2) == all_parts, (a1, a2)
        assert len(a1) == len(a2) == 2, (a1, a2)

        p = Producer(conf(broker.bootstrap))
        for part in sorted(all_parts):
            p.produce(topic, partition=part, value=f"for-{part}".encode())
        assert p.flush(15) == 0
        deadline = time.monotonic() + 20
        while len(received[c1]) + len(received[c2]) < 4 and time.monotonic() < deadline:
            pump(c1, c2)
        got1 = {m.partition(): m.value() for m in received[c1]}
        got2 = {m.partition(): m.value() for m in received[c2]}
        assert set(got1) == a1 and set(got2) == a2, (got1, got2, a1, a2)
        assert {**got1, **got2} == {part: f"for-{part}".encode() for part in all_parts}
    finally:
        c2.close()
        c1.close()


def test_dead_consumer_loses_partitions_after_session_timeout(broker):
    """A member that dies without leaving is expired after session.timeout.ms and its
    partitions go to the member that is left."""
    admin = AdminClient(conf(broker.bootstrap))
    topic, group = unique("ck-expire"), unique("ck-g")
    create_topic(admin, topic, 2)
    member_conf = consumer_conf(broker.bootstrap, group, **{"session.timeout.ms": 6000})
    child = subprocess.Popen([sys.executable, "-c", f"""
import sys
from confluent_kafka import Consumer
c = Consumer({member_conf!r})
c.subscribe([{topic!r}])
while True:
    c.poll(0.2)
    if c.assignment():
        print("assigned", flush=True)
"""], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    c = Consumer(member_conf)
    try:
        assert child.stdout.readline().strip() == "assigned"
        c.subscribe([topic])
        deadline = time.monotonic() + 30
        while len(c.assignment()) != 1 and time.monotonic() < deadline:
            c.poll(0.2)
        assert len(c.assignment()) == 1, "the second member should get one of two partitions"
        child.kill()                      # no LeaveGroup
        child.wait(10)
        killed = time.monotonic()
        while len(c.assignment()) != 2 and time.monotonic() < killed + 30:
            c.poll(0.2)
        assert {tp.partition for tp in c.assignment()} == {0, 1}
        assert time.monotonic() - killed > 3, "partitions moved before the session expired"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        c.close()


# --- long-poll fetch -------------------------------------------------------------------------

def test_long_poll_fetch_is_woken_by_append(broker):
    """A Fetch waiting (fetch.wait.max.ms = 30 s) on an empty partition answers as soon as
    a record arrives, not when its wait runs out."""
    admin = AdminClient(conf(broker.bootstrap))
    topic = unique("ck-longpoll")
    create_topic(admin, topic, 1)
    # librdkafka wants socket.timeout.ms above fetch.wait.max.ms + 1 s.
    c = Consumer(consumer_conf(broker.bootstrap, unique("ck-g"),
                               **{"fetch.wait.max.ms": 30000, "socket.timeout.ms": 40000}))
    p = Producer(conf(broker.bootstrap, linger_ms=0))
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        assert c.poll(2.0) is None           # the consumer is now parked in a long poll
        latencies = []
        for i in range(3):
            time.sleep(0.7)                  # let a fresh long poll start
            sent = time.monotonic()
            p.produce(topic, value=f"wake-{i}".encode())
            assert p.flush(10) == 0
            m = ck_consume(c, 1, timeout=40)[0]
            latencies.append(time.monotonic() - sent)
            assert m.value() == f"wake-{i}".encode()
        assert max(latencies) < 10.0, f"fetch answered only after its max wait: {latencies}"
    finally:
        c.close()


# --- idempotent producer ----------------------------------------------------------------------

def test_idempotent_producer(broker):
    admin = AdminClient(conf(broker.bootstrap))
    topic, group = unique("ck-idem"), unique("ck-g")
    create_topic(admin, topic, 2)
    errors = []
    p = Producer(conf(broker.bootstrap, enable_idempotence=True, acks="all", linger_ms=2,
                      error_cb=lambda e: errors.append(e)))
    records = [{"partition": i % 2, "key": f"k{i}".encode(), "value": f"seq-{i}".encode(),
                "headers": None, "timestamp": BASE_TS + i} for i in range(400)]
    d = produce_records(p, topic, records)
    assert not [e for e in errors if e.fatal()], errors
    assert d.offsets_by_partition() == {0: list(range(200)), 1: list(range(200))}

    c = Consumer(consumer_conf(broker.bootstrap, group))
    try:
        c.subscribe([topic])
        msgs = ck_consume(c, len(records), settle=1.0)
    finally:
        c.close()
    assert len(msgs) == len(records), "duplicates were delivered"
    assert_same_records(msgs, records, 2)


# --- TLS --------------------------------------------------------------------------------------

def test_tls_admin_produce_consume(broker, tls_material):
    admin = AdminClient(conf(broker.tls_bootstrap, tls_material))
    topic, group = unique("ck-tls"), unique("ck-g")
    create_topic(admin, topic, 2)
    md = admin.list_topics(timeout=10)
    assert [(b.id, b.host, b.port) for b in md.brokers.values()] == \
        [(1, "127.0.0.1", broker.tls_port)], "TLS clients must be sent the TLS listener"
    records = record_set(20, 2)
    produce_records(Producer(conf(broker.tls_bootstrap, tls_material, acks="all",
                                  compression_type="zstd")), topic, records)
    c = Consumer(consumer_conf(broker.tls_bootstrap, group, tls_material))
    try:
        c.subscribe([topic])
        msgs = ck_consume(c, len(records), settle=0.5)
        c.commit(asynchronous=False)
        committed = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)],
                                timeout=10)
    finally:
        c.close()
    assert len(msgs) == len(records)
    assert_same_records(msgs, records, 2)
    assert [tp.offset for tp in committed] == [10, 10]


def test_a_consumer_with_a_tight_receive_limit_reads_large_records_on_many_partitions(broker):
    """librdkafka refuses a response larger than receive.message.max.bytes (which it needs to be
    at least fetch.max.bytes + 512): a response may exceed fetch.max.bytes only by its first
    batch (KIP-74), never by one more batch per partition, or such a consumer is stuck."""
    topic = unique("big-records")
    create_topic(AdminClient(conf(broker.bootstrap)), topic, 4)
    producer = Producer(conf(broker.bootstrap))
    values = [(b"%02d" % i) * 450_000 for i in range(12)]
    for i, v in enumerate(values):
        producer.produce(topic, v, partition=i % 4)
        assert producer.flush(20) == 0
    consumer = Consumer(consumer_conf(broker.bootstrap, unique("big-group"),
                                      **{"fetch.max.bytes": 1_000_000,
                                         "receive.message.max.bytes": 1_100_000}))
    consumer.subscribe([topic])
    got = {}
    deadline = time.monotonic() + 60
    while len(got) < len(values) and time.monotonic() < deadline:
        m = consumer.poll(0.5)
        if m is not None:
            assert m.error() is None, m.error()
            got[(m.partition(), m.offset())] = m.value()
    consumer.close()
    assert sorted(got.values()) == sorted(values)
    for (partition, offset), value in got.items():
        assert value == values[offset * 4 + partition]
