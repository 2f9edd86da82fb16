"""Kafka client quotas against runnel: kafka-python sets and reads them with its own
AlterClientQuotas / DescribeClientQuotas codecs (what `kafka-configs --entity-type clients`
sends), and confluent-kafka (librdkafka) clients under them are throttled the Kafka way: the
producer's throttle callback reports the broker's throttle time, both clients are held to their
byte rate, and every record arrives, in order.

Quotas here are set on client ids made for each test, never on a default entity: the broker is
shared with the other interop tests.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from kafka import KafkaAdminClient
from kafka.protocol.admin import AlterClientQuotasRequest, DescribeClientQuotasRequest

from ck_util import conf, consumer_conf, create_topic
from interop_util import unique

RATE = 128 * 1024  # bytes a second
COUNT = 96
VALUE = 4096  # bytes: COUNT * VALUE is 3 seconds of RATE


def _send(admin: KafkaAdminClient, request):
    return admin._manager.run(admin._manager.send, request)


def set_quotas(admin: KafkaAdminClient, client_id: str, quotas: dict, remove=False):
    Entry = AlterClientQuotasRequest.EntryData
    entry = Entry(
        entity=[Entry.EntityData(entity_type="client-id", entity_name=client_id)],
        ops=[Entry.OpData(key=k, value=float(v), remove=remove) for k, v in quotas.items()],
    )
    response = _send(admin, AlterClientQuotasRequest(entries=[entry], validate_only=False))
    return [(e.error_code, e.error_message) for e in response.entries]


def describe(admin: KafkaAdminClient, client_id: str) -> dict:
    component = DescribeClientQuotasRequest.ComponentData(
        entity_type="client-id", match_type=0, match=client_id)
    response = _send(admin, DescribeClientQuotasRequest(components=[component], strict=True))
    assert response.error_code == 0, response.error_message
    out = {}
    for entry in response.entries:
        entity = tuple((e.entity_type, e.entity_name) for e in entry.entity)
        out[entity] = {v.key: v.value for v in entry.values}
    return out


def test_kafka_python_sets_describes_and_removes_quotas(broker):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=10000)
    try:
        cid = unique("quota-admin")
        assert set_quotas(admin, cid, {"producer_byte_rate": 2048,
                                       "consumer_byte_rate": 4096}) == [(0, None)]
        assert describe(admin, cid) == {
            (("client-id", cid),): {"producer_byte_rate": 2048.0, "consumer_byte_rate": 4096.0}}
        # A value no quota can have is refused with the reason, nothing changed.
        [(code, message)] = set_quotas(admin, cid, {"request_percentage": -5})
        assert code == 42 and "not a positive number" in message, (code, message)  # INVALID_REQUEST
        assert set_quotas(admin, cid, {"producer_byte_rate": 0}, remove=True) == [(0, None)]
        assert describe(admin, cid) == {(("client-id", cid),): {"consumer_byte_rate": 4096.0}}
        assert set_quotas(admin, cid, {"consumer_byte_rate": 0}, remove=True) == [(0, None)]
        assert describe(admin, cid) == {}
    finally:
        admin.close()


def test_kafka_python_sets_an_ip_addresss_connection_rate(broker):
    """`kafka-configs --entity-type ips`: an address takes connection_creation_rate (an address
    not used by the other tests, so nothing is turned away here)."""
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=10000)
    Entry = AlterClientQuotasRequest.EntryData
    ip = [Entry.EntityData(entity_type="ip", entity_name="192.0.2.77")]

    def alter(ops):
        request = AlterClientQuotasRequest(entries=[Entry(entity=ip, ops=ops)],
                                           validate_only=False)
        return [(e.error_code, e.error_message) for e in _send(admin, request).entries]

    def described():
        component = DescribeClientQuotasRequest.ComponentData(
            entity_type="ip", match_type=0, match="192.0.2.77")
        response = _send(admin, DescribeClientQuotasRequest(components=[component], strict=True))
        assert response.error_code == 0, response.error_message
        return [{v.key: v.value for v in e.values} for e in response.entries]

    try:
        assert alter([Entry.OpData(key="connection_creation_rate", value=20.0,
                                   remove=False)]) == [(0, None)]
        assert described() == [{"connection_creation_rate": 20.0}]
        [(code, message)] = alter([Entry.OpData(key="producer_byte_rate", value=1024.0,
                                                remove=False)])
        assert code == 42 and "connection_creation_rate only" in message, (code, message)
        assert alter([Entry.OpData(key="connection_creation_rate", value=0.0,
                                   remove=True)]) == [(0, None)]
        assert described() == []
    finally:
        admin.close()


def test_librdkafka_clients_are_held_to_their_byte_rates(broker):
    topic = unique("quota-topic")
    writer, reader = unique("quota-writer"), unique("quota-reader")
    create_topic(AdminClient(conf(broker.bootstrap)), topic, 1)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=10000)
    try:
        assert set_quotas(admin, writer, {"producer_byte_rate": RATE}) == [(0, None)]
        assert set_quotas(admin, reader, {"consumer_byte_rate": RATE}) == [(0, None)]

        throttles = []
        producer = Producer(conf(broker.bootstrap, client_id=writer, linger_ms=5,
                                 batch_size=16384,
                                 throttle_cb=lambda event: throttles.append(event)))
        payloads = [(b"%06d" % i) * (VALUE // 6) for i in range(COUNT)]
        delivered = []
        started = time.monotonic()
        for p in payloads:
            producer.produce(topic, p, partition=0,
                             on_delivery=lambda err, msg: delivered.append((err, msg.offset())))
            producer.poll(0)
        assert producer.flush(60) == 0
        producer_took = time.monotonic() - started
        assert [e for e, _ in delivered if e is not None] == []
        assert [o for _, o in delivered] == list(range(COUNT))
        sent = COUNT * len(payloads[0])
        # A second's worth passes at once; the last request's debt is paid after its answer.
        floor = (sent - RATE - 16384) / RATE
        assert producer_took >= floor, (producer_took, floor)
        assert throttles, "librdkafka reported no throttle"
        assert max(t.throttle_time for t in throttles) > 0
        assert all(t.broker_id == 1 for t in throttles), [t.broker_id for t in throttles]

        consumer = Consumer(consumer_conf(broker.bootstrap, unique("quota-group"),
                                          **{"client.id": reader}))
        consumer.subscribe([topic])
        got = []
        started = time.monotonic()
        while len(got) < COUNT and time.monotonic() - started < 60:
            m = consumer.poll(0.5)
            if m is not None:
                assert m.error() is None, m.error()
                got.append((m.offset(), m.value()))
        consumer_took = time.monotonic() - started
        consumer.close()
        assert got == list(enumerate(payloads))
        assert consumer_took >= floor, (consumer_took, floor)
    finally:
        set_quotas(admin, writer, {"producer_byte_rate": 0}, remove=True)
        set_quotas(admin, reader, {"consumer_byte_rate": 0}, remove=True)
        admin.close()


def test_librdkafka_is_throttled_by_request_time_and_topic_changes(broker):
    """request_percentage and controller_mutation_rate reach librdkafka as throttles: its
    throttle callback reports them from a Metadata answer and a CreateTopics answer (librdkafka
    sends CreateTopics v4, below the strict v6, so the change goes through and is throttled)."""
    busy, creator = unique("quota-busy"), unique("quota-creator")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=10000)
    try:
        # 0.01% of a thread: 100 us of the broker's time a second.
        assert set_quotas(admin, busy, {"request_percentage": 0.01}) == [(0, None)]
        assert set_quotas(admin, creator, {"controller_mutation_rate": 1}) == [(0, None)]

        throttles = []
        client = AdminClient(conf(broker.bootstrap, client_id=busy,
                                  throttle_cb=lambda event: throttles.append(event)))
        deadline = time.monotonic() + 30
        while not any(t.throttle_time > 0 for t in throttles) and time.monotonic() < deadline:
            client.list_topics(timeout=30)
            client.poll(0.1)
        assert any(t.throttle_time > 0 for t in throttles), "no throttle reported in 30 s"

        throttles.clear()
        creating = AdminClient(conf(broker.bootstrap, client_id=creator,
                                    throttle_cb=lambda event: throttles.append(event)))
        # 4 partitions on a bucket of 1 a second: through, 3 s owed.
        create_topic(creating, unique("mutated"), 4)
        deadline = time.monotonic() + 10
        while not throttles and time.monotonic() < deadline:
            creating.poll(0.1)
        # (confluent-kafka gives the throttle in seconds.)
        assert throttles and max(t.throttle_time for t in throttles) >= 2.0, \
            [t.throttle_time for t in throttles]
    finally:
        set_quotas(admin, busy, {"request_percentage": 0}, remove=True)
        set_quotas(admin, creator, {"controller_mutation_rate": 0}, remove=True)
        admin.close()
