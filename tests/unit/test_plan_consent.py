"""The consent rule of the promotion plan (issue 12; docs/consent.md, "Promotion"): who is
excluded, what the plan promotes without them, and `final/consent.json`'s content."""

from __future__ import annotations

import pytest

from voicetrack.chunkspec import ChunkSpec, ChunkStatus, ChunkTrack, Gap, OptOut
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import PromotionPlan
from voicetrack.resources import SessionSpec, TranscodeStatus
from voicetrack_operator.plan import (
    build_promotion_plan,
    consent_chunks,
    excluded_users,
    output_ms,
    overlapping,
    rejected_consent,
)
from voicetrack_operator.services.inventory import ChunkInventory, InventoryChunk

pytestmark = pytest.mark.unit

GUILD = "123456789012345678"
MEETING = "m" * 16
ANN, BOB, CAT, DAN = ("111111111111111111", "222222222222222222", "333333333333333333",
                      "444444444444444444")
SHA = "0" * 64
DONE, FAILED = TranscodeStatus.DONE, TranscodeStatus.FAILED


def spec(opt_out_users: tuple[str, ...] = ()) -> SessionSpec:
    return SessionSpec.model_validate({"guildId": GUILD, "channelId": "234567890123456789",
                                       "meetingId": MEETING,
                                       "optOutUserIds": list(opt_out_users)})


def chunk(index: int, start: int, end: int, users: dict[str, tuple[int, int]],
          opted: tuple[tuple[str, int, str], ...] = (), gap: Gap | None = None) -> ChunkSpec:
    """A chunk of window [start, end) (session ms); `users`: user → (firstMs, lastMs) of
    their packets; `opted`: (user, sinceMs, via)."""
    layout = MeetingLayout("k", GUILD, MEETING)
    return ChunkSpec(
        session_name="standup", meeting_id=MEETING, guild_id=GUILD, index=index,
        start_ms=start, end_ms=end, gap=gap,
        tracks=[ChunkTrack(user_id=u, key=layout.raw_key(index, u, "ogg-opus"), frames=10,
                           first_ms=a, last_ms=b, bytes=100, sha256=SHA)
                for u, (a, b) in users.items()],
        opted_out=[OptOut(user_id=u, since_ms=s, via=v) for u, s, v in opted])  # type: ignore[arg-type]


def plan_of(chunks: list[tuple[ChunkSpec, TranscodeStatus]],
            opt_out_users: tuple[str, ...] = ()) -> PromotionPlan:
    plan = build_promotion_plan(spec(opt_out_users), MEETING, chunks)
    assert plan is not None
    return plan


def users_in(plan: PromotionPlan) -> list[list[str]]:
    return [[t.user_id for t in c.tracks] for c in plan.chunks]


def test_nobody_opted_out_lists_only_the_recorded() -> None:
    plan = plan_of([(chunk(0, 2_000, 12_000, {ANN: (2_100, 11_000), BOB: (5_000, 9_000)}),
                     DONE),
                    (chunk(1, 12_000, 22_000, {CAT: (15_020, 21_000)}), DONE)])
    assert plan.excluded == [] and plan.speakers == [ANN, BOB, CAT]
    assert plan.consent is not None
    assert plan.consent.to_api() == {"meetingId": MEETING, "optedOut": [], "recorded": [
        {"userId": ANN, "firstMs": 100}, {"userId": BOB, "firstMs": 3_000},
        {"userId": CAT, "firstMs": 13_020}]}


