"""A grant is never renewed past the session's last upload time (review findings on the
renewal): with `VOICETRACK_UPLOAD_GRANT_SECONDS` set, renewals used to go on for as long
as the session object existed, and a grant past its end that could not be renewed was
read and minted again on every 2 s tick."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.unit.test_upload_grant_renewal import OWNER, SPEC, grant
from voicetrack.objectstore import S3Settings
from voicetrack.uploadgrant import GRANT_SECRET_KEY
from voicetrack_operator.builders import PodSettings
from voicetrack_operator.context import Context, OperatorSettings
from voicetrack_operator.services import grants
from voicetrack_operator.services.grants import (
    GRANT_CHECK_S,
    GRANT_MARGIN,
    GrantAction,
    ensure_upload_grant,
    grant_expiry,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 3, 9, 0, 0, tzinfo=UTC)


def test_a_set_lifetime_ends_no_later_than_the_session_limit_plus_the_margin() -> None:
    started = T0 - timedelta(hours=4)
    cap = started + timedelta(seconds=14_400) + GRANT_MARGIN
    assert grant_expiry(started, T0, 14_400, 60) == T0 + timedelta(seconds=60)
    assert grant_expiry(started, cap - timedelta(seconds=10), 14_400, 60) == cap
    assert grant_expiry(started, cap + timedelta(hours=5), 14_400, 60) == cap


class SecretOnly:
    """A KubeAdapter stand-in holding one grant Secret; any other call fails the test."""

    def __init__(self, secret: dict[str, Any]) -> None:
        self.secret = secret
        self.calls: list[str] = []

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any]:
        self.calls.append("get_secret")
        return self.secret

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kw: Any) -> Any:
            self.calls.append(name)
            raise AssertionError(f"API call {name}")
        return call


async def test_past_the_last_upload_time_nothing_is_minted_and_the_next_look_waits() -> None:
    now = datetime.now(UTC)
    started = now - timedelta(hours=6)  # limit 4 h + margin 1 h: the cap passed 1 h ago
    old = grant(now - timedelta(hours=1, minutes=2), timedelta(seconds=60))
    kube = SecretOnly({"data": {GRANT_SECRET_KEY: base64.b64encode(
        old.to_json().encode()).decode()}})
    settings = OperatorSettings(database_url="sqlite+aiosqlite://",
                                s3=S3Settings(endpoint="http://127.0.0.1:1", access_key="a",
                                              secret_key="b", bucket="voicetrack"),
                                pods=PodSettings(), upload_grant_s=60)
    ctx = Context(settings=settings, kube=kube, db=None)  # type: ignore[arg-type]
    try:
        action = await ensure_upload_grant(ctx, OWNER, SPEC, "m" * 16, started,
                                           throttle=True)
        assert action is GrantAction.KEEP and kube.calls == ["get_secret"]
        due = grants._seen[OWNER.uid][1] - time.monotonic()
        assert GRANT_CHECK_S - 5 < due <= GRANT_CHECK_S
        assert await ensure_upload_grant(ctx, OWNER, SPEC, "m" * 16, started,
                                         throttle=True) is GrantAction.KEEP
        assert kube.calls == ["get_secret"]  # the next tick reads nothing
    finally:
        grants.forget_grant(OWNER.uid)
