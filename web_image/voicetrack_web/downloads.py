"""The zip bundle and the "audio so far" of a live meeting: handlers under the same access
rule as every other meeting route (`context.meeting_of`: 404 when not visible).

- `POST /meetings/{meeting}/bundle` (CSRF form field `csrf_token`): the Audacity zip of
  `voicetrack recordings zip`, built by the same code (`RecordingsReader.bundle`: one
  equal-length 48 kHz FLAC per speaker and the mix from t = 0, the `.lof`, `manifest.json`,
  `timeline.json`) in a fresh directory under the pod's temp dir, streamed as an
  attachment and deleted once sent (or when building fails, or the client leaves while
  it is built: the build is stopped, its ffmpeg too, and its slot held until it has).
  Nothing is written to S3. The pod's disk failing it (`/tmp` full or gone) is 503 with
  `Retry-After`, its slot freed at once. At most `max_bundles` are
  held at once (built or being sent, `bundles.BundleSlots`), one per user; more are
  answered 429 with `Retry-After`.
- `GET /api/meetings/{meeting}/live`: the live manifest the transcoder's `assemble_live`
  writes at `MeetingLayout.live_manifest_key` (`live/manifest.json`, a `LiveManifest`):
  `{version, duration_ms, tracks: [{track, name, kind, format, duration_ms, bytes,
  audio_url, link_url}]}`; `version` is the manifest's tracks' sizes and ETags hashed
  (sha256s in a manifest from before live tracks had ETags): it changes when any track
  does. 404 when the meeting has final tracks or no live manifest yet.
- `GET /meetings/{meeting}/live/{track}`: 302 to a presigned URL of the live track.
- `POST /api/meetings/{meeting}/live-link/{track}` (CSRF header): `{url,
  expires_in_seconds, format}`, saved as `<meeting>-live-<track>.<format>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import LiveManifest, LiveTrack
from voicetrack.recordings.models import Bundle
from voicetrack_web.access import MeetingView
from voicetrack_web.bundles import RETRY_AFTER_S, BundleResponse, release_when_stopped
from voicetrack_web.context import check_csrf, meeting_of, not_found, state_of

LIVE_AUDIO_LINK_S = 3600
"""Validity (s) of the presigned URLs the live players stream from."""
DISCONNECT_POLL_S = 0.5
"""How often (s) a bundle's build checks that its client is still there."""
T = TypeVar("T")


class ClientGone(Exception):
    """The client closed the connection while its answer was being made."""


async def bundle(request: Request) -> Response:
    """`POST /meetings/{meeting}/bundle`: the zip as `voicetrack-<meeting>.zip`. 403
    without the form's CSRF token; 404 when not visible or not promoted yet; 429 with
    `Retry-After` when the user's bundle is still held or every slot is; 502 when a
    source is damaged or ffmpeg fails (the message says which); 503 with `Retry-After`
    on an OSError (the pod's temp dir full, read-only or gone). The slot taken here is
    freed on every path: by the response once sent, else once the build (if it started)
    has stopped."""
    form = await request.form()
    token = form.get("csrf_token")
    check_csrf(request, token if isinstance(token, str) else None)
    viewer, view = await meeting_of(request, api=False)
    if not view.tracks:
        raise not_found()
    st = state_of(request)
    slot = st.bundles.take(viewer.user_id)
    if slot is None:
        raise HTTPException(429, "a zip is being made or sent for you or others already: "
                            "try again shortly", {"Retry-After": str(RETRY_AFTER_S)})
    name = f"voicetrack-{view.id}.zip"
    work: Path | None = None
    build: asyncio.Future[Bundle] | None = None
    response: BundleResponse | None = None
    try:
        work = Path(tempfile.mkdtemp(prefix="voicetrack-web-zip-"))
        build = asyncio.ensure_future(st.reader.bundle(view.id, work / name))
        await _unless_client_leaves(request, build)
        response = BundleResponse(work / name, work, slot, name)
        return response
    except ClientGone:
        return Response(status_code=499)  # nobody reads it; uvicorn drops the connection
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from exc
    except (InvalidInputError, TemporaryFailure) as exc:
        raise HTTPException(502, f"the zip could not be built: {exc}") from exc
    except OSError as exc:  # the pod's disk (or limits): no path in the answer
        raise HTTPException(503, "the zip cannot be made on the server now "
                            f"({exc.strerror or type(exc).__name__}); try again shortly",
                            {"Retry-After": str(RETRY_AFTER_S)}) from exc
    finally:
        if response is None:  # not handed to the response: freed here, once
            release_when_stopped(build, work, slot)


