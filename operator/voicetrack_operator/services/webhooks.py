"""The completion webhook (issue 13, docs/webhooks.md): queue a delivery in SQL when a
meeting with `spec.notify.webhook` ends, and deliver it from a worker that runs for the
operator's lifetime.

Delivery is at least once: a delivery is written to SQL (the outbox) before anything is
sent, so it survives operator restarts and the RecordingSession being gone; an attempt
whose answer could not be written to SQL is sent again when its lease ends. Receivers
dedupe on the signed body's `delivery_id`. Each attempt reads the signing key from the Secret,
mints fresh presigned links, signs the exact body (`voicetrack.webhooks.sign`) and POSTs
with a timeout. 2xx is delivered; 408, 429, 5xx, timeouts and connection errors (and an
attempt that could not be prepared: Secret missing, S3 down) are retried with exponential
backoff and jitter until 24 h after queueing, then the delivery is abandoned; any other
status (3xx: redirects are not followed; 4xx) fails it for good, and so does a host the
egress policy refuses (`adapters.webhook_egress`: internal addresses unless allow-listed).
Of a refusing answer only the status line is kept, never its body; the log shows the URL
redacted (`redacted_url`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http import HTTPStatus

import aiohttp
from yarl import URL

from voicetrack.db.schema import WebhookDelivery
from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.objectstore import MAX_PRESIGN_S, ObjectStore
from voicetrack.webhooks import (
    EVENT_MEETING_ENDED,
    HEADER_ATTEMPT,
    HEADER_DELIVERY,
    HEADER_EVENT,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    MIN_KEY_BYTES,
    PresignedLink,
    WebhookPayload,
    WebhookTrack,
    sign,
)
from voicetrack_operator.adapters.secrets import read_secret_key
from voicetrack_operator.adapters.webhook_egress import (
    ALLOW_CIDRS_ENV,
    ALLOW_HOSTS_ENV,
    EgressPolicy,
    GuardedResolver,
    WebhookAddressRefused,
    redacted_url,
)
from voicetrack_operator.context import Context
from voicetrack_operator.services.sessions import SessionView, parse_time

log = logging.getLogger(__name__)

USER_AGENT = "voicetrack-webhook/1"


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


@dataclass(frozen=True)
class AttemptResult:
    """What one POST got: the HTTP status (None when no answer came), the error (None on
    2xx), its duration (ms) and the receiver's Retry-After (s), if any."""

    status: int | None
    error: str | None
    duration_ms: int
    retry_after_s: float | None = None
    permanent: bool = False
    """No later attempt can do better (the URL cannot be requested at all): failed now."""


