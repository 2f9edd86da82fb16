"""A third-party QUIC client against runnel: aioquic (Python), written from docs/quic.md alone.

ALPN `runnel`, one bidirectional stream per Kafka session carrying size-prefixed Kafka frames,
pinning of the SHA-256 fingerprint the broker logs, STOP_SENDING codes for bad frames, and
acks=0 Produce requests as datagrams. Kafka requests are encoded here by hand (ApiVersions v0,
CreateTopics v2, Produce v3); record batches by kafka-python, which also reads them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import struct
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("aioquic", reason="aioquic is not installed (tests/interop/requirements.txt)")

from aioquic.asyncio import QuicConnectionProtocol, connect  # noqa: E402
from aioquic.quic import events  # noqa: E402
from aioquic.quic.configuration import QuicConfiguration  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402
from kafka import KafkaConsumer, TopicPartition  # noqa: E402
from kafka.record.default_records import DefaultRecordBatchBuilder  # noqa: E402

from interop_util import unique  # noqa: E402

BASE_TS = 1_700_000_000_000
IO = 10.0  # seconds any one QUIC read may take


@pytest.fixture
def qbroker(broker_factory):
    """A broker of this test's own with its QUIC listener on."""
    return broker_factory(quic=True)


# --- Kafka wire encoding (kafka-protocol specs) ---------------------------------------------

def s16(s: str) -> bytes:
    return struct.pack(">h", len(s.encode())) + s.encode()


def request(api_key: int, version: int, corr: int, body: bytes) -> bytes:
    """Request header v1 (api key, version, correlation id, client id) + body."""
    return struct.pack(">hhi", api_key, version, corr) + s16("aioquic-interop") + body


def frame(message: bytes) -> bytes:
    return struct.pack(">i", len(message)) + message


def produce(corr: int, topic: str, batch: bytes, acks: int = -1) -> bytes:
    body = (struct.pack(">hhii", -1, acks, 10000, 1) + s16(topic)  # no transactional id
            + struct.pack(">iii", 1, 0, len(batch)) + batch)
    return request(0, 3, corr, body)


def batch(recs) -> bytes:
    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                  producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                  batch_size=1 << 20)
    for i, r in enumerate(recs):
        assert b.append(i, r.timestamp, r.key, r.value, r.headers) is not None
    return bytes(b.build())


class Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        v = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v if len(v) > 1 else v[0]

    def string(self) -> str:
        n = self.take(">h")
        self.pos += n
        return self.data[self.pos - n:self.pos].decode()


def records(prefix: bytes, n: int):
    """Binary keys and values, a header, explicit timestamps: shaped like a ConsumerRecord."""
    return [SimpleNamespace(key=prefix + b"-k\x00\xff%d" % i, value=bytes(range(256)) + b"%d" % i,
                            headers=[("h", b"\x01\x02%d" % i)], timestamp=BASE_TS + i)
            for i in range(n)]


# --- QUIC client -----------------------------------------------------------------------------

class Client(QuicConnectionProtocol):
    """Keeps what aioquic's stream readers do not show: STOP_SENDING codes and the close."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.stop_sending: dict[int, int] = {}
        self.terminated: events.ConnectionTerminated | None = None

    def quic_event_received(self, event):
        if isinstance(event, events.StopSendingReceived):
            self.stop_sending[event.stream_id] = event.error_code
        elif isinstance(event, events.ConnectionTerminated):
            self.terminated = event
        super().quic_event_received(event)


def config(alpn=("runnel",)) -> QuicConfiguration:
    # CERT_NONE skips only the CA chain check: aioquic still verifies the TLS 1.3
    # CertificateVerify signature with the leaf's key; the leaf itself is pinned in `session`.
    return QuicConfiguration(is_client=True, alpn_protocols=list(alpn) if alpn else None,
                             verify_mode=ssl.CERT_NONE, server_name="localhost",
                             max_datagram_frame_size=65536)


def fingerprint(der: bytes) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


@contextlib.asynccontextmanager
async def session(broker):
    """A pinned connection and its first session stream: (client, reader, writer)."""
    async with connect("127.0.0.1", broker.quic_port, configuration=config(),
                       create_protocol=Client) as client:
        leaf = client._quic.tls._peer_certificate  # aioquic has no public accessor
        got = fingerprint(leaf.public_bytes(Encoding.DER))
        if got != broker.fingerprint:
            client.close(error_code=1, reason_phrase="certificate pin mismatch")
            raise AssertionError(f"broker certificate {got} is not the pinned {broker.fingerprint}")
        yield (client, *await client.create_stream())


async def call(reader, writer, message: bytes) -> Reader:
    writer.write(frame(message))
    size = struct.unpack(">i", await asyncio.wait_for(reader.readexactly(4), IO))[0]
    r = Reader(await asyncio.wait_for(reader.readexactly(size), IO))
    assert r.take(">i") == struct.unpack_from(">i", message, 4)[0]  # response header v0
    return r


async def api_versions(reader, writer) -> dict[int, tuple[int, int]]:
    r = await call(reader, writer, request(18, 0, 1, b""))
    assert r.take(">h") == 0
    return {k: (lo, hi) for k, lo, hi in (r.take(">hhh") for _ in range(r.take(">i")))}


async def create_topic(reader, writer, topic: str) -> None:
    body = s16(topic) + struct.pack(">ihiiib", 1, 1, 0, 0, 10000, 0)
    r = await call(reader, writer, request(19, 2, 7, struct.pack(">i", 1) + body))
    assert r.take(">ii") == (0, 1) and r.string() == topic  # throttle time, one topic
    assert r.take(">h") == 0, "CreateTopics error"


def read_back(broker, topic: str, count: int, timeout: float = 10.0):
    """Records of partition 0 over TCP (kafka-python), its end offset, the broker's topics."""
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                      request_timeout_ms=15000)
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        out, deadline = [], time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=300).values():
                out.extend(recs)
        return out, c.end_offsets([tp])[tp], c.topics()
    finally:
        c.close()


