"""The end-to-end path through the wire: a RecordingSession with `source: discord` records
three discord.py members talking through the local Discord, and deletion promotes it.

Real everything, and no test-only code path in what is under test: the local Discord is
started by `voicetrack local discord up` (a background process); an operator of this module
(SQLite, on the local control plane) gets the Discord settings through its supported
`VOICETRACK_POD_DISCORD_*` variables and passes them to the recorder pod, which the node
agent runs as `voicetrack-recorder run` with the bot token from the `voicetrack-discord`
Secret. Three unmodified discord.py user clients (this process) join the voice channel and
play known audio with click markers through discord.py's own send path (libopus, DAVE,
transport AEAD, UDP).

Alignment: the output position of sender 0's first marker fixes the common origin (the
recording has no other clock shared with the senders); every marker of every sender is
checked against origin + its time in the audio + its sender's start after sender 0's.
The senders start a third of a slot apart (about 0, 6.7 and 13.3 ms), so their streams
have different sub-slot phases: each stream's frames are stored on the 20 ms slot grid and
its phase (`phaseSamples`, discord/timeline.py) delays it at promotion. Without the phase a
sender whose first packet lands across a slot boundary from sender 0's sat one slot off
(measured up to 19.5 ms): the issue asks ±20 ms, asserted here, and the spread of the
errors within 8 ms, which only the phase makes hold: without it, starts a third of a slot
apart spread the errors over about 13 ms wherever the slot boundaries fall. Markers are located to
the sample by matching the click's waveform, and each sender's true start is its
discord.py player's send-clock origin.

The local Discord, the operator and the senders are `tests/e2e/discord/conftest.py`'s.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import discord
import pytest

from tests.audio_helpers import Speaker
from tests.discord_session_support import (
    chunks_at_least,
    click_ms,
    delete_and_wait_promoted,
    final_tracks,
    join_voice,
    onset_ms,
    pod_log,
    recorded_frames,
    recording_rows,
    session_status,
    start_session,
    until,
)
from tests.local_discord_clients import dave_ready, play
from voicetrack.objectstore import S3Settings
from voicetrack_local.stack import OperatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

AUDIO_MS = 20_000
CHUNK_SECONDS = 5
STAGGER_MS = 20 / 3
"""Senders start this far apart, within a slot: each has its own sub-slot phase."""


def speakers(users: list[str]) -> list[Speaker]:
    """Three speakers talking in turns; click markers every ~1.1 s in their silences.
    Sender 0's first marker (150 ms) comes before any sound: it is the common origin."""
    out = []
    for i, user in enumerate(users):
        talks = [(400 + i * 1300 + k * 4000, 1200 + i * 1300 + k * 4000) for k in range(5)]
        markers = [t for t in range(150 + i * 370, AUDIO_MS - 300, 1100)
                   if all(not (a - 60 <= t <= b + 60) for a, b in talks)]
        out.append(Speaker(user_id=user, f0=140.0 + 70 * i, talks=talks, markers=markers))
    return out


async def test_discord_session_records_three_senders_aligned(
        cluster: Any, s3_server: S3Settings, operator: OperatorProcess,
        local_discord: dict[str, Any], senders: list[discord.Client], tmp_path: Path
        ) -> None:
    info = local_discord
    ns, channels = await start_session(cluster, s3_server, info, senders, "call",
                                       CHUNK_SECONDS)
    with pod_log(cluster, ns, "call-rec", tmp_path / "recorder.log"):
        await _record_and_check(cluster, s3_server, operator, info, senders, channels, ns)


