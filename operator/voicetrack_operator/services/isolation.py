"""Isolation between sessions: what a recorder may claim, and the identity it runs as.

A recorder parses untrusted network input (Discord voice), so the operator treats what it
writes as untrusted too. Two parts:

- `chunk_refusal` checks a RecordingChunk against its own session before anything acts on
  it (transcode, SQL rows, promotion, collection): its controlling ownerReference is the
  session named by `spec.sessionName` (and its name and label are that session's), its
  guild and meeting are the session's, every track key is exactly the session's own raw key
  (`voicetrack.layout.MeetingLayout.raw_key`, so under the session's bucket prefix), the
  window lies within the session's elapsed time plus `WINDOW_TOLERANCE_MS`, and every raw
  track it names exists in S3. A refused chunk is never transcoded, mirrored or promoted,
  and its raw data is left where it is (no chunk folder is collected because of it). The
  recorder writes the raw tracks before the chunk, so a track not listed yet within
  `ABSENT_GRACE_S` of the chunk's creation is a listing that lags (TemporaryFailure, the
  chunk is checked again), not a refusal; before, that refusal was final at once. Windows
  are in session time on the API server's clock: the recorder corrects its node's clock
  offset and an operator clock behind (`voicetrack_recorder.clock`), since skew past the
  tolerance refused every chunk of a session.
- `ensure_recorder_access` gives each session its own recorder ServiceAccount, Role and
  RoleBinding, owned by the session (the garbage collector removes them with it). The
  chart's ValidatingAdmissionPolicy (`helm/voicetrack/templates/chunk-policy.yaml`) admits
  a chunk written by a recorder ServiceAccount only when that account's name
  (`builders.recorder_service_account`) names the chunk's session and owner uid. It also
  mints the session's upload grant (`voicetrack.uploadgrant`: an S3 POST policy for the
  session's chunk prefix only) into a Secret of the same name, owned by the session
  (`services.grants`, which also renews it): the recorder holds no S3 key, so it can write
  only its own prefix and read or delete nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from voicetrack.chunkspec import ChunkSpec
from voicetrack.errors import TemporaryFailure
from voicetrack.layout import MeetingLayout
from voicetrack.names import chunk_name
from voicetrack.resources import LABEL_SESSION, SessionSpec
from voicetrack_operator.builders import SessionRef, build_session_recorder_rbac
from voicetrack_operator.context import Context
from voicetrack_operator.services.grants import ensure_upload_grant

log = logging.getLogger(__name__)

WINDOW_TOLERANCE_MS = 60_000
"""How far (ms) a chunk's `endMs` may pass the session time at which the API server stamped
the chunk's `creationTimestamp`, measured from the session's own `creationTimestamp` (its
clock origin `startedAt` is never earlier): clock skew between the recorder's node and the
API server left after the recorder's correction (`voicetrack_recorder.clock`: within
2 s). Bounds what a forged window can make promotion allocate."""

ABSENT_GRACE_S = 120.0
"""How long (s, from the chunk's `creationTimestamp` to the operator's now) a raw track
the chunk names may be missing from the S3 listing before the chunk is refused: the
recorder writes raw tracks before it creates the chunk, so within this an absence is taken
for a listing that lags (TemporaryFailure, checked again), not a forgery. Operator clock
skew lengthens or shortens it by as much."""

ABSENT_RETRY_S = 5.0
"""Suggested wait (s) before checking a chunk again whose raw tracks are not listed yet."""


@dataclass(frozen=True)
class SessionFacts:
    """What a chunk is checked against: the session's name and uid, its key layout (bucket
    prefix, guild, meeting), its raw format, and its `metadata.creationTimestamp`."""

    ref: SessionRef
    layout: MeetingLayout
    raw_format: str
    created: datetime


@dataclass(frozen=True)
class ChunkClaim:
    """What a chunk claims about itself, from its object: name, the `voicetrack.dev/session`
    label, the controlling owner's uid (None when it has none), its spec, and the API
    server's `creationTimestamp` (None for a chunk rebuilt from its S3 manifest)."""

    name: str
    label_session: str | None
    owner_uid: str | None
    spec: ChunkSpec
    created: datetime | None


