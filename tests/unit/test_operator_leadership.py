"""Which operator replica acts (voicetrack_operator/leadership.py): kopf's peering rule
applied to a peering object's status, seniority priorities, and workers gated on it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from voicetrack_operator.leadership import (
    DEFAULT_LIFETIME_S,
    SETTLE_S,
    Leadership,
    PeeringConfig,
    is_active,
    own_record,
    record_lapsed,
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
    assert seniority_priority(NOW, 999) > seniority_priority(NOW + timedelta(milliseconds=1), 0)


def test_replicas_starting_in_the_same_millisecond_rarely_tie() -> None:
    """A Deployment's two replicas may start in the same millisecond: with equal
    priorities kopf pauses both until one restarts (no replica acts). Before, every such
    start tied."""
    ties = sum(seniority_priority(NOW) == seniority_priority(NOW) for _ in range(2000))
    assert ties < 20, ties  # about 2 expected (1 in 1000)
    assert abs(seniority_priority(NOW)) < 2**53


def test_config_from_env() -> None:
    cfg = PeeringConfig.from_env({"VOICETRACK_PEERING": "vt", "POD_ID": "op-1"}, NOW)
    assert (cfg.enabled, cfg.name, cfg.identity, cfg.lifetime_s) == (
        True, "vt", "op-1", DEFAULT_LIFETIME_S)
    assert seniority_priority(NOW, 999) <= cfg.priority <= seniority_priority(NOW, 0)
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


def mine(seen_s_ago: float, at: datetime = NOW, lifetime: int = 10) -> dict[str, object]:
    return {"priority": 9, "lifetime": lifetime,
            "lastseen": (at - timedelta(seconds=seen_s_ago)).isoformat()}


def test_own_record_as_peers_read_it() -> None:
    assert own_record({"me": mine(4)}, "me", NOW) == (
        NOW - timedelta(seconds=4), NOW + timedelta(seconds=6))
    assert own_record({}, "me", NOW) is None  # cleaned by a peer
    assert own_record({"me": None}, "me", NOW) is None
    assert own_record({"me": mine(0, lifetime=0)}, "me", NOW) is None  # kopf's exit


def test_record_lapsed_only_when_a_peer_could_have_seen_it_dead() -> None:
    before = (NOW - timedelta(seconds=5), NOW + timedelta(seconds=5))

    def later(s: float) -> datetime:
        return NOW + timedelta(seconds=s)

    # keep-alives in time: the same record still live, or a newer one written before it ended
    assert not record_lapsed(before, before, later(1))
    assert not record_lapsed(before, (later(4), later(14)), later(5))
    # the record ended before the next keep-alive was written (a stall, a partition)
    assert record_lapsed(before, (later(6), later(16)), later(6.1))
    assert record_lapsed(before, before, later(5))  # nothing written since: dead now
    assert record_lapsed(before, None, later(1))  # a peer's autoclean deleted it
    # the margin for clock skew: ends taken 0.5 s early
    assert record_lapsed(before, (later(4.6), later(14.6)), later(5))
    assert record_lapsed(before, before, later(4.6))


def test_observe_steps_down_on_a_lapse_and_comes_back_as_a_new_turn() -> None:
    lead = Leadership(PeeringConfig("vt", "me", 9, 10))
    b = {"priority": 5, "lifetime": 10}
    lead.observe({"me": mine(1), "b": {**b, "lastseen": NOW.isoformat()}}, NOW)
    assert lead.active and lead.changes == 1
    t = NOW + timedelta(seconds=1)
    lead.observe({"me": mine(0, t)}, t)  # keep-alive in time: the same turn
    assert lead.active and (lead.changes, lead.lapses) == (1, 0)
    # the loop stalled 15 s; a peer acted and deleted our dead record meanwhile
    t += timedelta(seconds=15)
    lead.observe({"b": {**b, "lastseen": t.isoformat()}}, t)
    assert not lead.active and (lead.changes, lead.lapses) == (2, 1)
    t += timedelta(seconds=1)
    lead.observe({"b": {**b, "lastseen": t.isoformat()}}, t)
    assert not lead.active  # still dead to our peers: passive, though kopf's rule says act
    t += timedelta(seconds=1)
    revived = t
    lead.observe({"me": mine(0, t), "b": {**b, "lastseen": t.isoformat()}}, t)
    assert not lead.active  # live again: the other replica stops first (SETTLE_S)
    t += timedelta(seconds=SETTLE_S - 0.1)
    lead.observe({"me": mine(1, t), "b": {**b, "lastseen": t.isoformat()}}, t)
    assert not lead.active
    t = revived + timedelta(seconds=SETTLE_S)
    lead.observe({"me": mine(0, t), "b": {**b, "lastseen": t.isoformat()}}, t)
    assert lead.active and (lead.changes, lead.lapses) == (3, 1)  # a new turn


def test_observe_first_turn_needs_no_record_of_ours_yet() -> None:
    lead = Leadership(PeeringConfig("vt", "me", 9, 10))
    lead.observe({}, NOW)  # kopf's first keep-alive not written yet
    lead.observe({}, NOW + timedelta(seconds=1))
    assert lead.active and (lead.changes, lead.lapses) == (1, 0)


class _KopfSettings:
    """The part of kopf's OperatorSettings that `Leadership.bind` keeps."""

    class peering:  # kopf's attribute name
        priority = 7


def test_a_tie_is_broken_by_the_later_identity_lowering_its_priority() -> None:
    """Two live replicas with one priority: kopf pauses both until the tie is gone, and
    nothing would end it. The later identity yields (one lower, in kopf's settings too, so
    its next keep-alive says so); the earlier one acts once that keep-alive is read."""
    settings = _KopfSettings()
    later, earlier = Leadership(PeeringConfig("vt", "op-b", 7, 10)), \
        Leadership(PeeringConfig("vt", "op-a", 7, 10))
    later.bind(settings)
    both = {"op-a": {**mine(0), "priority": 7}, "op-b": {**mine(0), "priority": 7}}
    later.observe(both, NOW)
    earlier.observe(both, NOW)
    assert (later.config.priority, settings.peering.priority, later.yields) == (6, 6, 1)
    assert (earlier.config.priority, earlier.yields) == (7, 0)
    assert not later.active and not earlier.active  # op-b's record still says 7
    t = NOW + timedelta(seconds=1)
    keepalive = {"op-a": {**mine(0, t), "priority": 7}, "op-b": {**mine(0, t), "priority": 6}}
    earlier.observe(keepalive, t)
    later.observe(keepalive, t)
    assert earlier.active and not later.active
    assert later.yields == 1  # no tie any more: it yields once
