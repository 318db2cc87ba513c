"""The completion webhook's delivery against real components: a receiver on a real socket
(`tests/webhook_receiver.py`, verifying signatures as docs/webhooks.md says), the local API
server holding the signing Secret, SeaweedFS for the links, SQLite for the outbox. The
worker is `WebhookService.run` in the test's loop (with short backoff); the last test runs
it in real operator processes and restarts one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import secrets
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.cluster import Kubectl
from tests.webhook_receiver import Receiver
from voicetrack.db import migrate
from voicetrack.db.schema import WebhookDelivery
from voicetrack.db.service import RecordingService
from voicetrack.kubeclient import load_api_client
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack.webhooks import EVENT_MEETING_ENDED, WebhookPayload, WebhookTrack
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.stack import OperatorProcess
from voicetrack_operator.adapters.kube import KubeAdapter
from voicetrack_operator.adapters.webhook_egress import EgressPolicy
from voicetrack_operator.builders import PodSettings
from voicetrack_operator.context import Context, OperatorSettings
from voicetrack_operator.services.webhooks import WebhookService, WebhookSettings

pytestmark = pytest.mark.e2e

KEY = b"test-signing-key-" + secrets.token_hex(8).encode()
LOOPBACK = EgressPolicy.parse("127.0.0.0/8", None)
"""The receiver is on 127.0.0.1: refused unless allow-listed (tests/e2e/test_webhook_egress.py)."""
FAST = WebhookSettings(backoff_base_s=0.2, backoff_max_s=1.0, timeout_s=1.0, poll_s=0.05,
                       egress=LOOPBACK)
USER = "400000000000000077"


def make_secret(kubectl: Kubectl, ns: str, name: str = "hook", key: bytes = KEY) -> None:
    kubectl("-n", ns, "create", "secret", "generic", name,
            f"--from-literal=hmac={key.decode()}")


@contextlib.asynccontextmanager
async def context_on(url: str, cluster: LocalCluster, s3: S3Settings
                     ) -> AsyncIterator[Context]:
    """A real operator context: admin API client, the database `url` at its head, the S3
    server; closed after."""
    await asyncio.to_thread(migrate.upgrade_head, url)
    settings = OperatorSettings(database_url=url, s3=s3,
                                pods=PodSettings(s3_endpoint=s3.endpoint),
                                kubeconfig=str(cluster.kubeconfig))
    c = Context(settings=settings, kube=KubeAdapter(load_api_client(str(cluster.kubeconfig))),
                db=RecordingService.from_url(url))
    try:
        yield c
    finally:
        await c.db.close()
        c.kube.api.close()


@pytest.fixture
async def ctx(cluster: LocalCluster, s3_server: S3Settings,
              tmp_path: Path) -> AsyncIterator[Context]:
    """`context_on` SQLite."""
    async with context_on(f"sqlite+aiosqlite:///{tmp_path / 'voicetrack.db'}", cluster,
                          s3_server) as c:
        yield c


@pytest.fixture
def receiver() -> Any:
    r = Receiver(KEY).start()
    yield r
    r.stop()


def track_in_s3(s3: S3Settings, ns: str) -> WebhookTrack:
    """A final track object in S3, as promotion leaves it."""
    data = secrets.token_bytes(3000)
    key = f"wh-test/{ns}/final/{USER}.mp3"
    store = ObjectStore(s3)
    store.ensure_bucket()
    store.put_bytes(key, data, "audio/mpeg")
    return WebhookTrack(kind="speaker", user_id=USER, format="mp3",
                        sha256=hashlib.sha256(data).hexdigest(), duration_ms=1234,
                        bytes=len(data), key=key)


async def queue(db: RecordingService, s3: S3Settings, ns: str, url: str,
                secret: str = "hook", **payload: Any) -> WebhookDelivery:
    meeting = secrets.token_hex(8)
    doc = WebhookPayload(
        meeting_id=meeting, guild_id="300000000000000001", channel_id="300000000000000002",
        namespace=ns, session="standup", started_at=datetime(2026, 12, 2, 15, tzinfo=UTC),
        ended_at=datetime(2026, 12, 2, 15, 5, tzinfo=UTC), state="completed",
        tracks=[track_in_s3(s3, ns)], **payload)
    return await db.enqueue_webhook(meeting, EVENT_MEETING_ENDED, url, (ns, secret, "hmac"),
                                    s3.bucket, doc.model_dump_json(), datetime.now(UTC))


async def until(what: str, check: Callable[[], Awaitable[Any]], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def run_until_final(svc: WebhookService, db: RecordingService, delivery_id: str,
                          timeout_s: float = 20) -> WebhookDelivery:
    """Run the worker until the delivery is no longer pending; returns it."""
    task = asyncio.create_task(svc.run())
    try:
        async def final() -> WebhookDelivery | None:
            d = await db.get_webhook_delivery(delivery_id)
            return d if d.state != "pending" else None

        return await until(f"delivery {delivery_id} to finish", final, timeout_s)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await svc.close()


async def test_signed_payload_with_a_link_to_the_track(
        ctx: Context, kubectl: Kubectl, namespace: str, receiver: Receiver,
        s3_server: S3Settings) -> None:
    make_secret(kubectl, namespace)
    d = await queue(ctx.db, s3_server, namespace, receiver.url)
    done = await run_until_final(WebhookService(ctx, FAST), ctx.db, d.id)
    assert (done.state, done.attempts) == ("delivered", 1)
    [got] = receiver.requests()
    assert got.verified, got.error
    assert got.headers["X-Voicetrack-Delivery"] == d.id
    assert got.headers["X-Voicetrack-Event"] == "meeting.ended"
    assert got.headers["X-Voicetrack-Attempt"] == "1"
    assert got.headers["Content-Type"] == "application/json"
    body = got.json
    assert (body["delivery_id"], body["attempt"], body["state"], body["namespace"]) == (
        d.id, 1, "completed", namespace)
    [track] = body["tracks"]
    assert track["link"]["expires_in_seconds"] == FAST.link_expiry_s
    with urllib.request.urlopen(track["link"]["url"], timeout=10) as r:
        data = r.read()
    assert hashlib.sha256(data).hexdigest() == track["sha256"] and len(data) == track["bytes"]
    [attempt] = await ctx.db.get_webhook_attempts(d.id)
    assert (attempt.number, attempt.status_code, attempt.error, attempt.outcome) == (
        1, 200, None, "delivered")
    assert 0 <= attempt.duration_ms < 5000


async def test_a_500_then_200_is_retried_and_delivered(
        ctx: Context, kubectl: Kubectl, namespace: str, receiver: Receiver,
        s3_server: S3Settings) -> None:
    make_secret(kubectl, namespace)
    receiver.answers((500, 0), (503, 0))
    d = await queue(ctx.db, s3_server, namespace, receiver.url)
    done = await run_until_final(WebhookService(ctx, FAST), ctx.db, d.id)
    assert (done.state, done.attempts) == ("delivered", 3)
    attempts = await ctx.db.get_webhook_attempts(d.id)
    assert [(a.number, a.status_code, a.outcome) for a in attempts] == [
        (1, 500, "retry"), (2, 503, "retry"), (3, 200, "delivered")]
    assert "HTTP 500" in (attempts[0].error or "")
    got = receiver.requests()
    assert all(r.verified for r in got)
    assert {r.headers["X-Voicetrack-Delivery"] for r in got} == {d.id}  # one id to dedupe
    assert [r.headers["X-Voicetrack-Attempt"] for r in got] == ["1", "2", "3"]
    # backoff: the waits grow (base 0.2 s, equal jitter: 0.1..0.2 s then 0.2..0.4 s)
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19, gaps


async def test_a_timeout_is_retried(ctx: Context, kubectl: Kubectl, namespace: str,
                                    receiver: Receiver, s3_server: S3Settings) -> None:
    make_secret(kubectl, namespace)
    receiver.answers((200, 3.0))  # answers after the 1 s timeout
    d = await queue(ctx.db, s3_server, namespace, receiver.url)
    done = await run_until_final(WebhookService(ctx, FAST), ctx.db, d.id)
    assert (done.state, done.attempts) == ("delivered", 2)
    first, second = await ctx.db.get_webhook_attempts(d.id)
    assert (first.status_code, first.outcome) == (None, "retry")
    assert "timed out after 1 s" in (first.error or "") and first.duration_ms >= 900
    assert (second.status_code, second.outcome) == (200, "delivered")


async def test_a_404_fails_for_good_and_429_is_retried(
        ctx: Context, kubectl: Kubectl, namespace: str, receiver: Receiver,
        s3_server: S3Settings) -> None:
    make_secret(kubectl, namespace)
    receiver.answers((429, 0), (404, 0))
    d = await queue(ctx.db, s3_server, namespace, receiver.url)
    done = await run_until_final(WebhookService(ctx, FAST), ctx.db, d.id)
    assert (done.state, done.attempts) == ("failed", 2)
    attempts = await ctx.db.get_webhook_attempts(d.id)
    assert [(a.status_code, a.outcome) for a in attempts] == [(429, "retry"), (404, "failed")]
    await asyncio.sleep(0.5)
    assert len(receiver.requests()) == 2  # nothing more after a permanent failure


@pytest.mark.parametrize("url", ["http://hooks..example.com/x",
                                 f"https://{'a' * 64}.example.com/x"])
async def test_a_url_that_cannot_be_requested_fails_at_its_first_attempt(
        ctx: Context, kubectl: Kubectl, namespace: str, s3_server: S3Settings,
        url: str) -> None:
    """Such URLs pass the spec's pattern; aiohttp raises a ValueError (IDNA) for them.
    Before, it escaped the attempt: none was recorded and the delivery was claimed again
    at every lease's end, for ever (review)."""
    make_secret(kubectl, namespace)
    d = await queue(ctx.db, s3_server, namespace, url)
    done = await run_until_final(WebhookService(ctx, FAST), ctx.db, d.id, timeout_s=10)
    assert (done.state, done.attempts) == ("failed", 1)
    [attempt] = await ctx.db.get_webhook_attempts(d.id)
    assert attempt.outcome == "failed" and (attempt.error or "").startswith("invalid URL")