def rows(msgs):
    return [(m.key, m.value, list(m.headers), m.timestamp) for m in msgs]


# --- tests -----------------------------------------------------------------------------------

def test_produce_over_quic_reads_back_over_tcp(qbroker):
    cert = x509.load_pem_x509_certificate((qbroker.data_dir / "quic" / "cert.pem").read_bytes())
    assert fingerprint(cert.public_bytes(Encoding.DER)) == qbroker.fingerprint
    topic = unique("aioquic")
    first, second = records(b"a", 3), records(b"b", 2)

    async def run():
        async with session(qbroker) as (_, reader, writer):
            apis = await api_versions(reader, writer)
            assert apis[0][0] <= 3 <= apis[0][1] and apis[19][0] <= 2 <= apis[19][1], apis
            await create_topic(reader, writer, topic)
            offsets = []
            for corr, recs in ((2, first), (3, second)):
                r = await call(reader, writer, produce(corr, topic, batch(recs)))
                assert r.take(">i") == 1 and r.string() == topic and r.take(">i") == 1
                part, err, base, _log_append_time = r.take(">ihqq")
                assert (part, err) == (0, 0)
                offsets.append(base)
            return offsets

    assert asyncio.run(run()) == [0, 3]
    got, end, _ = read_back(qbroker, topic, 5)
    assert [m.offset for m in got] == list(range(5))
    assert rows(got) == rows(first + second)
    assert end == 5


@pytest.mark.parametrize("alpn", [("h3",), None], ids=["wrong-alpn", "no-alpn"])
def test_handshake_without_runnel_alpn_is_refused(qbroker, alpn):
    made: list[Client] = []

    def factory(*a, **kw):
        made.append(Client(*a, **kw))
        return made[-1]

    async def run():
        async with connect("127.0.0.1", qbroker.quic_port, configuration=config(alpn),
                           create_protocol=factory):
            pass

    with pytest.raises(ConnectionError):
        asyncio.run(asyncio.wait_for(run(), IO))
    t = made[0].terminated
    # A TLS alert in QUIC is CRYPTO_ERROR 0x100 + alert; no_application_protocol is 120.
    assert t is not None and t.error_code == 0x100 + 120, t


BAD_FRAMES = {
    "over-max-request-bytes": (struct.pack(">i", 200 << 20), 1),
    "negative-size": (struct.pack(">i", -7), 2),
    "garbage-header": (frame(b"\xde\xad\xbe\xef" * 8), 2),
    "unsupported-version": (frame(request(0, 99, 5, b"\x00" * 16)), 2),
}


@pytest.mark.parametrize("bad", BAD_FRAMES)
def test_bad_frame_ends_only_its_stream(qbroker, bad):
    topic = unique("aioquic-bad")
    good, after = records(b"good", 1), records(b"after", 1)
    payload, code = BAD_FRAMES[bad]

    async def run():
        async with session(qbroker) as (client, reader, writer):
            await create_topic(reader, writer, topic)
            # A good Produce, the bad frame and another good Produce, in one write.
            writer.write(frame(produce(2, topic, batch(good))) + payload
                         + frame(produce(3, topic, batch(after))))
            size = struct.unpack(">i", await asyncio.wait_for(reader.readexactly(4), IO))[0]
            assert Reader(await asyncio.wait_for(reader.readexactly(size), IO)).take(">i") == 2
            # Then the broker's FIN, with nothing more: no answer to the bad or later frames.
            assert await asyncio.wait_for(reader.read(), IO) == b""
            sid = writer.get_extra_info("stream_id")
            assert client.stop_sending.get(sid) == code, client.stop_sending
            writer.transport._closing = True  # aioquic reset our side: no FIN when collected
            # The connection goes on: a new stream is a new session.
            assert 18 in await api_versions(*await client.create_stream())
            assert client.terminated is None

    asyncio.run(run())
    got, end, _ = read_back(qbroker, topic, 1, timeout=5)
    assert rows(got) == rows(good)
    assert end == 1, "a request after the bad frame was written"


def test_datagrams_are_fire_and_forget_produces(qbroker):
    topic, unknown = unique("aioquic-dgram"), unique("aioquic-nope")
    sent = records(b"dg", 5)

    async def run():
        async with session(qbroker) as (client, reader, writer):
            assert client._quic._remote_max_datagram_frame_size, "broker takes no datagrams"
            await create_topic(reader, writer, topic)
            # Dropped without harm: garbage, acks=-1, and an unknown topic (no auto-create).
            client._quic.send_datagram_frame(b"\x00\x01garbage")
            client._quic.send_datagram_frame(produce(1, topic, batch(records(b"x", 1))))
            client._quic.send_datagram_frame(produce(2, unknown, batch(sent[:1]), acks=0))
            for i, r in enumerate(sent):  # one record per datagram, without the size prefix
                client._quic.send_datagram_frame(produce(10 + i, topic, batch([r]), acks=0))
                client.transmit()
            got = await asyncio.to_thread(read_back, qbroker, topic, len(sent))
            assert client.terminated is None
            assert 0 in await api_versions(reader, writer)
            return got

    got, end, topics = asyncio.run(run())
    assert end == len(sent), "a dropped datagram was written"
    assert topic in topics and unknown not in topics, topics
    # Loopback loses nothing, but the network may reorder them.
    assert sorted(m.offset for m in got) == list(range(len(sent)))
    assert sorted(rows(got)) == sorted(rows(sent))
