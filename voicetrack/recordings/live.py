"""The audio so far of a live meeting: `live/manifest.json` and its tracks, by link.

While a session records, the operator's live Jobs keep `<prefix>/<guild>/<meeting>/live/`
current (one MP3 per speaker and the mix, up to the last transcoded chunk, and a
`LiveManifest` with `assembly: incremental`: each track's size and the S3 ETag of the
object the live Job wrote, no sha256, since a live Job extends the last object without
reading it; docs/recordings.md, "The audio so far"). The prefix is not in the meetings
table, so it is read from a temp row's raw chunk key
(`<prefix>/<guild>/<meeting>/chunks/…`), as `service.meeting_layout` reads it from a final
track's key.

Errors: InvalidInputError when the meeting is not live (its final tracks are what
`links` gives), or its live manifest names a track whose name is not a safe file name
component or whose key is not in the meeting's `live/` (`voicetrack.layout`);
NotFoundError when it is live but there is no audio so far yet (no chunk recorded, or
none assembled: the live manifest is absent), or TRACK names no live track.

`download_live` saves the live tracks verified by what the manifest says of them: the
size, and the ETag (the GET asks for that object only, If-Match). The bytes themselves
are checked by the MD5 when the ETag is a single-part one (32 hex digits) and the object
is not SSE-KMS/SSE-C encrypted (then the ETag is the MD5); else (a multipart object, over
5 MiB, ETag `<md5>-<parts>`; or an encrypted one) by the track's own LAME Info tag
(`voicetrack.lametag`); or by the sha256 a manifest written before live tracks had ETags
gives.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from voicetrack.db.queries import MeetingRecord
from voicetrack.errors import (
    InvalidInputError,
    NotFoundError,
    PreconditionFailed,
    TemporaryFailure,
)
from voicetrack.lametag import LameCheck
from voicetrack.layout import MIX_TRACK, MeetingLayout, is_track_name
from voicetrack.manifests import LiveManifest, LiveTrack
from voicetrack.objectstore import DEFAULT_LINK_S, ObjectStore
from voicetrack.recordings.models import ChecksumMismatch, TrackLink
from voicetrack.recordings.service import RecordingsReader, part_beside

FETCH_ATTEMPTS = 3
"""Times `download_live` fetches a track that a newer live Job replaces meanwhile."""
REPLACED_WAIT_S = 60.0
"""How long (s) `download_live` waits, after a track's If-Match is refused, for the live
manifest naming the new object: a live Job writes it after its objects; about two live
intervals (VOICETRACK_LIVE_INTERVAL_SECONDS, 30 s by default)."""
MANIFEST_POLL_S = 2.0
"""How often (s) the live manifest is read again meanwhile."""
S3_FAILURES_TO_STOP = 2
"""Tracks in a row S3 fails for (TemporaryFailure) after which `download_live` tries no
more: an S3 that is away costs each try the client's time-outs and retries (about 20 s for
an address that does not answer), so a 20-speaker meeting would take minutes to say so."""
_MD5_ETAG = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class LiveAudio:
    """A live meeting's audio so far: its record, `live/manifest.json` (tracks with
    `durationMs`, bytes, ETag) and that manifest's key."""

    record: MeetingRecord
    manifest: LiveManifest
    manifest_key: str

    def as_dict(self) -> dict[str, Any]:
        """`{duration_ms, manifest_key, tracks: [{track, format, key, bytes, etag, sha256,
        duration_ms, channels}]}`: `etag` null, `sha256` set only in a manifest from
        before live tracks had ETags; else `sha256` null."""
        return {"duration_ms": self.manifest.duration_ms, "manifest_key": self.manifest_key,
                "tracks": [{"track": t.track, "format": t.format, "key": t.key,
                            "bytes": t.bytes, "etag": t.etag, "sha256": t.sha256,
                            "duration_ms": t.duration_ms, "channels": t.channels}
                           for t in self.manifest.tracks]}


@dataclass(frozen=True)
class LiveFile:
    """A live track saved at `path`, and how it was verified (`check`: `size and ETag
    <etag>, MD5` when the ETag is the bytes' MD5, `size and ETag <etag>, LAME music and
    tag CRCs` when it is not; or `sha256 <hex>`)."""

    track: LiveTrack
    path: Path
    check: str


