"""Operator HA: the active replica stalls (SIGSTOP) longer than its peering lifetime, so
the other one takes over and acts; on SIGCONT the stalled one, still the senior, acts
again, and must know it was not in control meanwhile: its peering record lapsed, it steps
down and comes back as a new turn (voicetrack_operator/leadership.py, `Leadership.observe`;
the new turn redoes the SQL mirror audit). The other one goes passive again.

Two operator processes on the real local control plane (the `pair` fixture of
test_operator_ha.py: own namespace, database and ClusterKopfPeering); no session needed.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.disruptive.test_operator_ha import Pair, pair  # noqa: F401  (the fixture)
from tests.e2e.test_main_job import wait_for

pytestmark = pytest.mark.disruptive


def test_a_stalled_active_replica_comes_back_as_a_new_turn(pair: Pair) -> None:  # noqa: F811
    pair.start("op-a")
    wait_for("op-a active", lambda: pair.active() == ["op-a"], 30)
    wait_for("op-a's workers active", lambda: pair.log_times("op-a", "is now active", 0), 10)
    pair.start("op-b")
    wait_for("op-b's keep-alive", lambda: "op-b" in pair.status(), 30)
    proc = pair.ops["op-a"].process
    assert proc is not None
    stopped_at = time.time()
    proc.send_signal(signal.SIGSTOP)
    try:  # op-a's record (10 s) ends: op-b resumes and its workers run
        wait_for("op-b active", lambda: pair.log_times("op-b", "is now active", stopped_at),
                 30)
    finally:
        proc.send_signal(signal.SIGCONT)
    resumed_at = time.time()
    wait_for("op-a's lapse seen", lambda: pair.log_times(
        "op-a", "peering record lapsed", resumed_at - 1), 15)
    wait_for("op-a's new turn", lambda: pair.log_times(
        "op-a", "is now active", resumed_at - 1), 15)
    wait_for("op-b passive", lambda: pair.log_times(
        "op-b", "is now passive", resumed_at - 1), 15)
    b_passive = pair.log_times("op-b", "is now passive", resumed_at - 1)[0]
    a_turn = pair.log_times("op-a", "is now active", resumed_at - 1)[0]
    print(f"after SIGCONT: op-b passive in {b_passive - resumed_at:.1f} s, "
          f"op-a's new turn in {a_turn - resumed_at:.1f} s")
    assert pair.active() == ["op-a"]
    assert len(pair.log_times("op-a", "is now passive", resumed_at - 1)) == 1
