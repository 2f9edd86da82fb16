"""A kafka-python consumer of the classic protocol in a process of its own, for the tests of
groups that consumers of other clients join: subscribes, reads, commits, and prints a JSON
line each time its assignment changes, then, when stdin closes, one with every value it read.
Usage: python kafka_python_member.py BOOTSTRAP TOPIC GROUP"""

import json
import select
import sys

from kafka import KafkaConsumer

bootstrap, topic, group = sys.argv[1:4]
c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                  auto_offset_reset="earliest", enable_auto_commit=True,
                  auto_commit_interval_ms=300, session_timeout_ms=10000,
                  heartbeat_interval_ms=300)
seen, held = [], None
while not select.select([sys.stdin], [], [], 0)[0]:
    for records in c.poll(timeout_ms=100).values():
        seen.extend(r.value.decode() for r in records)
    now = sorted(tp.partition for tp in c.assignment())
    if now != held:
        held = now
        print(json.dumps({"assigned": held}), flush=True)
c.close()
print(json.dumps({"seen": seen}), flush=True)
