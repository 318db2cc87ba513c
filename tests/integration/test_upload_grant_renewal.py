"""Renewed upload grants on real SeaweedFS (issue 15, "Grants under IRSA are not renewed"):
a grant expired by time is refused by S3 itself (403 AccessDenied, "Policy expired"), and
the recorder's `RenewingGrantWriter` then takes the renewed grant from its source and
uploads with it; with no renewed grant yet it waits (TemporaryFailure, which the uploader
retries) instead of failing the recording; a refusal a renewal cannot cure stays one.

The source here holds grants the operator's `mint_upload_grant` signed, as the session's
Secret does; reading that Secret as the recorder's ServiceAccount, and the operator's
renewal into it, are tests/e2e/test_upload_grant_renewal.py."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.test_upload_grant import OTHER, OWN, USER, grant_for, raw_file
from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack.objectstore import ObjectStore
from voicetrack.uploadgrant import GrantRefused, UploadGrant, post_object
from voicetrack_recorder.faults import permanent_cause
from voicetrack_recorder.grant import RenewingGrantWriter

pytestmark = pytest.mark.integration


class HeldGrant:
    """A grant source holding `grant` (what the session's Secret holds now); counts reads
    and fails them while `failing` is set."""

    def __init__(self, grant: UploadGrant) -> None:
        self.grant = grant
        self.reads = 0
        self.failing: Exception | None = None

    def read(self) -> UploadGrant:
        self.reads += 1
        if self.failing is not None:
            raise self.failing
        return self.grant


def short_grant(store: ObjectStore, seconds: float) -> UploadGrant:
    """A grant for OWN that ends `seconds` from now (whole seconds: the policy's
    `expiration`)."""
    return grant_for(store, OWN, datetime.now(UTC) + timedelta(seconds=seconds))


def wait_past(grant: UploadGrant) -> None:
    time.sleep(max(0.0, (grant.expires_at - datetime.now(UTC)).total_seconds()) + 1.1)


def test_a_grant_expired_by_time_is_refused_by_s3(object_store: ObjectStore,
                                                   tmp_path: Path) -> None:
    endpoint = object_store.settings.endpoint
    grant = short_grant(object_store, 3)
    key = OWN.raw_key(0, USER, "ogg-opus")
    post_object(endpoint, grant, key, raw_file(tmp_path, b"in time"))
    assert object_store.get_bytes(key) == b"in time"
    wait_past(grant)
    late = OWN.raw_key(1, USER, "ogg-opus")
    with pytest.raises(GrantRefused) as err:
        post_object(endpoint, grant, late, raw_file(tmp_path, b"late"))
    assert (err.value.status, err.value.code) == (403, "AccessDenied")
    assert "Policy expired" in str(err.value)
    assert isinstance(err.value, InvalidInputError)  # for callers without renewal
    assert not object_store.exists(late)


def test_a_refused_post_is_retried_with_the_renewed_grant(object_store: ObjectStore,
                                                          tmp_path: Path) -> None:
    endpoint = object_store.settings.endpoint
    held = short_grant(object_store, 2)
    source = HeldGrant(held)  # the operator has not renewed it yet
    writer = RenewingGrantWriter(endpoint, held, source)
    wait_past(held)
    key = OWN.raw_key(2, USER, "ogg-opus")
    with pytest.raises(TemporaryFailure, match="refused and not renewed yet") as err:
        writer.put_file(key, raw_file(tmp_path, b"waits"), "audio/ogg")
    assert permanent_cause(err.value) is None  # the uploader retries it, never gives up
    assert source.reads >= 1 and not object_store.exists(key)

    source.grant = grant_for(object_store, OWN)  # renewed: an hour
    writer.put_file(key, raw_file(tmp_path, b"renewed"), "audio/ogg")
    assert object_store.get_bytes(key) == b"renewed"
    assert writer.grant == source.grant and writer.renewals == 1


def test_a_grant_near_its_end_is_replaced_before_s3_refuses_it(
        object_store: ObjectStore, tmp_path: Path) -> None:
    endpoint = object_store.settings.endpoint
    held = short_grant(object_store, 60)  # margin 20 s; the recorder reads at 10 s left
    renewed = grant_for(object_store, OWN)
    source = HeldGrant(renewed)
    now = datetime.now(UTC)
    writer = RenewingGrantWriter(endpoint, held, source, clock=lambda: now)
    key = OWN.raw_key(3, USER, "ogg-opus")
    writer.put_file(key, raw_file(tmp_path, b"a"))
    assert source.reads == 0 and writer.grant == held  # 60 s left: not near its end
    now = held.expires_at - timedelta(seconds=9)
    writer.put_file(key, raw_file(tmp_path, b"b"))
    assert source.reads == 1 and writer.grant == renewed
    assert object_store.get_bytes(key) == b"b"


def test_a_refusal_no_renewal_cures_stays_a_refusal(object_store: ObjectStore,
                                                     tmp_path: Path) -> None:
    endpoint = object_store.settings.endpoint
    grant = grant_for(object_store, OWN)
    forged = grant.model_copy(update={"prefix": OTHER.chunks_root})
    source = HeldGrant(forged)
    writer = RenewingGrantWriter(endpoint, forged, source)
    victim = OTHER.raw_key(0, USER, "ogg-opus")
    with pytest.raises(GrantRefused, match="AccessDenied"):
        writer.put_file(victim, raw_file(tmp_path, b"forged"))
    # a refusal of the policy's conditions: no newer grant cures it, the Secret is not read
    assert source.reads == 0 and not object_store.exists(victim)
    # the Secret cannot be read: a valid grant's refusal is still raised as it is
    source.failing = TemporaryFailure("get Secret: forbidden")
    with pytest.raises(GrantRefused):
        writer.put_file(victim, raw_file(tmp_path, b"forged"))
    # and a grant that S3 takes is used whatever the Secret does
    own = OWN.raw_key(4, USER, "ogg-opus")
    RenewingGrantWriter(endpoint, grant, source).put_file(own, raw_file(tmp_path, b"ok"))
    assert object_store.get_bytes(own) == b"ok"
