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
import random
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import aiohttp
from yarl import URL

from voicetrack.db.schema import WebhookDelivery
from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.objectstore import ObjectStore
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
    GuardedResolver,
    WebhookAddressRefused,
    redacted_url,
    url_refusal,
)
from voicetrack_operator.adapters.webhook_events import warn_session
from voicetrack_operator.context import Context
from voicetrack_operator.services.sessionview import SessionView, parse_time
from voicetrack_operator.services.webhook_settings import (
    WebhookSettings,
    answer_summary,
    backoff_delay,
    retry_after_s,
    retryable,
)

log = logging.getLogger(__name__)

USER_AGENT = "voicetrack-webhook/1"


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
            await self.warn_if_refused(s, hook.url)
        return delivery

    async def warn_if_refused(self, s: SessionView, url: str) -> None:
        """When the egress policy refuses `url` (`url_refusal`), say so on session `s`
        while it still exists: a Warning Event `WebhookRefused` and a log line (the
        delivery is queued all the same; its attempt fails for good with the reason).
        Never raises: an Event that cannot be posted is logged."""
        try:
            why = await url_refusal(self.settings.egress, url)
            if why is None:
                return
            message = f"spec.notify.webhook.url ({redacted_url(url)}): {why}"
            log.warning("webhook of session %s/%s will not be sent: %s", s.ref.namespace,
                        s.ref.name, message)
            await warn_session(self.ctx.kube, s.ref, "WebhookRefused", message,
                               datetime.now(UTC))
        except (InvalidInputError, TemporaryFailure) as err:
            log.warning("webhook refusal of session %s/%s not reported: %s", s.ref.namespace,
                        s.ref.name, err)

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