async def _unless_client_leaves(request: Request, task: asyncio.Future[T]) -> T:
    """`task`'s result; once the client disconnects (checked every DISCONNECT_POLL_S)
    `task` is cancelled and awaited until it has stopped (the bundle's build stops its
    ffmpeg and waits for its thread), then ClientGone is raised."""
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})


def live_layout(view: MeetingView) -> MeetingLayout:
    """The meeting's key layout from its root; 404 when no object names it yet."""
    tail = f"{view.guild_id}/{view.id}"
    if view.root is None or not view.root.endswith(tail):
        raise HTTPException(404, "no audio recorded yet")
    return MeetingLayout(view.root[: -len(tail)].rstrip("/"), view.guild_id, view.id)


async def _live_manifest(request: Request, view: MeetingView) -> LiveManifest:
    """The live manifest; 404 when the meeting is promoted or none was written yet."""
    if view.tracks:
        raise HTTPException(404, "the meeting is finished: its final tracks are there")
    key = live_layout(view).live_manifest_key
    try:
        doc = await asyncio.to_thread(state_of(request).store.get_json, key)
        return LiveManifest.model_validate(doc)
    except NotFoundError:
        raise HTTPException(404, "no audio so far yet") from None
    except (ValidationError, ValueError) as exc:
        raise HTTPException(502, f"{key}: not a live manifest") from exc


def _live_track(manifest: LiveManifest, view: MeetingView, name: str) -> LiveTrack:
    """The manifest's track `name`, only when its key is directly in the meeting's `live/`
    (`MeetingLayout.holds_live_track`, the check `recordings download --live` makes)."""
    layout = live_layout(view)
    track = next((t for t in manifest.tracks if t.track == name), None)
    if track is None or not layout.holds_live_track(track.key):
        raise not_found()
    return track


def live_version(manifest: LiveManifest) -> str:
    """A short digest that changes whenever any live track (or the length) does: of each
    track its size and ETag (the object's own, new on every write), or its sha256 in a
    manifest from before live tracks had ETags."""
    h = hashlib.sha256(str(manifest.duration_ms).encode())
    for t in manifest.tracks:
        h.update(f"{t.track}:{t.bytes}:{t.etag or ''}:{t.sha256 or ''}".encode())
    return h.hexdigest()[:16]


async def live_json(request: Request) -> Response:
    """`GET /api/meetings/{meeting}/live` (see the module docstring)."""
    _, view = await meeting_of(request, api=True)
    manifest = await _live_manifest(request, view)
    names = await state_of(request).names.names(
        view.guild_id, [t.user_id for t in manifest.tracks if t.user_id])
    version = live_version(manifest)
    tracks: list[dict[str, Any]] = [{
        "track": t.track, "kind": t.kind, "format": t.format, "duration_ms": t.duration_ms,
        "bytes": t.bytes, "name": names.get(t.user_id, t.user_id) if t.user_id else None,
        "audio_url": f"/meetings/{view.id}/live/{t.track}?v={version}",
        "link_url": f"/api/meetings/{view.id}/live-link/{t.track}"} for t in manifest.tracks]
    return JSONResponse({"version": version, "duration_ms": manifest.duration_ms,
                         "tracks": tracks}, headers={"Cache-Control": "no-store"})


async def live_audio(request: Request) -> Response:
    """`GET /meetings/{meeting}/live/{track}`: 302 to a presigned URL of the live track."""
    _, view = await meeting_of(request, api=False)
    track = _live_track(await _live_manifest(request, view), view,
                        request.path_params["track"])
    link = await asyncio.to_thread(state_of(request).store.presigned_link, track.key,
                                   LIVE_AUDIO_LINK_S)
    return RedirectResponse(link.url, 302, headers={"Cache-Control": "no-store"})


async def live_link(request: Request) -> Response:
    """`POST /api/meetings/{meeting}/live-link/{track}` (CSRF header): a download link."""
    check_csrf(request, request.headers.get("x-csrf-token"))
    _, view = await meeting_of(request, api=True)
    track = _live_track(await _live_manifest(request, view), view,
                        request.path_params["track"])
    st = state_of(request)
    name = f"{view.id}-live-{track.track}.{track.format}"
    minted = await asyncio.to_thread(st.store.presigned_link, track.key,
                                     st.settings.link_seconds, name)
    return JSONResponse(minted.as_dict(), headers={"Cache-Control": "no-store"})
