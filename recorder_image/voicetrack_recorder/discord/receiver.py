"""The receive pipeline: raw UDP datagrams in, decrypted Opus frames on the slot grid out.

    datagram → RTP header (rtp.py) → transport AEAD decrypt (transport.py)
      → SSRC → user (ssrc.py; packets of an SSRC not announced yet are held briefly)
      → consent (consent.py): an opted-out user's packets are dropped here, still sealed
        by DAVE, as are those held while their SSRC was unknown and those still in the
        jitter buffer when the opt-out is seen (checked again before DAVE decryption)
      → per-SSRC jitter buffer (jitter.py)
      → the stages of delivery.py, in sequence order: frames from a talk spurt's onset
        wait 160 ms for the arrivals that anchor it (timeline.py `hold`/`settle`) → DAVE
        decrypt (dave.py; a frame sealed with keys of an epoch not processed yet waits
        ≤ key_wait_ms for it)
      → FEC/PLC for lost frames (conceal.py)
      → slot from the speaker's timeline (timeline.py) → FrameSink.push(user, slot, opus, phase)

Everything here runs on one thread (the event loop's: `DiscordSource` hands datagrams over
from discord.py's socket-reader thread), the same thread on which discord.py processes the
DAVE opcodes, so the davey session is never used from two threads at once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import davey

from voicetrack.audio import OPUS_SILENCE_FRAME
from voicetrack_recorder.clock import FrameSink, SessionClock
from voicetrack_recorder.consent import Consent
from voicetrack_recorder.discord.conceal import Concealer
from voicetrack_recorder.discord.dave import DaveDecryptor
from voicetrack_recorder.discord.delivery import FrameDelivery, SpeakerStream
from voicetrack_recorder.discord.jitter import Held, JitterBuffer
from voicetrack_recorder.discord.rtp import (
    AUDIO_PAYLOAD_TYPE,
    RtpError,
    is_rtcp,
    parse_rtp,
    seq_diff,
)
from voicetrack_recorder.discord.ssrc import GatewayEventError, SsrcMap
from voicetrack_recorder.discord.stats import ReceiveStats
from voicetrack_recorder.discord.timeline import Timeline
from voicetrack_recorder.discord.transport import TransportDecryptor, TransportError

log = logging.getLogger(__name__)

IDENTIFY_RETRY_MS = 500.0
"""How often the sender of a still-unknown SSRC is looked for by DAVE key."""
MAX_HELD_UNKNOWN = 100
"""Packets kept per not-yet-announced SSRC (2 s of audio); older ones are dropped."""
LEAVE_GRACE_MS = 1000.0
"""How long (ms) after a member's CLIENT_DISCONNECT (op 13) packets on their SSRC are
still theirs, unless the DAVE epoch changes first. The op comes over the voice websocket
and can overtake the member's last datagrams, which come over UDP through the media relay;
without the grace those were dropped as unknown SSRC (`test_discord_receive.py`). Once
the commit that removes the member is processed, davey cannot open their frames any more
(`NoDecryptorForUser`), so the grace ends there: a packet on that SSRC is then someone
else's (an SSRC handed on) and takes the unknown-SSRC path, DAVE identification included."""

KeySource = Callable[[], "tuple[str, bytes] | None"]
"""Returns the transport (mode, 32-byte secret key) now, or None before op 4 arrived."""
SessionSource = Callable[[], "davey.DaveSession | None"]


