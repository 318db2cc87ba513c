"""What the bot's `/record start|stop|pause|resume|status|list|get|optout|optin` do
(`RecordCommands`; the commands are registered in `client.py`).

Each command's callback is three steps: defer the answer (ephemeral), let
`RecordCommands` parse the interaction and call one `BotSessions` (or `MeetingArchive`)
method, send the embed it returns as an ephemeral follow-up. `RecordCommands` never talks
to Discord except through the callables it is handed (`stop`'s progress and notice): it
reads the interaction's guild, member, roles and voice state from discord.py's cache, so
it is tested with interactions built from documented gateway payloads, and the whole
callback on the wire against the local Discord (tests/e2e/test_local_discord_bot.py).

`/record stop` follows the promotion: the deferred reply is filled with the session's
state and edited as it changes, then replaced by links to the final tracks (presigned,
`link_s` seconds, default 15 min). Interaction tokens are valid 15 minutes (Discord
developer docs, "Interactions › Receiving and Responding": follow-ups and edits of the
original response use the token, which expires after 15 minutes), so the reply follows
for at most `follow_s` (13 min); a promotion that takes longer ends the reply with "still
saving", and the bot keeps following (up to `LATE_FOLLOW_S`) and then posts a message in
the command's channel, without links (it is visible to everyone there), pointing to
`/record get <meeting>`. Links are only ever sent in ephemeral replies to members of the
meeting's guild.

Guilds: when `VOICETRACK_BOT_GUILDS` lists guild ids, every command from another guild is
refused ("not enabled for this server"). `/record start` also needs View Channel and
Connect on the target channel for both the member and the bot (`access.py`).

Permissions: `start`, `stop`, `pause` and `resume` need Manage Server (`manage_guild`,
guild-wide, from the member's roles; owners and administrators have it) or one of the
configured roles, unless the policy opens them to everyone; `status`, `optout` and `optin`
are open to every member (a member opts out or in only themself: `BotConsent`,
docs/consent.md). Intents: `guilds` and `voice_states` only (the member's voice channel
comes from the guild's voice states; no privileged intent is needed).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure, VoicetrackError
from voicetrack.objectstore import DEFAULT_LINK_S
from voicetrack.resources import SessionState
from voicetrack.visibility import may_see_meeting
from voicetrack_recorder.bot.access import (
    ControlPolicy,
    GuildAllowList,
    NotAllowedError,
    check_channel_access,
)
from voicetrack_recorder.bot.archive import MeetingArchive
from voicetrack_recorder.bot.consent import BotConsent
from voicetrack_recorder.bot.embeds import consent_embed, error_embed, session_embed, session_state
from voicetrack_recorder.bot.linkembeds import (
    add_live_links,
    links_embeds,
    meetings_embed,
    saved_embed,
)
from voicetrack_recorder.bot.names import display_names
from voicetrack_recorder.bot.sessions import BotSessions

log = logging.getLogger(__name__)


__all__ = ["ControlPolicy", "NotAllowedError", "RecordCommands"]

FOLLOW_S = 13 * 60
"""How long `/record stop` edits its reply while the promotion runs, seconds: under the
15 minute interaction token lifetime, with room for the last edit."""
LATE_FOLLOW_S = 2 * 3600
"""How much longer the bot follows a promotion after the reply's token expired, seconds."""

