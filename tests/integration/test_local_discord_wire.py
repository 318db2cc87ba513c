"""The local Discord's protocol surface, byte for byte, with plain aiohttp/UDP clients.

What each test sends is what Discord's docs say a client sends; the assertions are the
documented answers: REST bodies, status codes and rate-limit headers; gateway HELLO /
heartbeat ACK / READY / GUILD_CREATE over a zlib-stream; RESUME replaying missed
dispatches; close codes 4004 (gateway and voice) and 4017 (voice without DAVE); the 74-byte
IP discovery answer; and a member without Connect never getting VOICE_SERVER_UPDATE.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zstandard

from voicetrack_local.discord.server import LocalDiscord, Settings
from voicetrack_local.discord.world import CONNECT, Overwrite

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
async def wire(tmp_path: Path) -> AsyncIterator[tuple[LocalDiscord, dict[str, Any],
                                                      aiohttp.ClientSession]]:
    server = LocalDiscord(tmp_path / "discord", Settings(users=["alice"]))
    info = await server.start()
    ctx = ssl.create_default_context(cafile=info["ca_bundle"])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
        yield server, info, http
    await server.stop()


class Gateway:
    """A raw gateway v10 client with zlib-stream transport compression."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.inflate = zlib.decompressobj()
        self.buffer = b""

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str) -> Gateway:
        return cls(await http.ws_connect(url + "?v=10&encoding=json&compress=zlib-stream"))

    async def recv(self) -> dict[str, Any]:
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), 10)
            assert msg.type == aiohttp.WSMsgType.BINARY, msg
            self.buffer += msg.data
            if self.buffer.endswith(b"\x00\x00\xff\xff"):
                text, self.buffer = self.inflate.decompress(self.buffer), b""
                return json.loads(text)

    async def until(self, event: str) -> dict[str, Any]:
        while True:
            msg = await self.recv()
            if msg.get("t") == event:
                return msg

    async def send(self, op: int, d: Any) -> None:
        await self.ws.send_str(json.dumps({"op": op, "d": d}))


async def test_rest_subset(wire: Any) -> None:
    server, info, http = wire
    api, bot = info["api_base"], {"Authorization": f"Bot {info['bot_token']}"}
    async with http.get(api + "/users/@me", headers={"Authorization": "Bot nope"}) as r:
        assert r.status == 401 and (await r.json())["code"] == 0
    async with http.get(api + "/users/@me", headers=bot) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/json"
        assert (await r.json())["id"] == info["application_id"]
        assert int(r.headers["X-RateLimit-Remaining"]) < int(r.headers["X-RateLimit-Limit"])
        assert float(r.headers["X-RateLimit-Reset-After"]) > 0 and r.headers["X-RateLimit-Bucket"]
    async with http.get(api + "/gateway/bot", headers=bot) as r:
        assert (await r.json())["url"] == info["gateway_url"]
    server.world.voice.overwrites.append(Overwrite(int(info["guild_id"]), 0, deny=CONNECT))
    async with http.get(api + f"/channels/{info['voice_channel_id']}", headers=bot) as r:
        channel = await r.json()
        assert channel["type"] == 2 and channel["guild_id"] == info["guild_id"]
        assert channel["permission_overwrites"] == [
            {"id": info["guild_id"], "type": 0, "allow": "0", "deny": str(CONNECT)}]
    async with http.get(api + f"/guilds/{info['guild_id']}/channels", headers=bot) as r:
        assert {c["id"] for c in await r.json()} == {info["voice_channel_id"],
                                                    info["text_channel_id"]}
    member_url = api + f"/guilds/{info['guild_id']}/members"
    async with http.get(member_url + f"/{info['users'][0]['id']}", headers=bot) as r:
        assert (await r.json())["user"]["username"] == "alice"
    async with http.patch(member_url + "/@me", headers=bot, json={"nick": "vt [REC]"}) as r:
        assert (await r.json())["nick"] == "vt [REC]"
    async with http.post(api + f"/channels/{info['text_channel_id']}/messages", headers=bot,
                         json={"content": "recording"}) as r:
        assert (await r.json())["content"] == "recording"
    app = info["application_id"]
    commands = [{"name": "record", "description": "Record", "options": []}]
    async with http.put(api + f"/applications/{app}/commands", headers=bot, json=commands) as r:
        synced = await r.json()
        assert [c["name"] for c in synced] == ["record"] and synced[0]["id"]
    async with http.post(api + "/interactions/123/tok/callback",
                         json={"type": 5, "data": {"flags": 64}}) as r:
        assert r.status == 204
    async with http.post(api + f"/webhooks/{app}/tok", json={"content": "started"}) as r:
        followup = await r.json()
    async with http.patch(api + f"/webhooks/{app}/tok/messages/{followup['id']}",
                          json={"content": "stopped"}) as r:
        assert (await r.json())["content"] == "stopped"
    assert server.world.interaction_responses[0]["type"] == 5
    assert [m["content"] for m in server.world.messages] == ["recording", "stopped"]


