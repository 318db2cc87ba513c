"""The operator keeps a session's upload grant usable through faults (issue 15 review,
items 7 and 8), on the local API server and SeaweedFS, its services called directly:

- while the session is being deleted, the stop step renews the grant for as long as the
  recorder pod may still upload (it flushes for up to its grace period after SIGTERM):
  with a pod held in deletion (a finalizer of the test's), a grant due for renewal is
  minted again; once the pod is gone the step moves on and renews nothing;
- a grant in the Secret signed by a key that is no longer the operator's (keys rotated)
  is minted again at the next look, an hour from its end: S3 would refuse it.

Before these fixes the deletion renewed nothing (the observe timer is stopped by kopf
once deletion starts, and it skipped deleted sessions), and a grant was renewed only by
its end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e import test_operator_services as services_tests
from tests.e2e.test_operator_services import make_session, read_session
from tests.e2e.test_upload_grant_secret import secret_state
from tests.fixtures.cluster import Kubectl
from voicetrack.names import recorder_pod_name
from voicetrack.objectstore import S3Settings
from voicetrack.uploadgrant import mint_upload_grant
from voicetrack_operator.builders import build_upload_grant_secret, recorder_service_account
from voicetrack_operator.context import Context
from voicetrack_operator.services import grants
from voicetrack_operator.services.deletion import DeletionService
from voicetrack_operator.services.deletionstate import DeletionProgress, DeletionStep, Wait
from voicetrack_operator.services.grants import GrantAction, ensure_upload_grant
from voicetrack_operator.services.sessions import SessionService

pytestmark = pytest.mark.e2e

crds = services_tests.crds
ctx = services_tests.ctx

HOLD = "voicetrack.dev/test-hold"


async def test_the_stop_step_renews_the_grant_until_the_recorder_pod_is_gone(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    ctx.settings = dataclasses.replace(ctx.settings, upload_grant_s=60)
    s = await make_session(ctx, kubectl, namespace, "stopping", paused=False)
    status = await SessionService(ctx).ensure_session(s)
    await services_tests.set_status(ctx, s, status)
    s = await read_session(ctx, namespace, "stopping")
    pod = recorder_pod_name(s.ref.name)
    kubectl("-n", namespace, "patch", "pod", pod, "--type=merge",
            "-p", json.dumps({"metadata": {"finalizers": [HOLD]}}))
    sa = recorder_service_account(s.ref)
    # the grant in the Secret is due for renewal: a 4 s grant (margin 4/3 s), 3 s later
    due = mint_upload_grant(ctx.settings.s3, s.spec.storage.bucket, s.layout.chunks_root,
                            datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4))
    await ctx.kube.replace_secret(build_upload_grant_secret(s.ref, due.to_json()))
    await asyncio.sleep(max(0.0, (due.expires_at - datetime.now(UTC)).total_seconds() - 1))
    version, _ = secret_state(kubectl, namespace, sa)
    grants.forget_grant(s.ref.uid)
    deletion = DeletionService(ctx)
    try:
        step = await deletion.stop_recorder(s, DeletionProgress())
        assert isinstance(step, Wait)  # the pod is being deleted, held by the finalizer
        live = json.loads(kubectl("-n", namespace, "get", "pod", pod, "-o", "json").stdout)
        assert live["metadata"].get("deletionTimestamp")
        renewed_version, renewed = secret_state(kubectl, namespace, sa)
        assert renewed_version != version, "the grant was not renewed during deletion"
        assert renewed.expires_at > due.expires_at + timedelta(seconds=50)
        # the next attempt (1 s later) leaves a grant that is not due alone
        assert isinstance(await deletion.stop_recorder(s, DeletionProgress()), Wait)
        assert secret_state(kubectl, namespace, sa)[0] == renewed_version
    finally:
        kubectl("-n", namespace, "patch", "pod", pod, "--type=merge",
                "-p", json.dumps({"metadata": {"finalizers": None}}), check=False)
    kubectl("-n", namespace, "wait", "--for=delete", f"pod/{pod}", "--timeout=60s")
    await ctx.kube.replace_secret(build_upload_grant_secret(s.ref, due.to_json()))
    gone_version, _ = secret_state(kubectl, namespace, sa)
    step = await deletion.stop_recorder(s, DeletionProgress())
    assert isinstance(step, DeletionProgress) and step.step is DeletionStep.TRANSCODES
    assert secret_state(kubectl, namespace, sa)[0] == gone_version  # no recorder: no renewal


async def test_a_grant_signed_by_a_retired_key_is_minted_again_long_before_its_end(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    s = await make_session(ctx, kubectl, namespace, "rotated")
    await SessionService(ctx).ensure_session(s)
    sa = recorder_service_account(s.ref)
    retired = S3Settings(endpoint=ctx.settings.s3.endpoint, access_key="RETIREDKEY0000000001",
                         secret_key="retired", bucket=ctx.settings.s3.bucket,
                         region=ctx.settings.s3.region)
    old = mint_upload_grant(retired, s.spec.storage.bucket, s.layout.chunks_root,
                            datetime.now(UTC) + timedelta(hours=2))
    await ctx.kube.replace_secret(build_upload_grant_secret(s.ref, old.to_json()))
    version, _ = secret_state(kubectl, namespace, sa)
    grants.forget_grant(s.ref.uid)
    started = datetime.now(UTC)
    assert await ensure_upload_grant(ctx, s.ref, s.spec, s.meeting_id, started,
                                     throttle=True) is GrantAction.RESIGN
    new_version, new = secret_state(kubectl, namespace, sa)
    assert new_version != version and new.access_key == ctx.settings.s3.access_key
    # signed by the current key now: left alone
    grants.forget_grant(s.ref.uid)
    assert await ensure_upload_grant(ctx, s.ref, s.spec, s.meeting_id, started,
                                     throttle=True) is GrantAction.KEEP
    assert secret_state(kubectl, namespace, sa)[0] == new_version
