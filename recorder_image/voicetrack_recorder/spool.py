"""The spool: sealed chunks on the pod's disk until S3 and the API server have them.

A sealed chunk is encoded straight into files under the spool root (the pod's TMPDIR, an
emptyDir), one per speaker: `<root>/<index:06d>/<userId>.<raw-ext>`. PCM is decoded packet
by packet into its file (3840 bytes at a time, never the whole 57.6 MB of a 300 s
speaker), and each file's sha256 is taken while it is written. The chunk's spec lives in
memory in its `SpooledChunk` (a few hundred bytes); the audio never does.

The spec is also written next to the files, `<root>/<index:06d>/chunk.json` (the
RecordingChunk spec's camelCase JSON), atomically (a temporary file, fsync, `os.replace`)
and only after every track file is complete and fsynced: a directory with a spec holds a
whole chunk. The emptyDir outlives the container (Kubernetes keeps it for the pod's life;
so does the local node agent, `voicetrack_local.nodeagent`), so a restarted recorder
(a crash, an OOM kill, a failed liveness probe) finds what its previous run sealed but did
not upload, e.g. during an S3 or API server outage. `Spool` re-adopts those chunks
(`adopted`, in index order): a directory without a spec (the run ended while writing it),
a file whose size or sha256 differs from the spec, or a spec of another session or meeting
(a namesake session with another uid) is removed with a warning, never uploaded.
`ChunkUploader.adopt` then queues the adopted chunks that follow the session's
RecordingChunks for upload before any new chunk; the recorder's restart gap starts where
the last of them ends. Before, the spool was deleted at start and those chunks became part
of the `recorder-restart` gap, although their files were on disk.

The spool holds at most `max_bytes` (env VOICETRACK_SPOOL_MAX_BYTES, default 1 GiB; spec
files and `unsaid.json` included): a chunk that would pass it is refused with SpoolFull
(and so is one the disk has no room for), and the recorder records the window it could not
keep as a `connection-lost` gap. Adopted chunks count in `used` (a bound lowered since
refuses new chunks until they are uploaded; the adopted ones are kept). A chunk's files
are removed only once its RecordingChunk exists or it is given up (`remove`).

The gaps not carried by a chunk yet (a dropped window's, the recorder's `_unsaid`, and the
pause a resumed window holds) are kept there too, in `unsaid.json` (`save_unsaid`,
`voicetrack_recorder.unsaid_file`): a restart while paused took the pause to start at the
last chunk on disk and cut the lost window as paused time. `Spool.unsaid` holds what a
previous run left if it is this session's, meeting's and guild's and its gaps have the
shape the recorder writes (anything else is removed with a warning); whether it follows
the session's chunks is the recorder's check (`gaps.follow`). The marker chunks stored in
S3 only (the API server refused them or stayed away: `stopmarkers.mark_consent`) and not
listed by it yet are kept there, in index order, as `stored-marker.json`
(`add_stored_marker`, `voicetrack_recorder.marker_file`), so a restarted container, which
cannot list S3, continues after them (`restart.said_chunks`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from discord import opus
from pydantic import ValidationError

from voicetrack.audio import (
    FRAME_SAMPLES,
    PCM_BYTES_PER_SAMPLE,
    RAW_FORMAT_OGG_OPUS,
    RAW_FORMAT_PCM,
    opus_channels,
)
from voicetrack.chunkspec import ChunkSpec, ChunkTrack, ConsentDegraded, Gap, OptOut
from voicetrack.layout import MeetingLayout
from voicetrack.oggopus import encode_ogg_opus
from voicetrack.resources import RawFormat
from voicetrack_recorder.chunker import SealedChunk
from voicetrack_recorder.marker_file import (
    MARKER_FILE,
    MAX_STORED_MARKERS,
    read_stored_markers,
    write_stored_markers,
)
from voicetrack_recorder.unsaid_file import (
    UNSAID_FILE,
    Owner,
    read_unsaid,
    write_atomic,
    write_unsaid,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1 << 30
SPOOL_MAX_ENV = "VOICETRACK_SPOOL_MAX_BYTES"
SPOOL_DIR_ENV = "VOICETRACK_SPOOL_DIR"
SPEC_FILE = "chunk.json"
"""The spooled chunk's ChunkSpec (camelCase JSON) in its directory, written last."""
READ_BLOCK = 1 << 20
"""Bytes read at a time when a file left by a previous run is checked against its spec."""
PCM_FRAME_BYTES = FRAME_SAMPLES * PCM_BYTES_PER_SAMPLE
"""Bytes of one 20 ms slot of PCM s16le 48 kHz stereo: 3840."""


