"""Who may record: one session per guild at a time (a bot is in one voice channel per
guild), one session per meeting id, only into a bucket the operator allows and only in a
namespace whose NetworkPolicies confine its pods. Read from
kopf's session index when the operator runs (`handlers/index.py`), else from a list of
every session; `SessionService` refuses what these find.
"""

from __future__ import annotations

from typing import Any

from voicetrack.errors import NotFoundError, TemporaryFailure
from voicetrack.names import recorder_pod_name
from voicetrack.resources import INACTIVE_STATES, SessionState
from voicetrack_operator.context import POLICY_NAMESPACES_ENV, Context, OperatorSettings
from voicetrack_operator.services.sessionview import SessionView

NO_NETWORK_POLICY = "NoNetworkPolicy"
"""The Ready reason of a session refused for its namespace (`namespace_refusal`)."""


async def _other_sessions(ctx: Context, s: SessionView, key: tuple[str, str]
                         ) -> list[dict[str, Any]]:
    """Every session but `s` that the session index files under `key` (("guild", id) or
    ("meeting", id)); every session but `s` when there is no index (the caller still
    checks the field)."""
    if ctx.sessions is not None:
        kind, value = key
        others = ctx.sessions.in_guild(value) if kind == "guild" \
            else ctx.sessions.in_meeting(value)
    else:
        others = await ctx.kube.list_sessions()
    return [o for o in others if o["metadata"]["uid"] != s.ref.uid]


async def busy_guild(ctx: Context, s: SessionView, *, started_only: bool = False
                     ) -> str | None:
    """The name of an older active session for the same guild, if any. Ties on
    creation time go to the smaller name, so two racing sessions agree who won.
    With `started_only`, only one whose recorder was started counts (`guild_rival`).

    Reads the session index (the guild's sessions) when there is one, else lists every
    session."""
    for other in await _other_sessions(ctx, s, ("guild", s.spec.guild_id)):
        meta = other["metadata"]
        if (other.get("spec") or {}).get("guildId") != s.spec.guild_id:
            continue
        if meta.get("deletionTimestamp") and not await _has_recorder(
                ctx, meta["namespace"], meta["name"]):
            continue  # being promoted, its recorder has left the channel
        status = other.get("status") or {}
        if status.get("state") in INACTIVE_STATES:
            continue
        if started_only and not status.get("recorderPod"):
            continue
        key = (str(meta.get("creationTimestamp", "")), meta["name"])
        if key < (s.created, s.ref.name):
            return f"{meta['namespace']}/{meta['name']}"
    return None


async def _has_recorder(ctx: Context, namespace: str, name: str) -> bool:
    """Whether session `namespace/name`'s recorder Pod exists (the recorder index, else
    a GET)."""
    known = ctx.sessions.has_recorder(namespace, name) if ctx.sessions is not None else None
    if known is not None:
        return known
    return await ctx.kube.get_pod(namespace, recorder_pod_name(name)) is not None


async def guild_rival(ctx: Context, s: SessionView) -> str | None:
    """An older session of the same guild whose recorder was started, while `s` records
    too: the observe timer's re-check of `busy_guild`. The session index can lag the API
    by an event, so two sessions of one guild created at once may both have found the
    guild free; the younger one (creation time, then name) sees the older one here on
    its next tick and stops (`observe_session`). None without the index (the create
    path then listed every session)."""
    if ctx.sessions is None or s.deletion or s.state in INACTIVE_STATES \
            or not s.status.get("recorderPod"):
        return None
    return await busy_guild(ctx, s, started_only=True)


async def meeting_owner(ctx: Context, s: SessionView) -> str | None:
    """Another session (`namespace/name`) that records, or recorded into, the meeting
    id `s` asks for, as the cluster says (the database's `meetings.session_uid` says
    it for sessions already gone). Reads the session index (the meeting id's sessions)
    when there is one, else lists every session; a rival the index does not show yet
    is refused by the database, whose meeting row names the session that made it.
    None when that row already names `s`: its start wrote the row and made its recorder
    but the status patch saying so was lost, so the cluster shows it unstarted, and an
    older rival that never started would otherwise refuse the one that recorded (its
    audio then released unpromoted)."""
    if s.spec.meeting_id is None:
        return None  # derived from the uid: nobody else has it
    if await _row_is_mine(ctx, s):
        return None  # this session made the row (and its recorder): the index lags
    for other in await _other_sessions(ctx, s, ("meeting", s.meeting_id)):
        meta = other["metadata"]
        status = other.get("status") or {}
        if status.get("state") == SessionState.REFUSED:
            continue
        started = bool(status.get("recorderPod"))
        if not started and (str(meta.get("creationTimestamp", "")), meta["name"]) > (
                s.created, s.ref.name):
            continue  # a younger one that has not started yet defers to this one
        theirs = status.get("meetingId") or (other.get("spec") or {}).get("meetingId")
        if theirs == s.meeting_id:
            return f"{meta['namespace']}/{meta['name']}"
    return None


async def _row_is_mine(ctx: Context, s: SessionView) -> bool:
    """Whether the database's row of meeting `s.meeting_id` names session `s` as its
    owner (`meetings.session_uid`); False when there is none or the database is away."""
    try:
        return (await ctx.db.get_meeting(s.meeting_id)).session_uid == s.ref.uid
    except (NotFoundError, TemporaryFailure):
        return False


def bucket_refusal(ctx: Context, s: SessionView) -> str | None:
    """Why session `s` may not record into its `spec.storage.bucket`, None when the
    bucket is allowed (`OperatorSettings.allowed_buckets`: the operator's own bucket and
    VOICETRACK_S3_BUCKETS). S3 keys are often shared across installs, and meeting ids are
    unique only within this install's database: a session pointed at another install's
    bucket would get an upload grant there and write, promote and collect over that
    install's recordings."""
    allowed = ctx.settings.allowed_buckets
    bucket = s.spec.storage.bucket
    if bucket in allowed:
        return None
    return (f"spec.storage.bucket: {bucket!r} is not a bucket this operator may use "
            f"(allowed: {', '.join(sorted(allowed))}; VOICETRACK_S3_BUCKETS, chart value "
            "s3.allowedBuckets): its S3 keys may reach other installs' buckets, whose "
            "recordings a session there could overwrite and delete")


def namespace_refusal(settings: OperatorSettings, namespace: str) -> str | None:
    """Why a session in `namespace` may not record there, None when it may: always when
    `settings.policy_namespaces` is None (no check: the local stack, tests), else when
    `namespace` is one of them. The chart's NetworkPolicies confine recorder pods (which
    parse hostile network input from Discord) and transcoder pods only in the namespaces
    it renders them in, while the operator serves every namespace: elsewhere those pods
    would run with no egress limit at all, so the session is refused instead."""
    allowed = settings.policy_namespaces
    if allowed is None or namespace in allowed:
        return None
    return (f"metadata.namespace: {namespace!r} has no Voicetrack NetworkPolicies (they "
            f"are rendered in: {', '.join(sorted(allowed))}; {POLICY_NAMESPACES_ENV}, "
            "chart value networkPolicy.namespaces): its recorder and transcoder pods would "
            "run unconfined, so it records nothing; add the namespace to "
            "networkPolicy.namespaces and upgrade the release, or record elsewhere")