async def _record_and_check(cluster: Any, s3_server: S3Settings, operator: OperatorProcess,
                            info: dict[str, Any], senders: list[discord.Client],
                            channels: list[Any], ns: str) -> None:
    guild, bot_id = info["guild_id"], int(info["application_id"])
    users = [u["id"] for u in info["users"]]
    await until("the [REC] nickname and the notice", lambda: any(
        m.author.id == bot_id and "recorded" in m.content
        for m in senders[0].seen), 30)  # type: ignore[attr-defined]
    guild_obj = senders[0].get_guild(int(guild))
    assert guild_obj is not None
    assert ((await guild_obj.fetch_member(bot_id)).nick or "").endswith("[REC]")

    vcs = [await join_voice(client, ch) for client, ch in zip(senders, channels, strict=True)]
    await dave_ready(*vcs, timeout=20)
    await until("one MLS epoch for all", lambda: len(
        {vc._connection.dave_session.epoch for vc in vcs}) == 1, 20, every_s=0.1)
    await asyncio.sleep(1.5)  # the last transition executes (op 22) everywhere
    spk = speakers(users)
    pcm = [s.pcm(AUDIO_MS).tobytes() for s in spk]
    chunks_before = (await session_status(cluster, ns, "call")).get("chunks", {}).get("total", 0)
    playing = []
    for vc, p in zip(vcs, pcm, strict=True):  # within a slot: different sub-slot phases
        playing.append(asyncio.create_task(play(vc, p)))
        await asyncio.sleep(STAGGER_MS / 1000)
    await asyncio.sleep(0.3)  # each player thread has set its send clock's origin
    starts = [vc._player._start for vc in vcs]  # type: ignore[union-attr]
    sent = await asyncio.gather(*playing)
    for vc in vcs:
        await vc.disconnect(force=True)

    # The chunk holding the audio's end and the one after it are sealed: all frames are in.
    total = chunks_before + AUDIO_MS // (CHUNK_SECONDS * 1000) + 2
    await until(f"{total} chunks", chunks_at_least(cluster, ns, total), 90)
    recorded = await recorded_frames(cluster, ns, users)
    meeting = await delete_and_wait_promoted(cluster, ns, "call")
    # the bot's nickname is given back when it stops (before its pod ends)
    assert (await guild_obj.fetch_member(bot_id)).nick is None, "[REC] left on the bot"

    tracks = final_tracks(s3_server, guild, meeting)
    assert await recording_rows(operator.database_url, meeting) == sorted(
        [("speaker", u) for u in users] + [("mixed", None)])
    lengths = [a.shape[0] for a in tracks.values()]
    print(f"frames sent {dict(zip(users, sent, strict=True))}, recorded {recorded}; "
          f"track lengths {[n // 48 for n in lengths]} ms")
    assert max(lengths) - min(lengths) <= 20 * 48

    # Sender 0's first marker fixes the origin; each sender's true start is its player's
    # send clock origin (perf_counter, one clock for the three threads).
    origin = click_ms(tracks[users[0]], onset_ms(tracks[users[0]])) - spk[0].markers[0]
    errors = []
    for s, start in zip(spk, starts, strict=True):
        for at in s.markers:
            expected = origin + at + (start - starts[0]) * 1000
            errors.append(click_ms(tracks[s.user_id], round(expected)) - expected)
    print(f"markers {len(errors)}: error ms min {min(errors):.2f} max {max(errors):.2f}; "
          f"starts after sender 0 {[round((t - starts[0]) * 1000, 2) for t in starts]} ms")
    # Issue 12 asks ±20 ms: each stream's sub-slot phase is kept (phaseSamples); before,
    # two speakers could land one slot apart (up to 19.5 ms measured, ±40 asserted).
    assert all(abs(e) <= 20 for e in errors), [  # (sender, marker ms, error ms) off
        (i, at, round(e, 2)) for i, s in enumerate(spk) for at, e in zip(
            s.markers, errors[sum(len(x.markers) for x in spk[:i]):], strict=False)
        if abs(e) > 20]
    # Within one slot, only the phase tells the senders apart: without it (phaseSamples
    # 0), this measured 0.00..+16.02 ms with these starts; with it, -0.50..+0.02 ms
    assert max(errors) - min(errors) <= 8, (min(errors), max(errors))
    assert len(errors) >= 30
    for user, n in zip(users, sent, strict=True):
        # Every frame in a quiet run (1005/1005); under CI load 1000/1005 was measured once
        # (open in issue 12, whose goal is ≥ 99.9 %). Below 99 % fails.
        assert recorded[user] >= 0.99 * n, (user, n, recorded[user])


