"""The bot's Discord client: the `/record` command group wired to `RecordCommands`
(`app.py`) and the `commands.Bot` that registers and syncs it.

Each callback defers its answer (ephemeral, "thinking"), awaits the `RecordCommands`
method and sends the embeds it returns as ephemeral follow-ups, one embed per message
(Discord's 6000 characters are per message: `embeds.EMBED_TOTAL`); `/record stop` edits
its reply while the promotion runs (Discord developer docs, "Interactions › Receiving and
Responding": the follow-up webhook and editing it with the interaction token). When
Discord refuses an answer (`discord.HTTPException`, e.g. a 400 for an embed it would not
take), a short error embed is sent instead, so the member is never left on "thinking".
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from voicetrack.resources import OutputFormat
from voicetrack_recorder.bot.app import RecordCommands
from voicetrack_recorder.bot.embeds import undelivered_embed

log = logging.getLogger(__name__)


async def _reply(interaction: discord.Interaction,
                 work: Awaitable[discord.Embed | list[discord.Embed]]) -> None:
    """Defer (ephemeral), then send `work`'s embeds as ephemeral follow-ups, one per
    message; when Discord refuses one, a short error embed instead of the rest."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    answer = await work
    embeds = answer if isinstance(answer, list) else [answer]
    try:
        for embed in embeds:
            await interaction.followup.send(embed=embed, ephemeral=True)
    except discord.HTTPException as err:
        await _refused(interaction, err)


async def _refused(interaction: discord.Interaction, err: discord.HTTPException) -> None:
    """Tell the member Discord refused the answer (the log keeps why); if that fails too
    (the token expired), only the log does."""
    log.warning("Discord refused an answer to /record: %s", err, exc_info=True)
    try:
        await interaction.followup.send(embed=undelivered_embed(err), ephemeral=True)
    except discord.HTTPException:
        log.warning("could not tell the member either", exc_info=True)


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
            await progress(final[0])  # the reply, edited to the first embed
            for embed in final[1:]:
                await interaction.followup.send(embed=embed, ephemeral=True)
        except discord.HTTPException as err:  # refused, or the token expired meanwhile
            await _refused(interaction, err)

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
    @app_commands.describe(meeting="Meeting id, as /record list shows it",
                           fmt="File format of the links (default: mp3)")
    @app_commands.rename(fmt="format")
    async def get(interaction: discord.Interaction,
                  meeting: app_commands.Range[str, 1, 64],
                  fmt: OutputFormat | None = None) -> None:
        await _reply(interaction, cmds.get(interaction, meeting, fmt))

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