def chunk_refusal(claim: ChunkClaim, session: SessionFacts, now: datetime,
                  present: set[str] | None) -> str | None:
    """Why `claim` is not a chunk of `session`, or None when it is.

    `now` (aware datetime) bounds the window of a chunk without a creation time;
    `present` is the set of object keys found in the chunk's folder (None: not checked).
    Pure: no clock, no I/O. The window bound is `created - session.created` in ms plus
    `WINDOW_TOLERANCE_MS`. Raises TemporaryFailure when the only fault is raw tracks
    absent from `present` and the chunk is younger than `ABSENT_GRACE_S` at `now`."""
    spec, ref = claim.spec, session.ref
    if claim.owner_uid != ref.uid:
        return (f"its controlling owner uid is {claim.owner_uid or 'missing'}, not session "
                f"{ref.name}'s ({ref.uid})")
    if spec.session_name != ref.name:
        return f"spec.sessionName {spec.session_name!r} is not {ref.name!r}"
    if claim.label_session is not None and claim.label_session != ref.name:
        return f"label {LABEL_SESSION}={claim.label_session!r} is not {ref.name!r}"
    if claim.name != chunk_name(ref.name, spec.index):
        return (f"name {claim.name!r} is not {chunk_name(ref.name, spec.index)!r} (the "
                f"session's chunk {spec.index})")
    if (spec.guild_id, spec.meeting_id) != (session.layout.guild_id,
                                            session.layout.meeting_id):
        return (f"guild/meeting {spec.guild_id}/{spec.meeting_id} is not the session's "
                f"{session.layout.guild_id}/{session.layout.meeting_id}")
    if spec.raw_format != session.raw_format:
        return f"rawFormat {spec.raw_format} is not the session's {session.raw_format}"
    users = [t.user_id for t in spec.tracks]
    if len(set(users)) != len(users):
        return "a speaker has more than one track"
    for t in spec.tracks:
        own = session.layout.raw_key(spec.index, t.user_id, spec.raw_format)
        if t.key != own:
            return f"track key {t.key!r} is not the session's own {own!r}"
    elapsed = int(((claim.created or now) - session.created).total_seconds() * 1000)
    bound = max(elapsed, 0) + WINDOW_TOLERANCE_MS
    if spec.end_ms > bound:
        return (f"window [{spec.start_ms}, {spec.end_ms}) ms ends after the session's "
                f"elapsed time {max(elapsed, 0)} ms (+{WINDOW_TOLERANCE_MS} ms tolerance; "
                f"{spec.end_ms - elapsed} ms ahead: a forged window, or clock skew the "
                f"recorder did not correct)")
    if spec.gap is not None and spec.gap.end_ms > spec.start_ms:
        return (f"gap [{spec.gap.start_ms}, {spec.gap.end_ms}) ms does not end before the "
                f"window's start {spec.start_ms} ms")
    if present is not None:
        missing = [t.key for t in spec.tracks if t.key not in present]
        if missing:
            age = (now - claim.created).total_seconds() if claim.created else None
            if age is not None and age < ABSENT_GRACE_S:
                raise TemporaryFailure(
                    f"raw track(s) of {claim.name} not listed in S3 yet: "
                    f"{', '.join(missing)} (checked again until {ABSENT_GRACE_S:.0f} s after "
                    f"its creation, then refused)", delay=ABSENT_RETRY_S)
            return f"raw track(s) absent from S3: {', '.join(missing)}"
    return None


def refusal_message(name: str, why: str) -> str:
    """The chunk status `error` and Event message of a refused chunk."""
    return f"RecordingChunk {name} refused: {why}; not transcoded, its raw data left in place"


async def ensure_recorder_identity(ctx: Context, owner: SessionRef) -> str:
    """Create the session's recorder ServiceAccount, Role and RoleBinding (each owned by
    the session; a 409 counts as done). Returns the ServiceAccount's name. Raises what
    `KubeAdapter.ensure` raises (TemporaryFailure, InvalidInputError)."""
    manifests = build_session_recorder_rbac(owner)
    for manifest in manifests:
        await ctx.kube.ensure(manifest)
    return str(manifests[0]["metadata"]["name"])


async def ensure_recorder_access(ctx: Context, owner: SessionRef, spec: SessionSpec,
                                 meeting_id: str, started: datetime) -> str:
    """What the session's recorder pod needs before it exists: its own ServiceAccount,
    Role and RoleBinding (`ensure_recorder_identity`) and its upload grant
    (`services.grants.ensure_upload_grant`). Returns the ServiceAccount's name.
    Idempotent."""
    name = await ensure_recorder_identity(ctx, owner)
    await ensure_upload_grant(ctx, owner, spec, meeting_id, started)
    return name
