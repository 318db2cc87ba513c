"""The recorder's upload grant cannot reach the transcoder's outputs (review of deletion,
item 3), on real SeaweedFS, ffmpeg and libopus.

The grant covers `<root>/chunks/`. The transcoder's outputs (chunk tracks, `result.json`,
pieces, `piece.json`, `head-after.json`) used to lie in the same chunk folders, so a
compromised recorder could overwrite a piece together with the `piece.json` assembly checks
it against, or the `result.json` the operator reads, and forged audio reached the final
tracks. They now lie under `<root>/outputs/` (`voicetrack.layout`): S3 itself refuses the
grant's POST there (403 AccessDenied, the policy's starts-with condition), even when the
recorder's client-side prefix check is bypassed. A session transcoded before the split
(outputs still in `chunks/<k>/`) is promoted in full from its raw chunks.

The grant can still overwrite a done chunk's raw tracks in `chunks/<k>/` (issue 15): the
promotion found the sha256 mismatch and left the chunk out, so a recorder could take its
earlier audio out of the final tracks after the fact. Each chunk's Job now stores the raw
tracks it verified as frozen copies in `outputs/<k>/` (`MeetingLayout.frozen_raw_key`),
which promotion reads instead: the overwrite changes no final track. A chunk with no frozen
copy (transcoded before them) is still read from `chunks/<k>/`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path

import pytest

from tests.audio_helpers import Speaker, upload_chunks
from tests.integration.test_upload_grant import grant_for, raw_file
from voicetrack.chunkspec import ChunkSpec
from voicetrack.errors import ChunkInputError
from voicetrack.layout import MeetingLayout, parse_key
from voicetrack.manifests import FinalManifest, PromotionPlan
from voicetrack.objectstore import ObjectStore, S3Settings, sha256_hex
from voicetrack.uploadgrant import GrantRefused, post_object
from voicetrack_transcoder.chunk import transcode_chunk
from voicetrack_transcoder.promote import promote

pytestmark = pytest.mark.integration

LAYOUT = MeetingLayout("recordings", "100000000000000001", "GrAnToUtPuTsAaAa")
A, B = "200000000000000001", "200000000000000002"
SPEAKERS = [Speaker(A, 180, talks=[(200, 1800), (4300, 5700)], markers=[1000]),
            Speaker(B, 260, talks=[(300, 1500), (4100, 5200)], markers=[4500])]
WINDOWS = [(0, 2000), (2000, 4000), (4000, 6000)]
"""Chunk 1 is a window nobody spoke in; each spoken chunk's transcode stores the head of
the silence that may follow it (`head-after.json`)."""
SESSION_MS = 6000
_buckets = itertools.count(1)


@dataclasses.dataclass
class Recorded:
    store: ObjectStore
    chunks: list[ChunkSpec]


def _recorded(s3_server: S3Settings) -> Recorded:
    """A fresh bucket with the session's raw chunks and `chunk.json`s, each chunk with
    tracks transcoded as its Job would (mp3, pieces of both kinds of track), and the
    promotion plan."""
    store = ObjectStore(dataclasses.replace(
        s3_server, bucket=f"vt-grant-outputs-{os.getpid()}-{next(_buckets)}"))
    store.ensure_bucket()
    session = upload_chunks(store, LAYOUT, SPEAKERS, WINDOWS, SESSION_MS, [])
    for chunk in session.chunks:
        store.put_json(LAYOUT.chunk_manifest_key(chunk.index), chunk.to_api())
        if chunk.tracks:
            transcode_chunk(store, chunk, LAYOUT.prefix, ["mp3"], 96, tracks="both")
    plan = PromotionPlan(guild_id=LAYOUT.guild_id, meeting_id=LAYOUT.meeting_id,
                         prefix=LAYOUT.prefix, session_end_ms=SESSION_MS, speakers=[A, B],
                         chunks=[c.model_copy(update={"gap": None}) for c in session.chunks],
                         gaps=[], formats=["mp3"], mp3_bitrate=96)
    store.put_json(LAYOUT.promotion_plan_key, plan.to_api())
    return Recorded(store, session.chunks)


def test_the_grant_cannot_overwrite_any_transcoder_output(
        s3_server: S3Settings, tmp_path: Path) -> None:
    rec = _recorded(s3_server)
    store = rec.store
    assert [c.index for c in rec.chunks if not c.tracks] == [1]
    # what the transcodes made: everything but the raw tracks, chunk.json and the plan
    made = sorted(k for k in store.list_keys(LAYOUT.root + "/")
                  if not k.startswith(LAYOUT.chunks_root) and k != LAYOUT.promotion_plan_key)
    for key in (LAYOUT.chunk_output_key(0, A, "mp3"), LAYOUT.result_key(0),
                LAYOUT.frozen_raw_key(0, A, "ogg-opus"), LAYOUT.frozen_raw_key(2, B, "ogg-opus"),
                LAYOUT.frozen_spec_key(0), LAYOUT.frozen_spec_key(2),
                LAYOUT.piece_key(0, A, "mp3"), LAYOUT.piece_key(2, "mix", "mp3"),
                LAYOUT.piece_manifest_key(0), LAYOUT.piece_manifest_key(2),
                LAYOUT.head_after_key(0), LAYOUT.head_after_key(2)):
        assert key in made, (key, made)
    before = {k: sha256_hex(store.get_bytes(k)) for k in made}

    grant = grant_for(store, LAYOUT)
    endpoint = store.settings.endpoint
    # a compromised recorder bypasses its client's prefix check: S3 still refuses
    bypass = grant.model_copy(update={"prefix": LAYOUT.root + "/"})
    forged = raw_file(tmp_path, b"FORGED")
    for key in made:
        with pytest.raises(GrantRefused, match=r"AccessDenied") as err:
            post_object(endpoint, bypass, key, forged)
        assert err.value.status == 403, key
    assert {k: sha256_hex(store.get_bytes(k)) for k in made} == before
    assert not [k for k in made if k.startswith(grant.prefix)]
    parsed = [parse_key(k, LAYOUT.prefix) for k in made]
    assert {p.area if p else None for p in parsed} == {"outputs"}
    # the grant still writes its own prefix (the raw tracks): the refusal is the prefix's
    own = LAYOUT.raw_key(5, A, "ogg-opus")
    post_object(endpoint, grant, own, forged)
    assert store.get_bytes(own) == b"FORGED"
    store.delete_keys([own])

    # the pieces are intact: promotion assembles them
    manifest = promote(store, LAYOUT.promotion_plan_key)
    assert (manifest.assembly, manifest.fallback_reason) == ("incremental", None)


def test_a_session_transcoded_before_the_split_is_promoted_in_full(
        s3_server: S3Settings) -> None:
    """Outputs in the old place (`chunks/<k>/`, as transcoders before the split wrote
    them): no piece is found where assembly looks, so promotion falls back to the full
    one from the raw chunks, and says why."""
    rec = _recorded(s3_server)
    store = rec.store
    for key in store.list_keys(LAYOUT.outputs_root):
        parsed = parse_key(key, LAYOUT.prefix)
        assert parsed is not None and parsed.index is not None and parsed.name is not None
        if not parsed.name.startswith("raw-"):  # no frozen copies then
            store.copy(key, f"{LAYOUT.chunk_dir(parsed.index)}/{parsed.name}")
    assert store.delete_prefix(LAYOUT.outputs_root) > 0
    manifest = promote(store, LAYOUT.promotion_plan_key)
    assert manifest.assembly == "full"
    assert manifest.fallback_reason is not None and "piece.json" in manifest.fallback_reason
    assert manifest.duration_ms == SESSION_MS
    assert {t.track for t in manifest.tracks} == {A, B, "mix"}


def _tracks(manifest: FinalManifest) -> dict[str, tuple[int, str]]:
    """track → (bytes, sha256) of a promotion's final tracks."""
    return {t.track: (t.bytes, t.sha256) for t in manifest.tracks}


