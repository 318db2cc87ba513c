"""In-memory indexes kopf keeps from its watch streams, keyed by (namespace, session name):
the session's RecordingChunks, its transcoder Jobs and its recorder Pod. The observe timer
reads them instead of listing chunks and Jobs and reading the pod every tick (three API
reads per session every 2 s, two of them LISTs that scan the namespace: issue 16).
The RecordingSessions themselves are indexed by name, guild and meeting id
(`context.SessionIndex`): starting a session checked its guild and meeting id against a
list of every session (O(N²) to start N), and each chunk read its session twice.

kopf fills every index before it runs any other handler, and updates it on each watch event,
so a value is at most one event behind the API. Values are the objects without
`managedFields` (and a Job without its pod template, which holds the chunk's JSON), to keep
memory per chunk small.

Index ids are Python identifiers, not kebab-case: kopf passes each index to handlers as a
keyword argument named after its id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from voicetrack.names import controller_uid
from voicetrack.resources import (
    CHUNK_PLURAL,
    GROUP,
    LABEL_CHUNK_INDEX,
    LABEL_COMPONENT,
    LABEL_SESSION,
    SESSION_PLURAL,
    VERSION,
)
from voicetrack_operator.context import session_keys
from voicetrack_operator.jobs import LIVE_COMPONENT
from voicetrack_operator.services.sessionview import Observed

CHUNK = (GROUP, VERSION, CHUNK_PLURAL)
_META_KEYS = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp",
              "deletionTimestamp", "labels", "ownerReferences", "generation")


def slim(body: kopf.Body | dict[str, Any], *, spec: bool = True) -> dict[str, Any]:
    """A plain-dict copy of `body` with the metadata the services read, its spec (unless
    `spec` is False) and status."""
    meta = body.get("metadata") or {}
    out: dict[str, Any] = {
        "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
        "metadata": {k: _plain(meta[k]) for k in _META_KEYS if k in meta},
        "status": _plain(body.get("status") or {}),
    }
    if spec:
        out["spec"] = _plain(body.get("spec") or {})
    return out


def _plain(value: Any) -> Any:
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _key(namespace: str | None, labels: kopf.Labels) -> tuple[str, str] | None:
    session = labels.get(LABEL_SESSION)
    return (namespace, session) if namespace and session else None


@kopf.index(GROUP, VERSION, SESSION_PLURAL, id="session_index")
def session_index(body: kopf.Body, **_: Any) -> dict[tuple[str, ...], dict[str, Any]]:
    """Every RecordingSession, by ("name", namespace, name), ("guild", guildId) and
    ("meeting", meetingId) (`context.session_keys`); one slim copy under all its keys."""
    value = slim(body)
    return dict.fromkeys(session_keys(value), value)


@kopf.index(*CHUNK, id="chunk_index")
def chunk_index(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
                ) -> dict[tuple[str, str], dict[str, Any]] | None:
    """Every RecordingChunk, by (namespace, session)."""
    key = _key(namespace, labels)
    return {key: slim(body)} if key else None


@kopf.index("batch", "v1", "jobs", id="job_index", labels={LABEL_COMPONENT: "transcoder"})
def job_index(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
              ) -> dict[tuple[str, str], dict[str, Any]] | None:
    """Every transcoder Job (metadata and status), by (namespace, session)."""
    key = _key(namespace, labels)
    return {key: slim(body, spec=False)} if key else None


@kopf.index("batch", "v1", "jobs", id="live_index", labels={LABEL_COMPONENT: LIVE_COMPONENT})
def live_index(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
               ) -> dict[tuple[str, str], dict[str, Any]] | None:
    """Every live-assembly Job (metadata and status, `services.live`), by (namespace,
    session)."""
    key = _key(namespace, labels)
    return {key: slim(body, spec=False)} if key else None


@kopf.index("v1", "pods", id="recorder_index", labels={LABEL_COMPONENT: "recorder"})
def recorder_index(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
                   ) -> dict[tuple[str, str], dict[str, Any]] | None:
    """Every recorder Pod, by (namespace, session)."""
    key = _key(namespace, labels)
    return {key: slim(body)} if key else None


def observed(namespace: str, session: str, indexes: Mapping[str, Any]) -> Observed | None:
    """The session's entries of the three indexes (`indexes`: the keyword arguments kopf
    passes a handler) as the services' `Observed`; None without them (a handler called
    directly, outside kopf: the service then reads the API)."""
    if not all(k in indexes for k in ("recorder_index", "chunk_index", "job_index")):
        return None
    key = (namespace, session)
    pods = list(indexes["recorder_index"].get(key, []))
    return Observed(pod=pods[0] if pods else None,
                    chunks=list(indexes["chunk_index"].get(key, [])),
                    jobs=list(indexes["job_index"].get(key, [])),
                    live=list(indexes["live_index"].get(key, []))
                    if "live_index" in indexes else [])


def known_chunk(job: Mapping[str, Any], indexes: Mapping[str, Any]) -> dict[str, Any] | None:
    """The chunk of transcoder Job `job` as the chunk index shows it, None when absent."""
    meta = job.get("metadata") or {}
    labels = meta.get("labels") or {}
    index = labels.get(LABEL_CHUNK_INDEX)
    key = _key(meta.get("namespace"), labels)
    if key is None or index is None or "chunk_index" not in indexes:
        return None
    for obj in indexes["chunk_index"].get(key, []):
        if str((obj.get("spec") or {}).get("index")) == str(index) \
                and controller_uid(obj) == controller_uid(dict(job)):
            return dict(obj)
    return None
