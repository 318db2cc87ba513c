"""The shared contracts' one homes: key parsing, the Kubernetes error translation, owner
references, meeting ids, chunk status and the state vocabulary."""

from __future__ import annotations

import json

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from voicetrack.chunkspec import ChunkStatus
from voicetrack.errors import (
    ApiAccessDenied,
    ConflictError,
    InvalidInputError,
    NamespaceTerminating,
    NotFoundError,
    TemporaryFailure,
)
from voicetrack.kubeclient import translate_api_error
from voicetrack.layout import MeetingLayout, parse_key
from voicetrack.names import controller_uid, derive_meeting_id, meeting_id_for, owner_reference
from voicetrack.resources import SessionState, TranscodeStatus

pytestmark = pytest.mark.unit

GUILD, USER, MEETING = "123456789012345678", "223456789012345678", "abcdefABCDEF0123"


@pytest.mark.parametrize("prefix", ["recordings", "", "a/b"])
def test_every_key_the_layout_writes_parses_back(prefix: str) -> None:
    lay = MeetingLayout(prefix, GUILD, MEETING)
    for key, area, index, name in [
        (lay.raw_key(7, USER, "ogg-opus"), "chunks", 7, f"{USER}.opus"),
        (lay.raw_key(8, USER, "pcm-s16le"), "chunks", 8, f"{USER}.pcm"),
        (lay.chunk_manifest_key(7), "chunks", 7, "chunk.json"),
        (lay.chunk_output_key(7, USER, "mp3"), "outputs", 7, f"{USER}.mp3"),
        (lay.result_key(0), "outputs", 0, "result.json"),
        (lay.piece_key(3, "mix", "mp3"), "outputs", 3, "piece-mix.mp3"),
        (lay.piece_manifest_key(3), "outputs", 3, "piece.json"),
        (lay.head_after_key(4), "outputs", 4, "head-after.json"),
        # a flat name, so the janitor (which deletes by parsed key) sweeps frozen copies
        (lay.frozen_raw_key(5, USER, "ogg-opus"), "outputs", 5, f"raw-{USER}.opus"),
        (lay.frozen_raw_key(5, USER, "pcm-s16le"), "outputs", 5, f"raw-{USER}.pcm"),
        (lay.frozen_spec_key(5), "outputs", 5, "chunk.json"),
        (lay.final_key("mix", "mp3"), "final", None, "mix.mp3"),
        (lay.final_manifest_key, "final", None, "manifest.json"),
        (lay.promotion_plan_key, "promotion", None, None),
    ]:
        parsed = parse_key(key, prefix)
        assert parsed is not None, key
        assert (parsed.guild_id, parsed.meeting_id, parsed.area, parsed.index, parsed.name) \
            == (GUILD, MEETING, area, index, name)
        assert parsed.layout(prefix).root == lay.root


def test_the_recorders_grant_prefix_holds_only_what_the_recorder_writes() -> None:
    """Review of deletion, item 3: the upload grant covers `chunks_root`; no key the
    transcoder writes lies under it (a recorder could forge pieces, piece.json,
    result.json, or the frozen copies of raw tracks promotion reads: issue 15), and each
    chunk's outputs folder is its own."""
    lay = MeetingLayout("recordings", GUILD, MEETING)
    recorder = [lay.raw_key(7, USER, "ogg-opus"), lay.raw_key(7, USER, "pcm-s16le"),
                lay.chunk_manifest_key(7)]
    transcoder = [*(lay.chunk_output_key(7, USER, f) for f in ("mp3", "flac", "opus")),
                  lay.result_key(7), lay.piece_key(7, USER, "mp3"),
                  lay.piece_key(7, "mix", "mp3"), lay.piece_manifest_key(7),
                  lay.head_after_key(7), lay.frozen_raw_key(7, USER, "ogg-opus"),
                  lay.frozen_raw_key(7, USER, "pcm-s16le"), lay.frozen_spec_key(7)]
    assert all(k.startswith(lay.chunk_dir(7) + "/") for k in recorder)
    assert not [k for k in transcoder if k.startswith(lay.chunks_root)]
    assert all(k.startswith(lay.output_dir(7) + "/") and k.startswith(lay.outputs_root)
               for k in transcoder)
    assert not lay.output_dir(7).startswith(lay.chunks_root)


