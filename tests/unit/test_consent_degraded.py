"""Degraded consent on the wire (issue 12): the recorder marks every chunk it seals while
Discord refuses the GUILD_MEMBERS intent (`ChunkSpec.consentDegraded`), and the operator's
status builder shows the newest chunk's mark as the session's `ConsentDegraded` condition,
absent for a normal session.

The model (round trip and bounds), the recorder's sealing path (the real `Recorder`,
`Chunker` and `Spool`, its marker chunks through the uploader's side only) and
`build_status` with `ChunkView.from_object` on API-shaped chunks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import ValidationError

from tests.unit.test_chunker_consent import FRAME, LAYOUT, MarkerUploader, at, recorder
from voicetrack.chunkspec import ChunkSpec, ChunkTrack, ConsentDegraded, Gap
from voicetrack_operator.status import CONSENT_DEGRADED, ChunkView, Observation, build_status
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.consent import Consent
from voicetrack_recorder.discord.login import MEMBERS_REFUSED, MEMBERS_REFUSED_REASON
from voicetrack_recorder.spool import Spool

pytestmark = pytest.mark.unit

GUILD, MEETING = "123456789012345678", "AbCdEfGhIjKlMnOp"
B = "400000000000000072"
DEGRADED = ConsentDegraded(reason=MEMBERS_REFUSED_REASON, message=MEMBERS_REFUSED)
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def spec_doc(index: int = 0, degraded: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"sessionName": "standup", "meetingId": MEETING, "guildId": GUILD,
                           "index": index, "startMs": index * 5000,
                           "endMs": (index + 1) * 5000}
    if degraded is not None:
        doc["consentDegraded"] = degraded
    return doc


# ------------------------------------------------------------------------------- the model


def test_chunk_spec_round_trips_consent_degraded_and_omits_it_when_normal() -> None:
    doc = spec_doc(degraded={"reason": MEMBERS_REFUSED_REASON, "message": MEMBERS_REFUSED})
    spec = ChunkSpec.model_validate(doc)
    assert spec.consent_degraded == DEGRADED
    assert spec.to_api() == {**doc, "rawFormat": "ogg-opus", "tracks": [], "optedOut": []}
    assert ChunkSpec.model_validate(spec.to_api()) == spec
    normal = ChunkSpec.model_validate(spec_doc())
    assert normal.consent_degraded is None and "consentDegraded" not in normal.to_api()


@pytest.mark.parametrize(("degraded", "field"), [
    ({"reason": "MembersIntentRefused", "message": "m" * 1025}, "message"),
    ({"reason": "MembersIntentRefused", "message": ""}, "message"),
    ({"reason": "membersIntentRefused", "message": "m"}, "reason"),
    ({"reason": "Members Intent", "message": "m"}, "reason"),
    ({"reason": "M" * 65, "message": "m"}, "reason"),
    ({"reason": "MembersIntentRefused"}, "message"),
    ({"reason": "MembersIntentRefused", "message": "m", "extra": 1}, "extra"),
])
def test_consent_degraded_is_bounded(degraded: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        ChunkSpec.model_validate(spec_doc(degraded=degraded))
    assert field in str(err.value)


def test_the_bounds_admit_their_limits_and_the_recorders_message() -> None:
    ok = ChunkSpec.model_validate(spec_doc(degraded={"reason": "A" * 64, "message": "m" * 1024}))
    assert ok.consent_degraded is not None and len(ok.consent_degraded.message) == 1024
    assert len(MEMBERS_REFUSED) <= 1024


# ------------------------------------------------------------------ the recorder's sealing


def test_chunks_sealed_while_degraded_carry_it_and_only_those(tmp_path: Path) -> None:
    rec, _ = recorder()
    spool = Spool(tmp_path / "s", 1 << 30, LAYOUT, "standup")
    for slot in range(0, 500):
        rec.push(B, slot, FRAME)
    before = rec.chunker.seal()  # sealed before the source knew: nothing to say yet
    rec.consent.degraded = DEGRADED  # what DiscordSource sets on a refused intent
    after = rec.chunker.seal()
    assert before is not None and after is not None
    assert before.consent_degraded is None and after.consent_degraded == DEGRADED
    assert "consentDegraded" not in spool.add(before).spec.to_api()
    assert spool.add(after).spec.to_api()["consentDegraded"] == {
        "reason": "MembersIntentRefused", "message": MEMBERS_REFUSED}


def test_marker_chunks_written_at_stop_carry_it(tmp_path: Path) -> None:
    rec, time = recorder()
    uploader = MarkerUploader(Spool(tmp_path / "s", 1 << 30, LAYOUT, "standup"))
    rec.uploader = cast(Any, uploader)
    rec.consent.lacks_members(DEGRADED)  # what DiscordSource says of its gateway
    rec.consent.set_policy([], ["500000000000000001"])  # the session has role opt-outs
    rec.push(B, 0, FRAME)
    rec._unsaid = [Gap(start_ms=0, end_ms=1000, cause="connection-lost")]  # S3 down at stop
    rec._give_up(deadline=0.0)
    at(time, rec, 1200)
    rec.kube.opt_out = (frozenset({B}), frozenset({"500000000000000001"}))  # an opt-out
    # no chunk carried yet
    rec.follow_consent()
    rec._mark_consent(deadline=0.0)
    lost, consent = uploader.markers
    assert lost.consent_degraded == DEGRADED and consent.consent_degraded == DEGRADED
    assert [o.user_id for o in consent.opted_out] == [B]


# --------------------------------------------------------------------- the status builder


def chunk_obj(index: int, degraded: ConsentDegraded | None, *, tracks: bool = True,
              refused: bool = False) -> dict[str, Any]:
    """A chunk as the API shows it: B's track in it (unless not `tracks`)."""
    track = ChunkTrack(user_id=B, key=f"r/{GUILD}/{MEETING}/chunks/{index:06d}/{B}.opus",
                       frames=250, first_ms=index * 5000, last_ms=index * 5000 + 4980,
                       bytes=10, sha256="ab" * 32)
    spec = ChunkSpec.model_validate(spec_doc(index)).model_copy(
        update={"consent_degraded": degraded, "tracks": [track] if tracks else []})
    status: dict[str, Any] = {"transcodeStatus": "failed" if refused else "done"}
    if refused:
        status["refused"] = "not this session's"
    return {"spec": spec.to_api(), "status": status}


