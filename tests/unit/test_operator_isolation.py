"""`services.isolation.chunk_refusal`, the pure check of a chunk against its session: each
spoiler damages a sound chunk one way and must be named; the sound chunk passes, up to
the exact window bound."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from voicetrack.chunkspec import ChunkSpec, ChunkTrack, Gap
from voicetrack.errors import TemporaryFailure
from voicetrack.layout import MeetingLayout
from voicetrack_operator.builders import SessionRef
from voicetrack_operator.services.isolation import (
    ABSENT_GRACE_S,
    WINDOW_TOLERANCE_MS,
    ChunkClaim,
    SessionFacts,
    chunk_refusal,
)

pytestmark = pytest.mark.unit

CREATED = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SESSION = SessionFacts(ref=SessionRef("standup", "team", "uid-1"),
                       layout=MeetingLayout("recordings", "123456789012345678", "m" * 16),
                       raw_format="ogg-opus", created=CREATED)
USERS = ("111111111111111111", "222222222222222222")


def claim(start: int = 0, end: int = 10_000, **update: object) -> ChunkClaim:
    tracks = [ChunkTrack(user_id=u, key=SESSION.layout.raw_key(0, u, "ogg-opus"), frames=1,
                         first_ms=start, last_ms=start, bytes=1, sha256="ab" * 32)
              for u in USERS]
    spec = ChunkSpec(session_name="standup", meeting_id="m" * 16,
                     guild_id="123456789012345678", index=0, start_ms=start, end_ms=end,
                     tracks=tracks)
    base = ChunkClaim(name="standup-chunk-000000", label_session="standup",
                      owner_uid="uid-1", spec=spec, created=CREATED + timedelta(seconds=11))
    return ChunkClaim(**{**base.__dict__, **update})


def keys(c: ChunkClaim) -> set[str]:
    return {t.key for t in c.spec.tracks}


def test_a_sound_chunk_passes_up_to_the_window_bound() -> None:
    sound = claim()
    assert chunk_refusal(sound, SESSION, CREATED, keys(sound)) is None
    bound = 11_000 + WINDOW_TOLERANCE_MS
    assert chunk_refusal(claim(bound - 5000, bound), SESSION, CREATED, None) is None
    assert "elapsed time 11000 ms" in str(
        chunk_refusal(claim(bound - 5000, bound + 20), SESSION, CREATED, None))
    # a chunk rebuilt from its manifest has no creation time: bounded by now
    rebuilt = claim(bound - 5000, bound + 20, created=None)
    assert chunk_refusal(rebuilt, SESSION, CREATED + timedelta(seconds=12), None) is None


@pytest.mark.parametrize(("update", "why"), [
    ({"owner_uid": "uid-2"}, "owner uid is uid-2"),
    ({"owner_uid": None}, "owner uid is missing"),
    ({"label_session": "other"}, "label voicetrack.dev/session='other'"),
    ({"name": "other-chunk-000000"}, "is not 'standup-chunk-000000'"),
])
def test_a_claim_of_another_identity_is_refused(update: dict[str, Any], why: str) -> None:
    assert why in str(chunk_refusal(claim(**update), SESSION, CREATED, None))


def test_spec_spoilers_are_named() -> None:
    sound = claim()
    other_session = sound.spec.model_copy(update={"session_name": "other"})
    assert "spec.sessionName 'other'" in str(chunk_refusal(
        claim(spec=other_session), SESSION, CREATED, None))
    pcm = SessionFacts(**{**SESSION.__dict__, "raw_format": "pcm-s16le"})
    assert "rawFormat ogg-opus" in str(chunk_refusal(sound, pcm, CREATED, None))
    twice = sound.spec.model_copy(update={"tracks": [sound.spec.tracks[0]] * 2})
    assert "more than one track" in str(chunk_refusal(claim(spec=twice), SESSION, CREATED,
                                                      None))
    late_gap = sound.spec.model_copy(update={
        "start_ms": 5000, "gap": Gap(start_ms=0, end_ms=6000, cause="paused")})
    assert "does not end before" in str(chunk_refusal(claim(spec=late_gap), SESSION,
                                                      CREATED, None))
    later = CREATED + timedelta(seconds=11 + ABSENT_GRACE_S)
    assert f"absent from S3: {sound.spec.tracks[1].key}" in str(chunk_refusal(
        sound, SESSION, later, {sound.spec.tracks[0].key}))


def test_a_raw_track_not_listed_yet_is_checked_again_not_refused() -> None:
    """The recorder writes raw tracks before the chunk: an absence soon after the chunk's
    creation is a listing that lags. Before, the refusal was final at once."""
    sound = claim()
    young = CREATED + timedelta(seconds=11 + ABSENT_GRACE_S - 1)
    with pytest.raises(TemporaryFailure, match="not listed in S3 yet"):
        chunk_refusal(sound, SESSION, young, {sound.spec.tracks[0].key})
    # only the absence waits: a chunk with another fault is refused at once
    with pytest.raises(TemporaryFailure):
        chunk_refusal(sound, SESSION, young, set())
    assert "owner uid" in str(chunk_refusal(claim(owner_uid="uid-2"), SESSION, young, set()))
    # a chunk rebuilt from its manifest has no creation time: not retried
    assert "absent from S3" in str(chunk_refusal(claim(created=None), SESSION, young, set()))
