"""Seal → S3 → RecordingChunk: the recorder's flush path.

For each sealed chunk, every speaker's raw track is written to S3 first (Ogg Opus, or PCM
s16le 48 kHz stereo decoded with one continuous libopus decoder per speaker so the PCM has
no restart click at chunk boundaries), then the RecordingChunk is created. A chunk is
acknowledged only once both exist; failures are retried with backoff so nothing sealed is
lost while S3 or the API server is away.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from discord import opus

from voicetrack.audio import RAW_FORMAT_OGG_OPUS, RAW_FORMAT_PCM, opus_channels
from voicetrack.errors import TemporaryFailure
from voicetrack.layout import MeetingLayout
from voicetrack.objectstore import ObjectStore, sha256_hex
from voicetrack.oggopus import encode_ogg_opus
from voicetrack.resources import ChunkSpec, ChunkTrack, RawFormat
from voicetrack_recorder.chunker import SealedChunk, SealedTrack
from voicetrack_recorder.kube import RecorderKube

log = logging.getLogger(__name__)


@dataclass
class UploadStats:
    chunks: int = 0
    bytes: int = 0
    retries: int = 0


class ChunkUploader:
    """Writes sealed chunks of one session: raw objects, then the RecordingChunk."""

    def __init__(self, store: ObjectStore, kube: RecorderKube, layout: MeetingLayout,
                 session_name: str, session_uid: str, raw_format: RawFormat = "ogg-opus"
                 ) -> None:
        self.store = store
        self.kube = kube
        self.layout = layout
        self.session_name = session_name
        self.session_uid = session_uid
        self.raw_format = raw_format
        self.stats = UploadStats()
        self._decoders: dict[str, opus.Decoder] = {}

    def encode_track(self, track: SealedTrack, index: int) -> bytes:
        """The raw object bytes of one track in this uploader's raw format."""
        if self.raw_format == RAW_FORMAT_OGG_OPUS:
            serial = zlib.crc32(f"{track.user_id}/{index}".encode())
            return encode_ogg_opus(track.packets, serial=serial)
        if self.raw_format == RAW_FORMAT_PCM:
            dec = self._decoders.setdefault(track.user_id, opus.Decoder())
            return b"".join(dec.decode(p, fec=False) for p in track.packets)
        raise ValueError(f"unknown raw format {self.raw_format!r}")

    def build_spec(self, chunk: SealedChunk) -> tuple[ChunkSpec, dict[str, bytes]]:
        """The chunk's spec and its raw objects by key (pure but for the PCM decoders)."""
        objects: dict[str, bytes] = {}
        tracks = []
        for track in chunk.tracks:
            data = self.encode_track(track, chunk.index)
            key = self.layout.raw_key(chunk.index, track.user_id, self.raw_format)
            objects[key] = data
            tracks.append(ChunkTrack(user_id=track.user_id, key=key, frames=track.frames,
                                     first_ms=track.first_ms, last_ms=track.last_ms,
                                     bytes=len(data), sha256=sha256_hex(data),
                                     channels=opus_channels(track.packets)))
        spec = ChunkSpec(session_name=self.session_name, meeting_id=self.layout.meeting_id,
                         guild_id=self.layout.guild_id, index=chunk.index,
                         start_ms=chunk.start_ms, end_ms=chunk.end_ms,
                         raw_format=self.raw_format, gap=chunk.gap, tracks=tracks)
        return spec, objects

    def upload(self, chunk: SealedChunk,
               deadline: Callable[[], float | None] = lambda: None) -> ChunkSpec:
        """Write the chunk's raw objects then its RecordingChunk, retrying temporary
        failures with backoff until `deadline()` (monotonic seconds, or None = forever;
        read before every retry, so a stop sets one deadline for all pending uploads).
        Raises TemporaryFailure when the deadline passes first."""
        spec, objects = self.build_spec(chunk)
        delay = 0.5
        while True:
            try:
                for key, data in objects.items():
                    self.store.put_bytes(key, data, "audio/ogg" if key.endswith(".opus")
                                         else "application/octet-stream")
                self.kube.create_chunk(spec, self.session_uid)
                break
            except TemporaryFailure as err:
                self.stats.retries += 1
                limit = deadline()
                if limit is not None and time.monotonic() + delay > limit:
                    raise
                log.warning("chunk %d: %s; retrying in %.1fs", chunk.index, err, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.stats.chunks += 1
        self.stats.bytes += sum(len(d) for d in objects.values())
        log.info("chunk %d sealed: [%d, %d) ms, %d track(s), %d bytes", spec.index,
                 spec.start_ms, spec.end_ms, len(spec.tracks),
                 sum(t.bytes for t in spec.tracks))
        return spec
