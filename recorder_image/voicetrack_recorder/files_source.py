"""The `files` source: each listed audio object plays in real time as one speaker.

Each speaker's object (any format ffmpeg reads) is decoded by ffmpeg to PCM s16le 48 kHz
stereo, cut into 20 ms frames and encoded with libopus (discord.py's binding) as a Discord
client would (a mono file is coded as mono, as a client codes its microphone), then
pushed into the sink at the slot where it plays, `origin + offsetMs / 20 + frame number`
(origin = the capture start, t = 0 of the final recording), delivered when session time
reaches that slot. Frames of digital silence (after a silent frame) are not
sent, as a client's voice activity detection would not send them; the chunker fills those
slots with the Opus silence frame. Everything after this module is the code the `discord`
source uses too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from dataclasses import dataclass, field

from discord import opus

from voicetrack.audio import CHANNELS, FRAME_MS, FRAME_SAMPLES, PCM_BYTES_PER_SAMPLE, SAMPLE_RATE
from voicetrack.errors import VoicetrackError
from voicetrack.objectstore import ObjectStore
from voicetrack.resources import FileSpeaker
from voicetrack_recorder.clock import FrameSink, SessionClock
from voicetrack_recorder.opusenc import code_as_mono

log = logging.getLogger(__name__)

FRAME_BYTES = FRAME_SAMPLES * PCM_BYTES_PER_SAMPLE
"""Bytes of one 20 ms PCM s16le stereo frame: 3840."""
async def audio_channels(path: str) -> int:
    """Channels of the first audio stream of the file at `path` (ffprobe); 2 when ffprobe
    cannot tell (ffmpeg will then report the file's problem itself)."""
    proc = await asyncio.create_subprocess_exec(
        "ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
        "stream=channels", "-of", "csv=p=0", path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    text = out.decode(errors="replace").strip()
    return int(text) if proc.returncode == 0 and text.isdigit() else 2


@dataclass
class FilesSourceStats:
    """Frames per speaker: encoded and sent, skipped as silence."""

    sent: dict[str, int] = field(default_factory=dict)
    silent: dict[str, int] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)


class FilesSource:
    """Plays `speakers` in real time into `sink` on `clock`'s session time."""

    def __init__(self, speakers: list[FileSpeaker], store: ObjectStore, clock: SessionClock,
                 sink: FrameSink, origin_slot: int = 0, bitrate_kbps: int = 64) -> None:
        if not opus.is_loaded() and not opus._load_default():
            raise RuntimeError("libopus not found (Debian package libopus0)")
        self.speakers = speakers
        self.store = store
        self.clock = clock
        self.sink = sink
        self.origin_slot = origin_slot
        self.bitrate_kbps = bitrate_kbps
        self.stats = FilesSourceStats()
        self._next: dict[int, int] = {}
        """Per speaker (index in `speakers`) still playing: the slot of its next frame."""

    def watermark_slot(self) -> int | None:
        """The slot before which every speaker's frames have been pushed (or skipped as
        silence): the recorder seals no window past it, so a decoder starved of CPU delays
        a chunk instead of losing its end. None before `run` or once every file ended."""
        return min(self._next.values()) if self._next else None

    async def run(self, stop: asyncio.Event) -> None:
        """Play every speaker until its audio ends or `stop` is set."""
        self._next = {i: self.origin_slot + s.offset_ms // FRAME_MS
                      for i, s in enumerate(self.speakers)}
        with tempfile.TemporaryDirectory(prefix="vt-files-") as tmp:
            await asyncio.gather(*(self._play(i, s, tmp, stop)
                                   for i, s in enumerate(self.speakers)))

    async def _play(self, index: int, speaker: FileSpeaker, tmp: str,
                    stop: asyncio.Event) -> None:
        try:
            await self._play_file(index, speaker, tmp, stop)
        finally:
            self._next.pop(index, None)

    async def _play_file(self, index: int, speaker: FileSpeaker, tmp: str,
                         stop: asyncio.Event) -> None:
        path = os.path.join(tmp, f"{speaker.user_id}.src")
        try:
            await asyncio.to_thread(self.store.get_file, speaker.object_key, path)
        except VoicetrackError as err:  # one speaker's missing file must not stop the rest
            log.error("speaker %s: cannot read %s: %s", speaker.user_id, speaker.object_key,
                      err)
            self.stats.finished.add(speaker.user_id)
            return
        proc = await asyncio.create_subprocess_exec(
            "ffmpeg", "-nostdin", "-loglevel", "error", "-i", path, "-f", "s16le",
            "-ar", str(SAMPLE_RATE), "-ac", str(CHANNELS), "-",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        encoder = opus.Encoder(application="voip")
        encoder.set_bitrate(self.bitrate_kbps)
        if await audio_channels(path) == 1:
            code_as_mono(encoder)
        first_slot = self.origin_slot + speaker.offset_ms // FRAME_MS
        user = speaker.user_id
        sent = silent_run = 0
        prev_silent = True
        frame_no = 0
        try:
            while not stop.is_set():
                try:
                    pcm = await proc.stdout.readexactly(FRAME_BYTES)
                except asyncio.IncompleteReadError as short:
                    if not short.partial:
                        break
                    pcm = short.partial.ljust(FRAME_BYTES, b"\0")
                slot = first_slot + frame_no
                frame_no += 1
                wait_s = (slot * FRAME_MS - self.clock.now_ms()) / 1000
                if wait_s > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=wait_s)
                        break
                    except TimeoutError:
                        pass
                packet = encoder.encode(pcm, FRAME_SAMPLES)
                silent = not any(pcm)
                self._next[index] = slot + 1
                if silent and prev_silent:  # the encoder's look-ahead carries a sound's
                    silent_run += 1         # end into the next packet: send that one
                    prev_silent = True
                    continue
                prev_silent = silent
                self.sink.push(user, slot, packet)
                sent += 1
                self.stats.sent[user] = sent
        finally:
            self.stats.silent[user] = silent_run
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            if proc.returncode not in (0, -9) and proc.stderr is not None:
                text = (await proc.stderr.read()).decode(errors="replace").strip()
                log.error("ffmpeg failed for speaker %s: %s", user, text[-300:])
            self.stats.finished.add(user)
            log.info("speaker %s finished: %d frames sent, %d silent", user, sent,
                     silent_run)
