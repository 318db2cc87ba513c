"""The recorder's `discord` source: join a voice channel and record everyone in it.

The bot joins `channelId` with discord.py 2.7.1's `VoiceClient`, whose connection state
negotiates the transport (op 4 gives `mode` and `secret_key`) and DAVE (its `davey`
session handles ops 21-31). We add no second socket and no second DAVE member: a
`ConnectionReceiver` (`voiceclient.py`) registers with the state's `add_socket_listener`
(raw UDP datagrams, called on discord.py's socket-reader thread), hands each datagram to
the event loop, and receives the voice gateway's JSON events through the connection state's
websocket hook.

Consent (issue 12): members in the channel's voice states are shown to the `Consent` every
tick; their roles come from discord.py's member cache (`members.py`). The gateway
connection asks for GUILD_MEMBERS only with role opt-outs, and records without it when
Discord refuses it (`login.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import struct
import time
from typing import Any

import discord

from voicetrack.chunkspec import ConsentDegraded
from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack_recorder.clock import FrameSink, SessionClock
from voicetrack_recorder.consent import Consent
from voicetrack_recorder.discord.connection import LoopSocketReader
from voicetrack_recorder.discord.endpoint import DiscordEndpoint
from voicetrack_recorder.discord.login import (
    MEMBERS_NOT_ASKED,
    MEMBERS_NOT_ASKED_REASON,
    MEMBERS_REFUSED,
    MEMBERS_REFUSED_REASON,
    GatewaySession,
    open_gateway,
)
from voicetrack_recorder.discord.members import member_roles
from voicetrack_recorder.discord.receiver import VoiceReceiver
from voicetrack_recorder.discord.stats import ReceiveStats
from voicetrack_recorder.discord.voiceclient import (
    ConnectionReceiver,
    RecorderVoiceClient,
    make_receiver,
)

log = logging.getLogger(__name__)

REC_SUFFIX = " [REC]"
NOTICE = ("🔴 This voice channel is being recorded by Voicetrack. Each speaker's audio is "
          "saved; leave the channel if you do not want to be recorded.")
KEEPALIVE_S = 5.0
"""UDP keep-alive period: an 8-byte counter datagram keeps the NAT route to the voice
server open while the bot itself never sends audio (as @discordjs/voice's VoiceUDPSocket
does every 5 s)."""
TICK_S = 0.02
REJOIN_AFTER_S = 30.0
"""How long discord.py may stay disconnected (it reconnects by itself first) before the
source joins the channel again; the timeline continues, the interval is silence."""
LEAVE_TIMEOUT_S = 10.0
"""How long a cancelled source still spends leaving (nickname, voice, gateway) before it
gives up; well inside the recorder pod's 30 s termination grace."""
NICK_MAX = 32
"""Discord nickname length limit (Discord developer docs, "Guild Member Object")."""