class VoiceReceiver(FrameDelivery):
    """Turns the datagrams of one voice connection into frames for `sink`.

    `keys` and `session` are read per packet (discord.py renews both on reconnects).
    `max_delay_ms`/`depth` tune the jitter buffer, `conceal_frames` the longest loss run
    rebuilt by FEC/PLC (0 turns it off), `resync_ms` the timeline, `hold_unknown_ms` how
    long packets of a not-yet-announced SSRC are kept waiting for its SPEAKING event, and
    `key_wait_ms` how long frames DAVE cannot open yet (sealed with the keys of a commit
    this bot has not processed, or by a member it does not know yet) wait for the next
    epoch before they count as failures (0: never); after `identify_after_ms` without a
    SPEAKING event, an SSRC's sender is identified by the DAVE key that opens its frames.
    `consent`: who is not recorded; their packets are dropped as soon as their SSRC's user
    is known, before DAVE decryption and Opus decoding (an SSRC identified by its DAVE
    key had one frame opened to find its user: that frame is discarded with the rest).
    """

    def __init__(self, *, clock: SessionClock, sink: FrameSink, keys: KeySource,
                 session: SessionSource, ssrc_map: SsrcMap | None = None,
                 max_delay_ms: float = 100.0, depth: int = 5, conceal_frames: int = 3,
                 resync_ms: int = 500, hold_unknown_ms: float = 1000.0,
                 key_wait_ms: float = 150.0, identify_after_ms: float = 100.0,
                 consent: Consent | None = None) -> None:
        self.clock = clock
        self.consent = consent
        self.sink = sink
        self.ssrcs = ssrc_map or SsrcMap()
        self.dave = DaveDecryptor(session)
        self.timeline = Timeline(clock, resync_ms)
        self.stats = ReceiveStats(decrypt=self.dave.stats)
        self._keys = keys
        self._transport: tuple[tuple[str, bytes], TransportDecryptor] | None = None
        self._streams: dict[int, SpeakerStream] = {}
        self._unknown: dict[int, list[Held]] = defaultdict(list)
        self._max_delay_ms = max_delay_ms
        self._depth = depth
        self._conceal_frames = conceal_frames
        self._hold_unknown_ms = hold_unknown_ms
        self._key_wait_ms = key_wait_ms
        self._identify_after_ms = identify_after_ms
        self._tried: dict[int, float] = {}
        self._leaving: dict[int, tuple[str, float, int | None]] = {}
        """SSRC → (user id, Unix ms until which it is still theirs, the DAVE epoch when
        they left): members who left."""

    # -- input ---------------------------------------------------------------------------

    def datagram(self, data: bytes, arrival_ms: float | None = None) -> None:
        """Process one UDP datagram that came off the socket at `arrival_ms` (Unix ms;
        default now). Never raises for bad input: every refusal is counted in `stats`."""
        if arrival_ms is None:
            arrival_ms = self.clock.time_fn() * 1000
        self.stats.datagrams += 1
        self._ingest(data, arrival_ms)
        self.tick(arrival_ms)

    def gateway_event(self, op: int, data: Mapping[str, Any]) -> None:
        """Apply one voice gateway JSON event (SPEAKING 5, CLIENTS_CONNECT 11,
        CLIENT_CONNECT 12, CLIENT_DISCONNECT 13, video 18); other ops are ignored. Packets
        held for an SSRC it maps are processed at once. A malformed event is logged."""
        now_ms = self.clock.time_fn() * 1000
        before = self.ssrcs.audio()
        try:
            mapped = self.ssrcs.handle(op, data)
        except GatewayEventError as exc:
            log.warning("ignoring voice gateway event: %s", exc)
            return
        for ssrc, user in before.items():  # a member left: their datagrams may still come
            if self.ssrcs.user_for(ssrc) is None:
                self._leaving[ssrc] = (user, now_ms + LEAVE_GRACE_MS, self.dave.epoch())
                if ssrc in self._streams:  # what is held opens now, while DAVE still can
                    self._finish(ssrc)
        for ssrc in mapped:
            self._leaving.pop(ssrc, None)
        if self.consent is not None:
            for user in self.ssrcs.users:
                self.consent.see(user)
        for ssrc in list(self._streams):
            if self._streams[ssrc].user_id != (self.ssrcs.user_for(ssrc)
                                               or self._leaver(ssrc, now_ms)):
                self._finish(ssrc)  # the SSRC now belongs to someone else
        for ssrc in mapped:
            for packet in self._unknown.pop(ssrc, []):
                self._hold(ssrc, packet)
        self.tick()

    # -- output --------------------------------------------------------------------------

    def tick(self, now_ms: float | None = None) -> None:
        """Release what the jitter buffers may release at `now_ms` (Unix ms; default now)
        and drop unknown-SSRC packets held too long. Call it every 20 ms or so."""
        if now_ms is None:
            now_ms = self.clock.time_fn() * 1000
        for ssrc, (_, until_ms, epoch) in list(self._leaving.items()):
            if now_ms >= until_ms or self.dave.epoch() != epoch:  # the grace is over
                del self._leaving[ssrc]
                left = self._streams.get(ssrc)
                if left is not None and left.user_id != self.ssrcs.user_for(ssrc):
                    self._finish(ssrc)
        for ssrc, stream in list(self._streams.items()):
            self._retry(ssrc, stream, now_ms)
            for released in stream.jitter.pop_ready(now_ms):
                self._deliver(ssrc, stream, released)
            self._settle(ssrc, stream, now_ms)
        for ssrc in list(self._unknown):
            held = self._unknown[ssrc]
            if (held and now_ms - held[0].arrival_ms >= self._identify_after_ms
                    and now_ms - self._tried.get(ssrc, -1e18) >= IDENTIFY_RETRY_MS):
                self._tried[ssrc] = now_ms
                if self._identify(ssrc, held):
                    continue
            while held and now_ms - held[0].arrival_ms > self._hold_unknown_ms:
                held.pop(0)
                self.stats.dropped["unknown_ssrc"] += 1
            if not held:
                del self._unknown[ssrc]

    def flush(self) -> None:
        """Release everything held (at stop); unknown-SSRC packets are dropped."""
        for ssrc in list(self._streams):
            self._finish(ssrc)
        for held in self._unknown.values():
            self.stats.dropped["unknown_ssrc"] += len(held)
        self._unknown.clear()

    # -- pipeline ------------------------------------------------------------------------

    def _transport_for(self) -> TransportDecryptor | None:
        keys = self._keys()
        if keys is None:
            return None
        if self._transport is None or self._transport[0] != keys:
            self._transport = (keys, TransportDecryptor(*keys))
        return self._transport[1]

    def _ingest(self, data: bytes, arrival_ms: float) -> None:
        if is_rtcp(data):
            self.stats.dropped["rtcp"] += 1
            return
        try:
            header = parse_rtp(data)
        except RtpError:
            self.stats.dropped["not_rtp"] += 1
            return
        if header.ssrc in self.ssrcs.video:
            self.stats.dropped["video"] += 1
            return
        if header.payload_type != AUDIO_PAYLOAD_TYPE:
            self.stats.dropped["payload_type"] += 1
            return
        try:
            transport = self._transport_for()
        except TransportError as exc:
            self.stats.dropped[f"transport_{exc.cause}"] += 1
            return
        if transport is None:
            self.stats.dropped["no_key"] += 1
            return
        try:
            payload = transport.decrypt(data, header)
        except TransportError as exc:
            self.stats.dropped[f"transport_{exc.cause}"] += 1
            return
        self._hold(header.ssrc, Held(header.sequence, header.timestamp, payload, arrival_ms))

    def _hold(self, ssrc: int, packet: Held) -> None:
        """Put an authenticated packet in its speaker's jitter buffer, or, while its SSRC
        is not announced yet, aside (at most MAX_HELD_UNKNOWN per SSRC). A packet on the
        SSRC of a member who just left (`LEAVE_GRACE_MS`) is theirs only when it opens with
        their DAVE key now, before the commit removing them takes that key away; otherwise
        it is set aside like any unknown SSRC's (an SSRC handed on to someone else)."""
        user = self.ssrcs.user_for(ssrc)
        if user is None and (left := self._leaver(ssrc, packet.arrival_ms)) is not None:
            opus = self.dave.decrypt(left, packet.payload, count_failure=False)
            if opus is not None:
                user, packet.opus = left, opus
        if user is None:
            held = self._unknown[ssrc]
            if len(held) >= MAX_HELD_UNKNOWN:
                held.pop(0)
                self.stats.dropped["unknown_ssrc"] += 1
            held.append(packet)
            return
        if self._opted_out(user):
            return
        stream = self._streams.get(ssrc)
        if stream is None or stream.user_id != user:
            stream = self._streams[ssrc] = SpeakerStream(
                user, JitterBuffer(self._max_delay_ms, self._depth),
                Concealer(self._conceal_frames, skipped=self.stats.unconcealed))
        refused = stream.jitter.push(packet)
        if refused:
            self.stats.dropped[refused] += 1

    def _identify(self, ssrc: int, held: list[Held]) -> bool:
        """Map an SSRC no SPEAKING event announced (a user already talking when the bot
        joined) by finding the group member whose DAVE key opens its first audio frame;
        that frame keeps its Opus (davey would refuse it a second time as a replay)."""
        first = held[0].sequence
        for packet in sorted(held, key=lambda p: seq_diff(p.sequence, first)):
            found = self.dave.identify(packet.payload)
            if found is None:
                if packet.payload == OPUS_SILENCE_FRAME:
                    continue
                return False
            user, opus = found
            packet.opus = opus
            log.info("SSRC %d identified by its DAVE key as user %s", ssrc, user)
            self.stats.identified += 1
            self.ssrcs.map(ssrc, user)
            self._tried.pop(ssrc, None)
            for pending in self._unknown.pop(ssrc, []):
                self._hold(ssrc, pending)
            return True
        return False

    def _leaver(self, ssrc: int, now_ms: float) -> str | None:
        """The member who left `ssrc` less than LEAVE_GRACE_MS before `now_ms`, in the DAVE
        epoch still current; None otherwise."""
        leaving = self._leaving.get(ssrc)
        if leaving and now_ms < leaving[1] and self.dave.epoch() == leaving[2]:
            return leaving[0]
        return None

    def _finish(self, ssrc: int) -> None:
        stream = self._streams.pop(ssrc)
        for released in stream.jitter.drain():
            self._deliver(ssrc, stream, released)
        self._settle(ssrc, stream, float("inf"))
        self._retry(ssrc, stream, float("inf"))