def _promoted(store: ObjectStore) -> tuple[FinalManifest, FinalManifest]:
    """(full, incremental) promotions of the plan. Chunk 0's `head-after.json` is gone, so
    the assembly renders the silent unit after it from chunk 0's raw tracks (as it does
    when that head was never made)."""
    full = promote(store, LAYOUT.promotion_plan_key, incremental=False)
    assert (full.assembly, full.gaps, full.duration_ms) == ("full", [], SESSION_MS)
    store.delete_keys([LAYOUT.head_after_key(0)])
    incremental = promote(store, LAYOUT.promotion_plan_key)
    assert (incremental.assembly, incremental.fallback_reason, incremental.gaps) == (
        "incremental", None, [])
    return full, incremental


def _spoken(rec: Recorded) -> list[tuple[ChunkSpec, str, str]]:
    """(chunk, user id, raw key) of every raw track of the session."""
    return [(c, t.user_id, t.key) for c in rec.chunks for t in c.tracks]


def test_raw_tracks_overwritten_through_the_grant_after_their_transcode_change_nothing(
        s3_server: S3Settings, tmp_path: Path) -> None:
    """Issue 15: every raw track of both spoken chunks overwritten through the recorder's
    grant after the chunks were transcoded. Promotion, in full and assembled (rendering
    from chunk 0's raw tracks), makes the same final tracks as without the overwrite;
    before frozen copies it failed on chunk 0 (ChunkInputError, sha256), the chunk left
    out. A second run of a chunk's Job reads the frozen copies too."""
    rec = _recorded(s3_server)
    store = rec.store
    spoken = _spoken(rec)
    for chunk, user, _ in spoken:  # the exact bytes the chunk verified, and its spec
        frozen = store.get_bytes(LAYOUT.frozen_raw_key(chunk.index, user, "ogg-opus"))
        assert sha256_hex(frozen) == next(t.sha256 for t in chunk.tracks if t.user_id == user)
        assert ChunkSpec.model_validate(store.get_json(LAYOUT.frozen_spec_key(chunk.index))
                                        ) == chunk
    full, incremental = _promoted(store)

    grant = grant_for(store, LAYOUT)
    forged = raw_file(tmp_path, b"OggS forged by a compromised recorder" * 40)
    for _, _, key in spoken:
        post_object(store.settings.endpoint, grant, key, forged)
    assert {store.get_bytes(key) for _, _, key in spoken} == {Path(forged).read_bytes()}

    again = promote(store, LAYOUT.promotion_plan_key, incremental=False)
    assert (again.gaps, _tracks(again)) == ([], _tracks(full))
    assembled = promote(store, LAYOUT.promotion_plan_key)
    assert (assembled.assembly, assembled.fallback_reason) == ("incremental", None)
    assert _tracks(assembled) == _tracks(incremental)
    before = store.get_bytes(LAYOUT.result_key(0))
    transcode_chunk(store, rec.chunks[0], LAYOUT.prefix, ["mp3"], 96, tracks="both")
    assert store.get_bytes(LAYOUT.result_key(0)) == before