class WebhookService:
    """Queues and delivers completion webhooks. `enqueue_ended` is called by the deletion
    service; `run` is the worker loop started with the operator (`deliver_due` is one pass
    of it)."""

    def __init__(self, ctx: Context, settings: WebhookSettings | None = None,
                 rng: random.Random | None = None) -> None:
        self.ctx = ctx
        self._settings = settings
        self.rng = rng or random.Random()
        self._http: aiohttp.ClientSession | None = None
        self._stores: dict[str, ObjectStore] = {}

    @property
    def settings(self) -> WebhookSettings:
        """The delivery settings (read from the environment on first use, so queueing
        never depends on them)."""
        if self._settings is None:
            self._settings = WebhookSettings.from_env()
        return self._settings

    # ------------------------------------------------------------------ queueing

    async def enqueue_ended(self, s: SessionView, meeting_state: str,
                            recording_ids: list[str]) -> WebhookDelivery | None:
        """Queue the `meeting.ended` delivery of session `s` whose meeting ended with
        `meeting_state` (completed, failed, cancelled); None when it has no webhook.
        Idempotent (one delivery per meeting). Raises TemporaryFailure when SQL is down;
        a payload that cannot be built is logged and skipped (it must never hold up the
        session's deletion)."""
        if s.spec.notify is None:
            return None
        hook = s.spec.notify.webhook
        queued_at = datetime.now(UTC)
        try:
            payload = await self.payload_for(s, meeting_state, recording_ids)
            delivery = await self.ctx.db.enqueue_webhook(
                s.meeting_id, EVENT_MEETING_ENDED, hook.url,
                (s.ref.namespace, hook.secret_ref.name, hook.secret_ref.key),
                s.spec.storage.bucket, payload.model_dump_json(exclude_none=False),
                queued_at)
        except (InvalidInputError, ValueError) as err:  # ValueError: pydantic's
            log.error("webhook of session %s/%s not queued: %s", s.ref.namespace, s.ref.name,
                      err)
            return None
        if delivery.created_at == queued_at:  # this call queued it (not an earlier one)
            self.ctx.metrics.webhook_deliveries.labels("queued").inc()
            log.info("webhook %s queued for meeting %s (%s)", delivery.id, s.meeting_id,
                     meeting_state)
        return delivery

    async def payload_for(self, s: SessionView, meeting_state: str,
                          recording_ids: list[str]) -> WebhookPayload:
        """The payload without links: the meeting row (times, reason) and its recordings
        rows as SQL holds them after promotion."""
        now = datetime.now(UTC)
        try:
            meeting = await self.ctx.db.get_meeting(s.meeting_id)
            started, ended = meeting.started_at, meeting.ended_at or now
            reason = getattr(meeting, "failure_reason", None)
        except NotFoundError:
            started = parse_time(s.created) if s.created else now
            ended, reason = now, None
        if meeting_state != "completed" and not reason:
            reason = (s.status.get("recorderFailure")
                      or "the session ended before any audio was recorded")
        wanted = set(recording_ids)
        tracks = [WebhookTrack(kind="mixed" if r.kind == "mixed" else "speaker",
                               user_id=r.user_id, format=r.format or "mp3",
                               sha256=r.sha256 or "", duration_ms=r.duration_in_ms or 0,
                               bytes=r.bytes or 0, key=r.object_key or r.filename)
                  for r in await self.ctx.db.get_recordings_for_meeting(s.meeting_id)
                  if r.id in wanted]
        return WebhookPayload.model_validate({
            "meeting_id": s.meeting_id, "guild_id": s.spec.guild_id,
            "channel_id": s.spec.channel_id, "namespace": s.ref.namespace,
            "session": s.ref.name, "started_at": started, "ended_at": ended,
            "state": meeting_state, "tracks": tracks,
            "failure_reason": None if meeting_state == "completed" else reason})

    # ------------------------------------------------------------------ delivering

    async def run(self) -> None:
        """The worker: deliver what is due, sleep `poll_s` when nothing was, forever
        (cancel the task to stop). An error of one pass is logged and the loop goes on."""
        while True:
            try:
                done = await self.deliver_due()
            except Exception as err:  # the worker must never stop the operator
                log.warning("webhook pass failed: %s", err)
                done = 0
            if not done:
                await asyncio.sleep(self.settings.poll_s)

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def deliver_due(self) -> int:
        """One pass: claim the due deliveries and make one attempt of each, concurrently.
        Returns how many were attempted. TemporaryFailure when SQL is down."""
        claimed = await self.ctx.db.claim_due_webhooks(
            datetime.now(UTC), self.settings.lease, self.settings.batch)
        if claimed:
            for d, got in zip(claimed, await asyncio.gather(
                    *(self.attempt(d) for d in claimed), return_exceptions=True), strict=True):
                if isinstance(got, BaseException) and not isinstance(got, Exception):
                    raise got  # cancellation
                if isinstance(got, Exception):  # one delivery's fault: the others count
                    log.error("webhook %s attempt failed: %s", d.id, got)
        return len(claimed)

    async def attempt(self, d: WebhookDelivery) -> str:
        """One attempt of delivery `d` (claimed): prepare, POST, write the attempt and its
        outcome to SQL. Returns the outcome (delivered, retry, failed, abandoned)."""
        number = d.attempts + 1
        at = datetime.now(UTC)
        started = time.monotonic()
        try:
            key = await read_secret_key(self.ctx.kube, d.secret_namespace, d.secret_name,
                                        d.secret_key)
            if len(key) < MIN_KEY_BYTES:
                raise InvalidInputError(
                    f"Secret {d.secret_namespace}/{d.secret_name} key {d.secret_key!r} holds "
                    f"{len(key)} bytes; a signing key needs at least {MIN_KEY_BYTES}")
            body = await self.body(d, number, at)
        except (InvalidInputError, TemporaryFailure) as err:  # NotFoundError included
            result = AttemptResult(None, f"not sent: {err}",
                                   int((time.monotonic() - started) * 1000))
        else:
            try:
                result = await self.post(d, number, key, body)
            except Exception as err:  # a fault of ours must not retry the claim every lease
                log.exception("webhook %s attempt %d: unexpected error", d.id, number)
                result = AttemptResult(None, f"not sent: internal error: "
                                       f"{type(err).__name__}: {err}",
                                       int((time.monotonic() - started) * 1000))
        outcome, next_at = self.decide(d, number, result, datetime.now(UTC))
        try:
            await self.ctx.db.record_webhook_attempt(
                d.id, number, attempted_at=at, status_code=result.status, error=result.error,
                duration_ms=result.duration_ms, outcome=outcome, next_attempt_at=next_at)
        except (TemporaryFailure, InvalidInputError) as err:
            # the lease makes it due again: at least once, perhaps twice
            log.warning("webhook %s attempt %d not recorded: %s", d.id, number, err)
            return outcome
        self.ctx.metrics.webhook_attempts.labels(
            "success" if outcome == "delivered" else "error").inc()
        if outcome != "retry":
            self.ctx.metrics.webhook_deliveries.labels(outcome).inc()
        level = logging.INFO if outcome in ("delivered", "retry") else logging.WARNING
        log.log(level, "webhook %s attempt %d to %s: %s -> %s", d.id, number,
                redacted_url(d.url), result.status or result.error, outcome)
        return outcome

    def decide(self, d: WebhookDelivery, number: int, result: AttemptResult,
               now: datetime) -> tuple[str, datetime | None]:
        """The outcome of attempt `number` and, for a retry, when the next is due: 2xx
        delivered; retryable answers (`retryable`) retry after `backoff_delay` (at least
        the receiver's Retry-After, at most BACKOFF_MAX_SECONDS) unless that falls beyond
        the retry window (abandoned); anything else failed."""
        if result.status is not None and 200 <= result.status < 300:
            return "delivered", None
        if result.permanent or not retryable(result.status):
            return "failed", None
        delay = backoff_delay(number, self.settings.backoff_base_s,
                              self.settings.backoff_max_s, self.rng)
        if result.retry_after_s is not None:
            delay = max(delay, min(result.retry_after_s, self.settings.backoff_max_s))
        next_at = now + timedelta(seconds=delay)
        if next_at > d.created_at + self.settings.retry_window:
            return "abandoned", None
        return "retry", next_at

    async def body(self, d: WebhookDelivery, number: int, at: datetime) -> bytes:
        """The exact JSON body of attempt `number`: the queued payload with the delivery
        id, attempt, time sent and fresh presigned links. TemporaryFailure when S3 is
        down; InvalidInputError when the stored payload does not parse."""
        try:
            payload = WebhookPayload.model_validate_json(d.payload)
        except ValueError as err:
            raise InvalidInputError(f"stored payload unreadable: {err}") from err
        store = self._store(d.bucket)
        expiry = self.settings.link_expiry_s
        tracks = []
        for t in payload.tracks:
            link = await asyncio.to_thread(store.presigned_link, t.key, expiry)
            tracks.append(t.model_copy(update={"link": PresignedLink(**link.as_dict())}))
        doc = payload.model_copy(update={"delivery_id": d.id, "attempt": number,
                                         "sent_at": at, "tracks": tracks})
        return json.dumps(doc.model_dump(mode="json"), separators=(",", ":")).encode()

    async def post(self, d: WebhookDelivery, number: int, key: bytes, body: bytes
                   ) -> AttemptResult:
        """POST `body` signed with `key`; never raises for a network problem (it is the
        attempt's error). Redirects are not followed. A host the egress policy refuses
        (an IP literal here, a name in `GuardedResolver`) is a permanent error naming the
        address; of a non-2xx answer only the status line is kept (`answer_summary`)."""
        ts = int(time.time())
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   HEADER_DELIVERY: d.id, HEADER_EVENT: d.event, HEADER_ATTEMPT: str(number),
                   HEADER_TIMESTAMP: str(ts), HEADER_SIGNATURE: sign(key, ts, body)}
        started = time.monotonic()

        def took() -> int:
            return int((time.monotonic() - started) * 1000)

        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        try:
            self.settings.egress.check_url_host(URL(d.url).raw_host)
            async with self.http.post(d.url, data=body, headers=headers, timeout=timeout,
                                      allow_redirects=False) as resp:
                status = resp.status  # the body is never read: it is the receiver's
                wait = retry_after_s(resp.headers.get("Retry-After"))
                location = resp.headers.get("Location")
        except WebhookAddressRefused as err:
            return AttemptResult(None, f"not sent: {err}", took(), permanent=True)
        except TimeoutError:
            return AttemptResult(None, f"timed out after {self.settings.timeout_s:g} s",
                                 took())
        except aiohttp.InvalidURL:  # a ClientError and a ValueError; its text is the URL
            return AttemptResult(None, f"invalid URL: {redacted_url(d.url)}", took(),
                                 permanent=True)
        except aiohttp.ClientError as err:
            return AttemptResult(None, f"connection failed: {type(err).__name__}: {err}",
                                 took())
        except ValueError as err:  # e.g. UnicodeError: a host label the IDNA codec refuses
            return AttemptResult(None, f"invalid URL: {type(err).__name__}: {err}", took(),
                                 permanent=True)
        if 200 <= status < 300:
            return AttemptResult(status, None, took())
        return AttemptResult(status, answer_summary(status, location), took(), wait)

    @property
    def http(self) -> aiohttp.ClientSession:
        """The HTTP client (made on first use, in the running loop): it connects only to
        addresses the egress policy allows (`GuardedResolver`), keeps no cookies between
        deliveries (`DummyCookieJar`) and ignores proxy variables."""
        if self._http is None or self._http.closed:
            connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.settings.egress))
            self._http = aiohttp.ClientSession(connector=connector,
                                               cookie_jar=aiohttp.DummyCookieJar(),
                                               trust_env=False)
        return self._http

    def _store(self, bucket: str) -> ObjectStore:
        """An object store for `bucket` that signs links for the public S3 endpoint when
        one is configured (`S3Settings.public_endpoint`)."""
        if bucket not in self._stores:
            self._stores[bucket] = ObjectStore(replace(self.ctx.settings.s3, bucket=bucket))
        return self._stores[bucket]