def layout_from_raw_key(record: MeetingRecord, key: str) -> MeetingLayout:
    """The meeting's key layout from one of its raw chunk keys
    (`<prefix>/<guild>/<meeting>/chunks/<index>/<user>.<ext>`). InvalidInputError when the
    key is not in that layout."""
    tail = f"{record.guild_id}/{record.meeting_id}/chunks/"
    at = key.find(tail)
    if at < 0 or (at > 0 and key[at - 1] != "/"):
        raise InvalidInputError(f"temp row key {key!r} of meeting {record.meeting_id} is "
                                f"not under <prefix>/{tail}")
    return MeetingLayout(key[:at].rstrip("/"), record.guild_id, record.meeting_id)


async def live_audio(reader: RecordingsReader, ref: str) -> LiveAudio:
    """The audio so far of live meeting `ref` (a meeting id or `namespace/session-name`).
    InvalidInputError when it is not live, or its manifest is not one or names a track
    by an unsafe name (`is_track_name`) or at a key outside its `live/`
    (`MeetingLayout.holds_live_track`); NotFoundError when there is none yet."""
    record = await reader.resolve(ref)
    if not record.live:
        raise InvalidInputError(
            f"meeting {record.meeting_id} is not live (status {record.status}): its audio "
            "is in the final tracks; leave out --live")
    rows = await reader.db.get_temp_recordings_for_meeting(record.meeting_id)
    keys = [r.pcm_path for r in rows if r.pcm_path]
    if not keys:
        raise NotFoundError(f"meeting {record.meeting_id} is live but has no audio so far "
                            "yet: no chunk has been recorded")
    layout = layout_from_raw_key(record, keys[0])
    store = reader.store
    try:
        doc = await asyncio.to_thread(store.get_json, layout.live_manifest_key)
    except NotFoundError:
        raise NotFoundError(
            f"meeting {record.meeting_id} is live but has no audio so far yet: no chunk "
            f"has been assembled ({layout.live_manifest_key} is absent; the operator "
            "assembles one every VOICETRACK_LIVE_INTERVAL_SECONDS)") from None
    try:
        manifest = LiveManifest.model_validate(doc)
    except ValidationError as err:
        raise InvalidInputError(f"{layout.live_manifest_key}: not a manifest: {err}"
                                ) from err
    for t in manifest.tracks:  # as the web page refuses them (voicetrack.layout)
        if not is_track_name(t.track) or not layout.holds_live_track(t.key):
            raise InvalidInputError(
                f"{layout.live_manifest_key}: track {t.track!r} at {t.key!r} is refused: "
                "a track name must be 1-64 of A-Z a-z 0-9 _ - and its key an object "
                f"directly in {layout.live_root}")
    return LiveAudio(record, manifest, layout.live_manifest_key)


async def live_links(reader: RecordingsReader, ref: str, track: str | None = None,
                     expires_s: int = DEFAULT_LINK_S) -> tuple[LiveAudio, list[TrackLink]]:
    """Presigned links minted now, valid `expires_s` seconds, to the audio so far of live
    meeting `ref`: every live track, or the one named `track` (a user id or `mix`). Errors
    as `live_audio`, and NotFoundError naming TRACK and the live tracks there are."""
    live = await live_audio(reader, ref)
    tracks = live.manifest.tracks
    if track is not None:
        wanted = MIX_TRACK if track in ("mixed", MIX_TRACK) else track
        tracks = [t for t in tracks if t.track == wanted]
        if not tracks:
            raise NotFoundError(
                f"TRACK: the audio so far of meeting {live.record.meeting_id} has no track "
                f"{track!r}; it has {', '.join(t.track for t in live.manifest.tracks)}")
    store = reader.store
    links = []
    for t in tracks:
        link = await asyncio.to_thread(store.presigned_link, t.key, expires_s)
        links.append(TrackLink(t.track, t.kind, t.user_id, link))
    return live, links