Progress = Callable[[discord.Embed], Awaitable[None]]
"""Shows an interim answer (`/record stop`: edits the reply)."""
Notice = Callable[[str], Awaitable[None]]
"""Posts a plain message in the command's channel (never with links)."""
ARCHIVE_RATE = 8
ARCHIVE_PER_S = 60.0
"""`/record list` and `/record get`: at most ARCHIVE_RATE answers per member and server in
ARCHIVE_PER_S seconds (each lists or reads the server's saved meetings in S3 and may look
members up over REST; a member repeating them must not turn the bot into a load
generator). Further ones answer "Try again in about N s"."""
class RecordCommands:
    """What each `/record` subcommand does, minus the Discord HTTP calls: parse the
    interaction, check the policy, call one `BotSessions` method, build the embed. Every
    method returns an embed, for errors too (the error's message, see `error_embed`)."""

    def __init__(self, sessions: BotSessions, policy: ControlPolicy, *,
                 archive: MeetingArchive | None = None,
                 guilds: GuildAllowList | None = None,
                 follow_s: float = FOLLOW_S, late_follow_s: float = LATE_FOLLOW_S,
                 link_s: int = DEFAULT_LINK_S, consent: BotConsent | None = None) -> None:
        """`archive`: saved meetings and links (None: `list`/`get` answer that links are
        not configured, `stop` answers at once). `guilds`: the allow-list (default every
        guild). `follow_s`, `late_follow_s`: see the module docstring; `link_s`: link
        validity, seconds (1..604800). `consent`: opt-outs (default: over `sessions`'
        API client, in its namespace)."""
        self.sessions = sessions
        self.consent = consent or BotConsent(sessions)
        self.policy = policy
        self.archive = archive
        self.guilds = guilds or GuildAllowList()
        self.follow_s = follow_s
        self.late_follow_s = late_follow_s
        self.link_s = link_s
        self._late: set[asyncio.Task[None]] = set()
        self._archive_rate: commands.CooldownMapping[discord.Interaction] = \
            commands.CooldownMapping(app_commands.Cooldown(ARCHIVE_RATE, ARCHIVE_PER_S),
                                     _member_key)

    def _throttle(self, interaction: discord.Interaction, command: str) -> None:
        """Count one archive answer for the member (`ARCHIVE_RATE`, discord.py's cooldown
        buckets). Raises TemporaryFailure with the wait when they had their share."""
        wait = self._archive_rate.update_rate_limit(interaction)
        if wait is not None:
            raise TemporaryFailure(
                f"`/record {command}` answers {ARCHIVE_RATE} times per "
                f"{int(ARCHIVE_PER_S)} s per member", delay=max(1, math.ceil(wait)))

    def _served(self, interaction: discord.Interaction) -> discord.Guild:
        guild = _guild(interaction)
        self.guilds.check(guild.id)
        return guild

    def _links(self) -> MeetingArchive:
        if self.archive is None:
            raise InvalidInputError("download links are not configured for this bot "
                                    "(VOICETRACK_S3_ENDPOINT and its credentials)")
        return self.archive

    async def start(self, interaction: discord.Interaction,
                    channel: discord.VoiceChannel | None = None,
                    chunk_seconds: int | None = None) -> discord.Embed:
        """Record `channel`, else the voice channel the member is in."""
        async def go() -> discord.Embed:
            guild = self._served(interaction)
            self.policy.check(interaction.user)
            target = channel or _members_voice_channel(interaction.user)
            if not isinstance(target, discord.VoiceChannel) or target.guild.id != guild.id:
                raise InvalidInputError(f"{target.mention} is not a voice channel of this "
                                        "server")
            # the cached channel carries the overwrites; an option's resolved channel may not
            cached = guild.get_channel(target.id)
            check_channel_access(cached if isinstance(cached, discord.VoiceChannel)
                                 else target, interaction.user)
            started = await self.sessions.start(
                str(guild.id), str(target.id), str(interaction.user.id), chunk_seconds,
                remembered=lambda: self.consent.remembered(str(guild.id)))
            title = None
            if not started.created:
                state = session_state(started.session)
                if started.session["metadata"].get("deletionTimestamp"):
                    title = ("The previous recording ended and is being saved; try again "
                             "when it is done")
                elif state in _RECORDING:
                    title = "Already recording in this server"
            return session_embed(started.session, title=title)
        return await _answer_errors(go())

    async def stop(self, interaction: discord.Interaction, progress: Progress | None = None,
                   notice: Notice | None = None) -> list[discord.Embed]:
        """Stop and save the server's recording; with an archive, follow the promotion
        (`progress(embed)` at each state change, for `follow_s` at most) and answer with
        links to the final tracks. Still saving after `follow_s`: answer so, keep
        following in the background and `notice(text)` once saved (no links). The links
        follow the visibility rule (`voicetrack.visibility`): a member who may not see
        them is told the meeting is saved. One embed per message (`links_embeds`)."""
        async def go() -> list[discord.Embed]:
            guild = self._served(interaction)
            self.policy.check(interaction.user)
            obj = await self.sessions.stop(str(guild.id))
            meeting = str((obj.get("status") or {}).get("meetingId") or "")
            if self.archive is None or not meeting:
                return [session_embed(obj)]
            if progress is not None:
                await progress(session_embed(obj))

            async def changed(o: dict[str, Any]) -> None:
                if progress is not None:
                    await progress(session_embed(o))
            left = await self.sessions.follow(obj, self.follow_s, changed)
            if left is not None:
                self._follow_late(left, guild.id, meeting, notice)
                return [session_embed(left, title=(
                    f"Still saving after {int(self.follow_s // 60)} min: a message in "
                    f"this channel will say when `{meeting}` is ready; then "
                    f"`/record get {meeting}`"))]
            return await self._links_answer(interaction, guild, meeting, "Recording saved",
                                            stopped=True)
        return await _answer_errors(go(), many=True)

    def _follow_late(self, obj: dict[str, Any], guild_id: int, meeting: str,
                     notice: Notice | None) -> None:
        async def late() -> None:
            try:
                if await self.sessions.follow(obj, self.late_follow_s) is not None:
                    return  # still not saved: /record status shows why
                if self.archive is not None and notice is not None:
                    await self.archive.get(str(guild_id), meeting)
                    await notice(f"The recording `{meeting}` is saved: `/record get "
                                 f"{meeting}` for download links (only you will see them).")
            except Exception:  # nobody to answer; the log keeps it
                log.exception("following meeting %s after the reply expired", meeting)
        task = asyncio.create_task(late())
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    async def _links_answer(self, interaction: discord.Interaction, guild: discord.Guild,
                            meeting: str, title: str, stopped: bool = False,
                            fmt: str | None = None) -> list[discord.Embed]:
        """Links (in format `fmt`, default mp3) to saved `meeting` for the member who
        asked, if the visibility rule lets them see it; else "not found" like a missing
        meeting (`stopped`: they stopped it, so they are told it is saved, without
        links)."""
        archive = self._links()
        try:
            saved = await archive.get(str(guild.id), meeting)
        except NotFoundError:
            if not stopped:
                raise
            return [error_embed(NotFoundError(
                f"the session ended but no saved tracks were found for `{meeting}` "
                "(nobody spoke, or it was removed without promotion)"))]
        if not _may_see(interaction, saved.speakers):
            if stopped:
                return [saved_embed(meeting, title)]
            raise archive._not_found(meeting)
        links = await archive.links(saved, self.link_s, fmt)
        names = await display_names(guild, saved.speakers)
        return links_embeds(saved, links, names, title=title)

    async def recent(self, interaction: discord.Interaction) -> discord.Embed:
        """This server's live session and most recently saved meetings: every member sees
        the live session (it is announced in the channel anyway), and the saved meetings
        the visibility rule lets them see (`voicetrack.visibility`: all with Manage
        Server, else those they spoke in)."""
        async def go() -> discord.Embed:
            guild = self._served(interaction)
            self._throttle(interaction, "list")
            archive = self._links()
            live = await self.sessions.find(str(guild.id))
            saved = [m for m in await archive.recent(str(guild.id))
                     if _may_see(interaction, m.speakers)]
            ids = {u for m in saved for u in m.speakers}
            ids |= set(((live or {}).get("status") or {}).get("speakers") or [])
            return meetings_embed(saved, live, await display_names(guild, sorted(ids)))
        return await _answer_errors(go())

    async def get(self, interaction: discord.Interaction, meeting: str,
                  fmt: str | None = None) -> list[discord.Embed]:
        """Links to the tracks of this server's saved meeting `meeting` in format `fmt`
        (mp3, flac or opus; default mp3 where a track has it), minted now (ephemeral; one
        embed per message), for members with Manage Server and members who spoke in it.
        Another server's meeting, and one the member may not see, is "not found", like a
        missing one; a format the meeting was not saved in is "not found" naming the
        formats it has."""
        async def go() -> list[discord.Embed]:
            guild = self._served(interaction)
            self._throttle(interaction, "get")
            wanted = meeting.strip()
            return await self._links_answer(interaction, guild, wanted,
                                            f"Recording {wanted}", fmt=fmt)
        return await _answer_errors(go(), many=True)

    async def pause(self, interaction: discord.Interaction) -> discord.Embed:
        """Pause the server's recording."""
        async def go() -> discord.Embed:
            guild = self._served(interaction)
            self.policy.check(interaction.user)
            return session_embed(await self.sessions.pause(str(guild.id)),
                                 title="Recording paused")
        return await _answer_errors(go())

    async def resume(self, interaction: discord.Interaction) -> discord.Embed:
        """Resume the server's recording."""
        async def go() -> discord.Embed:
            guild = self._served(interaction)
            self.policy.check(interaction.user)
            return session_embed(await self.sessions.resume(str(guild.id)),
                                 title="Recording resumed")
        return await _answer_errors(go())

    async def status(self, interaction: discord.Interaction) -> list[discord.Embed]:
        """The server's recording, for any member; with an archive, short-lived links to
        the audio so far of a live session (none when there is none yet, or S3 is away),
        for members the visibility rule lets see it (Manage Server, or among the
        session's `status.speakers`). One embed per message (`add_live_links`)."""
        async def go() -> list[discord.Embed]:
            guild = self._served(interaction)
            obj = await self.sessions.status(str(guild.id))
            embed = session_embed(obj)
            status = obj.get("status") or {}
            meeting = str(status.get("meetingId") or "")
            if (self.archive is None or not meeting or obj["metadata"].get("deletionTimestamp")
                    or not _may_see(interaction, status.get("speakers") or [])):
                return [embed]
            try:
                live = await self.archive.live(str(guild.id), meeting)
                if live is None:
                    return [embed]
                links = await self.archive.live_links(live)
            except TemporaryFailure as err:  # the status still answers
                log.info("no audio so far for %s: %s", meeting, err)
                return [embed]
            names = await display_names(guild, [t.user_id for t in links if t.user_id])
            return add_live_links(embed, live, links, names)
        return await _answer_errors(go(), many=True)


    async def optout(self, interaction: discord.Interaction) -> discord.Embed:
        """Stop recording the member who typed it (only themself) in this server, from
        now on and in later recordings, until `/record optin`; any member may."""
        async def go() -> discord.Embed:
            guild = self._served(interaction)
            change = await self.consent.opt_out(str(guild.id), str(interaction.user.id))
            return consent_embed(change.session, opted_out=True)
        return await _answer_errors(go())

    async def optin(self, interaction: discord.Interaction) -> discord.Embed:
        """Record the member who typed it again (undoes `/record optout`)."""
        async def go() -> discord.Embed:
            guild = self._served(interaction)
            change = await self.consent.opt_in(str(guild.id), str(interaction.user.id))
            return consent_embed(change.session, opted_out=False)
        return await _answer_errors(go())


