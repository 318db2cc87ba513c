"""Pure builders: the manifests the operator creates, as plain dicts.

No clock, no random, no client: every input is an argument, so each builder is tested
against its expected manifest without a cluster. Names come from `voicetrack.resources`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from voicetrack.chunkspec import ChunkSpec
from voicetrack.names import (
    child_name,
    owner_reference,
    promote_job_name,
    recorder_pod_name,
    transcode_job_name,
)
from voicetrack.resources import (
    API_VERSION,
    GROUP,
    LABEL_CHUNK_INDEX,
    LABEL_COMPONENT,
    LABEL_SESSION,
    MANAGED_BY,
    TRANSCODER_SERVICE_ACCOUNT,
    SessionSpec,
)
from voicetrack.termination import EXIT_BAD_INPUT
from voicetrack.uploadgrant import GRANT_ENV, GRANT_SECRET_ENV, GRANT_SECRET_KEY

NODE_POOL_KEY = "voicetrack.dev/node-pool"
"""Label and `NoSchedule` taint key of a dedicated node pool (the local harness's kwok nodes
use it, `voicetrack_local.kwok`); see `PodSettings.node_pool`."""

RECORDER_SERVICE_ACCOUNT = "voicetrack-recorder"
"""The recorder ServiceAccounts' name stem: each session's is
`voicetrack-recorder.<session uid>.<session name>` (`recorder_service_account`)."""


@dataclass(frozen=True)
class PodSettings:
    """What every pod the operator builds needs: images, where S3 is, the Secrets that hold
    the S3 keys (`accessKey`, `secretKey`) and the bot token (`token`)."""

    recorder_image: str = "voicetrack/recorder:0.1.0"
    transcoder_image: str = "voicetrack/transcoder:0.1.0"
    s3_endpoint: str = "http://voicetrack-s3:8333"
    s3_region: str = "us-east-1"
    """VOICETRACK_S3_REGION for recorder and transcoder pods (the operator's own)."""
    s3_secret: str = "voicetrack-s3"
    """The Secret (`accessKey`, `secretKey`) transcoder, promotion and live Job pods (and
    `files` recorders) read their S3 keys from, in their session's namespace. Empty
    (VOICETRACK_S3_SECRET_NAME="", the chart's choice when it has no keys): no key
    variables at all; the Jobs take the standard AWS chain under the
    `voicetrack-transcoder` ServiceAccount (an IRSA role from its annotations). A `files`
    recorder then has nothing to read its inputs with (its session's own account carries no
    role): the files source needs keys."""
    discord_secret: str = "voicetrack-discord"
    transcode_deadline_s: int = 600
    promote_deadline_s: int = 3600
    job_ttl_s: int = 3600
    backoff_limit: int = 3
    discord_api_base: str | None = None
    """VOICETRACK_DISCORD_API_BASE for recorder pods (None: Discord itself)."""
    discord_gateway_url: str | None = None
    """VOICETRACK_DISCORD_GATEWAY_URL for recorder pods (None: Discord's gateway)."""
    discord_ca_bundle: str | None = None
    """VOICETRACK_DISCORD_CA_BUNDLE for recorder pods: a PEM file path on the node (None:
    the system trust). Only the local harness sets these three."""
    node_pool: str | None = None
    """When set (VOICETRACK_POD_NODE_POOL), recorder, transcoder and promotion pods select
    nodes labelled `voicetrack.dev/node-pool=<pool>` and tolerate that `NoSchedule` taint
    (the scale benchmark's fake nodes). None (the default): no selector, no toleration."""


@dataclass(frozen=True)
class SessionRef:
    """The owner: a RecordingSession's name, namespace and uid."""

    name: str
    namespace: str
    uid: str


_RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
_RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


TERMINATION_MESSAGE_POLICY = "FallbackToLogsOnError"
"""Every container's failure reason lands in its status (`state.terminated.message`): the
termination message file if it wrote one, else the tail of its log."""


def _labels(owner: SessionRef, component: str, **extra: str) -> dict[str, str]:
    return {LABEL_SESSION: owner.name, LABEL_COMPONENT: component, **MANAGED_BY, **extra}


def _s3_env(settings: PodSettings, bucket: str) -> list[dict[str, Any]]:
    """Where S3 is, and its keys from `settings.s3_secret` unless that is empty (the AWS
    credential chain)."""
    return [
        {"name": "VOICETRACK_S3_ENDPOINT", "value": settings.s3_endpoint},
        {"name": "VOICETRACK_S3_REGION", "value": settings.s3_region},
        {"name": "VOICETRACK_S3_BUCKET", "value": bucket},
        *_s3_key_env(settings),
    ]


def _s3_key_env(settings: PodSettings) -> list[dict[str, Any]]:
    """VOICETRACK_S3_ACCESS_KEY/SECRET_KEY from `settings.s3_secret`; none when it is empty."""
    if not settings.s3_secret:
        return []
    return [
        {"name": "VOICETRACK_S3_ACCESS_KEY", "valueFrom": {"secretKeyRef": {
            "name": settings.s3_secret, "key": "accessKey"}}},
        {"name": "VOICETRACK_S3_SECRET_KEY", "valueFrom": {"secretKeyRef": {
            "name": settings.s3_secret, "key": "secretKey"}}},
    ]


def _recorder_s3_env(owner: SessionRef, spec: SessionSpec, settings: PodSettings
                     ) -> list[dict[str, Any]]:
    """Where S3 is and the session's upload grant (its Secret, `build_upload_grant_secret`,
    as the initial grant and by name, to read renewed grants from): no S3 key, so the
    recorder writes only under its session's chunk prefix. The files
    source (demo and tests: its input is operator-named objects, not network data) also
    reads its speakers from S3, so it keeps the keys for reading."""
    env: list[dict[str, Any]] = [
        {"name": "VOICETRACK_S3_ENDPOINT", "value": settings.s3_endpoint},
        {"name": "VOICETRACK_S3_REGION", "value": settings.s3_region},
        {"name": "VOICETRACK_S3_BUCKET", "value": spec.storage.bucket},
        {"name": GRANT_ENV, "valueFrom": {"secretKeyRef": {
            "name": recorder_service_account(owner), "key": GRANT_SECRET_KEY}}},
        {"name": GRANT_SECRET_ENV, "value": recorder_service_account(owner)},
    ]
    if spec.source.type == "files":
        env.extend(_s3_key_env(settings))
    return env


def build_upload_grant_secret(owner: SessionRef, grant_json: str) -> dict[str, Any]:
    """The Secret holding the session's upload grant (`voicetrack.uploadgrant`, JSON) under
    key `uploadGrant`, named like its recorder ServiceAccount and owned by the session."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": recorder_service_account(owner),
                         "namespace": owner.namespace,
                         "labels": _labels(owner, "recorder"),
                         "ownerReferences": [owner_reference(owner.name, owner.uid)]},
            "stringData": {GRANT_SECRET_KEY: grant_json}}


def _placement(settings: PodSettings) -> dict[str, Any]:
    """Pod spec fields that send a pod to `settings.node_pool` ({} without one)."""
    if not settings.node_pool:
        return {}
    return {"nodeSelector": {NODE_POOL_KEY: settings.node_pool},
            "tolerations": [{"key": NODE_POOL_KEY, "operator": "Equal",
                             "value": settings.node_pool, "effect": "NoSchedule"}]}


def _tmp_volume() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return ([{"name": "tmp", "emptyDir": {}}], [{"name": "tmp", "mountPath": "/tmp"}])


def recorder_service_account(owner: SessionRef) -> str:
    """The session's own recorder ServiceAccount: `voicetrack-recorder.<uid>.<name>` (a DNS
    subdomain name of at most 20 + 36 + 1 + 63 = 120 characters). The chart's
    ValidatingAdmissionPolicy `voicetrack-recorder-chunks` rebuilds this name from a chunk's
    ownerReference uid and `spec.sessionName` and compares it with the requesting user
    `system:serviceaccount:<namespace>:<name>`, so the two must agree."""
    return f"{RECORDER_SERVICE_ACCOUNT}.{owner.uid}.{owner.name}"


def build_recorder_pod(owner: SessionRef, spec: SessionSpec, meeting_id: str,
                       started_at_ms: int, settings: PodSettings) -> dict[str, Any]:
    """The recorder Pod `<session>-rec`: restarts on failure (it continues at the next
    chunk index), 30 s to flush its open chunk on SIGTERM."""
    env: list[dict[str, Any]] = [
        {"name": "VOICETRACK_NAMESPACE", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.namespace"}}},
        {"name": "VOICETRACK_SESSION_NAME", "value": owner.name},
        {"name": "VOICETRACK_MEETING_ID", "value": meeting_id},
        {"name": "VOICETRACK_SESSION_STARTED_AT_MS", "value": str(started_at_ms)},
        *_recorder_s3_env(owner, spec, settings),
    ]
    if spec.source.type == "discord":
        env.append({"name": "VOICETRACK_DISCORD_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": settings.discord_secret, "key": "token"}}})
        env.extend({"name": name, "value": value} for name, value in (
            ("VOICETRACK_DISCORD_API_BASE", settings.discord_api_base),
            ("VOICETRACK_DISCORD_GATEWAY_URL", settings.discord_gateway_url),
            ("VOICETRACK_DISCORD_CA_BUNDLE", settings.discord_ca_bundle)) if value)
    volumes, mounts = _tmp_volume()
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": recorder_pod_name(owner.name),
            "namespace": owner.namespace,
            "labels": _labels(owner, "recorder"),
            "ownerReferences": [owner_reference(owner.name, owner.uid)],
        },
        "spec": {
            "serviceAccountName": recorder_service_account(owner),
            "restartPolicy": "OnFailure",
            "terminationGracePeriodSeconds": 30,
            "securityContext": _RESTRICTED_POD,
            **_placement(settings),
            "volumes": volumes,
            "containers": [{
                "name": "recorder",
                "image": settings.recorder_image,
                "command": ["voicetrack-recorder", "run"],
                "env": env,
                "volumeMounts": mounts,
                "terminationMessagePolicy": TERMINATION_MESSAGE_POLICY,
                "securityContext": _RESTRICTED_CONTAINER,
                "resources": {"requests": {"cpu": "50m", "memory": "128Mi"},
                              "limits": {"memory": "512Mi"}},
            }],
        },
    }


def _job(owner: SessionRef, name: str, component: str, labels: dict[str, str],
         args: list[str], settings: PodSettings, bucket: str, deadline_s: int
         ) -> dict[str, Any]:
    volumes, mounts = _tmp_volume()
    pod_labels = _labels(owner, component, **labels)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": pod_labels,
            "ownerReferences": [owner_reference(owner.name, owner.uid)],
        },
        "spec": {
            "backoffLimit": settings.backoff_limit,
            "activeDeadlineSeconds": deadline_s,
            "ttlSecondsAfterFinished": settings.job_ttl_s,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob",
                 "onExitCodes": {"containerName": "transcoder", "operator": "In",
                                 "values": [EXIT_BAD_INPUT]}},
                # a pod evicted, preempted or drained off its node says nothing of the
                # input: a new pod, not counted against backoffLimit
                {"action": "Ignore",
                 "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "serviceAccountName": TRANSCODER_SERVICE_ACCOUNT,
                    "automountServiceAccountToken": False,
                    "restartPolicy": "Never",
                    "securityContext": _RESTRICTED_POD,
                    **_placement(settings),
                    "volumes": volumes,
                    "containers": [{
                        "name": "transcoder",
                        "image": settings.transcoder_image,
                        "command": ["voicetrack-transcoder"],
                        "args": args,
                        "env": _s3_env(settings, bucket),
                        "volumeMounts": mounts,
                        "terminationMessagePolicy": TERMINATION_MESSAGE_POLICY,
                        "securityContext": _RESTRICTED_CONTAINER,
                        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"},
                                      "limits": {"memory": "768Mi"}},
                    }],
                },
            },
        },
    }


def build_transcode_job(owner: SessionRef, chunk: ChunkSpec, spec: SessionSpec,
                        settings: PodSettings) -> dict[str, Any]:
    """The transcoder Job `<session>-tx-<index:06d>` for one chunk: exit code 2 (bad
    input) fails it at once through `podFailurePolicy`; a pod with the `DisruptionTarget`
    condition (eviction, preemption, node drain) is replaced without counting; other
    failures retry up to `backoffLimit`, within `activeDeadlineSeconds`. `--tracks` makes
    it also prepare the chunk's piece of the final tracks (incremental promotion)."""
    args = [
        "chunk",
        "--chunk-json", json.dumps(chunk.to_api(), separators=(",", ":"), sort_keys=True),
        "--prefix", spec.storage.prefix,
        "--formats", ",".join(spec.output.formats),
        "--mp3-bitrate", str(spec.output.mp3_bitrate),
        "--tracks", spec.output.tracks,
    ]
    return _job(owner, transcode_job_name(owner.name, chunk.index), "transcoder",
                {LABEL_CHUNK_INDEX: str(chunk.index)}, args, settings, spec.storage.bucket,
                settings.transcode_deadline_s)