def test_opted_out_at_stop_is_excluded_retroactively() -> None:
    # CAT speaks in chunk 0, opts out (role) at 12 000 and is still out in the last chunk
    chunks = [(chunk(0, 0, 10_000, {ANN: (0, 9_980), CAT: (1_000, 9_000)}), DONE),
              (chunk(1, 10_000, 20_000, {ANN: (10_000, 19_980), CAT: (10_000, 11_980)},
                     opted=((CAT, 12_000, "role"),)), DONE),
              (chunk(2, 20_000, 30_000, {ANN: (20_000, 29_980)},
                     opted=((CAT, 12_000, "role"),)), DONE)]
    plan = plan_of(chunks)
    assert plan.excluded == [CAT]
    assert plan.speakers == [ANN]
    assert users_in(plan) == [[ANN], [ANN], [ANN]]  # chunk 0's audio of CAT too
    assert [o.user_id for c in plan.chunks for o in c.opted_out] == [CAT, CAT]
    assert plan.consent is not None
    assert [(r.user_id, r.first_ms) for r in plan.consent.recorded] == [(ANN, 0)]
    assert [e.to_api() for e in plan.consent.opted_out] == [
        {"userId": CAT, "sinceMs": 12_000, "via": "role", "excluded": True}]


def test_opted_out_then_in_keeps_their_audio() -> None:
    chunks = [(chunk(0, 0, 10_000, {ANN: (0, 9_980), BOB: (500, 9_000)}), DONE),
              (chunk(1, 10_000, 20_000, {ANN: (10_000, 19_980)},
                     opted=((BOB, 10_000, "user"),)), DONE),
              (chunk(2, 20_000, 30_000, {ANN: (20_000, 29_980), BOB: (25_000, 29_000)}),
               DONE)]
    plan = plan_of(chunks)
    assert plan.excluded == [] and plan.speakers == [ANN, BOB]
    assert users_in(plan) == [[ANN, BOB], [ANN], [ANN, BOB]]
    assert plan.consent is not None
    assert [(r.user_id, r.first_ms) for r in plan.consent.recorded] == [(ANN, 0), (BOB, 500)]
    assert [e.to_api() for e in plan.consent.opted_out] == [
        {"userId": BOB, "sinceMs": 10_000, "via": "user", "excluded": False}]


def test_last_chunk_by_index_decides_even_when_it_failed() -> None:
    chunks = [(chunk(0, 0, 10_000, {ANN: (0, 9_980), BOB: (0, 9_980)}), DONE),
              (chunk(1, 10_000, 20_000, {ANN: (10_000, 19_980)},
                     opted=((BOB, 10_000, "user"),)), FAILED)]
    plan = plan_of(chunks)
    assert plan.excluded == [BOB] and users_in(plan) == [[ANN]]
    # and the chunks' order in the argument does not matter
    assert plan_of(list(reversed(chunks))).excluded == [BOB]


def test_spec_opt_out_at_deletion_excludes_without_any_chunk_saying_so() -> None:
    chunks = [(chunk(0, 0, 10_000, {ANN: (0, 9_980), BOB: (100, 9_000)}), DONE),
              (chunk(1, 10_000, 20_000, {ANN: (10_000, 19_980)}), DONE)]
    plan = plan_of(chunks, opt_out_users=(BOB, DAN))
    # DAN never was in the channel: excluded from nothing, named nowhere
    assert plan.excluded == [BOB] and plan.speakers == [ANN]
    assert plan.consent is not None
    assert [e.to_api() for e in plan.consent.opted_out] == [
        {"userId": BOB, "sinceMs": 20_000, "via": "user", "excluded": True}]
    assert DAN not in plan.model_dump_json()
    assert excluded_users(spec((BOB, DAN)), [c for c, _ in chunks]) == {BOB, DAN}


def test_opted_out_from_the_start_never_recorded_is_listed() -> None:
    chunks = [(chunk(0, 4_000, 14_000, {ANN: (4_000, 13_980)},
                     opted=((CAT, 0, "role"),)), DONE)]
    plan = plan_of(chunks)
    assert plan.excluded == [CAT] and plan.speakers == [ANN]
    assert plan.consent is not None
    assert [e.to_api() for e in plan.consent.opted_out] == [
        {"userId": CAT, "sinceMs": 0, "via": "role", "excluded": True}]  # before capture: 0


