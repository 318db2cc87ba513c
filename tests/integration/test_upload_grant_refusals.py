"""Upload grants S3 refuses far from their end (issue 15 review, item 8), on real
SeaweedFS: a grant signed by a key S3 no longer knows (keys rotated: InvalidAccessKeyId),
or by a key whose secret changed (SignatureDoesNotMatch), is not a reason to end the
recording. The recorder's `RenewingGrantWriter` waits for a newer grant (GrantAwaited, a
TemporaryFailure the uploader retries, the chunk's spool files untouched) and uploads with
the operator's new grant once its Secret holds one; a refusal of the policy's conditions
stays one. And the recorder's read of its grant Secret is bounded in time: an API server
that accepts and never answers gives a TemporaryFailure, not a hung upload path.

Before these fixes the first two raised GrantRefused (the recording ended, the spool was
dropped), and the read waited for ever."""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kubernetes import client

from tests.integration.test_upload_grant import OTHER, OWN, USER, grant_for, raw_file
from tests.integration.test_upload_grant_renewal import HeldGrant
from voicetrack.errors import TemporaryFailure
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack.uploadgrant import GrantRefused, UploadGrant, mint_upload_grant
from voicetrack_recorder import grant as grant_module
from voicetrack_recorder.faults import permanent_cause
from voicetrack_recorder.grant import GrantAwaited, RenewingGrantWriter, SecretGrantSource
from voicetrack_recorder.kube import ApiTimeouts

pytestmark = pytest.mark.integration


def signed_by(store: ObjectStore, access_key: str, secret_key: str,
              expires: datetime | None = None) -> UploadGrant:
    """A grant for OWN, an hour long (or ending at `expires`), signed with keys other than
    the server's."""
    other = S3Settings(endpoint=store.settings.endpoint, access_key=access_key,
                       secret_key=secret_key, bucket=store.settings.bucket,
                       region=store.settings.region)
    return mint_upload_grant(other, other.bucket, OWN.chunks_root,
                             expires or datetime.now(UTC) + timedelta(hours=1), 1 << 20)


@pytest.mark.parametrize(("why", "code"), [("rotated", "InvalidAccessKeyId"),
                                           ("new secret", "SignatureDoesNotMatch")])
def test_a_grant_of_a_retired_key_waits_for_the_new_grant_and_uploads_with_it(
        object_store: ObjectStore, tmp_path: Path, why: str, code: str) -> None:
    endpoint = object_store.settings.endpoint
    access = "RETIREDKEY0000000001" if why == "rotated" else object_store.settings.access_key
    retired = signed_by(object_store, access, "not-the-secret-any-more")
    source = HeldGrant(retired)  # the operator has not minted again yet
    writer = RenewingGrantWriter(endpoint, retired, source)
    key = OWN.raw_key(0, USER, "ogg-opus")
    path = raw_file(tmp_path, b"kept in the spool")
    for _ in range(2):  # the uploader's retries: each rereads the Secret
        with pytest.raises(GrantAwaited, match=f"refused and no newer grant yet.*{code}"
                           ) as err:
            writer.put_file(key, path, "audio/ogg")
        assert isinstance(err.value, TemporaryFailure)
        assert permanent_cause(err.value) is None  # never given up during capture
    assert source.reads == 2 and not object_store.exists(key)
    assert Path(path).read_bytes() == b"kept in the spool"

    source.grant = grant_for(object_store, OWN)  # the operator's grant, current key
    writer.put_file(key, path, "audio/ogg")
    assert object_store.get_bytes(key) == b"kept in the spool"
    assert writer.grant == source.grant and writer.renewals == 1


def test_the_re_signed_grant_is_taken_though_it_ends_when_the_refused_one_did(
        object_store: ObjectStore, tmp_path: Path) -> None:
    """The operator's grant after a key rotation ends when the old one did (both capped
    at the session's end): after a refusal it is taken all the same. Failed before: the
    writer took only a grant ending later and waited for ever."""
    end = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    retired = signed_by(object_store, "RETIREDKEY0000000002", "gone", end)
    source = HeldGrant(retired)
    writer = RenewingGrantWriter(object_store.settings.endpoint, retired, source)
    key = OWN.raw_key(1, USER, "ogg-opus")
    path = raw_file(tmp_path, b"after the rotation")
    with pytest.raises(GrantAwaited):
        writer.put_file(key, path, "audio/ogg")
    source.grant = grant_for(object_store, OWN, end)
    assert source.grant.expires_at == retired.expires_at
    writer.put_file(key, path, "audio/ogg")
    assert object_store.get_bytes(key) == b"after the rotation"
    assert writer.grant == source.grant