def build_promote_job(owner: SessionRef, plan_key: str, spec: SessionSpec,
                      settings: PodSettings) -> dict[str, Any]:
    """The promotion Job `<session>-promote`, reading its plan from `plan_key` in S3."""
    return _job(owner, promote_job_name(owner.name), "promoter", {},
                ["promote", "--plan-key", plan_key], settings, spec.storage.bucket,
                settings.promote_deadline_s)


LABEL_SESSION_UID = f"{GROUP}/session-uid"
"""Label of a promotion Job run outside its session's namespace (`build_detached_promote_job`):
the session's uid, since nothing owns that Job."""
LABEL_SESSION_NAMESPACE = f"{GROUP}/session-namespace"
"""Label of a detached promotion Job: its session's namespace."""


def detached_promote_job_name(uid: str) -> str:
    """`voicetrack-promote-<session uid>` (55 characters): the promotion Job of a session
    whose namespace is being deleted, in the operator's namespace, where names of sessions
    in different namespaces would collide."""
    return f"voicetrack-promote-{uid}"


def build_detached_promote_job(owner: SessionRef, plan_key: str, spec: SessionSpec,
                               settings: PodSettings, namespace: str) -> dict[str, Any]:
    """The promotion Job of a session whose namespace is being deleted (where nothing may
    be created: the API server answers 403), run in `namespace` (the operator's):
    `detached_promote_job_name`, labelled with the session's uid and namespace, no owner
    reference (the session's garbage collection must not depend on it, and owners cannot
    cross namespaces); the deletion deletes it once the promotion is verified, and its
    `ttlSecondsAfterFinished` otherwise. The S3 Secret and the transcoder ServiceAccount it
    names must exist in `namespace`."""
    job = build_promote_job(owner, plan_key, spec, settings)
    extra = {LABEL_SESSION_UID: owner.uid, LABEL_SESSION_NAMESPACE: owner.namespace}
    meta = job["metadata"]
    meta.update(name=detached_promote_job_name(owner.uid), namespace=namespace,
                labels={**meta["labels"], **extra})
    del meta["ownerReferences"]
    template = job["spec"]["template"]["metadata"]
    template["labels"] = {**template["labels"], **extra}
    return job


