"""Fixtures that run a real `runnel` broker for the interop tests.

The broker binary comes from $RUNNEL_BIN (scripts/interop.sh sets it), else
target/debug/runnel. Each broker gets free loopback ports, a plaintext and a TLS Kafka
listener (a throwaway CA and server certificate made with the openssl CLI), its own data
directory and a log file written at RUST_LOG=runnel=debug. When a test fails, the broker
log lines written while it ran are attached to its report.
"""

from __future__ import annotations

import gc
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from interop_util import strip_ansi

REPO = pathlib.Path(__file__).resolve().parents[2]

# Every broker started in this session, so a failing test can show their logs.
_BROKERS: list["Broker"] = []


# The QUIC listener's start-up line, with its certificate's fingerprint.
_QUIC_LISTENING = re.compile(
    r'listening listener="?quic"?.*?fingerprint=((?:[0-9A-F]{2}:){31}[0-9A-F]{2})')


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class TlsMaterial:
    """A self-signed CA and a server certificate for IP 127.0.0.1 signed by it."""

    def __init__(self, directory: pathlib.Path):
        d = directory
        d.mkdir(parents=True, exist_ok=True)
        self.ca_cert = d / "ca.pem"
        self.ca_key = d / "ca.key"
        self.server_key = d / "server.key"
        self.server_cert = d / "server.crt"
        self.server_chain = d / "server.pem"

        def openssl(*args: str) -> None:
            r = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"openssl {' '.join(args)} failed:\n{r.stderr}")

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3",
                "-keyout", str(self.ca_key), "-out", str(self.ca_cert),
                "-subj", "/CN=runnel interop test CA",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        csr = d / "server.csr"
        openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
                "-keyout", str(self.server_key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
        ext = d / "server.ext"
        ext.write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
        )
        openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca_cert),
                "-CAkey", str(self.ca_key), "-set_serial", str(int(time.time() * 1000)),
                "-sha256", "-days", "3", "-extfile", str(ext), "-out", str(self.server_cert))
        # PEM chain, leaf first.
        self.server_chain.write_text(self.server_cert.read_text() + self.ca_cert.read_text())