def test_a_renewed_grant_s3_refuses_too_is_waited_for_not_the_end(
        object_store: ObjectStore, tmp_path: Path) -> None:
    """The Secret holds another grant, but S3 refuses it as well (a rotated key S3 has not
    loaded yet, or a re-grant signed by the same revoked role session): the retry with it
    is awaited like the first refusal. Failed before (second review): the retry's
    GrantRefused escaped, the recording ended and its spool was dropped."""
    first = signed_by(object_store, "RETIREDKEY0000000004", "gone")
    source = HeldGrant(signed_by(object_store, "NOTLOADEDYET00000005", "not-yet"))
    writer = RenewingGrantWriter(object_store.settings.endpoint, first, source)
    key = OWN.raw_key(3, USER, "ogg-opus")
    path = raw_file(tmp_path, b"waits for a grant S3 takes")
    with pytest.raises(GrantAwaited, match="InvalidAccessKeyId") as err:
        writer.put_file(key, path, "audio/ogg")
    assert permanent_cause(err.value) is None and writer.grant == source.grant
    assert Path(path).read_bytes() == b"waits for a grant S3 takes"
    source.grant = grant_for(object_store, OWN)  # S3 knows this one
    writer.put_file(key, path, "audio/ogg")
    assert object_store.get_bytes(key) == b"waits for a grant S3 takes"


def test_a_grant_refused_too_long_with_no_other_is_refused_for_good(
        object_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal no grant cures (here a key S3 does not know, and the Secret never
    changes) ends in GrantRefused after `REFUSED_GIVE_UP_S`, not in an endless wait behind
    a recorder that looks healthy."""
    monkeypatch.setattr(grant_module, "REFUSED_GIVE_UP_S", 0.2)
    retired = signed_by(object_store, "RETIREDKEY0000000003", "gone")
    writer = RenewingGrantWriter(object_store.settings.endpoint, retired, HeldGrant(retired))
    key = OWN.raw_key(2, USER, "ogg-opus")
    path = raw_file(tmp_path, b"never accepted")
    with pytest.raises(GrantAwaited):
        writer.put_file(key, path, "audio/ogg")
    with pytest.raises(GrantAwaited):  # within the give-up time: still waiting
        writer.put_file(key, path, "audio/ogg")
    time.sleep(0.3)
    with pytest.raises(GrantRefused, match=r"refused for \d+ s with no other grant") as err:
        writer.put_file(key, path, "audio/ogg")
    assert err.value.code == "InvalidAccessKeyId"
    assert Path(path).read_bytes() == b"never accepted"


def test_a_refusal_of_the_policys_conditions_is_not_waited_for(
        object_store: ObjectStore, tmp_path: Path) -> None:
    grant = grant_for(object_store, OWN)
    forged = grant.model_copy(update={"prefix": OTHER.chunks_root})
    source = HeldGrant(forged)
    writer = RenewingGrantWriter(object_store.settings.endpoint, forged, source)
    victim = OTHER.raw_key(0, USER, "ogg-opus")
    with pytest.raises(GrantRefused, match=r"AccessDenied.*Policy Condition failed"):
        writer.put_file(victim, raw_file(tmp_path, b"forged"))
    assert source.reads == 0 and not object_store.exists(victim)


def test_the_grant_secret_read_gives_up_on_a_silent_api_server() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)  # accepts (the kernel's backlog) and never answers
    config = client.Configuration()
    config.host = f"http://127.0.0.1:{listener.getsockname()[1]}"
    # retries left unset, as `load_api_client` leaves them (urllib3 then retries a GET that
    # timed out 3 times: four timeouts where one was meant)
    source = SecretGrantSource(client.ApiClient(config), "ns", "s-recorder",
                               ApiTimeouts(connect_s=1.0, read_s=1.0))
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            source.read()
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=read, daemon=True)
    started = datetime.now(UTC)
    thread.start()
    thread.join(15)
    try:
        assert not thread.is_alive(), "the Secret read is still waiting after 15 s"
        assert len(outcome) == 1 and isinstance(outcome[0], TemporaryFailure), outcome
        assert "API server unreachable" in str(outcome[0])
        assert datetime.now(UTC) - started < timedelta(seconds=3)
    finally:
        listener.close()