class SpoolFull(Exception):
    """The chunk does not fit: the spool's byte bound or the disk is full."""


@dataclass(frozen=True)
class SpooledChunk:
    """A sealed chunk on disk: its RecordingChunk spec, and the local file of each raw
    object key (`files`: key → path). `size` is the files' total, in bytes, its spec file
    included."""

    spec: ChunkSpec
    files: dict[str, str]
    directory: str
    size: int

    @property
    def index(self) -> int:
        return self.spec.index


def spool_settings_from_env(session: str) -> tuple[Path, int]:
    """(root directory, byte bound) of `session`'s spool: $VOICETRACK_SPOOL_DIR or
    `$TMPDIR/voicetrack-spool`, then `<session>`; $VOICETRACK_SPOOL_MAX_BYTES or 1 GiB.
    Raises ValueError when the bound is not a positive integer."""
    base = os.environ.get(SPOOL_DIR_ENV) or os.path.join(tempfile.gettempdir(),
                                                          "voicetrack-spool")
    raw = os.environ.get(SPOOL_MAX_ENV, str(DEFAULT_MAX_BYTES))
    max_bytes = int(raw)
    if max_bytes <= 0:
        raise ValueError(f"{SPOOL_MAX_ENV}={raw!r} is not a positive byte count")
    return Path(base) / session, max_bytes


