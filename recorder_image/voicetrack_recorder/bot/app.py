"""The Discord layer of the bot: `/record start|stop|pause|resume|status`.

Each command's callback is three steps: defer the answer (ephemeral), let
`RecordCommands` parse the interaction and call one `BotSessions` method, send the embed
it returns as an ephemeral follow-up. `RecordCommands` never talks to Discord: it reads
the interaction's guild, member, roles and voice state from discord.py's cache, so it is
tested with interactions built from documented gateway payloads; the two HTTP calls of a
callback (defer, follow-up) are the only untested lines.

Permissions: `start`, `stop`, `pause` and `resume` need Manage Server (`manage_guild`,
guild-wide, from the member's roles; owners and administrators have it) or one of the
configured roles, unless the policy opens them to everyone; `status` is open to every
member. Intents: `guilds` and `voice_states` only (the member's voice channel comes from
the guild's voice states; no privileged intent is needed).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from voicetrack.errors import InvalidInputError, VoicetrackError
from voicetrack_recorder.bot.embeds import error_embed, session_embed
from voicetrack_recorder.bot.sessions import BotSessions

log = logging.getLogger(__name__)


class NotAllowedError(InvalidInputError):
    """The member may not run this command (see `ControlPolicy`)."""


@dataclass(frozen=True)
class ControlPolicy:
    """Who may start, stop, pause and resume: members with Manage Server, members with
    one of `role_ids`, or everyone when `everyone` is set. `status` is always open."""

    role_ids: frozenset[int] = field(default_factory=frozenset)
    everyone: bool = False

    @classmethod
    def parse(cls, roles: str = "", everyone: bool = False) -> ControlPolicy:
        """From a comma-separated list of role ids (`VOICETRACK_BOT_ROLES`).
        Raises InvalidInputError naming the entry that is not a snowflake."""
        ids: set[int] = set()
        for part in (p.strip() for p in roles.split(",")):
            if not part:
                continue
            if not part.isdigit() or not 15 <= len(part) <= 20:
                raise InvalidInputError(
                    f"VOICETRACK_BOT_ROLES: {part!r} is not a role id (15-20 digits)")
            ids.add(int(part))
        return cls(frozenset(ids), everyone)

    def check(self, member: discord.Member | discord.User) -> None:
        """Raise NotAllowedError unless `member` may control recordings."""
        if self.everyone:
            return
        if isinstance(member, discord.Member):
            if member.guild_permissions.manage_guild:
                return
            if any(r.id in self.role_ids for r in member.roles):
                return
        need = "the Manage Server permission"
        if self.role_ids:
            need += " or one of the roles " + ", ".join(f"<@&{r}>" for r in
                                                         sorted(self.role_ids))
        raise NotAllowedError(f"controlling recordings needs {need}")


class RecordCommands:
    """What each `/record` subcommand does, minus the Discord HTTP calls: parse the
    interaction, check the policy, call one `BotSessions` method, build the embed. Every
    method returns an embed, for errors too (the error's message, see `error_embed`)."""

    def __init__(self, sessions: BotSessions, policy: ControlPolicy) -> None:
        self.sessions = sessions
        self.policy = policy

    async def start(self, interaction: discord.Interaction,
                    channel: discord.VoiceChannel | None = None,
                    chunk_seconds: int | None = None) -> discord.Embed:
        """Record `channel`, else the voice channel the member is in."""
        async def go() -> discord.Embed:
            guild = _guild(interaction)
            self.policy.check(interaction.user)
            target = channel or _members_voice_channel(interaction.user)
            if not isinstance(target, discord.VoiceChannel) or target.guild.id != guild.id:
                raise InvalidInputError(f"{target.mention} is not a voice channel of this "
                                        "server")
            started = await self.sessions.start(str(guild.id), str(target.id),
                                                str(interaction.user.id), chunk_seconds)
            title = None
            if not started.created:
                title = ("The previous recording is still being saved; try again when it "
                         "is done" if started.session["metadata"].get("deletionTimestamp")
                         else "Already recording in this server")
            return session_embed(started.session, title=title)
        return await _answer_errors(go())

    async def stop(self, interaction: discord.Interaction) -> discord.Embed:
        """Stop and save the server's recording."""
        async def go() -> discord.Embed:
            guild = _guild(interaction)
            self.policy.check(interaction.user)
            return session_embed(await self.sessions.stop(str(guild.id)))
        return await _answer_errors(go())

    async def pause(self, interaction: discord.Interaction) -> discord.Embed:
        """Pause the server's recording."""
        async def go() -> discord.Embed:
            guild = _guild(interaction)
            self.policy.check(interaction.user)
            return session_embed(await self.sessions.pause(str(guild.id)),
                                 title="Recording paused")
        return await _answer_errors(go())

    async def resume(self, interaction: discord.Interaction) -> discord.Embed:
        """Resume the server's recording."""
        async def go() -> discord.Embed:
            guild = _guild(interaction)
            self.policy.check(interaction.user)
            return session_embed(await self.sessions.resume(str(guild.id)),
                                 title="Recording resumed")
        return await _answer_errors(go())

    async def status(self, interaction: discord.Interaction) -> discord.Embed:
        """The server's recording, for any member."""
        async def go() -> discord.Embed:
            guild = _guild(interaction)
            return session_embed(await self.sessions.status(str(guild.id)))
        return await _answer_errors(go())


def _guild(interaction: discord.Interaction) -> discord.Guild:
    if interaction.guild is None:
        raise InvalidInputError("/record works in a server, not in direct messages")
    return interaction.guild


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


async def _answer_errors(work: Awaitable[discord.Embed]) -> discord.Embed:
    try:
        return await work
    except VoicetrackError as err:
        log.info("command refused: %s", err)
        return error_embed(err)
    except Exception as err:  # an answer is owed to the member; the log keeps the trace
        log.exception("command failed")
        return error_embed(err)


async def _reply(interaction: discord.Interaction, work: Awaitable[discord.Embed]) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    await interaction.followup.send(embed=await work, ephemeral=True)


def build_group(cmds: RecordCommands) -> app_commands.Group:
    """The `/record` command group (guild only) with its five subcommands."""
    group = app_commands.Group(name="record", description="Record this server's voice "
                               "channel with Voicetrack", guild_only=True,
                               allowed_contexts=app_commands.AppCommandContext(guild=True))

    @group.command(name="start", description="Start recording a voice channel")
    @app_commands.describe(channel="Voice channel to record (default: the one you are in)",
                           chunk_seconds="Seconds per chunk, 5 to 300 (default 10)")
    async def start(interaction: discord.Interaction,
                    channel: discord.VoiceChannel | None = None,
                    chunk_seconds: app_commands.Range[int, 5, 300] | None = None) -> None:
        await _reply(interaction, cmds.start(interaction, channel, chunk_seconds))

    @group.command(name="stop", description="Stop recording and save the tracks")
    async def stop(interaction: discord.Interaction) -> None:
        await _reply(interaction, cmds.stop(interaction))

    @group.command(name="pause", description="Pause the recording (paused time is cut)")
    async def pause(interaction: discord.Interaction) -> None:
        await _reply(interaction, cmds.pause(interaction))

    @group.command(name="resume", description="Resume a paused recording")
    async def resume(interaction: discord.Interaction) -> None:
        await _reply(interaction, cmds.resume(interaction))

    @group.command(name="status", description="Show this server's recording")
    async def status(interaction: discord.Interaction) -> None:
        await _reply(interaction, cmds.status(interaction))

    return group


def bot_intents() -> discord.Intents:
    """`guilds` and `voice_states`, nothing else (no privileged intents)."""
    return discord.Intents(guilds=True, voice_states=True)


class VoicetrackBot(commands.Bot):
    """The bot process: registers `/record` and syncs it at start-up, to `sync_guilds`
    when given (instant, for development) else globally. `connector`: the aiohttp
    connector for REST and the gateway (`DiscordEndpoint.connector()`; make the bot inside
    the running event loop then); None = discord.py's default."""

    def __init__(self, cmds: RecordCommands, sync_guilds: Iterable[int] = (),
                 connector: aiohttp.BaseConnector | None = None) -> None:
        super().__init__(command_prefix=commands.when_mentioned, intents=bot_intents(),
                         help_command=None, connector=connector)
        self.record = build_group(cmds)
        self.sync_guilds = [discord.Object(id=g) for g in sync_guilds]
        self.tree.add_command(self.record)

    async def setup_hook(self) -> None:
        if self.sync_guilds:
            for guild in self.sync_guilds:
                self.tree.copy_global_to(guild=guild)
                synced = await self.tree.sync(guild=guild)
                log.info("synced %d command(s) to guild %s", len(synced), guild.id)
        else:
            synced = await self.tree.sync()
            log.info("synced %d global command(s)", len(synced))

    async def on_ready(self) -> None:
        log.info("logged in as %s (%s) in %d guild(s)", self.user,
                 getattr(self.user, "id", "?"), len(self.guilds))
