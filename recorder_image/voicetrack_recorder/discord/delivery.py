"""From the jitter buffer to the sink: the last stages of the receive pipeline.

A frame released by a speaker's jitter buffer (in sequence order) waits while the timeline
settles a talk spurt's onset (timeline.py `hold`/`settle`), is opened by DAVE (dave.py; a
frame sealed with keys of an epoch not processed yet waits ≤ key_wait_ms for it), has the
frames lost before it rebuilt by FEC/PLC (conceal.py), and is pushed at the slot the
speaker's timeline gives it, with the phase of the speaker's stream
(`FrameSink.push(user, slot, opus, phase)`; timeline.py, "Phase"). `VoiceReceiver`
(receiver.py) runs these stages as part of itself; they run on its thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voicetrack.audio import OPUS_SILENCE_FRAME
from voicetrack.opuspacket import is_one_slot
from voicetrack_recorder.clock import FrameSink
from voicetrack_recorder.consent import Consent
from voicetrack_recorder.discord.conceal import Concealer
from voicetrack_recorder.discord.dave import KEY_NOT_YET_CAUSES, DaveDecryptor
from voicetrack_recorder.discord.jitter import JitterBuffer, Released
from voicetrack_recorder.discord.stats import ReceiveStats
from voicetrack_recorder.discord.timeline import Timeline


@dataclass
class SpeakerStream:
    """One SSRC's frames on their way from its jitter buffer to the sink: the speaker's
    user id, the buffer, the concealer, and the frames held back on the way."""

    user_id: str
    jitter: JitterBuffer
    concealer: Concealer
    pending_lost: int = 0
    onset: list[Released] = field(default_factory=list)
    """Frames (in order) waiting for the timeline to settle a talk spurt's onset."""
    waiting: list[Released] = field(default_factory=list)
    """Frames (in order) waiting for keys of an epoch not processed yet."""
    waiting_epoch: int | None = None
    waiting_since_ms: float = 0.0


class FrameDelivery:
    """The stages after the jitter buffer, as methods of `VoiceReceiver` (a mixin): the
    receiver owns the attributes below and calls `_deliver` with each released frame,
    `_settle` and `_retry` on every tick, all three when a stream ends.

    `consent` and `sink` are read at every frame (a test may swap them on a receiver);
    `_key_wait_ms` is how long frames DAVE cannot open yet wait for the next epoch (0:
    never), `_conceal_frames` the longest loss run rebuilt by FEC/PLC (0 turns it off)."""

    timeline: Timeline
    dave: DaveDecryptor
    stats: ReceiveStats
    sink: FrameSink
    consent: Consent | None
    _key_wait_ms: float
    _conceal_frames: int

    def _deliver(self, ssrc: int, stream: SpeakerStream, released: Released) -> None:
        held = released.packet
        if self.timeline.hold(stream.user_id, ssrc, held.timestamp, held.arrival_ms,
                              held.payload == OPUS_SILENCE_FRAME):
            stream.onset.append(released)
        else:
            self._pass(ssrc, stream, released)

    def _settle(self, ssrc: int, stream: SpeakerStream, now_ms: float) -> None:
        if stream.onset and self.timeline.settle(stream.user_id, ssrc, now_ms):
            pending, stream.onset = stream.onset, []
            for released in pending:
                self._pass(ssrc, stream, released)

    def _pass(self, ssrc: int, stream: SpeakerStream, released: Released) -> None:
        if stream.waiting:  # keep sequence order behind frames waiting for keys
            stream.waiting.append(released)
            return
        self._open(ssrc, stream, released, may_wait=True)

    def _retry(self, ssrc: int, stream: SpeakerStream, now_ms: float) -> None:
        """Open the frames waiting for keys once the epoch has changed, or for good (their
        failures counted) once the oldest has waited `key_wait_ms`."""
        if not stream.waiting:
            return
        expired = now_ms - stream.waiting_since_ms >= self._key_wait_ms
        if not expired and self.dave.epoch() == stream.waiting_epoch:
            return
        pending, stream.waiting = stream.waiting, []
        for released in pending:
            self._deliver_retry(ssrc, stream, released, may_wait=not expired)

    def _deliver_retry(self, ssrc: int, stream: SpeakerStream, released: Released,
                       may_wait: bool) -> None:
        if stream.waiting:
            stream.waiting.append(released)
        else:
            self._open(ssrc, stream, released, may_wait=may_wait)

    def _opted_out(self, user: str) -> bool:
        """Whether `user` is opted out now; counts the packet dropped when so."""
        if self.consent is not None and self.consent.see(user):
            self.stats.dropped["opted_out"] += 1
            return True
        return False

    def _open(self, ssrc: int, stream: SpeakerStream, released: Released, may_wait: bool) -> None:
        if self._opted_out(stream.user_id):  # opted out while it sat in the jitter buffer
            return
        held = released.packet
        opus = held.opus if held.opus is not None else self.dave.decrypt(
            stream.user_id, held.payload, count_failure=False)
        if opus is None:
            cause = self.dave.last_cause or "other"
            if may_wait and self._key_wait_ms > 0 and cause in KEY_NOT_YET_CAUSES:
                stream.waiting = [released]
                stream.waiting_epoch = self.dave.epoch()
                stream.waiting_since_ms = held.arrival_ms
                return
            self.dave.count_failure(stream.user_id, cause)
            self._lose(stream, released)
            return
        if not is_one_slot(opus):  # malformed or not 20 ms: concealed as a lost frame
            self.stats.dropped["opus_invalid"] += 1
            self._lose(stream, released)
            return
        lost = released.lost_before + stream.pending_lost
        self.stats.lost += released.lost_before
        stream.pending_lost = 0
        fec_before = stream.concealer.fec
        rebuilt = stream.concealer.feed(opus, lost, held.timestamp, held.arrival_ms) \
            if self._conceal_frames else []
        self.stats.fec += stream.concealer.fec - fec_before
        slot = self.timeline.slot(stream.user_id, ssrc, held.timestamp, held.arrival_ms)
        first = slot - len(rebuilt)
        for i, packet in enumerate(rebuilt):
            if self._push(stream.user_id, first + i, packet):
                self.stats.recovered += 1
        self._push(stream.user_id, slot, opus)

    def _lose(self, stream: SpeakerStream, released: Released) -> None:
        """Count `released` (and the run lost before it) as lost frames to conceal."""
        self.stats.lost += released.lost_before + 1
        stream.pending_lost += released.lost_before + 1

    def _push(self, user: str, slot: int, packet: bytes) -> bool:
        if slot <= self.timeline.last_slot.get(user, slot - 1):
            self.stats.dropped["overlap"] += 1
            return False
        self.timeline.placed(user, slot)
        if not self.sink.push(user, slot, packet, self.timeline.phase(user)):
            self.stats.dropped["sink"] += 1
            return False
        self.stats.frames += 1
        self.stats.frames_by_user[user] += 1
        return True
