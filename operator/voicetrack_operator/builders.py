"""Pure builders: the manifests the operator creates, as plain dicts.

No clock, no random, no client: every input is an argument, so each builder is tested
against its expected manifest without a cluster. Names come from `voicetrack.resources`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from voicetrack.resources import (
    API_VERSION,
    LABEL_CHUNK_INDEX,
    LABEL_COMPONENT,
    LABEL_SESSION,
    MANAGED_BY,
    ChunkSpec,
    SessionSpec,
    owner_reference,
    promote_job_name,
    recorder_pod_name,
    transcode_job_name,
)

NODE_POOL_KEY = "voicetrack.dev/node-pool"
"""Label and `NoSchedule` taint key of a dedicated node pool (the local harness's kwok nodes
use it, `voicetrack_local.kwok`); see `PodSettings.node_pool`."""

RECORDER_SERVICE_ACCOUNT = "voicetrack-recorder"
TRANSCODER_SERVICE_ACCOUNT = "voicetrack-transcoder"


@dataclass(frozen=True)
class PodSettings:
    """What every pod the operator builds needs: images, where S3 is, the Secrets that hold
    the S3 keys (`accessKey`, `secretKey`) and the bot token (`token`)."""

    recorder_image: str = "voicetrack/recorder:0.1.0"
    transcoder_image: str = "voicetrack/transcoder:0.1.0"
    s3_endpoint: str = "http://voicetrack-s3:8333"
    s3_secret: str = "voicetrack-s3"
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
    return [
        {"name": "VOICETRACK_S3_ENDPOINT", "value": settings.s3_endpoint},
        {"name": "VOICETRACK_S3_BUCKET", "value": bucket},
        {"name": "VOICETRACK_S3_ACCESS_KEY", "valueFrom": {"secretKeyRef": {
            "name": settings.s3_secret, "key": "accessKey"}}},
        {"name": "VOICETRACK_S3_SECRET_KEY", "valueFrom": {"secretKeyRef": {
            "name": settings.s3_secret, "key": "secretKey"}}},
    ]


def _placement(settings: PodSettings) -> dict[str, Any]:
    """Pod spec fields that send a pod to `settings.node_pool` ({} without one)."""
    if not settings.node_pool:
        return {}
    return {"nodeSelector": {NODE_POOL_KEY: settings.node_pool},
            "tolerations": [{"key": NODE_POOL_KEY, "operator": "Equal",
                             "value": settings.node_pool, "effect": "NoSchedule"}]}


def _tmp_volume() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return ([{"name": "tmp", "emptyDir": {}}], [{"name": "tmp", "mountPath": "/tmp"}])


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
        *_s3_env(settings, spec.storage.bucket),
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
            "serviceAccountName": RECORDER_SERVICE_ACCOUNT,
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
            "podFailurePolicy": {"rules": [{
                "action": "FailJob",
                "onExitCodes": {"containerName": "transcoder", "operator": "In",
                                "values": [2]},
            }]},
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
    input) fails it at once through `podFailurePolicy`; other failures retry up to
    `backoffLimit`."""
    args = [
        "chunk",
        "--chunk-json", json.dumps(chunk.to_api(), separators=(",", ":"), sort_keys=True),
        "--prefix", spec.storage.prefix,
        "--formats", ",".join(spec.output.formats),
        "--mp3-bitrate", str(spec.output.mp3_bitrate),
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


def build_recorder_rbac(namespace: str) -> list[dict[str, Any]]:
    """ServiceAccounts for recorder and transcoder pods, and the recorder's least
    privilege: read and watch sessions, create and list chunks, in its namespace only."""
    labels = dict(MANAGED_BY)
    group = API_VERSION.split("/")[0]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": RECORDER_SERVICE_ACCOUNT, "namespace": namespace,
                      "labels": labels}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": TRANSCODER_SERVICE_ACCOUNT, "namespace": namespace,
                      "labels": labels},
         "automountServiceAccountToken": False},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": RECORDER_SERVICE_ACCOUNT, "namespace": namespace,
                      "labels": labels},
         "rules": [
             {"apiGroups": [group], "resources": ["recordingsessions"],
              "verbs": ["get", "list", "watch"]},
             {"apiGroups": [group], "resources": ["recordingchunks"],
              "verbs": ["create", "get", "list"]},
             # chunks it creates block their session's deletion (ownerReference with
             # blockOwnerDeletion), which OwnerReferencesPermissionEnforcement checks
             {"apiGroups": [group], "resources": ["recordingsessions/finalizers"],
              "verbs": ["update"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": RECORDER_SERVICE_ACCOUNT, "namespace": namespace,
                      "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": RECORDER_SERVICE_ACCOUNT},
         "subjects": [{"kind": "ServiceAccount", "name": RECORDER_SERVICE_ACCOUNT,
                       "namespace": namespace}]},
    ]
