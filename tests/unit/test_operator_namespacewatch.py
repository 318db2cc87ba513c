"""kopf's namespace observation (namespace patterns, `VOICETRACK_NAMESPACES`) keeps a
namespace while it terminates once `namespacewatch.keep_terminating_namespaces` ran, and
drops it on its DELETED event. Driven through kopf's own `revise_namespaces`, with the
events the namespace controller produces (a deletion whose first conditions are all False,
then `NamespaceContentRemaining` True while our finalizer holds a session)."""

from __future__ import annotations

from typing import Any

import pytest
from kopf._cogs.structs import references
from kopf._core.reactor import observation

from voicetrack_operator.main import _url_host, watched_namespaces
from voicetrack_operator.namespacewatch import keep_terminating_namespaces, namespace_gone

pytestmark = pytest.mark.unit

PATTERNS = ["e2e-*"]
TS = "2026-12-04T13:00:00Z"


def event(kind: str | None, name: str, *, deleting: bool = False,
          conditions: list[tuple[str, str]] = ()) -> dict[str, Any]:
    """A Namespace watch event; `conditions` as (type, status)."""
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = TS
    status: dict[str, Any] = {"phase": "Terminating" if deleting else "Active"}
    if conditions:
        status["conditions"] = [{"type": t, "status": s, "reason": t, "message": ""}
                                for t, s in conditions]
    return {"type": kind, "object": {"metadata": meta, "status": status}}


ALL_FALSE = [("NamespaceDeletionDiscoveryFailure", "False"),
             ("NamespaceDeletionGroupVersionParsingFailure", "False"),
             ("NamespaceDeletionContentFailure", "False")]
CONTENT_LEFT = [*ALL_FALSE, ("NamespaceContentRemaining", "True"),
                ("NamespaceFinalizersRemaining", "True")]


def served_after(*events: dict[str, Any]) -> set[Any]:
    insights = references.Insights()
    for e in events:
        observation.revise_namespaces(raw_events=[e], insights=insights, namespaces=PATTERNS)
    return set(insights.namespaces)


@pytest.fixture
def restore_kopf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test does to kopf's predicate is undone after it."""
    monkeypatch.setattr(observation, "is_deleted", observation.is_deleted)


def test_kopf_alone_drops_a_terminating_namespace_for_good(restore_kopf: None) -> None:
    """The fault, in kopf itself: the deletion's first conditions (none True) drop the
    namespace, and the later True conditions never bring it back, so the deletion of our
    sessions in it is never seen."""
    if getattr(observation.is_deleted, "_voicetrack_keeps_terminating", False):
        pytest.skip("kopf's predicate is already replaced in this process")
    assert served_after(event(None, "e2e-a")) == {"e2e-a"}
    assert served_after(event(None, "e2e-a"),
                        event("MODIFIED", "e2e-a", deleting=True, conditions=ALL_FALSE),
                        event("MODIFIED", "e2e-a", deleting=True, conditions=CONTENT_LEFT)
                        ) == set()


def test_a_terminating_namespace_stays_served_until_deleted(restore_kopf: None) -> None:
    keep_terminating_namespaces()
    keep_terminating_namespaces()  # idempotent
    terminating = [event(None, "e2e-a"), event(None, "other"),
                   event("MODIFIED", "e2e-a", deleting=True),
                   event("MODIFIED", "e2e-a", deleting=True, conditions=ALL_FALSE),
                   event("MODIFIED", "e2e-a", deleting=True, conditions=CONTENT_LEFT),
                   event("MODIFIED", "e2e-a", deleting=True, conditions=ALL_FALSE)]
    assert served_after(*terminating) == {"e2e-a"}
    assert served_after(*terminating, event("DELETED", "e2e-a", deleting=True,
                                            conditions=ALL_FALSE)) == set()
    # a namespace first seen while it terminates (an operator started meanwhile) is served
    assert served_after(event(None, "e2e-b", deleting=True, conditions=ALL_FALSE)) == {"e2e-b"}


def test_only_a_deleted_event_says_a_namespace_is_gone() -> None:
    assert namespace_gone(event("DELETED", "x"))
    for e in (event(None, "x"), event("MODIFIED", "x", deleting=True),
              event("MODIFIED", "x", deleting=True, conditions=ALL_FALSE)):
        assert not namespace_gone(e)


def served(value: str, namespace: str) -> bool:
    """Whether kopf serves `namespace` given `VOICETRACK_NAMESPACES=value`, as its
    observation decides (any pattern matches)."""
    return any(references.match_namespace(namespace, p) for p in watched_namespaces(value))


@pytest.mark.parametrize(("value", "yes", "no"), [
    ("team-*,!team-sandbox", ["team-a"], ["team-sandbox", "other", "default"]),
    ("a,b", ["a", "b"], ["c"]),
    ("a-*, b-*, !*-x", ["a-1", "b-1"], ["a-x", "b-x", "c-1"]),
    ("!kube-*", ["team", "default"], ["kube-system"]),
    ("e2e-*", ["e2e-1a2b3c"], ["t-1", "grant-1"]),
])
def test_namespace_patterns_mean_what_the_readme_says(value: str, yes: list[str],
                                                      no: list[str]) -> None:
    """One inclusive glob matches and no exclusion does. Before, `team-*,!team-sandbox`
    served every namespace but team-sandbox (the lone exclusion was a pattern of its own,
    with kopf's implied `*` before it)."""
    for ns in yes:
        assert served(value, ns), (value, ns)
    for ns in no:
        assert not served(value, ns), (value, ns)
    assert watched_namespaces("") == [] and watched_namespaces(" , ") == []


def test_the_liveness_url_brackets_an_ipv6_listen_address() -> None:
    """`operator.listenAddress=$(POD_IP)` on a single-stack IPv6 cluster gives an IPv6
    literal; kopf's liveness endpoint is a URL, whose host needs brackets."""
    assert _url_host("fd00::1") == "[fd00::1]"
    assert _url_host("[fd00::1]") == "[fd00::1]"
    assert _url_host("127.64.0.9") == "127.64.0.9" and _url_host("0.0.0.0") == "0.0.0.0"