LIVE_COMPONENT = "live"
"""`voicetrack.dev/component` of the live-assembly Jobs (the "audio so far")."""
LABEL_LIVE_CHUNKS = f"{GROUP}/live-chunks"
"""Label of a live-assembly Job: how many chunks (0..N-1) it assembles."""


def live_job_name(session: str, chunks: int) -> str:
    """`<session>-live-<chunks:06d>` (`child_name`: cut and hashed when long)."""
    return child_name(session, f"live-{chunks:06d}")


def build_live_job(owner: SessionRef, spec: SessionSpec, meeting_id: str, chunks: int,
                   settings: PodSettings, silent: list[int] | None = None) -> dict[str, Any]:
    """The live-assembly Job `<session>-live-<chunks:06d>`: `voicetrack-transcoder live`
    joins the MP3 pieces of chunks `[0, chunks)` into `live/<track>.mp3` and
    `live/manifest.json` (the audio so far), the chunks in `silent` (no piece: failed, or
    nobody spoke) as silence. The transcoder image, S3 access and pod settings of the
    chunk Jobs; `backoffLimit` 0, since the operator's next interval is its retry
    (`services.live`), and it is labelled with `chunks`."""
    args = ["live", "--prefix", spec.storage.prefix, "--guild-id", spec.guild_id,
            "--meeting-id", meeting_id, "--chunks", str(chunks)]
    if silent:
        args += ["--silent-chunks", ",".join(str(i) for i in sorted(silent))]
    job = _job(owner, live_job_name(owner.name, chunks), LIVE_COMPONENT,
               {LABEL_LIVE_CHUNKS: str(chunks)}, args, settings, spec.storage.bucket,
               settings.transcode_deadline_s)
    job["spec"]["backoffLimit"] = 0
    return job


