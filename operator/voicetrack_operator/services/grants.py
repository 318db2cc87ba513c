"""Each session's upload grant (`voicetrack.uploadgrant`), kept valid while it records.

The grant lives in a Secret named like the session's recorder ServiceAccount, owned by the
session (`builders.build_upload_grant_secret`). `ensure_upload_grant` makes it when the
session starts and, from the observe timer, mints it again when its remaining life falls
below its renewal margin (`voicetrack.uploadgrant.renewal_due`), or when the Secret is
missing or does not hold a grant. The decision is `grant_action`, pure; the Secret's I/O is
here, through the Kubernetes adapter. What the operator last saw of each session's grant is
kept in memory (`_seen`, with when to look next: `next_check_s`), so a tick reads the Secret
when that grant becomes due, and otherwise at most every `GRANT_CHECK_S` seconds: the
observe timer reads no API in between.

A renewal signs with the credentials the operator holds now. minio's providers fetch
temporary credentials again only when they expire within `CREDENTIALS_REFRESH_S` (minio's
`Credentials.is_expired`), and a grant ends with the credentials that signed it: a renewal
that would end no later than the grant in the Secret is not written, and the next look is
just after minio will have fetched new credentials (IRSA: the grant is renewed about 10 s
before it ends; the recorder waits for it on S3's refusal, its chunks in the spool).

A grant signed by an access key that is no longer the operator's (keys rotated, a new
role session) is minted again at the next look, whatever its end (`GrantAction.RESIGN`):
S3 refuses a grant whose key is gone, and the recorder waits for the new one (its
`REFRESH_CODES`). A failed mint or Secret write is tried again after a bounded exponential
backoff (`failure_backoff_s`), not at every tick. The deletion's stop step keeps renewing
while the recorder pod flushes (`recorder_may_upload`), until the pod has finished.
"""

from __future__ import annotations

