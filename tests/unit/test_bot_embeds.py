"""The bot's embeds from session objects whose status the operator's own status builder
made (so the field names the embeds read are the ones the operator writes)."""

from __future__ import annotations

from typing import Any

import discord
import pytest

from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack_operator.status import ChunkView, Observation, build_status
from voicetrack_recorder.bot.embeds import (
    SPEAKERS_SHOWN,
    error_embed,
    refused_reason,
    session_embed,
    session_state,
)

pytestmark = pytest.mark.unit

NOW = "2026-11-22T01:00:00Z"
GUILD = "300000000000000001"
CHANNEL = "300000000000000002"
USER = "400000000000000009"


def session(status: dict[str, Any] | None, **meta: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "voicetrack.dev/v1alpha1", "kind": "RecordingSession",
        "metadata": {"name": f"g-{GUILD}", "namespace": "rec", "uid": "u-1", **meta},
        "spec": {"guildId": GUILD, "channelId": CHANNEL, "requestedBy": USER},
    }
    if status is not None:
        obj["status"] = status
    return obj


def chunk(i: int, status: str, speakers: list[str]) -> ChunkView:
    return ChunkView(index=i, start_ms=i * 10_000, end_ms=(i + 1) * 10_000,
                     speakers=speakers, transcode_status=status, bytes=1000)


def fields(embed: discord.Embed) -> dict[str, str]:
    return {f.name or "": f.value or "" for f in embed.fields}


def test_recording_session_shows_state_chunks_duration_speakers_meeting() -> None:
    chunks = [chunk(0, "done", ["400000000000000001"]), chunk(1, "failed", []),
              chunk(2, "in_progress", ["400000000000000001", "400000000000000002"])]
    status = build_status(Observation(generation=1, paused=False, recorder_phase="Running",
                                      chunks=chunks), None, NOW)
    status |= {"meetingId": "abcdef0123456789", "startedAt": NOW}
    embed = session_embed(session(status))
    f = fields(embed)
    assert embed.title == "Recording" and embed.colour == discord.Colour(0xED4245)
    assert f["State"] == "Recording" and f["Channel"] == f"<#{CHANNEL}>"
    assert f["Chunks"] == "1 done · 1 failed · 3 total (1 transcoding)"
    assert f["Duration"] == "30s"
    assert f["Speakers"] == "<@400000000000000001> <@400000000000000002>"
    assert f["Meeting"] == "`abcdef0123456789`" and f["Requested by"] == f"<@{USER}>"
    assert f["Started"].startswith("<t:1795309200:f>")
    lines = f["Conditions"].splitlines()
    assert lines[0] == "✅ Recording — RecorderRunning: recorder running"
    assert "❌ TranscodesComplete — TranscodesPending: 1 done, 1 failed, 1 pending" in lines
    assert embed.footer.text == f"rec/g-{GUILD}"


def test_refused_session_says_why() -> None:
    why = (f"guild {GUILD} is already recorded by session rec/standup: a bot can be in one "
           "voice channel per guild")
    status = build_status(Observation(generation=1, paused=False, recorder_phase=None,
                                      refused=why), None, NOW)
    obj = session(status)
    embed = session_embed(obj)
    assert refused_reason(obj) == why
    assert embed.title == "Recording refused" and embed.description == f"**Why:** {why}"
    assert "❌ Ready — GuildBusy: " + why in fields(embed)["Conditions"]
    assert fields(embed)["Meeting"] == "not assigned yet"


def test_a_new_session_without_status_is_pending() -> None:
    embed = session_embed(session(None))
    assert session_state(session(None)) == "Pending"
    assert embed.title == "Recording is starting"
    assert embed.description == "waiting for the operator"
    f = fields(embed)
    assert f["Chunks"] == "0 done · 0 failed · 0 total" and f["Speakers"] == "nobody yet"
    assert "Conditions" not in f


def test_deleted_session_shows_stopping_until_the_operator_reports() -> None:
    status = build_status(Observation(generation=1, paused=False, recorder_phase="Running"),
                          None, NOW)
    obj = session(status, deletionTimestamp=NOW)
    assert session_state(obj) == "Stopping"
    assert session_embed(obj).title == "Recording stopped: finishing transcodes"
    promoting = {**status, "state": "Promoting"}  # what the operator's finalizer writes
    assert session_state(session(promoting, deletionTimestamp=NOW)) == "Promoting"
    failed = {**status, "state": "PromotionFailed", "phaseMessage": "promotion Job failed"}
    assert session_embed(session(failed, deletionTimestamp=NOW)).title == (
        "Recording not saved yet: promotion failed, raw audio kept")


def test_paused_and_promoted() -> None:
    paused = build_status(Observation(generation=2, paused=True, recorder_phase="Running"),
                          None, NOW)
    assert session_embed(session(paused)).title == "Recording paused"
    done = build_status(Observation(generation=3, paused=False, recorder_phase=None,
                                    promoted=True), None, NOW)
    done["recordingIds"] = ["r1", "r2"]
    embed = session_embed(session(done))
    assert embed.title == "Recording saved" and fields(embed)["Recordings"] == "`r1`, `r2`"


def test_many_speakers_stay_within_discord_limits() -> None:
    speakers = [str(400000000000000000 + i) for i in range(200)]
    status = build_status(Observation(generation=1, paused=False, recorder_phase="Running",
                                      chunks=[chunk(0, "done", speakers)]), None, NOW)
    embed = session_embed(session(status))
    value = fields(embed)["Speakers"]
    assert value.endswith(f"and {200 - SPEAKERS_SHOWN} more") and len(value) <= 1024
    assert len(embed) <= 6000  # Discord's total embed size limit


@pytest.mark.parametrize("err, title", [
    (NotFoundError("no recording session for guild 1"), "No recording"),
    (InvalidInputError("spec: chunkSeconds too small"), "Cannot do that"),
    (TemporaryFailure("API down", delay=5), "Try again in about 5 s"),
    (RuntimeError("boom"), "Something went wrong"),
])
def test_error_embeds(err: Exception, title: str) -> None:
    embed = error_embed(err)
    assert embed.title == title and embed.description == str(err)