def build_recorder_rbac(namespace: str) -> list[dict[str, Any]]:
    """The transcoder pods' ServiceAccount (no token mounted). Recorders each have their
    session's own (`build_session_recorder_rbac`)."""
    labels = dict(MANAGED_BY)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": TRANSCODER_SERVICE_ACCOUNT, "namespace": namespace,
                      "labels": labels},
         "automountServiceAccountToken": False},
    ]


def build_session_recorder_rbac(owner: SessionRef) -> list[dict[str, Any]]:
    """The session's recorder ServiceAccount, Role and RoleBinding, each owned by the
    session (collected with it), named `recorder_service_account(owner)`. Least privilege:
    get and watch its own RecordingSession (resourceNames), create, get and list chunks,
    update its own session's finalizers (the chunks' blockOwnerDeletion ownerReference,
    checked by OwnerReferencesPermissionEnforcement), get its own upload grant Secret
    (resourceNames: the renewed grant, `voicetrack.uploadgrant`). Which chunks it may
    create is the admission policy's part: RBAC cannot name an object before it exists."""
    name = recorder_service_account(owner)
    group = API_VERSION.split("/")[0]
    meta = {"name": name, "namespace": owner.namespace,
            "labels": _labels(owner, "recorder"),
            "ownerReferences": [owner_reference(owner.name, owner.uid)]}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
         "rules": [
             {"apiGroups": [group], "resources": ["recordingsessions"],
              "resourceNames": [owner.name], "verbs": ["get", "list", "watch"]},
             {"apiGroups": [group], "resources": ["recordingchunks"],
              "verbs": ["create", "get", "list"]},
             {"apiGroups": [group], "resources": ["recordingsessions/finalizers"],
              "resourceNames": [owner.name], "verbs": ["update"]},
             {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [name],
              "verbs": ["get"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name,
                       "namespace": owner.namespace}]},
    ]