class Broker:
    """One runnel process: `start`, `stop` (SIGTERM, then SIGKILL), `kill`, `restart`.

    Ports and data directory stay the same across restarts, so clients can reconnect and
    the broker must recover its own data.
    """

    def __init__(self, binary: pathlib.Path, workdir: pathlib.Path, tls: TlsMaterial | None,
                 sasl_users: dict[str, str] | None = None, quic: bool = False,
                 super_users: list[str] | None = None, node_id: int = 1,
                 port: int | None = None, extra_config: str = "",
                 kafka_listener_config: str = ""):
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = workdir / "data"
        self.tls = tls
        # With users, both Kafka listeners ask for SASL PLAIN (`sasl_plain_file`).
        self.sasl_users = sasl_users
        self.users_path = workdir / "users"
        self.port = port or free_port()
        # A cluster's brokers (`[cluster]` in `extra_config`) each have their own node id.
        self.node_id = node_id
        self.extra_config = extra_config
        # More keys of `[listeners.kafka]` (`sasl_oauthbearer = true`).
        self.kafka_listener_config = kafka_listener_config
        self.tls_port = free_port() if tls else None
        # With a QUIC listener, `start` also waits for it and sets `fingerprint`, the SHA-256
        # of its self-signed certificate as the broker logs it.
        self.quic_port = free_port(socket.SOCK_DGRAM) if quic else None
        self.fingerprint: str | None = None
        # With super users, ACLs are on (`[acls]`) and these principals may do everything.
        self.super_users = super_users
        self.config_path = workdir / "runnel.toml"
        self.log_path = workdir / "broker.log"
        self.log_path.touch()
        self.proc: subprocess.Popen | None = None
        self.exit_codes: list[int] = []
        self._write_config()
        _BROKERS.append(self)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def tls_bootstrap(self) -> str:
        assert self.tls_port is not None, "this broker has no TLS listener"
        return f"127.0.0.1:{self.tls_port}"

    def _write_config(self) -> None:
        sasl = []
        if self.sasl_users:
            self.users_path.write_text(
                "".join(f"{user} {secret}\n" for user, secret in self.sasl_users.items()))
            sasl = [f'sasl_plain_file = "{self.users_path}"']
        lines = [
            "[broker]",
            f'data_dir = "{self.data_dir}"',
            f"node_id = {self.node_id}",
            "[listeners.kafka]",
            f'address = "127.0.0.1:{self.port}"',
            *sasl,
            *([self.kafka_listener_config] if self.kafka_listener_config else []),
            "[listeners.kafka_tls]",
        ]
        if self.tls:
            lines += [
                "enabled = true",
                f'address = "127.0.0.1:{self.tls_port}"',
                f'cert = "{self.tls.server_chain}"',
                f'key = "{self.tls.server_key}"',
                'client_ca = ""',
                *sasl,
            ]
        else:
            lines += ["enabled = false"]
        lines += ["[listeners.quic]"]
        if self.quic_port:
            lines += [f'address = "127.0.0.1:{self.quic_port}"']
        else:
            lines += ["enabled = false"]
        lines += ["[listeners.admin]", "enabled = false"]
        if self.super_users:
            names = ", ".join(f'"{u}"' for u in self.super_users)
            lines += ["[acls]", "enabled = true", f"super_users = [{names}]"]
        if self.extra_config:
            lines += [self.extra_config]
        self.config_path.write_text("\n".join(lines) + "\n")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        assert not self.running(), "broker already running"
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "runnel=debug")
        if self.quic_port:
            # `start` waits for the QUIC listener's info line, whatever the caller's level.
            env["RUST_LOG"] += ",runnel::net::quic=info"
        env.setdefault("NO_COLOR", "1")
        self._note(f"starting runnel (start #{len(self.exit_codes) + 1})")
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir, env=env, start_new_session=True,
            )
        ports = [self.port] + ([self.tls_port] if self.tls_port else [])
        log_from = self.log_path.stat().st_size
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.exit_codes.append(code)
                self.proc = None
                raise RuntimeError(
                    f"runnel exited with {code} during start-up; log:\n{self.log_tail(40)}")
            if all(_port_open(p) for p in ports) and self._quic_listening(log_from):
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"runnel did not listen on {ports} within {timeout}s; log:\n"
                    f"{self.log_tail(40)}")
            time.sleep(0.05)

    def _quic_listening(self, log_from: int) -> bool:
        """True without a QUIC listener; with one, once this start logged it listening."""
        if self.quic_port is None:
            return True
        found = _QUIC_LISTENING.search(self.log_text(log_from))
        if found:
            self.fingerprint = found.group(1)
        return found is not None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        proc = self.proc
        if proc.poll() is not None:
            self._note(f"runnel had already exited with {proc.returncode} "
                       "(a crash, or a signal from outside the tests)")
        else:
            self._note("sending SIGTERM")
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._note(f"still running {timeout}s after SIGTERM: sending SIGKILL")
                proc.kill()
                proc.wait(10)
        self.exit_codes.append(proc.returncode)
        self.proc = None
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL at once: an unclean stop."""
        if self.proc is None:
            return None
        proc = self.proc
        if proc.poll() is None:
            self._note("sending SIGKILL")
            proc.kill()
        proc.wait(10)
        self.exit_codes.append(proc.returncode)
        self.proc = None
        return proc.returncode

    def _note(self, text: str) -> None:
        """Marks in the broker log what the test harness did (signals come only from here)."""
        with open(self.log_path, "a") as log:
            log.write(f"=== interop: {text} ===\n")

    def restart(self, timeout: float = 30.0) -> int | None:
        code = self.stop()
        self.start(timeout)
        return code

    def log_text(self, start: int = 0) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(start)
            return strip_ansi(f.read().decode("utf-8", "replace"))

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_tail(self, n: int, start: int = 0) -> str:
        return "\n".join(self.log_text(start).splitlines()[-n:])


def _binary() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("RUNNEL_BIN", REPO / "target" / "debug" / "runnel")).resolve()
    if not path.is_file():
        pytest.exit(f"runnel binary not found at {path}: build it (cargo build -p runnel) "
                    f"or set RUNNEL_BIN", returncode=3)
    return path


@pytest.fixture(scope="session")
def runnel_bin() -> pathlib.Path:
    return _binary()


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory) -> TlsMaterial:
    return TlsMaterial(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def other_tls_material(tmp_path_factory) -> TlsMaterial:
    """A second, unrelated CA: clients trusting only it must not accept the broker."""
    return TlsMaterial(tmp_path_factory.mktemp("other-tls"))


@pytest.fixture(scope="session")
def broker(runnel_bin, tls_material, tmp_path_factory):
    """One broker shared by the session (plaintext and TLS); tests use their own topics."""
    b = Broker(runnel_bin, tmp_path_factory.mktemp("broker"), tls_material)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def broker_factory(runnel_bin, tls_material, tmp_path_factory):
    """Makes brokers private to one test (for restarts); all are stopped afterwards."""
    made: list[Broker] = []

    def make(tls: bool = False, start: bool = True,
             sasl_users: dict[str, str] | None = None, quic: bool = False,
             super_users: list[str] | None = None, extra_config: str = "",
             kafka_listener_config: str = "") -> Broker:
        b = Broker(runnel_bin, tmp_path_factory.mktemp("broker"), tls_material if tls else None,
                   sasl_users, quic, super_users, extra_config=extra_config,
                   kafka_listener_config=kafka_listener_config)
        made.append(b)
        if start:
            b.start()
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def cluster_factory(runnel_bin, tmp_path_factory):
    """Makes clusters of brokers (`[cluster]`), started, private to one test: broker 1 leads,
    and the others follow it. `replica_lag_time_max` is 3 s, so a stopped follower leaves the
    in-sync set quickly."""
    made: list[Broker] = []

    def make(size: int = 2, min_insync: int = 2) -> list[Broker]:
        ports = [free_port() for _ in range(size)]
        names = ", ".join(f'"{i + 1}@127.0.0.1:{p}"' for i, p in enumerate(ports))
        extra = (f"[cluster]\nbrokers = [{names}]\nmin_insync_replicas = {min_insync}\n"
                 'replica_lag_time_max = "3s"\nreplica_fetch_wait = "100ms"')
        brokers = [Broker(runnel_bin, tmp_path_factory.mktemp(f"node{i + 1}"), None,
                          node_id=i + 1, port=p, extra_config=extra)
                   for i, p in enumerate(ports)]
        made.extend(brokers)
        for b in brokers:
            b.start()
        return brokers

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def fresh_broker(broker_factory) -> Broker:
    """A running broker of this test's own (plaintext and TLS): `.restart()` stops it with
    SIGTERM and starts it again on the same ports and data directory; `.kill()` and
    `.start()` make the stop unclean."""
    return broker_factory(tls=True)


# --- attach broker logs to failing tests --------------------------------------------------

@pytest.fixture(autouse=True)
def _broker_log_marks(request):
    request.node._runnel_log_marks = {id(b): b.log_size() for b in _BROKERS}
    yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if not rep.failed:
        return rep
    marks = getattr(item, "_runnel_log_marks", {})
    for b in _BROKERS:
        if b.proc is not None and b.proc.poll() is not None:
            rep.sections.append(("runnel died", f"runnel ({b.workdir}) exited with "
                                 f"{b.proc.returncode} while the test expected it running"))
        try:
            text = b.log_tail(60, marks.get(id(b), 0))
        except OSError:
            continue
        if text.strip():
            rep.sections.append((f"runnel log {b.log_path} (last lines during this test)", text))
    return rep


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    """pytest keeps the last failure's traceback (sys.last_traceback) for post-mortem
    debugging, and with it that test's Kafka clients, which would go on retrying a stopped
    broker and write to stderr after the summary line. Let them go before the summary."""
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            setattr(sys, name, None)
    gc.collect()
