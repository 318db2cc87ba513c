"""A fake Discord voice server with real cryptography, for the `discord` source's tests.

The rig plays what Discord's servers do; everything else is real:

- It is the MLS external sender of the call's DAVE group (the local Discord's
  `voicetrack_local.discord.mls.ExternalSender`): a P-256 ECDSA key whose op-25
  package is `ExternalSender { opaque signature_key<V>; Credential credential; }` (RFC 9420
  §12.1.8.1, basic credential, type 1). Adds and removes are external proposals: MLS
  `PublicMessage`s (RFC 9420 §6.2) with group id = channel id (8 bytes big-endian), the
  group's epoch, sender `external` index 0, signed with `SignWithLabel(...,
  "FramedContentTBS", ...)` (§5.1.2; ECDSA P-256/SHA-256, DER) — delivered as op 27,
  `[optype u8] + opaque proposal_messages<V>` (DAVE whitepaper, opcode 27).
- Every participant (the recorder bot and each fake speaker) is a real
  `davey.DaveSession`. One commit wins: every member processes it (op 29), joiners process
  the welcome (op 30). The bot's session is driven exactly as discord.py 2.7.1's
  `DiscordVoiceWebSocket.received_binary_message` drives it.
- Speakers encode real audio with libopus (discord.py's bindings), DAVE-encrypt it with
  `encrypt_opus`, wrap it in RTP (with a one-byte-header extension, as Discord clients send)
  and transport-encrypt it with the real AEAD construction of the session's mode, built
  here independently of the code under test (the AAD/nonce layout of discord.py's
  `_encrypt_aead_xchacha20_poly1305_rtpsize`).
- Voice gateway JSON events (op 5 SPEAKING, op 11 CLIENTS_CONNECT, op 13 CLIENT_DISCONNECT)
  are handed to the hook in the documented formats.

Time is virtual (`VirtualTime`), so a minute of speech takes well under a second.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import davey
import nacl.bindings
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from discord import opus

from voicetrack.audio import CHANNELS, FRAME_SAMPLES, OPUS_SILENCE_FRAME, SAMPLE_RATE
from voicetrack_local.discord.mls import ExternalSender, proposals_payload
from voicetrack_recorder.opusenc import code_as_mono

DAVE_VERSION = 1
def transport_encrypt(mode: str, key: bytes, header: bytes, plaintext: bytes,
                      nonce: int) -> bytes:
    """`header | AEAD(plaintext, aad=header) | nonce (4 bytes BE)` for Discord's rtpsize
    modes; `header` includes the 4-byte extension header, `plaintext` starts with the
    extension body."""
    suffix = struct.pack(">I", nonce & 0xFFFF_FFFF)
    if mode == "aead_aes256_gcm_rtpsize":
        sealed = AESGCM(key).encrypt(suffix + bytes(8), plaintext, header)
    elif mode == "aead_xchacha20_poly1305_rtpsize":
        sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, header, suffix + bytes(20), key)
    else:
        raise ValueError(mode)
    return header + sealed + suffix


def tone_pcm(frames: int, freq: float, *, start_frame: int = 0, amp: float = 0.3) -> bytes:
    """`frames` 20 ms frames of a stereo s16le sine at `freq` Hz (phase-continuous)."""
    import numpy as np
    n0 = start_frame * FRAME_SAMPLES
    t = (np.arange(n0, n0 + frames * FRAME_SAMPLES) / SAMPLE_RATE)
    mono = (amp * 32767 * np.sin(2 * math.pi * freq * t)).astype("<i2")
    return np.repeat(mono, CHANNELS).tobytes()


def encode_frames(pcm: bytes, *, application: str = "audio", bitrate: int = 64,
                  fec: bool = False, mono: bool = False) -> list[bytes]:
    """Real libopus packets, one per 20 ms frame of stereo s16le `pcm` (mono-coded with
    `mono`, as a client codes its microphone)."""
    enc = opus.Encoder(application=application, bitrate=bitrate,  # type: ignore[arg-type]
                       fec=fec, expected_packet_loss=0.2 if fec else 0.15)
    if mono:
        code_as_mono(enc)
    step = FRAME_SAMPLES * CHANNELS * 2
    return [enc.encode(pcm[i:i + step], FRAME_SAMPLES) for i in range(0, len(pcm), step)]


def decode_frames(packets: list[bytes]) -> bytes:
    """Decode packets in order with one fresh libopus decoder (stereo s16le)."""
    dec = opus.Decoder()
    return b"".join(dec.decode(p, fec=False) for p in packets)


@dataclass
class Speaker:
    """A fake Discord client in the call: its DAVE member, SSRC and RTP state."""

    user_id: int
    session: davey.DaveSession
    ssrc: int
    sequence: int = 0
    timestamp: int = 0
    nonce: int = 0

    def frame(self, opus_packet: bytes) -> bytes:
        """The DAVE-encrypted frame for one Opus packet (silence passes in the clear)."""
        if opus_packet == OPUS_SILENCE_FRAME:
            return opus_packet
        return self.session.encrypt_opus(opus_packet)


class DirectBot:
    """The recorder bot's DAVE member driven with davey calls (benchmarks): the same calls
    discord.py 2.7.1's `received_binary_message` makes for ops 25, 27, 29 and 30."""

    def __init__(self, user_id: int, channel_id: int) -> None:
        self.session: davey.DaveSession = davey.DaveSession(DAVE_VERSION, user_id, channel_id)
        self.events: Callable[[dict[str, Any]], Any] = lambda msg: None

    async def start(self, mode: str, secret_key: bytes) -> bytes:
        return self.session.get_serialized_key_package()

    async def external_sender(self, package: bytes) -> None:
        self.session.set_external_sender(package)

    async def proposals(self, payload: bytes) -> None:
        self.session.process_proposals(davey.ProposalsOperationType.append, payload[1:])

    async def commit(self, transition_id: int, commit: bytes) -> None:
        self.session.process_commit(commit)

    async def welcome(self, transition_id: int, welcome: bytes) -> None:
        self.session.process_welcome(welcome)

    async def event(self, msg: dict[str, Any]) -> None:
        result = self.events(msg)
        if hasattr(result, "__await__"):
            await result


