"""Produce and consume against Runnel with confluent-kafka, exactly as against Apache Kafka.

    pip install confluent-kafka
    python3 examples/kafka-clients/roundtrip.py 127.0.0.1:9092
"""
import sys
import uuid

from confluent_kafka import Consumer, Producer

bootstrap = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092"
topic = "example-readings"

producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "compression.type": "zstd"})
for i in range(10):
    producer.produce(topic, key=f"sensor-{i % 3}", value=f'{{"temp": {20 + i}}}')
producer.flush(10)

consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": f"example-{uuid.uuid4()}",
    "auto.offset.reset": "earliest",
})
consumer.subscribe([topic])
seen = 0
while seen < 10:
    msg = consumer.poll(10)
    if msg is None:
        sys.exit("no record within 10s")
    if msg.error():
        sys.exit(f"consume failed: {msg.error()}")
    print(f"{msg.partition()}:{msg.offset()} {msg.key().decode()} {msg.value().decode()}")
    seen += 1
consumer.close()
