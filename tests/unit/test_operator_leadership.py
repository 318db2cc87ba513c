"""Which operator replica acts (voicetrack_operator/leadership.py): kopf's peering rule
applied to a peering object's status, seniority priorities, and workers gated on it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from voicetrack_operator.leadership import (
    DEFAULT_LIFETIME_S,
    Leadership,
    PeeringConfig,
    is_active,
    seniority_priority,
)

pytestmark = pytest.mark.unit
NOW = datetime(2026, 12, 2, 22, 0, tzinfo=UTC)


def peer(priority: int, seen_s_ago: float, lifetime: int = 10) -> dict[str, object]:
    return {"priority": priority, "lifetime": lifetime,
            "lastseen": (NOW - timedelta(seconds=seen_s_ago)).isoformat()}


def test_a_live_higher_or_equal_peer_makes_us_passive() -> None:
    assert not is_active({"me": peer(5, 0), "b": peer(6, 1)}, "me", 5, NOW)
    assert not is_active({"b": peer(5, 9.5)}, "me", 5, NOW)  # equal: kopf pauses both


def test_lower_dead_or_own_records_leave_us_active() -> None:
    assert is_active({}, "me", 5, NOW)
    assert is_active({"me": peer(5, 0), "b": peer(4, 0)}, "me", 5, NOW)
    assert is_active({"b": peer(9, 10.5)}, "me", 5, NOW)  # its lifetime is over
    assert is_active({"me": peer(1, 0, lifetime=0)}, "me", 1, NOW)
    assert is_active({"b": None}, "me", 5, NOW)  # a record being deleted


def test_a_record_without_lifetime_lives_60_s_as_in_kopf() -> None:
    info = {"priority": 9, "lastseen": (NOW - timedelta(seconds=59)).isoformat()}
    assert not is_active({"b": info}, "me", 5, NOW)
    assert is_active({"b": info}, "me", 5, NOW + timedelta(seconds=2))


def test_seniority_the_earlier_start_has_the_higher_priority() -> None:
    assert seniority_priority(NOW) > seniority_priority(NOW + timedelta(milliseconds=1))


def test_config_from_env() -> None:
    cfg = PeeringConfig.from_env({"VOICETRACK_PEERING": "vt", "POD_ID": "op-1"}, NOW)
    assert (cfg.enabled, cfg.name, cfg.identity, cfg.lifetime_s) == (
        True, "vt", "op-1", DEFAULT_LIFETIME_S)
    assert cfg.priority == seniority_priority(NOW)
    cfg = PeeringConfig.from_env({"VOICETRACK_PEERING_PRIORITY": "7",
                                  "VOICETRACK_PEERING_LIFETIME_S": "5"}, NOW)
    assert (cfg.enabled, cfg.priority, cfg.lifetime_s) == (False, 7, 5)
    with pytest.raises(ValueError):
        PeeringConfig.from_env({"VOICETRACK_PEERING_LIFETIME_S": "1"})


def test_standalone_is_active_and_peered_starts_passive() -> None:
    assert Leadership(PeeringConfig("", "x", 0)).active
    assert not Leadership(PeeringConfig("vt", "x", 0)).active


async def test_while_active_runs_the_worker_only_while_active() -> None:
    lead = Leadership(PeeringConfig("vt", "x", 0))
    starts: list[int] = []
    cancelled: list[int] = []
    running = asyncio.Event()

    async def work() -> None:
        starts.append(1)
        running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    task = asyncio.create_task(lead.while_active("w", work))
    await asyncio.sleep(0.05)
    assert starts == []  # passive: nothing runs
    lead.set_active(True)
    await asyncio.wait_for(running.wait(), 1)
    running.clear()
    lead.set_active(False)
    await asyncio.sleep(0.05)
    assert len(starts) == 1 and len(cancelled) == 1  # passive again: the worker stopped
    lead.set_active(True)  # a second turn starts it again
    await asyncio.wait_for(running.wait(), 1)
    assert len(starts) == 2 and lead.changes == 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
