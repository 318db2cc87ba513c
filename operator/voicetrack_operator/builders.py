"""Pure builders: the manifests the operator creates, as plain dicts. Here the settings
every pod shares (`PodSettings`), the owner (`SessionRef`), the recorder Pod, its RBAC and
upload grant Secret, and the pod pieces the Jobs share; the Jobs themselves (transcode,
promotion, live assembly) are `jobs`.

No clock, no random, no client: every input is an argument, so each builder is tested
against its expected manifest without a cluster. Names come from `voicetrack.resources`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from voicetrack.names import owner_reference, recorder_pod_name
from voicetrack.resources import (
    API_VERSION,
    LABEL_COMPONENT,
    LABEL_SESSION,
    MANAGED_BY,
    TRANSCODER_SERVICE_ACCOUNT,
    SessionSpec,
)
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


RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
"""Pod securityContext of every pod the operator makes: non-root UID/GID 10001 (the
images' user), RuntimeDefault seccomp; what the `restricted` Pod Security Standard asks."""
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
"""Container securityContext of every operator-made container: no privilege escalation, a
read-only root filesystem (scratch goes to the `tmp` emptyDir, `tmp_volume`), no
capabilities."""


TERMINATION_MESSAGE_POLICY = "FallbackToLogsOnError"
"""Every container's failure reason lands in its status (`state.terminated.message`): the
termination message file if it wrote one, else the tail of its log."""


def pod_labels(owner: SessionRef, component: str, **extra: str) -> dict[str, str]:
    """The labels of an object made for session `owner`: its name (`LABEL_SESSION`),
    `component` (`LABEL_COMPONENT`), managed-by, and `extra`."""
    return {LABEL_SESSION: owner.name, LABEL_COMPONENT: component, **MANAGED_BY, **extra}


def s3_key_env(settings: PodSettings) -> list[dict[str, Any]]:
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
        env.extend(s3_key_env(settings))
    return env


def build_upload_grant_secret(owner: SessionRef, grant_json: str) -> dict[str, Any]:
    """The Secret holding the session's upload grant (`voicetrack.uploadgrant`, JSON) under
    key `uploadGrant`, named like its recorder ServiceAccount and owned by the session."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": recorder_service_account(owner),
                         "namespace": owner.namespace,
                         "labels": pod_labels(owner, "recorder"),
                         "ownerReferences": [owner_reference(owner.name, owner.uid)]},
            "stringData": {GRANT_SECRET_KEY: grant_json}}


def pod_placement(settings: PodSettings) -> dict[str, Any]:
    """Pod spec fields that send a pod to `settings.node_pool` ({} without one)."""
    if not settings.node_pool:
        return {}
    return {"nodeSelector": {NODE_POOL_KEY: settings.node_pool},
            "tolerations": [{"key": NODE_POOL_KEY, "operator": "Equal",
                             "value": settings.node_pool, "effect": "NoSchedule"}]}


def tmp_volume() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts): an emptyDir named `tmp` mounted at /tmp, the one writable
    place under `RESTRICTED_CONTAINER`'s read-only root."""
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
    volumes, mounts = tmp_volume()
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": recorder_pod_name(owner.name),
            "namespace": owner.namespace,
            "labels": pod_labels(owner, "recorder"),
            "ownerReferences": [owner_reference(owner.name, owner.uid)],
        },
        "spec": {
            "serviceAccountName": recorder_service_account(owner),
            "restartPolicy": "OnFailure",
            "terminationGracePeriodSeconds": 30,
            "securityContext": RESTRICTED_POD,
            **pod_placement(settings),
            "volumes": volumes,
            "containers": [{
                "name": "recorder",
                "image": settings.recorder_image,
                "command": ["voicetrack-recorder", "run"],
                "env": env,
                "volumeMounts": mounts,
                "terminationMessagePolicy": TERMINATION_MESSAGE_POLICY,
                "securityContext": RESTRICTED_CONTAINER,
                "resources": {"requests": {"cpu": "50m", "memory": "128Mi"},
                              "limits": {"memory": "512Mi"}},
            }],
        },
    }


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
            "labels": pod_labels(owner, "recorder"),
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
