"""The UDP media relay: IP discovery, and every sender's RTP to every other member.

Discord developer docs, "Topics › Voice Connections › IP Discovery": a 74-byte datagram
`type u16 (0x1 request, 0x2 response) | length u16 (70) | ssrc u32 | address (64 bytes,
NUL-padded ASCII) | port u16`, all big-endian; the response carries the address and port the
server saw. Media is RTP (RFC 3550) sealed with the member's transport mode and key
(`transport.py`). The relay removes the sender's transport encryption and applies each
receiver's, with the receiver's own nonce counter; the payload inside — the DAVE frame
(DAVE whitepaper, "Media frame format") or a passthrough Opus frame — is forwarded byte for
byte. RTCP and keep-alives are not forwarded.

Fault knobs (`Faults`) act per receiver: random loss, one loss burst, duplicates, reorders
(a packet held back and sent after the next one), added jitter, and RTP padding.

RTP padding (RFC 3550 section 5.1: the P bit set, padding octets after the payload, the last
one their count) sits inside the transport encryption, after the DAVE frame's 0xFAFA
marker. Public diagnostics of Discord's traffic show it on a few percent of received DAVE
frames (Snazzah/davey#15: payloads ending `...fafa01` and `...05050505`), which receivers
that do not remove it report as "unencrypted" frames (pycord#3201); the knob reproduces it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from voicetrack_local.discord import transport

log = logging.getLogger(__name__)

DISCOVERY_LEN = 74
DISCOVERY_REQUEST = 1
DISCOVERY_RESPONSE = 2
REORDER_RELEASE_S = 0.06
"""A packet held back for reordering goes out after this long if none overtakes it."""
MAX_PADDING = 8
"""Most RTP padding octets the `padding_pct` knob adds to one packet."""


class Endpoint(Protocol):
    """A voice member as the relay sees it."""

    ssrc: int
    mode: str | None
    key: bytes | None
    addr: tuple[str, int] | None
    out_nonce: int


class Router(Protocol):
    """Who is who: the voice server's members."""

    def by_ssrc(self, ssrc: int) -> Endpoint | None: ...

    def peers(self, sender: Endpoint) -> Iterable[Endpoint]: ...


@dataclass
class Faults:
    """Fault knobs (percentages 0-100 per forwarded packet and receiver)."""

    loss_pct: float = 0.0
    reorder_pct: float = 0.0
    duplicate_pct: float = 0.0
    jitter_ms: float = 0.0
    """Each packet is delayed by a uniform random 0..jitter_ms."""
    burst_after: int | None = None
    """Drop `burst_packets` packets in a row after this many forwarded packets."""
    burst_packets: int = 0
    padding_pct: float = 0.0
    """Share of forwarded packets sent with RTP padding of 1 to `MAX_PADDING` octets."""
    seed: int | None = None


@dataclass
class RelayStats:
    """Counters: datagrams in, forwarded copies out, dropped by faults, refused."""

    received: int = 0
    forwarded: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    padded: int = 0
    undecryptable: int = 0
    unknown: int = 0
    """Media from an SSRC no member holds (e.g. still in flight after its sender left)."""
    discoveries: int = 0
    per_ssrc_in: dict[int, int] = field(default_factory=dict)


def discovery_response(ssrc: int, host: str, port: int) -> bytes:
    """The 74-byte IP discovery response for `ssrc` seen from `(host, port)`."""
    address = host.encode("ascii")[:63].ljust(64, b"\0")
    return struct.pack(">HHI", DISCOVERY_RESPONSE, 70, ssrc) + address + struct.pack(">H", port)


def pad(header: bytes, payload: bytes, octets: int) -> tuple[bytes, bytes]:
    """`header` with the P bit set and `payload` followed by `octets` (1-255) of RTP
    padding, the last octet their count (RFC 3550 section 5.1)."""
    if not 1 <= octets <= 255:
        raise ValueError(f"RTP padding is 1 to 255 octets, not {octets}")
    return bytes([header[0] | 0x20]) + header[1:], payload + bytes(octets - 1) + bytes([octets])


