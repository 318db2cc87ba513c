"""Discord embeds for the bot's answers with links and meeting lists. Pure: saved meetings
(`archive.SavedMeeting`), minted links (`archive.TrackLink`) and display names in, a list
of `discord.Embed` out, one per message.

Links are presigned URLs of some 400 characters each; one message's embeds take 6000
characters and 25 fields (`embeds.EMBED_TOTAL`, `embeds.EMBED_FIELDS`; Discord developer
docs, "Resources › Message › Embed Limits"), so link answers are packed into as many
embeds as they need (`_pack`) and every link arrives in one of them.
"""

from __future__ import annotations

from typing import Any

import discord

from voicetrack.manifests import LiveManifest
from voicetrack_recorder.bot.archive import SavedMeeting, TrackLink
from voicetrack_recorder.bot.embeds import (
    BLURPLE,
    DESCRIPTION_MAX,
    EMBED_FIELDS,
    EMBED_TOTAL,
    FIELD_MAX,
    GREEN,
    GREY,
    TITLE_MAX,
    clip,
    duration_text,
    session_state,
    started_text,
)


def _ms(ms: int) -> str:
    return duration_text({"recordedSeconds": round(ms / 1000)})


def _size(n: int) -> str:
    """Bytes in SI units: `512 B`, `1.5 KB`, `12.3 MB`, `1.2 GB`."""
    if n < 1000:
        return f"{n} B"
    for unit, scale in (("KB", 1e3), ("MB", 1e6)):
        if n < scale * 1000:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e9:.1f} GB"


def _name(names: dict[str, str], user_id: str) -> str:
    return names.get(user_id) or f"user {user_id}"


def _pack(first: discord.Embed, fields: list[tuple[str, str]], title: str
          ) -> list[discord.Embed]:
    """`first` with as many of `fields` (name, value) as fit, then as many more embeds
    (titled `title (2)`, `(3)`, …, colour of `first`) as needed for the rest: each within
    EMBED_FIELDS fields and EMBED_TOTAL characters, so each can be its own message."""
    out = [first]
    for name, value in fields:
        embed = out[-1]
        if (len(embed.fields) >= EMBED_FIELDS
                or len(embed) + len(name) + len(value) > EMBED_TOTAL):
            embed = discord.Embed(title=clip(f"{title} ({len(out) + 1})", TITLE_MAX),
                                  colour=first.colour)
            out.append(embed)
        embed.add_field(name=name, value=value, inline=False)
    return out


def _link_field(t: TrackLink, names: dict[str, str], verb: str, text: str,
                label: str = "{}") -> tuple[str, str]:
    name = "Mix" if t.user_id is None else _name(names, t.user_id)
    value = f"[{verb} {t.link.format}]({t.link.url}){text}"
    if len(value) > FIELD_MAX:  # a URL too long for a field cannot be cut: say so
        value = f"link too long for Discord ({len(t.link.url)} characters)"
    return clip(label.format(name), TITLE_MAX), value


def links_embeds(meeting: SavedMeeting, links: list[TrackLink], names: dict[str, str], *,
                 title: str = "Recording saved") -> list[discord.Embed]:
    """The answer with download links, one embed per message: one field per track, named
    `<display name> (<fmt>)` (`names`: user id → name; `user <id>` when unknown) or
    `Mix (<fmt>)`, valued `[Download <fmt>](<url>) · <size> · <duration>` and the
    speaker's mention (speakers first, the mix last, as `links` orders them). The first
    embed's description gives the meeting id, its duration (paused time cut) and the
    links' validity in minutes (the first link's `expires_in_seconds`; every link is
    minted together); its footer when it was saved. Fields that do not fit Discord's
    limits (25 fields, 6000 characters per message) go to further embeds titled
    `<title> (2)`, …: every link is in one of them."""
    m = meeting.manifest
    expires = links[0].link.expires_in_seconds if links else 0
    desc = (f"Meeting `{meeting.meeting_id}` · {_ms(m.duration_ms)}"
            + (f" (paused {_ms(m.paused_ms)} cut)" if m.paused_ms else "")
            + f"\nLinks expire {expires // 60} min after this message; "
            f"`/record get {meeting.meeting_id}` mints new ones.")
    first = discord.Embed(title=clip(title, TITLE_MAX), description=desc, colour=GREEN)
    first.set_footer(text=f"saved {meeting.saved_at:%Y-%m-%d %H:%M} UTC")
    fields = [_link_field(t, names, "Download", f" · {_size(t.bytes)} · "
                          f"{_ms(t.duration_ms)}" + (f" · <@{t.user_id}>" if t.user_id
                                                    else ""), "{} (" + t.link.format + ")")
              for t in links]
    return _pack(first, fields, title)


def saved_embed(meeting: str, title: str = "Recording saved") -> discord.Embed:
    """The answer to a `/record stop` by a member who may not have the links (neither
    Manage Server nor a speaker in it): saved, and who may get them."""
    return discord.Embed(title=clip(title, TITLE_MAX), colour=GREEN, description=(
        f"Meeting `{meeting}` is saved. Its download links are for members with Manage "
        "Server and members who spoke in it (`/record get`)."))


def add_live_links(embed: discord.Embed, manifest: LiveManifest, links: list[TrackLink],
                   names: dict[str, str]) -> list[discord.Embed]:
    """`/record status` of a live session: `embed` (the session's) with the audio so far
    (`manifest`, the live manifest) as a "So far" field (its length, the links' validity
    in minutes), then one field per track `[Listen <fmt>](<url>) · <duration>` named
    `So far: <name>` like `links_embeds`' — in `embed` while Discord's limits allow (25
    fields, 6000 characters per message), the rest in further embeds titled `So far (2)`,
    …; one embed per message."""
    expires = links[0].link.expires_in_seconds if links else 0
    summary = (f"{_ms(manifest.duration_ms)} up to the last chunk assembled; links expire "
               f"{max(1, expires // 60)} min after this message")
    fields = [("So far", clip(summary, FIELD_MAX))]
    fields += [_link_field(t, names, "Listen", f" · {_ms(t.duration_ms)}", "So far: {}")
               for t in links]
    return _pack(embed, fields, "So far")


def meetings_embed(saved: list[SavedMeeting], live: dict[str, Any] | None,
                   names: dict[str, str]) -> discord.Embed:
    """`/record list`: the live session first (its state, start, duration), then each
    saved meeting as `` `id` `` · saved <timestamp> · duration · speakers (display names)
    · Saved. An empty list says so."""
    lines = []
    if live is not None:
        status = live.get("status") or {}
        meeting = status.get("meetingId") or "not assigned yet"
        started = started_text(status)
        lines.append(f"`{meeting}` · **{session_state(live)}**"
                     + (f" · started {started}" if started else "")
                     + f" · {duration_text(status)} · "
                     + (", ".join(_name(names, u) for u in status.get("speakers") or [])
                        or "nobody yet"))
    for m in saved:
        ts = int(m.saved_at.timestamp())
        speakers = ", ".join(_name(names, u) for u in m.speakers) or "nobody"
        lines.append(f"`{m.meeting_id}` · saved <t:{ts}:f> · {_ms(m.manifest.duration_ms)}"
                     f" · {speakers} · **Saved**")
    if not lines:
        return discord.Embed(title="No recordings yet", colour=GREY,
                             description="This server has no saved recordings.")
    return discord.Embed(title="Recent recordings", colour=BLURPLE,
                         description=clip("\n".join(lines) + "\n\n`/record get <id>` "
                                           "for download links.", DESCRIPTION_MAX))
