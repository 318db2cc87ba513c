"""A voice connection state that recovers in seconds, on discord.py 2.7.1.

Two faults of discord.py 2.7.1 each cost a recorder about 30 s of audio; both are
fixed here by subclassing, leaving the rest of discord.py's connection flow as it is.

**The UDP reader waits on a dead socket.** discord.py's `SocketReader` thread blocks in
`select([state.socket], …, 30)`. A reconnect closes that socket and makes a new one, but
closing a socket does not wake a `select` on it in another thread (Linux), so the reader
sees the new socket only when its 30 s timeout expires: IP discovery (which waits for the
reader) stalls, and every audio packet until then is lost. `PromptSocketReader` waits at
most READER_POLL_S before looking at `state.socket` again.

**Close 4015 is never resumed.**

Discord closes a voice websocket with 4015 when the voice server crashed; the client is
to open a new websocket and send op 7 RESUME `{server_id, session_id, token, seq_ack}`,
answered by op 9 RESUMED, after which the server replays the messages after `seq_ack`
(Discord developer docs, "Voice Connections: Resuming Voice Connection" and "Voice Close
Event Codes"). The UDP flow, SSRC, transport key and DAVE group all carry over.

discord.py 2.7.1 handles 4015 with `_connect(resume=True)`, which first re-sends op 4 on
the main gateway and waits for both voice updates. The state is still `connected`, which
those updates never move, so the wait times out after the connect timeout (30 s), and its
handshake would then wait for a session description that a resumed session never sends;
the client disconnects. For a recorder that is 30 s of lost audio plus the rejoin.

`ResumingConnectionState` resumes directly; when the server refuses (4006 "session no
longer valid", after its resume window) or does not answer within RESUME_TIMEOUT_S, it
falls back to discord.py's own fresh connect (leave, then join again).

**Refusals that no retry can cure are retried forever.** discord.py retries a handshake
that the voice server closed whatever the code. 4004 (authentication failed), 4016
(unknown encryption mode) and 4017 (the E2EE/DAVE protocol version we speak is not
accepted) will close every retry the same way; the state records a `VoiceRefused`
instead, which ends the connection attempt and which the source raises, so the session
fails with the reason (Discord docs, "Voice Close Event Codes").
"""

from __future__ import annotations

import asyncio
import logging
import select
from typing import TYPE_CHECKING, Any

import aiohttp
from discord.errors import ConnectionClosed
from discord.gateway import DiscordVoiceWebSocket
from discord.utils import MISSING
from discord.voice_state import ConnectionFlowState, SocketReader, VoiceConnectionState

from voicetrack.errors import InvalidInputError

if TYPE_CHECKING:  # discord.py defines the alias for type checkers only
    from discord.voice_state import WebsocketHook

log = logging.getLogger(__name__)

RESUME_TIMEOUT_S = 5.0
"""How long (s) a resume may take, from opening the websocket to op 9 RESUMED."""
OP_RESUMED = 9
"""Voice gateway op 9 RESUMED (Discord docs, "Voice Opcodes")."""

REFUSAL_CODES = {
    4004: "authentication failed",
    4016: "unknown encryption mode",
    4017: "E2EE/DAVE protocol required: the voice server does not accept the DAVE "
          "protocol version this recorder speaks",
}
"""Voice close codes that every retry would meet again (Discord docs, "Voice Close Event
Codes"), with what they mean."""


