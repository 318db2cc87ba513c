"""Datagrams over real loopback UDP, read by discord.py's own socket-reader thread.

The connection state's UDP socket is bound to 127.0.0.1 (Discord's voice server would be
its peer); the rig sends the speakers' packets to it; discord.py's `SocketReader` calls the
listener registered by `ConnectionReceiver.attach` on its thread, which hands each datagram
to the event loop: the production path, minus Discord.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.discord_rig import Harness, encode_frames, tone_pcm

pytestmark = pytest.mark.unit


async def test_udp_datagrams_reach_the_pipeline_through_discordpy_reader() -> None:
    h = await Harness.open()
    h.state.socket.bind(("127.0.0.1", 0))
    port = h.state.socket.getsockname()[1]
    a, b = await h.rig.join(222222222222222222, 333333333333333333)
    await h.settle()
    sent = {a.user_id: encode_frames(tone_pcm(50, 440)), b.user_id: encode_frames(
        tone_pcm(50, 660))}
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        await h.at(1000)
        for i in range(50):
            for speaker in (a, b):
                sender.sendto(h.rig.packet(speaker, sent[speaker.user_id][i]),
                              ("127.0.0.1", port))
            sender.sendto(b"\x80\xc9" + bytes(6), ("127.0.0.1", port))  # an RTCP report
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while h.receiver.stats.datagrams < 150 and loop.time() < deadline:
            await asyncio.sleep(0.01)
    finally:
        sender.close()
    await h.finish()
    assert h.receiver.stats.datagrams == 150
    assert h.receiver.stats.dropped["rtcp"] == 50
    for speaker in (a, b):
        frames = h.sink.frames[str(speaker.user_id)]
        assert [frames[s] for s in sorted(frames)] == sent[speaker.user_id]
