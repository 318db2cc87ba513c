"""The Starlette application: pages, their JSON, the OAuth2 log-in and presigned links.

Routes (every one behind the log-in but `/`, `/auth/*`, `/healthz` and `/static`):

    GET  /                                     guilds the user can see, or the log-in button
    GET  /auth/login                           → Discord's authorize URL (state in the cookie)
    GET  /auth/callback?code&state             state checked, code exchanged, cookie set
    POST /auth/logout                          (CSRF) session ended here, token revoked
    GET  /guilds/{guild}                       the guild's meetings (page; polls the JSON)
    GET  /api/guilds/{guild}/meetings          {"meetings": [MeetingView.as_dict()]}
    GET  /meetings/{meeting}                   players, waveforms, timeline, downloads
    GET  /api/meetings/{meeting}               MeetingView.as_dict() plus track URLs
    GET  /api/meetings/{meeting}/peaks/{track} the track's peaks JSON (audiowaveform format)
    GET  /api/meetings/{meeting}/timeline      `final/timeline.json`, 404 when absent
    GET  /meetings/{meeting}/audio/{track}     302 to a presigned URL (for the <audio> players)
    POST /api/meetings/{meeting}/link/{track}  (CSRF) {url, expires_in_seconds, format}
    POST /meetings/{meeting}/bundle            (CSRF form) the Audacity zip, streamed
    GET  /api/meetings/{meeting}/live          the audio so far (`live/manifest.json`)
    GET  /meetings/{meeting}/live/{track}      302 to a presigned URL of the live track
    POST /api/meetings/{meeting}/live-link/{track} (CSRF) {url, expires_in_seconds, format}

Speakers are shown by their guild display name (`members.MemberNames`, bot token) or id.

Unknown, another guild's and not-visible meetings are all 404, on pages and JSON alike
(`access.MeetingAccess`). Without a valid cookie, pages redirect to `/` and JSON answers
401. The cookie is Starlette's `SessionMiddleware` (itsdangerous-signed JSON with its
timestamp; refused when forged or older than `session_max_age_s`), HttpOnly,
SameSite=Lax, Secure over https; the Discord token in it is encrypted and a logged-out
session's id is refused (`sessions`). State-changing requests (POST) need the session's CSRF
token in `X-CSRF-Token` or the `csrf_token` form field, and a same-origin `Origin` header
when the browser sends one.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voicetrack.errors import NotFoundError
from voicetrack.manifests import FinalManifest
from voicetrack_web import downloads
from voicetrack_web.access import MeetingView
from voicetrack_web.context import (
    HERE,
    Redirect,
    State,
    check_csrf,
    logged_in,
    meeting_of,
    not_found,
    page,
    refresh_guilds,
    require_viewer,
    state_of,
    track_of,
)
from voicetrack_web.discord import DiscordAuthError
from voicetrack_web.sessions import new_session_id
from voicetrack_web.settings import WebSettings

SESSION_COOKIE = "voicetrack_session"
log = logging.getLogger("voicetrack_web")
AUDIO_LINK_S = 3600
"""Validity (s) of the presigned URLs the players stream from (one listening session)."""


# -- pages ------------------------------------------------------------------------------

async def index(request: Request) -> Response:
    """`/`: the log-in button, or the guilds the user can see (refreshed when stale;
    `?error=expired` when Discord refused the saved token)."""
    if logged_in(request) and not await refresh_guilds(request):
        return RedirectResponse("/?error=expired", 303)
    return page(request, "index.html", error=request.query_params.get("error"))


async def login(request: Request) -> Response:
    """`/auth/login`: a random `state` added to the session; 303 to Discord. The session
    is replaced only at the callback (a link from another site cannot log anyone out)."""
    state = secrets.token_urlsafe(24)
    request.session["oauth_state"] = state
    return RedirectResponse(state_of(request).discord.authorize_url(state), 303)


async def callback(request: Request) -> Response:
    """`/auth/callback`: 400 unless `state` is the session's (RFC 6749 §10.12); then the
    code is exchanged and the session replaced by the user's (guilds with meetings only)."""
    expected = request.session.pop("oauth_state", None)
    got = request.query_params.get("state")
    if not expected or not got or not secrets.compare_digest(expected, got):
        raise HTTPException(400, "log-in state missing or wrong; start again")
    if "error" in request.query_params or "code" not in request.query_params:
        return RedirectResponse("/?error=denied", 303)
    st = state_of(request)
    try:
        who = await st.discord.identify(request.query_params["code"])
    except DiscordAuthError as exc:
        raise HTTPException(502, f"Discord log-in failed: {exc}") from exc
    with_meetings = await st.access.guilds_with_meetings(g.id for g in who.guilds)
    request.session.clear()  # a new session for a new log-in (no fixation)
    request.session.update({
        "sid": new_session_id(), "uid": who.user_id, "name": who.name,
        "csrf": secrets.token_urlsafe(24), "tok": st.tokens.seal(who.access_token),
        "guilds_at": time.time(),
        "guilds": [[g.id, g.name, g.manager] for g in who.guilds if g.id in with_meetings]})
    return RedirectResponse("/", 303)


