"""The bot's consent service: `/record optout` and `/record optin` (issue 12).

A member opts out only themself (the interaction's user id). `BotConsent` changes two
things in the bot's namespace:

- the guild's live RecordingSession (`BotSessions.find`): the member is added to, or
  removed from, `spec.optOutUserIds`. The recorder follows the list live: from the moment
  it sees the change the member's packets are dropped before decryption (docs/consent.md).
  The patch is a JSON merge patch carrying the `metadata.resourceVersion` read, which the
  API server treats as a precondition (409 Conflict when the object changed meanwhile,
  e.g. a `/record pause` or another member's opt-out): the read-modify-write is retried
  with a fresh read, so no concurrent update is lost.
- the guild's consent ConfigMap `voicetrack-consent-<guildId>` (data key `optOutUserIds`:
  a JSON list of user ids), so an opt-out lasts: `/record start` copies it into the new
  session's `spec.optOutUserIds` (`remembered`). Users expect "opt out" to hold until they
  opt back in, not only for the current call. Written the same way (merge patch with
  `resourceVersion`; created on first use, a 409 on the create retried as a patch).

RBAC the bot needs for this (chart: the bot's Role): `configmaps` in the core API group:
get, create, patch; `recordingsessions`: get, list, patch (already granted).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client

from voicetrack.errors import ConflictError, InvalidInputError, NotFoundError
from voicetrack.kubeclient import translate_api_error
from voicetrack.resources import GROUP, MANAGED_BY, MAX_OPT_OUT_USERS, SESSION_PLURAL, VERSION
from voicetrack_recorder.bot.sessions import REQUEST_TIMEOUT_S, BotSessions
from voicetrack_recorder.bot.sessionspec import session_name
from voicetrack_recorder.kube import CLIENT_ERRORS

log = logging.getLogger(__name__)

CONFIGMAP_PREFIX = "voicetrack-consent-"
DATA_KEY = "optOutUserIds"
ATTEMPTS = 5
"""Read-modify-write attempts before a ConflictError reaches the member."""


def configmap_name(guild_id: str) -> str:
    """The guild's consent ConfigMap: `voicetrack-consent-<guildId>` (at most 39
    characters). Raises InvalidInputError when `guild_id` is not a snowflake."""
    return CONFIGMAP_PREFIX + session_name(guild_id).removeprefix("g-")


@dataclass(frozen=True)
class ConsentChange:
    """What an opt-out or opt-in did: `session` is the guild's live RecordingSession as
    patched (None when the guild records nothing now, or its session is being stopped);
    `changed` is False when the member was already in that state everywhere."""

    session: dict[str, Any] | None
    changed: bool


class BotConsent:
    """Opt members of a guild out of (and back into) recording, in `sessions.namespace`."""

    def __init__(self, sessions: BotSessions) -> None:
        self.sessions = sessions
        self.core = client.CoreV1Api(sessions.objects.api_client)

    async def opt_out(self, guild_id: str, user_id: str) -> ConsentChange:
        """Add `user_id` to the guild's remembered opt-outs and to its live session's
        `spec.optOutUserIds`. Raises InvalidInputError (bad ids, the list is full),
        ConflictError (still changing after ATTEMPTS tries), TemporaryFailure."""
        return await self._change(guild_id, user_id, opt_out=True)

    async def opt_in(self, guild_id: str, user_id: str) -> ConsentChange:
        """Remove `user_id` from both lists; recording resumes from the moment the
        recorder sees it. Raises as `opt_out`."""
        return await self._change(guild_id, user_id, opt_out=False)

    async def remembered(self, guild_id: str) -> list[str]:
        """The guild's remembered opt-outs (sorted user ids; [] without a ConfigMap).
        Raises InvalidInputError when the ConfigMap's data is not a list of ids."""
        cm = await self._read_configmap(configmap_name(guild_id))
        return [] if cm is None else _ids(cm, configmap_name(guild_id))

    # ------------------------------------------------------------------ plumbing

    async def _change(self, guild_id: str, user_id: str, *, opt_out: bool) -> ConsentChange:
        if not user_id.isdigit() or not 15 <= len(user_id) <= 20:
            raise InvalidInputError(f"user_id must be a Discord snowflake, got {user_id!r}")
        # the call in progress first: a ConfigMap that cannot be written (RBAC missing
        # after an upgrade, damaged data, the list full) must not hold up the opt-out
        # that matters now; its error is still raised, after
        obj, patched = await self._retry(lambda: self._patch_session(guild_id, user_id,
                                                                     opt_out))
        remembered = await self._retry(lambda: self._remember(guild_id, user_id, opt_out))
        if obj is None:
            # a `/record start` may have created the session since the lookup above, and
            # read the ConfigMap (before and after its create) before it was written here:
            # look again now that the ConfigMap holds the change (with `start`'s second
            # read, one of the two always sees the other's write)
            obj, patched = await self._retry(lambda: self._patch_session(guild_id, user_id,
                                                                         opt_out))
        return ConsentChange(session=obj, changed=remembered or patched)

    async def _retry(self, attempt: Any) -> Any:
        for n in range(ATTEMPTS):
            try:
                return await attempt()
            except ConflictError:
                if n == ATTEMPTS - 1:
                    raise
                log.info("consent change met a concurrent update; reading again")
                await asyncio.sleep(0.05 * (n + 1))

    async def _patch_session(self, guild_id: str, user_id: str, opt_out: bool
                             ) -> tuple[dict[str, Any] | None, bool]:
        obj = await self.sessions.find(guild_id)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return None, False
        ids = list((obj.get("spec") or {}).get("optOutUserIds") or [])
        wanted = _toggle(ids, user_id, opt_out)
        if wanted == ids:
            return obj, False
        name = obj["metadata"]["name"]
        body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                "spec": {"optOutUserIds": wanted}}
        patched = await self._call(f"patch RecordingSession {name}",
                                   self.sessions.objects.patch_namespaced_custom_object,
                                   GROUP, VERSION, self.sessions.namespace, SESSION_PLURAL,
                                   name, body)
        log.info("%s: user %s opted %s", name, user_id, "out" if opt_out else "in")
        return patched, True

    async def _remember(self, guild_id: str, user_id: str, opt_out: bool) -> bool:
        name = configmap_name(guild_id)
        cm = await self._read_configmap(name)
        ids = [] if cm is None else _ids(cm, name)
        wanted = _toggle(ids, user_id, opt_out)
        if wanted == ids:
            return False
        data = {DATA_KEY: json.dumps(wanted)}
        ns = self.sessions.namespace
        if cm is None or cm.metadata is None:
            created = client.V1ConfigMap(metadata=client.V1ObjectMeta(
                name=name, labels=dict(MANAGED_BY)), data=data)
            await self._call(f"create ConfigMap {name}",
                             self.core.create_namespaced_config_map, ns, created)
        else:
            patch = {"metadata": {"resourceVersion": cm.metadata.resource_version},
                     "data": data}
            await self._call(f"patch ConfigMap {name}",
                             self.core.patch_namespaced_config_map, name, ns, patch)
        return True

    async def _read_configmap(self, name: str) -> client.V1ConfigMap | None:
        try:
            return cast(client.V1ConfigMap, await self._call(
                f"get ConfigMap {name}", self.core.read_namespaced_config_map, name,
                self.sessions.namespace))
        except NotFoundError:
            return None

    async def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, _request_timeout=REQUEST_TIMEOUT_S)
        except CLIENT_ERRORS as err:
            raise translate_api_error(err, what) from err


def _toggle(ids: list[str], user_id: str, opt_out: bool) -> list[str]:
    """`ids` with `user_id` added (sorted, once) or removed. Raises InvalidInputError when
    adding would pass MAX_OPT_OUT_USERS (the CRD's limit)."""
    if opt_out:
        if user_id in ids:
            return ids
        if len(ids) >= MAX_OPT_OUT_USERS:
            raise InvalidInputError(f"optOutUserIds already lists {MAX_OPT_OUT_USERS} members")
        return sorted([*ids, user_id])
    return [i for i in ids if i != user_id]


def _ids(cm: client.V1ConfigMap, name: str) -> list[str]:
    raw = (cm.data or {}).get(DATA_KEY, "[]")
    try:
        ids = json.loads(raw)
    except ValueError as err:
        raise InvalidInputError(f"ConfigMap {name}: data.{DATA_KEY} is not JSON") from err
    if not isinstance(ids, list) or not all(isinstance(i, str) and i.isdigit() for i in ids):
        raise InvalidInputError(f"ConfigMap {name}: data.{DATA_KEY} must be a list of ids")
    return sorted(set(ids))
