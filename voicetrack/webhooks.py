"""The completion webhook's contract: its JSON payload and its HMAC-SHA256 signature.

Shared by the operator (which signs and sends, `voicetrack_operator.services.webhooks`)
and by receivers written in Python (which verify with `verify_signature`); docs/webhooks.md
states the same for receivers in any language.

Signature scheme (the shape of Stripe's `Stripe-Signature` `t=…,v1=…` and GitHub's
`X-Hub-Signature-256: sha256=<hex>`): for each attempt the sender takes the current Unix
time in seconds `t`, and the exact bytes of the request body `body`, and sends

    X-Voicetrack-Timestamp: <t>
    X-Voicetrack-Signature: v1=<hex(HMAC-SHA256(key, f"{t}." + body))>

`key` is the bytes of the Secret's data key, as stored (no trimming). A receiver recomputes
the HMAC over the raw body it received (before any JSON parsing), compares in constant time
(`hmac.compare_digest`), and refuses a timestamp further than a tolerance (300 s by default,
Stripe's) from its own clock, so a captured request cannot be replayed later. The signature
header may carry several comma-separated `v1=` values (room for key rotation); one match is
enough. HMAC is RFC 2104; SHA-256 is FIPS 180-4.

Dedupe on the body's `delivery_id` (`verify_delivery` returns it), never on the
`X-Voicetrack-Delivery` header alone: the header is outside the MAC, so a captured request
replayed within the tolerance with a new header value would pass a header-keyed dedupe; the
body's id is signed. The header stays as a convenience and must equal the body's id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from voicetrack.errors import InvalidInputError

EVENT_MEETING_ENDED = "meeting.ended"
"""The one event so far: a meeting ended (its state says completed, failed or cancelled)."""
PAYLOAD_VERSION = 1

HEADER_DELIVERY = "X-Voicetrack-Delivery"
"""The delivery id (16 characters), the same on every attempt of one delivery, as the
body's signed `delivery_id`: receivers dedupe on the body's (delivery is at least once);
this unsigned copy is for logs and routing."""
HEADER_EVENT = "X-Voicetrack-Event"
HEADER_ATTEMPT = "X-Voicetrack-Attempt"
"""1 for the first attempt, then 2, 3, …"""
HEADER_TIMESTAMP = "X-Voicetrack-Timestamp"
"""Unix time in seconds (decimal) when the attempt was signed."""
HEADER_SIGNATURE = "X-Voicetrack-Signature"
"""`v1=<64 lowercase hex digits>`; see the module docstring."""
SIGNATURE_SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300
"""How far (s) a receiver accepts the timestamp from its own clock, either way."""
MIN_KEY_BYTES = 16
"""The shortest signing key the sender accepts (bytes): shorter keys are an attempt error."""

MeetingEndState = Literal["completed", "failed", "cancelled"]


class WebhookSignatureError(InvalidInputError):
    """A request whose signature or timestamp does not verify; the message says which."""


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PresignedLink(_Payload):
    """A short-lived GET link (`voicetrack.objectstore.PresignedUrl.as_dict()`): valid
    `expires_in_seconds` from when the attempt was sent."""

    url: str
    expires_in_seconds: int = Field(ge=1)
    format: str


class WebhookTrack(_Payload):
    """One final track: a speaker's (`user_id` set) or the mix (`kind` mixed, `user_id`
    None). `bytes` is its size, `duration_ms` its length in ms, `sha256` of its bytes (hex);
    `key` the object key in the bucket; `link` is minted at each attempt."""

    kind: Literal["speaker", "mixed"]
    user_id: str | None
    format: str
    sha256: str
    duration_ms: int = Field(ge=0)
    bytes: int = Field(ge=0)
    key: str
    link: PresignedLink | None = None


class WebhookPayload(_Payload):
    """The JSON body of `meeting.ended`. Times are RFC 3339 UTC. `failure_reason` is set
    when `state` is failed or cancelled. `delivery_id`, `attempt` and `sent_at` (and each
    track's `link`) are filled at each attempt; the rest is fixed when the delivery is
    queued."""

    version: int = PAYLOAD_VERSION
    event: str = EVENT_MEETING_ENDED
    delivery_id: str | None = None
    attempt: int | None = None
    sent_at: datetime | None = None
    meeting_id: str
    guild_id: str
    channel_id: str
    namespace: str
    session: str
    started_at: datetime
    ended_at: datetime
    state: MeetingEndState
    failure_reason: str | None = None
    tracks: list[WebhookTrack] = Field(default_factory=list)


def sign(key: bytes, timestamp: int, body: bytes) -> str:
    """The `X-Voicetrack-Signature` value for `body` (the exact bytes sent) signed at
    `timestamp` (Unix seconds): `v1=<hex HMAC-SHA256(key, b"<timestamp>." + body)>`."""
    mac = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SIGNATURE_SCHEME}={mac.hexdigest()}"


def verify_signature(key: bytes, body: bytes, timestamp: str | None, signature: str | None,
                     now: float, tolerance_s: float = DEFAULT_TOLERANCE_S) -> int:
    """Check a received request: `timestamp` and `signature` are the raw header values,
    `body` the raw request body, `now` the receiver's Unix time (s). Returns the timestamp.
    Raises WebhookSignatureError naming the header when one is missing or malformed, when
    the timestamp is more than `tolerance_s` seconds from `now` (a replay), or when no `v1`
    signature matches."""
    if not timestamp:
        raise WebhookSignatureError(f"{HEADER_TIMESTAMP}: missing")
    try:
        ts = int(timestamp)
    except ValueError:
        raise WebhookSignatureError(f"{HEADER_TIMESTAMP}: not an integer: {timestamp!r}"
                                    ) from None
    if abs(now - ts) > tolerance_s:
        raise WebhookSignatureError(f"{HEADER_TIMESTAMP}: {ts} is {now - ts:+.0f} s from now, "
                                    f"outside ±{tolerance_s:.0f} s (replayed or clock skew)")
    if not signature:
        raise WebhookSignatureError(f"{HEADER_SIGNATURE}: missing")
    expected = sign(key, ts, body)
    offered = [s.strip() for s in signature.split(",") if s.strip().startswith("v1=")]
    if not offered:
        raise WebhookSignatureError(f"{HEADER_SIGNATURE}: no v1= signature in {signature!r}")
    if not any(hmac.compare_digest(expected, s) for s in offered):
        raise WebhookSignatureError(f"{HEADER_SIGNATURE}: does not match the body")
    return ts


def verify_delivery(key: bytes, body: bytes, headers: Mapping[str, str], now: float,
                    tolerance_s: float = DEFAULT_TOLERANCE_S) -> str:
    """Check a received request as `verify_signature` does (`headers`: the request's
    headers, looked up by their exact names, so pass a case-insensitive mapping such as
    aiohttp's or Flask's) and return the delivery id to dedupe on: the signed body's
    `delivery_id`. Raises WebhookSignatureError when the signature or timestamp does not
    verify, when the body is not a JSON object with a `delivery_id` string, or when the
    `X-Voicetrack-Delivery` header is present and differs from it (a replay with a
    rewritten header)."""
    verify_signature(key, body, headers.get(HEADER_TIMESTAMP), headers.get(HEADER_SIGNATURE),
                     now, tolerance_s)
    try:
        doc = json.loads(body)
    except ValueError:
        raise WebhookSignatureError("body: not JSON") from None
    delivery = doc.get("delivery_id") if isinstance(doc, dict) else None
    if not isinstance(delivery, str) or not delivery:
        raise WebhookSignatureError("body: no delivery_id")
    header = headers.get(HEADER_DELIVERY)
    if header is not None and header != delivery:
        raise WebhookSignatureError(f"{HEADER_DELIVERY}: {header!r} is not the signed body's "
                                    f"delivery_id {delivery!r} (rewritten or replayed)")
    return delivery