def test_times_are_output_time_with_pauses_cut() -> None:
    paused = Gap(start_ms=20_000, end_ms=30_000, cause="paused")
    chunks = [(chunk(0, 5_000, 20_000, {ANN: (5_000, 19_980)}), DONE),
              (chunk(1, 30_000, 40_000, {ANN: (30_000, 39_980), BOB: (32_000, 39_000)},
                     opted=((CAT, 35_000, "user"),), gap=paused), DONE)]
    plan = plan_of(chunks)
    assert plan.consent is not None
    assert [(r.user_id, r.first_ms) for r in plan.consent.recorded] == [
        (ANN, 0), (BOB, 17_000)]  # 32 000 - 5 000 origin - 10 000 paused
    assert plan.consent.opted_out[0].since_ms == 20_000
    gaps = [Gap(start_ms=15_000, end_ms=25_000, cause="paused")]
    assert [output_ms(t, 5_000, gaps) for t in (0, 5_000, 20_000, 25_000, 31_000)] == [
        0, 0, 15_000, 15_000, 16_000]  # inside the pause: where it was cut


def test_no_done_chunk_is_no_plan() -> None:
    assert build_promotion_plan(spec(), MEETING, [
        (chunk(0, 0, 10_000, {ANN: (0, 9_980)}, opted=((BOB, 0, "role"),)), FAILED)]) is None


@pytest.mark.parametrize("forged", [
    chunk(7, 0, 10_000, {BOB: (0, 9_980)}),       # another index, chunk 0's window
    chunk(1, 5_000, 15_000, {BOB: (5_000, 14_000)}),  # starts inside chunk 0
])
def test_a_chunk_overlapping_an_earlier_one_is_left_out_not_a_wedge(forged: ChunkSpec
                                                                    ) -> None:
    """Third review (chart, RBAC) fault 1: overlapping windows raised ValueError, which
    the deletion turned into a promotion retried every 300 s for ever (the finalizer, and
    the namespace, kept). The later copy is left out; its time only it covered is a gap."""
    chunks = [(chunk(0, 0, 10_000, {ANN: (0, 9_980)}), DONE), (forged, DONE),
              (chunk(2, 15_000, 25_000, {ANN: (15_000, 24_980)}), DONE)]
    assert overlapping(chunks) == [forged]
    plan = plan_of(chunks)
    assert [c.index for c in plan.chunks] == [0, 2] and plan.speakers == [ANN]
    assert plan.gaps == [Gap(start_ms=10_000, end_ms=15_000, cause="chunk-failed")]
    assert plan.session_end_ms == 25_000


def test_a_forged_early_window_never_pushes_real_chunks_out() -> None:
    """Review of the day's change: ordered by start, a later-index chunk claiming [0, 23 s)
    was kept and every real chunk left out (the whole recording was the forgery's)."""
    real = [(chunk(0, 3_000, 13_000, {ANN: (3_000, 12_980)}), DONE),
            (chunk(1, 13_000, 23_000, {ANN: (13_000, 22_980)}), DONE)]
    forged = chunk(2, 0, 23_000, {BOB: (0, 22_980)})
    assert overlapping([*real, (forged, DONE)]) == [forged]
    plan = plan_of([*real, (forged, DONE)])
    assert [c.index for c in plan.chunks] == [0, 1] and plan.speakers == [ANN]