@pytest.mark.parametrize("key", [
    "other/123456789012345678/abcdefABCDEF0123/chunks/000001/x.opus",  # another prefix
    "recordings/12345/abcdefABCDEF0123/chunks/000001/x.opus",          # guild not a snowflake
    "recordings/123456789012345678/abc/chunks/000001/x.opus",          # short meeting id
    "recordings/123456789012345678/abcdefABCDEF0123/chunks/1/x.opus",   # index not 6 digits
    "recordings/123456789012345678/abcdefABCDEF0123/chunks/000001/a/b",
    "recordings/123456789012345678/abcdefABCDEF0123/outputs/7/piece.json",
    "recordings/123456789012345678/abcdefABCDEF0123/outputs/000001/a/b",
    "recordings/123456789012345678/abcdefABCDEF0123/elsewhere/x",
    "recordings/123456789012345678/../chunks/000001/x.opus",
])
def test_keys_the_layout_did_not_write_are_not_parsed(key: str) -> None:
    assert parse_key(key, "recordings") is None


def _api(status: int, message: str = "") -> ApiException:
    err = ApiException(status=status, reason="Reason")
    err.body = f'{{"kind":"Status","message":"{message}"}}' if message else None
    return err


@pytest.mark.parametrize(("status", "kind"), [
    (404, NotFoundError), (409, ConflictError), (400, InvalidInputError),
    (422, InvalidInputError), (401, ApiAccessDenied), (403, ApiAccessDenied),
    (408, TemporaryFailure), (429, TemporaryFailure), (500, TemporaryFailure),
    (503, TemporaryFailure), (0, TemporaryFailure),
])
def test_one_translation_of_api_errors(status: int, kind: type[Exception]) -> None:
    err = translate_api_error(_api(status, "spec.chunkSeconds: must be <= 300"), "create x")
    assert type(err) is kind
    assert "create x" in str(err)
    if status == 422:
        assert "spec.chunkSeconds: must be <= 300" in str(err)


def test_a_create_in_a_terminating_namespace_is_told_apart() -> None:
    """The API server's 403 there (body as the local control plane sends it): the cause's
    type travels as `reason`. Any other 403 is ApiAccessDenied (RBAC), a TemporaryFailure."""
    err = ApiException(status=403, reason="Forbidden")
    err.body = json.dumps({
        "kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": "unable to create new content in namespace a because it is being "
                   "terminated",
        "details": {"causes": [{"reason": "NamespaceTerminating", "field":
                                "metadata.namespace", "message": "namespace a is being "
                                "terminated"}]}})
    translated = translate_api_error(err, "create x")
    assert type(translated) is NamespaceTerminating
    assert isinstance(translated, TemporaryFailure) and "being terminated" in str(translated)
    denied = translate_api_error(_api(403, "forbidden: RBAC"), "create x")
    assert type(denied) is ApiAccessDenied and isinstance(denied, TemporaryFailure)


def test_network_errors_are_temporary_and_bugs_are_not_translated() -> None:
    err = urllib3.exceptions.MaxRetryError(None, "/api", reason="refused")  # type: ignore[arg-type]
    assert isinstance(translate_api_error(err, "get pod"), TemporaryFailure)
    assert isinstance(translate_api_error(ConnectionRefusedError(), "get pod"),
                      TemporaryFailure)
    with pytest.raises(TypeError):
        translate_api_error(KeyError("x"), "get pod")