async def test_an_answers_body_is_never_recorded_on_postgresql(
        cluster: LocalCluster, kubectl: Kubectl, namespace: str, receiver: Receiver,
        s3_server: S3Settings, fresh_postgres_url: str) -> None:
    """Of a refusing answer only the status line is kept: an internal service's error page
    (credentials, review) must not land in SQL or the log. Before that, a body with NUL
    (refused by PostgreSQL in text) kept the attempt from being recorded (review)."""
    async with context_on(fresh_postgres_url, cluster, s3_server) as c:
        make_secret(kubectl, namespace)
        receiver.answers((500, 0, b'bad\x00body {"SecretAccessKey":"internal-secret"}'))
        d = await queue(c.db, s3_server, namespace, receiver.url)
        done = await run_until_final(WebhookService(c, FAST), c.db, d.id)
        assert (done.state, done.attempts) == ("delivered", 2)
        first, second = await c.db.get_webhook_attempts(d.id)
        assert second.outcome == "delivered"
        assert (first.outcome, first.error) == ("retry", "HTTP 500 Internal Server Error")
        assert len(receiver.requests()) == 2


async def test_a_missing_secret_is_an_attempt_error_that_is_retried(
        ctx: Context, kubectl: Kubectl, namespace: str, receiver: Receiver,
        s3_server: S3Settings) -> None:
    d = await queue(ctx.db, s3_server, namespace, receiver.url, secret="later")
    svc = WebhookService(ctx, FAST)
    task = asyncio.create_task(svc.run())
    try:
        async def tried() -> bool:
            return (await ctx.db.get_webhook_delivery(d.id)).attempts >= 2

        await until("two attempts without the Secret", tried, 20)
        assert receiver.requests() == []  # nothing is sent unsigned
        make_secret(kubectl, namespace, "later")

        async def delivered() -> bool:
            return (await ctx.db.get_webhook_delivery(d.id)).state == "delivered"

        await until("delivery once the Secret exists", delivered, 20)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await svc.close()
    attempts = await ctx.db.get_webhook_attempts(d.id)
    assert all(a.status_code is None and "later" in (a.error or "") and a.outcome == "retry"
               for a in attempts[:-1])
    assert attempts[-1].status_code == 200
    [got] = receiver.requests()
    assert got.verified


