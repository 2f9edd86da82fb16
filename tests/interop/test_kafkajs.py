"""kafkajs (Node.js) against runnel: admin, idempotent gzip producer, consumer group."""

import json
import os
import pathlib
import subprocess

import pytest

HERE = pathlib.Path(__file__).resolve().parent


def run_node(script: str, *args: str) -> dict:
    """Runs one of the kafkajs programs here; what it reports on its last line."""
    env = dict(os.environ, NODE_PATH=os.path.join(os.environ["KAFKAJS_DIR"], "node_modules"))
    r = subprocess.run(["node", str(HERE / script), *args], capture_output=True, text=True,
                       env=env, timeout=90)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.environ.get("KAFKAJS_DIR"), reason="run through scripts/interop.sh, which installs kafkajs")
def test_kafkajs_round_trip_with_a_consumer_group(broker):
    count = 60
    out = run_node("kafkajs_roundtrip.js", broker.bootstrap, "kafkajs-topic", "kafkajs-group", str(count))
    assert out["listed"]
    # The broker loggers (DescribeConfigs, BROKER_LOGGER): the root level and the modules.
    assert out["loggers"]["root"] in ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "OFF"), out["loggers"]
    assert "runnel::storage" in out["loggers"], out["loggers"]
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


@pytest.mark.skipif(not os.environ.get("KAFKAJS_DIR"), reason="run through scripts/interop.sh, which installs kafkajs")
def test_kafkajs_transactions_commit_abort_and_send_offsets(broker):
    """kafkajs's transactional producer: commit 2 records, abort 2, commit 1 with a consumer
    group's offset (sendOffsets); kafkajs's consumer (read_committed by default) gets exactly
    the 3 committed records, the marker offsets are gaps, and the group's offset is the one the
    transaction committed."""
    out = run_node("kafkajs_transactions.js", broker.bootstrap, "kafkajs-txn-out", "kafkajs-txn-in",
                   "kafkajs-txn-group")
    seen = [(int(m["offset"]), m["value"]) for m in out["seen"]]
    # 0-1 committed, 2 the commit marker, 3-4 aborted, 5 the abort marker, 6 committed, 7 marker.
    assert seen == [(0, "committed-1"), (1, "committed-2"), (6, "committed-3")], seen
    assert [int(p["high"]) for p in out["ends"]] == [8], out["ends"]
    committed = {int(p["partition"]): int(p["offset"]) for t in out["offsets"] for p in t["partitions"]}
    assert committed == {0: 5}, out["offsets"]
