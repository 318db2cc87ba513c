"""Discord embeds for the bot's answers. Pure: a RecordingSession object (the dict the
Kubernetes API returns) or an error in, a `discord.Embed` out; no client, no clock.

The status fields read are the operator's (DESIGN.md "Custom resources"; `state` is a
`voicetrack.resources.SessionState`): `state`, `conditions` (type, status, reason, message),
`chunks` {total, queued, inProgress, done, failed}, `recordedSeconds`, `duration`,
`speakers`, `meetingId`, `startedAt`, `recordingIds`. A session the operator has not yet
seen has no status; it shows as Pending.

Discord's embed limits (https://discord.com/developers/docs/resources/message#embed-object-
embed-limits): title 256, description 4096, field value 1024 characters, 25 fields, and
6000 characters in all the embeds of one message together; a message over them is refused
(400), so answers with links are split over several embeds, one per message
(`linkembeds.py`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import discord

from voicetrack.errors import ConflictError, InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.resources import SessionState

FIELD_MAX = 1024
DESCRIPTION_MAX = 4096
TITLE_MAX = 256
SPEAKERS_SHOWN = 20

GREY, RED, ORANGE, BLURPLE, GREEN, DARK_RED = (
    0x99AAB5, 0xED4245, 0xFAA61A, 0x5865F2, 0x57F287, 0x992D22)
"""Embed colours (Discord's brand palette)."""

STATE_COLOURS: dict[SessionState, int] = {
    SessionState.PENDING: GREY,
    SessionState.RECORDING: RED,
    SessionState.PAUSED: ORANGE,
    SessionState.STOPPING: BLURPLE,
    SessionState.TRANSCODING: BLURPLE,
    SessionState.PROMOTING: BLURPLE,
    SessionState.PROMOTED: GREEN,
    SessionState.PROMOTION_FAILED: DARK_RED,
    SessionState.STOPPED: GREY,
    SessionState.REFUSED: DARK_RED,
    SessionState.FAILED: DARK_RED,
}
"""Embed colour per `status.state` (Discord's brand palette); every SessionState has one."""

STATE_TITLES: dict[SessionState, str] = {
    SessionState.PENDING: "Recording is starting",
    SessionState.RECORDING: "Recording",
    SessionState.PAUSED: "Recording paused",
    SessionState.STOPPING: "Recording stopped: finishing transcodes",
    SessionState.TRANSCODING: "Recording stopped: finishing transcodes",
    SessionState.PROMOTING: "Recording stopped: saving the tracks",
    SessionState.PROMOTED: "Recording saved",
    SessionState.PROMOTION_FAILED: "Recording not saved yet: promotion failed, raw audio kept",
    SessionState.STOPPED: "Recording ended (limit reached)",
    SessionState.REFUSED: "Recording refused",
    SessionState.FAILED: "Recording failed",
}
"""Embed title per `status.state`; every SessionState has one."""


def clip(text: str, limit: int) -> str:
    """`text`, cut to at most `limit` characters with a closing `…` when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


_NOT_YET_STOPPING = (None, SessionState.PENDING, SessionState.RECORDING, SessionState.PAUSED)


def session_state(obj: dict[str, Any]) -> SessionState | str:
    """`status.state` as a SessionState; `Stopping` for a deleted session the operator has
    not yet re-observed; `Pending` when there is no status yet. A state this version does
    not know (a newer operator's) is returned as the string it is."""
    raw = (obj.get("status") or {}).get("state")
    state = SessionState.of(obj)
    if raw and state is None:
        return str(raw)
    deleting = bool((obj.get("metadata") or {}).get("deletionTimestamp"))
    if deleting and state in _NOT_YET_STOPPING:
        return SessionState.STOPPING
    return state or SessionState.PENDING


BUSY_REASON = "GuildBusy"
"""The operator's condition reason for a guild another session records."""
BUSY_MESSAGE = ("another Voicetrack recording is already using this server (a bot can be "
                "in one voice channel per server); try again when it has ended")
"""What members see instead of the operator's GuildBusy message, which names the other
session and its namespace (the operator checks the whole cluster; the bot serves one
namespace and must not reveal another's objects)."""


_OTHER_SESSION = re.compile(r"\bsession [a-z0-9][-a-z0-9.]*/[a-z0-9][-a-z0-9.]*")


def condition_message(cond: dict[str, Any]) -> str:
    """A condition's message as members may see it: `BUSY_MESSAGE` for reason GuildBusy;
    else the operator's message ('' when none) with every `session <namespace>/<name>`
    replaced by `another session` (the same refusal is repeated under other reasons)."""
    if cond.get("reason") == BUSY_REASON:
        return BUSY_MESSAGE
    return _OTHER_SESSION.sub("another session", str(cond.get("message") or ""))


def condition_line(cond: dict[str, Any]) -> str:
    """One condition as `✅ Type — Reason: message` (❌ when status is not True); the
    message as `condition_message` gives it."""
    mark = "✅" if cond.get("status") == "True" else "❌"
    text = f"{mark} {cond.get('type', '?')} — {cond.get('reason', '')}"
    message = condition_message(cond)
    if message:
        text += f": {message}"
    return text


def refused_reason(obj: dict[str, Any]) -> str | None:
    """Why the operator refused the session (the `Ready` condition's message, else the
    `Recording` one's), None when it was not refused."""
    if session_state(obj) is not SessionState.REFUSED:
        return None
    conds = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}
    for ctype in ("Ready", "Recording"):
        message = condition_message(conds.get(ctype) or {})
        if message:
            return message
    return "refused by the operator (no reason given)"


def started_text(status: dict[str, Any]) -> str | None:
    """`status.startedAt` as a Discord timestamp (`<t:unix:f>`, shown in the reader's
    time zone) and its relative form; None when the session has not started."""
    value = status.get("startedAt")
    if not value:
        return None
    try:
        ts = int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp())
    except ValueError:
        return str(value)
    return f"<t:{ts}:f> (<t:{ts}:R>)"


