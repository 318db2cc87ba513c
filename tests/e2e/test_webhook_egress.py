"""The completion webhook refuses internal addresses (review: SSRF) against real components:
a receiver on a real loopback socket answering like an internal service (403 with
credentials in its body), the local API server holding the signing Secret, SeaweedFS for
the links, SQLite for the outbox. Without an allow-list the operator must never reach it;
with one, the answer's body must not be kept; the log must not show the URL's token; and
deliveries must not carry one receiver's cookies to the next.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.test_webhooks import FAST, context_on, make_secret, queue, run_until_final
from tests.fixtures.cluster import Kubectl
from tests.webhook_receiver import Receiver
from voicetrack.objectstore import S3Settings
from voicetrack_local.cluster import LocalCluster
from voicetrack_operator.adapters.webhook_egress import EgressPolicy
from voicetrack_operator.context import Context
from voicetrack_operator.services.webhooks import WebhookService

pytestmark = pytest.mark.e2e

KEY = b"egress-test-signing-key-0123456789"
SECRET_PAGE = b'{"AccessKeyId":"ASIA-TEST","SecretAccessKey":"internal-secret"}'
UNGUARDED = replace(FAST, egress=EgressPolicy())
"""The defaults: nothing internal allowed."""
BY_NAME = replace(FAST, egress=EgressPolicy.parse(None, "localhost"))


@pytest.fixture
async def ctx(cluster: LocalCluster, s3_server: S3Settings,
              tmp_path: Path) -> AsyncIterator[Context]:
    async with context_on(f"sqlite+aiosqlite:///{tmp_path / 'voicetrack.db'}", cluster,
                          s3_server) as c:
        yield c


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(KEY).start()
    yield r
    r.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0x7f000001", "[::ffff:127.0.0.1]"])
async def test_a_loopback_receiver_is_never_posted_to_without_an_allow_list(
        ctx: Context, kubectl: Kubectl, namespace: str, receiver: Receiver,
        s3_server: S3Settings, host: str) -> None:
    """An IP literal, a name resolving to loopback (real DNS: /etc/hosts) and the numeric
    spelling the review used: one attempt, failed for good, with the reason, and the
    socket never sees a request."""
    make_secret(kubectl, namespace, key=KEY)
    receiver.answers((403, 0, SECRET_PAGE))
    d = await queue(ctx.db, s3_server, namespace, f"http://{host}:{receiver.port}/hook")
    done = await run_until_final(WebhookService(ctx, UNGUARDED), ctx.db, d.id, timeout_s=10)
    assert (done.state, done.attempts) == ("failed", 1)
    [attempt] = await ctx.db.get_webhook_attempts(d.id)
    assert attempt.status_code is None and attempt.outcome == "failed"
    assert "is loopback: not allowed; see VOICETRACK_WEBHOOK_ALLOW_CIDRS" in (
        attempt.error or ""), attempt.error
    assert receiver.requests() == []


async def test_an_allowed_internal_receivers_body_is_not_kept(
        ctx: Context, kubectl: Kubectl, namespace: str, receiver: Receiver,
        s3_server: S3Settings) -> None:
    make_secret(kubectl, namespace, key=KEY)
    receiver.answers((403, 0, SECRET_PAGE))
    d = await queue(ctx.db, s3_server, namespace, f"http://localhost:{receiver.port}/hook")
    done = await run_until_final(WebhookService(ctx, BY_NAME), ctx.db, d.id, timeout_s=10)
    assert (done.state, done.attempts, done.last_error) == (
        "failed", 1, "HTTP 403 Forbidden")
    [attempt] = await ctx.db.get_webhook_attempts(d.id)
    assert (attempt.status_code, attempt.error) == (403, "HTTP 403 Forbidden")
    assert len(receiver.requests()) == 1


async def test_the_log_never_shows_the_urls_token(
        ctx: Context, kubectl: Kubectl, namespace: str, receiver: Receiver,
        s3_server: S3Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Discord- and Slack-style hook URLs carry their token in the path or the query."""
    make_secret(kubectl, namespace, key=KEY)
    url = f"http://localhost:{receiver.port}/hook/1234567/tok-SECRET?token=SECRET"
    d = await queue(ctx.db, s3_server, namespace, url)
    with caplog.at_level(logging.INFO, logger="voicetrack_operator"):
        await run_until_final(WebhookService(ctx, BY_NAME), ctx.db, d.id, timeout_s=10)
    lines = [r.getMessage() for r in caplog.records if d.id in r.getMessage()]
    assert any(f"to http://localhost:{receiver.port}/hook/…?…:" in m for m in lines), lines
    assert "SECRET" not in caplog.text