class ServerSocket:
    """The voice server's end of the websocket, as discord.py's `DiscordVoiceWebSocket`
    sees it (`send_str`/`send_bytes`/`close`): it records what the client sends."""

    def __init__(self) -> None:
        self.json: list[dict[str, Any]] = []
        self.binary: list[tuple[int, bytes]] = []

    async def send_str(self, data: str) -> None:
        import json
        self.json.append(json.loads(data))

    async def send_bytes(self, data: bytes) -> None:
        self.binary.append((data[0], bytes(data[1:])))

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        return True


class GatewayBot:
    """The recorder bot as production runs it: discord.py 2.7.1's `DiscordVoiceWebSocket`
    and `VoiceConnectionState` of a `RecorderVoiceClient` (whose websocket hook feeds the
    source), receiving the voice server's frames: op 4 SESSION_DESCRIPTION (discord.py sets
    `mode`, `secret_key`, creates its davey session and sends op 26), binary ops 25/27/29/30
    (`[seq u16][op u8] payload`), JSON ops 5/11/13/22. Only the server is fake."""

    def __init__(self, user_id: int, channel_id: int, receiver: Any = None) -> None:
        import asyncio

        import discord
        from discord.gateway import DiscordVoiceWebSocket
        from discord.state import ClientUser

        from voicetrack_recorder.discord.voiceclient import RecorderVoiceClient

        self.client = discord.Client(intents=discord.Intents(guilds=True, voice_states=True))
        self.client._connection.user = ClientUser(  # the READY event's user object
            state=self.client._connection,
            data={"id": str(user_id), "username": "voicetrack", "discriminator": "0",
                  "avatar": None, "bot": True})  # type: ignore[typeddict-item]
        self.voice = RecorderVoiceClient(self.client, discord.Object(channel_id), receiver)
        self.state = self.voice._connection
        self.server = ServerSocket()
        self.ws = DiscordVoiceWebSocket(self.server, asyncio.get_running_loop(),  # type: ignore[arg-type]
                                        hook=self.state.hook)
        self.ws._connection = self.state
        self.state.ws = self.ws
        self._seq = 0

    @property
    def session(self) -> davey.DaveSession:
        session = self.state.dave_session
        assert session is not None, "discord.py has no DAVE session yet"
        return session

    async def start(self, mode: str, secret_key: bytes) -> bytes:
        """Op 4; returns the key package discord.py sent as op 26. (Op 2 READY's SSRC is
        set directly: its handler would run UDP IP discovery against the server.)"""
        self.state.ssrc = 1
        await self.ws.received_message({"op": 4, "d": {
            "mode": mode, "secret_key": list(secret_key), "dave_protocol_version": DAVE_VERSION}})
        op, package = self.server.binary[-1]
        assert op == 26
        return package

    async def _binary(self, op: int, payload: bytes) -> None:
        self._seq += 1
        await self.ws.received_binary_message(struct.pack(">HB", self._seq, op) + payload)

    async def external_sender(self, package: bytes) -> None:
        await self._binary(25, package)

    async def proposals(self, payload: bytes) -> None:
        await self._binary(27, payload)

    async def commit(self, transition_id: int, commit: bytes) -> None:
        await self._binary(29, struct.pack(">H", transition_id) + commit)
        await self._execute(transition_id)

    async def welcome(self, transition_id: int, welcome: bytes) -> None:
        await self._binary(30, struct.pack(">H", transition_id) + welcome)
        await self._execute(transition_id)

    async def _execute(self, transition_id: int) -> None:
        invalid = [m for m in self.server.json if m.get("op") == 31]
        assert not invalid, f"discord.py refused a commit/welcome: {invalid}"
        if transition_id:
            await self.event({"op": 22, "d": {"transition_id": transition_id}})

    async def event(self, msg: dict[str, Any]) -> None:
        await self.ws.received_message(msg)


