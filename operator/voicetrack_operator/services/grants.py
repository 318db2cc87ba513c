"""Each session's upload grant (`voicetrack.uploadgrant`), kept valid while it records.

The grant lives in a Secret named like the session's recorder ServiceAccount, owned by the
session (`builders.build_upload_grant_secret`). `ensure_upload_grant` makes it when the
session starts and, from the observe timer, mints it again when its remaining life falls
below its renewal margin (`voicetrack.uploadgrant.renewal_due`), or when the Secret is
missing or does not hold a grant. The decision is `grant_action`, pure; the Secret's I/O is
here, through the Kubernetes adapter. What the operator last saw of each session's grant is
kept in memory (`_seen`), so a tick reads the Secret only when that says a renewal is due,
or at most every `GRANT_CHECK_S` seconds: the observe timer reads no API otherwise.

A renewal signs with the credentials the operator holds now (minio's providers fetch
temporary credentials again shortly before they expire); a renewed grant that would end no
later than the one in the Secret is not written (credentials not yet refreshed: the next
check tries again).
"""

from __future__ import annotations

import base64
import binascii
import enum
import logging
import time
from datetime import UTC, datetime, timedelta

from voicetrack.errors import TemporaryFailure
from voicetrack.layout import MeetingLayout
from voicetrack.resources import SessionSpec
from voicetrack.uploadgrant import (
    GRANT_SECRET_KEY,
    UploadGrant,
    mint_upload_grant,
    renewal_due,
)
from voicetrack_operator.builders import (
    SessionRef,
    build_upload_grant_secret,
    recorder_service_account,
)
from voicetrack_operator.context import Context

log = logging.getLogger(__name__)

GRANT_MARGIN = timedelta(hours=1)
"""How long a grant of the default lifetime outlives the session's
`limits.maxDurationSeconds` (from its `startedAt`): the recorder stops at that limit
(session time, paused time included) and then flushes for at most its grace period."""

GRANT_CHECK_S = 30.0
"""At most this long (s) between two reads of a session's grant Secret by the observe
timer while its last seen grant is not due: a Secret deleted or spoiled meanwhile is made
again within this time."""


class GrantAction(enum.Enum):
    """What `grant_action` decides for a session's grant Secret."""

    KEEP = "keep"
    CREATE = "create"
    """The Secret does not exist."""
    REPLACE = "replace"
    """It exists but holds no readable grant, or its grant is due for renewal."""


def grant_action(current: UploadGrant | None, exists: bool, now: datetime) -> GrantAction:
    """What to do with a session's grant Secret: `current` is the grant it holds (None when
    it is missing or unreadable), `exists` whether the Secret exists, `now` an aware
    datetime. Pure."""
    if not exists:
        return GrantAction.CREATE
    if current is None or renewal_due(current, now):
        return GrantAction.REPLACE
    return GrantAction.KEEP


def grant_expiry(started: datetime, now: datetime, max_duration_s: int,
                 lifetime_s: int | None) -> datetime:
    """When a grant minted at `now` should end (before the credentials' cap): `now` +
    `lifetime_s` seconds when set (VOICETRACK_UPLOAD_GRANT_SECONDS), else the session's
    `started` + `max_duration_s` + `GRANT_MARGIN`. Aware datetimes. Pure."""
    if lifetime_s is not None:
        return now + timedelta(seconds=lifetime_s)
    return started + timedelta(seconds=max_duration_s) + GRANT_MARGIN


_seen: dict[str, tuple[UploadGrant, float]] = {}
"""Session uid -> (the grant last read or written, when: monotonic s)."""


async def read_grant(ctx: Context, owner: SessionRef) -> tuple[bool, UploadGrant | None]:
    """(whether the session's grant Secret exists, the grant it holds or None when it holds
    none readable: no `uploadGrant` key, not base64, not a grant). Raises TemporaryFailure
    when the API server cannot be reached."""
    secret = await ctx.kube.get_secret(owner.namespace, recorder_service_account(owner))
    if secret is None:
        return False, None
    value = (secret.get("data") or {}).get(GRANT_SECRET_KEY)
    if not isinstance(value, str):
        return True, None
    try:
        return True, UploadGrant.model_validate_json(base64.b64decode(value, validate=True))
    except (ValueError, binascii.Error):
        return True, None


async def ensure_upload_grant(ctx: Context, owner: SessionRef, spec: SessionSpec,
                              meeting_id: str, started: datetime, *,
                              throttle: bool = False) -> GrantAction:
    """Make the session's upload grant Secret when it is missing, and mint it again when
    it holds no readable grant or its grant is due for renewal (`grant_action`): POST
    objects under `<prefix>/<guild>/<meeting>/chunks/` of the session's bucket (made first
    when missing), each at most `limits.maxBytes`, until `grant_expiry` (capped at the
    credentials' expiry). With `throttle` (the observe timer) the Secret is read only when
    the grant last seen is due, or `GRANT_CHECK_S` after the last read. Returns what it
    did (KEEP also for a renewal that would not end later). Raises TemporaryFailure while
    S3, the credentials or the API server are away, InvalidInputError for a Secret the API
    refuses."""
    now = datetime.now(UTC)
    if throttle and owner.uid in _seen:
        grant, checked = _seen[owner.uid]
        if not renewal_due(grant, now) and time.monotonic() - checked < GRANT_CHECK_S:
            return GrantAction.KEEP
    exists, current = await read_grant(ctx, owner)
    action = grant_action(current, exists, now)
    if action is GrantAction.KEEP:
        assert current is not None
        _seen[owner.uid] = (current, time.monotonic())
        return action
    layout = MeetingLayout(spec.storage.prefix, spec.guild_id, meeting_id)
    # the recorder can no longer make its bucket (it holds no key): the operator does
    await ctx.store(spec.storage.bucket).ensure_bucket()
    expires = grant_expiry(started, now, spec.limits.max_duration_seconds,
                           ctx.settings.upload_grant_s)
    grant = mint_upload_grant(ctx.settings.s3, spec.storage.bucket, layout.chunks_root,
                              expires, spec.limits.max_bytes)
    if current is not None and grant.expires_at <= current.expires_at:
        log.info("upload grant of %s/%s due (ends %s) but a new one would not end later: "
                 "the credentials are not refreshed yet", owner.namespace, owner.name,
                 current.expires_at.isoformat())
        _seen[owner.uid] = (current, time.monotonic())
        return GrantAction.KEEP
    manifest = build_upload_grant_secret(owner, grant.to_json())
    if action is GrantAction.CREATE:
        await ctx.kube.ensure(manifest)
    else:
        log.info("upload grant of %s/%s renewed: now ends %s", owner.namespace, owner.name,
                 grant.expires_at.isoformat())
        await ctx.kube.replace_secret(manifest)
    _seen[owner.uid] = (grant, time.monotonic())
    return action


async def renew_upload_grant(ctx: Context, owner: SessionRef, spec: SessionSpec,
                             meeting_id: str, started: datetime) -> None:
    """The observe timer's call: `ensure_upload_grant` throttled; a TemporaryFailure (S3,
    credentials or the API server away) is logged and left to the next tick."""
    try:
        await ensure_upload_grant(ctx, owner, spec, meeting_id, started, throttle=True)
    except TemporaryFailure as err:
        log.warning("upload grant of %s/%s not checked: %s", owner.namespace, owner.name, err)


def forget_grant(uid: str) -> None:
    """Drop what was seen of session `uid`'s grant (it is being deleted)."""
    _seen.pop(uid, None)