async def test_gateway_identify_heartbeat_resume(wire: Any) -> None:
    server, info, http = wire
    gw = await Gateway.open(http, info["gateway_url"])
    hello = await gw.recv()
    assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] > 0
    await gw.send(1, None)
    assert (await gw.recv())["op"] == 11
    await gw.send(2, {"token": info["bot_token"], "intents": (1 << 0) | (1 << 7),
                      "properties": {"os": "linux", "browser": "t", "device": "t"}})
    ready = await gw.until("READY")
    assert ready["s"] == 1 and ready["d"]["user"]["id"] == info["application_id"]
    guild = (await gw.until("GUILD_CREATE"))["d"]
    assert guild["id"] == info["guild_id"] and guild["voice_states"] == []
    assert {c["type"] for c in guild["channels"]} == {0, 2}
    await gw.ws.close()

    # A dispatch while disconnected, then RESUME: it is replayed, then RESUMED.
    await server.gateway.dispatch("MESSAGE_CREATE", {"content": "missed"}, 1 << 0)
    gw = await Gateway.open(http, ready["d"]["resume_gateway_url"])
    await gw.recv()
    await gw.send(6, {"token": info["bot_token"], "session_id": ready["d"]["session_id"],
                      "seq": 2})
    missed = await gw.recv()
    assert missed["t"] == "MESSAGE_CREATE" and missed["s"] == 3
    assert (await gw.recv())["t"] == "RESUMED"
    await gw.ws.close()

    gw = await Gateway.open(http, info["gateway_url"])
    await gw.recv()
    await gw.send(2, {"token": "bad", "intents": 1, "properties": {}})
    msg = await gw.ws.receive()
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4004


async def _voice_server_update(http: aiohttp.ClientSession, info: dict[str, Any]
                               ) -> tuple[Gateway, dict[str, Any], str]:
    gw = await Gateway.open(http, info["gateway_url"])
    await gw.recv()
    await gw.send(2, {"token": info["bot_token"], "intents": 1 | 1 << 7, "properties": {}})
    session_id = (await gw.until("READY"))["d"]["session_id"]
    await gw.send(4, {"guild_id": info["guild_id"], "channel_id": info["voice_channel_id"],
                      "self_mute": True, "self_deaf": False})
    state = (await gw.until("VOICE_STATE_UPDATE"))["d"]
    assert state["channel_id"] == info["voice_channel_id"] and state["session_id"] == session_id
    return gw, (await gw.until("VOICE_SERVER_UPDATE"))["d"], session_id