async def download_live(reader: RecordingsReader, ref: str, dest: Path,
                        on_file: Callable[[str], None] | None = None,
                        replaced_wait_s: float = REPLACED_WAIT_S,
                        poll_s: float = MANIFEST_POLL_S
                        ) -> tuple[LiveAudio, list[LiveFile]]:
    """Save the audio so far of live meeting `ref` in directory `dest` (made if missing),
    one `<meeting>-live-<track>.mp3` per live track, each verified as the module docstring
    says. A track a newer live Job replaced meanwhile (the GET's If-Match refused, 412) is
    fetched again once the manifest names its new ETag: a live Job writes the manifest
    after its objects, so the manifest is read again every `poll_s` seconds, for at most
    `replaced_wait_s` (about two live intervals); FETCH_ATTEMPTS fetches in all. The files
    may so cover different lengths. Errors as `live_audio`; after every other track is
    saved, ChecksumMismatch naming every file that does not match (such a file is not
    kept, nor an older copy at its name) and every track not fetched, or TemporaryFailure
    naming the tracks not fetched when none is damaged (replaced and no newer manifest in
    time, replaced FETCH_ATTEMPTS times, gone from the manifest, or S3 failing while it
    was fetched: a TemporaryFailure of one track does not stop the others, but after
    `S3_FAILURES_TO_STOP` tracks in a row the rest are not tried, since each try of an S3
    that is away costs the client's whole time-out and retries). Either error
    names the files saved and verified too. TemporaryFailure as well when S3 is away
    before any track (the manifest unread)."""
    live = await live_audio(reader, ref)
    dest.mkdir(parents=True, exist_ok=True)
    saved: list[LiveFile] = []
    bad: list[tuple[str, str]] = []
    missed: list[tuple[str, str]] = []
    stale: set[tuple[tuple[str, str | None], ...]] = set()  # manifests waited out
    failing = 0  # tracks in a row S3 failed for
    for name in [t.track for t in live.manifest.tracks]:
        target = dest / f"{live.record.meeting_id}-live-{name}.mp3"
        if failing >= S3_FAILURES_TO_STOP:
            missed.append((target.name, f"not tried: S3 failed for the {failing} tracks "
                                        "before it"))
            if on_file:
                on_file(target.name)
            continue
        live, result = await _fetch_current(reader, ref, live, name, target,
                                            replaced_wait_s, poll_s, stale)
        failing = failing + 1 if isinstance(result, _Missed) and result.s3_failed else 0
        if isinstance(result, LiveFile):
            saved.append(result)
        elif isinstance(result, _Missed):
            missed.append((target.name, result.why))
        else:
            bad.append((target.name, result))
        if on_file:
            on_file(target.name)
    said = "; ".join(f"{name}: {why}" for name, why in bad + missed)
    kept = (f"saved and verified: {', '.join(f.path.name for f in saved)}" if saved
            else "no track saved")
    if bad:
        raise ChecksumMismatch(
            said + f" (not saved: a damaged object in S3 is not kept, a track not fetched "
            f"has no file; {kept})", [name for name, _ in bad + missed])
    if missed:
        raise TemporaryFailure(said + f" (not saved; {kept}; try again)")
    return live, saved


@dataclass(frozen=True)
class _Missed:
    """Why a track was not fetched (not a damaged object: it may be there next time)."""

    why: str
    s3_failed: bool = False
    """S3 failed (a TemporaryFailure): counted towards `S3_FAILURES_TO_STOP`."""


def _fingerprint(live: LiveAudio) -> tuple[tuple[str, str | None], ...]:
    """A live manifest's tracks and ETags: the same for a manifest not rewritten."""
    return tuple((t.track, t.etag) for t in live.manifest.tracks)


