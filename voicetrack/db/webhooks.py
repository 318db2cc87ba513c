"""`WebhookStore`: the completion webhook's outbox, `webhook_deliveries` and
`webhook_attempts` (revision 0007).

A delivery is queued once per (meeting, event) when a meeting with a webhook ends; workers
take due deliveries with `claim_due_webhooks` (a conditional UPDATE that moves
`next_attempt_at` forward by a lease, so two workers sharing the database never send the
same attempt at once, and a worker that dies mid-attempt leaves the delivery due again when
the lease ends); each POST is written with `record_webhook_attempt`. The signing key is
never stored: only the Secret's namespace, name and key. Never commits (the caller's
transaction does); times are UTC.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import select, update

from voicetrack.db.base import StoreBase
from voicetrack.db.checks import check_count, check_id, check_opt_text, check_text, check_time
from voicetrack.db.checks import new_id as _new_id
from voicetrack.db.schema import WebhookAttempt, WebhookDelivery, WebhookDeliveryState
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.resources import WEBHOOK_URL_MAX, WEBHOOK_URL_PATTERN

__all__ = ["ATTEMPT_OUTCOMES", "WebhookAttempt", "WebhookDelivery", "WebhookDeliveryState",
           "WebhookStore"]

_URL_RE = re.compile(WEBHOOK_URL_PATTERN.replace("[:space:]", r"\s"))
ATTEMPT_OUTCOMES = ("delivered", "retry", "failed", "abandoned")
"""`webhook_attempts.outcome`: what the attempt led to."""
_FINAL = {"delivered": WebhookDeliveryState.DELIVERED, "failed": WebhookDeliveryState.FAILED,
          "abandoned": WebhookDeliveryState.ABANDONED}
ERROR_MAX = 2000
"""Errors are cut to this many characters before they are stored."""


class WebhookStore(StoreBase):
    """Webhook deliveries and attempts. Never commits; times are UTC."""

    async def enqueue_webhook(
        self,
        meeting_id: str,
        event: str,
        url: str,
        secret_ref: tuple[str, str, str],
        bucket: str,
        payload: str,
        now: datetime,
    ) -> WebhookDelivery:
        """Queue a delivery of `payload` (the JSON body without links) to `url`, due at
        `now`; `secret_ref` is (namespace, name, key) of the Secret holding the signing
        key. Idempotent: a second call for the same (meeting_id, event) returns the first
        delivery unchanged. InvalidInputError naming the field for bad input."""
        check_id("meeting_id", meeting_id)
        check_text("event", event, 64)
        check_text("url", url, WEBHOOK_URL_MAX)
        if not _URL_RE.match(url):
            raise InvalidInputError(f"url: {url!r} is not an http(s) URL without user info")
        ns, name, key = secret_ref
        check_text("secret_namespace", ns, 63)
        check_text("secret_name", name, 253)
        check_text("secret_key", key, 253)
        check_text("bucket", bucket, 63)
        check_text("payload", payload, 10_000_000)
        at = check_time("now", now)
        await self.session.execute(
            self._insert(WebhookDelivery)
            .values(id=_new_id(), meeting_id=meeting_id, event=event, url=url,
                    secret_namespace=ns, secret_name=name, secret_key=key, bucket=bucket,
                    payload=payload, state=WebhookDeliveryState.PENDING.value, created_at=at,
                    next_attempt_at=at, attempts=0)
            .on_conflict_do_nothing(index_elements=["meeting_id", "event"])
        )
        row = (await self.session.execute(
            select(WebhookDelivery)
            .where(WebhookDelivery.meeting_id == meeting_id, WebhookDelivery.event == event)
            .execution_options(populate_existing=True)
        )).scalar_one()
        return row

    async def get_webhook_delivery(self, delivery_id: str) -> WebhookDelivery:
        """The delivery; NotFoundError if there is none."""
        check_id("delivery_id", delivery_id)
        row = await self.session.get(WebhookDelivery, delivery_id, populate_existing=True)
        if row is None:
            raise NotFoundError(f"delivery_id: no webhook delivery {delivery_id!r}")
        return row

    async def get_webhook_deliveries_for_meeting(self, meeting_id: str
                                                 ) -> list[WebhookDelivery]:
        """The meeting's deliveries, oldest first."""
        check_id("meeting_id", meeting_id)
        rows = await self.session.execute(
            select(WebhookDelivery).where(WebhookDelivery.meeting_id == meeting_id)
            .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
            .execution_options(populate_existing=True))
        return list(rows.scalars())

    async def get_webhook_attempts(self, delivery_id: str) -> list[WebhookAttempt]:
        """The delivery's attempts in order (number 1, 2, …)."""
        check_id("delivery_id", delivery_id)
        rows = await self.session.execute(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
            .order_by(WebhookAttempt.number)
            .execution_options(populate_existing=True))
        return list(rows.scalars())

    async def claim_due_webhooks(self, now: datetime, lease: timedelta, limit: int = 16
                                 ) -> list[WebhookDelivery]:
        """Take up to `limit` pending deliveries due at `now` (oldest due first): each
        taken one's `next_attempt_at` moves to `now + lease`, by a conditional UPDATE that
        only one worker can win. Returns the taken deliveries."""
        at = check_time("now", now)
        check_count("limit", limit, 1000)
        if lease <= timedelta(0):
            raise InvalidInputError(f"lease: must be positive, got {lease}")
        due = (await self.session.execute(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.state == WebhookDeliveryState.PENDING.value,
                   WebhookDelivery.next_attempt_at <= at)
            .order_by(WebhookDelivery.next_attempt_at).limit(limit))).scalars().all()
        taken = []
        for delivery_id in due:
            result = await self.session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id,
                       WebhookDelivery.state == WebhookDeliveryState.PENDING.value,
                       WebhookDelivery.next_attempt_at <= at)
                .values(next_attempt_at=at + lease)
                .execution_options(synchronize_session=False))
            if getattr(result, "rowcount", 0) == 1:
                taken.append(await self.get_webhook_delivery(delivery_id))
        return taken

    async def record_webhook_attempt(
        self,
        delivery_id: str,
        number: int,
        *,
        attempted_at: datetime,
        status_code: int | None,
        error: str | None,
        duration_ms: int,
        outcome: str,
        next_attempt_at: datetime | None = None,
    ) -> WebhookDelivery:
        """Write attempt `number` (1-based) of the delivery and its effect: `retry` keeps it
        pending until `next_attempt_at` (required then); `delivered`, `failed` and
        `abandoned` end it. Writing the same attempt number twice changes nothing the second
        time (idempotent). NotFoundError for an unknown delivery; InvalidInputError naming
        the field for bad input."""
        delivery = await self.get_webhook_delivery(delivery_id)
        check_count("number", number, 1_000_000)
        if number < 1:
            raise InvalidInputError(f"number: attempts count from 1, got {number}")
        at = check_time("attempted_at", attempted_at)
        if status_code is not None:
            check_count("status_code", status_code, 999)
        message = check_opt_text("error", error[:ERROR_MAX] if error else None, ERROR_MAX)
        check_count("duration_ms", duration_ms)
        if outcome not in ATTEMPT_OUTCOMES:
            raise InvalidInputError(f"outcome: {outcome!r} is not one of "
                                    f"{', '.join(ATTEMPT_OUTCOMES)}")
        if outcome == "retry":
            nxt = check_time("next_attempt_at", next_attempt_at)
        elif next_attempt_at is not None:
            raise InvalidInputError(f"next_attempt_at: only a retry has one, not {outcome}")
        existing = (await self.session.execute(
            select(WebhookAttempt.id).where(WebhookAttempt.delivery_id == delivery_id,
                                            WebhookAttempt.number == number))).first()
        if existing is not None or delivery.state != WebhookDeliveryState.PENDING.value:
            return delivery
        self.session.add(WebhookAttempt(
            id=_new_id(), delivery_id=delivery_id, number=number, attempted_at=at,
            status_code=status_code, error=message, duration_ms=duration_ms, outcome=outcome))
        values: dict[str, object] = {"attempts": number, "last_error": message}
        if outcome == "retry":
            values["next_attempt_at"] = nxt
        else:
            values["state"] = _FINAL[outcome].value
            values["finished_at"] = at
        await self.session.flush()
        await self.session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values)
            .execution_options(synchronize_session=False))
        return await self.get_webhook_delivery(delivery_id)
