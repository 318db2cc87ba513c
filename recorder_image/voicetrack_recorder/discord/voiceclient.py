"""The receive pipeline bound to one discord.py voice connection.

A `ConnectionReceiver` registers with the connection state's `add_socket_listener` (raw UDP
datagrams, called on discord.py's socket-reader thread), hands each datagram to the event
loop, and receives the voice gateway's JSON events through the connection state's websocket
hook, which `RecorderVoiceClient` installs. `DiscordSource` (`source.py`) joins with them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import discord
from discord.voice_state import VoiceConnectionState

from voicetrack_recorder.clock import FrameSink, SessionClock
from voicetrack_recorder.discord.connection import ResumingConnectionState
from voicetrack_recorder.discord.receiver import VoiceReceiver
from voicetrack_recorder.discord.transport import SUPPORTED_MODES

log = logging.getLogger(__name__)


class ConnectionReceiver:
    """Binds a `VoiceReceiver` to one discord.py voice connection state.

    `socket_listener` is the callback given to `add_socket_listener`: it may be called on
    any thread; it stamps the arrival time and runs the datagram on `loop`.
    `ws_hook` is the voice websocket hook (`VoiceConnectionState(hook=...)`): it forwards
    every JSON event (`{"op", "d"}`) to the receiver's SSRC map.
    """

    def __init__(self, receiver: VoiceReceiver, loop: asyncio.AbstractEventLoop) -> None:
        self.receiver = receiver
        self.loop = loop
        self.state: VoiceConnectionState | None = None

    def socket_listener(self, data: bytes) -> None:
        """One raw UDP datagram from the socket reader: stamped with the session clock's
        time (Unix ms) and handed to `VoiceReceiver.datagram`, at once when called on
        `loop` (`connection.LoopSocketReader`), else scheduled there (a reader thread)."""
        arrival_ms = self.receiver.clock.time_fn() * 1000
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self.receiver.datagram(bytes(data), arrival_ms)
            return
        try:
            self.loop.call_soon_threadsafe(self.receiver.datagram, bytes(data), arrival_ms)
        except RuntimeError:  # the loop has closed: we are shutting down
            log.debug("datagram after the event loop closed; dropped")

    async def ws_hook(self, ws: Any, msg: Mapping[str, Any]) -> None:
        """The voice websocket hook: discord.py awaits it with every JSON message
        (`{"op": int, "d": {...}}`) after handling it; other shapes are ignored."""
        op, data = msg.get("op"), msg.get("d")
        if isinstance(op, int) and isinstance(data, Mapping):
            self.receiver.gateway_event(op, data)

    def keys(self) -> tuple[str, bytes] | None:
        """The transport (mode, key) of the attached state, once op 4 has set them."""
        state = self.state
        if state is None:
            return None
        mode, key = getattr(state, "mode", None), getattr(state, "secret_key", None)
        if not isinstance(mode, str) or mode not in SUPPORTED_MODES or not key:
            return None
        return mode, bytes(key)

    def session(self) -> Any:
        """The attached connection's `davey.DaveSession`, or None (DAVE off/not yet)."""
        state = self.state
        return None if state is None else state.dave_session

    def attach(self, state: VoiceConnectionState) -> None:
        """Start receiving from `state` (after it is connected or while it connects)."""
        self.state = state
        state.add_socket_listener(self.socket_listener)

    def detach(self) -> None:
        """Stop receiving from the attached state (idempotent)."""
        if self.state is not None:
            self.state.remove_socket_listener(self.socket_listener)


def make_receiver(clock: SessionClock, sink: FrameSink,
                  loop: asyncio.AbstractEventLoop, **options: Any) -> ConnectionReceiver:
    """A `ConnectionReceiver` whose receiver reads keys and the DAVE session from the
    state it is attached to. `options` go to `VoiceReceiver`."""
    holder: list[ConnectionReceiver] = []
    receiver = VoiceReceiver(clock=clock, sink=sink, keys=lambda: holder[0].keys(),
                             session=lambda: holder[0].session(), **options)
    holder.append(ConnectionReceiver(receiver, loop))
    return holder[0]


async def _forward_hook(ws: Any, msg: dict[str, Any]) -> None:
    client = ws._connection.voice_client
    receiver = getattr(client, "receiver", None)
    if isinstance(receiver, ConnectionReceiver):
        await receiver.ws_hook(ws, msg)


class RecorderVoiceClient(discord.VoiceClient):
    """discord.py's VoiceClient with the websocket hook installed (receive only).

    `receiver` gets every voice gateway JSON event from the first one on (users already
    in the channel are announced right after the handshake); pass it with
    `channel.connect(cls=functools.partial(RecorderVoiceClient, receiver=...))`."""

    def __init__(self, client: discord.Client, channel: Any,
                 receiver: ConnectionReceiver | None = None) -> None:
        self.receiver = receiver
        super().__init__(client, channel)

    def create_connection_state(self) -> VoiceConnectionState:
        """discord.py's connection state, with the hook that forwards gateway events and
        a resume that works (`ResumingConnectionState`)."""
        return ResumingConnectionState(self, hook=_forward_hook)