def test_a_left_out_chunk_still_counts_its_opt_outs_and_its_time() -> None:
    """Review of the day's change: the opt-out in a left-out last chunk was ignored (CAT's
    audio promoted) and the 10 s only it covered vanished without a gap."""
    chunks = [(chunk(0, 0, 10_000, {ANN: (0, 9_980), CAT: (1_000, 9_000)}), DONE),
              (chunk(1, 10_000, 20_000, {ANN: (10_000, 19_980), CAT: (10_000, 19_000)}),
               DONE),
              (chunk(2, 19_800, 30_000, {ANN: (19_800, 29_980)},
                     opted=((CAT, 25_000, "user"),)), DONE)]
    plan = plan_of(chunks)
    assert [c.index for c in plan.chunks] == [0, 1]
    assert CAT in plan.excluded and plan.speakers == [ANN]
    assert plan.consent is not None and CAT in [o.user_id for o in plan.consent.opted_out]
    assert plan.session_end_ms == 30_000
    assert plan.gaps[-1] == Gap(start_ms=20_000, end_ms=30_000, cause="chunk-failed")


# ---------------------------------------------------------------- forged consent claims


def test_a_forged_chunk_past_a_hole_cannot_exclude_every_speaker() -> None:
    """Review note: the chunk of highest index decided, rebuilt ones included. A trackless
    `chunk.json` the recorder's grant let it store at index 999999, listing every member
    in `optedOut`, excluded ANN and BOB: no final track, and collection then deleted their
    raw audio. It lies past a hole in the indexes: its opt-outs are not applied, the
    audio is kept and the warning says which chunk. Failed before."""
    genuine = [(chunk(0, 0, 10_000, {ANN: (0, 9_980), BOB: (100, 9_000)}), DONE),
               (chunk(1, 10_000, 20_000, {ANN: (10_000, 19_980)}), DONE)]
    forged = chunk(999_999, 20_000, 20_020, {},
                   opted=((ANN, 0, "user"), (BOB, 0, "user"), (CAT, 0, "role")))
    plan = plan_of([*genuine, (forged, DONE)])
    assert plan.excluded == [] and plan.speakers == [ANN, BOB]
    assert users_in(plan) == [[ANN, BOB], [ANN], []]
    assert plan.consent is not None and plan.consent.opted_out == []  # not its word
    assert [r.user_id for r in plan.consent.recorded] == [ANN, BOB]
    assert excluded_users(spec(), [c for c, _ in genuine] + [forged]) == set()
    specs = [c for c, _ in genuine] + [forged]
    warning = rejected_consent(spec(), specs)
    assert warning is not None and "999999 (3 opted out)" in warning
    assert "end at 1" in warning and ANN not in warning  # names the chunk, no member
    # a member the spec opts out is excluded all the same, and not counted as rejected
    backed = plan_of([*genuine, (forged, DONE)], opt_out_users=(BOB,))
    assert backed.excluded == [BOB] and backed.speakers == [ANN]
    assert "999999 (2 opted out)" in (rejected_consent(spec((BOB,)), specs) or "")


def test_a_forged_recording_chunk_past_a_hole_is_rejected_the_same() -> None:
    """A RecordingChunk at an implausible index (its window within the session's elapsed
    time, so not refused): the same rule, whatever the index it claims."""
    genuine = [(chunk(0, 0, 10_000, {ANN: (0, 9_980), BOB: (0, 9_980)}), DONE),
               (chunk(1, 10_000, 20_000, {ANN: (10_000, 19_980), BOB: (10_000, 19_980)},
                      opted=((CAT, 5_000, "role"),)), DONE)]
    forged = chunk(3, 20_000, 30_000, {ANN: (20_000, 29_980)}, opted=((BOB, 20_000, "user"),))
    plan = plan_of([*genuine, (forged, DONE)])
    assert plan.excluded == [CAT] and plan.speakers == [ANN, BOB]  # chunk 1 decides
    assert users_in(plan) == [[ANN, BOB], [ANN, BOB], [ANN]]  # its audio is promoted