class VoiceServerRig:
    """One call: the external sender, the recorder bot's endpoint, the fake speakers.

    `bot` is a `GatewayBot` (discord.py's real handlers) or a `DirectBot`; gateway JSON
    events (op 5, 11, 13) go to `bot.event`. `mode`/`secret_key` are what op 4
    SESSION_DESCRIPTION carries. Call `await start()` first.
    """

    def __init__(self, bot: GatewayBot | DirectBot, channel_id: int, *,
                 mode: str = "aead_xchacha20_poly1305_rtpsize") -> None:
        self.channel_id = channel_id
        self.sender = ExternalSender(channel_id)
        self.mode = mode
        self.secret_key = os.urandom(32)
        self.bot_endpoint = bot
        self.speakers: dict[int, Speaker] = {}
        self._next_ssrc = 1000
        self._bot_package = b""
        self.commits = 0
        self.transitions = 0
        self.bot_lags = False
        """When set, the bot processes commits only at `bot_catch_up()`: speakers already
        encrypt with the new epoch's keys while the bot still has the old ones."""
        self._bot_pending: list[Coroutine[Any, Any, None]] = []

    @property
    def bot(self) -> davey.DaveSession:
        """The bot's davey session (discord.py's `dave_session` for a GatewayBot)."""
        return self.bot_endpoint.session

    async def start(self) -> None:
        """Op 4 then op 25: the bot is ready to be welcomed into the group."""
        self._bot_package = await self.bot_endpoint.start(self.mode, self.secret_key)
        await self.bot_endpoint.external_sender(self.sender.package)

    # -- membership ------------------------------------------------------------------

    async def _commit(self, proposals: list[bytes], joiners: list[Speaker],
                      bot_joins: bool) -> None:
        """Op 27 to every member; the first speaker's commit wins; members get it as op 29
        and joiners (the bot too, the first time) the welcome as op 30."""
        payload = proposals_payload(proposals)
        members = [s for s in self.speakers.values() if s not in joiners]
        if not members:  # the call's first speaker creates the group
            members, joiners = joiners[:1], joiners[1:]
        results = [m.session.process_proposals(davey.ProposalsOperationType.append,
                                               payload[1:]) for m in members]
        if not bot_joins:
            await self.bot_endpoint.proposals(payload)
        winner = next(r for r in results if r is not None)
        self.transitions += 1
        for member in members:
            member.session.process_commit(winner.commit)
        if not bot_joins:
            commit = self.bot_endpoint.commit(self.transitions, winner.commit)
            if self.bot_lags:  # the bot's op 29 is still on its way: `await bot_catch_up()`
                self._bot_pending.append(commit)
            else:
                await commit
        assert winner.welcome is not None or not (joiners or bot_joins)
        for joiner in joiners:
            joiner.session.process_welcome(winner.welcome)  # type: ignore[arg-type]
        if bot_joins:
            await self.bot_endpoint.welcome(self.transitions, winner.welcome)  # type: ignore[arg-type]
        self.commits += 1

    async def bot_catch_up(self) -> None:
        """Deliver the commits held back by `bot_lags`."""
        pending, self._bot_pending = self._bot_pending, []
        for commit in pending:
            await commit

    async def join(self, *user_ids: int, announce: bool = True) -> list[Speaker]:
        """Speakers join the call (one commit adds them all; the first ones also bring the
        bot in); `announce` sends op 11 and each one's op 5 SPEAKING with its SSRC."""
        new = []
        for user_id in user_ids:
            session = davey.DaveSession(DAVE_VERSION, user_id, self.channel_id)
            session.set_external_sender(self.sender.package)
            speaker = Speaker(user_id, session, self._next_ssrc,
                              sequence=int.from_bytes(os.urandom(2), "big"),
                              timestamp=int.from_bytes(os.urandom(4), "big"))
            self._next_ssrc += 7
            new.append(speaker)
        creating = not self.speakers
        epoch = 0 if creating else (self.bot.epoch or 0)
        packages = [s.session.get_serialized_key_package() for s in new[1 if creating else 0:]]
        if creating:
            packages.append(self._bot_package)
        proposals = [self.sender.add(p, epoch) for p in packages]
        for s in new:
            self.speakers[s.user_id] = s
        await self._commit(proposals, new, bot_joins=creating)
        if announce:
            await self.bot_endpoint.event(
                {"op": 11, "d": {"user_ids": [str(s.user_id) for s in new]}})
            for s in new:
                await self.speaking(s)
        return new

    async def speaking(self, speaker: Speaker, flags: int = 1) -> None:
        """Op 5 SPEAKING for `speaker` (flags: 1 = microphone)."""
        await self.bot_endpoint.event({"op": 5, "d": {
            "user_id": str(speaker.user_id), "ssrc": speaker.ssrc, "speaking": flags}})

    async def leave(self, user_id: int) -> None:
        """A speaker leaves: op 13, then an external Remove commits its removal."""
        speaker = self.speakers.pop(user_id)
        await self.bot_endpoint.event({"op": 13, "d": {"user_id": str(user_id)}})
        leaf = speaker.session.own_leaf_index
        assert leaf is not None and self.bot.epoch is not None
        await self._commit([self.sender.remove(leaf, self.bot.epoch)], [], bot_joins=False)

    async def reconnect_bot(self) -> None:
        """The bot's voice connection is re-established: a new op 4 (new transport key;
        discord.py re-initialises its DAVE session and sends a new key package), op 25,
        and one commit that removes the bot's old leaf and adds its new key package."""
        old_leaf = self.bot.own_leaf_index
        epoch = self.bot.epoch
        assert old_leaf is not None and epoch is not None
        self.secret_key = os.urandom(32)
        self._bot_package = await self.bot_endpoint.start(self.mode, self.secret_key)
        await self.bot_endpoint.external_sender(self.sender.package)
        await self._commit([self.sender.remove(old_leaf, epoch),
                            self.sender.add(self._bot_package, epoch)], [], bot_joins=True)

    # -- media -------------------------------------------------------------------------

    def packet(self, speaker: Speaker, opus_packet: bytes, *, frames: int = 1,
               dave_frame: bytes | None = None, extension: bytes = b"\x10\xab\x00\x00",
               key: bytes | None = None) -> bytes:
        """One UDP datagram from `speaker` carrying `opus_packet`; its RTP sequence and
        timestamp then advance by one packet and `frames` x 960 ticks. `dave_frame`
        replaces the DAVE-encrypted frame (forgeries); `key` the transport key."""
        words = len(extension) // 4
        header = struct.pack(">BBHII", 0x90 if words else 0x80, 0x78, speaker.sequence,
                             speaker.timestamp, speaker.ssrc)
        if words:
            header += struct.pack(">HH", 0xBEDE, words)
        body = extension + (dave_frame if dave_frame is not None else speaker.frame(opus_packet))
        datagram = transport_encrypt(self.mode, key or self.secret_key, header, body,
                                     speaker.nonce)
        speaker.nonce += 1
        speaker.sequence = (speaker.sequence + 1) & 0xFFFF
        speaker.timestamp = (speaker.timestamp + frames * FRAME_SAMPLES) & 0xFFFF_FFFF
        return datagram