async def _fetch_current(reader: RecordingsReader, ref: str, live: LiveAudio, name: str,
                         target: Path, replaced_wait_s: float, poll_s: float,
                         stale: set[tuple[tuple[str, str | None], ...]]
                         ) -> tuple[LiveAudio, LiveFile | str | _Missed]:
    """Fetch live track `name` as `live`'s manifest describes it; when its object was
    replaced meanwhile, wait for the manifest naming the new one (polled every `poll_s`
    s, at most `replaced_wait_s` s) and fetch that, FETCH_ATTEMPTS fetches at most (no
    wait after the last). A manifest already waited out for another track (in `stale`,
    which this adds to) is not waited for again, only read again once at once (a newer
    Job may have written it since): a Job that died between its objects and its
    manifest costs one wait per download, not one per track. Returns the manifest last
    read and `fetch_live_track`'s result, or _Missed (also for an object gone from S3:
    the session ended and `live/` was emptied; and for a TemporaryFailure fetching it:
    S3 away or erring, a body cut short; no file or part is left for it then)."""
    loop = asyncio.get_running_loop()
    for attempt in range(FETCH_ATTEMPTS):
        track = next((t for t in live.manifest.tracks if t.track == name), None)
        if track is None:
            return live, _Missed(f"gone from {live.manifest_key} while it was downloaded")
        try:
            result = await asyncio.to_thread(fetch_live_track, reader.store, track, target)
        except NotFoundError as err:
            return live, _Missed(f"gone from S3 while it was downloaded ({err})")
        except TemporaryFailure as err:  # S3 away, a 5xx, a body cut short: this track only
            return live, _Missed(f"not fetched: {err}", s3_failed=True)
        if result is not None:
            return live, result
        if attempt == FETCH_ATTEMPTS - 1:
            break
        waited_out = _fingerprint(live) in stale
        deadline = loop.time() + (0 if waited_out else replaced_wait_s)
        reread = False
        while True:  # until the manifest names another object (or none) for the track
            left = deadline - loop.time()
            if left <= 0 and reread:
                stale.add(_fingerprint(live))
                return live, _Missed(
                    f"replaced by a newer live Job while it was downloaded, and "
                    f"{live.manifest_key} still names the old object (ETag {track.etag}) "
                    + ("when read again at once (the manifest before was already waited "
                       "out for another track)" if waited_out
                       else f"{replaced_wait_s:g} s later"))
            if left > 0:
                await asyncio.sleep(min(poll_s, left))
            reread = True
            try:
                live = await live_audio(reader, ref)
            except (InvalidInputError, TemporaryFailure) as err:  # ended meanwhile, its
                return live, _Missed(str(err))  # manifest gone or refused, or S3 away
            now = next((t for t in live.manifest.tracks if t.track == name), None)
            if now is None or now.etag != track.etag:
                break
    return live, _Missed(f"replaced by a newer live Job {FETCH_ATTEMPTS} times while it "
                         "was downloaded")


def _encrypted(headers: Mapping[str, str]) -> bool:
    """Whether a GET response's (lower-cased) headers say the object is stored with
    SSE-KMS or SSE-C, whose single-part ETag is not the MD5 of the bytes (S3's
    "Checking object integrity"; SSE-S3, `AES256`, keeps the MD5)."""
    sse = headers.get("x-amz-server-side-encryption", "").lower()
    return sse.startswith("aws:kms") or (
        "x-amz-server-side-encryption-customer-algorithm" in headers)


def fetch_live_track(store: ObjectStore, t: LiveTrack, target: Path) -> LiveFile | str | None:
    """Download live track `t` to `target` through a hidden `.part` file: the file; why
    it does not match `t` (str; then neither the part nor `target` is left); None when
    the object is no longer the one `t` describes (the GET's If-Match refused, 412: a
    newer live Job's). Checked: the size; then the MD5 when the ETag is a single-part
    one and the object is not SSE-KMS/SSE-C encrypted, else the sha256 of an older
    manifest, else the track's LAME Info tag (`voicetrack.lametag`: the CRCs of its Info
    frame and of its audio, and its byte count), which every live track carries."""
    part = part_beside(target)
    md5, sha, lame = hashlib.md5(usedforsecurity=False), hashlib.sha256(), LameCheck()
    headers: dict[str, str] = {}
    try:
        try:
            with part.open("wb") as out:
                for block in store.iter_range(
                        t.key, 0, t.etag,
                        on_headers=lambda h: headers.update(
                            {k.lower(): v for k, v in h.items()})):
                    out.write(block)
                    md5.update(block)
                    sha.update(block)
                    lame.update(block)
        except PreconditionFailed:
            if t.etag:  # If-Match refused: replaced since the manifest was read
                return None
            raise
        size = part.stat().st_size
        by_md5 = bool(t.etag and _MD5_ETAG.fullmatch(t.etag) and not _encrypted(headers))
        why = None
        if size != t.bytes:
            why = f"{size} bytes, the live manifest says {t.bytes}"
        elif by_md5 and md5.hexdigest() != t.etag:
            why = f"MD5 {md5.hexdigest()}, the live manifest's ETag is {t.etag}"
        elif t.sha256 and sha.hexdigest() != t.sha256:
            why = f"sha256 {sha.hexdigest()}, the live manifest says {t.sha256}"
        elif not by_md5 and not t.sha256 and (said := lame.verdict()):
            why = f"LAME Info tag: {said}"
        if why:
            target.unlink(missing_ok=True)
            return why
        part.replace(target)
    finally:
        part.unlink(missing_ok=True)
    if t.sha256:
        return LiveFile(t, target, f"sha256 {t.sha256}")
    check = ", MD5" if by_md5 else ", LAME music and tag CRCs"
    return LiveFile(t, target, f"size and ETag {t.etag}{check}" if t.etag
                    else f"size{check}")
