"""kcat (librdkafka 2.0.x from Debian) against runnel: metadata, all codecs, groups, TLS."""

from __future__ import annotations

import json
import shutil

import pytest

from interop_util import compressible, run, unique

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
# A broker that never answers a request must fail the test in seconds, not after
# librdkafka's default 60 s request timeout.
TIMEOUTS = ["-X", "socket.timeout.ms=10000"]

pytestmark = pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")


def kcat(bootstrap: str, *args: str, input: str | None = None, timeout: float = 30.0,
         tls=None):
    cmd = ["kcat", "-b", bootstrap, *TIMEOUTS]
    if tls is not None:
        cmd += ["-X", "security.protocol=ssl", "-X", f"ssl.ca.location={tls.ca_cert}"]
    return run(cmd + list(args), input=input, timeout=timeout)


def produce_keyed(bootstrap, topic, records, *extra, tls=None):
    lines = "".join(f"{k}:{v}\n" for k, v in records)
    kcat(bootstrap, "-P", "-t", topic, "-K:", *extra, input=lines, tls=tls)


def consume_all(bootstrap, topic, offset="beginning", tls=None) -> str:
    return kcat(bootstrap, "-C", "-t", topic, "-e", "-o", offset, "-f", "%k:%s\n",
                tls=tls).stdout


def expected_text(records) -> str:
    return "".join(f"{k}:{v}\n" for k, v in records)


# --- metadata ------------------------------------------------------------------------------

def test_metadata_lists_broker_and_auto_created_topic(broker):
    topic = unique("kcat-meta")
    # Asking for an unknown topic auto-creates it (broker.auto_create_topics = true).
    md = json.loads(kcat(broker.bootstrap, "-L", "-J", "-t", topic).stdout)
    assert [(b["id"], b["name"]) for b in md["brokers"]] == [(1, broker.bootstrap)], md
    topics = {t["topic"]: t for t in md["topics"]}
    assert topic in topics, md
    assert "error" not in topics[topic], topics[topic]
    parts = topics[topic]["partitions"]
    assert [p["partition"] for p in parts] == [0], parts
    assert parts[0]["leader"] == 1, parts
    assert [r["id"] for r in parts[0]["replicas"]] == [1]
    assert [r["id"] for r in parts[0]["isrs"]] == [1]

    # And a full listing (no -t) shows it as well.
    md_all = json.loads(kcat(broker.bootstrap, "-L", "-J").stdout)
    assert topic in {t["topic"] for t in md_all["topics"]}, md_all


# --- produce and consume with every codec -----------------------------------------------------

@pytest.fixture(scope="module")
def codec_topics(broker):
    """One topic per codec, filled by kcat -P -K: with that compression.codec."""
    out = {}
    for codec in CODECS:
        topic = unique(f"kcat-{codec}")
        records = [(f"key-{i}", compressible(i, codec)) for i in range(20)]
        produce_keyed(broker.bootstrap, topic, records, "-X", f"compression.codec={codec}")
        out[codec] = (topic, records)
    return out


@pytest.mark.parametrize("codec", CODECS)
def test_codec_round_trip_from_beginning(broker, codec_topics, codec):
    topic, records = codec_topics[codec]
    assert consume_all(broker.bootstrap, topic, "beginning") == expected_text(records)


def test_codec_round_trip_from_offset_zero(broker, codec_topics):
    """The same records read from absolute offset 0 (no ListOffsets request needed)."""
    for codec in CODECS:
        topic, records = codec_topics[codec]
        assert consume_all(broker.bootstrap, topic, "0") == expected_text(records), codec


@pytest.mark.parametrize("codec", CODECS)
def test_codec_batches_stored_as_sent(broker, codec_topics, codec):
    """Compression is end to end: a compressed batch is stored compressed, not inflated."""
    topic, records = codec_topics[codec]
    files = [p for p in broker.data_dir.rglob("*")
             if p.is_file() and any(part.startswith(f"{topic}-") for part in p.parts)]
    assert files, f"no files for {topic} under {broker.data_dir}"
    data = b"".join(p.read_bytes() for p in files)
    plain = compressible(7, codec).encode()
    if codec == "none":
        assert plain in data
    else:
        assert plain not in data, f"{codec} records are stored uncompressed"


# --- consumer group ---------------------------------------------------------------------------

def kcat_group_read(broker, group, topic, *offset_args) -> str:
    return kcat(broker.bootstrap, "-G", group, *offset_args, "-e", "-f", "%k:%s\n", topic,
                timeout=40).stdout


