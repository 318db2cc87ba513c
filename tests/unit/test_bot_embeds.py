"""The bot's embeds from session objects whose status has the shape the operator writes
(DESIGN.md "Custom resources": `state` a SessionState, condition-shaped `conditions`,
`chunks` counts). The operator's real statuses reach the embeds in
tests/e2e/test_bot_sessions.py; this file depends on `voicetrack` only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import discord
import pytest

from voicetrack.errors import ConflictError, InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.manifests import FinalManifest, FinalTrack
from voicetrack.objectstore import PresignedUrl
from voicetrack.resources import SessionState
from voicetrack_recorder.bot.archive import SavedMeeting, TrackLink
from voicetrack_recorder.bot.embeds import (
    BUSY_MESSAGE,
    FIELD_MAX,
    SPEAKERS_SHOWN,
    STATE_COLOURS,
    STATE_TITLES,
    error_embed,
    refused_reason,
    session_embed,
    session_state,
)
from voicetrack_recorder.bot.linkembeds import links_embeds, meetings_embed

pytestmark = pytest.mark.unit

NOW = "2026-11-22T01:00:00Z"
GUILD = "300000000000000001"
CHANNEL = "300000000000000002"
USER = "400000000000000009"
Cond = tuple[str, bool, str, str]  # type, status, reason, message


def session(status: dict[str, Any] | None, **meta: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "voicetrack.dev/v1alpha1", "kind": "RecordingSession",
        "metadata": {"name": f"g-{GUILD}", "namespace": "rec", "uid": "u-1", **meta},
        "spec": {"guildId": GUILD, "channelId": CHANNEL, "requestedBy": USER},
    }
    if status is not None:
        obj["status"] = status
    return obj


def status_of(state: SessionState, conds: list[Cond], *, generation: int = 1,
              chunks: tuple[int, int, int, int] = (0, 0, 0, 0), seconds: int = 0,
              speakers: list[str] | None = None) -> dict[str, Any]:
    """A status as the operator writes it: `chunks` is (queued, inProgress, done, failed)
    and `seconds` the recorded seconds (10 per chunk)."""
    queued, in_progress, done, failed = chunks
    return {
        "state": str(state), "observedGeneration": generation,
        "conditions": [{"type": t, "status": "True" if ok else "False", "reason": reason,
                        "message": message, "lastTransitionTime": NOW,
                        "observedGeneration": generation}
                       for t, ok, reason, message in conds],
        "chunks": {"total": sum(chunks), "queued": queued, "inProgress": in_progress,
                   "done": done, "failed": failed},
        "recordedSeconds": seconds, "duration": f"{seconds}s",
        "speakers": speakers or [], "bytesBuffered": 0,
    }


RUNNING: list[Cond] = [("Recording", True, "RecorderRunning", "recorder running"),
                       ("Paused", False, "NotPaused", ""),
                       ("Ready", True, "Recording", "recorder running")]


def fields(embed: discord.Embed) -> dict[str, str]:
    return {f.name or "": f.value or "" for f in embed.fields}


def test_recording_session_shows_state_chunks_duration_speakers_meeting() -> None:
    conds = [*RUNNING[:2], ("TranscodesComplete", False, "TranscodesPending",
                            "1 done, 1 failed, 1 pending"), RUNNING[2]]
    status = status_of(SessionState.RECORDING, conds, chunks=(0, 1, 1, 1), seconds=30,
                       speakers=["400000000000000001", "400000000000000002"])
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


def test_refused_session_says_why_without_naming_the_other_session() -> None:
    # the operator checks the whole cluster and names the session that holds the guild,
    # in whatever namespace; members see that the server is busy, never that object
    why = (f"guild {GUILD} is already recorded by session team-b/standup: a bot can be in "
           "one voice channel per guild")
    status = status_of(SessionState.REFUSED, [("Recording", False, "Refused", why),
                                              ("Ready", False, "GuildBusy", why)])
    obj = session(status)
    embed = session_embed(obj)
    assert refused_reason(obj) == BUSY_MESSAGE
    assert embed.title == "Recording refused"
    assert embed.description == f"**Why:** {BUSY_MESSAGE}"
    assert "❌ Ready — GuildBusy: " + BUSY_MESSAGE in fields(embed)["Conditions"]
    shown = str(embed.to_dict())
    assert "team-b" not in shown and "standup" not in shown
    assert "already recorded by another session" in fields(embed)["Conditions"]
    assert fields(embed)["Meeting"] == "not assigned yet"


def test_other_refusals_keep_the_operators_words() -> None:
    why = "meeting id abcdef0123456789 is already used by another guild's meeting"
    obj = session(status_of(SessionState.REFUSED, [("Ready", False, "MeetingIdInUse", why)]))
    assert refused_reason(obj) == why


def test_a_new_session_without_status_is_pending() -> None:
    embed = session_embed(session(None))
    assert session_state(session(None)) == "Pending"
    assert embed.title == "Recording is starting"
    assert embed.description == "waiting for the operator"
    f = fields(embed)
    assert f["Chunks"] == "0 done · 0 failed · 0 total" and f["Speakers"] == "nobody yet"
    assert "Conditions" not in f


def test_deleted_session_shows_stopping_until_the_operator_reports() -> None:
    status = status_of(SessionState.RECORDING, RUNNING)
    obj = session(status, deletionTimestamp=NOW)
    assert session_state(obj) == "Stopping"
    assert session_embed(obj).title == "Recording stopped: finishing transcodes"
    promoting = {**status, "state": "Promoting"}  # what the operator's finalizer writes
    assert session_state(session(promoting, deletionTimestamp=NOW)) == "Promoting"
    failed = {**status, "state": "PromotionFailed", "phaseMessage": "promotion Job failed"}
    assert session_embed(session(failed, deletionTimestamp=NOW)).title == (
        "Recording not saved yet: promotion failed, raw audio kept")


def test_paused_and_promoted() -> None:
    paused = status_of(SessionState.PAUSED, [("Recording", False, "Paused", "capture paused"),
                                             ("Paused", True, "PausedBySpec",
                                              "spec.paused is true")], generation=2)
    assert session_embed(session(paused)).title == "Recording paused"
    done = status_of(SessionState.PROMOTED, [("Promoted", True, "Promoted",
                                              "recordings written")], generation=3)
    done["recordingIds"] = ["r1", "r2"]
    embed = session_embed(session(done))
    assert embed.title == "Recording saved" and fields(embed)["Recordings"] == "`r1`, `r2`"


def test_many_speakers_stay_within_discord_limits() -> None:
    speakers = [str(400000000000000000 + i) for i in range(200)]
    status = status_of(SessionState.RECORDING, RUNNING, chunks=(0, 0, 1, 0), seconds=10,
                       speakers=speakers)
    embed = session_embed(session(status))
    value = fields(embed)["Speakers"]
    assert value.endswith(f"and {200 - SPEAKERS_SHOWN} more") and len(value) <= 1024
    assert len(embed) <= 6000  # Discord's total embed size limit


def test_a_session_with_every_text_at_its_longest_fits_one_message() -> None:
    # a refusal reason of 5000 characters (the description takes 4096), three conditions
    # of 1000 characters, 300 recordings and the longest namespace/name: each part within
    # its own limit, and together over Discord's 6000 per message before the fix (7 4xx)
    why = "w" * 5000
    status = status_of(SessionState.REFUSED, [("Recording", False, "Refused", "r" * 1000),
                                              ("Ready", False, "Other", why),
                                              ("Degraded", True, "Other", "d" * 1000)])
    status["recordingIds"] = [f"{i:032x}" for i in range(300)]
    obj = session(status, namespace="n" * 63, name="s" * 253)
    embed = session_embed(obj)
    assert len(embed) <= 6000, len(embed)  # Discord's total embed size limit
    assert (embed.description or "").startswith("**Why:** www") and (
        embed.description or "").endswith("…")
    assert fields(embed)["Recordings"].endswith("…") and embed.footer.text


@pytest.mark.parametrize("state", list(SessionState))
def test_every_session_state_has_a_title_and_a_colour(state: SessionState) -> None:
    embed = session_embed(session(status_of(state, [])))
    assert session_state(session(status_of(state, []))) is state
    assert embed.title == STATE_TITLES[state] and embed.colour == discord.Colour(
        STATE_COLOURS[state])
    assert fields(embed)["State"] == str(state)


def test_a_state_this_version_does_not_know_is_shown_as_it_is() -> None:
    obj = session({"state": "Hibernating"})
    assert session_state(obj) == "Hibernating"
    embed = session_embed(obj)
    assert embed.title == "Hibernating" and fields(embed)["State"] == "Hibernating"


@pytest.mark.parametrize("err, title", [
    (NotFoundError("no recording session for guild 1"), "No recording"),
    (InvalidInputError("spec: chunkSeconds too small"), "Cannot do that"),
    (ConflictError("delete RecordingSession g-1: uid precondition failed"),
     "Changed meanwhile: look again with /record status"),
    (TemporaryFailure("API down", delay=5), "Try again in about 5 s"),
    (RuntimeError("boom"), "Something went wrong"),
])
def test_error_embeds(err: Exception, title: str) -> None:
    embed = error_embed(err)
    assert embed.title == title and embed.description == str(err)


def saved_meeting(users: list[str], paused_ms: int = 0) -> SavedMeeting:
    tracks = [FinalTrack(track=u, kind="speaker", user_id=u, format="mp3",
                         key=f"recordings/{GUILD}/abcdef0123456789/final/{u}.mp3",
                         bytes=1_234_567, sha256="0" * 64, duration_ms=83_000)
              for u in users]
    tracks.append(FinalTrack(track="mix", kind="mixed", format="mp3",
                             key=f"recordings/{GUILD}/abcdef0123456789/final/mix.mp3",
                             bytes=2_000_000, sha256="1" * 64, duration_ms=83_000))
    manifest = FinalManifest(tool_version="t", meeting_id="abcdef0123456789",
                             duration_ms=83_000, recorded_ms=90_000, paused_ms=paused_ms,
                             tracks=tracks)
    return SavedMeeting(GUILD, "abcdef0123456789",
                        datetime(2026, 11, 22, 1, 0, tzinfo=UTC), manifest)


def track_links(meeting: SavedMeeting, url: str = "https://s3.example/x?sig=1"
                ) -> list[TrackLink]:
    return [TrackLink(t.user_id, t.kind, PresignedUrl(url, 900, "mp3"), t.bytes, t.sha256,
                      t.duration_ms) for t in meeting.manifest.tracks]


def test_links_embed_names_speakers_and_puts_the_mix_last() -> None:
    meeting = saved_meeting(["400000000000000001", "400000000000000002"], paused_ms=7_000)
    [embed] = links_embeds(meeting, track_links(meeting), {"400000000000000001": "Alice"})
    assert [f.name for f in embed.fields] == [
        "Alice (mp3)", "user 400000000000000002 (mp3)", "Mix (mp3)"]
    assert embed.fields[0].value == ("[Download mp3](https://s3.example/x?sig=1) · 1.2 MB · "
                                     "1m23s · <@400000000000000001>")
    assert embed.fields[2].value == "[Download mp3](https://s3.example/x?sig=1) · 2.0 MB · 1m23s"
    assert "`abcdef0123456789` · 1m23s (paused 7s cut)" in (embed.description or "")
    assert "expire 15 min" in (embed.description or "")


def test_links_embed_within_discords_limits() -> None:
    meeting = saved_meeting([f"4000000000000001{i:02d}" for i in range(30)])
    embeds = links_embeds(meeting, track_links(meeting, "https://s3.example/" + "q" * 1100),
                          {})
    assert [len(e.fields) for e in embeds] == [25, 6]  # 30 speakers and the mix
    assert embeds[1].title == "Recording saved (2)"
    assert all(len(f.value or "") <= FIELD_MAX for e in embeds for f in e.fields)
    assert "link too long" in (embeds[0].fields[0].value or "")


def test_meetings_embed_lists_the_live_session_then_saved_meetings() -> None:
    live = session(status_of(SessionState.RECORDING, [], speakers=["400000000000000001"],
                             seconds=65) | {"meetingId": "fedcba9876543210",
                                            "startedAt": NOW})
    embed = meetings_embed([saved_meeting(["400000000000000001"])], live,
                           {"400000000000000001": "Alice"})
    lines = (embed.description or "").splitlines()
    assert lines[0] == ("`fedcba9876543210` · **Recording** · started <t:1795309200:f> "
                        "(<t:1795309200:R>) · 65s · Alice")  # the operator's duration
    assert lines[1] == ("`abcdef0123456789` · saved <t:1795309200:f> · 1m23s · Alice · "
                        "**Saved**")
    empty = meetings_embed([], None, {})
    assert empty.title == "No recordings yet"