def conditions(objs: list[dict[str, Any]], previous: list[dict[str, Any]] | None = None,
               now: str = T0) -> dict[str, dict[str, Any]]:
    obs = Observation(generation=2, paused=False, recorder_phase="Running",
                      chunks=[ChunkView.from_object(o) for o in objs])
    return {c["type"]: c for c in build_status(obs, previous, now)["conditions"]}


def test_the_newest_degraded_chunk_sets_the_condition() -> None:
    objs = [chunk_obj(1, DEGRADED), chunk_obj(0, DEGRADED)]  # listed in any order
    cond = conditions(objs)[CONSENT_DEGRADED]
    assert cond == {"type": "ConsentDegraded", "status": "True",
                    "reason": "MembersIntentRefused", "message": MEMBERS_REFUSED,
                    "lastTransitionTime": T0, "observedGeneration": 2}
    again = conditions([*objs, chunk_obj(2, DEGRADED)], list(conditions(objs).values()), T1)
    assert again[CONSENT_DEGRADED]["lastTransitionTime"] == T0  # still True: no transition


def test_a_normal_session_has_no_condition() -> None:
    assert CONSENT_DEGRADED not in conditions([chunk_obj(0, None), chunk_obj(1, None)])
    assert CONSENT_DEGRADED not in conditions([])
    assert ChunkView.from_object(chunk_obj(0, None)).consent_degraded is None


def test_a_later_normal_chunk_turns_the_condition_false() -> None:
    first = conditions([chunk_obj(0, DEGRADED)])
    later = conditions([chunk_obj(0, DEGRADED), chunk_obj(1, None)], list(first.values()), T1)
    cond = later[CONSENT_DEGRADED]
    assert (cond["status"], cond["reason"], cond["lastTransitionTime"]) == (
        "False", "NotDegraded", T1)
    assert "chunk recorded with degraded consent is 0" in cond["message"]
    assert MEMBERS_REFUSED in cond["message"]


def test_refused_chunks_and_unmarked_silent_ones_say_nothing() -> None:
    """A refused chunk (not the session's, whatever its index) neither sets nor clears the
    condition; nor does a chunk without tracks and without a mark (windows a restarted
    recorder sealed before its gateway login: no audio to consent to). Second review: the
    first flipped the condition, the second turned it False for a chunk window."""
    degraded = [chunk_obj(0, DEGRADED)]
    assert conditions([*degraded, chunk_obj(9, None, refused=True)])[
        CONSENT_DEGRADED]["status"] == "True"
    assert CONSENT_DEGRADED not in conditions([chunk_obj(0, None),
                                               chunk_obj(9, DEGRADED, refused=True)])
    assert conditions([*degraded, chunk_obj(1, None, tracks=False)])[
        CONSENT_DEGRADED]["status"] == "True"


def test_role_opt_outs_added_later_degrade_consent_and_removed_ones_end_it() -> None:
    """A session started without role opt-outs connected without GUILD_MEMBERS: role
    opt-outs added later apply in the degraded mode, so its chunks say so from then on;
    with all of them removed again they no longer do (second review: never marked)."""
    consent = Consent(SessionClock(0))
    consent.lacks_members(DEGRADED)  # the source's gateway has no GUILD_MEMBERS
    assert consent.degraded is None  # no role opt-out: nothing is lacking
    consent.set_policy([], ["500000000000000001"])
    assert consent.degraded == DEGRADED
    consent.set_policy([B], [])
    assert consent.degraded is None
    consent.lacks_members(None)  # a source with the intent
    consent.set_policy([], ["500000000000000001"])
    assert consent.degraded is None
