"""The local Discord's media relay on real UDP sockets: IP discovery, and a packet sealed
by a sender in one transport mode re-sealed for a receiver in the other, the inner bytes
(here a stand-in DAVE frame and an RTP header extension, as Discord clients send) untouched
— opened by the recorder's own `TransportDecryptor`, an independent implementation."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.discord_rig import transport_encrypt
from voicetrack_local.discord.relay import Faults, Relay
from voicetrack_local.discord.transport import AES_GCM, XCHACHA
from voicetrack_recorder.discord.rtp import parse_rtp
from voicetrack_recorder.discord.transport import TransportDecryptor

pytestmark = pytest.mark.unit


@dataclass(eq=False)
class Member:
    ssrc: int
    mode: str | None
    key: bytes | None
    addr: tuple[str, int] | None = None
    out_nonce: int = 0


class Router:
    def __init__(self, *members: Member) -> None:
        self.members = members

    def by_ssrc(self, ssrc: int) -> Member | None:
        return next((m for m in self.members if m.ssrc == ssrc), None)

    def peers(self, sender: Any) -> Iterable[Member]:
        return [m for m in self.members if m is not sender]


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2)
    return s


async def recv(s: socket.socket) -> bytes:
    return await asyncio.to_thread(s.recv, 2048)


@pytest.mark.parametrize(("send_mode", "recv_mode"), [(XCHACHA, AES_GCM), (AES_GCM, XCHACHA)])
async def test_relay_reseals_for_each_receiver(send_mode: str, recv_mode: str) -> None:
    send_key, recv_key = os.urandom(32), os.urandom(32)
    sender = Member(1111, send_mode, send_key)
    receiver = Member(2222, recv_mode, recv_key, out_nonce=7)
    relay = Relay(Router(sender, receiver), Faults())
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: relay,
                                                       local_addr=("127.0.0.1", 0))
    relay_addr = transport.get_extra_info("sockname")
    a, b = udp(), udp()
    try:
        for member, sock in ((sender, a), (receiver, b)):  # IP discovery
            sock.sendto(struct.pack(">HHI", 1, 70, member.ssrc) + bytes(66), relay_addr)
            answer = await recv(sock)
            assert len(answer) == 74 and answer[:4] == struct.pack(">HH", 2, 70)
            assert struct.unpack(">H", answer[-2:])[0] == sock.getsockname()[1]
        assert receiver.addr == b.getsockname()

        header = struct.pack(">BBHII", 0x90, 0x78, 5, 960, sender.ssrc) + b"\xbe\xde\x00\x01"
        inner = b"\x10\xab\x00\x00" + b"dave-frame" + b"\x00\x07\xfa\xfa"
        a.sendto(transport_encrypt(send_mode, send_key, header, inner, 42), relay_addr)
        got = await recv(b)
    finally:
        a.close()
        b.close()
        transport.close()
    assert got[:16] == header and got[-4:] == struct.pack(">I", 7)
    payload = TransportDecryptor(recv_mode, recv_key).decrypt(got, parse_rtp(got))
    assert payload == inner[4:]  # the extension body is stripped, the frame untouched
    assert relay.stats.received == relay.stats.forwarded == 1 and receiver.out_nonce == 8
