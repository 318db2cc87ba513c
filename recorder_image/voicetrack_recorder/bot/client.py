"""The bot's Discord client: the `/record` command group wired to `RecordCommands`
(`app.py`) and the `commands.Bot` that registers and syncs it.

Each callback defers its answer (ephemeral, "thinking"), awaits the `RecordCommands`
method and sends the embed it returns as an ephemeral follow-up; `/record stop` edits its
reply while the promotion runs (Discord developer docs, "Interactions › Receiving and
Responding": the follow-up webhook and editing it with the interaction token).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from voicetrack_recorder.bot.app import RecordCommands

log = logging.getLogger(__name__)


async def _reply(interaction: discord.Interaction, work: Awaitable[discord.Embed]) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    await interaction.followup.send(embed=await work, ephemeral=True)


def build_group(cmds: RecordCommands) -> app_commands.Group:
    """The `/record` command group (guild only) with its nine subcommands."""
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

    @group.command(name="stop", description="Stop recording, save the tracks, get links")
    async def stop(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        sent: list[discord.WebhookMessage] = []

        async def progress(embed: discord.Embed) -> None:
            if sent:
                await sent[0].edit(embed=embed)
            else:
                sent.append(await interaction.followup.send(embed=embed, ephemeral=True,
                                                            wait=True))

        async def notice(text: str) -> None:
            channel = interaction.channel
            if isinstance(channel, discord.abc.Messageable):
                await channel.send(text)

        final = await cmds.stop(interaction, progress, notice)
        try:
            await progress(final)
        except discord.HTTPException:  # the token expired meanwhile: nothing else to do
            log.warning("could not deliver the /record stop answer", exc_info=True)

    @group.command(name="pause", description="Pause the recording (paused time is cut)")
    async def pause(interaction: discord.Interaction) -> None:
        await _reply(interaction, cmds.pause(interaction))

    @group.command(name="resume", description="Resume a paused recording")
    async def resume(interaction: discord.Interaction) -> None:
        await _reply(interaction, cmds.resume(interaction))

    @group.command(name="status", description="Show this server's recording")
    async def status(interaction: discord.Interaction) -> None:
        await _reply(interaction, cmds.status(interaction))

    @group.command(name="list", description="This server's recent recordings")
    async def list_(interaction: discord.Interaction) -> None:
        await _reply(interaction, cmds.recent(interaction))

    @group.command(name="get", description="Download links for a saved recording")
    @app_commands.describe(meeting="Meeting id, as /record list shows it")
    async def get(interaction: discord.Interaction,
                  meeting: app_commands.Range[str, 1, 64]) -> None:
        await _reply(interaction, cmds.get(interaction, meeting))

    @group.command(name="optout", description="Stop recording your voice in this server "
                   "(until /record optin)")
    async def optout(interaction: discord.Interaction) -> None:
        await _reply(interaction, cmds.optout(interaction))

    @group.command(name="optin", description="Let Voicetrack record your voice again")
    async def optin(interaction: discord.Interaction) -> None:
        await _reply(interaction, cmds.optin(interaction))

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