@dataclass
class VirtualTime:
    """A settable clock for `SessionClock(time_fn=...)`: Unix seconds."""

    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class CaptureSink:
    """A FrameSink that keeps every frame: `frames[user_id][slot] = packet`, and its
    phase (samples) in `phases[user_id][slot]`."""

    def __init__(self) -> None:
        self.frames: dict[str, dict[int, bytes]] = {}
        self.phases: dict[str, dict[int, int]] = {}

    def push(self, user_id: str, slot: int, packet: bytes, phase: int = 0) -> bool:
        track = self.frames.setdefault(user_id, {})
        if slot in track:
            return False
        track[slot] = packet
        self.phases.setdefault(user_id, {})[slot] = phase
        return True


class Harness:
    """The rig wired to the production receive path: a `GatewayBot` (discord.py's voice
    websocket and connection state of a `RecorderVoiceClient`), a `ConnectionReceiver`
    attached to that state with `add_socket_listener` and installed as the client's
    receiver (so discord.py's websocket hook feeds it), and the speakers' datagrams handed
    to the listener. Open it with `await Harness.open(...)`. Times are session ms."""

    BOT = 900_000_000_000_000_001
    CHANNEL = 1_111_111_111_111_111_111

    def __init__(self, sink: Any = None, *, mode: str = "aead_xchacha20_poly1305_rtpsize",
                 **options: Any) -> None:
        import asyncio

        from voicetrack_recorder.clock import SessionClock
        from voicetrack_recorder.discord.voiceclient import make_receiver

        self.time = VirtualTime()
        self.t0_ms = int(self.time.now * 1000)
        self.clock = SessionClock(self.t0_ms, time_fn=self.time)
        self.sink = sink if sink is not None else CaptureSink()
        self.conn = make_receiver(self.clock, self.sink, asyncio.get_running_loop(), **options)
        self.gateway = GatewayBot(self.BOT, self.CHANNEL, receiver=self.conn)
        self.rig = VoiceServerRig(self.gateway, self.CHANNEL, mode=mode)
        self.state = self.gateway.state
        self.state._create_socket()
        self.conn.attach(self.state)
        self.receiver = self.conn.receiver
        self.now_ms = 0.0

    @classmethod
    async def open(cls, sink: Any = None, **kwargs: Any) -> Harness:
        """A harness whose bot has had op 4 and op 25 (ready to be welcomed)."""
        harness = cls(sink, **kwargs)
        await harness.rig.start()
        return harness

    async def settle(self) -> None:
        """Let scheduled callbacks (datagrams, hook events) run."""
        import asyncio
        for _ in range(3):
            await asyncio.sleep(0)

    async def at(self, ms: float) -> None:
        """Advance virtual time to session `ms`, ticking the receiver every 20 ms."""
        await self.settle()
        while self.now_ms + 20 <= ms:
            self.now_ms += 20
            self.time.now = (self.t0_ms + self.now_ms) / 1000
            self.receiver.tick()
        self.now_ms = ms
        self.time.now = (self.t0_ms + ms) / 1000

    async def deliver(self, datagram: bytes, at_ms: float | None = None) -> None:
        """The datagram comes off the socket at session `at_ms` (default now)."""
        if at_ms is not None:
            await self.at(at_ms)
        self.conn.socket_listener(datagram)
        await self.settle()

    async def play(self, schedule: Sequence[tuple[float, bytes]]) -> None:
        """Deliver `(session ms, datagram)` pairs in time order (stable for equal times)."""
        for at_ms, datagram in sorted(schedule, key=lambda item: item[0]):
            await self.deliver(datagram, at_ms)

    async def finish(self, after_ms: float = 500) -> None:
        """Run the clock on past the last delivery so every buffer drains, then flush."""
        await self.at(self.now_ms + after_ms)
        self.receiver.flush()
        self.conn.detach()
        self.state._socket_reader.stop()
        self.state.socket.close()