def test_genuine_opt_outs_still_exclude_with_holes_held() -> None:
    """The last consecutive chunk still decides: a consent marker at the next index (or a
    chain of them, stored in S3 across restarts), and after an index that holds a refused
    chunk or an unusable `chunk.json` (`held`)."""
    base = [(chunk(0, 0, 10_000, {ANN: (0, 9_980), BOB: (0, 9_980)}), DONE),
            (chunk(1, 10_000, 20_000, {ANN: (10_000, 19_980), BOB: (10_000, 19_980)}),
             DONE)]
    markers = [(chunk(2, 20_000, 20_020, {}, opted=((BOB, 20_010, "user"),)), DONE),
               (chunk(3, 20_020, 20_040, {}, opted=((BOB, 20_010, "user"),
                                                    (ANN, 20_030, "role"))), DONE)]
    assert plan_of([*base, markers[0]]).excluded == [BOB]
    assert plan_of([*base, *markers]).excluded == [ANN, BOB]
    assert rejected_consent(spec(), [c for c, _ in [*base, *markers]]) is None
    after_refused = chunk(3, 30_000, 40_000, {ANN: (30_000, 39_980)},
                          opted=((BOB, 25_000, "user"),))
    chunks = [*base, (after_refused, DONE)]
    assert build_promotion_plan(spec(), MEETING, chunks).excluded == []  # type: ignore[union-attr]
    plan = build_promotion_plan(spec(), MEETING, chunks, held={2})  # index 2 held: no hole
    assert plan is not None and plan.excluded == [BOB] and plan.speakers == [ANN]
    assert rejected_consent(spec(), [c for c, _ in chunks], {2}) is None


def test_consent_chunks_runs_from_the_lowest_index() -> None:
    specs = [chunk(i, i * 1_000, i * 1_000 + 1_000, {}) for i in (4, 5, 6, 9)]
    trusted, rejected = consent_chunks(specs)
    assert [c.index for c in trusted] == [4, 5, 6] and [c.index for c in rejected] == [9]
    assert consent_chunks([]) == ([], [])


def test_the_inventory_holds_refused_and_unaccounted_indexes() -> None:
    """`ChunkInventory.held`: an index whose RecordingChunk was refused or whose folder has
    no usable `chunk.json` is no hole for `consent_chunks`."""
    inv = ChunkInventory(chunks={i: InventoryChunk(chunk(i, i * 1_000, i * 1_000 + 1_000, {}),
                                                   ChunkStatus(transcode_status=DONE))
                                 for i in (0, 1, 4)},
                         unaccounted={2}, refused_indexes={3})
    assert inv.held == {0, 1, 2, 3, 4}
    trusted, rejected = consent_chunks([c.spec for c in inv.chunks.values()], inv.held)
    assert [c.index for c in trusted] == [0, 1, 4] and rejected == []


def test_an_opt_in_past_a_hole_is_said_not_silent() -> None:
    """Review rev-consent finding 2: a member the last consecutive chunk opts out (by
    role) and a chunk past a hole lists as recorded again stays excluded (the
    privacy-safe reading), but the warning now says so: before, `rejected_consent`
    counted only opt-outs and returned None, so an honest hole cost that member's audio
    with nothing said. Failed before."""
    genuine = [(chunk(0, 0, 10_000, {ANN: (0, 9_980), BOB: (0, 9_980)}), DONE),
               (chunk(1, 10_000, 20_000, {ANN: (10_000, 19_980)},
                      opted=((BOB, 10_000, "role"),)), DONE)]
    later = chunk(3, 30_000, 40_000, {ANN: (30_000, 39_980), BOB: (30_000, 39_980)})
    chunks = [*genuine, (later, DONE)]
    plan = plan_of(chunks)
    assert plan.excluded == [BOB]
    warning = rejected_consent(spec(), [c for c, _ in chunks])
    assert warning is not None and "3 (1 opted in)" in warning and BOB not in warning
    # with index 2 held there is no hole: chunk 3 decides, BOB is kept, nothing to say
    assert build_promotion_plan(  # type: ignore[union-attr]
        spec(), MEETING, chunks, held={2}).excluded == []
    assert rejected_consent(spec(), [c for c, _ in chunks], {2}) is None
