"""Small helpers shared by the interop tests."""

from __future__ import annotations

import re
import subprocess
import time
import uuid

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def unique(prefix: str) -> str:
    """A topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def run(cmd: list[str], *, input: str | None = None, timeout: float = 30.0,
        check: bool = True) -> subprocess.CompletedProcess:
    """Runs a client command; a hang or a non-zero exit fails the test with its output."""
    try:
        r = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                           stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise AssertionError(
            f"{cmd!r} did not finish within {timeout}s\nstdout:\n{out}\nstderr:\n{err}") from None
    if check and r.returncode != 0:
        raise AssertionError(
            f"{cmd!r} exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Polls `predicate` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def ck_consume(consumer, count: int, timeout: float = 30.0, settle: float = 0.0):
    """Polls a confluent_kafka Consumer until `count` messages arrived (errors fail).

    With `settle` > 0 keeps polling that long after the last expected message so that
    extra (duplicate or unexpected) messages are caught too.
    """
    from confluent_kafka import KafkaError

    msgs = []
    deadline = time.monotonic() + timeout
    while len(msgs) < count and time.monotonic() < deadline:
        m = consumer.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise AssertionError(f"consumer error: {m.error()}")
        msgs.append(m)
    assert len(msgs) >= count, (
        f"got {len(msgs)} of {count} messages within {timeout}s: "
        f"{[(m.topic(), m.partition(), m.offset(), m.value()) for m in msgs]}")
    settle_end = time.monotonic() + settle
    while time.monotonic() < settle_end:
        m = consumer.poll(0.2)
        if m is not None and not m.error():
            msgs.append(m)
    return msgs


def compressible(i: int, codec: str) -> str:
    """A value that compresses well and whose plain text is recognisable on disk."""
    return f"{codec}-value-{i:04d}-" + "abcdefgh" * 16