def test_group_consume_from_beginning(broker):
    """-G with -o beginning: a new group reads the topic from the start, then commits."""
    topic, group = unique("kcat-group"), unique("kcat-g")
    first = [(f"k{i}", f"first-{i}") for i in range(6)]
    produce_keyed(broker.bootstrap, topic, first)
    assert kcat_group_read(broker, group, topic, "-o", "beginning") == expected_text(first)
    # kcat committed its position when it left: without -o the group resumes after it.
    second = [(f"k{i}", f"second-{i}") for i in range(3)]
    produce_keyed(broker.bootstrap, topic, second)
    assert kcat_group_read(broker, group, topic) == expected_text(second)


def test_group_resumes_from_committed_offsets(broker):
    """-G without -o starts at the group's committed offsets and commits as it leaves.

    The group's first offset is committed with confluent-kafka, so this needs no
    ListOffsets request (a new group without offsets starts from auto.offset.reset).
    """
    from confluent_kafka import Consumer, TopicPartition

    topic, group = unique("kcat-resume"), unique("kcat-g")
    first = [(f"k{i}", f"first-{i}") for i in range(6)]
    produce_keyed(broker.bootstrap, topic, first)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    try:
        done = c.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
        assert [tp.error for tp in done] == [None], done
    finally:
        c.close()
    assert kcat_group_read(broker, group, topic) == expected_text(first[2:])
    second = [(f"k{i}", f"second-{i}") for i in range(3)]
    produce_keyed(broker.bootstrap, topic, second)
    assert kcat_group_read(broker, group, topic) == expected_text(second)
    assert kcat_group_read(broker, group, topic) == ""


# --- TLS --------------------------------------------------------------------------------------

def test_tls_metadata(broker, tls_material):
    topic = unique("kcat-tls-meta")
    md = json.loads(kcat(broker.tls_bootstrap, "-L", "-J", "-t", topic, tls=tls_material).stdout)
    assert [(b["id"], b["name"]) for b in md["brokers"]] == [(1, broker.tls_bootstrap)], md
    assert topic in {t["topic"] for t in md["topics"]}


def test_tls_produce_consume(broker, tls_material):
    topic = unique("kcat-tls")
    records = [(f"k{i}", f"over-tls-{i}") for i in range(10)]
    produce_keyed(broker.tls_bootstrap, topic, records, "-X", "compression.codec=lz4",
                  tls=tls_material)
    assert consume_all(broker.tls_bootstrap, topic, "beginning", tls=tls_material) == \
        expected_text(records)
    # The same data is visible through the plaintext listener.
    assert consume_all(broker.bootstrap, topic, "0") == expected_text(records)


def test_tls_refuses_untrusted_ca(broker, other_tls_material):
    """Certificate verification is really on: a client trusting another CA must fail."""
    other = other_tls_material
    r = run(["kcat", "-b", broker.tls_bootstrap, "-L", "-m", "5", *TIMEOUTS,
             "-X", "security.protocol=ssl", "-X", f"ssl.ca.location={other.ca_cert}"],
            timeout=30, check=False)
    assert r.returncode != 0, r.stdout
    assert "certificate verify failed" in r.stderr or "SSL" in r.stderr, r.stderr


# --- SASL PLAIN and SCRAM ----------------------------------------------------------------------

USERS = {"alice": "a11ce-s3cret", "bob": "b0b-s3cret"}


def sasl(protocol: str, user: str, secret: str, mechanism: str = "PLAIN") -> list[str]:
    return ["-X", f"security.protocol={protocol}", "-X", f"sasl.mechanism={mechanism}",
            "-X", f"sasl.username={user}", "-X", f"sasl.password={secret}"]


@pytest.mark.parametrize("produce_with,consume_with", [
    ("PLAIN", "PLAIN"), ("SCRAM-SHA-256", "SCRAM-SHA-512")])
def test_sasl_over_plaintext_and_tls(broker_factory, tls_material, produce_with, consume_with):
    b = broker_factory(tls=True, sasl_users=USERS)
    topic = unique("kcat-sasl")
    records = [(f"k{i}", f"logged-in-{i}") for i in range(5)]
    lines = "".join(f"{k}:{v}\n" for k, v in records)
    kcat(b.bootstrap, "-P", "-t", topic, "-K:",
         *sasl("SASL_PLAINTEXT", "alice", USERS["alice"], produce_with), input=lines)
    got = kcat(b.tls_bootstrap, "-C", "-t", topic, "-e", "-o", "beginning", "-f", "%k:%s\n",
               "-X", f"ssl.ca.location={tls_material.ca_cert}",
               *sasl("SASL_SSL", "bob", USERS["bob"], consume_with)).stdout
    assert got == expected_text(records)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_sasl_refuses_a_wrong_secret(broker_factory, mechanism):
    b = broker_factory(sasl_users=USERS)
    r = run(["kcat", "-b", b.bootstrap, "-L", "-m", "5", *TIMEOUTS,
             *sasl("SASL_PLAINTEXT", "alice", "guess", mechanism)], timeout=30, check=False)
    assert r.returncode != 0, r.stdout
    assert "uthentication" in r.stderr, r.stderr
