"""Consent in the receive pipeline (issue 12), through the rig: real davey sessions, real
AEAD, real libopus. An opted-out member's packets are dropped before DAVE decryption: the
receiver's DAVE counters never see them (`stats.decrypt`), the sink gets none of their
frames, and `dropped["opted_out"]` counts each one. Session time is virtual.
"""

from __future__ import annotations

import pytest

from tests.discord_rig import Harness, encode_frames, tone_pcm
from voicetrack_recorder.consent import Consent

pytestmark = pytest.mark.unit

START_MS = 1000
A, B = 200000000000000222, 200000000000000333
"""Two members (snowflakes, as `OptOut.user_id` requires)."""
LATENCY_MS = 8


async def _harness() -> tuple[Harness, Consent]:
    h = await Harness.open()
    consent = Consent(h.clock)
    h.receiver.consent = consent
    return h, consent


async def test_an_opted_out_ssrc_is_dropped_before_dave_decryption() -> None:
    h, consent = await _harness()
    consent.set_policy([str(B)], [])
    a, b = await h.rig.join(A, B)
    await h.settle()
    pa, pb = encode_frames(tone_pcm(100, 440)), encode_frames(tone_pcm(100, 660))
    schedule = []
    for i in range(100):
        schedule.append((START_MS + 20 * (i + 1) + LATENCY_MS, h.rig.packet(a, pa[i])))
        schedule.append((START_MS + 20 * (i + 1) + LATENCY_MS + 3, h.rig.packet(b, pb[i])))
    await h.play(schedule)
    await h.finish()
    stats = h.receiver.stats
    assert str(B) not in h.sink.frames
    assert str(B) not in stats.decrypt  # DAVE never saw one of its frames
    assert stats.dropped["opted_out"] == 100
    assert len(h.sink.frames[str(A)]) == 100 and stats.decrypt[str(A)].decrypted == 100
    assert [o.user_id for o in consent.opted_out()] == [str(B)]
    assert consent.opted_out()[0].via == "user"


async def test_packets_held_for_an_unknown_ssrc_are_dropped_once_it_maps_to_an_opted_out_user(
        ) -> None:
    h, consent = await _harness()
    consent.set_policy([str(A)], [])
    (a,) = await h.rig.join(A, announce=False)
    await h.settle()
    sent = encode_frames(tone_pcm(10, 440))
    for i in range(5):  # arrive before any SPEAKING: held aside, still DAVE-sealed
        await h.deliver(h.rig.packet(a, sent[i]), START_MS + 20 * i)
    await h.rig.speaking(a)
    for i in range(5, 10):
        await h.deliver(h.rig.packet(a, sent[i]), START_MS + 20 * i)
    await h.finish()
    assert str(A) not in h.sink.frames and str(A) not in h.receiver.stats.decrypt
    assert h.receiver.stats.dropped["opted_out"] == 10


async def test_opt_out_mid_stream_drops_from_then_and_opt_in_resumes() -> None:
    h, consent = await _harness()
    (a,) = await h.rig.join(A)
    await h.settle()
    sent = encode_frames(tone_pcm(150, 440))
    for i in range(50):
        await h.deliver(h.rig.packet(a, sent[i]), START_MS + 20 * (i + 1) + LATENCY_MS)
    consent.set_policy([str(A)], [])  # the watch saw the patch: out from now
    since = consent.since_ms(str(A))
    assert since == h.clock.now_ms()
    for i in range(50, 100):
        await h.deliver(h.rig.packet(a, sent[i]), START_MS + 20 * (i + 1) + LATENCY_MS)
    consent.set_policy([], [])  # /record optin
    assert consent.since_ms(str(A)) is None
    for i in range(100, 150):
        await h.deliver(h.rig.packet(a, sent[i]), START_MS + 20 * (i + 1) + LATENCY_MS)
    await h.finish()
    frames = h.sink.frames[str(A)]
    slots = sorted(frames)
    before = [s for s in slots if s * 20 < since]
    after_in = [s for s in slots if s * 20 >= since]
    # what was in the jitter buffer when the opt-out was seen is dropped too (≤ 5 frames)
    assert 45 <= len(before) <= 50 and before[0] == START_MS // 20
    assert len(after_in) == 50 and after_in[0] == (START_MS + 20 * 100) // 20
    assert [frames[s] for s in after_in] == sent[100:]
    stats = h.receiver.stats
    assert stats.dropped["opted_out"] == 150 - len(slots)
    assert stats.decrypt[str(A)].decrypted == len(slots)  # nothing dropped was decrypted


async def test_a_role_in_opt_out_roles_drops_its_member() -> None:
    roles = {str(A): ["700000000000000001"], str(B): []}
    h, consent = await _harness()
    consent.roles_of = roles.get
    consent.set_policy([], ["700000000000000001"])
    a, b = await h.rig.join(A, B)
    await h.settle()
    sent = encode_frames(tone_pcm(20, 440))
    schedule = []
    for i in range(20):
        schedule.append((START_MS + 20 * i + LATENCY_MS, h.rig.packet(a, sent[i])))
        schedule.append((START_MS + 20 * i + LATENCY_MS + 2, h.rig.packet(b, sent[i])))
    await h.play(schedule)
    await h.finish()
    assert set(h.sink.frames) == {str(B)} and str(A) not in h.receiver.stats.decrypt
    assert [(o.user_id, o.via) for o in consent.opted_out()] == [(str(A), "role")]


async def test_each_speakers_frames_reach_the_sink_with_their_streams_phase() -> None:
    """Not consent, but the same pipeline: A's packets arrive 8 ms into their slots and
    B's 3 ms later still, so the sink gets A's frames at phase 8 ms (384 samples) and B's
    at 11 ms (528), every frame of a stream the same (timeline.py, "Phase")."""
    h, _ = await _harness()
    a, b = await h.rig.join(A, B)
    await h.settle()
    pa, pb = encode_frames(tone_pcm(60, 440)), encode_frames(tone_pcm(60, 660))
    schedule = []
    for i in range(60):
        schedule.append((START_MS + 20 * (i + 1) + LATENCY_MS, h.rig.packet(a, pa[i])))
        schedule.append((START_MS + 20 * (i + 1) + LATENCY_MS + 3, h.rig.packet(b, pb[i])))
    await h.play(schedule)
    await h.finish()
    assert set(h.sink.phases[str(A)].values()) == {8 * 48}
    assert set(h.sink.phases[str(B)].values()) == {11 * 48}
