"""The completion webhook's delivery settings and retry arithmetic (services/webhooks.py
delivers): the VOICETRACK_WEBHOOK_* variables, the backoff with jitter, which answers are
retried, a Retry-After header's delay, and what is kept of a refusing answer."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus

from voicetrack.errors import InvalidInputError
from voicetrack.objectstore import MAX_PRESIGN_S
from voicetrack_operator.adapters.webhook_egress import (
    ALLOW_CIDRS_ENV,
    ALLOW_HOSTS_ENV,
    EgressPolicy,
    redacted_url,
)


def _env_float(name: str, default: float, low: float, high: float) -> float:
    raw = os.environ.get(f"VOICETRACK_{name}")
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInputError(f"VOICETRACK_{name}: not a number: {raw!r}") from None
    if not low <= value <= high:
        raise InvalidInputError(f"VOICETRACK_{name}: {value} is outside {low}..{high}")
    return value


@dataclass(frozen=True)
class WebhookSettings:
    """How the worker delivers; each field reads a VOICETRACK_WEBHOOK_* variable.

    BACKOFF_BASE_SECONDS (10): the first retry's delay (s), doubled per attempt;
    BACKOFF_MAX_SECONDS (3600): the longest delay between two attempts (s);
    RETRY_HOURS (24): how long after queueing a delivery is retried (h), then abandoned;
    TIMEOUT_SECONDS (10): one POST's total timeout (s);
    POLL_SECONDS (2): how often the worker looks for due deliveries (s);
    LINK_SECONDS (3600): validity of the presigned links in the payload (s, ≤ 7 days);
    ALLOW_CIDRS, ALLOW_HOSTS (empty): internal addresses and host names the webhook may
    reach after all (`EgressPolicy.parse`).
    Raises InvalidInputError naming the variable when one is not a number in range, or
    not a CIDR or host name."""

    backoff_base_s: float = 10.0
    backoff_max_s: float = 3600.0
    retry_window: timedelta = timedelta(hours=24)
    timeout_s: float = 10.0
    poll_s: float = 2.0
    link_expiry_s: int = 3600
    batch: int = 16
    egress: EgressPolicy = field(default_factory=EgressPolicy)

    @classmethod
    def from_env(cls) -> WebhookSettings:
        return cls(
            backoff_base_s=_env_float("WEBHOOK_BACKOFF_BASE_SECONDS", 10.0, 0.01, 86_400),
            backoff_max_s=_env_float("WEBHOOK_BACKOFF_MAX_SECONDS", 3600.0, 0.01, 86_400),
            retry_window=timedelta(hours=_env_float("WEBHOOK_RETRY_HOURS", 24.0, 0.0001,
                                                    24 * 30)),
            timeout_s=_env_float("WEBHOOK_TIMEOUT_SECONDS", 10.0, 0.1, 300),
            poll_s=_env_float("WEBHOOK_POLL_SECONDS", 2.0, 0.05, 3600),
            link_expiry_s=int(_env_float("WEBHOOK_LINK_SECONDS", 3600, 1, MAX_PRESIGN_S)),
            egress=EgressPolicy.parse(os.environ.get(ALLOW_CIDRS_ENV),
                                      os.environ.get(ALLOW_HOSTS_ENV)),
        )

    @property
    def lease(self) -> timedelta:
        """How long a claimed delivery is held by one worker: longer than one attempt
        (Secret read, link minting and the POST's timeout) can take."""
        return timedelta(seconds=2 * self.timeout_s + 5)


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """The wait (s) after failed attempt `attempt` (1-based): exponential, capped, with
    "equal jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015): half of
    `min(max_s, base_s * 2**(attempt-1))` plus a uniform random part of the other half, so
    receivers recovering from an outage are not hit by every sender at once."""
    ceiling = min(max_s, base_s * 2 ** min(attempt - 1, 60))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def retryable(status: int | None) -> bool:
    """Whether an answer (None: none came) is worth another attempt: none, 408, 429, 5xx."""
    return status is None or status in (408, 429) or status >= 500


def retry_after_s(value: str | None) -> float | None:
    """A `Retry-After` header's delay in seconds (RFC 9110 §10.2.3: delay-seconds or an
    HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        from email.utils import parsedate_to_datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def answer_summary(status: int, location: str | None) -> str:
    """The error kept for a non-2xx answer: `HTTP 403 Forbidden`, with the standard phrase
    (not the receiver's) and, for a redirect, where to (`redacted_url`); never the body,
    which may hold what an internal service answers (credentials)."""
    try:
        phrase = f" {HTTPStatus(status).phrase}"
    except ValueError:
        phrase = ""
    where = (f" (redirect to {redacted_url(location) if location else 'nowhere'}, "
             "not followed)") if 300 <= status < 400 else ""
    return f"HTTP {status}{phrase}{where}"