class Spool:
    """Sealed chunks of one session under `root`, at most `max_bytes` in all.

    Encoding state (one continuous libopus decoder per speaker for PCM, so the PCM has no
    restart click at chunk boundaries) lives here: chunks must be added in index order.
    `adopted`: the complete chunks of this session and meeting a previous run left under
    `root` (index order), verified against their specs; `unsaid`: the gaps its
    `unsaid.json` holds, when they are this session's (the file is kept until
    `save_unsaid` changes it); everything else found there is removed at construction."""

    def __init__(self, root: Path, max_bytes: int, layout: MeetingLayout, session_name: str,
                 raw_format: RawFormat = "ogg-opus") -> None:
        if raw_format not in (RAW_FORMAT_OGG_OPUS, RAW_FORMAT_PCM):
            raise ValueError(f"unknown raw format {raw_format!r}")
        self.root = root
        self.max_bytes = max_bytes
        self.layout = layout
        self.session_name = session_name
        self.raw_format = raw_format
        self._decoders: dict[str, opus.Decoder] = {}
        root.mkdir(parents=True, exist_ok=True)
        self.unsaid: list[Gap]
        """The gaps a previous run left unsaid (`save_unsaid`), checked; [] when none."""
        self.unsaid, self._unsaid_bytes = read_unsaid(root, self._owner())
        """`_unsaid_bytes`: the size of `unsaid.json` (counted in `used`), 0: none."""
        self._kept = list(self.unsaid)
        """What `unsaid.json` holds now."""
        self.stored_markers: list[ChunkSpec]
        """The marker chunks stored in S3 only (by a previous run, checked, or by this
        one: `add_stored_marker`), index order, that the API server does not list; []:
        none. What `stored-marker.json` holds, or should: after a failed start-up rewrite
        (`restart.said_chunks`) the file keeps markers a restart drops again."""
        self.stored_markers, self._marker_bytes = read_stored_markers(root, self._owner())
        """`_marker_bytes`: the size of `stored-marker.json` (counted in `used`), 0: none."""
        self.adopted: list[SpooledChunk] = self._adopt()
        self.used = sum(s.size for s in self.adopted) + self._unsaid_bytes + self._marker_bytes

    def estimate(self, chunk: SealedChunk) -> int:
        """Bytes `chunk` will take on disk: exact for PCM; for Ogg Opus its packets plus
        page overhead (27 + 255 bytes a page, at most 255 packets a page) and headers; plus
        its spec file (written with the largest byte count a track can have)."""
        if self.raw_format == RAW_FORMAT_PCM:
            audio = sum(len(t.packets) for t in chunk.tracks) * PCM_FRAME_BYTES
        else:
            audio = sum(sum(len(p) + 1 for p in t.packets) + 282 * (len(t.packets) // 255 + 1)
                        + 1024 for t in chunk.tracks)
        widest = [(10**15, "0" * 64)] * len(chunk.tracks)
        return audio + len(spec_json(self._spec(chunk, widest)))

    def add(self, chunk: SealedChunk) -> SpooledChunk:
        """Write `chunk`'s raw tracks to disk, then its spec (`chunk.json`), and return its
        spooled record. Raises SpoolFull (nothing written) when it would take the spool
        over `max_bytes` or the disk is full; OSError for another disk failure; pydantic's
        ValidationError for a chunk the ChunkSpec model refuses (nothing written)."""
        need = self.estimate(chunk)
        if self.used + need > self.max_bytes:
            raise SpoolFull(f"chunk {chunk.index} needs {need} bytes; the spool holds "
                            f"{self.used} of {self.max_bytes}")
        directory = self.root / f"{chunk.index:06d}"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir()
        try:
            written = []
            for t in chunk.tracks:
                name = self._key(chunk.index, t.user_id).rsplit("/", 1)[-1]
                written.append(self._write_track(directory / name, t.user_id, chunk.index,
                                                 t.packets))
            spec = self._spec(chunk, written)
            spec_bytes = write_spec(directory, spec)  # last: it vouches for complete files
        except BaseException as err:
            shutil.rmtree(directory, ignore_errors=True)
            if isinstance(err, OSError) and err.errno == 28:  # ENOSPC
                raise SpoolFull(f"chunk {chunk.index}: the disk is full ({err})") from err
            raise
        files = {t.key: str(directory / t.key.rsplit("/", 1)[-1]) for t in spec.tracks}
        size = sum(t.bytes for t in spec.tracks) + spec_bytes
        self.used += size
        return SpooledChunk(spec=spec, files=files, directory=str(directory), size=size)

    def _key(self, index: int, user_id: str) -> str:
        return self.layout.raw_key(index, user_id, self.raw_format)

    def _spec(self, chunk: SealedChunk, written: list[tuple[int, str]]) -> ChunkSpec:
        """`chunk`'s ChunkSpec, each track's (bytes, sha256 hex) from `written`."""
        tracks = [ChunkTrack(user_id=t.user_id, key=self._key(chunk.index, t.user_id),
                             frames=t.frames, first_ms=t.first_ms, last_ms=t.last_ms,
                             bytes=size, sha256=digest, channels=opus_channels(t.packets),
                             phase_samples=t.phase_samples)
                  for t, (size, digest) in zip(chunk.tracks, written, strict=True)]
        return ChunkSpec(session_name=self.session_name, meeting_id=self.layout.meeting_id,
                         guild_id=self.layout.guild_id, index=chunk.index,
                         start_ms=chunk.start_ms, end_ms=chunk.end_ms,
                         raw_format=self.raw_format, gap=chunk.gap, tracks=tracks,
                         opted_out=chunk.opted_out, consent_degraded=chunk.consent_degraded)

    def marker_spec(self, index: int, start_ms: int, end_ms: int, opted_out: list[OptOut],
                    consent_degraded: ConsentDegraded | None, gap: Gap | None = None
                    ) -> ChunkSpec:
        """The spec of a marker chunk of this session and meeting: no tracks (it needs no
        S3), window `[start_ms, end_ms)` session ms. Raises pydantic's ValidationError for a
        window the model refuses (e.g. past the session's time limit)."""
        return ChunkSpec(session_name=self.session_name, meeting_id=self.layout.meeting_id,
                         guild_id=self.layout.guild_id, index=index, start_ms=start_ms,
                         end_ms=end_ms, raw_format=self.raw_format, gap=gap,
                         opted_out=opted_out, consent_degraded=consent_degraded)

    def remove(self, spooled: SpooledChunk) -> None:
        """Delete `spooled`'s files (its RecordingChunk exists, or it is given up)."""
        shutil.rmtree(spooled.directory, ignore_errors=True)
        self.used = max(0, self.used - spooled.size)

    def _write_track(self, path: Path, user_id: str, index: int, packets: list[bytes]
                     ) -> tuple[int, str]:
        """Encode one track into `path`; returns (bytes, sha256 hex) of the file."""
        digest = hashlib.sha256()
        size = 0
        with open(path, "wb") as f:
            if self.raw_format == RAW_FORMAT_OGG_OPUS:
                data = encode_ogg_opus(packets, serial=zlib.crc32(f"{user_id}/{index}".encode()))
                f.write(data)
                digest.update(data)
                size = len(data)
            else:
                dec = self._decoders.setdefault(user_id, opus.Decoder())
                for packet in packets:  # one 20 ms frame in memory at a time
                    pcm = dec.decode(packet, fec=False)
                    f.write(pcm)
                    digest.update(pcm)
                    size += len(pcm)
            f.flush()
            os.fsync(f.fileno())  # on disk before the spec that vouches for it
        return size, digest.hexdigest()

    def _adopt(self) -> list[SpooledChunk]:
        """The complete chunks of this session and meeting under `root`, in index order;
        every other entry there is removed (logged as a warning)."""
        adopted: list[SpooledChunk] = []
        for entry in sorted(self.root.iterdir()):
            if entry.name in (UNSAID_FILE, MARKER_FILE):  # `read_unsaid`, `read_stored_markers`
                continue
            try:
                found = self._verify(entry)
            except (OSError, ValueError) as err:  # ValidationError is a ValueError
                log.warning("spool %s: discarding %s left by a previous run: %s", self.root,
                            entry.name, err)
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                continue
            log.info("spool %s: adopting chunk %d [%d, %d) ms, %d bytes, left by a previous "
                     "run", self.root, found.index, found.spec.start_ms, found.spec.end_ms,
                     found.size)
            adopted.append(found)
        return adopted

    def save_unsaid(self, gaps: list[Gap]) -> None:
        """Keep `gaps` (contiguous, `unsaid_file.check_shape`) as `unsaid.json` in the root
        (`unsaid_file.write_unsaid`; counted in `used`, never refused for the bound), or
        remove it when `gaps` is empty; nothing when the file holds `gaps` already. Never
        raises: a failure is logged and the old file kept as it was (and `_kept` with it,
        so the next call writes again), its size counted as it is on disk; capture goes
        on."""
        if gaps == self._kept:
            return
        size, written = write_unsaid(self.root, self._owner(), gaps)
        self.used += size - self._unsaid_bytes
        self._unsaid_bytes = size
        if written or not size:  # else the old file, as it was: the next call writes again
            self._kept = list(gaps) if written else []

    def save_stored_markers(self, specs: list[ChunkSpec]) -> bool:
        """Keep marker chunks `specs` (stored in S3 only, index order) as
        `stored-marker.json` in the root (`marker_file.write_stored_markers`; counted in
        `used`, never refused for the bound), so a restarted container continues after
        them; [] removes the file. Returns whether the file now holds `specs`. Never
        raises: a failure (OSError) is logged and the old file kept as it was, and
        `stored_markers` with it (`marker_file.write_stored_markers`), its size counted
        as it now is on disk."""
        self.used -= self._marker_bytes
        try:
            self._marker_bytes = write_stored_markers(self.root, self._owner(), specs)
            self.stored_markers = list(specs)
            return True
        except OSError:
            try:
                self._marker_bytes = (self.root / MARKER_FILE).stat().st_size
            except OSError:  # gone, or not even that can be read
                self._marker_bytes = 0
            return False
        finally:
            self.used += self._marker_bytes

    def add_stored_marker(self, spec: ChunkSpec) -> bool:
        """Keep marker chunk `spec`, just stored in S3 only, after those `stored-marker.json`
        holds (`save_stored_markers`). Returns whether it is kept: False when the file
        cannot be written (logged) or holds `MAX_STORED_MARKERS` already (logged as a
        warning; the file is left as is, so a restart still follows the markers before)."""
        if len(self.stored_markers) >= MAX_STORED_MARKERS:
            log.warning("spool %s: %s holds %d markers already; marker chunk %d stored in S3 "
                        "not kept: a restart would reuse its index", self.root, MARKER_FILE,
                        len(self.stored_markers), spec.index)
            return False
        return self.save_stored_markers([*self.stored_markers, spec])

    def _owner(self) -> Owner:
        return (self.session_name, self.layout.meeting_id, self.layout.guild_id)

    def _verify(self, directory: Path) -> SpooledChunk:
        """`directory` as a spooled chunk of this session and meeting whose files match
        its spec (size and sha256). Raises ValueError (why not) or OSError."""
        if not (directory.is_dir() and not directory.is_symlink()
                and len(directory.name) == 6 and directory.name.isdigit()):
            raise ValueError("not a chunk directory")
        try:
            raw = (directory / SPEC_FILE).read_bytes()
        except FileNotFoundError:
            raise ValueError(f"no {SPEC_FILE}: incomplete (the run ended while writing "
                             "it)") from None
        try:
            spec = ChunkSpec.model_validate(json.loads(raw))
        except ValidationError as err:
            raise ValueError(f"{SPEC_FILE} is not a chunk spec: "
                             f"{err.errors()[0]['msg']}") from None
        mine = (self.session_name, self.layout.meeting_id, self.layout.guild_id,
                self.raw_format, int(directory.name))
        theirs = (spec.session_name, spec.meeting_id, spec.guild_id, spec.raw_format,
                  spec.index)
        if theirs != mine:
            raise ValueError(f"its spec (session, meeting, guild, raw format, index) is "
                             f"{theirs}, not this run's {mine}")
        files: dict[str, str] = {}
        for track in spec.tracks:
            key = self.layout.raw_key(spec.index, track.user_id, self.raw_format)
            if track.key != key:
                raise ValueError(f"track key {track.key!r} is not this layout's {key!r}")
            path = directory / key.rsplit("/", 1)[-1]
            size, digest = file_digest(path)
            if (size, digest) != (track.bytes, track.sha256):
                raise ValueError(f"{path.name}: {size} bytes, sha256 {digest}; its spec "
                                 f"says {track.bytes} bytes, sha256 {track.sha256}")
            files[key] = str(path)
        return SpooledChunk(spec=spec, files=files, directory=str(directory),
                            size=sum(t.bytes for t in spec.tracks) + len(raw))


def spec_json(spec: ChunkSpec) -> bytes:
    """The content of a spooled chunk's spec file: the RecordingChunk spec's JSON."""
    return json.dumps(spec.to_api(), separators=(",", ":")).encode()


def write_spec(directory: Path, spec: ChunkSpec) -> int:
    """Write `spec` to `directory/chunk.json` atomically (`write_atomic`). Returns its size
    in bytes; raises OSError."""
    data = spec_json(spec)
    write_atomic(directory / SPEC_FILE, data)
    return len(data)


def file_digest(path: Path) -> tuple[int, str]:
    """(bytes, sha256 hex) of the file at `path`, read 1 MiB at a time. Raises OSError."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()
