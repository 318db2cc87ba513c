"""Names and ownership of a session's children: the meeting id, the ownerReference that
ties each child to its session, and the deterministic names of the recorder pod, chunks and
Jobs (Kubernetes API conventions, "Object names and IDs": DNS labels of at most 63
characters).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from voicetrack.resources import API_VERSION, DNS_LABEL_MAX, MEETING_ID_PATTERN, SESSION_KIND


def derive_meeting_id(session_uid: str) -> str:
    """A 16-character meeting id from a session's uid (hex of its sha256): stable across
    retries and operator restarts, unique per session."""
    return hashlib.sha256(session_uid.encode()).hexdigest()[:16]


def meeting_id_for(session_uid: str, spec_meeting_id: str | None,
                   recorded: Any = None) -> str:
    """The meeting id of a session: `recorded` (its `status.meetingId`, which the operator
    writes once when the session starts) when that is a meeting id, else `spec.meetingId`
    when set, else derived from its uid.

    The recorded id wins over the spec: the CRD makes `spec.meetingId` immutable, but an
    object made before that rule (or under a CRD without it) may have had it edited while
    recording, and the meeting's rows and audio stay under the id it started with."""
    if isinstance(recorded, str) and re.fullmatch(MEETING_ID_PATTERN, recorded):
        return recorded
    return spec_meeting_id or derive_meeting_id(session_uid)


def session_meeting_id(body: dict[str, Any]) -> str:
    """`meeting_id_for` of RecordingSession object `body` (raw: its spec need not parse)."""
    return meeting_id_for(str(body["metadata"]["uid"]),
                          (body.get("spec") or {}).get("meetingId"),
                          (body.get("status") or {}).get("meetingId"))


def owner_reference(name: str, uid: str, kind: str = SESSION_KIND,
                    api_version: str = API_VERSION) -> dict[str, Any]:
    """An ownerReference to a controlling owner (a session by default): the garbage
    collector deletes the child with it, and `blockOwnerDeletion` makes a foreground
    deletion wait for the child."""
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def controller_uid(obj: dict[str, Any], kind: str = SESSION_KIND) -> str | None:
    """The uid of `obj`'s controlling owner of `kind`, None when it has none."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == kind and ref.get("controller"):
            return str(ref["uid"])
    return None


# ---------------------------------------------------------------- names


def child_name(session: str, suffix: str) -> str:
    """`<session>-<suffix>` within 63 characters: a long session name is cut and given an
    8-hex-digit hash of the whole name, so the result is deterministic and unique."""
    name = f"{session}-{suffix}"
    if len(name) <= DNS_LABEL_MAX:
        return name
    digest = hashlib.sha256(session.encode()).hexdigest()[:8]
    keep = DNS_LABEL_MAX - len(suffix) - len(digest) - 2
    return f"{session[:keep].rstrip('-')}-{digest}-{suffix}"


def recorder_pod_name(session: str) -> str:
    return child_name(session, "rec")


def transcode_job_name(session: str, index: int) -> str:
    return child_name(session, f"tx-{index:06d}")


def chunk_name(session: str, index: int) -> str:
    return child_name(session, f"chunk-{index:06d}")


def promote_job_name(session: str) -> str:
    return child_name(session, "promote")
