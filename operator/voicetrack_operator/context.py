"""The operator's settings and the typed context built once at start-up (kept in memo)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from voicetrack.db.service import RecordingService
from voicetrack.errors import InvalidInputError
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack.uploadgrant import GRANT_SECONDS_ENV, grant_seconds
from voicetrack_operator.adapters.kube import KubeAdapter
from voicetrack_operator.adapters.objects import AsyncObjectStore
from voicetrack_operator.builders import PodSettings
from voicetrack_operator.metrics import Metrics


def _env(name: str, default: str) -> str:
    return os.environ.get(f"VOICETRACK_{name}", default)


@dataclass(frozen=True)
class OperatorSettings:
    """Every setting reads a VOICETRACK_* variable.

    DATABASE_URL: SQLAlchemy async URL (default SQLite file `voicetrack.db`);
    S3_ENDPOINT / S3_ACCESS_KEY / S3_SECRET_KEY: the operator's own S3 access;
    POD_S3_ENDPOINT: the endpoint pods use (default the same);
    S3_SECRET_NAME / DISCORD_SECRET_NAME: Secrets pods read keys and token from;
    POD_DISCORD_API_BASE / POD_DISCORD_GATEWAY_URL / POD_DISCORD_CA_BUNDLE: where recorder
    pods find Discord (unset: Discord itself; the local harness sets them, the CA bundle
    being a file path on the node); POD_NODE_POOL: recorder and transcoder pods select
    and tolerate that node pool (`builders.PodSettings.node_pool`; unset: none);
    RECORDER_IMAGE / TRANSCODER_IMAGE; LIVE_INTERVAL_SECONDS (30; 0 = off, `services.live`);
    JOB_TTL_SECONDS (3600: `ttlSecondsAfterFinished` of the Jobs it makes);
    TEMP_TTL_HOURS (24); UPLOAD_GRANT_SECONDS (unset or 0: a session's upload grant lasts
    until its `limits.maxDurationSeconds` plus an hour; else that many seconds from each
    minting, at least 60, renewed before it ends: `voicetrack.uploadgrant`); KUBECONFIG
    (else the default loading rules); HEALTH_PORT (8080) and METRICS_PORT (9090), 0 = off;
    LISTEN_ADDRESS of both (127.0.0.1); OPERATOR_NAMESPACE (the pod's own, else
    `default`): where promotion Jobs of sessions in a namespace being deleted run;
    S3_BUCKETS: comma-separated buckets sessions may name in `spec.storage.bucket` besides
    S3_BUCKET, always allowed (`allowed_buckets`; unset: S3_BUCKET only);
    POLICY_NAMESPACES: comma-separated namespaces where the chart's NetworkPolicies confine
    recorder and transcoder pods; a session in any other is refused (`policy_namespaces`;
    unset or empty: no check)."""

    database_url: str
    s3: S3Settings
    pods: PodSettings
    temp_ttl: timedelta = timedelta(hours=24)
    live_interval_s: float = 30.0
    kubeconfig: str | None = None
    health_port: int = 8080
    metrics_port: int = 9090
    listen_address: str = "127.0.0.1"
    upload_grant_s: int | None = None
    """Each upload grant's lifetime (s) from its minting; None: the default lifetime."""
    operator_namespace: str = "default"
    """Where a session's promotion Job runs when its own namespace is being deleted
    (`services.deletion`); it needs the S3 Secret there (`PodSettings.s3_secret`)."""
    s3_buckets: frozenset[str] = frozenset()
    """Buckets sessions may use besides `s3.bucket` (VOICETRACK_S3_BUCKETS)."""
    policy_namespaces: frozenset[str] | None = None
    """The only namespaces sessions may record in, those where NetworkPolicies confine
    their pods (VOICETRACK_POLICY_NAMESPACES, `parse_policy_namespaces`); None: any
    (`services.admission.namespace_refusal`)."""

    @property
    def allowed_buckets(self) -> frozenset[str]:
        """The buckets a session may name in `spec.storage.bucket`, and the only ones the
        orphan sweep lists: the operator's own and `s3_buckets`. The operator's S3
        credentials may reach other installs' buckets (shared keys): a session pointed at
        one would get an upload grant there and its deletion would collect there
        (`services.admission.bucket_refusal`)."""
        return frozenset({self.s3.bucket, *self.s3_buckets})

    @classmethod
    def from_env(cls) -> OperatorSettings:
        s3 = S3Settings.from_env()
        pods = PodSettings(
            recorder_image=_env("RECORDER_IMAGE", PodSettings.recorder_image),
            transcoder_image=_env("TRANSCODER_IMAGE", PodSettings.transcoder_image),
            s3_endpoint=_env("POD_S3_ENDPOINT", s3.endpoint),
            s3_region=s3.region,
            s3_secret=_env("S3_SECRET_NAME", PodSettings.s3_secret),
            discord_secret=_env("DISCORD_SECRET_NAME", PodSettings.discord_secret),
            discord_api_base=_env("POD_DISCORD_API_BASE", "") or None,
            discord_gateway_url=_env("POD_DISCORD_GATEWAY_URL", "") or None,
            discord_ca_bundle=_env("POD_DISCORD_CA_BUNDLE", "") or None,
            node_pool=_env("POD_NODE_POOL", "") or None,
            job_ttl_s=int(_env("JOB_TTL_SECONDS", str(PodSettings.job_ttl_s))),
        )
        return cls(
            database_url=_env("DATABASE_URL", "sqlite+aiosqlite:///voicetrack.db"),
            s3=s3,
            pods=pods,
            temp_ttl=timedelta(hours=float(_env("TEMP_TTL_HOURS", "24"))),
            live_interval_s=float(_env("LIVE_INTERVAL_SECONDS", "30")),
            kubeconfig=os.environ.get("VOICETRACK_KUBECONFIG") or None,
            health_port=int(_env("HEALTH_PORT", "8080")),
            metrics_port=int(_env("METRICS_PORT", "9090")),
            listen_address=_env("LISTEN_ADDRESS", "127.0.0.1"),
            upload_grant_s=grant_seconds(os.environ.get(GRANT_SECONDS_ENV)),
            operator_namespace=_env("OPERATOR_NAMESPACE", "") or own_namespace(),
            s3_buckets=frozenset(b.strip() for b in _env("S3_BUCKETS", "").split(",")
                                 if b.strip()),
            policy_namespaces=parse_policy_namespaces(
                os.environ.get(POLICY_NAMESPACES_ENV)),
        )