async def test_a_short_key_is_refused_and_the_window_ends_in_abandoned(
        ctx: Context, kubectl: Kubectl, namespace: str, receiver: Receiver,
        s3_server: S3Settings) -> None:
    make_secret(kubectl, namespace, "weak", b"short")
    d = await queue(ctx.db, s3_server, namespace, receiver.url, secret="weak")
    window = WebhookSettings(backoff_base_s=0.2, backoff_max_s=0.4, timeout_s=1.0,
                             poll_s=0.05, retry_window=timedelta(seconds=2))
    done = await run_until_final(WebhookService(ctx, window), ctx.db, d.id)
    assert done.state == "abandoned" and done.attempts >= 2
    assert "at least 16" in (done.last_error or "")
    assert receiver.requests() == []
    assert (await ctx.db.get_webhook_attempts(d.id))[-1].outcome == "abandoned"


def test_a_delivery_queued_before_an_operator_restart_is_delivered_after_it(
        cluster: LocalCluster, kubectl: Kubectl, namespace: str, receiver: Receiver,
        s3_server: S3Settings, tmp_path: Path) -> None:
    """Real operator processes on one SQLite file: the first one tries while the receiver
    answers 503 and is stopped; the delivery waits in SQL; a new operator process, started
    once the receiver is well, delivers it with the next attempt number."""
    make_secret(kubectl, namespace)
    url = f"sqlite+aiosqlite:///{tmp_path / 'voicetrack.db'}"
    migrate.upgrade_head(url)
    receiver.answers(*[(503, 0)] * 50)

    def db(fn: Callable[[RecordingService], Awaitable[Any]]) -> Any:
        async def go() -> Any:
            svc = RecordingService.from_url(url)
            try:
                return await fn(svc)
            finally:
                await svc.close()
        return asyncio.run(go())

    env = {"VOICETRACK_NAMESPACES": f"no-such-{secrets.token_hex(3)}",  # serve no sessions
           "VOICETRACK_WEBHOOK_BACKOFF_BASE_SECONDS": "1",
           "VOICETRACK_WEBHOOK_TIMEOUT_SECONDS": "1",
           "VOICETRACK_WEBHOOK_POLL_SECONDS": "0.2",
           "VOICETRACK_WEBHOOK_ALLOW_CIDRS": "127.0.0.1/32"}  # the receiver's address
    op = OperatorProcess(cluster.kubeconfig, s3_server, url, tmp_path / "op1.log", env)
    op.start()
    try:
        d = db(lambda svc: queue(svc, s3_server, namespace, receiver.url))
        deadline = time.monotonic() + 30
        while not receiver.requests() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        op.stop()
    before = db(lambda svc: svc.get_webhook_delivery(d.id))
    assert before.state == "pending" and before.attempts >= 1, op.tail(30)
    receiver.answers()  # well again: 200 from now on
    op2 = OperatorProcess(cluster.kubeconfig, s3_server, url, tmp_path / "op2.log", env)
    op2.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if db(lambda svc: svc.get_webhook_delivery(d.id)).state == "delivered":
                break
            time.sleep(0.2)
        metrics = op2.metrics()
    finally:
        op2.stop()
    done = db(lambda svc: svc.get_webhook_delivery(d.id))
    assert done.state == "delivered" and done.attempts == before.attempts + 1, op2.tail(30)
    attempts = db(lambda svc: svc.get_webhook_attempts(d.id))
    assert [a.status_code for a in attempts] == [503] * before.attempts + [200]
    got = receiver.requests()
    assert [r.headers["X-Voicetrack-Attempt"] for r in got] == [
        str(n) for n in range(1, done.attempts + 1)]
    assert all(r.verified and r.delivery == d.id for r in got)
    assert 'voicetrack_webhook_deliveries_total{outcome="delivered"} 1.0' in metrics
    assert 'voicetrack_webhook_attempts_total{result="success"} 1.0' in metrics