async def test_voice_identify_requires_dave_and_ip_discovery(wire: Any) -> None:
    _, info, http = wire
    _, update, session_id = await _voice_server_update(http, info)
    url = f"wss://{update['endpoint']}/?v=8"
    identify = {"server_id": info["guild_id"], "user_id": info["application_id"],
                "session_id": session_id, "token": update["token"]}
    async with http.ws_connect(url) as ws:  # no max_dave_protocol_version: 4017
        assert (await ws.receive_json())["op"] == 8
        await ws.send_json({"op": 0, "d": identify})
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4017
    async with http.ws_connect(url) as ws:  # a wrong token: 4004
        await ws.receive_json()
        await ws.send_json({"op": 0, "d": {**identify, "token": "0",
                                           "max_dave_protocol_version": 1}})
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4004
    async with http.ws_connect(url) as ws:
        await ws.receive_json()
        await ws.send_json({"op": 0, "d": {**identify, "max_dave_protocol_version": 1}})
        ready = await ws.receive_json()
        assert ready["op"] == 2 and set(ready["d"]["modes"]) >= {
            "aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"}
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(5)
        try:
            request = struct.pack(">HHI", 1, 70, ready["d"]["ssrc"]) + bytes(66)
            udp.sendto(request, (ready["d"]["ip"], ready["d"]["port"]))
            answer = await asyncio.to_thread(udp.recv, 100)
            local_port = udp.getsockname()[1]
        finally:
            udp.close()
        assert len(answer) == 74 and answer[:8] == struct.pack(">HHI", 2, 70,
                                                                ready["d"]["ssrc"])
        assert answer[8:answer.index(0, 8)] == b"127.0.0.1"
        assert struct.unpack(">H", answer[-2:])[0] == local_port
        await ws.send_json({"op": 1, "d": {"protocol": "udp", "data": {
            "address": "127.0.0.1", "port": local_port, "mode": "aead_aes256_gcm_rtpsize"}}})
        description = await ws.receive_json()
        assert description["op"] == 4 and description["d"]["dave_protocol_version"] == 1
        assert len(description["d"]["secret_key"]) == 32 and description["seq"] == 1
        external_sender = await ws.receive_bytes()
        assert external_sender[:3] == struct.pack(">HB", 2, 25)
        assert external_sender[3:6] == b"\x40\x41\x04"  # <V> length 65, a P-256 point
        await ws.send_json({"op": 3, "d": {"t": 1234, "seq_ack": 2}})
        assert await ws.receive_json() == {"op": 6, "d": {"t": 1234}}
    # Buffered resume: a new websocket, op 7 with seq_ack 1 → op 9, then op 25 (seq 2) again.
    async with http.ws_connect(url) as ws:
        await ws.receive_json()
        await ws.send_json({"op": 7, "d": {"server_id": info["guild_id"], "seq_ack": 1,
                                           "session_id": session_id,
                                           "token": update["token"]}})
        assert (await ws.receive_json())["op"] == 9
        assert await ws.receive_bytes() == external_sender
        await ws.send_json({"op": 7, "d": {"server_id": info["guild_id"], "seq_ack": 1,
                                           "session_id": "other", "token": update["token"]}})
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4006


async def test_member_without_connect_gets_no_voice_server(wire: Any) -> None:
    server, info, http = wire
    server.world.voice.overwrites.append(Overwrite(int(info["application_id"]), 1,
                                                   deny=CONNECT))
    gw = await Gateway.open(http, info["gateway_url"])
    await gw.recv()
    await gw.send(2, {"token": info["bot_token"], "intents": 1 | 1 << 7, "properties": {}})
    await gw.until("GUILD_CREATE")
    await gw.send(4, {"guild_id": info["guild_id"], "channel_id": info["voice_channel_id"],
                      "self_mute": True, "self_deaf": False})
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(gw.until("VOICE_SERVER_UPDATE"), 1.0)
    assert server.voice is not None and not server.voice.grants


async def test_gateway_zstd_stream_and_unknown_compression(wire: Any) -> None:
    """`compress=zstd-stream` (what discord.py asks for when `zstandard` is installed):
    every message is one binary frame that a single streaming zstd decompressor decodes
    completely on arrival; an unknown compression is closed with 4000."""
    _server, info, http = wire
    ws = await http.ws_connect(info["gateway_url"] + "?v=10&encoding=json&compress=zstd-stream")
    unzstd = zstandard.ZstdDecompressor().decompressobj()

    async def recv() -> dict[str, Any]:
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        return json.loads(unzstd.decompress(msg.data))

    assert (await recv())["op"] == 10
    await ws.send_str(json.dumps({"op": 2, "d": {"token": info["bot_token"], "intents": 1,
                                                 "properties": {}}}))
    ready = await recv()
    assert ready["t"] == "READY" and ready["d"]["user"]["id"] == info["application_id"]
    guild = await recv()
    assert guild["t"] == "GUILD_CREATE" and guild["d"]["id"] == info["guild_id"]
    await ws.close()

    ws = await http.ws_connect(info["gateway_url"] + "?v=10&encoding=json&compress=brotli")
    msg = await asyncio.wait_for(ws.receive(), 10)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4000