async def logout(request: Request) -> Response:
    """`POST /auth/logout` (CSRF form field): the session's id is refused from now on
    (a copy of the cookie no longer works), its Discord token revoked (best effort) and
    the cookie cleared."""
    form = await request.form()
    token = form.get("csrf_token")
    check_csrf(request, token if isinstance(token, str) else None)
    st = state_of(request)
    sid = request.session.get("sid")
    if sid:
        st.revoked.revoke(str(sid))
    access = st.tokens.open(request.session.get("tok"))
    request.session.clear()
    if access and not await st.discord.revoke(access):
        log.warning("log-out: Discord did not revoke the access token")
    return RedirectResponse("/", 303)


async def guild_page(request: Request) -> Response:
    """`/guilds/{guild}`: the meetings page; 404 for a guild the user is not in."""
    viewer = await require_viewer(request, api=False)
    guild = request.path_params["guild"]
    meetings = await state_of(request).access.meetings(viewer, guild)
    if meetings is None:
        raise HTTPException(404, "no such guild")
    name = next((g[1] for g in request.session["guilds"] if g[0] == guild), guild)
    return page(request, "guild.html", guild_id=guild, guild_name=name,
                meetings=await _with_names(request, guild, meetings))


async def guild_json(request: Request) -> Response:
    """`/api/guilds/{guild}/meetings`: `{"meetings": [...]}` (the page polls it)."""
    viewer = await require_viewer(request, api=True)
    meetings = await state_of(request).access.meetings(viewer, request.path_params["guild"])
    if meetings is None:
        raise HTTPException(404, "no such guild")
    return JSONResponse({"meetings": await _with_names(
        request, request.path_params["guild"], meetings)})


async def _with_names(request: Request, guild: str, meetings: list[MeetingView]
                      ) -> list[dict[str, Any]]:
    """`as_dict()` of each meeting plus `speaker_names` (`[display name]`, in `speakers`
    order: the member's guild name, else the id)."""
    every = [u for m in meetings for u in m.speakers]
    names = await state_of(request).names.names(guild, every)
    return [{**m.as_dict(), "speaker_names": [names[u] for u in m.speakers]}
            for m in meetings]


async def _detail(request: Request, view: MeetingView) -> dict[str, Any]:
    """The meeting's JSON with its tracks' URLs, `names` (`{user id: display name}` of
    every speaker) and `live_url` (the audio so far, while recording)."""
    doc = view.as_dict()
    doc["names"] = await state_of(request).names.names(view.guild_id, view.speakers)
    for t in doc["tracks"]:
        t["audio_url"] = f"/meetings/{view.id}/audio/{t['track']}"
        t["peaks_url"] = f"/api/meetings/{view.id}/peaks/{t['track']}"
        t["link_url"] = f"/api/meetings/{view.id}/link/{t['track']}"
    doc["timeline_url"] = f"/api/meetings/{view.id}/timeline"
    doc["live_url"] = f"/api/meetings/{view.id}/live"
    doc["bundle_url"] = f"/meetings/{view.id}/bundle"
    return doc


async def meeting_page(request: Request) -> Response:
    """`/meetings/{meeting}`: players, waveforms, timeline, downloads; 404 if not visible."""
    _, view = await meeting_of(request, api=False)
    return page(request, "meeting.html", meeting=await _detail(request, view))


async def meeting_json(request: Request) -> Response:
    """`/api/meetings/{meeting}`: the meeting with its tracks' URLs; 404 if not visible."""
    _, view = await meeting_of(request, api=True)
    return JSONResponse(await _detail(request, view))


def _final_dir(view: MeetingView) -> str:
    if not view.tracks:
        raise not_found()
    return posixpath.dirname(view.tracks[0].object_key)


async def _get_json(request: Request, key: str) -> Any:
    try:
        return await asyncio.to_thread(state_of(request).store.get_json, key)
    except NotFoundError:
        raise HTTPException(404, "not there") from None


async def peaks(request: Request) -> Response:
    """`/api/meetings/{meeting}/peaks/{track}`: the track's peaks JSON from S3 (the key in
    `final/manifest.json`, else `final/waveform-<track>.json`); 404 when the manifest's
    key is not under the meeting's `final/` (as the track keys are checked)."""
    _, view = await meeting_of(request, api=True)
    track = track_of(view, request.path_params["track"])
    final = _final_dir(view)
    key = f"{final}/waveform-{track.track}.json"
    try:
        manifest = FinalManifest.model_validate(await asyncio.to_thread(
            state_of(request).store.get_json, f"{final}/manifest.json"))
        key = next((t.peaks_key for t in manifest.tracks
                    if t.track == track.track and t.peaks_key), key)
    except (NotFoundError, ValidationError, ValueError):
        pass  # no readable manifest: the conventional key
    if not key.startswith(f"{final}/") or ".." in key:
        raise not_found()
    return JSONResponse(await _get_json(request, key),
                        headers={"Cache-Control": "private, max-age=300"})


