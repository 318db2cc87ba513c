"""When an upload grant is renewed (issue 15, "Grants under IRSA are not renewed"): the
renewal margin, the operator's decision for a session's grant Secret, the lifetime setting,
and the observe timer's throttle on reading the Secret. Pure functions; the throttle with a
KubeAdapter stand-in that fails every call."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from voicetrack.errors import InvalidInputError
from voicetrack.objectstore import S3Settings
from voicetrack.resources import SessionSpec
from voicetrack.uploadgrant import (
    RENEWAL_MARGIN,
    UploadGrant,
    grant_seconds,
    renewal_due,
    renewal_margin,
)
from voicetrack_operator.builders import PodSettings, SessionRef
from voicetrack_operator.context import Context, OperatorSettings
from voicetrack_operator.services import grants
from voicetrack_operator.services.grants import (
    CREDENTIALS_REFRESH_S,
    GRANT_CHECK_S,
    GRANT_MARGIN,
    GrantAction,
    ensure_upload_grant,
    grant_action,
    grant_expiry,
    next_check_s,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 3, 9, 0, 0, tzinfo=UTC)


def grant(issued: datetime, lifetime: timedelta) -> UploadGrant:
    return UploadGrant.model_validate({
        "bucket": "voicetrack", "prefix": "recordings/g/m/chunks/",
        "expiresAt": issued + lifetime,
        "fields": {"x-amz-date": issued.strftime("%Y%m%dT%H%M%SZ"), "policy": "p"}})


def test_the_margin_is_ten_minutes_or_a_third_of_a_shorter_lifetime() -> None:
    assert renewal_margin(T0, T0 + timedelta(seconds=60)) == timedelta(seconds=20)
    assert renewal_margin(T0, T0 + timedelta(minutes=15)) == timedelta(minutes=5)
    assert renewal_margin(T0, T0 + timedelta(hours=1)) == RENEWAL_MARGIN == \
        timedelta(minutes=10)
    assert renewal_margin(T0, T0 + timedelta(days=7)) == timedelta(minutes=10)
    assert renewal_margin(T0, T0 - timedelta(seconds=1)) == timedelta(0)


def test_a_grant_is_due_once_less_than_its_margin_remains() -> None:
    hour = grant(T0, timedelta(hours=1))  # margin 10 min: due from 9:50
    assert not renewal_due(hour, T0 + timedelta(minutes=50))
    assert renewal_due(hour, T0 + timedelta(minutes=50, seconds=1))
    assert renewal_due(hour, T0 + timedelta(hours=2))  # expired: due too
    # the recorder reads at half the margin, after the operator has renewed
    assert not renewal_due(hour, T0 + timedelta(minutes=55), share=0.5)
    assert renewal_due(hour, T0 + timedelta(minutes=55, seconds=1), share=0.5)
    minute = grant(T0, timedelta(seconds=60))  # margin 20 s: due from 9:00:40
    assert not renewal_due(minute, T0 + timedelta(seconds=40))
    assert renewal_due(minute, T0 + timedelta(seconds=41))


def test_a_grant_without_its_signing_date_is_due_at_the_full_margin() -> None:
    g = grant(T0, timedelta(hours=1)).model_copy(update={"fields": {"policy": "p"}})
    with pytest.raises(InvalidInputError, match="x-amz-date"):
        _ = g.issued_at
    assert not renewal_due(g, T0 + timedelta(minutes=49))
    assert renewal_due(g, T0 + timedelta(minutes=51))


def test_the_operator_creates_a_missing_secret_and_replaces_a_spoiled_or_due_one() -> None:
    g = grant(T0, timedelta(hours=1))
    assert grant_action(None, False, T0) is GrantAction.CREATE
    assert grant_action(g, False, T0) is GrantAction.CREATE
    assert grant_action(None, True, T0) is GrantAction.REPLACE  # no readable grant
    assert grant_action(g, True, T0 + timedelta(minutes=49)) is GrantAction.KEEP
    assert grant_action(g, True, T0 + timedelta(minutes=51)) is GrantAction.REPLACE


def test_the_lifetime_is_the_setting_else_the_session_limit_plus_an_hour() -> None:
    started = T0 - timedelta(hours=3)
    assert grant_expiry(started, T0, 14_400, 60) == T0 + timedelta(seconds=60)
    assert grant_expiry(started, T0, 14_400, None) == started + timedelta(hours=4) + \
        GRANT_MARGIN


@pytest.mark.parametrize(("text", "seconds"), [(None, None), ("", None), ("0", None),
                                               ("60", 60), ("3600", 3600)])
def test_the_lifetime_setting_parses(text: str | None, seconds: int | None) -> None:
    assert grant_seconds(text) == seconds


@pytest.mark.parametrize(("text", "message"), [("59", "under the minimum 60 s"),
                                               ("-5", "under the minimum"),
                                               ("1h", "is not an integer")])
def test_a_bad_lifetime_setting_names_the_variable(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=f"VOICETRACK_UPLOAD_GRANT_SECONDS.*{message}"):
        grant_seconds(text)


def test_operator_settings_read_the_lifetime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICETRACK_S3_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("VOICETRACK_UPLOAD_GRANT_SECONDS", "90")
    assert OperatorSettings.from_env().upload_grant_s == 90
    monkeypatch.delenv("VOICETRACK_UPLOAD_GRANT_SECONDS")
    assert OperatorSettings.from_env().upload_grant_s is None


class FailingApi:
    """A KubeAdapter stand-in that records every call (`calls`, by method name) and fails
    it with `fail(name)` (by default an AssertionError: no API call was expected)."""

    def __init__(self, fail: Callable[[str], Exception] | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail or (lambda name: AssertionError(f"API call {name}"))

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kw: Any) -> Any:
            self.calls.append(name)
            raise self.fail(name)
        return call


def s3_only_context(kube: Any) -> Context:
    """An operator context with `kube` as its API, S3 settings that reach nothing, and no
    database."""
    settings = OperatorSettings(database_url="sqlite+aiosqlite://",
                                s3=S3Settings(endpoint="http://127.0.0.1:1", access_key="a",
                                              secret_key="b", bucket="voicetrack"),
                                pods=PodSettings())
    return Context(settings=settings, kube=kube, db=None)  # type: ignore[arg-type]


OWNER = SessionRef("s1", "ns1", "0f0e0d0c-0000-4000-8000-000000000002")
SPEC = SessionSpec.model_validate({"guildId": "100000000000000001",
                                   "channelId": "100000000000000002"})


async def test_the_timer_reads_the_secret_only_when_due_or_every_check_interval() -> None:
    kube = FailingApi()
    ctx = s3_only_context(kube)
    now = datetime.now(UTC)
    fresh = grant(now - timedelta(minutes=1), timedelta(hours=1))
    grants._remember(OWNER.uid, fresh, now, renewable=True)
    try:
        action = await ensure_upload_grant(ctx, OWNER, SPEC, "m" * 16, now, throttle=True)
        assert action is GrantAction.KEEP and kube.calls == []
        # the next look is due (GRANT_CHECK_S passed): the Secret is read again
        grants._seen[OWNER.uid] = (fresh, time.monotonic() - 1)
        with pytest.raises(AssertionError, match="get_secret"):
            await ensure_upload_grant(ctx, OWNER, SPEC, "m" * 16, now, throttle=True)
        assert kube.calls == ["get_secret"]
    finally:
        grants.forget_grant(OWNER.uid)


def test_the_next_look_is_when_the_grant_becomes_due_at_most_the_check_interval() -> None:
    hour = grant(T0, timedelta(hours=1))  # due at 9:50
    assert next_check_s(hour, T0, renewable=True) == GRANT_CHECK_S
    assert next_check_s(hour, T0 + timedelta(minutes=49, seconds=50), renewable=True) == 10
    assert next_check_s(hour, T0 + timedelta(minutes=51), renewable=True) == 0
    # due, but a renewal would end no later (its credentials are not refreshed yet): next
    # just after minio fetches new ones, CREDENTIALS_REFRESH_S before they expire
    assert next_check_s(hour, T0 + timedelta(minutes=51), renewable=False) == GRANT_CHECK_S
    assert next_check_s(hour, T0 + timedelta(minutes=59, seconds=30), renewable=False) == \
        30 - CREDENTIALS_REFRESH_S + 1
    # past its end and not renewable (the session's last upload time has passed): a look
    # every check interval, not every tick
    assert next_check_s(hour, T0 + timedelta(hours=2), renewable=False) == GRANT_CHECK_S
