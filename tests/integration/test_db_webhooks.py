"""The webhook outbox (`voicetrack.db.webhooks`, revision 0007) on real PostgreSQL and
SQLite: queueing is idempotent, a due delivery is claimed by one worker only, attempts are
kept in order, a finished delivery stays finished, and bad input names the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from voicetrack.db.service import RecordingService
from voicetrack.errors import InvalidInputError, NotFoundError

pytestmark = pytest.mark.integration

MEETING = "AbCdEfGhIjKlMnOp"
T0 = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)
REF = ("team-a", "hook-secret", "key")
LEASE = timedelta(seconds=30)


async def queue(svc: RecordingService, meeting: str = MEETING, url: str = "https://h/x"):
    return await svc.enqueue_webhook(meeting, "meeting.ended", url, REF, "voicetrack",
                                     json.dumps({"meeting_id": meeting}), T0)


async def test_queue_is_idempotent_and_keeps_no_secret(db_service: RecordingService) -> None:
    first = await queue(db_service)
    again = await queue(db_service, url="https://other/y")
    assert again.id == first.id and again.url == "https://h/x"
    assert (first.state, first.attempts, first.next_attempt_at) == ("pending", 0, T0)
    assert (first.secret_namespace, first.secret_name, first.secret_key) == REF
    assert [d.id for d in await db_service.get_webhook_deliveries_for_meeting(MEETING)] == [
        first.id]


async def test_a_due_delivery_is_claimed_once_until_its_lease_ends(
        db_service: RecordingService) -> None:
    d = await queue(db_service)
    assert await db_service.claim_due_webhooks(T0 - timedelta(seconds=1), LEASE) == []
    [taken] = await db_service.claim_due_webhooks(T0, LEASE)
    assert taken.id == d.id and taken.next_attempt_at == T0 + LEASE
    assert await db_service.claim_due_webhooks(T0 + timedelta(seconds=29), LEASE) == []
    [again] = await db_service.claim_due_webhooks(T0 + LEASE, LEASE)  # the worker died
    assert again.id == d.id


async def test_attempts_are_kept_and_the_last_one_decides(db_service: RecordingService) -> None:
    d = await queue(db_service)
    await db_service.claim_due_webhooks(T0, LEASE)
    retry_at = T0 + timedelta(seconds=10)
    after = await db_service.record_webhook_attempt(
        d.id, 1, attempted_at=T0, status_code=500, error="HTTP 500: boom", duration_ms=12,
        outcome="retry", next_attempt_at=retry_at)
    assert (after.state, after.attempts, after.next_attempt_at, after.last_error) == (
        "pending", 1, retry_at, "HTTP 500: boom")
    assert await db_service.claim_due_webhooks(retry_at - timedelta(seconds=1), LEASE) == []
    assert len(await db_service.claim_due_webhooks(retry_at, LEASE)) == 1
    done = await db_service.record_webhook_attempt(
        d.id, 2, attempted_at=retry_at, status_code=204, error=None, duration_ms=7,
        outcome="delivered")
    assert (done.state, done.attempts, done.finished_at) == ("delivered", 2, retry_at)
    # a repeated write (the worker retrying its SQL call) changes nothing
    same = await db_service.record_webhook_attempt(
        d.id, 2, attempted_at=retry_at, status_code=204, error=None, duration_ms=7,
        outcome="delivered")
    assert same.attempts == 2
    attempts = await db_service.get_webhook_attempts(d.id)
    assert [(a.number, a.status_code, a.error, a.duration_ms, a.outcome) for a in attempts] == [
        (1, 500, "HTTP 500: boom", 12, "retry"), (2, 204, None, 7, "delivered")]
    assert await db_service.claim_due_webhooks(T0 + timedelta(days=2), LEASE) == []


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"outcome": "maybe"}, "outcome"),
    ({"outcome": "retry"}, "next_attempt_at"),
    ({"duration_ms": -1}, "duration_ms"),
    ({"status_code": 1000}, "status_code"),
    ({"attempted_at": datetime(2026, 1, 1)}, "attempted_at"),  # naive
])
async def test_bad_attempt_names_the_field(db_service: RecordingService,
                                           kwargs: dict[str, object], field: str) -> None:
    d = await queue(db_service)
    attempt: dict[str, object] = {"attempted_at": T0, "status_code": 200, "error": None,
                                  "duration_ms": 1, "outcome": "delivered", **kwargs}
    with pytest.raises(InvalidInputError, match=field):
        await db_service.record_webhook_attempt(d.id, 1, **attempt)
    assert (await db_service.get_webhook_delivery(d.id)).attempts == 0


async def test_bad_queue_input_names_the_field(db_service: RecordingService) -> None:
    with pytest.raises(InvalidInputError, match="url"):
        await queue(db_service, url="http://user:pw@h/")
    with pytest.raises(InvalidInputError, match="meeting_id"):
        await queue(db_service, meeting="short")
    with pytest.raises(NotFoundError, match="delivery_id"):
        await db_service.get_webhook_delivery("0000000000000000")
