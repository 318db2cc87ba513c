"""Isolation between sessions (issue 11 item 5) on the real API server and SeaweedFS.

- The operator refuses a chunk that is not its session's (owner, name, guild/meeting, keys
  outside the session's prefix, a window past the session's elapsed time, raw tracks
  absent): never transcoded, mirrored or promoted, its reason in its status, nothing of
  the raw data touched. Each case failed before the checks (the chunk got its Job).
- Each session's recorder runs as its own ServiceAccount; the ValidatingAdmissionPolicy
  admits a chunk from it only for its own session, with the policy's message otherwise,
  and a recorder that meets another's object under its chunk name (409) says so instead of
  counting it as done.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.e2e import test_operator_services as services_tests
from tests.e2e.test_operator_services import (
    USERS,
    apply,
    chunk_doc,
    kubeconfig_with,
    make_session,
    put_raws,
    set_status,
)
from tests.fixtures.cluster import Kubectl
from voicetrack.chunkspec import SPEC_MAX_BYTES, ChunkOutput, ChunkSpec
from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack.kubeclient import load_api_client
from voicetrack.layout import MIX_TRACK
from voicetrack.manifests import FinalManifest, FinalTrack
from voicetrack.names import chunk_name, owner_reference, transcode_job_name
from voicetrack.resources import CHUNK_PLURAL, GROUP, MAX_SESSION_MS, SESSION_PLURAL, VERSION
from voicetrack.uploadgrant import UploadGrant
from voicetrack_local.cluster import LocalCluster
from voicetrack_operator.builders import (
    SessionRef,
    build_session_recorder_rbac,
    recorder_service_account,
)
from voicetrack_operator.context import Context
from voicetrack_operator.services import isolation
from voicetrack_operator.services.chunks import ChunkService
from voicetrack_operator.services.chunkstate import ChunkRef
from voicetrack_operator.services.deletion import DeletionService
from voicetrack_operator.services.deletionstate import DeletionProgress, DeletionStep
from voicetrack_operator.services.inventory import chunk_inventory
from voicetrack_operator.services.sessions import SessionService
from voicetrack_operator.services.sessionview import SessionView
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.uploader import GrantWriter

pytestmark = pytest.mark.e2e

crds = services_tests.crds
ctx = services_tests.ctx
kopf_events = services_tests.kopf_events
"""The services tests' fixtures: the CRDs (and the admission policy) installed, a real
operator context (admin client, SQLite at its head, SeaweedFS)."""

Spoiler = Callable[[dict[str, Any], SessionView], None]


def foreign_meeting(doc: dict[str, Any], victim: SessionView) -> None:
    """Guild, meeting and keys of the victim session: its raw audio, read by our Job."""
    spec = ChunkSpec.model_validate(doc["spec"])
    doc["spec"] = spec.model_copy(update={
        "guild_id": victim.spec.guild_id, "meeting_id": victim.meeting_id,
        "tracks": [t.model_copy(update={"key": victim.layout.raw_key(
            spec.index, t.user_id, "ogg-opus")}) for t in spec.tracks]}).to_api()


def other_prefix(doc: dict[str, Any], _: SessionView) -> None:
    """Our own guild/meeting/index/user (the CRD's CEL rule holds) under another prefix."""
    for t in doc["spec"]["tracks"]:
        t["key"] = "elsewhere/" + t["key"]


def window_past_elapsed(doc: dict[str, Any], _: SessionView) -> None:
    """A window at the end of the 7 days the CRD allows: promotion would plan 30 M slots."""
    doc["spec"]["startMs"], doc["spec"]["endMs"] = MAX_SESSION_MS - 5000, MAX_SESSION_MS


def no_owner(doc: dict[str, Any], _: SessionView) -> None:
    doc["metadata"]["ownerReferences"] = []


def victims_name(doc: dict[str, Any], victim: SessionView) -> None:
    """Our chunk under the victim's chunk name: its own create would meet a 409."""
    doc["metadata"]["name"] = chunk_name(victim.ref.name, doc["spec"]["index"])


SPOILERS: dict[str, tuple[Spoiler, str]] = {
    "foreign-meeting": (foreign_meeting, "is not the session's"),
    "other-prefix": (other_prefix, "is not the session's own"),
    "window": (window_past_elapsed, "ends after the session's elapsed time"),
    "no-owner": (no_owner, "owner uid is missing"),
    "victims-name": (victims_name, "is not 'atk-chunk-000003'"),
}


@pytest.mark.parametrize("spoil", sorted(SPOILERS))
async def test_a_chunk_that_is_not_its_sessions_is_refused_and_nothing_is_touched(
        ctx: Context, namespace: str, kubectl: Kubectl, spoil: str) -> None:
    attacker = await make_session(ctx, kubectl, namespace, "atk")
    victim = await make_session(ctx, kubectl, namespace, "victim")
    for s in (attacker, victim):
        await SessionService(ctx).ensure_session(s)
    bucket = ctx.store(attacker.spec.storage.bucket)
    victim_raw = victim.layout.raw_key(3, USERS[0], "ogg-opus")
    await bucket.put_json(victim_raw, {"victim": True})

    doc = chunk_doc(attacker, 3, 0, 5000)
    await put_raws(ctx, attacker, doc)  # its own raw tracks exist
    fn, reason = SPOILERS[spoil]
    fn(doc, victim)
    apply(kubectl, doc)
    obj = await ctx.kube.get_chunk(namespace, doc["metadata"]["name"])
    assert obj is not None
    status = await ChunkService(ctx).ensure_chunk(ChunkRef.from_object(obj))

    assert status.transcode_status == "failed" and status.refused is not None, status
    assert reason in status.refused
    obj = await ctx.kube.get_chunk(namespace, doc["metadata"]["name"])
    assert obj is not None and obj["status"]["refused"] == status.refused
    assert "refused" in obj["status"]["error"]  # the printer column Error shows it
    assert await ctx.kube.get_job(namespace, transcode_job_name("atk", 3)) is None
    assert await ctx.db.get_temp_recordings_for_meeting(attacker.meeting_id) == []
    assert await ctx.db.get_temp_recordings_for_meeting(victim.meeting_id) == []
    assert await bucket.get_json(victim_raw) == {"victim": True}
    assert not await bucket.exists(attacker.layout.chunk_manifest_key(3))
    # promotion leaves it out (an ownerless chunk is not even listed as the session's),
    # and its folder is kept, not collected
    inv = await chunk_inventory(ctx, attacker)
    assert inv.chunks == {} and inv.unaccounted == {3}
    assert (doc["metadata"]["name"] in inv.refused) == (spoil != "no-owner")


async def test_a_chunk_whose_raw_tracks_are_absent_is_refused_a_sound_one_is_not(
        ctx: Context, namespace: str, kubectl: Kubectl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Absent raw tracks are checked again for `isolation.ABSENT_GRACE_S` after the chunk's
    creation (a listing that lags: before, the refusal was final at once), then refused."""
    s = await make_session(ctx, kubectl, namespace, "own")
    await SessionService(ctx).ensure_session(s)
    chunks = ChunkService(ctx)
    absent = chunk_doc(s, 0, 0, 5000)
    apply(kubectl, absent)  # raw tracks never uploaded
    obj = await ctx.kube.get_chunk(namespace, chunk_name("own", 0))
    assert obj is not None
    with pytest.raises(TemporaryFailure, match="not listed in S3 yet"):
        await chunks.ensure_chunk(ChunkRef.from_object(obj))
    assert await ctx.kube.get_job(namespace, transcode_job_name("own", 0)) is None
    lagging = chunk_doc(s, 2, 10_000, 15_000)  # listed only at the second look
    apply(kubectl, lagging)
    late = await ctx.kube.get_chunk(namespace, chunk_name("own", 2))
    assert late is not None
    with pytest.raises(TemporaryFailure, match="not listed in S3 yet"):
        await chunks.ensure_chunk(ChunkRef.from_object(late))
    await put_raws(ctx, s, lagging)
    status = await chunks.ensure_chunk(ChunkRef.from_object(late))
    assert status.transcode_status == "queued" and status.refused is None
    monkeypatch.setattr(isolation, "ABSENT_GRACE_S", 0.0)  # the grace is over
    status = await chunks.ensure_chunk(ChunkRef.from_object(obj))
    assert status.refused is not None and "absent from S3" in status.refused
    assert await ctx.kube.get_job(namespace, transcode_job_name("own", 0)) is None

    sound = chunk_doc(s, 1, 5000, 10_000)
    await put_raws(ctx, s, sound)
    apply(kubectl, sound)
    obj = await ctx.kube.get_chunk(namespace, chunk_name("own", 1))
    assert obj is not None
    status = await chunks.ensure_chunk(ChunkRef.from_object(obj))
    assert status.transcode_status == "queued" and status.refused is None
    assert await ctx.kube.get_job(namespace, transcode_job_name("own", 1)) is not None
    inv = await chunk_inventory(ctx, s)
    assert sorted(inv.chunks) == [1, 2] and list(inv.refused) == [chunk_name("own", 0)]


async def test_a_refused_chunk_is_not_rebuilt_from_its_manifest_later(
        ctx: Context, namespace: str, kubectl: Kubectl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RecordingChunk refused (here: its window ahead of the session's elapsed time) keeps
    its folder out of the promotion, even when its `chunk.json`, checked later without a
    creation time, would pass (review of the frozen copies: the inventory rebuilt such a
    folder as a done chunk once the session had run past the window)."""
    s = await make_session(ctx, kubectl, namespace, "ahead")
    await SessionService(ctx).ensure_session(s)
    doc = chunk_doc(s, 3, 600_000, 605_000)  # ten minutes ahead of a session just made
    await put_raws(ctx, s, doc)
    await ctx.store(s.spec.storage.bucket).put_json(s.layout.chunk_manifest_key(3),
                                                    doc["spec"])
    apply(kubectl, doc)
    obj = await ctx.kube.get_chunk(namespace, chunk_name("ahead", 3))
    assert obj is not None
    status = await ChunkService(ctx).ensure_chunk(ChunkRef.from_object(obj))
    assert status.refused is not None and "ends after" in status.refused
    # as if the session had run on past the window by the time it is deleted
    monkeypatch.setattr(isolation, "WINDOW_TOLERANCE_MS", 10**9)
    inv = await chunk_inventory(ctx, s)
    assert inv.chunks == {} and inv.unaccounted == {3}
    assert chunk_name("ahead", 3) in inv.refused


async def test_a_forged_chunk_json_neither_crashes_nor_fills_the_inventory(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """A recorder can write any `chunks/<i>/chunk.json` its grant allows: one nested too
    deeply for the JSON parser, and one larger than any chunk spec, are kept unaccounted
    (their folders left in place) and the rest of the inventory goes on. Before, the first
    raised RecursionError out of `chunk_inventory` (the deletion's handler failed at every
    retry, the finalizer held for good) and the second was read whole into the operator's
    memory (up to the grant's 2 GB: an OOM kill, and the same deletion again after it)."""
    s = await make_session(ctx, kubectl, namespace, "forged")
    await SessionService(ctx).ensure_session(s)
    store = ctx.store(s.spec.storage.bucket)
    store.sync.put_bytes(s.layout.chunk_manifest_key(5), b"[" * 200_000, "application/json")
    store.sync.put_bytes(s.layout.chunk_manifest_key(6),
                         b'{"pad": "' + b"x" * (SPEC_MAX_BYTES + 10) + b'"}', "application/json")
    doc = chunk_doc(s, 7, 0, 200)
    await put_raws(ctx, s, doc)
    await store.put_json(s.layout.chunk_manifest_key(7), doc["spec"])
    inv = await chunk_inventory(ctx, s)
    assert inv.unaccounted == {5, 6}
    assert sorted(inv.chunks) == [7] and inv.chunks[7].rebuilt


async def test_a_rebuilt_chunk_is_done_only_when_its_raw_tracks_are_what_it_says(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """Chunks rebuilt from S3 with every raw track present: one whose raw track is not the
    one its `chunk.json` names (sha256), and one the SQL mirror recorded `failed` before
    its RecordingChunk went, are `failed` with the reason; one whose raw tracks match is
    `done`. Before, all three were `done` (raw objects present), so each bad one cost a
    promotion run before being left out, and a fourth failed the promotion for good
    (`leftout.LEAVE_OUT_MAX`): a recorder could wedge its session's deletion with four
    forged `chunk.json`s."""
    s = await make_session(ctx, kubectl, namespace, "rebuilt")
    s = await set_status(ctx, s, await SessionService(ctx).ensure_session(s))
    store = ctx.store(s.spec.storage.bucket)
    for index in (3, 4, 5, 6):
        doc = chunk_doc(s, index, index * 200, index * 200 + 200)
        for track in doc["spec"]["tracks"]:
            body = f"raw {track['key']}".encode()
            track["sha256"] = store.sync.put_bytes(track["key"], body)
            track["bytes"] = len(body) + (1 if index == 3 else 0)  # 3: not what it says
            if index == 6:  # more than 200 ms of raw audio can be: never read
                track["bytes"] = 10**9
        await store.put_json(s.layout.chunk_manifest_key(index), doc["spec"])
    spec4 = ChunkSpec.model_validate(
        await store.get_json(s.layout.chunk_manifest_key(4)))
    await ctx.db.upsert_chunk_status(s.ref.uid, 4, spec4.tracks[0].user_id, s.meeting_id,
                                     s.spec.guild_id, spec4.tracks[0].key, "ogg-opus",
                                     "failed", error="opus: corrupted stream")
    inv = await chunk_inventory(ctx, s)
    assert sorted(inv.chunks) == [3, 4, 5, 6]
    assert all(c.rebuilt for c in inv.chunks.values())
    got = {i: (c.status.transcode_status, c.status.error) for i, c in inv.chunks.items()}
    assert got[3][0] == "failed" and "is not the one its chunk.json names" in got[3][1]
    assert got[6][0] == "failed" and "more than its 200 ms window can hold" in got[6][1]
    assert got[4][0] == "failed" and "opus: corrupted stream" in got[4][1]
    assert got[5] == ("done", None)


async def test_a_rebuilt_chunk_that_failed_stays_failed_after_the_record_step(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """The collect step takes the inventory again after the record step: the temp rows
    that said a rebuilt chunk's transcode had failed must still be there (kept, cleaned =
    1, until collect deletes them). Before, the record step deleted them, the chunk came
    back `done` at collect (its raw tracks intact), in no plan and not failed: its
    folder, opted-out members' raw tracks included, stayed in S3 for good (second
    review of aeab8e8)."""
    s = await make_session(ctx, kubectl, namespace, "failedkept")
    s = await set_status(ctx, s, await SessionService(ctx).ensure_session(s))
    store = ctx.store(s.spec.storage.bucket)
    doc = chunk_doc(s, 0, 0, 200)
    for track in doc["spec"]["tracks"]:
        body = f"raw {track['key']}".encode()
        track["sha256"], track["bytes"] = store.sync.put_bytes(track["key"], body), len(body)
    await store.put_json(s.layout.chunk_manifest_key(0), doc["spec"])
    first = doc["spec"]["tracks"][0]
    await ctx.db.upsert_chunk_status(s.ref.uid, 0, first["userId"], s.meeting_id,
                                     s.spec.guild_id, first["key"], "ogg-opus", "failed",
                                     error="opus: corrupted stream")
    finals = []
    for name, user in ((first["userId"], first["userId"]), (MIX_TRACK, None)):
        key = s.layout.final_key(name, "mp3")
        finals.append(FinalTrack(track=name, kind="mixed" if user is None else "speaker",
                                 user_id=user, format="mp3", key=key, bytes=5,
                                 sha256=store.sync.put_bytes(key, b"final"),
                                 duration_ms=200))
    await store.put_json(s.layout.final_manifest_key, FinalManifest(
        tool_version="test", meeting_id=s.meeting_id, duration_ms=200, recorded_ms=200,
        paused_ms=0, tracks=finals).to_api())
    out = await DeletionService(ctx).record(s, DeletionProgress(
        step=DeletionStep.RECORD, promoted=True))
    assert out.recording_ids
    inv = await chunk_inventory(ctx, s)
    assert inv.chunks[0].status.transcode_status == "failed", inv.chunks[0].status
    assert [c.spec.index for c in inv.failed] == [0]


async def test_a_result_json_naming_another_sessions_outputs_fails_the_chunk(
        ctx: Context, namespace: str, kubectl: Kubectl) -> None:
    """A result.json (under `outputs/`, out of the recorder's grant since deletion review
    item 3, but checked all the same) forged to name another session's objects as
    outputs (into SQL, links) fails the chunk."""
    s = await make_session(ctx, kubectl, namespace, "forger")
    victim = await make_session(ctx, kubectl, namespace, "victim")
    for session in (s, victim):
        await SessionService(ctx).ensure_session(session)
    doc = chunk_doc(s, 0, 0, 5000)
    await put_raws(ctx, s, doc)
    apply(kubectl, doc)
    obj = await ctx.kube.get_chunk(namespace, chunk_name("forger", 0))
    assert obj is not None
    chunks = ChunkService(ctx)
    assert (await chunks.ensure_chunk(ChunkRef.from_object(obj))).transcode_status == "queued"
    outputs = [ChunkOutput(user_id=u, format="mp3", bytes=10, sha256="ef" * 32,
                           duration_ms=5000,
                           key=victim.layout.chunk_output_key(0, u, "mp3")).to_api()
               for u in USERS]
    await ctx.store(s.spec.storage.bucket).put_json(s.layout.result_key(0), {
        "toolVersion": "forged", "index": 0, "outputs": outputs})
    job = await ctx.kube.get_job(namespace, transcode_job_name("forger", 0))
    assert job is not None
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}
    await chunks.observe_job(job)
    obj = await ctx.kube.get_chunk(namespace, chunk_name("forger", 0))
    assert obj is not None and obj["status"]["transcodeStatus"] == "failed"
    assert "not this chunk's own" in obj["status"]["error"]
    rows = await ctx.db.get_temp_recordings_for_meeting(s.meeting_id)
    assert rows and all(r.mp3_path is None for r in rows)


async def test_the_chunk_handler_posts_a_refusal_event(
        ctx: Context, namespace: str, kubectl: Kubectl, kopf_events: asyncio.Queue[Any]
        ) -> None:
    import kopf

    from voicetrack_operator.handlers import chunk as chunk_handlers

    services_tests.bind_events()
    memo = kopf.Memo()
    memo.ctx = ctx
    s = await make_session(ctx, kubectl, namespace, "evented")
    await SessionService(ctx).ensure_session(s)
    while not kopf_events.empty():  # the session's own
        kopf_events.get_nowait()
    doc = chunk_doc(s, 0, 0, 5000)
    window_past_elapsed(doc, s)
    await put_raws(ctx, s, doc)
    apply(kubectl, doc)
    obj = await ctx.kube.get_chunk(namespace, chunk_name("evented", 0))
    await chunk_handlers.on_chunk_event(event={"type": "ADDED", "object": obj}, memo=memo)
    event = await asyncio.wait_for(kopf_events.get(), 5)
    assert event.reason == "ChunkRefused" and event.type == "Warning"
    assert "ends after the session's elapsed time" in event.message


# ---------------------------------------------------------------- the API server's part


def recorder_client(cluster: LocalCluster, kubectl: Kubectl, tmp_path: Path, ns: str,
                    sa: str) -> client.ApiClient:
    """An API client authenticated as ServiceAccount `sa` (a short-lived token)."""
    token = kubectl("-n", ns, "create", "token", sa, "--duration=10m").stdout.strip()
    return load_api_client(kubeconfig_with(cluster, tmp_path, token=token))


def wait_until(what: str, fn: Callable[[], bool], timeout_s: float = 20) -> None:
    """Poll `fn` until it is True (a new policy binding and RBAC take a moment)."""
    deadline = time.monotonic() + timeout_s
    while not fn():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s} s")
        time.sleep(0.3)


async def test_a_recorder_creates_chunks_of_its_own_session_only(
        ctx: Context, cluster: LocalCluster, namespace: str, kubectl: Kubectl,
        tmp_path: Path) -> None:
    own = await make_session(ctx, kubectl, namespace, "own")
    victim = await make_session(ctx, kubectl, namespace, "victim")
    for s in (own, victim):  # the operator's call for each session
        await SessionService(ctx).ensure_session(s)
    sa = recorder_service_account(own.ref)
    assert await ctx.kube.get_pod(namespace, "own-rec") is not None
    pod = await ctx.kube.get_pod(namespace, "own-rec")
    assert pod is not None and pod["spec"]["serviceAccountName"] == sa
    api = recorder_client(cluster, kubectl, tmp_path, namespace, sa)
    kube = RecorderKube(api, namespace, "own")

    def spec(s: SessionView, index: int) -> ChunkSpec:
        return ChunkSpec.model_validate(chunk_doc(s, index, index * 5000,
                                                  index * 5000 + 5000)["spec"])

    # its own chunk: admitted (RBAC and the policy); it may read its own session only
    wait_until("the recorder's Role in effect", lambda: _ok(kube.get_session))
    kube.create_chunk(spec(own, 0), own.ref.uid)
    kube.create_chunk(spec(own, 0), own.ref.uid)  # a retry that got through: 409, its own
    with pytest.raises(TemporaryFailure, match="forbidden"):
        RecorderKube(api, namespace, "victim").get_session()
    listed = api_list_own(api, namespace, "own")
    assert listed == ["own"]  # the pause watch's list by name is allowed

    # another session's chunk: refused with the policy's message, whatever it claims
    forged = RecorderKube(api, namespace, "victim")

    def refused() -> bool:
        try:
            forged.create_chunk(spec(victim, 5), victim.ref.uid)
        except InvalidInputError as err:
            assert "may write chunks of its own session only" in str(err), err
            return True
        forged_name = chunk_name("victim", 5)
        kubectl("-n", namespace, "delete", "recchunk", forged_name, "--wait=false")
        return False

    wait_until("the policy refuses a chunk of another session", refused)
    # its own session name with the victim's uid, or the victim's chunk name: refused too
    with pytest.raises(InvalidInputError, match="own session only"):
        kube.create_chunk(spec(own, 6), victim.ref.uid)
    squat = spec(own, 5)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RecordingChunk",
            "metadata": {"name": chunk_name("victim", 5),
                         "labels": {"voicetrack.dev/session": "own"},
                         "ownerReferences": [owner_reference("own", own.ref.uid)]},
            "spec": squat.to_api()}
    with pytest.raises(client.ApiException) as err:
        await asyncio.to_thread(client.CustomObjectsApi(api).create_namespaced_custom_object,
                                GROUP, VERSION, namespace, CHUNK_PLURAL, body)
    assert err.value.status == 422
    assert "must be named <spec.sessionName>-chunk-<index:06d>" in json.loads(
        err.value.body)["message"]
    # its own chunk, with a finalizer or a second owner: refused (a finalizer it set
    # would keep the chunk, and the namespace, Terminating for ever after its session)
    own_body = {**body, "metadata": {**body["metadata"], "name": chunk_name("own", 5)}}
    for extra, says in (
            ({"finalizers": ["example.com/hold"]}, "may carry no finalizers"),
            ({"ownerReferences": [owner_reference("own", own.ref.uid), {
                "apiVersion": "v1", "kind": "ConfigMap", "name": "x",
                "uid": victim.ref.uid}]}, "exactly one ownerReference")):
        with pytest.raises(client.ApiException) as err:
            await asyncio.to_thread(
                client.CustomObjectsApi(api).create_namespaced_custom_object, GROUP,
                VERSION, namespace, CHUNK_PLURAL,
                {**own_body, "metadata": {**own_body["metadata"], **extra}})
        assert err.value.status == 422 and says in json.loads(err.value.body)["message"]
    # the shared account of earlier versions writes nothing
    kubectl("-n", namespace, "create", "serviceaccount", "voicetrack-recorder")
    kubectl("-n", namespace, "create", "rolebinding", "legacy", "--role", sa,
            "--serviceaccount", f"{namespace}:voicetrack-recorder")
    legacy = RecorderKube(recorder_client(cluster, kubectl, tmp_path, namespace,
                                          "voicetrack-recorder"), namespace, "own")
    wait_until("the legacy binding in effect", lambda: _ok(legacy.get_session))
    with pytest.raises(InvalidInputError, match="own session only"):
        legacy.create_chunk(spec(own, 7), own.ref.uid)


async def test_a_recorder_that_meets_anothers_object_under_its_chunk_name_says_so(
        ctx: Context, cluster: LocalCluster, namespace: str, kubectl: Kubectl,
        tmp_path: Path) -> None:
    """A pre-created victim name (made where no policy stops it: here by the admin) is
    never counted as the victim's chunk. Before the check the 409 counted as done."""
    victim = await make_session(ctx, kubectl, namespace, "victim")
    other = await make_session(ctx, kubectl, namespace, "other")
    await SessionService(ctx).ensure_session(victim)
    doc = chunk_doc(victim, 2, 10_000, 15_000)
    doc["metadata"]["ownerReferences"] = [owner_reference("other", other.ref.uid)]
    apply(kubectl, doc)
    api = recorder_client(cluster, kubectl, tmp_path, namespace,
                          recorder_service_account(victim.ref))
    kube = RecorderKube(api, namespace, "victim")
    wait_until("the recorder's Role in effect", lambda: _ok(kube.get_session))
    spec = ChunkSpec.model_validate(doc["spec"])
    with pytest.raises(InvalidInputError, match=r"is not this session's.*not acknowledged"):
        kube.create_chunk(spec, victim.ref.uid)
    # its own object with another window under its name: not this chunk either
    kubectl("-n", namespace, "delete", "recchunk", chunk_name("victim", 2))
    doc["metadata"]["ownerReferences"] = [owner_reference("victim", victim.ref.uid)]
    apply(kubectl, doc)
    with pytest.raises(InvalidInputError, match="another spec"):
        kube.create_chunk(spec.model_copy(update={"end_ms": 14_000}), victim.ref.uid)
    kube.create_chunk(spec, victim.ref.uid)  # the same chunk: done


async def test_the_session_owns_its_recorder_identity_and_upload_grant(
        ctx: Context, namespace: str, kubectl: Kubectl, tmp_path: Path) -> None:
    fresh = f"vt-iso-{secrets.token_hex(4)}"  # no bucket yet: the operator makes it
    ctx.settings = dataclasses.replace(ctx.settings, s3_buckets=frozenset({fresh}))
    s = await make_session(ctx, kubectl, namespace, "owned", storage={"bucket": fresh})
    other = await make_session(ctx, kubectl, namespace, "other", storage={"bucket": fresh})
    for session in (s, other):
        await SessionService(ctx).ensure_session(session)
    sa = recorder_service_account(s.ref)
    for kind in ("serviceaccount", "role", "rolebinding", "secret"):
        obj = kubectl("-n", namespace, "get", kind, sa, "-o",
                      "jsonpath={.metadata.ownerReferences[0].uid}").stdout
        assert obj == s.ref.uid, kind
    assert [m["metadata"]["name"] for m in build_session_recorder_rbac(
        SessionRef("owned", namespace, s.ref.uid))] == [sa] * 3
    await SessionService(ctx).ensure_session(s)  # again: the grant is not minted anew
    # the recorder pod holds no S3 key, only its session's upload grant
    pod = await ctx.kube.get_pod(namespace, "owned-rec")
    assert pod is not None
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert "VOICETRACK_S3_SECRET_KEY" not in env and "VOICETRACK_S3_ACCESS_KEY" not in env
    assert env["VOICETRACK_S3_UPLOAD_GRANT"]["valueFrom"]["secretKeyRef"]["name"] == sa
    secret = json.loads(kubectl("-n", namespace, "get", "secret", sa, "-o", "json").stdout)
    grant = UploadGrant.model_validate_json(
        base64.b64decode(secret["data"]["uploadGrant"]))
    assert grant.prefix == s.layout.chunks_root and grant.bucket == s.spec.storage.bucket
    writer = GrantWriter(ctx.settings.s3.endpoint, grant)
    path = tmp_path / "raw.opus"
    path.write_bytes(b"own")
    own_key = s.layout.raw_key(0, USERS[0], "ogg-opus")
    await asyncio.to_thread(writer.put_file, own_key, str(path))
    assert (await ctx.store(fresh).digest(own_key))[0] == 3
    other_key = other.layout.raw_key(0, USERS[0], "ogg-opus")
    widened = GrantWriter(ctx.settings.s3.endpoint,
                          grant.model_copy(update={"prefix": other.layout.chunks_root}))
    with pytest.raises(InvalidInputError, match="AccessDenied"):
        await asyncio.to_thread(widened.put_file, other_key, str(path))
    assert not await ctx.store(fresh).exists(other_key)


def _ok(fn: Callable[[], Any]) -> bool:
    try:
        fn()
        return True
    except TemporaryFailure:
        return False


def api_list_own(api: client.ApiClient, ns: str, name: str) -> list[str]:
    """The sessions a recorder lists with a field selector on its own name."""
    res = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, ns, SESSION_PLURAL, field_selector=f"metadata.name={name}")
    return [i["metadata"]["name"] for i in res["items"]]