def test_a_chunk_without_frozen_copies_is_read_from_its_chunk_folder(
        s3_server: S3Settings) -> None:
    """A chunk transcoded before frozen copies existed (an upgrade before the promotion)
    has none: promotion reads and verifies its raw tracks in `chunks/<k>/`, as before,
    and makes the same final tracks. It writes no frozen copy itself."""
    rec = _recorded(s3_server)
    store = rec.store
    full, incremental = _promoted(store)
    frozen = [LAYOUT.frozen_raw_key(c.index, u, "ogg-opus") for c, u, _ in _spoken(rec)]
    assert store.delete_keys(frozen) == len(frozen) == 4
    old_full, old_incremental = _promoted(store)
    assert _tracks(old_full) == _tracks(full)
    assert _tracks(old_incremental) == _tracks(incremental)
    assert not [k for k in frozen if store.exists(k)]


def test_a_damaged_frozen_copy_is_replaced_by_the_intact_recorder_object(
        s3_server: S3Settings, tmp_path: Path) -> None:
    """Only a store fault can change a frozen copy (the grant cannot write there). It is
    verified against the plan's sha256 like any raw track; when it fails, the raw track in
    `chunks/<k>/` is read instead (the same sha256 pins it): intact, the chunk promotes
    with the same final tracks. When that object was overwritten too, the chunk fails,
    naming it and both objects (the operator leaves the chunk out)."""
    rec = _recorded(s3_server)
    store = rec.store
    full = promote(store, LAYOUT.promotion_plan_key, incremental=False)
    key = LAYOUT.frozen_raw_key(2, B, "ogg-opus")
    store.put_bytes(key, b"OggS damaged" * 10)
    again = promote(store, LAYOUT.promotion_plan_key, incremental=False)
    assert (again.gaps, _tracks(again)) == ([], _tracks(full))

    raw_key = next(t.key for t in rec.chunks[2].tracks if t.user_id == B)
    post_object(store.settings.endpoint, grant_for(store, LAYOUT), raw_key,
                raw_file(tmp_path, b"OggS forged by a compromised recorder" * 40))
    with pytest.raises(ChunkInputError, match=r"sha256") as err:
        promote(store, LAYOUT.promotion_plan_key, incremental=False)
    assert err.value.index == 2 and key in str(err.value) and raw_key in str(err.value)