POLICY_NAMESPACES_ENV = "VOICETRACK_POLICY_NAMESPACES"
"""The namespaces whose recorder and transcoder pods NetworkPolicies confine (the chart
sets it when `networkPolicy.enabled`: the release namespace and `networkPolicy.namespaces`)."""

_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
"""A namespace name: a DNS label (RFC 1123), at most 63 characters."""


def parse_policy_namespaces(text: str | None) -> frozenset[str] | None:
    """$VOICETRACK_POLICY_NAMESPACES parsed: None for unset or blank (no check), else the
    set of namespace names it lists (comma-separated, blanks around and between ignored).
    Raises InvalidInputError naming the variable for a name that is not a namespace name
    (a DNS label: a glob, an uppercase name, a path) or a value listing none (`,`): such
    a list must not widen nor silently empty what is confined, so the operator does not
    start."""
    if text is None or not text.strip():
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not _NAMESPACE.match(n)]
    if bad:
        raise InvalidInputError(f"{POLICY_NAMESPACES_ENV}={text!r}: {', '.join(bad)} "
                                "is not a namespace name (a DNS label)")
    if not names:
        raise InvalidInputError(f"{POLICY_NAMESPACES_ENV}={text!r} lists no namespace")
    return frozenset(names)


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
"""Where a pod reads its own namespace (the ServiceAccount token volume)."""


