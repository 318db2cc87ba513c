"""The chunker: per-speaker Opus frames on the 20 ms slot grid, sealed into chunk windows.

Every source (`files`, `discord`) ends here. A source pushes `(user_id, slot, packet,
phase)` where `slot` is session time in 20 ms units (slot 0 = session start) and `phase`
how many samples (48 kHz, 0..959) after its slot the packet's audio belongs (the Discord
timeline's estimate for the speaker's stream; 0 for the files source). The chunker keeps
each speaker's packets by slot, and `seal` cuts the open window `[start, end)` into one
raw track per speaker who sent anything in it: each slot of the window holds the packet
received for it or the Opus silence frame, so every track of a chunk decodes to exactly
`(endMs - startMs) * 48` samples per channel and tracks align by construction (DESIGN.md,
"Raw chunk format").

The chunker holds no clock and does no I/O (it logs): the recorder's loop decides when to
seal. A window of more than MAX_TRACKS speakers keeps the MAX_TRACKS with the most frames
(`seal`; the others are logged and counted, `SealedChunk.left_out`).

A track has one phase (`ChunkTrack.phaseSamples`): that of the speaker's last frame in the
window (by slot). A speaker's phase changes only with a new stream (timeline.py), so a
change inside a window takes effect at the next chunk: the audio before it in the window
is off by the difference, under one slot.

A pause or the end of a run `stop`s recording at a slot without sealing: the open window
ends there and takes the frames still coming for the slots before it (a jitter buffer
releases them late) until the recorder seals it by its seal rule, while frames for the
stop slot or later are refused (`closed`). A resume (`open`) before that seal is queued:
its window opens when the stopped one is sealed, and takes its frames meanwhile.

Consent (issue 12, `consent.py`): with a `Consent`, a frame of an opted-out user at or after
their `sinceMs` is refused, `cut` drops such frames already held when a user opts out, and
`seal` cuts every track at its user's `sinceMs` again and lists the opted-out members in
the chunk (`SealedChunk.opted_out`, as they stand when the window is sealed), so no chunk
carries a packet its `optedOut` forbids (the `ChunkSpec` rule). A chunk sealed while the
consent runs degraded (`Consent.degraded`) says so (`SealedChunk.consent_degraded`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

from voicetrack.audio import FRAME_MS, FRAME_SAMPLES, OPUS_SILENCE_FRAME
from voicetrack.chunkspec import ConsentDegraded, Gap, OptOut
from voicetrack.resources import MAX_TRACKS
from voicetrack_recorder.consent import Consent

log = logging.getLogger(__name__)

MAX_AHEAD_SLOTS = 50 * 60
"""Frames more than a minute ahead of the open window are refused (a bad timestamp)."""


@dataclass
class SealedTrack:
    """One speaker's packets for a sealed window: `packets[i]` is slot `start + i`.
    `frames` counts received packets; `first_ms`/`last_ms` are the session times of the
    first and last of them."""

    user_id: str
    packets: list[bytes]
    frames: int
    first_ms: int
    last_ms: int
    phase_samples: int = 0
    """The phase (samples, 0..959) of the last of them (`ChunkTrack.phaseSamples`)."""


@dataclass
class SealedChunk:
    """A sealed window `[start_ms, end_ms)` of session time with its tracks."""

    index: int
    start_ms: int
    end_ms: int
    gap: Gap | None
    tracks: list[SealedTrack] = field(default_factory=list)
    opted_out: list[OptOut] = field(default_factory=list)
    """Members opted out when the window was sealed (`ChunkSpec.optedOut`)."""
    consent_degraded: ConsentDegraded | None = None
    """Why consent ran degraded when the window was sealed (`ChunkSpec.consentDegraded`)."""
    left_out: list[str] = field(default_factory=list)
    """Speakers with audio in the window but no track: past MAX_TRACKS, those with the
    fewest frames (logged; not in the ChunkSpec, see `Chunker.seal`)."""


@dataclass
class _Segment:
    """A stretch of recording queued behind a stopped window: from slot `start` (after
    `gap`) until slot `stop` (None: still recording)."""

    start: int
    gap: Gap | None
    stop: int | None = None


@dataclass
class ChunkerStats:
    """Frames pushed, and frames dropped by cause."""

    accepted: int = 0
    empty: int = 0
    late: int = 0
    duplicate: int = 0
    closed: int = 0
    ahead: int = 0
    opted_out: int = 0
    """Frames refused or cut because their user had opted out by their slot."""
    left_out: int = 0
    """Frames of speakers left out of a window past MAX_TRACKS speakers (`Chunker.seal`)."""


class Chunker:
    """Collects frames of many speakers and seals them into consecutive chunk windows.

    `chunk_slots` is the nominal window length in 20 ms slots. A window opens with
    `open(slot, gap)` (recording starts or resumes) and closes either at its nominal end
    (`due`, `seal`), at the slot where recording stops (`stop` on pause or stop, then
    `seal` once due), or early (`seal(end_slot, reopen=False)`).
    """

    def __init__(self, chunk_slots: int, first_index: int = 0,
                 consent: Consent | None = None) -> None:
        if chunk_slots <= 0:
            raise ValueError("chunk_slots must be positive")
        self.chunk_slots = chunk_slots
        self.next_index = first_index
        self.start_slot: int | None = None
        self.gap: Gap | None = None
        self.stats = ChunkerStats()
        self.consent = consent
        self._frames: dict[str, dict[int, bytes]] = defaultdict(dict)
        self._phases: dict[str, dict[int, int]] = defaultdict(dict)
        """Each held frame's phase when it is not 0 (user → slot → samples)."""
        self.stop_slot: int | None = None
        """Where recording stops (`stop`): the open window ends there at the latest."""
        self._queue: list[_Segment] = []
        """Recording resumed (`open`) while the stopped window is not sealed yet."""

    @property
    def is_open(self) -> bool:
        return self.start_slot is not None

    @property
    def end_slot(self) -> int:
        """The nominal end slot (exclusive) of the open window."""
        if self.start_slot is None:
            raise RuntimeError("no open window")
        nominal = self.start_slot + self.chunk_slots
        return nominal if self.stop_slot is None else min(nominal, self.stop_slot)

    def open(self, slot: int, gap: Gap | None = None) -> None:
        """Open a window at `slot`; `gap` is the interval since the previous window, if any.
        While a stopped window waits for its seal, the window is queued (it opens when
        that one is sealed; a resume at the stop slot itself just cancels the stop).
        Raises RuntimeError when recording has not stopped (a window is open), ValueError
        for a slot before the stop."""
        if self.start_slot is not None:
            last = self._queue[-1] if self._queue else None
            stop = self.stop_slot if last is None else last.stop
            if stop is None:
                raise RuntimeError("a window is already open")
            if slot < stop:
                raise ValueError(f"slot {slot} is before the stop at {stop}")
            if slot > stop:
                self._queue.append(_Segment(slot, gap))
            elif last is not None:
                last.stop = None
            else:
                self.stop_slot = None
            return
        self.start_slot = slot
        self.gap = gap
        for frames in self._frames.values():  # anything before the new window is stale
            for old in [s for s in frames if s < slot]:
                del frames[old]
        self._forget_phases(slot)

    def stop(self, slot: int) -> None:
        """Stop recording at `slot` (a pause, the end of the run): the open window, or the
        last one queued, ends there; frames for `slot` or later are refused until a window
        opens again. Nothing when no window is open or recording has stopped already
        (the earlier stop holds)."""
        if self.start_slot is None:
            return
        if self._queue:
            if self._queue[-1].stop is None:
                self._queue[-1].stop = slot
        elif self.stop_slot is None:
            self.stop_slot = slot

    def unsealed(self) -> list[tuple[int, Gap | None, int | None]]:
        """The recording not sealed yet, in time order: (start slot, the gap before it,
        the slot where it stops or None: still recording) of the open window and of
        each window queued behind its stop (`open`); [] when no window is open."""
        if self.start_slot is None:
            return []
        return [(self.start_slot, self.gap, self.stop_slot),
                *((seg.start, seg.gap, seg.stop) for seg in self._queue)]

    def _takes(self, slot: int) -> bool:
        """Whether `slot` (not before the open window) is recorded: before the stop, or in
        a queued segment."""
        if self.stop_slot is None or slot < self.stop_slot:
            return True
        return any(seg.start <= slot and (seg.stop is None or slot < seg.stop)
                   for seg in self._queue)

    def push(self, user_id: str, slot: int, packet: bytes, phase: int = 0) -> bool:
        """Record `packet` for `user_id` at `slot`, its audio `phase` samples (48 kHz,
        0..959) after the slot's start; False (and counted) when dropped: an empty packet,
        no open window, before the window, a duplicate slot, or absurdly far ahead.
        Raises ValueError for a phase out of range."""
        if not 0 <= phase < FRAME_SAMPLES:
            raise ValueError(f"phase {phase} is not in 0..{FRAME_SAMPLES - 1} samples")
        if not packet:
            self.stats.empty += 1
            return False
        if self.start_slot is None:
            self.stats.closed += 1
            return False
        if slot < self.start_slot:
            self.stats.late += 1
            return False
        if not self._takes(slot):  # after a stop (pause, end of the run)
            self.stats.closed += 1
            return False
        if slot >= self.end_slot + MAX_AHEAD_SLOTS:
            self.stats.ahead += 1
            return False
        since = self.consent.since_ms(user_id) if self.consent is not None else None
        if since is not None and slot * FRAME_MS >= since:
            self.stats.opted_out += 1
            return False
        frames = self._frames[user_id]
        if slot in frames:
            self.stats.duplicate += 1
            return False
        frames[slot] = packet
        if phase:
            self._phases[user_id][slot] = phase
        self.stats.accepted += 1
        return True

    def cut(self, user_id: str, since_ms: int) -> None:
        """Drop the frames of `user_id` held for session ms `since_ms` or later (the user
        has just opted out; `since_ms` is their `OptOut.since_ms`)."""
        frames = self._frames.get(user_id, {})
        for slot in [s for s in frames if s * FRAME_MS >= since_ms]:
            del frames[slot]
            self.stats.opted_out += 1

    def due(self, now_slot: int) -> bool:
        """True when the open window's nominal end has passed at `now_slot`."""
        return self.start_slot is not None and now_slot >= self.end_slot

    def seal(self, end_slot: int | None = None, *, reopen: bool = True) -> SealedChunk | None:
        """Close the open window at `end_slot` (default: its nominal end) and return it.

        With `reopen`, the next window opens at `end_slot` at once (no gap), unless the
        window ends where recording stopped (`stop`): then the first queued window opens,
        if any (likewise without `reopen`). Returns None when no window is open or the
        window would be empty (end <= start).

        A chunk has at most MAX_TRACKS tracks (the ChunkSpec model's and the CRD's bound;
        a raid of more speakers in one window made the spool's spec raise, and the recorder
        crash-looped losing every chunk): past it, the speakers with the most frames keep
        theirs (ties by user id), the others' frames of the window are dropped, counted in
        `stats.left_out`, listed in `SealedChunk.left_out` and logged (a warning naming
        them). They are not written into the chunk: the ChunkSpec is bounded by design (the
        object's size) and has no field for them."""
        if self.start_slot is None:
            return None
        start = self.start_slot
        end = self.end_slot if end_slot is None else min(end_slot, self.end_slot)
        gap = self.gap
        self.start_slot, self.gap = None, None
        closed = not reopen or (self.stop_slot is not None and end >= self.stop_slot)
        if end <= start:
            self._follow(closed, start, gap)
            return None
        for user_id, since_ms in self.consent.cuts() if self.consent is not None else ():
            self.cut(user_id, since_ms)
        counts = {u: sum(start <= s < end for s in f) for u, f in self._frames.items()}
        speakers = sorted((u for u, n in counts.items() if n), key=lambda u: (-counts[u], u))
        left_out = sorted(speakers[MAX_TRACKS:])  # past the model's and the CRD's bound
        for user_id in left_out:  # their frames of the window go with them
            frames = self._frames[user_id]
            for s in [s for s in frames if start <= s < end]:
                del frames[s]
            self.stats.left_out += counts[user_id]
        if left_out:
            log.warning("chunk %d [%d, %d) ms: %d speakers, at most %d tracks: left out the "
                        "%d with the fewest frames (%d frames): %s", self.next_index,
                        start * FRAME_MS, end * FRAME_MS, len(speakers), MAX_TRACKS,
                        len(left_out), sum(counts[u] for u in left_out), ", ".join(left_out))
        tracks: list[SealedTrack] = []
        for user_id in sorted(speakers[:MAX_TRACKS]):
            frames = self._frames[user_id]
            got = sorted(s for s in frames if start <= s < end)
            packets = [frames.pop(s, OPUS_SILENCE_FRAME) for s in range(start, end)]
            tracks.append(SealedTrack(user_id=user_id, packets=packets, frames=len(got),
                                      first_ms=got[0] * FRAME_MS, last_ms=got[-1] * FRAME_MS,
                                      phase_samples=self._phases[user_id].get(got[-1], 0)))
        self._forget_phases(end)
        opted_out: list[OptOut] = []
        if self.consent is not None:  # listed after noting who has audio (bounded list)
            self.consent.note_recorded(t.user_id for t in tracks)
            opted_out = self.consent.opted_out()
        chunk = SealedChunk(index=self.next_index, start_ms=start * FRAME_MS,
                            end_ms=end * FRAME_MS, gap=gap, tracks=tracks,
                            opted_out=opted_out, left_out=left_out, consent_degraded=(
                                self.consent.degraded if self.consent is not None else None))
        self.next_index += 1
        self._follow(closed, end, None)
        return chunk

    def _forget_phases(self, before: int) -> None:
        """Drop the phases of slots before `before` (their frames are sealed or stale)."""
        for user_id in list(self._phases):
            phases = self._phases[user_id]
            for old in [s for s in phases if s < before]:
                del phases[old]
            if not phases:
                del self._phases[user_id]

    def _follow(self, closed: bool, slot: int, gap: Gap | None) -> None:
        """After a seal: open the next window at `slot` (after `gap`) unless the sealed one
        was `closed` (stopped, or sealed without reopen); then the first queued one opens,
        with its stop."""
        if not closed:
            self.open(slot, gap)
            return
        self.stop_slot = None
        if self._queue:
            seg = self._queue.pop(0)
            self.open(seg.start, seg.gap)
            self.stop_slot = seg.stop

    def reclaim(self, chunk: SealedChunk) -> None:
        """Give back the index of `chunk`, the last one sealed, which was dropped (the
        spool was full): the next chunk takes it, so indices stay consecutive and the
        dropped window becomes that chunk's gap. Raises ValueError for another chunk."""
        if chunk.index != self.next_index - 1:
            raise ValueError(f"chunk {chunk.index} is not the last sealed "
                             f"({self.next_index - 1})")
        self.next_index = chunk.index
