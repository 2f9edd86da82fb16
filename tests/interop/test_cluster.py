"""Replication to peer brokers (`[cluster]`) with the Python clients: clients bootstrapped at a
follower produce and consume through the leader, records and group offsets reach the follower,
and acks=all is refused (NOT_ENOUGH_REPLICAS) once the follower has left the in-sync set."""

from __future__ import annotations

import time

import kafka.errors
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from ck_util import conf, consumer_conf
from interop_util import ck_consume, unique, wait_for


def test_clients_at_a_follower_work_through_the_leader(cluster_factory):
    leader, follower = cluster_factory()
    topic, group = unique("cl-topic"), unique("cl-g")

    # kafka-python's admin client, bootstrapped at the follower, creates the topic at the
    # controller (the leader); the follower copies it.
    admin = KafkaAdminClient(bootstrap_servers=follower.bootstrap, request_timeout_ms=10000)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=2)])
    finally:
        admin.close()

    # confluent-kafka (librdkafka) produces with acks=all from the follower's bootstrap.
    p = Producer(conf(follower.bootstrap, acks="all"))
    errors = []
    for i in range(100):
        p.produce(topic, key=f"k{i}".encode(), value=f"ck-{i}".encode(), partition=i % 2,
                  on_delivery=lambda err, msg: err and errors.append(err))
    assert p.flush(30) == 0 and not errors, errors

    # kafka-python produces too, acks=all, also from the follower.
    kp = KafkaProducer(bootstrap_servers=follower.bootstrap, acks="all",
                       request_timeout_ms=10000)
    for i in range(50):
        kp.send(topic, key=f"k{i}".encode(), value=f"kp-{i}".encode(), partition=i % 2)
    kp.flush(30)
    kp.close()

    # Both brokers describe the partitions alike: led by 1, replicas and in-sync set [1, 2].
    for b in (leader, follower):
        md = AdminClient(conf(b.bootstrap)).list_topics(topic, timeout=10)
        for part in md.topics[topic].partitions.values():
            assert part.leader == 1
            assert sorted(part.replicas) == [1, 2] and sorted(part.isrs) == [1, 2]

    # A kafka-python group consumer started at the follower reads everything at the leader and
    # commits; the follower gets the committed offsets.
    c = KafkaConsumer(topic, bootstrap_servers=follower.bootstrap, group_id=group,
                      auto_offset_reset="earliest", enable_auto_commit=False,
                      consumer_timeout_ms=10000)
    values = []
    deadline = time.monotonic() + 30
    while len(values) < 150 and time.monotonic() < deadline:
        for batch in c.poll(timeout_ms=500).values():
            values.extend(m.value.decode() for m in batch)
    c.commit()
    c.close()
    assert sorted(values) == sorted([f"ck-{i}" for i in range(100)] +
                                    [f"kp-{i}" for i in range(50)])

    # confluent-kafka sees the group's committed offsets at the follower too (it is sent to
    # the leader, the coordinator); and the follower's own copy holds them for a failover.
    ck = Consumer(consumer_conf(follower.bootstrap, group))
    try:
        from confluent_kafka import TopicPartition
        got = ck.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
        assert sorted(tp.offset for tp in got) == [75, 75]
    finally:
        ck.close()


def test_acks_all_is_refused_once_the_follower_is_out_of_sync(cluster_factory):
    leader, follower = cluster_factory()
    topic = unique("cl-isr")
    p = Producer(conf(leader.bootstrap, acks="all"))
    p.produce(topic, value=b"before")
    assert p.flush(30) == 0

    follower.stop()
    # After replica_lag_time_max (3 s) the leader is alone in the in-sync set.
    wait_for(lambda: sorted(AdminClient(conf(leader.bootstrap)).list_topics(topic, timeout=10)
                            .topics[topic].partitions[0].isrs) == [1],
             15, what="the in-sync set to shrink to the leader")

    kp = KafkaProducer(bootstrap_servers=leader.bootstrap, acks="all", retries=0,
                       request_timeout_ms=10000)
    with pytest.raises(kafka.errors.NotEnoughReplicasError):
        kp.send(topic, value=b"refused").get(timeout=15)
    kp.close()
    one = Producer(conf(leader.bootstrap, acks=1))
    one.produce(topic, value=b"acks-1")
    assert one.flush(30) == 0

    # Back, the follower catches up; acks=all works again and consumers read it all.
    follower.start()
    p.produce(topic, value=b"after")
    assert p.flush(30) == 0
    c = Consumer(consumer_conf(leader.bootstrap, unique("cl-r")))
    try:
        c.subscribe([topic])
        msgs = ck_consume(c, 3, timeout=30, settle=1.0)
    finally:
        c.close()
    assert [m.value() for m in msgs] == [b"before", b"acks-1", b"after"]


def test_three_brokers_keep_taking_acks_all_with_one_follower_down(cluster_factory):
    leader, second, third = cluster_factory(size=3, min_insync=2)
    topic = unique("cl-three")
    p = Producer(conf(second.bootstrap, acks="all"))
    for i in range(20):
        p.produce(topic, value=f"v{i}".encode())
    assert p.flush(30) == 0

    third.stop()
    # Two of three in sync still meet min_insync_replicas = 2: acks=all goes on, before and
    # after the stopped follower leaves the in-sync set.
    for i in range(20, 40):
        p.produce(topic, value=f"v{i}".encode())
    assert p.flush(30) == 0
    wait_for(lambda: sorted(AdminClient(conf(leader.bootstrap)).list_topics(topic, timeout=10)
                            .topics[topic].partitions[0].isrs) == [1, 2],
             15, what="the in-sync set to drop broker 3")
    kp = KafkaProducer(bootstrap_servers=second.bootstrap, acks="all", request_timeout_ms=10000)
    for i in range(40, 60):
        kp.send(topic, value=f"v{i}".encode())
    kp.flush(30)
    kp.close()

    # Broker 3 comes back and catches up; a consumer at it reads all 60 through the leader.
    third.start()
    wait_for(lambda: sorted(AdminClient(conf(leader.bootstrap)).list_topics(topic, timeout=10)
                            .topics[topic].partitions[0].isrs) == [1, 2, 3],
             20, what="broker 3 to rejoin the in-sync set")
    c = KafkaConsumer(topic, bootstrap_servers=third.bootstrap, auto_offset_reset="earliest",
                      enable_auto_commit=False, consumer_timeout_ms=10000)
    values = [m.value.decode() for m in c]
    c.close()
    assert values == [f"v{i}" for i in range(60)]
