"""The bot's service: RecordingSession objects of one namespace, one per guild.

`BotSessions` decides what each `/record` command does to the cluster; the Discord layer
(`app.py`) only parses interactions and renders the returned object (`embeds.py`).

- A guild's session is named `g-<guildId>` (`sessionspec.session_name`; deterministic: a
  second `start` meets 409 and answers with the existing session, never a second one). A
  session for the guild made by other means (`kubectl apply`) is found by `spec.guildId`
  and counts as the guild's too.
- The kubernetes client is synchronous; every call runs in `asyncio.to_thread`.
- Client errors are translated where they are raised, by the project's one mapping
  (`voicetrack.kubeclient.translate_api_error`): 404 → `NotFoundError`, 409 →
  `ConflictError`, 401/403/408/429/5xx and network errors → `TemporaryFailure`, other 4xx
  → `InvalidInputError` carrying the API server's own message (e.g. a CRD validation
  rule's text).

RBAC the bot's ServiceAccount needs in its namespace (docs/bot.md): `recordingsessions` in
API group `voicetrack.dev`: get, list, create, patch, delete; `configmaps` (the guilds'
remembered opt-outs, `consent.py`): get, create, patch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client

from voicetrack.errors import ConflictError, InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.kubeclient import translate_api_error
from voicetrack.resources import (
    API_VERSION,
    GROUP,
    INACTIVE_STATES,
    LABEL_GUILD,
    MANAGED_BY,
    SESSION_KIND,
    SESSION_PLURAL,
    VERSION,
    SessionState,
)
from voicetrack_recorder.bot.sessionspec import (
    ENDED_STATES,
    check_snowflake,
    check_spec_defaults,
    progress_key,
    session_name,
    session_state,
    validate_spec,
)
from voicetrack_recorder.kube import CLIENT_ERRORS

log = logging.getLogger(__name__)

CREATED_BY = "voicetrack.dev/created-by"
"""Annotation naming who made the session (`discord-bot`)."""
REQUEST_TIMEOUT_S = 10.0
"""Timeout of each Kubernetes API call, seconds (an answer is due within Discord's 15 min
interaction token lifetime; a hung API must not hold a command)."""
MERGE_ATTEMPTS = 5
"""Read-modify-write attempts of `_merge_opt_outs` before its ConflictError is raised."""
FOLLOW_POLL_S = 2.0
"""How often `follow` reads a stopped session, seconds."""


@dataclass(frozen=True)
class Started:
    """What `BotSessions.start` did: `session` is the RecordingSession object (a dict as
    the API returns it); `created` is False when the guild already had a session."""

    session: dict[str, Any]
    created: bool


class BotSessions:
    """Start, stop, pause, resume and read the RecordingSession of a guild in `namespace`.

    `spec_defaults` is a camelCase partial `RecordingSession.spec` applied to every session
    the bot creates (e.g. `{"storage": {"bucket": "rec"}, "chunkSeconds": 30}`); it is
    validated against `SessionSpec` here (InvalidInputError naming the field).
    A `files` source in the defaults makes the bot record files instead of Discord (demos,
    tests). `settle_seconds` is how long `start` waits for the operator's first status (state and
    meeting id) so the answer can show it; 0 answers at once."""

    def __init__(self, api: client.ApiClient, namespace: str, *,
                 spec_defaults: dict[str, Any] | None = None,
                 settle_seconds: float = 4.0) -> None:
        if not namespace:
            raise InvalidInputError("namespace must be set (VOICETRACK_NAMESPACE)")
        self.objects = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.spec_defaults = check_spec_defaults(spec_defaults or {})
        self.settle_seconds = settle_seconds

    # ------------------------------------------------------------------ commands

    async def start(self, guild_id: str, channel_id: str, requested_by: str,
                    chunk_seconds: int | None = None,
                    remembered: Callable[[], Awaitable[list[str]]] | None = None
                    ) -> Started:
        """Record `channel_id` of `guild_id` for user `requested_by` (snowflake strings).

        Creates `g-<guildId>` unless the guild already has a session, which is returned
        instead (`created=False`; also while a stopped session is still being promoted).
        The bot's own session that no longer records is deleted (uid precondition) and,
        once gone, made again: refused earlier (the guild was busy), so a refusal does not
        outlive its cause; or ended by itself (Stopped: a limit; Failed), which the delete
        hands to the operator to save. One still being saved after `settle_seconds` is
        returned (`created=False`, with its deletionTimestamp): try again when it is done.
        The spec is `spec_defaults` with the ids (and `chunkSeconds` when given) set, and
        the user ids `remembered()` returns (the guild's remembered opt-outs, read once the
        spec is known to be valid: `BotConsent.remembered`) added to `spec.optOutUserIds`.
        `remembered()` is read again once the session exists and an opt-out made meanwhile
        (one that found no session to patch) is merged in; an opt-in meanwhile is not.
        Waits up to `settle_seconds` for the operator's first status.
        Raises InvalidInputError (bad ids, chunk_seconds outside 5..300, the API refusing
        the object), TemporaryFailure (API unreachable, 401/403, 429, 5xx, a refused
        session not yet removed). A 409 on the create (a racing start won) is not an
        error: its session is returned."""
        check_snowflake("channel_id", channel_id)
        check_snowflake("requested_by", requested_by)
        name = session_name(guild_id)
        spec: dict[str, Any] = {**self.spec_defaults, "guildId": guild_id,
                                "channelId": channel_id, "requestedBy": requested_by}
        if chunk_seconds is not None:
            spec["chunkSeconds"] = chunk_seconds
        validate_spec(spec, "session spec")
        opted_out = await remembered() if remembered is not None else []
        if opted_out:
            spec["optOutUserIds"] = sorted({*spec.get("optOutUserIds", ()), *opted_out})
            validate_spec(spec, "session spec")
        existing = await self.find(guild_id)
        if existing is not None:
            left = await self._clear_ended(existing)
            if left is not None:
                return Started(left, created=False)
        body = {
            "apiVersion": API_VERSION, "kind": SESSION_KIND,
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {LABEL_GUILD: guild_id, **MANAGED_BY},
                         "annotations": {CREATED_BY: "discord-bot"}},
            "spec": spec,
        }
        try:
            obj = await self._call(f"create RecordingSession {name}",
                                   self.objects.create_namespaced_custom_object,
                                   GROUP, VERSION, self.namespace, SESSION_PLURAL, body)
        except ConflictError:  # a racing start created it first: answer with its session
            return Started(await self._get(name), created=False)
        log.info("started %s/%s for guild %s channel %s by %s", self.namespace, name,
                 guild_id, channel_id, requested_by)
        try:  # best effort: the session exists; a racing opt-out also looks again itself
            obj = await self._merge_opt_outs(obj, await remembered()) if remembered else obj
        except (TemporaryFailure, InvalidInputError, ConflictError) as err:
            log.error("%s: remembered opt-outs not read again after the create: %s", name, err)
        return Started(await self._settle(obj), created=True)

    async def _merge_opt_outs(self, obj: dict[str, Any], user_ids: list[str]
                              ) -> dict[str, Any]:
        """Add `user_ids` missing from session `obj`'s `spec.optOutUserIds` by a JSON merge
        patch with the `resourceVersion` read (a precondition: on 409 read again, up to
        MERGE_ATTEMPTS). Returns the session as patched (or as read: nothing missing).
        Raises ConflictError, InvalidInputError (past the CRD's limit), TemporaryFailure."""
        name = obj["metadata"]["name"]
        for attempt in range(1, MERGE_ATTEMPTS + 1):
            have = sorted((obj.get("spec") or {}).get("optOutUserIds") or [])
            wanted = sorted({*have, *user_ids})
            if wanted == have:
                break
            validate_spec({**obj["spec"], "optOutUserIds": wanted}, "session spec")
            body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                    "spec": {"optOutUserIds": wanted}}
            try:
                obj = await self._call(f"patch RecordingSession {name}",
                                       self.objects.patch_namespaced_custom_object, GROUP,
                                       VERSION, self.namespace, SESSION_PLURAL, name, body)
            except ConflictError:
                if attempt == MERGE_ATTEMPTS:
                    raise
                obj = await self._get(name)
        return obj

    async def _clear_ended(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Delete the bot's own session (`g-<guildId>`, not being deleted) when it no
        longer records: Refused (the guild was busy then), Stopped (a limit ended it) or
        Failed; the delete carries a uid precondition and starts the operator's promotion
        of what was recorded. Returns None once it is gone (waits up to
        `settle_seconds`), so `start` makes a new one; else the session as it stands:
        any other session, or one still being deleted (saving). Raises TemporaryFailure
        for a refused session not gone in time (nothing of it is to be saved)."""
        meta = obj["metadata"]
        if (meta["name"] != session_name(str((obj.get("spec") or {}).get("guildId", "")))
                or meta.get("deletionTimestamp") or session_state(obj) not in ENDED_STATES):
            return obj
        refused = session_state(obj) is SessionState.REFUSED
        try:
            await self._call(
                f"delete RecordingSession {meta['name']}",
                self.objects.delete_namespaced_custom_object,
                GROUP, VERSION, self.namespace, SESSION_PLURAL, meta["name"],
                body=client.V1DeleteOptions(
                    preconditions=client.V1Preconditions(uid=meta["uid"])))
        except NotFoundError:
            return None
        log.info("deleted %s %s/%s to start again", session_state(obj), self.namespace,
                 meta["name"])
        left = await self.follow(obj, max(self.settle_seconds, 1.0), poll_s=0.25)
        if left is None:
            return None
        if refused:
            raise TemporaryFailure(f"the refused session {meta['name']} is still being "
                                   "removed", delay=5)
        return left

    async def stop(self, guild_id: str) -> dict[str, Any]:
        """Delete the guild's session: the operator stops the recorder, waits for the
        transcodes and promotes the recording. Returns the object as it stands after the
        delete (state Stopping/Promoting while the finalizer works). Stopping a session
        already being deleted returns it unchanged. The delete is conditional on the uid
        read, so a session replaced meanwhile under the same name is never stopped blindly.
        Raises NotFoundError when the guild has no session, ConflictError (it was replaced
        between the read and the delete), TemporaryFailure."""
        obj = await self._require(guild_id)
        name = obj["metadata"]["name"]
        if obj["metadata"].get("deletionTimestamp"):
            return obj
        try:
            await self._call(
                f"delete RecordingSession {name}",
                self.objects.delete_namespaced_custom_object,
                GROUP, VERSION, self.namespace, SESSION_PLURAL, name,
                body=client.V1DeleteOptions(
                    preconditions=client.V1Preconditions(uid=obj["metadata"]["uid"])))
        except NotFoundError:
            return obj
        log.info("stopped %s/%s for guild %s", self.namespace, name, guild_id)
        try:
            return await self._get(name)
        except NotFoundError:  # no finalizer held it: already gone
            return obj

    async def pause(self, guild_id: str) -> dict[str, Any]:
        """Set `spec.paused: true` on the guild's session (capture stops, the session stays;
        paused time is cut from the output). Returns the patched object.
        Raises NotFoundError, InvalidInputError (the session is being stopped),
        TemporaryFailure."""
        return await self._set_paused(guild_id, True)

    async def resume(self, guild_id: str) -> dict[str, Any]:
        """Set `spec.paused: false` on the guild's session. Returns the patched object.
        Raises NotFoundError, InvalidInputError (being stopped), TemporaryFailure."""
        return await self._set_paused(guild_id, False)

    async def status(self, guild_id: str) -> dict[str, Any]:
        """The guild's session object. Raises NotFoundError, TemporaryFailure."""
        return await self._require(guild_id)

    async def follow(self, obj: dict[str, Any], timeout_s: float,
                     on_change: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
                     poll_s: float = FOLLOW_POLL_S) -> dict[str, Any] | None:
        """Follow a stopped session until the operator's finalizer releases it: poll the
        object (every `poll_s` seconds) until it is gone, or replaced by another object
        under the same name (uid changed); then return None. Returns the last object read
        when `timeout_s` seconds pass first (still promoting, or PromotionFailed and being
        retried). `on_change(obj)` is awaited whenever `status.state` or the chunk counts
        change; an exception it raises is logged and ignored (a progress message must not
        end the follow). A TemporaryFailure while polling is retried until the timeout."""
        name, uid = obj["metadata"]["name"], obj["metadata"].get("uid")
        deadline = time.monotonic() + timeout_s
        seen = progress_key(obj)
        while time.monotonic() < deadline:
            await asyncio.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
            try:
                current = await self._get(name)
            except NotFoundError:
                return None
            except TemporaryFailure as err:
                log.info("following %s: %s", name, err)
                continue
            if current["metadata"].get("uid") != uid:
                return None
            obj = current
            if on_change is not None and progress_key(obj) != seen:
                seen = progress_key(obj)
                try:
                    await on_change(obj)
                except Exception:  # progress is best effort
                    log.exception("progress update for %s failed", name)
        return obj

    # ------------------------------------------------------------------ lookups

    async def find(self, guild_id: str) -> dict[str, Any] | None:
        """The guild's session: `g-<guildId>` if it exists, else the oldest session in
        the namespace whose `spec.guildId` is the guild and that still records (not
        Refused/Stopped/Failed, not being deleted); None when there is none."""
        name = session_name(guild_id)
        try:
            return await self._get(name)
        except NotFoundError:
            pass
        listed = await self._call("list RecordingSessions",
                                  self.objects.list_namespaced_custom_object,
                                  GROUP, VERSION, self.namespace, SESSION_PLURAL)
        mine = [o for o in listed.get("items", [])
                if (o.get("spec") or {}).get("guildId") == guild_id
                and not o["metadata"].get("deletionTimestamp")
                and session_state(o) not in INACTIVE_STATES]
        if not mine:
            return None
        return min(mine, key=lambda o: (str(o["metadata"].get("creationTimestamp", "")),
                                        o["metadata"]["name"]))

    async def _require(self, guild_id: str) -> dict[str, Any]:
        obj = await self.find(guild_id)
        if obj is None:
            raise NotFoundError(f"no recording session for guild {guild_id} in namespace "
                                f"{self.namespace}")
        return obj

    async def _get(self, name: str) -> dict[str, Any]:
        return await self._call(f"get RecordingSession {name}",
                                self.objects.get_namespaced_custom_object,
                                GROUP, VERSION, self.namespace, SESSION_PLURAL, name)

    async def _set_paused(self, guild_id: str, paused: bool) -> dict[str, Any]:
        obj = await self._require(guild_id)
        name = obj["metadata"]["name"]
        if obj["metadata"].get("deletionTimestamp"):
            raise InvalidInputError(f"session {name} is being stopped; it cannot be "
                                    f"{'paused' if paused else 'resumed'}")
        if bool((obj.get("spec") or {}).get("paused", False)) == paused:
            return obj
        return await self._call(f"patch RecordingSession {name}",
                                self.objects.patch_namespaced_custom_object,
                                GROUP, VERSION, self.namespace, SESSION_PLURAL, name,
                                {"spec": {"paused": paused}})

    async def _settle(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Poll (every 0.25 s, up to `settle_seconds`) until the operator has given the new
        session a state and (unless refused) a meeting id; the latest object either way."""
        name = obj["metadata"]["name"]
        deadline = time.monotonic() + self.settle_seconds
        while True:
            status = obj.get("status") or {}
            if session_state(obj) is SessionState.REFUSED or (status.get("state")
                                                              and status.get("meetingId")):
                return obj
            if time.monotonic() >= deadline:
                return obj
            await asyncio.sleep(0.25)
            try:
                obj = await self._get(name)
            except NotFoundError:  # deleted meanwhile: answer with what we had
                return obj

    # ------------------------------------------------------------------ plumbing

    async def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any
                    ) -> dict[str, Any]:
        kw.setdefault("_request_timeout", REQUEST_TIMEOUT_S)
        try:
            return cast(dict[str, Any], await asyncio.to_thread(fn, *args, **kw))
        except CLIENT_ERRORS as err:
            raise translate_api_error(err, what) from err