class Relay(asyncio.DatagramProtocol):
    """The relay's socket protocol; `router` resolves SSRCs and call peers."""

    def __init__(self, router: Router, faults: Faults | None = None) -> None:
        self.router = router
        self.faults = faults or Faults()
        self.stats = RelayStats()
        self.transport: asyncio.DatagramTransport | None = None
        self._rng = random.Random(self.faults.seed)
        self._held: dict[int, bytes] = {}
        self._count = 0

    def set_faults(self, faults: Faults) -> None:
        """Change the fault knobs (and reseed) while the relay runs."""
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) == DISCOVERY_LEN and data[:4] == struct.pack(">HH", DISCOVERY_REQUEST, 70):
            self._discover(data, addr)
        elif len(data) >= 12 and data[0] >> 6 == 2 and 72 <= data[1] & 0x7F <= 76:
            return  # RTCP (payload types 200-204 with the marker bit): not forwarded
        elif len(data) >= 12 and data[0] >> 6 == 2:
            self._media(data, addr)

    def _discover(self, data: bytes, addr: tuple[str, int]) -> None:
        (ssrc,) = struct.unpack_from(">I", data, 4)
        member = self.router.by_ssrc(ssrc)
        if member is None or self.transport is None:
            return
        member.addr = addr
        self.stats.discoveries += 1
        self.transport.sendto(discovery_response(ssrc, addr[0], addr[1]), addr)

    def _media(self, data: bytes, addr: tuple[str, int]) -> None:
        (ssrc,) = struct.unpack_from(">I", data, 8)
        sender = self.router.by_ssrc(ssrc)
        if sender is None or sender.mode is None or sender.key is None:
            self.stats.unknown += 1
            return
        try:
            header, plaintext = transport.decrypt(sender.mode, sender.key, data)
        except transport.TransportError:
            self.stats.undecryptable += 1
            return
        sender.addr = addr
        self.stats.received += 1
        self.stats.per_ssrc_in[ssrc] = self.stats.per_ssrc_in.get(ssrc, 0) + 1
        for peer in self.router.peers(sender):
            if peer.mode and peer.key and peer.addr:
                self._forward(peer, header, plaintext)

    def _forward(self, peer: Endpoint, header: bytes, plaintext: bytes) -> None:
        f = self.faults
        self._count += 1
        burst = f.burst_after is not None and f.burst_after <= self._count \
            < f.burst_after + f.burst_packets
        if burst or (f.loss_pct and self._rng.random() * 100 < f.loss_pct):
            self.stats.dropped += 1
            return
        assert peer.mode is not None and peer.key is not None and peer.addr is not None
        if f.padding_pct and not header[0] & 0x20 \
                and self._rng.random() * 100 < f.padding_pct:
            self.stats.padded += 1
            header, plaintext = pad(header, plaintext, self._rng.randint(1, MAX_PADDING))
        packet = transport.encrypt(peer.mode, peer.key, header, plaintext, peer.out_nonce)
        peer.out_nonce = (peer.out_nonce + 1) & 0xFFFF_FFFF
        copies = [packet]
        if f.duplicate_pct and self._rng.random() * 100 < f.duplicate_pct:
            self.stats.duplicated += 1
            copies.append(packet)
        held = self._held.pop(peer.ssrc, None)
        if f.reorder_pct and held is None and self._rng.random() * 100 < f.reorder_pct:
            self.stats.reordered += 1
            self._held[peer.ssrc] = packet
            asyncio.get_running_loop().call_later(  # the sender may fall silent: not lost
                REORDER_RELEASE_S, self._release, peer.ssrc, packet, peer.addr)
            return
        if held is not None:
            copies.append(held)
        for copy in copies:
            self._send(copy, peer.addr)

    def _release(self, ssrc: int, packet: bytes, addr: tuple[str, int]) -> None:
        """Send a held-back packet that no later packet has overtaken yet."""
        if self._held.get(ssrc) is packet:
            del self._held[ssrc]
            self._send(packet, addr)

    def _send(self, packet: bytes, addr: tuple[str, int]) -> None:
        if self.transport is None:
            return
        self.stats.forwarded += 1
        delay = self._rng.uniform(0, self.faults.jitter_ms) / 1000 if self.faults.jitter_ms else 0
        if delay:
            asyncio.get_running_loop().call_later(delay, self.transport.sendto, packet, addr)
        else:
            self.transport.sendto(packet, addr)