@pytest.mark.parametrize(("failure", "state", "reason"), [
    (None, "cancelled", "no audio was recorded"),
    ("recorder pod failed: ImagePullBackOff", "failed",
     "RecorderFailed: recorder pod failed: ImagePullBackOff"),
])
async def test_a_session_that_ends_without_audio_queues_its_state_and_reason(
        ctx: Context, cluster: LocalCluster, kubectl: Kubectl, namespace: str,
        receiver: Receiver, failure: str | None, state: str, reason: str) -> None:
    """The deletion service queues the delivery once (finalizing twice queues nothing
    more), with the meeting's end state and why — the meetings row's own
    (`failures.meeting_outcome`); the worker delivers it."""
    from tests.e2e.test_operator_services import make_session, set_status
    from voicetrack_local.stack import install_crds
    from voicetrack_operator.services.deletion import DeletionService

    install_crds(cluster.kubeconfig)
    make_secret(kubectl, namespace)
    s = await make_session(ctx, kubectl, namespace, "quiet", notify={"webhook": {
        "url": receiver.url, "secretRef": {"name": "hook", "key": "hmac"}}})
    if failure:
        s = await set_status(ctx, s, {"recorderFailure": failure})
    await ctx.db.create_meeting(s.meeting_id, s.spec.guild_id, s.spec.channel_id,
                                datetime.now(UTC))
    assert (await DeletionService(ctx).finalize_session(s)).done
    assert (await DeletionService(ctx).finalize(
        (await ctx.kube.get_session(namespace, "quiet")) or {})).done
    [d] = await ctx.db.get_webhook_deliveries_for_meeting(s.meeting_id)
    assert (d.url, d.secret_namespace, d.secret_name, d.secret_key) == (
        receiver.url, namespace, "hook", "hmac")
    assert ctx.metrics.registry.get_sample_value(
        "voicetrack_webhook_deliveries_total", {"outcome": "queued"}) == 1.0
    done = await run_until_final(WebhookService(ctx, FAST), ctx.db, d.id)
    assert done.state == "delivered"
    [got] = receiver.requests()
    body = got.json
    assert got.verified and (body["state"], body["failure_reason"], body["tracks"]) == (
        state, reason, [])
    meeting = await ctx.db.get_meeting(s.meeting_id)
    assert (meeting.status, meeting.failure_reason) == (state, reason)
