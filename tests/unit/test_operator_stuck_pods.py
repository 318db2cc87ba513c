"""`services.stuck.stuck_reason`: which pods a deletion stops waiting for (review fault 3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from voicetrack_operator.services.stuck import STUCK_AFTER_S, node_ready, stuck_reason

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


def pod(node: str | None = "n1", deleting: datetime | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "s-rec", "namespace": "team"}
    if deleting is not None:
        meta["deletionTimestamp"] = deleting.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}}


def node(ready: str | None) -> dict[str, Any]:
    conditions = [] if ready is None else [{"type": "Ready", "status": ready}]
    return {"metadata": {"name": "n1"}, "status": {"conditions": conditions}}


def test_a_pod_on_a_ready_node_is_waited_for_until_past_its_grace_by_a_minute() -> None:
    assert node_ready(node("True"))
    assert stuck_reason(pod(), node("True"), NOW) is None
    assert stuck_reason(pod(deleting=NOW), node("True"), NOW) is None  # grace running
    late = NOW - timedelta(seconds=STUCK_AFTER_S - 1)
    assert stuck_reason(pod(deleting=late), node("True"), NOW) is None
    later = NOW - timedelta(seconds=STUCK_AFTER_S + 1)
    assert "after its grace period" in str(stuck_reason(pod(deleting=later), node("True"), NOW))


@pytest.mark.parametrize("ready", ["False", "Unknown", None])
def test_a_pod_on_a_node_not_ready_is_stuck_at_once(ready: str | None) -> None:
    assert not node_ready(node(ready))
    assert stuck_reason(pod(), node(ready), NOW) == "its node n1 is NotReady"


def test_a_pod_on_a_node_that_is_gone_is_stuck_and_an_unbound_one_never() -> None:
    assert stuck_reason(pod(), None, NOW) == "its node n1 is gone"
    assert stuck_reason(pod(node=None), None, NOW) is None
