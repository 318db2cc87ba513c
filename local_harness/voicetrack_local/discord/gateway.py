"""Gateway v10: the websocket every client (bot or member) keeps open.

Discord developer docs, "Topics › Gateway" and "Topics › Gateway Events": op 10 HELLO
`{heartbeat_interval}`; op 1 HEARTBEAT (d = last seq) → op 11 ACK; op 2 IDENTIFY `{token,
intents, properties}` → DISPATCH READY `{v, user, guilds: [unavailable], session_id,
resume_gateway_url, application}` then GUILD_CREATE (with channels, members and voice
states); op 6 RESUME `{token, session_id, seq}` → the missed dispatches then RESUMED, or op 9
INVALID SESSION (d = false); op 4 VOICE STATE UPDATE `{guild_id, channel_id, self_mute,
self_deaf}` → VOICE_STATE_UPDATE to the guild and VOICE_SERVER_UPDATE `{token, guild_id,
endpoint}` to the caller; op 8 REQUEST GUILD MEMBERS → GUILD_MEMBERS_CHUNK. Transport
compression ("Topics › Gateway › Transport Compression"), one stream per connection:
`compress=zlib-stream`, each message ending with a Z_SYNC_FLUSH (`00 00 ff ff`), or
`compress=zstd-stream`, each message a flushed zstd block of one frame (discord.py asks for
it whenever `zstandard` is installed); anything else closes with 4000. Close codes: 4004
authentication failed; 4014 "Disallowed intent(s)." for an IDENTIFY asking for a
privileged intent the application is not allowed (`World.privileged_intents`, the
developer portal's toggles; discord.py raises `PrivilegedIntentsRequired` and does not
reconnect).
Intents ("Gateway Intents"): GUILDS 1<<0, GUILD_MEMBERS 1<<1, GUILD_VOICE_STATES 1<<7,
GUILD_MESSAGES 1<<9.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import zstandard
from aiohttp import WSMsgType, web

from voicetrack_local.discord.voice import VoiceServer
from voicetrack_local.discord.world import (
    CONNECT,
    PRIVILEGED_INTENTS,
    VIEW_CHANNEL,
    User,
    VoiceState,
    World,
)

log = logging.getLogger(__name__)

HEARTBEAT_MS = 41_250
INTENT_GUILDS = 1 << 0
INTENT_VOICE_STATES = 1 << 7
BUFFER = 1000


class StreamCompressor(Protocol):
    """One connection's transport compression: `frame(text)` is the websocket binary
    message carrying `text`, decodable by the client's one streaming decompressor."""

    def frame(self, text: str) -> bytes: ...


class ZlibStream:
    """`zlib-stream`: a single deflate stream; each message ends with Z_SYNC_FLUSH."""

    def __init__(self) -> None:
        self._z = zlib.compressobj()

    def frame(self, text: str) -> bytes:
        return self._z.compress(text.encode()) + self._z.flush(zlib.Z_SYNC_FLUSH)


class ZstdStream:
    """`zstd-stream`: a single zstd frame for the connection; each message ends with a
    block flush, so it decodes completely on arrival."""

    def __init__(self) -> None:
        self._z = zstandard.ZstdCompressor().compressobj()

    def frame(self, text: str) -> bytes:
        return self._z.compress(text.encode()) + self._z.flush(
            zstandard.COMPRESSOBJ_FLUSH_BLOCK)


COMPRESSIONS: dict[str, type[ZlibStream] | type[ZstdStream]] = {
    "zlib-stream": ZlibStream, "zstd-stream": ZstdStream}
"""The `compress` query values the gateway accepts, with their compressors."""


