"""The recorder's UDP reader on the event loop (`connection.LoopSocketReader`), on real UDP
sockets: datagrams reach every callback on the loop thread, several per wake-up when they
arrived together; a socket discord.py replaces is read at once after its `resume()` and
within READER_POLL_S without it; pause, unregistering the last callback and stop release
the socket. Each socket read gets a RCVBUF_BYTES receive buffer, and the discord source's
watermark waits until a stall's backlog has been read."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from itertools import pairwise
from types import SimpleNamespace
from typing import Any, cast

import pytest
from discord.voice_state import VoiceConnectionState

from tests.discord_rig import CaptureSink
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.discord import DiscordSource, connection
from voicetrack_recorder.discord.connection import (
    RCVBUF_BYTES,
    READER_POLL_S,
    LoopSocketReader,
)

pytestmark = pytest.mark.unit


def udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


class Fixture:
    """A voice connection state as the reader sees it (`socket`, `voice_client.loop`),
    a sender, and what the callback got (datagram, thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.state: Any = SimpleNamespace(socket=udp(), voice_client=SimpleNamespace(loop=loop))
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.got: list[tuple[bytes, int]] = []
        self.reader = LoopSocketReader(cast(VoiceConnectionState, self.state))

    def callback(self, data: bytes) -> None:
        self.got.append((data, threading.get_ident()))

    def send(self, *payloads: bytes) -> None:
        for p in payloads:
            self.sender.sendto(p, self.state.socket.getsockname())

    async def until(self, n: int, within_s: float) -> float:
        start = time.monotonic()
        while len(self.got) < n:
            assert time.monotonic() - start < within_s, (len(self.got), n)
            await asyncio.sleep(0.005)
        return time.monotonic() - start

    def close(self) -> None:
        self.reader.stop()
        self.state.socket.close()
        self.sender.close()


async def test_datagrams_reach_every_callback_on_the_loop_in_batches() -> None:
    f = Fixture(asyncio.get_running_loop())
    others: list[bytes] = []
    try:
        f.reader.start()
        f.reader.register(f.callback)
        f.reader.register(others.append)
        f.reader.resume()
        f.send(*[b"p%d" % i for i in range(10)])
        await f.until(10, 2.0)
        assert [d for d, _ in f.got] == [b"p%d" % i for i in range(10)] == others
        assert {t for _, t in f.got} == {threading.get_ident()}  # the loop's thread
        assert f.reader.datagrams == 10 and f.reader.wakeups < 10  # read together
    finally:
        f.close()


async def test_a_replaced_socket_is_read_at_once_after_resume_and_soon_without() -> None:
    f = Fixture(asyncio.get_running_loop())
    try:
        f.reader.start()
        f.reader.register(f.callback)
        f.send(b"first")
        await f.until(1, 2.0)

        f.state.socket.close()  # a reconnect: discord.py closes it, makes one, resumes
        f.state.socket = udp()
        f.reader.resume()
        f.send(b"second")
        assert await f.until(2, 2.0) < 0.2

        old = f.state.socket  # replaced without a resume: the watch finds it
        f.state.socket = udp()
        old.close()
        f.send(b"third")
        assert await f.until(3, 2.0) < READER_POLL_S + 0.3
        assert [d for d, _ in f.got] == [b"first", b"second", b"third"]
    finally:
        f.close()


def watched(loop: asyncio.AbstractEventLoop, fd: int, reader: LoopSocketReader) -> bool:
    """Whether `loop` watches `fd` (asked by removing it, then put back as it was)."""
    was = loop.remove_reader(fd)
    if was:
        loop.add_reader(fd, reader._readable)
    return was


async def test_pause_unregister_and_stop_release_the_socket() -> None:
    loop = asyncio.get_running_loop()
    f = Fixture(loop)
    try:
        f.reader.start()
        f.reader.register(f.callback)
        fd = f.state.socket.fileno()
        assert watched(loop, fd, f.reader)

        f.reader.pause()
        f.send(b"while paused")
        await asyncio.sleep(0.1)
        assert not f.got and not watched(loop, fd, f.reader)
        f.reader.resume()
        await f.until(1, 2.0)  # kept in the socket meanwhile

        f.reader.unregister(f.callback)
        assert not watched(loop, fd, f.reader)
        f.reader.register(f.callback)
        assert watched(loop, fd, f.reader)
        f.reader.stop()
        assert not watched(loop, fd, f.reader) and not f.reader.is_alive()
        await asyncio.sleep(READER_POLL_S + 0.1)  # no watch re-arms it
        assert not watched(loop, fd, f.reader)
    finally:
        f.close()


def test_calls_from_another_thread_are_handed_to_the_loop() -> None:
    async def main() -> None:
        f = Fixture(asyncio.get_running_loop())
        try:
            f.reader.start()
            worker = threading.Thread(target=f.reader.register, args=(f.callback,))
            worker.start()
            worker.join()
            f.send(b"x")
            await f.until(1, 2.0)
        finally:
            f.close()
    asyncio.run(main())


async def test_the_socket_read_gets_a_large_receive_buffer() -> None:
    f = Fixture(asyncio.get_running_loop())
    try:
        f.reader.start()
        f.reader.register(f.callback)
        f.send(b"x")
        await f.until(1, 2.0)
        granted = f.state.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        with open("/proc/sys/net/core/rmem_max") as limit:
            ceiling = int(limit.read())
        assert f.reader.rcvbuf == granted >= min(RCVBUF_BYTES, ceiling)  # Linux doubles it
    finally:
        f.close()


async def test_a_small_grant_is_a_warning_naming_the_sysctl(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A node's `net.core.rmem_max` caps the grant (often to ~416 KiB, ~0.4 s of a full
    call): the recorder says so instead of an info line that reads like success."""
    monkeypatch.setattr(connection, "RCVBUF_LOW_BYTES", 2**40)  # any grant is "small"
    f = Fixture(asyncio.get_running_loop())
    try:
        with caplog.at_level("INFO", logger=connection.__name__):
            f.reader.start()
            f.reader.register(f.callback)
            f.send(b"x")
            await f.until(1, 2.0)
        warned = [r for r in caplog.records if r.levelname == "WARNING"]
        assert warned and "net.core.rmem_max" in warned[0].getMessage()
    finally:
        f.close()


class TickLog:
    """A receiver for `DiscordSource._record`: at each tick, the datagrams read so far and
    the watermark the previous tick left."""

    def __init__(self, f: Fixture, source: DiscordSource) -> None:
        self.f, self.source = f, source
        self.ticks: list[tuple[int, int | None]] = []

    def tick(self) -> None:
        self.ticks.append((len(self.f.got), self.source.watermark_slot()))


async def test_a_stall_backlog_is_kept_and_the_watermark_waits_until_it_is_read() -> None:
    """400 datagrams of 200 B (20 speakers, 400 ms) arrive while the loop stalls 500 ms:
    the socket keeps them all, and no tick moves the watermark past the slot they arrived
    in before every one was read."""
    f = Fixture(asyncio.get_running_loop())
    clock = SessionClock(int(time.time() * 1000))
    source = DiscordSource(token="t", guild_id="1" * 18, channel_id="2" * 18, clock=clock,
                           sink=CaptureSink())
    log = TickLog(f, source)
    source.connection = cast(Any, SimpleNamespace(receiver=log))
    source._voice = cast(Any, SimpleNamespace(
        _connection=SimpleNamespace(refused=None, _socket_reader=f.reader),
        is_connected=lambda: True))
    channel = SimpleNamespace(guild=SimpleNamespace(me=SimpleNamespace(id=1)),
                              voice_states={1: None, 2: None})
    stop = asyncio.Event()
    try:
        f.reader.start()
        f.reader.register(f.callback)
        task = asyncio.create_task(source._record(cast(Any, channel), stop))
        await asyncio.sleep(0.1)
        sent_slot = clock.now_slot()
        f.send(*[bytes([i % 256]) * 200 for i in range(400)])
        time.sleep(0.5)  # the event loop stalls (GC, a blocking call, CPU contention)
        await asyncio.sleep(0.3)
        stop.set()
        await task
        after = [(read, wm) for (read, _), (_, wm) in pairwise(log.ticks)
                 if wm is not None and wm > sent_slot]
        assert after, "the watermark never moved on"
        assert all(read == 400 for read, _ in after), after[:3]
        assert len(f.got) == 400
    finally:
        f.close()