class VoiceRefused(InvalidInputError):
    """The voice server refused us for good (a code of REFUSAL_CODES); `code` is it."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"discord: the voice server closed the connection with {code} "
                         f"({REFUSAL_CODES[code]}){': ' + reason if reason else ''}")
        self.code = code


READER_POLL_S = 0.25
"""Longest wait (s) of the UDP reader before it re-reads which socket is current."""
UDP_READ_BYTES = 2048
"""Receive buffer per datagram (bytes); an RTP packet of 20 ms Opus is < 1,500."""

class PromptSocketReader(SocketReader):
    """discord.py's UDP reader thread, with a bounded wait: each `select` lasts at most
    READER_POLL_S, so a socket replaced by a reconnect is read within that time rather than
    after 30 s. Callbacks, pause/resume and stop are discord.py's (`SocketReader`)."""

    def _do_run(self) -> None:
        while not self._end.is_set():
            if not self._running.is_set():
                self._running.wait()
                continue
            sock = self.state.socket
            try:
                readable, _, _ = select.select([sock], [], [], READER_POLL_S)
            except (ValueError, TypeError, OSError):
                # No socket yet, or it was closed under us: look again shortly.
                self._end.wait(READER_POLL_S)
                continue
            if not readable:
                continue
            try:
                data = sock.recv(UDP_READ_BYTES)
            except OSError:
                continue
            for callback in list(self._callbacks):
                try:
                    callback(data)
                except Exception:
                    log.exception("UDP reader callback %r failed", callback)


class ResumingConnectionState(VoiceConnectionState):
    """discord.py's `VoiceConnectionState`, with `_inner_connect(resume=True)` doing a
    real voice resume (see the module docstring). Everything else is discord.py's."""

    resumes: int = 0
    """Resumes that succeeded on this connection (for logs and tests)."""
    refused: VoiceRefused | None = None
    """Set when the voice server refused us for good; the source raises it."""

    def __init__(self, voice_client: Any, *, hook: WebsocketHook | None = None) -> None:
        super().__init__(voice_client, hook=hook)
        self._socket_reader.stop()  # discord.py's own reader thread ends at once
        self._socket_reader = PromptSocketReader(self)
        self._socket_reader.start()

    async def _inner_connect(self, reconnect: bool, self_deaf: bool, self_mute: bool,
                             resume: bool) -> None:
        if resume and self._resumable():
            if await self._resume():
                return
            log.info("voice resume refused or timed out; connecting afresh")
            await self.disconnect(cleanup=False)
            resume = False
        await super()._inner_connect(reconnect, self_deaf, self_mute, resume)

    async def _handshake_websocket(self) -> None:
        """discord.py's handshake; a close with a code of REFUSAL_CODES becomes
        `VoiceRefused` (kept in `refused`), which discord.py does not retry."""
        try:
            await super()._handshake_websocket()
        except ConnectionClosed as exc:
            if exc.code in REFUSAL_CODES:
                self.refused = VoiceRefused(exc.code, exc.reason or "")
                raise self.refused from exc
            raise

    def _resumable(self) -> bool:
        """A session to resume: connected once (key, SSRC, voice token, session id)."""
        return (self.ws is not MISSING and self.secret_key is not MISSING
                and bool(self.session_id) and bool(self.token) and bool(self.endpoint))

    async def _resume(self) -> bool:
        """Open a websocket with op 7 RESUME and wait for op 9 RESUMED; True on success.
        Never raises for a refused or silent server (ConnectionClosed, timeouts and
        network errors become False); the old websocket is closed either way."""
        old = self.ws
        resumed = asyncio.Event()
        forward: WebsocketHook | None = self.hook

        async def hook(ws: DiscordVoiceWebSocket, msg: dict[str, Any]) -> None:
            if msg.get("op") == OP_RESUMED:
                resumed.set()
            if forward is not None:
                await forward(ws, msg)

        try:
            async with asyncio.timeout(RESUME_TIMEOUT_S):
                ws = await DiscordVoiceWebSocket.from_connection_state(
                    self, resume=True, hook=hook, seq_ack=old.seq_ack)
                self.ws = ws
                while not resumed.is_set():
                    await ws.poll_event()
        except (ConnectionClosed, TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.info("voice resume failed: %r", exc)
            return False
        finally:
            if old is not self.ws:
                await old.close()
        ws.secret_key = self.secret_key  # the session's key, kept by the resume
        self.state = ConnectionFlowState.connected
        self.resumes += 1
        log.info("voice session resumed (seq_ack %d)", old.seq_ack)
        return True