def test_owner_reference_and_controller_uid() -> None:
    ref = owner_reference("standup", "u-1")
    assert ref == {"apiVersion": "voicetrack.dev/v1alpha1", "kind": "RecordingSession",
                   "name": "standup", "uid": "u-1", "controller": True,
                   "blockOwnerDeletion": True}
    assert controller_uid({"metadata": {"ownerReferences": [ref]}}) == "u-1"
    assert controller_uid({"metadata": {}}) is None


def test_meeting_id() -> None:
    derived = derive_meeting_id("0f1e2d3c-uid")
    assert len(derived) == 16 and derived == derive_meeting_id("0f1e2d3c-uid")
    assert meeting_id_for("0f1e2d3c-uid", None) == derived
    assert meeting_id_for("0f1e2d3c-uid", MEETING) == MEETING


def test_chunk_status_reads_what_the_operator_writes() -> None:
    sha = "0" * 64
    st = ChunkStatus.model_validate({
        "transcodeStatus": "done", "trackCount": 1, "jobName": "s-tx-000000",
        "tracks": [
            {"userId": USER, "format": "flac", "key": "k.flac", "bytes": 1, "sha256": sha,
             "durationMs": 5000},
            {"userId": USER, "format": "mp3", "key": "k.mp3", "bytes": 1, "sha256": sha,
             "durationMs": 5000}],
        "somethingNewer": True})
    assert st.transcode_status is TranscodeStatus.DONE and st.transcode_status.terminal
    out = st.primary_output(USER)
    assert out is not None and out.format == "mp3"
    assert st.primary_output("1" * 18) is None
    assert ChunkStatus.model_validate({}).transcode_status is TranscodeStatus.QUEUED


def test_transcode_ranks_move_forward_only() -> None:
    q, p, d, f = (TranscodeStatus(v) for v in ("queued", "in_progress", "done", "failed"))
    assert q.rank < p.rank < d.rank == f.rank
    assert not p.terminal and d.terminal and f.terminal


def test_session_states() -> None:
    assert SessionState("Recording").active and not SessionState("Refused").active
    assert SessionState("Promoting").deleting and not SessionState("Paused").deleting
    assert {s.value for s in SessionState} >= {"Pending", "Recording", "Paused", "Stopped",
                                                 "Failed", "Refused", "PromotionFailed"}


def test_session_state_of_an_object() -> None:
    assert SessionState.of({"status": {"state": "Paused"}}) is SessionState.PAUSED
    assert SessionState.of({"status": {}}) is None and SessionState.of({}) is None
    assert SessionState.of({"status": {"state": "FromTheFuture"}}) is None


def test_chunk_track_phase_is_a_sub_slot_count_of_samples() -> None:
    """`phaseSamples` (0..959, 48 kHz) defaults to 0 for chunks written before it, round-
    trips in camelCase, and a whole slot (960) or a negative count is refused by name."""
    from pydantic import ValidationError

    from voicetrack.chunkspec import ChunkTrack
    base = {"userId": USER, "key": f"{GUILD}/{MEETING}/chunks/000000/{USER}.opus",
            "frames": 1, "firstMs": 0, "lastMs": 0, "bytes": 1, "sha256": "0" * 64}
    assert ChunkTrack.model_validate(base).phase_samples == 0
    track = ChunkTrack.model_validate({**base, "phaseSamples": 959})
    assert track.phase_samples == 959 and track.to_api()["phaseSamples"] == 959
    # 0 is left out, so a chunk without a phase stays readable by an operator or
    # transcoder of before the field (extra="forbid") while an upgrade rolls out
    assert "phaseSamples" not in ChunkTrack.model_validate(base).to_api()
    assert ChunkTrack.model_validate(base).to_api() == base | {"channels": 2}
    for bad in (960, -1):
        with pytest.raises(ValidationError, match="phaseSamples"):
            ChunkTrack.model_validate({**base, "phaseSamples": bad})
