"""A voice connection state that recovers in seconds, on discord.py 2.7.1.

Two faults of discord.py 2.7.1 each cost a recorder about 30 s of audio; both are
fixed here by subclassing, leaving the rest of discord.py's connection flow as it is.

**The UDP reader waits on a dead socket.** discord.py's `SocketReader` thread blocks in
`select([state.socket], …, 30)`. A reconnect closes that socket and makes a new one, but
closing a socket does not wake a `select` on it in another thread (Linux), so the reader
sees the new socket only when its 30 s timeout expires: IP discovery (which waits for the
reader) stalls, and every audio packet until then is lost. `LoopSocketReader` reads the
socket on the event loop instead (`loop.add_reader`) and moves to a new socket as soon as
discord.py makes one (its `resume()`), or within READER_POLL_S at the latest. Reading on
the loop also halves the receive cost: no thread wakes per datagram, and no hand-over
through the loop's self-pipe (`call_soon_threadsafe`); datagrams that arrived together
are read in one wake-up.

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
import socket
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
"""Longest time (s) before the reader notices a socket replaced behind its back."""
UDP_READ_BYTES = 2048
"""Receive buffer per datagram (bytes); an RTP packet of 20 ms Opus is < 1,500."""
READ_BATCH = 64
"""Most datagrams read in one wake-up before the loop runs other work (3.2 packets per
speaker and 20 ms frame for 20 speakers)."""
RCVBUF_BYTES = 4 * 1024 * 1024
"""UDP receive buffer asked for on every socket read (SO_RCVBUF): ~20,000 datagrams of
200 bytes, seconds of a full call's audio through an event-loop stall (the kernel default,
`net.core.rmem_default`, is often 208 KiB: ~160 datagrams once per-packet overhead is
counted). Linux caps it at `net.core.rmem_max` and reports double (its bookkeeping): on a
node with the usual `rmem_max` of 208 KiB the grant is ~416 KiB, about 0.4 s of a
20-speaker call, so a grant below RCVBUF_LOW_BYTES is logged as a warning naming the sysctl
(docs/deploy.md)."""
RCVBUF_LOW_BYTES = 1024 * 1024


class LoopSocketReader(SocketReader):
    """discord.py's UDP reader, on the event loop instead of a thread.

    Same interface as discord.py 2.7.1's `SocketReader` (`register`/`unregister` a
    callback, `pause`, `resume`, `stop`, `start`), so `VoiceConnectionState` drives it
    unchanged; every callback gets each datagram (bytes) on the loop thread. The socket is
    watched with `loop.add_reader` while the reader runs and has callbacks; `_sync`
    (re)binds it to `state.socket` whenever discord.py pauses, resumes or makes a socket,
    and every READER_POLL_S as a fallback. Methods may be called from any thread (they
    hand over to the loop). The inherited `threading.Thread` is never started."""

    def __init__(self, state: VoiceConnectionState) -> None:
        super().__init__(state)
        self.loop: asyncio.AbstractEventLoop | None = None
        """The voice client's loop, found at the first call that has one."""
        self._sock: Any = None
        self._fd = -1
        self._watch: asyncio.TimerHandle | None = None
        self.datagrams = 0
        """Datagrams read (for tests and logs)."""
        self.wakeups = 0
        """Times the socket was found readable (datagrams / wakeups: the batching)."""
        self.rcvbuf = 0
        """The receive buffer (bytes) the kernel granted the socket read now (getsockopt
        SO_RCVBUF); 0 before one is bound."""

    # discord.py's interface: flags as its thread reader keeps them, then _sync.
    def start(self) -> None:
        """Start reading (paused until a callback is registered, as discord.py's)."""
        self._end.clear()
        self._idle_paused = True
        self._schedule()

    def register(self, callback: Any) -> None:
        super().register(callback)
        self._schedule()

    def unregister(self, callback: Any) -> None:
        super().unregister(callback)
        self._schedule()

    def pause(self) -> None:
        super().pause()
        self._schedule()

    def resume(self, *, force: bool = False) -> None:
        super().resume(force=force)
        self._schedule()  # discord.py calls this right after making a new socket

    def stop(self) -> None:
        super().stop()
        self._schedule()

    def is_alive(self) -> bool:
        return not self._end.is_set()

    def _schedule(self) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self.loop is None:
            owner = getattr(self.state.voice_client, "loop", None)
            self.loop = owner if isinstance(owner, asyncio.AbstractEventLoop) else running
        if self.loop is None or self.loop.is_closed():
            return  # no loop yet: the first call made on one binds the socket
        if running is self.loop:
            self._sync()
        else:
            self.loop.call_soon_threadsafe(self._sync)

    def _sync(self) -> None:
        """Watch `state.socket` when running with callbacks, else nothing; re-armed every
        READER_POLL_S until stopped. Runs on the loop."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        ended = self._end.is_set()
        want = (not ended and self._running.is_set() and bool(self._callbacks))
        sock = self.state.socket if want else None
        fd = _fileno(sock)
        if fd != self._fd or sock is not self._sock:
            if self._fd >= 0:
                loop.remove_reader(self._fd)  # a closed fd's stale key goes too
            self._sock, self._fd = (sock, fd) if fd >= 0 else (None, -1)
            if self._fd >= 0:
                self._grow_buffer()
                loop.add_reader(self._fd, self._readable)
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if not ended:
            self._watch = loop.call_later(READER_POLL_S, self._sync)

    def _grow_buffer(self) -> None:
        """Ask for a RCVBUF_BYTES receive buffer on the socket just bound and note (and
        log) what the kernel granted; a socket that refuses keeps its own."""
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            self.rcvbuf = int(self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        except (OSError, AttributeError) as exc:
            log.warning("cannot set the UDP receive buffer: %r", exc)
            return
        if self.rcvbuf < RCVBUF_LOW_BYTES:
            log.warning("UDP receive buffer: asked %d bytes, the kernel granted only %d; "
                        "an event-loop stall may drop voice datagrams (raise the node's "
                        "net.core.rmem_max to at least %d)", RCVBUF_BYTES, self.rcvbuf,
                        RCVBUF_BYTES)
        else:
            log.info("UDP receive buffer: asked %d bytes, the kernel granted %d",
                     RCVBUF_BYTES, self.rcvbuf)

    def read_ready(self) -> bool:
        """Read what the socket holds now (at most READ_BATCH datagrams, handed to the
        callbacks as `_readable` does); True when a read found it empty (every datagram
        that had arrived was read) or no socket is being read, False while a backlog
        remains. Call it on the loop."""
        return self._sock is None or self._read_batch()

    def _readable(self) -> None:
        """The loop found the socket readable: read a batch (`_read_batch`)."""
        self.wakeups += 1
        self._read_batch()

    def _read_batch(self) -> bool:
        """Read at most READ_BATCH datagrams and hand each to every callback (a failing
        callback is logged and the others still get it); True when a read found the socket
        empty (drained)."""
        sock = self._sock
        for _ in range(READ_BATCH):
            try:
                data = sock.recv(UDP_READ_BYTES)
            except BlockingIOError:
                return True
            except (OSError, AttributeError):  # closed under us: look at state.socket
                self._sync()
                return False  # its successor is read by the next call
            self.datagrams += 1
            for callback in list(self._callbacks):
                try:
                    callback(data)
                except Exception:
                    log.exception("UDP reader callback %r failed", callback)
        return False


def _fileno(sock: Any) -> int:
    """`sock.fileno()`, or -1 for no socket (discord.py's MISSING too) or a closed one."""
    try:
        return int(sock.fileno()) if sock is not None and sock is not MISSING else -1
    except (AttributeError, OSError, ValueError):
        return -1


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
        self._socket_reader = LoopSocketReader(self)
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

