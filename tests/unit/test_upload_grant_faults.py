"""The operator's side of grant faults (issue 15 review, items 7 and 8, mint backoff, one
decoding of the grant Secret): a grant signed by a retired key is minted again whatever
its end; a failed check is tried again after a bounded exponential backoff, not at every
observe tick; the deletion renews while the recorder pod may still upload; the Secret's
grant is decoded in one place, naming the key when it is not a grant. Pure functions; the
backoff with a KubeAdapter stand-in whose every call fails as an unreachable API server
does."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.unit.test_upload_grant_renewal import FailingApi, s3_only_context
from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack.resources import SessionSpec
from voicetrack.uploadgrant import GRANT_SECRET_KEY, UploadGrant
from voicetrack_operator.builders import SessionRef
from voicetrack_operator.services import grants
from voicetrack_operator.services.grants import (
    FAILURE_FIRST_S,
    FAILURE_MAX_S,
    GrantAction,
    failure_backoff_s,
    grant_action,
    recorder_may_upload,
    renew_upload_grant,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 3, 9, 0, 0, tzinfo=UTC)


def grant(key: str = "AKIDNOW", lifetime: timedelta = timedelta(hours=1)) -> UploadGrant:
    return UploadGrant.model_validate({
        "bucket": "voicetrack", "prefix": "recordings/g/m/chunks/",
        "expiresAt": T0 + lifetime,
        "fields": {"x-amz-date": T0.strftime("%Y%m%dT%H%M%SZ"), "policy": "p",
                   "x-amz-credential": f"{key}/20261203/us-east-1/s3/aws4_request"}})


def test_a_grant_signed_by_a_retired_key_is_minted_again_far_from_its_end() -> None:
    g = grant("AKIDOLD")
    assert g.access_key == "AKIDOLD"
    assert grant_action(g, True, T0 + timedelta(minutes=1), "AKIDNOW") is GrantAction.RESIGN
    assert grant_action(g, True, T0 + timedelta(minutes=1), "AKIDOLD") is GrantAction.KEEP
    assert grant_action(g, True, T0 + timedelta(minutes=1)) is GrantAction.KEEP  # unknown
    assert grant_action(g, True, T0 + timedelta(minutes=51), "AKIDOLD") is \
        GrantAction.REPLACE
    assert grant_action(None, True, T0, "AKIDNOW") is GrantAction.REPLACE
    assert grant_action(g, False, T0, "AKIDNOW") is GrantAction.CREATE


def test_the_failure_backoff_doubles_from_two_seconds_to_a_minute() -> None:
    assert [failure_backoff_s(n) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]
    assert failure_backoff_s(1) == FAILURE_FIRST_S and failure_backoff_s(10**6) == \
        FAILURE_MAX_S


def test_the_recorder_may_upload_until_its_pod_has_finished() -> None:
    deleting = {"metadata": {"deletionTimestamp": "2026-12-03T09:00:00Z"}}
    assert recorder_may_upload({**deleting, "status": {"phase": "Running"}})
    assert recorder_may_upload({**deleting, "status": {"phase": "Pending"}})
    assert recorder_may_upload({"metadata": {}})  # no status yet
    assert not recorder_may_upload({**deleting, "status": {"phase": "Succeeded"}})
    assert not recorder_may_upload({"metadata": {}, "status": {"phase": "Failed"}})
    assert not recorder_may_upload(None)


OWNER = SessionRef("s1", "ns1", "0f0e0d0c-0000-4000-8000-000000000009")
SPEC = SessionSpec.model_validate({"guildId": "100000000000000001",
                                   "channelId": "100000000000000002"})


async def test_a_failed_check_is_retried_after_a_growing_backoff_not_every_tick() -> None:
    kube = FailingApi(lambda name: TemporaryFailure(f"{name}: API server unreachable"))
    ctx = s3_only_context(kube)
    now = datetime.now(UTC)
    grants.forget_grant(OWNER.uid)
    try:
        await renew_upload_grant(ctx, OWNER, SPEC, "m" * 16, now)  # logged, not raised
        assert kube.calls == ["get_secret"]
        for _ in range(5):  # the observe timer's next ticks, within the backoff
            await renew_upload_grant(ctx, OWNER, SPEC, "m" * 16, now)
        assert kube.calls == ["get_secret"]
        count, retry_at = grants._failed[OWNER.uid]
        assert count == 1 and 0 < retry_at - time.monotonic() <= FAILURE_FIRST_S
        grants._failed[OWNER.uid] = (count, time.monotonic() - 1)  # the backoff passed
        await renew_upload_grant(ctx, OWNER, SPEC, "m" * 16, now)
        assert kube.calls == ["get_secret"] * 2
        count, retry_at = grants._failed[OWNER.uid]
        assert count == 2 and FAILURE_FIRST_S < retry_at - time.monotonic() <= \
            2 * FAILURE_FIRST_S
    finally:
        grants.forget_grant(OWNER.uid)
    assert OWNER.uid not in grants._failed


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_the_grant_secret_is_decoded_in_one_place_naming_the_key() -> None:
    g = grant()
    assert UploadGrant.from_secret_data({GRANT_SECRET_KEY: b64(g.to_json())}, "ns/s") == g
    for data, message in [(None, "has no key 'uploadGrant'"),
                          ({}, "has no key 'uploadGrant'"),
                          ({GRANT_SECRET_KEY: "%%%"}, "key 'uploadGrant' is not an upload"),
                          ({GRANT_SECRET_KEY: b64("{}")}, "key 'uploadGrant' is not an"),
                          ({GRANT_SECRET_KEY: b64("not json")}, "key .uploadGrant. is not an up")]:
        with pytest.raises(InvalidInputError, match=f"Secret ns/s {message}"):
            UploadGrant.from_secret_data(data, "ns/s")
    assert grant().model_copy(update={"fields": {}}).access_key == ""