def duration_text(status: dict[str, Any]) -> str:
    """The recorded duration: `status.duration` as the operator wrote it, else
    `status.recordedSeconds` as `1h02m03s` / `2m03s` / `3s`."""
    if status.get("duration"):
        return str(status["duration"])
    seconds = int(status.get("recordedSeconds") or 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _speakers(ids: list[str]) -> str:
    if not ids:
        return "nobody yet"
    shown = " ".join(f"<@{i}>" for i in ids[:SPEAKERS_SHOWN])
    if len(ids) > SPEAKERS_SHOWN:
        shown += f" and {len(ids) - SPEAKERS_SHOWN} more"
    return clip(shown, FIELD_MAX)


def session_embed(obj: dict[str, Any], *, title: str | None = None) -> discord.Embed:
    """The embed for one RecordingSession object.

    Title: `title` or the state's (`STATE_TITLES`); description: for a Refused session
    why (the operator's condition message), else the state's message. Fields: State,
    Channel, Chunks (`<done> done · <failed> failed · <total> total`, plus pending),
    Duration, Speakers (mentions), Meeting, Requested by, Started, Conditions (one line
    each: type, reason, message). Footer: `namespace/name`. Each part is clipped to its
    own Discord limit, and the description more when the whole would be over
    EMBED_TOTAL (the other parts together stay under 4200 characters), so the embed
    always fits one message."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    state = session_state(obj)
    conds = status.get("conditions") or []
    reason = refused_reason(obj)
    if reason is not None:
        description = f"**Why:** {reason}"
    else:
        by_type = {c.get("type"): c for c in conds}
        message = condition_message(by_type.get("Recording") or {})
        if meta.get("deletionTimestamp") and state is SessionState.STOPPING and not message:
            message = "stopping the recorder"
        description = str(message or ("waiting for the operator" if not status else ""))
    if isinstance(state, SessionState):
        state_title, colour = STATE_TITLES[state], STATE_COLOURS[state]
    else:
        state_title, colour = str(state), GREY
    embed = discord.Embed(title=clip(title or state_title, TITLE_MAX),
                          description=clip(description, DESCRIPTION_MAX) or None,
                          colour=colour)
    embed.add_field(name="State", value=str(state))
    if spec.get("channelId"):
        embed.add_field(name="Channel", value=f"<#{spec['channelId']}>")
    chunks = status.get("chunks") or {}
    pending = int(chunks.get("queued", 0)) + int(chunks.get("inProgress", 0))
    chunk_text = (f"{chunks.get('done', 0)} done · {chunks.get('failed', 0)} failed · "
                  f"{chunks.get('total', 0)} total")
    if pending:
        chunk_text += f" ({pending} transcoding)"
    embed.add_field(name="Chunks", value=chunk_text)
    embed.add_field(name="Duration", value=duration_text(status))
    embed.add_field(name="Meeting", value=f"`{status['meetingId']}`"
                    if status.get("meetingId") else "not assigned yet")
    if spec.get("paused") and state not in (SessionState.PAUSED, SessionState.REFUSED):
        embed.add_field(name="Paused", value="requested (spec.paused)")
    embed.add_field(name="Speakers", value=_speakers(list(status.get("speakers") or [])),
                    inline=False)
    if spec.get("requestedBy"):
        embed.add_field(name="Requested by", value=f"<@{spec['requestedBy']}>")
    started = started_text(status)
    if started:
        embed.add_field(name="Started", value=started)
    if status.get("recordingIds"):
        embed.add_field(name="Recordings",
                        value=clip(", ".join(f"`{r}`" for r in status["recordingIds"]),
                                    FIELD_MAX), inline=False)
    if conds:
        embed.add_field(name="Conditions",
                        value=clip("\n".join(condition_line(c) for c in conds), FIELD_MAX),
                        inline=False)
    if meta.get("name"):
        embed.set_footer(text=f"{meta.get('namespace', '')}/{meta['name']}".lstrip("/"))
    over = len(embed) - EMBED_TOTAL
    if over > 0 and embed.description:  # each part within its limit, the whole not
        embed.description = clip(embed.description, len(embed.description) - over)
    return embed


def error_embed(err: Exception) -> discord.Embed:
    """The embed for a failed command: NotFoundError → "No recording", other
    InvalidInputError → "Cannot do that", ConflictError → "Changed meanwhile" (another
    command or person got there first), TemporaryFailure → "Try again in about N s" (the
    suggested delay), anything else → "Something went wrong". The description is the
    error's message."""
    if isinstance(err, NotFoundError):
        title, colour = "No recording", GREY
    elif isinstance(err, InvalidInputError):
        title, colour = "Cannot do that", ORANGE
    elif isinstance(err, ConflictError):
        title, colour = "Changed meanwhile: look again with /record status", ORANGE
    elif isinstance(err, TemporaryFailure):
        title, colour = f"Try again in about {int(err.delay)} s", ORANGE
    else:
        title, colour = "Something went wrong", DARK_RED
    return discord.Embed(title=title, description=clip(str(err) or type(err).__name__,
                                                        DESCRIPTION_MAX), colour=colour)


def consent_embed(session: dict[str, Any] | None, *, opted_out: bool) -> discord.Embed:
    """The answer to `/record optout` (`opted_out`) or `/record optin`: what happens to the
    member's audio now, in the live `session` (None: nothing records now) and later."""
    live = session is not None
    if opted_out:
        title = "You are not recorded in this server"
        text = ("Voicetrack no longer records your voice in the current recording, from "
                "now on; your audio is dropped before it is decoded and never saved. "
                "Audio of yours recorded earlier in this recording is not kept if you are "
                "still opted out when the recording stops." if live else
                "Nothing is being recorded in this server now.")
        text += (" This lasts for the recordings started later in this server too, until "
                 "you type /record optin.")
        colour = GREY
    else:
        title = "You are recorded again"
        text = ("Voicetrack records your voice again in the current recording, from now "
                "on (the time you were opted out stays silent)." if live else
                "Nothing is being recorded in this server now.")
        text += " Later recordings in this server record you too."
        colour = RED
    return discord.Embed(title=title, description=clip(text, DESCRIPTION_MAX), colour=colour)


EMBED_FIELDS = 25
"""Discord's limit on fields per embed."""
EMBED_TOTAL = 6000
"""Discord's limit on the characters of one message's embeds together (title,
description, field names and values, footer text, author name)."""


def undelivered_embed(err: Exception) -> discord.Embed:
    """The short answer sent when Discord refused the real one (e.g. a 400 for an
    embed it would not take): says so, with Discord's status and message."""
    return discord.Embed(title="Something went wrong", colour=DARK_RED, description=clip(
        f"Discord refused the answer ({err}); try again, or `/record list`.",
        DESCRIPTION_MAX))