class DiscordSource:
    """Records the voice channel `channel_id` of guild `guild_id` into `sink`.

    `token` is the bot token (from the Secret, via the environment); ids are snowflakes.
    Frames go to `sink.push(user_id, slot, opus, phase)` with slots of `clock`. `notice` sets the
    nickname suffix `[REC]` and posts `NOTICE` in the channel's text chat (best effort).
    `endpoint`: where Discord is (applied to discord.py and its connector when `run`
    starts; None leaves discord.py as it is, i.e. Discord itself).
    `empty_channel_s`: end (with `end_reason` "channel-empty") once nobody but the bot
    has been in the channel for that long; None or 0 never.
    `consent`: who is not recorded (dropped in the receiver before DAVE decryption).
    `receiver_options` tune the pipeline (see `VoiceReceiver`). Raises InvalidInputError for
    a bad token, an unknown or non-voice channel or missing permissions to connect;
    TemporaryFailure when Discord cannot be reached.
    """

    def __init__(self, *, token: str, guild_id: str | int, channel_id: str | int,
                 clock: SessionClock, sink: FrameSink, notice: bool = True,
                 endpoint: DiscordEndpoint | None = None,
                 empty_channel_s: float | None = None, consent: Consent | None = None,
                 **receiver_options: Any) -> None:
        if not token:
            raise InvalidInputError("token: the bot token is empty")
        for name, value in (("guild_id", guild_id), ("channel_id", channel_id)):
            if not str(value).isdigit():
                raise InvalidInputError(f"{name}: {value!r} is not a Discord snowflake")
        self.token = token
        self.guild_id = int(guild_id)
        self.channel_id = int(channel_id)
        self.clock = clock
        self.sink = sink
        self.notice = notice
        self.endpoint = endpoint
        self._options = {**receiver_options, "consent": consent}
        self.consent = consent
        self.connection: ConnectionReceiver | None = None
        self._voice: RecorderVoiceClient | None = None
        self._original_nick: str | None = None
        self._ticked_slot: int | None = None
        self.empty_channel_s = empty_channel_s or None
        self.end_reason: str | None = None
        """Why the source ended by itself (`channel-empty`); None when stopped."""
        self.degraded: str | None = None
        """What the source records without (`login.MEMBERS_REFUSED`), for the session."""

    def watermark_slot(self) -> int | None:
        """The clock slot of the receiver's last tick that followed a drained socket: every
        frame that had arrived by then has been read and released to the sink (the seal
        delay covers the jitter buffer's hold). After a stall of the event loop the
        recorder waits until the backlog is read before sealing. None until the source
        records."""
        return self._ticked_slot

    @property
    def stats(self) -> ReceiveStats:
        """The receive counters (all zero before `run` starts)."""
        return self.connection.receiver.stats if self.connection else ReceiveStats()

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, record until `stop` is set, then flush, leave and log out."""
        loop = asyncio.get_running_loop()
        self.connection = make_receiver(self.clock, self.sink, loop, **self._options)
        self._voice = None
        gateway: GatewaySession | None = None
        try:
            asked = bool(self.consent and self.consent.role_ids)
            gateway = await open_gateway(self.token, self.endpoint, members=asked)
            if self.consent is not None:
                if asked and not gateway.members_intent:
                    self.degraded = MEMBERS_REFUSED
                self.consent.lacks_members(
                    None if gateway.members_intent
                    else ConsentDegraded(reason=MEMBERS_REFUSED_REASON, message=MEMBERS_REFUSED)
                    if asked else ConsentDegraded(reason=MEMBERS_NOT_ASKED_REASON,
                                                  message=MEMBERS_NOT_ASKED))
                self.consent.roles_of = member_roles(gateway.client, self.guild_id)
            channel = await self._channel(gateway.client)
            try:
                await self._join(channel)
            except (TimeoutError, discord.ClientException, OSError) as exc:
                raise TemporaryFailure(f"cannot join voice channel {self.channel_id}: "
                                       f"{exc!r}") from exc
            if self.notice:
                await self._announce(channel)
            await self._record(channel, stop)
        finally:
            self.connection.detach()
            receiver = self.connection.receiver
            receiver.flush()
            # what an on-call engineer asks first about a recording's audio
            log.info("receive stats: %s; timeline resyncs %d", json.dumps(
                receiver.stats.as_dict(), sort_keys=True), receiver.timeline.resyncs)
            leave = asyncio.ensure_future(self._leave(gateway))
            try:
                await asyncio.shield(leave)
            except asyncio.CancelledError:  # finish leaving first (bounded), then go
                with contextlib.suppress(Exception):  # a timeout, or the leave's own error
                    await asyncio.wait_for(leave, LEAVE_TIMEOUT_S)
                raise

    async def _leave(self, gateway: GatewaySession | None) -> None:
        """Restore the nickname, leave the voice channel, log out. Run to its end even when
        the source is cancelled (`Recorder.run` cancels it once its uploads are done,
        which can be a few event-loop steps after stop): a cut-short leave left `[REC]`
        on the bot and the bot in the channel."""
        if gateway is None:  # never connected (`open_gateway` closed its own client)
            return
        if self.notice:
            await self._unannounce(gateway.client)
        if self._voice is not None:
            with contextlib.suppress(Exception):
                await self._voice.disconnect(force=True)
        await gateway.close()

    async def _join(self, channel: discord.VoiceChannel) -> RecorderVoiceClient:
        """Connect (muted) and attach the receiver; the receiver, its SSRC map and the
        speakers' timelines are the same for every (re)join."""
        assert self.connection is not None
        self.connection.detach()
        voice = await channel.connect(
            cls=functools.partial(RecorderVoiceClient, receiver=self.connection),
            self_mute=True, self_deaf=False, reconnect=True)
        self.connection.attach(voice._connection)
        self._voice = voice
        return voice

    async def _channel(self, client: discord.Client) -> discord.VoiceChannel:
        channel = client.get_channel(self.channel_id)
        if channel is None:
            try:
                channel = await client.fetch_channel(self.channel_id)
            except discord.NotFound as exc:
                raise InvalidInputError(f"channelId: channel {self.channel_id} not found") \
                    from exc
            except discord.Forbidden as exc:
                raise InvalidInputError(f"channelId: no access to {self.channel_id}") from exc
        if not isinstance(channel, (discord.VoiceChannel, discord.StageChannel)):
            raise InvalidInputError(f"channelId: {self.channel_id} is not a voice channel")
        if channel.guild.id != self.guild_id:
            raise InvalidInputError(f"channelId: {self.channel_id} is not in guild "
                                    f"{self.guild_id}")
        perms = channel.permissions_for(channel.guild.me)
        if not (perms.view_channel and perms.connect):
            raise InvalidInputError(f"channelId: the bot lacks View Channel/Connect on "
                                    f"{self.channel_id}")
        return channel  # type: ignore[return-value]

    async def _record(self, channel: discord.VoiceChannel, stop: asyncio.Event) -> None:
        """Tick the receiver every 20 ms, send UDP keep-alives, and rejoin when discord.py
        has given up on the connection (kicked, voice server gone) for REJOIN_AFTER_S."""
        assert self.connection is not None and self._voice is not None
        receiver = self.connection.receiver
        next_keepalive = time.monotonic() + KEEPALIVE_S
        down_since: float | None = None
        alone_since: float | None = None
        counter = 0
        while not stop.is_set():
            # a plain sleep: `wait_for(stop.wait(), …)` made and cancelled a task every
            # 20 ms; a stop is seen within one tick all the same
            await asyncio.sleep(TICK_S)
            self._tick(receiver)
            voice = self._voice
            refused = getattr(voice._connection, "refused", None)
            if refused is not None:
                raise refused
            now = time.monotonic()
            if voice.is_connected():
                down_since = None
            elif down_since is None:
                down_since = now
            elif now - down_since >= REJOIN_AFTER_S:
                down_since = now
                log.warning("voice connection lost for %.0f s; rejoining", REJOIN_AFTER_S)
                try:
                    with contextlib.suppress(Exception):
                        await voice.disconnect(force=True)
                    await self._join(channel)
                except (TimeoutError, discord.ClientException, discord.HTTPException,
                        OSError) as exc:
                    log.warning("rejoin failed (%s); trying again later", exc)
            alone_since = self._alone_since(channel, alone_since, now)
            if (alone_since is not None and self.empty_channel_s is not None
                    and now - alone_since >= self.empty_channel_s):
                self.end_reason = "channel-empty"
                log.info("nobody but the recorder in the channel for %.0f s: stopping",
                         now - alone_since)
                return
            if now >= next_keepalive:
                next_keepalive = now + KEEPALIVE_S
                counter = (counter + 1) & 0xFFFF_FFFF
                if voice.is_connected():
                    with contextlib.suppress(OSError):
                        voice._connection.send_packet(struct.pack("<Q", counter))

    def _tick(self, receiver: VoiceReceiver) -> None:
        """Read a batch, tick `receiver`, and move the watermark to the slot taken before
        the read only when it drained the socket (a backlog left by a stall holds frames
        of the slots the watermark would pass)."""
        slot = self.clock.now_slot()
        reader = getattr(getattr(self._voice, "_connection", None), "_socket_reader", None)
        drained = reader.read_ready() if isinstance(reader, LoopSocketReader) else True
        receiver.tick()
        if drained:
            self._ticked_slot = slot

    def _alone_since(self, channel: discord.VoiceChannel, since: float | None,
                     now: float) -> float | None:
        """When (monotonic s) the bot was last found alone in `channel`, or None while
        anyone else is in it. Reads discord.py's voice states of the channel (kept from
        GUILD_CREATE and VOICE_STATE_UPDATE: intent GUILD_VOICE_STATES); any other user,
        bots included, counts as company."""
        me = channel.guild.me.id if channel.guild.me else None
        if self.consent is not None:
            self.consent.see_all(str(u) for u in channel.voice_states if u != me)
        if any(user_id != me for user_id in channel.voice_states):
            return None
        return now if since is None else since

    async def _announce(self, channel: discord.VoiceChannel) -> None:
        me = channel.guild.me
        self._original_nick = me.nick
        base = me.nick or me.display_name
        if not base.endswith(REC_SUFFIX.strip()):
            nick = base[:NICK_MAX - len(REC_SUFFIX)] + REC_SUFFIX
            try:
                await me.edit(nick=nick)
            except discord.HTTPException as exc:
                log.warning("cannot set the [REC] nickname (Change Nickname?): %s", exc)
        try:
            await channel.send(NOTICE)
        except discord.HTTPException as exc:
            log.warning("cannot post the recording notice (Send Messages?): %s", exc)

    async def _unannounce(self, client: discord.Client) -> None:
        guild = client.get_guild(self.guild_id)
        if guild is None or guild.me is None or not (guild.me.nick or "").endswith("[REC]"):
            return
        try:
            await guild.me.edit(nick=self._original_nick)
        except (discord.HTTPException, RuntimeError) as exc:
            log.warning("cannot restore the nickname: %s", exc)

