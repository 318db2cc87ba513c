"""Serving namespace patterns (`VOICETRACK_NAMESPACES`) until a served namespace is gone.

With namespace patterns kopf lists and watches Namespaces and keeps the set it serves
(`kopf._core.reactor.observation.revise_namespaces`): it stops watching a namespace once
`observation.is_deleted` says so, and never starts again while that namespace exists.
kopf 1.45 takes a namespace for deleted when it has a `deletionTimestamp` and
`status.conditions` none of which is True. The namespace controller shows exactly that
while it is still deleting the namespace's content (its first conditions are all False),
so kopf stopped watching our RecordingSessions there before their deletion arrived: a
session's finalizer (`voicetrack.dev/promote`) was never handled and kept the namespace
Terminating for ever, nothing promoted. Cluster-wide (no patterns) kopf does not observe
namespaces, and the same deletion promoted and ended in about 30 s.

`keep_terminating_namespaces` replaces that one predicate: a namespace is deleted when its
DELETED event arrives, not before; a terminating namespace stays served, so the deletion
of every object in it, and the release of our finalizers, is seen. A DELETED event lost to
a watch reconnection leaves the name in kopf's set: its watches then list an empty
namespace until the operator restarts (no harm, no handler runs).

Why not run kopf cluster-wide and filter by pattern ourselves (`when=` on every handler):
kopf removes its finalizer from any object none of whose handlers match
(`kopf._core.reactor.processing`: "Removing the finalizer, as there are no handlers
requiring it"). Two operators of one cluster serve disjoint patterns with the same
finalizer name, so each would strip the other's finalizer from every session it does not
serve, and a deleted session would go unpromoted. A filter inside the handlers instead
would add our finalizer to, and write kopf's progress annotations on, other operators'
sessions. Watching only the served namespaces keeps each operator away from the others'
objects; this module keeps that watch alive for as long as it is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

_MARK = "_voicetrack_keeps_terminating"


def namespace_gone(raw_event: Mapping[str, Any]) -> bool:
    """Whether the Namespace watch event `raw_event` ({"type", "object"}) says the
    namespace no longer exists: only a DELETED event does. A `deletionTimestamp`, with or
    without conditions, means the namespace is being emptied, and its objects (our
    sessions among them) still need serving."""
    return raw_event.get("type") == "DELETED"


def keep_terminating_namespaces() -> None:
    """Make kopf's namespace observation (used with namespace patterns) drop a namespace
    only once it is gone (`namespace_gone`). Idempotent. Raises RuntimeError when the kopf
    installed has no `observation.is_deleted` to replace (an upgrade changed its
    internals: check that its namespace observation still keeps terminating namespaces,
    then adapt this module)."""
    from kopf._core.reactor import observation

    current = getattr(observation, "is_deleted", None)
    if current is None or not callable(current):
        raise RuntimeError("kopf._core.reactor.observation.is_deleted not found: this kopf "
                           "version's namespace observation is unknown to voicetrack")
    if getattr(current, _MARK, False):
        return

    def is_deleted(raw_event: Any) -> bool:
        return namespace_gone(raw_event)

    setattr(is_deleted, _MARK, True)
    observation.is_deleted = is_deleted
    log.debug("kopf namespace observation: a namespace is dropped once DELETED")
