"""The completion webhook's contract without servers: the signature a receiver verifies,
the notify model's refusals, and the retry arithmetic (backoff with jitter, which answers
are retried, Retry-After)."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from voicetrack.errors import InvalidInputError
from voicetrack.resources import SessionSpec
from voicetrack.webhooks import WebhookSignatureError, sign, verify_delivery, verify_signature
from voicetrack_operator.services.webhooks import (
    WebhookSettings,
    backoff_delay,
    retry_after_s,
    retryable,
)

pytestmark = pytest.mark.unit

KEY = b"0123456789abcdef-signing-key"
BODY = b'{"event":"meeting.ended","meeting_id":"AbCdEfGhIjKlMnOp"}'
T = 1_764_680_000


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    """The documented recipe, computed independently of `sign`."""
    expected = hmac.new(KEY, f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(KEY, T, BODY) == f"v1={expected}"
    assert verify_signature(KEY, BODY, str(T), sign(KEY, T, BODY), now=T + 5) == T


@pytest.mark.parametrize(("body", "key", "ts", "sig", "now", "says"), [
    (BODY + b" ", KEY, str(T), None, T, "does not match"),
    (BODY, b"another-key-of-16-bytes", str(T), None, T, "does not match"),
    (BODY, KEY, str(T), None, T + 301, "replayed"),
    (BODY, KEY, str(T), None, T - 301, "replayed"),
    (BODY, KEY, None, None, T, "X-Voicetrack-Timestamp: missing"),
    (BODY, KEY, "soon", None, T, "not an integer"),
    (BODY, KEY, str(T), "", T, "X-Voicetrack-Signature: missing"),
    (BODY, KEY, str(T), "sha256=abc", T, "no v1="),
])
def test_verification_refuses(body: bytes, key: bytes, ts: str | None, sig: str | None,
                              now: int, says: str) -> None:
    signature = sign(KEY, T, BODY) if sig is None else sig
    with pytest.raises(WebhookSignatureError, match=says):
        verify_signature(key, body, ts, signature, now=now)


def test_a_signed_timestamp_cannot_be_swapped() -> None:
    """The timestamp is inside the MAC: a fresh timestamp on an old signature fails."""
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify_signature(KEY, BODY, str(T + 100), sign(KEY, T, BODY), now=T + 100)


def test_one_of_several_signatures_is_enough() -> None:
    both = f"v1={'0' * 64},{sign(KEY, T, BODY)}"
    assert verify_signature(KEY, BODY, str(T), both, now=T) == T


def spec(webhook: Any) -> dict[str, Any]:
    return {"guildId": "123456789012345678", "channelId": "223456789012345678",
            "notify": {"webhook": webhook}}


GOOD = {"url": "https://hooks.example.com/voicetrack?x=1", "secretRef": {"name": "hook",
                                                                        "key": "hmac.key"}}


def test_good_webhook_parses() -> None:
    hook = SessionSpec.model_validate(spec(GOOD)).notify
    assert hook is not None and hook.webhook.secret_ref.key == "hmac.key"
    assert SessionSpec.model_validate(spec(GOOD)).to_api()["notify"] == {"webhook": GOOD}


@pytest.mark.parametrize(("change", "field"), [
    ({"url": "ftp://h/x"}, "notify.webhook.url"),
    ({"url": "http://user:pw@h/x"}, "notify.webhook.url"),
    ({"url": "http://h/a b"}, "notify.webhook.url"),
    ({"url": "http:///x"}, "notify.webhook.url"),
    ({"url": "http://h:99999/"}, "notify.webhook.url"),
    ({"url": "https://h/" + "p" * 2048}, "notify.webhook.url"),
    ({"secretRef": {"name": "Bad_Name", "key": "k"}}, "notify.webhook.secretRef.name"),
    ({"secretRef": {"name": "s", "key": "a/b"}}, "notify.webhook.secretRef.key"),
    ({"secretRef": {"name": "s"}}, "notify.webhook.secretRef.key"),
    ({"extra": 1}, "notify.webhook.extra"),
])
def test_bad_webhook_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        SessionSpec.model_validate(spec({**GOOD, **change}))
    assert field in str(err.value).replace("\n", ".").replace(" ", "")


def test_backoff_doubles_within_its_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(100.0, 1.0 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, 1.0, 100.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not constant
    assert backoff_delay(500, 1.0, 100.0, rng) <= 100.0


@pytest.mark.parametrize(("status", "again"), [
    (None, True), (408, True), (429, True), (500, True), (503, True), (400, False),
    (401, False), (404, False), (410, False), (301, False), (200, False)])
def test_which_answers_are_retried(status: int | None, again: bool) -> None:
    assert retryable(status) is again


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after_s("120") == 120.0
    when = (datetime.now(UTC) + timedelta(seconds=60)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    value = retry_after_s(when)
    assert value is not None and 50 <= value <= 61
    assert retry_after_s("soon") is None and retry_after_s(None) is None


def test_settings_read_the_environment_and_name_a_bad_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICETRACK_WEBHOOK_BACKOFF_BASE_SECONDS", "0.2")
    monkeypatch.setenv("VOICETRACK_WEBHOOK_RETRY_HOURS", "0.5")
    s = WebhookSettings.from_env()
    assert s.backoff_base_s == 0.2 and s.retry_window == timedelta(minutes=30)
    monkeypatch.setenv("VOICETRACK_WEBHOOK_TIMEOUT_SECONDS", "fast")
    with pytest.raises(InvalidInputError, match="VOICETRACK_WEBHOOK_TIMEOUT_SECONDS"):
        WebhookSettings.from_env()


DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"


def doc_snippet(lang: str) -> str:
    """The first fenced `lang` block of docs/webhooks.md that defines `verify`."""
    blocks = re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), re.S)
    return next(b for b in blocks if "verify" in b)


def test_the_documented_python_receiver_verifies_what_we_send() -> None:
    scope: dict[str, Any] = {}
    exec(doc_snippet("python"), scope)
    now = int(time.time())
    assert scope["verify"](KEY, BODY, str(now), sign(KEY, now, BODY)) is True
    assert scope["verify"](KEY, BODY + b"x", str(now), sign(KEY, now, BODY)) is False
    assert scope["verify"](KEY, BODY, str(now - 600), sign(KEY, now - 600, BODY)) is False


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_documented_node_receiver_verifies_what_we_send() -> None:
    now = int(time.time())
    cases = [(BODY, now, sign(KEY, now, BODY), True),
             (BODY + b"x", now, sign(KEY, now, BODY), False),
             (BODY, now - 600, sign(KEY, now - 600, BODY), False)]
    calls = "\n".join(
        f"console.log(verify(Buffer.from({json.dumps(KEY.decode())}), "
        f"Buffer.from({json.dumps(body.decode())}), {json.dumps(str(ts))}, "
        f"{json.dumps(sig)}));" for body, ts, sig, _ in cases)
    out = subprocess.run(["node", "-e", doc_snippet("js") + "\n" + calls], capture_output=True,
                         text=True, timeout=30, check=True).stdout.split()
    assert out == [str(ok).lower() for *_, ok in cases]


def signed_request(body: bytes, delivery: str) -> dict[str, str]:
    now = int(time.time())
    return {"X-Voicetrack-Timestamp": str(now), "X-Voicetrack-Signature": sign(KEY, now, body),
            "X-Voicetrack-Delivery": delivery}


def test_the_documented_receiver_dedupes_a_replay_with_a_rewritten_header() -> None:
    """Review: the docs said to dedupe on `X-Voicetrack-Delivery`, which is not signed; a
    request captured and replayed within the 5 minutes with a new header value was
    processed again. The documented receiver dedupes on the signed body's id."""
    scope: dict[str, Any] = {}
    exec(doc_snippet("python"), scope)
    body = json.dumps({"delivery_id": "5f0c2a9e81d34b77", "event": "meeting.ended"}).encode()
    headers = signed_request(body, "5f0c2a9e81d34b77")
    seen: set[str] = set()

    def receive(h: dict[str, str], b: bytes) -> str:
        delivery = scope["delivery_id"](KEY, b, h)
        if delivery is None:
            return "refused"
        if delivery in seen:
            return "duplicate"
        seen.add(delivery)
        return "processed"

    assert receive(headers, body) == "processed"
    assert receive(headers, body) == "duplicate"
    assert receive({**headers, "X-Voicetrack-Delivery": "aaaaaaaaaaaaaaaa"}, body) == "duplicate"
    forged = body.replace(b"5f0c2a9e81d34b77", b"aaaaaaaaaaaaaaaa")
    assert receive(headers, forged) == "refused"


def test_verify_delivery_returns_the_signed_id_and_refuses_a_rewritten_header() -> None:
    body = json.dumps({"delivery_id": "5f0c2a9e81d34b77", "event": "meeting.ended"}).encode()
    headers = signed_request(body, "5f0c2a9e81d34b77")
    assert verify_delivery(KEY, body, headers, time.time()) == "5f0c2a9e81d34b77"
    no_header = {k: v for k, v in headers.items() if k != "X-Voicetrack-Delivery"}
    assert verify_delivery(KEY, body, no_header, time.time()) == "5f0c2a9e81d34b77"
    with pytest.raises(WebhookSignatureError, match="not the signed body's delivery_id"):
        verify_delivery(KEY, body, {**headers, "X-Voicetrack-Delivery": "aaaaaaaaaaaaaaaa"},
                        time.time())
    with pytest.raises(WebhookSignatureError, match="no delivery_id"):
        verify_delivery(KEY, BODY, signed_request(BODY, "x"), time.time())
    with pytest.raises(WebhookSignatureError, match="outside"):
        verify_delivery(KEY, body, headers, time.time() + 600)