async def timeline(request: Request) -> Response:
    """`/api/meetings/{meeting}/timeline`: `final/timeline.json`; 404 when absent."""
    _, view = await meeting_of(request, api=True)
    return JSONResponse(await _get_json(request, f"{_final_dir(view)}/timeline.json"))


async def audio(request: Request) -> Response:
    """`/meetings/{meeting}/audio/{track}`: 302 to a presigned URL valid AUDIO_LINK_S."""
    _, view = await meeting_of(request, api=False)
    track = track_of(view, request.path_params["track"])
    link = await asyncio.to_thread(state_of(request).store.presigned_link, track.object_key,
                                   AUDIO_LINK_S)
    return RedirectResponse(link.url, 302, headers={"Cache-Control": "no-store"})


async def link(request: Request) -> Response:
    """`POST /api/meetings/{meeting}/link/{track}` (CSRF header): `{url,
    expires_in_seconds, format}` valid `link_seconds`, saved by a browser as
    `<meeting>-<track>.<format>` (not played); 403 without the token."""
    check_csrf(request, request.headers.get("x-csrf-token"))
    _, view = await meeting_of(request, api=True)
    track = track_of(view, request.path_params["track"])
    st = state_of(request)
    name = f"{request.path_params['meeting']}-{track.track}.{track.format}"
    minted = await asyncio.to_thread(st.store.presigned_link, track.object_key,
                                     st.settings.link_seconds, name)
    return JSONResponse(minted.as_dict(), headers={"Cache-Control": "no-store"})


async def healthz(request: Request) -> Response:
    """`/healthz`: the process answers (no dependency checked)."""
    return JSONResponse({"status": "ok"})


# -- errors and headers -----------------------------------------------------------------

async def http_error(request: Request, exc: Exception) -> Response:
    """JSON `{"error"}` under `/api/` and for 401; the error page otherwise."""
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/api/") or exc.status_code == 401:
        return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)
    response = page(request, "error.html", status=exc.status_code, detail=exc.detail)
    response.status_code = exc.status_code
    response.headers.update(exc.headers or {})
    return response


async def redirect(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Redirect)
    return RedirectResponse(exc.url, 303)


class SecurityHeaders:
    """Adds CSP (scripts from this origin only; inline styles allowed because wavesurfer.js
    styles its shadow DOM with a `<style>` element; media from the S3 origin that presigned
    URLs point at), no framing, no sniffing, no referrer to other origins."""

    def __init__(self, app: ASGIApp, media_origin: str) -> None:
        self.app = app
        self.csp = ("default-src 'self'; img-src 'self' data:; "
                    f"media-src 'self' {media_origin}; object-src 'none'; "
                    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; "
                    "base-uri 'none'; form-action 'self'")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", self.csp.encode()),
                            (b"x-frame-options", b"DENY"),
                            (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"same-origin")]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(settings: WebSettings) -> Starlette:
    """The ASGI app for `settings` (its clients are made at start-up and closed at exit)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.voicetrack = State(settings)
        try:
            yield
        finally:
            await app.state.voicetrack.close()

    s3 = urlsplit(settings.s3.public_endpoint or settings.s3.endpoint)
    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/auth/login", login),
        Route("/auth/callback", callback),
        Route("/auth/logout", logout, methods=["POST"]),
        Route("/guilds/{guild:str}", guild_page),
        Route("/api/guilds/{guild:str}/meetings", guild_json),
        Route("/meetings/{meeting:str}", meeting_page),
        Route("/meetings/{meeting:str}/audio/{track:str}", audio),
        Route("/api/meetings/{meeting:str}", meeting_json),
        Route("/api/meetings/{meeting:str}/peaks/{track:str}", peaks),
        Route("/api/meetings/{meeting:str}/timeline", timeline),
        Route("/api/meetings/{meeting:str}/link/{track:str}", link, methods=["POST"]),
        Route("/meetings/{meeting:str}/bundle", downloads.bundle, methods=["POST"]),
        Route("/api/meetings/{meeting:str}/live", downloads.live_json),
        Route("/meetings/{meeting:str}/live/{track:str}", downloads.live_audio),
        Route("/api/meetings/{meeting:str}/live-link/{track:str}", downloads.live_link,
              methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders, media_origin=f"{s3.scheme}://{s3.netloc}"),
        Middleware(SessionMiddleware, secret_key=settings.secret_key,
                   session_cookie=SESSION_COOKIE, max_age=settings.session_max_age_s,
                   same_site="lax", https_only=settings.secure_cookies),
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, Redirect: redirect})
