"""Voice gateway v8: the websocket a voice client opens at VOICE_SERVER_UPDATE's endpoint.

Discord developer docs, "Topics › Voice Connections" (v8) and "Topics › Opcodes and Status
Codes › Voice": op 8 HELLO `{heartbeat_interval}` on connect; op 0 IDENTIFY `{server_id,
user_id, session_id, token, max_dave_protocol_version}` → op 2 READY `{ssrc, ip, port,
modes}`; op 1 SELECT PROTOCOL `{protocol: "udp", data: {address, port, mode}}` → op 4
SESSION DESCRIPTION `{mode, secret_key: [32 ints], dave_protocol_version}`; op 3 HEARTBEAT
`{t, seq_ack}` → op 6 `{t}`; op 5 SPEAKING (client `{speaking, delay, ssrc}`, relayed as
`{user_id, ssrc, speaking}`); op 11 CLIENTS CONNECT `{user_ids}`, op 13 CLIENT DISCONNECT
`{user_id}`; op 7 RESUME `{server_id, session_id, token, seq_ack}` → op 9 RESUMED and the
messages after `seq_ack` again. Server messages after READY are numbered (`seq` in JSON;
binary frames `[seq u16][op u8] payload`, client binary frames `[op u8] payload`) — DAVE
whitepaper, "Voice Gateway Opcodes". Close codes: 4004 authentication failed, 4006 session
no longer valid, 4014 disconnected, 4016 unknown encryption mode, 4017 E2EE/DAVE protocol
required.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from voicetrack_local.discord.dave import DaveCall
from voicetrack_local.discord.transport import MODES

log = logging.getLogger(__name__)

HEARTBEAT_MS = 13_750
RESUME_WINDOW_S = 15.0
BUFFER = 500
DAVE_VERSION = 1


@dataclass(eq=False)
class VoiceConnection:
    """One member's voice session: websocket, transport parameters, relay state."""

    user_id: int
    session_id: str
    token: str
    channel_id: int
    ssrc: int
    ws: web.WebSocketResponse | None = None
    dave: bool = False
    mode: str | None = None
    key: bytes | None = None
    addr: tuple[str, int] | None = None
    out_nonce: int = 0
    seq: int = 0
    sent: deque[tuple[int, str | bytes]] = field(default_factory=lambda: deque(maxlen=BUFFER))
    speaking: dict[str, Any] | None = None
    connected: bool = True
    gone: asyncio.TimerHandle | None = None

    async def _send(self, frame: str | bytes) -> None:
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_str(frame)

    async def send_json(self, op: int, d: Any, *, numbered: bool = True) -> None:
        msg: dict[str, Any] = {"op": op, "d": d}
        if numbered:
            self.seq = (self.seq + 1) & 0xFFFF
            msg["seq"] = self.seq
            frame = json.dumps(msg)
            self.sent.append((self.seq, frame))
        else:
            frame = json.dumps(msg)
        await self._send(frame)

    async def send_binary(self, op: int, payload: bytes) -> None:
        self.seq = (self.seq + 1) & 0xFFFF
        frame = struct.pack(">HB", self.seq, op) + payload
        self.sent.append((self.seq, frame))
        await self._send(frame)


@dataclass
class Grant:
    """What VOICE_SERVER_UPDATE handed out: the token for one user's voice session."""

    user_id: int
    session_id: str
    guild_id: int
    channel_id: int


