"""S3 credentials from the standard AWS chain (issue 15) on a real SeaweedFS: without
VOICETRACK_S3_ACCESS_KEY/SECRET_KEY an ObjectStore and an upload grant take their
credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a shared credentials file with
AWS_PROFILE (minio's providers); explicit keys win; with nothing anywhere the error names
every source tried. Temporary credentials (a session token) come from SeaweedFS's own STS
(`AssumeRole`, configured through `-s3.iam.config` when this SeaweedFS supports it) or, if it
does not, from the unit tests of the POST policy fields (tests/unit/test_s3_credentials.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import urllib3

from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack.healthcheck import check_s3
from voicetrack.layout import MeetingLayout
from voicetrack.objectstore import (
    EXPLICIT_KEYS,
    CredentialsUnavailable,
    ObjectStore,
    S3Settings,
    credentials_provider,
    credentials_source,
)
from voicetrack.uploadgrant import UploadGrant, mint_upload_grant, post_object

pytestmark = pytest.mark.integration

AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY",
            "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_EC2_METADATA_DISABLED")
OWN = MeetingLayout("recordings", "100000000000000001", "A" * 16)
OTHER = MeetingLayout("recordings", "100000000000000002", "B" * 16)
USER = "200000000000000001"


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An environment with no AWS credentials anywhere: no AWS_* variables, a shared
    credentials file path that does not exist yet (returned, for tests that write it), no
    EC2 instance metadata; the per-process provider cache emptied before and after."""
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    creds_file = tmp_path / "aws-credentials"
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds_file))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    credentials_provider.cache_clear()
    yield creds_file
    credentials_provider.cache_clear()


def chain(store: ObjectStore) -> S3Settings:
    """`store`'s settings (bucket included) without keys: the AWS chain signs."""
    return dataclasses.replace(store.settings, access_key="", secret_key="")


def round_trip(settings: S3Settings) -> None:
    """Write, read, list and presign with `settings`; the presigned URL answers the bytes."""
    store = ObjectStore(settings)
    store.put_bytes("chain/a.bin", b"from the chain")
    assert store.get_bytes("chain/a.bin") == b"from the chain"
    assert store.list_keys("chain/") == ["chain/a.bin"]
    res = urllib3.PoolManager().request("GET", store.presigned_get("chain/a.bin", 60))
    assert (res.status, res.data) == (200, b"from the chain")


def test_aws_environment_keys_sign_everything(object_store: ObjectStore, no_aws: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", object_store.settings.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", object_store.settings.secret_key)
    settings = chain(object_store)
    round_trip(settings)
    assert credentials_source(settings) == "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"


def test_shared_credentials_file_and_profile(object_store: ObjectStore, no_aws: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    s = object_store.settings
    no_aws.write_text("[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n"
                      f"[voicetrack]\naws_access_key_id = {s.access_key}\n"
                      f"aws_secret_access_key = {s.secret_key}\n")
    monkeypatch.setenv("AWS_PROFILE", "voicetrack")
    settings = chain(object_store)
    round_trip(settings)
    assert credentials_source(settings) == \
        f"shared credentials file {no_aws} profile voicetrack"


def test_no_credentials_anywhere_names_what_was_tried(object_store: ObjectStore,
                                                      no_aws: Path) -> None:
    store = ObjectStore(chain(object_store))
    with pytest.raises(CredentialsUnavailable) as info:
        store.get_bytes("anything")
    message = str(info.value)
    for tried in ("VOICETRACK_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
                  f"shared credentials file {no_aws} profile default",
                  "EC2 instance metadata: skipped (AWS_EC2_METADATA_DISABLED=true)"):
        assert tried in message
    assert isinstance(info.value, TemporaryFailure)  # an admin fixes it; callers retry
    with pytest.raises(CredentialsUnavailable):
        mint_upload_grant(store.settings, store.bucket, OWN.chunks_root,
                          datetime.now(UTC) + timedelta(hours=1))


def test_explicit_keys_win_over_the_environment(object_store: ObjectStore, no_aws: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong-access")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    # the environment's keys are refused by this server ...
    with pytest.raises(TemporaryFailure, match=r"InvalidAccessKeyId|SignatureDoesNotMatch"):
        ObjectStore(chain(object_store)).get_bytes("anything")
    # ... and the settings' own keys are used, not them
    round_trip(object_store.settings)
    assert credentials_source(object_store.settings) == EXPLICIT_KEYS


def test_a_grant_signed_from_the_chain_holds_its_prefix(
        object_store: ObjectStore, no_aws: Path, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", object_store.settings.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", object_store.settings.secret_key)
    settings = chain(object_store)
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    grant = UploadGrant.model_validate_json(mint_upload_grant(
        settings, settings.bucket, OWN.chunks_root, expires, 1 << 20).to_json())
    assert grant.expires_at == expires  # long-lived credentials: no cap
    assert "x-amz-security-token" not in grant.fields
    path = tmp_path / "track.opus"
    path.write_bytes(b"own audio")
    own_key = OWN.raw_key(0, USER, "ogg-opus")
    post_object(settings.endpoint, grant, own_key, str(path), "audio/ogg")
    assert object_store.get_bytes(own_key) == b"own audio"
    forged = {**grant.model_dump(by_alias=True, mode="json"), "prefix": OTHER.chunks_root}
    with pytest.raises(InvalidInputError, match=r"AccessDenied.*Policy"):
        post_object(settings.endpoint, UploadGrant.model_validate(forged),
                    OTHER.raw_key(0, USER, "ogg-opus"), str(path))


def test_voicetrack_check_names_the_credential_source(object_store: ObjectStore, no_aws: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    res = check_s3(object_store.settings)
    assert res.ok and res.detail.endswith(f"listed with credentials from {EXPLICIT_KEYS}")
    missing = check_s3(chain(object_store))
    assert not missing.ok and "no S3 credentials" in missing.detail
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", object_store.settings.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", object_store.settings.secret_key)
    credentials_provider.cache_clear()
    res = check_s3(chain(object_store))
    assert res.ok, res.detail
    assert res.detail.endswith("credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