async def test_deliveries_send_no_cookies_back(
        ctx: Context, kubectl: Kubectl, namespace: str, receiver: Receiver,
        s3_server: S3Settings) -> None:
    """The receiver sets a cookie on every answer; with a shared cookie jar the second
    delivery (another session's, perhaps another namespace's) would carry it."""
    make_secret(kubectl, namespace, key=KEY)
    svc = WebhookService(ctx, BY_NAME)
    url = f"http://localhost:{receiver.port}/hook"
    for _ in range(2):
        d = await queue(ctx.db, s3_server, namespace, url)
        for _ in range(100):
            if await svc.deliver_due():
                break
        assert (await ctx.db.get_webhook_delivery(d.id)).state == "delivered"
    await svc.close()
    got = receiver.requests()
    assert len(got) == 2 and all(r.verified for r in got), got
    assert [r.headers.get("Cookie") for r in got] == [None, None]


async def test_a_refused_url_is_an_event_on_the_session_and_the_attempts_reason(
        ctx: Context, cluster: LocalCluster, kubectl: Kubectl, namespace: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Queued while the session is being deleted: a Warning Event on it names the address
    and the setting; the delivery's one attempt fails for good with the same reason."""
    from tests.e2e.test_operator_services import make_session
    from voicetrack_local.stack import install_crds
    from voicetrack_operator.services.deletion import DeletionService

    monkeypatch.delenv("VOICETRACK_WEBHOOK_ALLOW_CIDRS", raising=False)
    monkeypatch.delenv("VOICETRACK_WEBHOOK_ALLOW_HOSTS", raising=False)
    install_crds(cluster.kubeconfig)
    make_secret(kubectl, namespace, key=KEY)
    s = await make_session(ctx, kubectl, namespace, "internal", notify={"webhook": {
        "url": "http://10.0.0.5:8080/hook/tok-SECRET", "secretRef": {"name": "hook",
                                                                      "key": "hmac"}}})
    await ctx.db.create_meeting(s.meeting_id, s.spec.guild_id, s.spec.channel_id,
                                datetime.now(UTC))
    assert (await DeletionService(ctx).finalize_session(s)).done
    events = json.loads(kubectl("-n", namespace, "get", "events", "-o", "json").stdout)
    [event] = [e for e in events["items"] if e["reason"] == "WebhookRefused"]
    assert event["type"] == "Warning"
    assert (event["involvedObject"]["kind"], event["involvedObject"]["name"],
            event["involvedObject"]["uid"]) == ("RecordingSession", "internal", s.ref.uid)
    assert event["message"] == (
        "spec.notify.webhook.url (http://10.0.0.5:8080/hook/…): address 10.0.0.5 is private: "
        "not allowed; see VOICETRACK_WEBHOOK_ALLOW_CIDRS")
    [d] = await ctx.db.get_webhook_deliveries_for_meeting(s.meeting_id)
    done = await run_until_final(WebhookService(ctx, UNGUARDED), ctx.db, d.id, timeout_s=10)
    [attempt] = await ctx.db.get_webhook_attempts(d.id)
    assert (done.state, attempt.outcome, attempt.error) == (
        "failed", "failed",
        "not sent: address 10.0.0.5 is private: not allowed; see VOICETRACK_WEBHOOK_ALLOW_CIDRS")