@dataclass(eq=False)
class Session:
    """One gateway session (survives its websocket for a resume)."""

    session_id: str
    user: User
    intents: int
    ws: web.WebSocketResponse | None = None
    zlib: StreamCompressor | None = None
    seq: int = 0
    sent: deque[tuple[int, dict[str, Any]]] = field(default_factory=lambda: deque(maxlen=BUFFER))

    async def raw(self, payload: dict[str, Any]) -> None:
        if self.ws is None or self.ws.closed:
            return
        text = json.dumps(payload)
        with contextlib.suppress(ConnectionError, RuntimeError):
            if self.zlib is not None:
                await self.ws.send_bytes(self.zlib.frame(text))
            else:
                await self.ws.send_str(text)

    async def dispatch(self, event: str, data: Any) -> None:
        self.seq += 1
        payload = {"op": 0, "t": event, "s": self.seq, "d": data}
        self.sent.append((self.seq, payload))
        await self.raw(payload)


class Gateway:
    """All gateway sessions over `world`; voice joins go to `voice`, whose websocket is
    reachable at `voice_endpoint` (`host:port`, as VOICE_SERVER_UPDATE carries it)."""

    def __init__(self, world: World, voice: VoiceServer, url: str, voice_endpoint: str) -> None:
        self.world = world
        self.voice = voice
        self.url = url
        self.voice_endpoint = voice_endpoint
        self.sessions: dict[str, Session] = {}
        self.refused_intents = 0
        """IDENTIFYs closed with 4014 (a privileged intent not allowed)."""

    async def dispatch(self, event: str, data: dict[str, Any], intent: int,
                       owner: int | None = None) -> None:
        """Send `event` to every session whose intents include `intent`, and to the
        sessions of user `owner` whatever their intents ("Gateway Intents › Caveats": Guild
        Member Update is sent for current-user updates regardless of GUILD_MEMBERS)."""
        for s in list(self.sessions.values()):
            if s.intents & intent or s.user.id == owner:
                await s.dispatch(event, data)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 22)
        await ws.prepare(request)
        compress = request.query.get("compress")
        if compress is not None and compress not in COMPRESSIONS:
            await ws.close(code=4000, message=f"unsupported compress={compress}".encode())
            return ws
        z = COMPRESSIONS[compress]() if compress is not None else None
        hello = Session("", self.world.bot, 0, ws=ws, zlib=z)
        await hello.raw({"op": 10, "s": None, "t": None,
                         "d": {"heartbeat_interval": HEARTBEAT_MS}})
        session: Session | None = None
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                data = json.loads(msg.data)
                op, d = data.get("op"), data.get("d")
                if op == 1:
                    await (session or hello).raw({"op": 11, "s": None, "t": None, "d": None})
                elif op == 2:
                    session = await self._identify(ws, z, d)
                elif op == 6:
                    session = await self._resume(ws, z, d)
                elif session is None:
                    await ws.close(code=4003, message=b"Not authenticated.")
                elif op == 4:
                    await self._voice_state(session, d)
                elif op == 8:
                    await session.dispatch("GUILD_MEMBERS_CHUNK", {
                        "guild_id": str(self.world.guild_id), "chunk_index": 0,
                        "chunk_count": 1, "not_found": [], "nonce": d.get("nonce"),
                        "members": [u.member() for u in self.world.everyone()]})
        finally:
            if session is not None:
                log.info("gateway connection of user %s (session %s) ended: close code %s",
                         session.user.id, session.session_id, ws.close_code)
            if session is not None and session.ws is ws:
                session.ws = None
        return ws

    async def _identify(self, ws: web.WebSocketResponse, z: StreamCompressor | None,
                        d: dict[str, Any]
                        ) -> Session | None:
        user = self.world.by_token(str(d.get("token", "")))
        if user is None:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        intents = int(d.get("intents", 0))
        if intents & PRIVILEGED_INTENTS & ~self.world.privileged_intents:
            self.refused_intents += 1
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return None
        session = Session(secrets.token_hex(16), user, intents, ws=ws, zlib=z)
        self.sessions[session.session_id] = session
        await session.dispatch("READY", {
            "v": 10, "user": {**user.json(), "verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(self.world.guild_id), "unavailable": True}],
            "session_id": session.session_id, "resume_gateway_url": self.url,
            "session_type": "normal", "private_channels": [], "relationships": [],
            "presences": [], "geo_ordered_rtc_regions": ["local"],
            "application": {"id": str(self.world.application_id), "flags": 0},
            **({"shard": d["shard"]} if "shard" in d else {})})
        if session.intents & INTENT_GUILDS:
            await session.dispatch("GUILD_CREATE", self.world.guild_create(session.intents))
        return session

    async def _resume(self, ws: web.WebSocketResponse, z: StreamCompressor | None,
                      d: dict[str, Any]
                      ) -> Session | None:
        session = self.sessions.get(str(d.get("session_id")))
        user = self.world.by_token(str(d.get("token", "")))
        if session is None or user is None or session.user is not user:
            await Session("", self.world.bot, 0, ws=ws, zlib=z).raw(
                {"op": 9, "s": None, "t": None, "d": False})
            return None
        if session.ws is not None and session.ws is not ws:
            await session.ws.close(code=4000, message=b"Resumed elsewhere.")
        session.ws, session.zlib = ws, z
        last = int(d.get("seq") or 0)
        for seq, payload in list(session.sent):
            if seq > last:
                await session.raw(payload)
        await session.dispatch("RESUMED", {})
        return session

    async def _voice_state(self, session: Session, d: dict[str, Any]) -> None:
        """Op 4: join, move or leave; a member without View Channel + Connect gets nothing
        back, as on Discord (the client's connect times out)."""
        w = self.world
        user = session.user
        channel_id = d.get("channel_id")
        if str(d.get("guild_id")) != str(w.guild_id):
            return
        if channel_id is None:
            if w.voice_states.pop(user.id, None) is not None:
                left = {"user_id": str(user.id), "channel_id": None,
                        "session_id": session.session_id, "guild_id": str(w.guild_id),
                        "member": user.member(), "deaf": False, "mute": False,
                        "self_deaf": False, "self_mute": False, "self_video": False,
                        "suppress": False, "request_to_speak_timestamp": None}
                await self._voice_event(session, left)
            await self.voice.leave(user.id)
            return
        channel = w.channel(int(channel_id))
        if channel is None or channel.kind != 2:
            return
        if w.permissions(user.id, channel) & (VIEW_CHANNEL | CONNECT) != VIEW_CHANNEL | CONNECT:
            log.info("user %s lacks Connect on %s: ignored", user.id, channel.id)
            return
        state = VoiceState(user.id, channel.id, session.session_id,
                           self_mute=bool(d.get("self_mute")), self_deaf=bool(d.get("self_deaf")))
        w.voice_states[user.id] = state
        log.info("user %s joins voice channel %s (session %s)", user.id, channel.id,
                 session.session_id)
        await self._voice_event(session, state.json(w.guild_id, user.member()))
        token = self.voice.grant(user.id, session.session_id, w.guild_id, channel.id)
        await session.dispatch("VOICE_SERVER_UPDATE", {
            "token": token, "guild_id": str(w.guild_id), "endpoint": self.voice_endpoint})
        log.info("user %s: VOICE_STATE_UPDATE and VOICE_SERVER_UPDATE sent (seq %d, %s)",
                 user.id, session.seq, "delivered" if session.ws is not None
                 and not session.ws.closed else "buffered for a resume")

    async def move_voice_server(self, user_id: int, endpoint: str | None = None) -> bool:
        """Fault knob: Discord moved `user_id`'s call to another voice server — a new
        VOICE_SERVER_UPDATE (new token, `endpoint` or the same one) to the session that
        joined ("Voice Connections › Voice Server Update": the client must reconnect)."""
        w = self.world
        state = w.voice_states.get(user_id)
        session = self.sessions.get(state.session_id) if state else None
        if state is None or session is None:
            return False
        token = self.voice.grant(user_id, session.session_id, w.guild_id, state.channel_id)
        await session.dispatch("VOICE_SERVER_UPDATE", {
            "token": token, "guild_id": str(w.guild_id),
            "endpoint": endpoint or self.voice_endpoint})
        return True

    async def _voice_event(self, origin: Session, data: dict[str, Any]) -> None:
        for s in list(self.sessions.values()):
            if s is origin or s.intents & INTENT_VOICE_STATES:
                await s.dispatch("VOICE_STATE_UPDATE", data)