import enum
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack.layout import MeetingLayout
from voicetrack.resources import SessionSpec
from voicetrack.s3credentials import credentials_provider
from voicetrack.uploadgrant import (
    UploadGrant,
    mint_upload_grant,
    renewal_due,
    renews_at,
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

CREDENTIALS_REFRESH_S = 10.0
"""minio's providers fetch temporary credentials again once they expire within this many
seconds (minio 7.2 `Credentials.is_expired`), not before."""

FAILURE_FIRST_S = 2.0
FAILURE_MAX_S = 60.0
"""Backoff (s) after a failed check, mint or Secret write of a session's grant: 2 s
doubling to at most 60 s, reset by a success."""


class GrantAction(enum.Enum):
    """What `grant_action` decides for a session's grant Secret."""

    KEEP = "keep"
    CREATE = "create"
    """The Secret does not exist."""
    REPLACE = "replace"
    """It exists but holds no readable grant, or its grant is due for renewal."""
    RESIGN = "resign"
    """Its grant was signed by an access key that is not the current one: replaced even
    when the new grant would not end later (S3 refuses a grant of a retired key)."""


def grant_action(current: UploadGrant | None, exists: bool, now: datetime,
                 signer: str | None = None) -> GrantAction:
    """What to do with a session's grant Secret: `current` is the grant it holds (None when
    it is missing or unreadable), `exists` whether the Secret exists, `now` an aware
    datetime, `signer` the access key id the operator signs with now (None: not known, not
    compared). Pure."""
    if not exists:
        return GrantAction.CREATE
    if current is None:
        return GrantAction.REPLACE
    if signer is not None and current.access_key != signer:
        return GrantAction.RESIGN
    if renewal_due(current, now):
        return GrantAction.REPLACE
    return GrantAction.KEEP


def failure_backoff_s(failures: int) -> float:
    """Seconds to wait before the next try after `failures` (>= 1) failed ones in a row:
    `FAILURE_FIRST_S` doubling, at most `FAILURE_MAX_S`. Pure."""
    return min(FAILURE_FIRST_S * 2 ** max(0, min(failures - 1, 16)), FAILURE_MAX_S)


def recorder_may_upload(pod: dict[str, Any] | None) -> bool:
    """True while the recorder pod `pod` (None: gone) may still upload: it exists and has
    not finished (phase neither Succeeded nor Failed), deleted or not; a pod being
    deleted flushes its last chunks for up to its grace period after SIGTERM. Pure."""
    if pod is None:
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def grant_expiry(started: datetime, now: datetime, max_duration_s: int,
                 lifetime_s: int | None) -> datetime:
    """When a grant minted at `now` should end (before the credentials' cap): `now` +
    `lifetime_s` seconds when set (VOICETRACK_UPLOAD_GRANT_SECONDS), never past the
    session's `started` + `max_duration_s` + `GRANT_MARGIN` (the default lifetime): no
    recorder of the session uploads later, so no renewal reaches further. Aware
    datetimes. Pure."""
    cap = started + timedelta(seconds=max_duration_s) + GRANT_MARGIN
    if lifetime_s is not None:
        return min(now + timedelta(seconds=lifetime_s), cap)
    return cap


def next_check_s(grant: UploadGrant, now: datetime, renewable: bool) -> float:
    """Seconds until the observe timer should read the Secret of `grant` again, at most
    `GRANT_CHECK_S`: when it becomes due (`renewal_due`), or, when a renewal now would not
    end later (`renewable` False: the credentials that cap it are not refreshed yet), just
    after minio will have refreshed them (`CREDENTIALS_REFRESH_S` before its end). Pure."""
    if renewable:
        return max(0.0, min((renews_at(grant) - now).total_seconds(), GRANT_CHECK_S))
    after_refresh = (grant.expires_at - now).total_seconds() - CREDENTIALS_REFRESH_S + 1
    if after_refresh <= 0:  # past the refresh (or the end, at its cap): no sooner look helps
        return GRANT_CHECK_S
    return min(after_refresh, GRANT_CHECK_S)


_seen: dict[str, tuple[UploadGrant, float]] = {}
"""Session uid -> (the grant last read or written, when to read its Secret next:
monotonic s)."""
_failed: dict[str, tuple[int, float]] = {}
"""Session uid -> (failed tries in a row, when to try again: monotonic s)."""


async def read_grant(ctx: Context, owner: SessionRef) -> tuple[bool, UploadGrant | None]:
    """(whether the session's grant Secret exists, the grant it holds or None when it holds
    none readable: `UploadGrant.from_secret_data`). Raises TemporaryFailure when the API
    server cannot be reached."""
    name = recorder_service_account(owner)
    secret = await ctx.kube.get_secret(owner.namespace, name)
    if secret is None:
        return False, None
    try:
        return True, UploadGrant.from_secret_data(secret.get("data"),
                                                  f"{owner.namespace}/{name}")
    except InvalidInputError as err:
        log.warning("upload grant of %s/%s unreadable: %s", owner.namespace, owner.name, err)
        return True, None


async def ensure_upload_grant(ctx: Context, owner: SessionRef, spec: SessionSpec,
                              meeting_id: str, started: datetime, *,
                              throttle: bool = False) -> GrantAction:
    """Make the session's upload grant Secret when it is missing, and mint it again when
    it holds no readable grant, its grant is due for renewal, or it was signed by another
    access key than the operator's current one (`grant_action`, the key from the
    credentials provider, which may fetch temporary credentials): POST
    objects under `<prefix>/<guild>/<meeting>/chunks/` of the session's bucket (made first
    with the Secret), each at most `limits.maxBytes`, until `grant_expiry` (capped at the
    credentials' expiry). With `throttle` (the observe timer) the Secret is read only from
    the time `next_check_s` gave at the last look. Returns what it did (KEEP also for a
    renewal that would not end later). Raises TemporaryFailure while S3, the credentials
    or the API server are away, InvalidInputError for a Secret the API refuses,
    NotFoundError when it was deleted between its read and its replacement."""
    now = datetime.now(UTC)
    if throttle and owner.uid in _seen and time.monotonic() < _seen[owner.uid][1]:
        return GrantAction.KEEP
    exists, current = await read_grant(ctx, owner)
    signer = credentials_provider(ctx.settings.s3).retrieve().access_key
    action = grant_action(current, exists, now, signer)
    if action is GrantAction.KEEP:
        assert current is not None
        _remember(owner.uid, current, now, renewable=True)
        return action
    layout = MeetingLayout(spec.storage.prefix, spec.guild_id, meeting_id)
    if action is GrantAction.CREATE:
        # the recorder can no longer make its bucket (it holds no key): the operator does
        await ctx.store(spec.storage.bucket).ensure_bucket()
    expires = grant_expiry(started, now, spec.limits.max_duration_seconds,
                           ctx.settings.upload_grant_s)
    if expires <= now:
        # past the session's last upload time: nothing to renew (the Secret stays as it is)
        if current is not None:
            _remember(owner.uid, current, now, renewable=False)
        return GrantAction.KEEP
    grant = mint_upload_grant(ctx.settings.s3, spec.storage.bucket, layout.chunks_root,
                              expires, spec.limits.max_bytes)
    if action is not GrantAction.RESIGN and current is not None \
            and grant.expires_at <= current.expires_at:
        log.info("upload grant of %s/%s due (ends %s) but a new one would not end later: "
                 "the credentials are not refreshed yet", owner.namespace, owner.name,
                 current.expires_at.isoformat())
        _remember(owner.uid, current, now, renewable=False)
        return GrantAction.KEEP
    manifest = build_upload_grant_secret(owner, grant.to_json())
    if action is GrantAction.CREATE:
        await ctx.kube.ensure(manifest)
    else:
        log.info("upload grant of %s/%s renewed (%s): now ends %s", owner.namespace,
                 owner.name, action.value, grant.expires_at.isoformat())
        await ctx.kube.replace_secret(manifest)
    _remember(owner.uid, grant, now, renewable=True)
    return action


def _remember(uid: str, grant: UploadGrant, now: datetime, renewable: bool) -> None:
    _seen[uid] = (grant, time.monotonic() + next_check_s(grant, now, renewable))


async def renew_upload_grant(ctx: Context, owner: SessionRef, spec: SessionSpec,
                             meeting_id: str, started: datetime) -> None:
    """The observe timer's (and the stopping deletion's) call: `ensure_upload_grant`
    throttled; a failure (S3, the credentials or the API server away, the Secret refused
    or deleted meanwhile) is logged and tried again after `failure_backoff_s`, never stops
    the caller."""
    failed = _failed.get(owner.uid)
    if failed is not None and time.monotonic() < failed[1]:
        return
    try:
        await ensure_upload_grant(ctx, owner, spec, meeting_id, started, throttle=True)
    except (TemporaryFailure, InvalidInputError) as err:
        count = (failed[0] if failed is not None else 0) + 1
        delay = failure_backoff_s(count)
        _failed[owner.uid] = (count, time.monotonic() + delay)
        log.warning("upload grant of %s/%s not checked (%d failure(s) in a row; next try "
                    "in %.0f s): %s", owner.namespace, owner.name, count, delay, err)
        return
    _failed.pop(owner.uid, None)


async def revoke_upload_grant(ctx: Context, owner: SessionRef, spec: SessionSpec,
                              meeting_id: str) -> bool:
    """Replace the session's grant Secret with a grant that has already ended, and stop
    renewing it (`forget_grant`): a recorder that reads its Secret again (on S3's refusal)
    finds nothing it may upload with. A POST policy cannot be recalled, so a grant the
    recorder already holds stays valid until its end. True when the Secret was replaced;
    False when it is gone or could not be written (logged: a revocation never stops the
    caller)."""
    forget_grant(owner.uid)
    layout = MeetingLayout(spec.storage.prefix, spec.guild_id, meeting_id)
    try:
        grant = mint_upload_grant(ctx.settings.s3, spec.storage.bucket, layout.chunks_root,
                                  datetime.now(UTC), spec.limits.max_bytes)
        await ctx.kube.replace_secret(build_upload_grant_secret(owner, grant.to_json()))
    except (TemporaryFailure, InvalidInputError) as err:  # NotFoundError: nothing to revoke
        log.warning("upload grant of %s/%s not revoked: %s", owner.namespace, owner.name,
                    err)
        return False
    log.info("upload grant of %s/%s revoked", owner.namespace, owner.name)
    return True


def forget_grant(uid: str) -> None:
    """Drop what was seen of session `uid`'s grant (its recorder is done, or it is gone)."""
    _seen.pop(uid, None)
    _failed.pop(uid, None)