_RECORDING = (SessionState.PENDING, SessionState.RECORDING, SessionState.PAUSED)
"""States in which `/record start` answers "Already recording"."""


def _may_see(interaction: discord.Interaction, speakers: Iterable[str]) -> bool:
    """The visibility rule (`voicetrack.visibility`) for the member who typed the
    command: Manage Server (guild-wide; owners and administrators have it), or a speaker."""
    user = interaction.user
    manages = isinstance(user, discord.Member) and user.guild_permissions.manage_guild
    return may_see_meeting(str(user.id), manages, speakers)


def _guild(interaction: discord.Interaction) -> discord.Guild:
    if interaction.guild is None:
        raise InvalidInputError("/record works in a server, not in direct messages")
    return interaction.guild


def _member_key(interaction: discord.Interaction) -> tuple[int | None, int]:
    """The cooldown bucket of an interaction: its server and member."""
    return interaction.guild_id, interaction.user.id


def _members_voice_channel(user: discord.Member | discord.User
                           ) -> discord.VoiceChannel | discord.StageChannel:
    voice = user.voice if isinstance(user, discord.Member) else None
    if voice is None or voice.channel is None:
        raise InvalidInputError("join a voice channel first, or name one with the "
                                "`channel` option")
    if isinstance(voice.channel, discord.StageChannel):
        raise InvalidInputError(f"{voice.channel.mention} is a stage channel; only voice "
                                "channels can be recorded")
    return voice.channel


_A = TypeVar("_A", discord.Embed, list[discord.Embed])


async def _answer_errors(work: Awaitable[_A], many: bool = False) -> _A:
    """`work`'s answer, or the error's embed (`error_embed`; in a list when `many`)."""
    try:
        return await work
    except VoicetrackError as err:
        log.info("command refused: %s", err)
        embed = error_embed(err)
    except Exception as err:  # an answer is owed to the member; the log keeps the trace
        log.exception("command failed")
        embed = error_embed(err)
    return [embed] if many else embed  # type: ignore[return-value]