class VoiceServer:
    """Every voice connection, the DAVE call per channel, and the relay's `Router`.

    `udp_port` is the relay's port, announced in READY; `require_dave` closes clients
    without DAVE with 4017 (Discord requires DAVE on every call since March 2026).
    `min_dave_version` (fault knob, default the version served) closes clients whose
    `max_dave_protocol_version` is lower with 4017 too, as Discord does once it requires
    a newer DAVE protocol than a client speaks."""

    def __init__(self, host: str, udp_port: int, *, require_dave: bool = True) -> None:
        self.host = host
        self.udp_port = udp_port
        self.require_dave = require_dave
        self.min_dave_version = DAVE_VERSION
        self.grants: dict[str, Grant] = {}
        self.connections: dict[int, VoiceConnection] = {}
        self.calls: dict[int, DaveCall] = {}
        self._ssrc = 10_000 + int.from_bytes(os.urandom(2), "big")
        self._tasks: set[asyncio.Future[None]] = set()

    # -- the main gateway's side -----------------------------------------------------------

    def grant(self, user_id: int, session_id: str, guild_id: int, channel_id: int) -> str:
        """A voice token for VOICE_SERVER_UPDATE."""
        token = secrets.token_hex(8)
        self.grants = {t: g for t, g in self.grants.items() if g.user_id != user_id}
        self.grants[token] = Grant(user_id, session_id, guild_id, channel_id)
        return token

    async def leave(self, user_id: int) -> None:
        """The user left the voice channel (main gateway op 4 with channel_id null)."""
        self.grants = {t: g for t, g in self.grants.items() if g.user_id != user_id}
        conn = self.connections.get(user_id)
        if conn is not None:
            await self._remove(conn, close_code=4014)

    async def close(self, user_id: int, code: int) -> bool:
        """Fault knob: close `user_id`'s voice websocket with `code` (4006 session no
        longer valid, 4014 disconnected, 4015 voice server crashed — the client should
        resume —, 4017 DAVE required). The session stays resumable as after any close."""
        conn = self.connections.get(user_id)
        if conn is None or conn.ws is None:
            return False
        await conn.ws.close(code=code)
        return True

    # -- relay router ------------------------------------------------------------------------

    def by_ssrc(self, ssrc: int) -> VoiceConnection | None:
        return next((c for c in self.connections.values() if c.ssrc == ssrc), None)

    def peers(self, sender: Any) -> Iterable[VoiceConnection]:
        return [c for c in self.connections.values()
                if c is not sender and c.channel_id == sender.channel_id and c.connected]

    # -- websocket ---------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """One voice websocket, from HELLO to close."""
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 22)
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": 8, "d": {"heartbeat_interval": HEARTBEAT_MS,
                                                     "v": 8}}))
        conn: VoiceConnection | None = None
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    conn = await self._json(ws, conn, data["op"], data.get("d"))
                elif msg.type == WSMsgType.BINARY and conn is not None and len(msg.data) > 0:
                    await self._binary(conn, msg.data[0], bytes(msg.data[1:]))
        finally:
            if conn is not None and conn.ws is ws:
                conn.ws = None
                conn.gone = asyncio.get_running_loop().call_later(
                    RESUME_WINDOW_S, self._expire, conn)
        return ws

    async def _json(self, ws: web.WebSocketResponse, conn: VoiceConnection | None, op: int,
                    d: Any) -> VoiceConnection | None:
        if op == 3:
            await ws.send_str(json.dumps({"op": 6, "d": {"t": (d or {}).get("t")}}))
        elif op == 0:
            return await self._identify(ws, d)
        elif op == 7:
            return await self._resume(ws, d)
        elif conn is None:
            await ws.close(code=4003, message=b"Not authenticated.")
        elif op == 1:
            await self._select(conn, d)
        elif op == 5:
            await self._speaking(conn, d)
        elif op == 23:
            await self._call(conn).transition_ready(conn, int(d["transition_id"]))
        elif op == 31:
            await self._call(conn).invalid(conn, int(d["transition_id"]))
        return conn

    async def _binary(self, conn: VoiceConnection, op: int, payload: bytes) -> None:
        if op == 26:
            await self._call(conn).key_package(conn, payload)
        elif op == 28:
            await self._call(conn).commit_welcome(conn, payload)

    def _call(self, conn: VoiceConnection) -> DaveCall:
        return self.calls.setdefault(conn.channel_id, DaveCall(conn.channel_id))

    async def _identify(self, ws: web.WebSocketResponse, d: dict[str, Any]
                        ) -> VoiceConnection | None:
        grant = self.grants.get(str(d.get("token")))
        if (grant is None or str(grant.user_id) != str(d.get("user_id"))
                or grant.session_id != d.get("session_id")
                or str(grant.guild_id) != str(d.get("server_id"))):
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        offered = int(d.get("max_dave_protocol_version") or 0)
        dave = offered >= DAVE_VERSION
        if self.require_dave and offered < max(DAVE_VERSION, self.min_dave_version):
            await ws.close(code=4017, message=b"E2EE/DAVE protocol required.")
            return None
        old = self.connections.get(grant.user_id)
        if old is not None:
            await self._remove(old)
        self._ssrc += 1
        conn = VoiceConnection(grant.user_id, grant.session_id, str(d["token"]),
                               grant.channel_id, self._ssrc, ws=ws, dave=dave)
        self.connections[grant.user_id] = conn
        await ws.send_str(json.dumps({"op": 2, "d": {
            "ssrc": conn.ssrc, "ip": self.host, "port": self.udp_port, "modes": list(MODES),
            "experiments": [], "heartbeat_interval": HEARTBEAT_MS}}))
        return conn

    async def _select(self, conn: VoiceConnection, d: dict[str, Any]) -> None:
        data = d.get("data") or {}
        mode = data.get("mode")
        if mode not in MODES:
            assert conn.ws is not None
            await conn.ws.close(code=4016, message=b"Unknown encryption mode.")
            return
        conn.mode, conn.key = mode, os.urandom(32)
        if data.get("address") and data.get("port"):
            conn.addr = (str(data["address"]), int(data["port"]))
        await conn.send_json(4, {
            "mode": mode, "secret_key": list(conn.key), "audio_codec": "opus",
            "video_codec": "H264", "media_session_id": secrets.token_hex(16),
            "dave_protocol_version": DAVE_VERSION if conn.dave else 0})
        if conn.dave:
            await self._call(conn).welcome_client(conn)
        others = list(self.peers(conn))
        if others:
            await conn.send_json(11, {"user_ids": [str(o.user_id) for o in others]})
        for other in others:
            await other.send_json(11, {"user_ids": [str(conn.user_id)]})
            if other.speaking is not None:
                await conn.send_json(5, other.speaking)

    async def _speaking(self, conn: VoiceConnection, d: dict[str, Any]) -> None:
        conn.speaking = {"user_id": str(conn.user_id), "ssrc": conn.ssrc,
                         "speaking": int(d.get("speaking") or 0)}
        for other in self.peers(conn):
            await other.send_json(5, conn.speaking)

    async def _resume(self, ws: web.WebSocketResponse, d: dict[str, Any]
                      ) -> VoiceConnection | None:
        conn = next((c for c in self.connections.values()
                     if c.token == d.get("token") and c.session_id == d.get("session_id")), None)
        if conn is None:
            await ws.close(code=4006, message=b"Session no longer valid.")
            return None
        if conn.gone is not None:
            conn.gone.cancel()
            conn.gone = None
        if conn.ws is not None and conn.ws is not ws:
            await conn.ws.close(code=4006)
        conn.ws = ws
        await ws.send_str(json.dumps({"op": 9, "d": None}))
        ack = int(d.get("seq_ack", -1))
        for seq, frame in list(conn.sent):
            if ack < 0 or ((seq - ack) & 0xFFFF < 0x8000 and seq != ack):
                await conn._send(frame)
        return conn

    def _expire(self, conn: VoiceConnection) -> None:
        """No resume within RESUME_WINDOW_S of the websocket closing: the member is gone."""
        task = asyncio.ensure_future(self._remove(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove(self, conn: VoiceConnection, close_code: int | None = None) -> None:
        if self.connections.get(conn.user_id) is not conn:
            return
        del self.connections[conn.user_id]
        conn.connected = False
        if conn.gone is not None:
            conn.gone.cancel()
        if close_code is not None and conn.ws is not None and not conn.ws.closed:
            await conn.ws.close(code=close_code)
        for other in self.peers(conn):
            await other.send_json(13, {"user_id": str(conn.user_id)})
        if conn.dave:
            await self._call(conn).left(conn)
