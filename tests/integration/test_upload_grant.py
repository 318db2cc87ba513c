"""Upload grants on real SeaweedFS: the POST policy the operator mints for a session lets
its holder (a recorder, which has no S3 key) write under that session's chunk prefix and
nothing else. S3 itself refuses the rest: reading its own or another session's objects,
writing another prefix, deleting, listing, a tampered or expired policy."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import urllib3

from voicetrack.errors import InvalidInputError
from voicetrack.layout import MeetingLayout
from voicetrack.objectstore import ObjectStore
from voicetrack.uploadgrant import UploadGrant, mint_upload_grant, post_object
from voicetrack_recorder.uploader import GrantWriter

pytestmark = pytest.mark.integration

OWN = MeetingLayout("recordings", "100000000000000001", "A" * 16)
OTHER = MeetingLayout("recordings", "100000000000000002", "B" * 16)
USER = "200000000000000001"


def grant_for(store: ObjectStore, layout: MeetingLayout,
              expires: datetime | None = None) -> UploadGrant:
    """The grant the operator mints for a session of `layout` (a JSON round trip, as
    through its Secret)."""
    grant = mint_upload_grant(store.settings, store.settings.bucket, layout.chunks_root,
                              expires or datetime.now(UTC) + timedelta(hours=1), 1 << 20)
    return UploadGrant.model_validate_json(grant.to_json())


def raw_file(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "track.opus"
    path.write_bytes(data)
    return str(path)


def test_a_grant_writes_its_sessions_prefix_and_nothing_else(
        object_store: ObjectStore, tmp_path: Path) -> None:
    store, bucket = object_store, object_store.settings.bucket
    endpoint = store.settings.endpoint
    victim_key = OTHER.raw_key(0, USER, "ogg-opus")
    store.put_bytes(victim_key, b"victim audio")
    grant = grant_for(store, OWN)
    writer = GrantWriter(endpoint, grant)

    own_key = OWN.raw_key(0, USER, "ogg-opus")
    writer.put_file(own_key, raw_file(tmp_path, b"own audio"), "audio/ogg")
    assert store.get_bytes(own_key) == b"own audio"

    # another session's prefix: the policy's starts-with condition fails in S3 (the
    # client-side check is bypassed by forging the request's key field)
    forged = {**grant.model_dump(by_alias=True, mode="json"), "prefix": OTHER.chunks_root}
    with pytest.raises(InvalidInputError, match=r"AccessDenied.*Policy"):
        post_object(endpoint, UploadGrant.model_validate(forged), victim_key,
                    raw_file(tmp_path, b"forged"))
    with pytest.raises(InvalidInputError, match="outside the upload grant's prefix"):
        writer.put_file(victim_key, raw_file(tmp_path, b"forged"))
    assert store.get_bytes(victim_key) == b"victim audio"

    # without a key, nothing is readable, listable or deletable, its own objects included
    http = urllib3.PoolManager()
    for method, url in (("GET", f"{endpoint}/{bucket}/{own_key}"),
                        ("GET", f"{endpoint}/{bucket}/{victim_key}"),
                        ("GET", f"{endpoint}/{bucket}?list-type=2"),
                        ("DELETE", f"{endpoint}/{bucket}/{own_key}"),
                        ("DELETE", f"{endpoint}/{bucket}/{victim_key}")):
        assert http.request(method, url).status == 403, (method, url)
    # the grant's own fields sign nothing but a POST: as query parameters they do not
    # authenticate a GET
    query = "&".join(f"{k}={v}" for k, v in grant.fields.items() if k.startswith("x-amz"))
    assert http.request("GET", f"{endpoint}/{bucket}/{own_key}?{query}").status == 403
    assert store.get_bytes(own_key) == b"own audio"
    assert store.get_bytes(victim_key) == b"victim audio"

    # a policy widened by its holder no longer matches its signature
    policy = json.loads(base64.b64decode(grant.fields["policy"]))
    policy["conditions"] = [c for c in policy["conditions"]
                            if not (isinstance(c, list) and c[1] == "$key")]
    widened = grant.model_copy(update={"prefix": "", "fields": {
        **grant.fields, "policy": base64.b64encode(
            json.dumps(policy).encode()).decode()}})
    with pytest.raises(InvalidInputError, match="SignatureDoesNotMatch"):
        post_object(endpoint, widened, victim_key, raw_file(tmp_path, b"forged"))
    assert store.get_bytes(victim_key) == b"victim audio"


def test_an_expired_grant_writes_nothing(object_store: ObjectStore, tmp_path: Path) -> None:
    grant = grant_for(object_store, OWN, datetime.now(UTC) - timedelta(seconds=5))
    key = OWN.raw_key(1, USER, "ogg-opus")
    with pytest.raises(InvalidInputError, match="AccessDenied"):
        GrantWriter(object_store.settings.endpoint, grant).put_file(
            key, raw_file(tmp_path, b"late"))
    assert not object_store.exists(key)


def test_a_grant_prefix_must_be_a_folder(object_store: ObjectStore) -> None:
    with pytest.raises(InvalidInputError, match="ending with '/'"):
        mint_upload_grant(object_store.settings, "b", "recordings/1",
                          datetime.now(UTC) + timedelta(hours=1))
