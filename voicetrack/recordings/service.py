"""`RecordingsReader`: every way to get a meeting's audio, over SQL and S3, typed.

The one read layer the CLI (`voicetrack recordings`), the bot and the web page share:

- `list_meetings(guild, limit) -> list[MeetingRecord]` and `resolve(ref) -> MeetingRecord`
  (`ref` is a meeting id or `namespace/session-name`): SQL only;
- `show(ref) -> MeetingDetail`: the final tracks (`recordings` rows: format, bytes, sha256,
  duration) with `final/manifest.json` (gaps, channels, paused time);
- `links(ref, track, fmt, expires_s) -> list[TrackLink]`: presigned GET links minted now,
  never stored (`ObjectStore.presigned_link`);
- `download(ref, dest) -> list[DownloadedFile]`: every final track, each verified against
  its `recordings` row's sha256 and size; a file that does not match is not kept;
- `bundle(ref, out) -> Bundle`: the Audacity zip (equal-length FLAC per speaker and the
  mix from t = 0, a `.lof`, `manifest.json`, `timeline.json` and `consent.json` when
  promotion wrote them).

The answers' types are in `voicetrack.recordings.models`.

The object keys come from `voicetrack.layout.MeetingLayout`, rebuilt from a track's key
(the `recordings` row keeps the key, the prefix is not stored elsewhere). Blocking S3 and
ffmpeg work runs in a thread, off the event loop. Errors are the project's own:
`NotFoundError` (no such meeting, track or object), `InvalidInputError` (bad argument, a
damaged object: `ChecksumMismatch`), `TemporaryFailure` (database or S3 away).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import re
import secrets
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pydantic import ValidationError

from voicetrack.audio import SAMPLES_PER_MS
from voicetrack.db.queries import MeetingRecord
from voicetrack.db.service import RecordingService
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import ConsentRecord, FinalManifest
from voicetrack.objectstore import DEFAULT_LINK_S, ObjectStore, sha256_file
from voicetrack.recordings.bundle import (
    BuildStopped,
    LofEntry,
    ffmpeg_path,
    in_thread,
    lof_text,
    render_flac,
)
from voicetrack.recordings.models import (
    Bundle,
    ChecksumMismatch,
    DownloadedFile,
    MeetingDetail,
    TrackInfo,
    TrackLink,
    render_sources,
)
from voicetrack.resources import MEETING_ID_PATTERN
from voicetrack.trackchoice import select_tracks

TIMELINE_NAME = "timeline.json"
"""The speech timeline promotion may write next to the manifest: `final/timeline.json`."""
CONSENT_NAME = "consent.json"
"""The consent record promotion writes next to the manifest: `final/consent.json`."""

_MEETING_RE = re.compile(MEETING_ID_PATTERN)
_SESSION_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")

Progress = Callable[[str], None]
"""Called with a file name each time one file is done (downloaded, rendered)."""


class RecordingsReader:
    """Reads meetings and their audio. `db` is the storage service (any database the
    operator writes); `store` the bucket the final tracks are in, or None when only SQL
    reads are needed (`list_meetings`, `resolve`); an S3 method then raises
    InvalidInputError saying the S3 settings are missing."""

    def __init__(self, db: RecordingService, store: ObjectStore | None = None) -> None:
        self.db = db
        self._store = store

    @property
    def store(self) -> ObjectStore:
        """The object store. InvalidInputError when none was configured."""
        if self._store is None:
            raise InvalidInputError(
                "S3 settings missing: set VOICETRACK_S3_ENDPOINT, VOICETRACK_S3_ACCESS_KEY "
                "and VOICETRACK_S3_SECRET_KEY (or the --s3-* options)")
        return self._store

    # ------------------------------------------------------------------ SQL only

    async def list_meetings(self, guild_id: str | None = None, limit: int = 50
                            ) -> list[MeetingRecord]:
        """The newest `limit` (1..1000) meetings, of one guild when `guild_id` is given.
        InvalidInputError naming `guild_id` or `limit` when malformed."""
        return await self.db.list_meetings(guild_id, limit)

    async def resolve(self, ref: str) -> MeetingRecord:
        """The meeting `ref` names: a meeting id (16 letters/digits), or
        `namespace/session-name` (the newest meeting that session recorded).
        InvalidInputError naming MEETING for anything else; NotFoundError when there is
        no such meeting."""
        ref = ref.strip()
        if _MEETING_RE.match(ref):
            return await self.db.meeting_record(ref)
        if _SESSION_RE.match(ref):
            namespace, name = ref.split("/", 1)
            return await self.db.find_session_meeting(namespace, name)
        raise InvalidInputError(
            f"MEETING: {ref!r} is neither a meeting id (16 letters/digits) nor "
            "namespace/session-name")

    async def tracks(self, record: MeetingRecord) -> list[TrackInfo]:
        """The meeting's final tracks from its `recordings` rows (rows adopted from the old
        shape, without an object key, are left out)."""
        rows = await self.db.get_recordings_for_meeting(record.meeting_id)
        return [TrackInfo.from_row(r) for r in rows if r.object_key]

    # ------------------------------------------------------------------ SQL + S3

    async def show(self, ref: str) -> MeetingDetail:
        """The meeting with its tracks and final manifest (see `MeetingDetail`).
        InvalidInputError when the manifest exists but is not one."""
        record = await self.resolve(ref)
        tracks = await self.tracks(record)
        if not tracks:
            return MeetingDetail(record, (), None, None, None)
        layout = meeting_layout(record, tracks[0])
        manifest = await asyncio.to_thread(self._manifest, layout)
        channels = {(t.user_id, t.format): t.channels for t in manifest.tracks} \
            if manifest else {}
        tracks = [replace(t, channels=channels.get((t.user_id, t.format))) for t in tracks]
        timeline = layout.final_root + TIMELINE_NAME
        has_timeline = await asyncio.to_thread(self.store.exists, timeline)
        consent_key = (manifest.consent_key if manifest else None) or layout.consent_key
        consent = await asyncio.to_thread(self._consent, consent_key)
        return MeetingDetail(record, tuple(tracks), manifest,
                             layout.final_manifest_key if manifest else None,
                             timeline if has_timeline else None,
                             consent, consent_key if consent else None)

    def _consent(self, key: str) -> ConsentRecord | None:
        """The consent record at `key`; None when absent. InvalidInputError when the
        object is not one."""
        try:
            doc = self.store.get_json(key)
        except NotFoundError:
            return None
        try:
            return ConsentRecord.model_validate(doc)
        except ValidationError as err:
            raise InvalidInputError(f"{key}: not a consent record: {err}") from err

    def _manifest(self, layout: MeetingLayout) -> FinalManifest | None:
        try:
            doc = self.store.get_json(layout.final_manifest_key)
        except NotFoundError:
            return None
        try:
            return FinalManifest.model_validate(doc)
        except ValidationError as err:
            raise InvalidInputError(
                f"{layout.final_manifest_key}: not a final manifest: {err}") from err

    async def links(self, ref: str, track: str | None = None, fmt: str | None = None,
                    expires_s: int = DEFAULT_LINK_S) -> list[TrackLink]:
        """Presigned links minted now, valid `expires_s` seconds (1 s .. 7 days): one per
        track (`track` a user id or `mix` for one), in format `fmt`, or by default mp3
        when the track has it, else its first format. NotFoundError naming TRACK or
        --format (with what exists) when nothing matches; InvalidInputError for an expiry
        out of range."""
        record = await self.resolve(ref)
        chosen = select_tracks(await self.tracks(record), track, fmt, record.meeting_id)
        store = self.store
        out = []
        for t in chosen:
            link = await asyncio.to_thread(store.presigned_link, t.key, expires_s)
            out.append(TrackLink(t.track, t.kind, t.user_id, link))
        return out

    async def download(self, ref: str, dest: Path, on_file: Progress | None = None
                       ) -> list[DownloadedFile]:
        """Save every final track (all formats) in directory `dest` (made if missing) under
        its key's file name, each verified against its row's size and sha256; a file
        already there that matches is kept. Raises ChecksumMismatch naming every file that
        does not match after all others are saved: such a file is removed (also an older
        copy at its name), so nothing left in `dest` looks valid without being so.
        NotFoundError when the meeting has no final tracks or an object is missing."""
        record = await self.resolve(ref)
        tracks = await self.tracks(record)
        if not tracks:
            raise NotFoundError(f"meeting {record.meeting_id} has no final tracks "
                                f"(status {record.status})")
        dest.mkdir(parents=True, exist_ok=True)
        saved, bad = [], []
        for t in tracks:
            result = await asyncio.to_thread(self._fetch_verified, t, dest / t.filename)
            if isinstance(result, str):
                bad.append((t.filename, result))
            else:
                saved.append(result)
            if on_file:
                on_file(t.filename)
        if bad:
            raise ChecksumMismatch(
                "; ".join(f"{name}: {why}" for name, why in bad)
                + " (not saved: the object in S3 is damaged; the other files are verified)",
                [name for name, _ in bad])
        return saved

    def _fetch_verified(self, t: TrackInfo, target: Path) -> DownloadedFile | str:
        """Download `t` to `target` through a hidden `.part` file; the file, or why it does
        not match its row (and then neither the part nor `target` is left)."""
        if t.sha256 and target.is_file() and sha256_file(target) == t.sha256:
            return DownloadedFile(t, target, t.sha256, verified=True, reused=True)
        part = part_beside(target)
        try:
            self.store.get_file(t.key, str(part))
            digest, size = sha256_file(part), part.stat().st_size
            why = None
            if t.bytes is not None and size != t.bytes:
                why = f"{size} bytes, the recordings row says {t.bytes}"
            elif t.sha256 and digest != t.sha256:
                why = f"sha256 {digest}, the recordings row says {t.sha256}"
            if why:
                target.unlink(missing_ok=True)
                return why
            part.replace(target)
        finally:
            part.unlink(missing_ok=True)
        return DownloadedFile(t, target, digest, verified=bool(t.sha256), reused=False)

    async def bundle(self, ref: str, out: Path, on_file: Progress | None = None) -> Bundle:
        """Write the Audacity zip at `out` (through a hidden `.part` file, so `out` is
        either whole or absent): under `voicetrack-<meeting>/`, one 48 kHz FLAC per speaker
        (`<userId>.flac`) and the mix (`mix.flac`), all exactly the output's length from
        t = 0, rendered by ffmpeg from the best final format (FLAC, else Opus, else MP3)
        after verifying its sha256; `<meeting>.lof` listing them (speakers, then the mix);
        `manifest.json`; `timeline.json` and `consent.json` when promotion wrote them.
        NotFoundError when the meeting has no final tracks; ChecksumMismatch for a damaged
        source; InvalidInputError when ffmpeg is missing or fails. Cancelled, it stops
        before the cancellation is raised: the running ffmpeg is stopped
        (`bundle.stop_process`), a running S3 read or zip write is awaited (the zip write
        gives up between members) and the scratch files are deleted; nothing of the build
        outlives it, even when the cancellation arrives as the zip is finished (`out` is then
        left as it was, and the `.part` deleted like on every failure)."""
        detail = await self.show(ref)
        meeting = detail.record.meeting_id
        if not detail.tracks or detail.manifest is None or detail.manifest_key is None:
            raise NotFoundError(f"meeting {meeting} has no final tracks and manifest "
                                f"(status {detail.record.status})")
        ffmpeg = ffmpeg_path()
        duration_ms = detail.manifest.duration_ms
        samples = duration_ms * SAMPLES_PER_MS
        out.parent.mkdir(parents=True, exist_ok=True)
        part = part_beside(out)
        try:
            members = await self._write_bundle(detail, detail.manifest_key, part, samples,
                                               ffmpeg, on_file)
            part.replace(out)
        except BaseException:  # failed or cancelled, however late: no part is left
            part.unlink(missing_ok=True)
            raise
        return Bundle(out, tuple(members), samples, duration_ms)

    async def _write_bundle(self, detail: MeetingDetail, manifest_key: str, part: Path,
                            samples: int, ffmpeg: str, on_file: Progress | None
                            ) -> list[str]:
        """`bundle`'s build: the zip written at `part` (its member names), its sources
        fetched and rendered in a scratch directory next to `part`, deleted on return."""
        meeting = detail.record.meeting_id
        folder = f"voicetrack-{meeting}"
        stop = threading.Event()
        with tempfile.TemporaryDirectory(prefix=".voicetrack-zip-", dir=part.parent) as tmp:
            work, src = Path(tmp), Path(tmp) / "src"
            src.mkdir()
            names = []
            for t in render_sources(detail.tracks):
                fetched = await in_thread(stop, self._fetch_verified, t, src / t.filename)
                if isinstance(fetched, str):
                    raise ChecksumMismatch(f"{t.filename}: {fetched} (the object in S3 is "
                                           "damaged; no bundle written)", [t.filename])
                name = f"{t.track}.flac"
                await render_flac(fetched.path, work / name, samples, ffmpeg)
                names.append(name)
                if on_file:
                    on_file(name)
            lof = lof_text([LofEntry(n) for n in names])
            manifest = await in_thread(stop, self.store.get_bytes, manifest_key)
            texts = [(f"{meeting}.lof", lof.encode()), ("manifest.json", manifest)]
            for name, key in ((TIMELINE_NAME, detail.timeline_key),
                              (CONSENT_NAME, detail.consent_key)):
                if key:
                    with contextlib.suppress(NotFoundError):
                        texts.append((name, await in_thread(stop, self.store.get_bytes, key)))
            return await in_thread(stop, _write_zip, part, folder, work, names, texts, stop)


def part_beside(target: Path) -> Path:
    """A new hidden file beside `target` to write it through, `.<name>.<random>.part`
    (created empty and exclusively, with the mode a plain create gives; `target`'s
    directory must exist). Concurrent writers of
    one `target` (two `zip` or `download` runs into one directory) each get their own:
    with one shared `.<name>.part`, one run's rename took the other's half-written file.
    Raises OSError when the directory does not take it."""
    part = target.with_name(f".{target.name}.{secrets.token_hex(8)}.part")
    # created as open(…, "w") would (mode 0666 less the umask: mkstemp's 0600 made every
    # zip private), but exclusively
    os.close(os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    return part


def _write_zip(part: Path, folder: str, work: Path, names: list[str],
               texts: list[tuple[str, bytes]], stop: threading.Event) -> list[str]:
    """Write the zip at `part`: the FLACs `names` from `work`, stored (already
    compressed), then the text files `texts` (name, bytes), deflated; its member names,
    all under `folder/`. BuildStopped (and no `part` left) when `stop` is set before a
    FLAC is added."""
    members = []
    try:
        with zipfile.ZipFile(part, "w") as zf:
            for name in names:
                if stop.is_set():
                    raise BuildStopped(f"{part.name}: the build was stopped")
                zf.write(work / name, f"{folder}/{name}", compress_type=zipfile.ZIP_STORED)
                members.append(f"{folder}/{name}")
            for name, data in texts:
                zf.writestr(f"{folder}/{name}", data, compress_type=zipfile.ZIP_DEFLATED)
                members.append(f"{folder}/{name}")
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return members


def meeting_layout(record: MeetingRecord, track: TrackInfo) -> MeetingLayout:
    """The meeting's key layout, its prefix read from a final track's key
    (`<prefix>/<guild>/<meeting>/final/<file>`). InvalidInputError when the key is not
    in that layout."""
    final_dir = posixpath.dirname(track.key)
    tail = f"{record.guild_id}/{record.meeting_id}/final"
    if final_dir != tail and not final_dir.endswith("/" + tail):
        raise InvalidInputError(
            f"recordings row {track.recording_id}: key {track.key!r} is not under "
            f"<prefix>/{tail}/")
    prefix = final_dir[: -len(tail)].rstrip("/")
    return MeetingLayout(prefix, record.guild_id, record.meeting_id)
