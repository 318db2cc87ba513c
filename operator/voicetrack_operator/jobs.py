"""Pure builders of the Jobs the operator runs, all on the transcoder image under the
transcoder ServiceAccount with one pod-failure policy (`_job`): a chunk's transcode
(`build_transcode_job`), the promotion, in its session's namespace (`build_promote_job`)
or detached in the operator's (`build_detached_promote_job`), and the live assembly of the
audio so far (`build_live_job`), with the names and labels that find them again.

Pure like `builders` (no clock, no random, no client), whose pod pieces they share: the
security contexts, labels, S3 keys, the /tmp volume and node-pool placement.
"""

from __future__ import annotations

import json
from typing import Any

from voicetrack.chunkspec import ChunkSpec
from voicetrack.names import child_name, owner_reference, promote_job_name, transcode_job_name
from voicetrack.resources import (
    GROUP,
    LABEL_CHUNK_INDEX,
    TRANSCODER_SERVICE_ACCOUNT,
    SessionSpec,
)
from voicetrack.termination import EXIT_BAD_INPUT
from voicetrack_operator.builders import (
    RESTRICTED_CONTAINER,
    RESTRICTED_POD,
    TERMINATION_MESSAGE_POLICY,
    PodSettings,
    SessionRef,
    pod_labels,
    pod_placement,
    s3_key_env,
    tmp_volume,
)


def _s3_env(settings: PodSettings, bucket: str) -> list[dict[str, Any]]:
    """Where S3 is, and its keys from `settings.s3_secret` unless that is empty (the AWS
    credential chain)."""
    return [
        {"name": "VOICETRACK_S3_ENDPOINT", "value": settings.s3_endpoint},
        {"name": "VOICETRACK_S3_REGION", "value": settings.s3_region},
        {"name": "VOICETRACK_S3_BUCKET", "value": bucket},
        *s3_key_env(settings),
    ]


def _job(owner: SessionRef, name: str, component: str, labels: dict[str, str],
         args: list[str], settings: PodSettings, bucket: str, deadline_s: int
         ) -> dict[str, Any]:
    """The Job `name` (labelled `component` and `labels`, owned by `owner`) running
    `voicetrack-transcoder <args>` against `bucket`, within `deadline_s` seconds."""
    volumes, mounts = tmp_volume()
    job_labels = pod_labels(owner, component, **labels)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": job_labels,
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
                "metadata": {"labels": job_labels},
                "spec": {
                    "serviceAccountName": TRANSCODER_SERVICE_ACCOUNT,
                    "automountServiceAccountToken": False,
                    "restartPolicy": "Never",
                    "securityContext": RESTRICTED_POD,
                    **pod_placement(settings),
                    "volumes": volumes,
                    "containers": [{
                        "name": "transcoder",
                        "image": settings.transcoder_image,
                        "command": ["voicetrack-transcoder"],
                        "args": args,
                        "env": _s3_env(settings, bucket),
                        "volumeMounts": mounts,
                        "terminationMessagePolicy": TERMINATION_MESSAGE_POLICY,
                        "securityContext": RESTRICTED_CONTAINER,
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


LIVE_JOB_TTL_S = 120
"""`ttlSecondsAfterFinished` of a live Job (s): long enough for the observe timer (2 s) to
read a completed one's manifest, and for a failed one's pod log to be looked at."""


def build_live_job(owner: SessionRef, spec: SessionSpec, meeting_id: str, chunks: int,
                   settings: PodSettings, silent: list[int] | None = None) -> dict[str, Any]:
    """The live-assembly Job `<session>-live-<chunks:06d>`: `voicetrack-transcoder live`
    joins the MP3 pieces of chunks `[0, chunks)` into `live/<track>.mp3` and
    `live/manifest.json` (the audio so far), the chunks in `silent` (no piece: failed, or
    nobody spoke) as silence. The transcoder image, S3 access and pod settings of the
    chunk Jobs; `backoffLimit` 0, since the operator's next interval is its retry
    (`services.live`), `ttlSecondsAfterFinished` `LIVE_JOB_TTL_S` (a finished live Job is
    superseded by the next one or has been read once; the Job controller removes it), and
    it is labelled with `chunks`."""
    args = ["live", "--prefix", spec.storage.prefix, "--guild-id", spec.guild_id,
            "--meeting-id", meeting_id, "--chunks", str(chunks)]
    if silent:
        args += ["--silent-chunks", ",".join(str(i) for i in sorted(silent))]
    job = _job(owner, live_job_name(owner.name, chunks), LIVE_COMPONENT,
               {LABEL_LIVE_CHUNKS: str(chunks)}, args, settings, spec.storage.bucket,
               settings.transcode_deadline_s)
    job["spec"]["backoffLimit"] = 0
    job["spec"]["ttlSecondsAfterFinished"] = LIVE_JOB_TTL_S
    return job