def own_namespace(path: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """The operator pod's namespace from its ServiceAccount volume; `default` outside a pod
    (a developer's `kopf run`: set VOICETRACK_OPERATOR_NAMESPACE)."""
    try:
        return path.read_text().strip() or "default"
    except OSError:
        return "default"


def session_keys(body: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The keys the session index (`handlers/index.py`) files RecordingSession `body`
    under: its (namespace, name), its guild, and the meeting id it records into when it
    names one (`status.meetingId`, else `spec.meetingId`)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    keys: list[tuple[str, ...]] = [("name", str(meta.get("namespace")), str(meta.get("name")))]
    if spec.get("guildId"):
        keys.append(("guild", str(spec["guildId"])))
    meeting = (body.get("status") or {}).get("meetingId") or spec.get("meetingId")
    if meeting:
        keys.append(("meeting", str(meeting)))
    return keys


@dataclass
class SessionIndex:
    """The RecordingSessions the watch stream shows (kopf's `session_index`, filled before
    any handler runs and updated on each event, so at most one event behind the API), read
    by key: a session by name, the sessions of a guild, those of a meeting id. Only the
    namespaces this operator serves."""

    index: Mapping[Any, Iterable[dict[str, Any]]]
    recorders: Mapping[Any, Iterable[dict[str, Any]]] | None = None
    """kopf's `recorder_index` (recorder Pods by (namespace, session name)), when known."""

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The session `namespace/name`, None when the index does not show it."""
        for obj in self.index.get(("name", namespace, name), ()):
            return obj
        return None

    def in_guild(self, guild_id: str) -> list[dict[str, Any]]:
        return list(self.index.get(("guild", guild_id), ()))

    def in_meeting(self, meeting_id: str) -> list[dict[str, Any]]:
        return list(self.index.get(("meeting", meeting_id), ()))

    def has_recorder(self, namespace: str, name: str) -> bool | None:
        """Whether the session's recorder Pod exists, None without the recorder index."""
        if self.recorders is None:
            return None
        return any(True for _ in self.recorders.get((namespace, name), ()))


@dataclass
class Context:
    """What every handler shares: settings and the three adapters."""

    settings: OperatorSettings
    kube: KubeAdapter
    db: RecordingService
    objects: dict[str, AsyncObjectStore] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    unsynced: dict[tuple[str, str], str] = field(default_factory=dict)
    """Sessions (namespace, name) whose SQL mirror lags, with the last error: the
    observe timer replays their chunks and reports DatabaseSynced meanwhile."""
    audited: set[str] = field(default_factory=set)
    """Sessions (uid) whose SQL mirror this replica compared with their chunks since it
    last turned active (emptied then: a replica killed between a chunk's status patch and
    its SQL write leaves a row behind, which only such a comparison finds)."""
    progress_patched: dict[str, float] = field(default_factory=dict)
    """Session uid -> when the observe timer last returned a status patch or created a
    live Job (monotonic s): its write budget (`SessionService.observe_session`)."""
    live_launched: dict[str, float] = field(default_factory=dict)
    """Session uid -> when the observe timer last created a live Job for it (monotonic s):
    the live interval counts from it, so it holds after the finished Job left the watch
    (its TTL) and whatever the API server's clock says (`live.decide`)."""
    live_tries: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Session uid -> (chunks, launches): how many live Jobs this replica launched for that
    chunk count since one succeeded (`live.decide` waits twice as long after each past
    `LIVE_TRIES`; a success or a withdrawal forgets them)."""
    meeting_checked: dict[str, float] = field(default_factory=dict)
    """Meeting id -> when its row was last seen (monotonic s), for
    `SessionService.repair_meeting`'s throttle. Meeting ids are unique per session (a
    uid's hash, or a spec id no other session may take)."""
    sessions: SessionIndex | None = None
    """The sessions the watches show (set at start-up from kopf's indexes); None outside
    kopf (services called directly), where the services read the API instead."""

    def forget_session(self, uid: str, meeting_id: str) -> None:
        """Drop what this replica keeps of session `uid` (recording into `meeting_id`): its
        audit mark and throttle clocks. Called once its deletion is done, so a long-running
        operator holds nothing per past session (issue 16: thousands of sessions a day)."""
        self.audited.discard(uid)
        self.progress_patched.pop(uid, None)
        self.live_launched.pop(uid, None)
        self.live_tries.pop(uid, None)
        self.meeting_checked.pop(meeting_id, None)

    def turned_active(self) -> None:
        """Forget, on each turn to active, which sessions' SQL mirrors were audited (a
        replica killed between a chunk's status patch and its row leaves that row behind)
        and the throttle clocks of the last turn (stale: another replica acted since).
        A replica whose peering record lapsed while it acted (it stalled past its lifetime,
        so another one may have acted) comes back as a new turn too
        (`Leadership.observe`)."""
        self.audited.clear()
        self.progress_patched.clear()
        self.live_launched.clear()
        self.live_tries.clear()
        self.meeting_checked.clear()

    def store(self, bucket: str) -> AsyncObjectStore:
        """The async object store for `bucket` (one client per bucket, made on first use)."""
        if bucket not in self.objects:
            s3 = self.settings.s3
            self.objects[bucket] = AsyncObjectStore(ObjectStore(
                dataclasses.replace(s3, bucket=bucket)))
        return self.objects[bucket]
