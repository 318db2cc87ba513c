"""The renewal path of an upload grant through its Secret (issue 15), on the local API server
and SeaweedFS, with the operator's services called directly (as its observe timer does):

- a grant expired by time is refused by S3; the recorder, reading its Secret as its own
  ServiceAccount, finds no newer grant and waits (TemporaryFailure); the operator's renewal
  replaces the Secret (a new resourceVersion); the recorder's retry reads it and uploads;
- the operator makes a deleted Secret again and replaces one that holds no grant, and
  leaves a valid one alone (no write);
- the recorder's Role lets it `get` exactly its own grant Secret: not another session's,
  and it lists none.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e import test_operator_services as services_tests
from tests.e2e.test_operator_services import USERS, make_session
from tests.e2e.test_session_isolation import recorder_client, wait_until
from tests.fixtures.cluster import Kubectl
from voicetrack.errors import TemporaryFailure
from voicetrack.uploadgrant import UploadGrant, mint_upload_grant
from voicetrack_local.cluster import LocalCluster
from voicetrack_operator.builders import build_upload_grant_secret, recorder_service_account
from voicetrack_operator.context import Context
from voicetrack_operator.services import grants
from voicetrack_operator.services.grants import GrantAction, ensure_upload_grant
from voicetrack_operator.services.sessions import SessionService
from voicetrack_recorder.grant import RenewingGrantWriter, SecretGrantSource

pytestmark = pytest.mark.e2e

crds = services_tests.crds
ctx = services_tests.ctx


def secret_state(kubectl: Kubectl, ns: str, name: str) -> tuple[str, UploadGrant]:
    """(resourceVersion, grant) of Secret `name`."""
    obj = json.loads(kubectl("-n", ns, "get", "secret", name, "-o", "json").stdout)
    return (obj["metadata"]["resourceVersion"],
            UploadGrant.model_validate_json(base64.b64decode(obj["data"]["uploadGrant"])))


async def test_an_expired_grant_is_renewed_in_its_secret_and_the_recorder_uploads_with_it(
        ctx: Context, cluster: LocalCluster, namespace: str, kubectl: Kubectl,
        tmp_path: Path) -> None:
    ctx.settings = dataclasses.replace(ctx.settings, upload_grant_s=60)
    s = await make_session(ctx, kubectl, namespace, "renewed")
    await SessionService(ctx).ensure_session(s)
    sa = recorder_service_account(s.ref)
    _, minted = secret_state(kubectl, namespace, sa)
    # VOICETRACK_UPLOAD_GRANT_SECONDS=60 (x-amz-date has whole seconds)
    lifetime = minted.expires_at - minted.issued_at
    assert timedelta(seconds=60) <= lifetime < timedelta(seconds=61), lifetime

    # the grant in the Secret ends in 2 s (as with credentials about to expire)
    bucket = s.spec.storage.bucket
    short = mint_upload_grant(ctx.settings.s3, bucket, s.layout.chunks_root,
                              datetime.now(UTC) + timedelta(seconds=2))
    await ctx.kube.replace_secret(build_upload_grant_secret(s.ref, short.to_json()))
    version, _ = secret_state(kubectl, namespace, sa)
    source = SecretGrantSource(recorder_client(cluster, kubectl, tmp_path, namespace, sa),
                               namespace, sa)
    wait_until("the recorder's Role in effect", lambda: _readable(source))
    writer = RenewingGrantWriter(ctx.settings.s3.endpoint, source.read(), source)
    await asyncio.sleep(max(0.0, (short.expires_at - datetime.now(UTC)).total_seconds())
                        + 1.1)
    path = tmp_path / "raw.opus"
    path.write_bytes(b"after the expiry")
    key = s.layout.raw_key(0, USERS[0], "ogg-opus")
    with pytest.raises(TemporaryFailure, match="not renewed yet"):
        await asyncio.to_thread(writer.put_file, key, str(path))
    assert not await ctx.store(bucket).exists(key)

    # the observe timer's call: the grant is due (expired), so it is minted again
    grants.forget_grant(s.ref.uid)
    action = await ensure_upload_grant(ctx, s.ref, s.spec, s.meeting_id,
                                       datetime.now(UTC), throttle=True)
    assert action is GrantAction.REPLACE
    renewed_version, renewed = secret_state(kubectl, namespace, sa)
    assert renewed_version != version and renewed.expires_at > datetime.now(UTC)
    await asyncio.to_thread(writer.put_file, key, str(path))  # the uploader's retry
    assert writer.renewals == 1 and writer.grant == renewed
    assert (await ctx.store(bucket).digest(key))[0] == len(b"after the expiry")

    # not due: left alone, whatever the timer's throttle (no write)
    for throttle in (True, False):
        assert await ensure_upload_grant(ctx, s.ref, s.spec, s.meeting_id,
                                         datetime.now(UTC), throttle=throttle) \
            is GrantAction.KEEP
    assert secret_state(kubectl, namespace, sa)[0] == renewed_version

    # deleted: made again; spoiled: replaced
    kubectl("-n", namespace, "delete", "secret", sa)
    assert await ensure_upload_grant(ctx, s.ref, s.spec, s.meeting_id,
                                     datetime.now(UTC)) is GrantAction.CREATE
    assert secret_state(kubectl, namespace, sa)[1].prefix == s.layout.chunks_root
    kubectl("-n", namespace, "patch", "secret", sa, "--type=merge",
            "-p", json.dumps({"stringData": {"uploadGrant": "not a grant"}}))
    assert await ensure_upload_grant(ctx, s.ref, s.spec, s.meeting_id,
                                     datetime.now(UTC)) is GrantAction.REPLACE
    assert secret_state(kubectl, namespace, sa)[1].expires_at > datetime.now(UTC)


async def test_a_recorder_reads_its_own_grant_secret_only(
        ctx: Context, cluster: LocalCluster, namespace: str, kubectl: Kubectl,
        tmp_path: Path) -> None:
    own = await make_session(ctx, kubectl, namespace, "own")
    other = await make_session(ctx, kubectl, namespace, "other")
    for s in (own, other):
        await SessionService(ctx).ensure_session(s)
    sa = recorder_service_account(own.ref)
    api = recorder_client(cluster, kubectl, tmp_path, namespace, sa)
    source = SecretGrantSource(api, namespace, sa)
    wait_until("the recorder's Role in effect", lambda: _readable(source))
    assert source.read().prefix == own.layout.chunks_root
    theirs = SecretGrantSource(api, namespace, recorder_service_account(other.ref))
    with pytest.raises(TemporaryFailure, match="forbidden"):
        theirs.read()
    with pytest.raises(TemporaryFailure, match="forbidden"):
        SecretGrantSource(api, namespace, "voicetrack-s3").read()  # the S3 keys
    res = kubectl("-n", namespace, "auth", "can-i", "list", "secrets",
                  f"--as=system:serviceaccount:{namespace}:{sa}", check=False)
    assert res.stdout.strip() == "no"


def _readable(source: SecretGrantSource) -> bool:
    try:
        source.read()
        return True
    except TemporaryFailure:
        return False
