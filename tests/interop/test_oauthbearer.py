"""SASL OAUTHBEARER with real clients: tokens of a test identity provider (an ES256 key made
here, its public half given to the broker as a JWKS file), obtained the ways applications do:
librdkafka's OIDC client-credentials flow against a token endpoint, librdkafka's token
callback (confluent-kafka's `oauth_cb`), and kafka-python's token provider."""
from __future__ import annotations

import base64
import http.server
import json
import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ck_util import conf
from interop_util import ck_consume, run, unique, wait_for

ISSUER = "https://idp.test/realms/edge"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Idp:
    """Signs tokens with an ES256 key; `jwks()` is what its jwks_uri would serve."""

    def __init__(self, kid: str = "edge-1"):
        self.kid = kid
        self.key = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> str:
        n = self.key.public_key().public_numbers()
        return json.dumps({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": b64(n.x.to_bytes(32, "big")), "y": b64(n.y.to_bytes(32, "big"))}]})

    def token(self, sub: str, iss: str = ISSUER, aud: str = "runnel", ttl: int = 600) -> str:
        now = int(time.time())
        header = b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": self.kid}).encode())
        claims = b64(json.dumps({"sub": sub, "iss": iss, "aud": aud, "iat": now,
                                 "exp": now + ttl}).encode())
        der = self.key.sign(f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{header}.{claims}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


@pytest.fixture
def idp_broker(broker_factory, tmp_path):
    idp = Idp()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(idp.jwks())
    b = broker_factory(
        kafka_listener_config="sasl_oauthbearer = true",
        extra_config=(f'[oauthbearer]\njwks_file = "{jwks}"\nexpected_issuer = "{ISSUER}"\n'
                      'expected_audience = ["runnel"]'))
    return idp, b


def bearer_conf(bootstrap: str, token_cb) -> dict:
    return {**conf(bootstrap), "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "OAUTHBEARER", "oauth_cb": token_cb}


def test_token_callback_logs_in_and_a_foreign_token_is_refused_with_the_reason(idp_broker):
    idp, b = idp_broker
    topic = unique("oauth-cb")
    good = bearer_conf(b.bootstrap, lambda _: (idp.token("app-1"), time.time() + 600))
    p = Producer(good)
    for i in range(5):
        p.produce(topic, value=f"r{i}".encode())
    assert p.flush(30) == 0
    c = Consumer({**good, "group.id": unique("oauth-g"), "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    got = sorted(m.value() for m in ck_consume(c, 5))
    c.close()
    assert got == [f"r{i}".encode() for i in range(5)]
    assert "principal=User:app-1" in b.log_text().replace('"', "")

    errors = []
    foreign = bearer_conf(b.bootstrap, lambda _: (idp.token("app-1", iss="https://elsewhere"),
                                                  time.time() + 600))
    p = Producer({**foreign, "error_cb": errors.append, "message.timeout.ms": 5000})
    p.produce(topic, value=b"never")
    p.flush(10)
    wait_for(lambda: any(e.code() == KafkaError._AUTHENTICATION for e in errors), timeout=15,
             what="an authentication error")
    said = " ".join(e.str() for e in errors)
    assert "issuer" in said and "elsewhere" in said, said


class TokenEndpoint:
    """An identity provider's token endpoint (OAuth client credentials): answers every POST
    with a token for `sub`, and keeps what it was asked."""

    def __init__(self, idp: Idp, sub: str):
        asked = self.asked = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                asked.append((self.headers.get("Authorization", ""), body))
                answer = json.dumps({"access_token": idp.token(sub), "token_type": "bearer",
                                     "expires_in": 600}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/token"

    def oidc_conf(self) -> dict:
        return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "OAUTHBEARER",
                "sasl.oauthbearer.method": "oidc", "sasl.oauthbearer.client.id": "gateway",
                "sasl.oauthbearer.client.secret": "s3cret",
                "sasl.oauthbearer.token.endpoint.url": self.url}


def test_oidc_client_credentials_flow_against_a_token_endpoint(idp_broker):
    """librdkafka's own OIDC support (`sasl.oauthbearer.method=oidc`): it asks the provider's
    token endpoint for a token with its client id and secret, as applications configured for
    Keycloak or Entra ID do, and logs in with it."""
    idp, b = idp_broker
    endpoint = TokenEndpoint(idp, "sensor-gateway")
    try:
        topic = unique("oauth-oidc")
        p = Producer({**conf(b.bootstrap), **endpoint.oidc_conf()})
        p.produce(topic, value=b"over oidc")
        assert p.flush(30) == 0
        assert endpoint.asked, "the token endpoint was asked"
        auth, body = endpoint.asked[0]
        assert auth == "Basic " + base64.b64encode(b"gateway:s3cret").decode()
        assert "grant_type=client_credentials" in body
        assert "principal=User:sensor-gateway" in b.log_text().replace('"', "")
    finally:
        endpoint.server.shutdown()


def test_runnel_cli_logs_in_over_oidc(idp_broker, runnel_bin):
    """The `runnel` client commands' librdkafka fetches tokens too: produce and consume over
    an OAUTHBEARER listener with the same properties as any librdkafka client."""
    idp, b = idp_broker
    endpoint = TokenEndpoint(idp, "cli-user")
    try:
        topic = unique("oauth-cli")
        props = [arg for k, v in endpoint.oidc_conf().items() for arg in ("-X", f"{k}={v}")]
        produced = run([str(runnel_bin), "produce", topic, "-b", b.bootstrap, *props],
                       input="one\ntwo\n")
        assert produced.returncode == 0, produced.stderr
        consumed = run([str(runnel_bin), "consume", topic, "-b", b.bootstrap, *props,
                        "--from-beginning", "--idle-timeout", "3s"])
        assert consumed.returncode == 0, consumed.stderr
        assert consumed.stdout.split() == ["one", "two"]
        assert "principal=User:cli-user" in b.log_text().replace('"', "")
    finally:
        endpoint.server.shutdown()


def test_kafka_python_token_provider(idp_broker):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.net.sasl.oauth import AbstractTokenProvider

    idp, b = idp_broker

    class Provider(AbstractTokenProvider):
        def token(self):
            return idp.token("py-app")

    common = dict(bootstrap_servers=b.bootstrap, security_protocol="SASL_PLAINTEXT",
                  sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=Provider())
    topic = unique("oauth-py")
    producer = KafkaProducer(**common)
    producer.send(topic, b"from kafka-python").get(timeout=30)
    producer.close()
    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=15000,
                             **common)
    assert [m.value for m in consumer] == [b"from kafka-python"]
    consumer.close()
    assert "principal=User:py-app" in b.log_text().replace('"', "")
