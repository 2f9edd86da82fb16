"""kafkajs (Node.js) against runnel: admin, idempotent gzip producer, consumer group."""

import json
import os
import pathlib
import subprocess

import pytest

HERE = pathlib.Path(__file__).resolve().parent


@pytest.mark.skipif(not os.environ.get("KAFKAJS_DIR"), reason="run through scripts/interop.sh, which installs kafkajs")
def test_kafkajs_round_trip_with_a_consumer_group(broker):
    count = 60
    env = dict(os.environ, NODE_PATH=os.path.join(os.environ["KAFKAJS_DIR"], "node_modules"))
    r = subprocess.run(
        ["node", str(HERE / "kafkajs_roundtrip.js"), broker.bootstrap, "kafkajs-topic", "kafkajs-group", str(count)],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["listed"]
    seen = out["seen"]
    assert sorted(int(m["seq"]) for m in seen) == list(range(count))
    for m in seen:
        i = int(m["seq"])
        assert m["key"] == f"key-{i % 7}" and m["value"] == f"value-{i}"
    # Records of one key stay in order within their partition.
    by_key = {}
    for m in seen:
        by_key.setdefault(m["key"], []).append(int(m["seq"]))
    assert all(v == sorted(v) for v in by_key.values())
    # The group's committed offsets add up to every record read.
    committed = sum(int(p["offset"]) for t in out["offsets"] for p in t["partitions"])
    assert committed == count
