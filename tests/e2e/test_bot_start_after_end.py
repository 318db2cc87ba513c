"""`/record start` after the guild's recording ended by itself, against the local control
plane (CRDs installed, no operator of this test's: the operator's part is played with
kubectl). A session the operator marked Stopped (a limit) or Failed stays until it is
deleted; `start` used to answer "Already recording in this server" and record nothing.
Now it deletes the bot's own ended session with a uid precondition (the operator then
saves what it recorded) and starts again once it is gone, or answers that the previous
recording is being saved while a finalizer holds it."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from tests.fixtures.cluster import Kubectl
from tests.unit.test_bot_app import ALICE, GUILD, MANAGER_ROLE, discord_world
from voicetrack.kubeclient import load_api_client
from voicetrack.resources import SessionState
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.stack import install_crds
from voicetrack_recorder.bot.access import ControlPolicy
from voicetrack_recorder.bot.app import RecordCommands
from voicetrack_recorder.bot.sessions import BotSessions
from voicetrack_recorder.bot.sessionspec import session_name

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

PAUSED_FILES = {"paused": True, "source": {"type": "files", "speakers": [
    {"userId": str(ALICE), "objectKey": "absent.wav"}]}}
"""Spec defaults that record nothing even when an operator runs (another test's)."""
HOLD = "tests.voicetrack.dev/hold"
"""A finalizer standing for the operator's (promotion not finished)."""


def read(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any] | None:
    res = kubectl("-n", ns, "get", "recsess", name, "-o", "json", check=False)
    return json.loads(res.stdout) if res.returncode == 0 else None


def end(kubectl: Kubectl, ns: str, name: str, state: SessionState, hold: bool) -> str:
    """Play the operator: the session ended by itself (`state`), optionally held by a
    finalizer; returns its uid."""
    if hold:
        kubectl("-n", ns, "patch", "recsess", name, "--type=merge",
                "-p", json.dumps({"metadata": {"finalizers": [HOLD]}}))
    kubectl("-n", ns, "patch", "recsess", name, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"state": state.value, "meetingId": "EndedEnded00001"}}))
    obj = read(kubectl, ns, name)
    assert obj is not None and obj["status"]["state"] == state.value
    return str(obj["metadata"]["uid"])


@pytest.mark.parametrize("state", [SessionState.STOPPED, SessionState.FAILED])
async def test_start_after_the_recording_ended_by_itself(
        cluster: LocalCluster, kubectl: Kubectl, namespace: str, state: SessionState) -> None:
    install_crds(cluster.kubeconfig)
    sessions = BotSessions(load_api_client(str(cluster.kubeconfig)), namespace,
                           spec_defaults=PAUSED_FILES, settle_seconds=1)
    cmds = RecordCommands(sessions, ControlPolicy())
    name = session_name(str(GUILD))
    async for world in discord_world(cmds):
        def start(w: Any = world) -> Any:
            return cmds.start(w.interaction(ALICE, "alice", [MANAGER_ROLE]))

        first = await start()
        assert first.title != "Already recording in this server", first.to_dict()
        # ended, and the operator's finalizer still saving it: deleted, "being saved"
        uid = end(kubectl, namespace, name, state, hold=True)
        answer = await start()
        assert answer.title == ("The previous recording ended and is being saved; try "
                                "again when it is done"), answer.to_dict()
        held = read(kubectl, namespace, name)
        assert held is not None and held["metadata"]["uid"] == uid
        assert held["metadata"].get("deletionTimestamp")  # its promotion was started
        again = await start()  # still saving: the same answer, nothing made
        assert again.title == answer.title
        # saved (the finalizer released): the next start records again
        kubectl("-n", namespace, "patch", "recsess", name, "--type=merge",
                "-p", json.dumps({"metadata": {"finalizers": None}}))
        deadline = time.monotonic() + 60
        while (obj := read(kubectl, namespace, name)) and obj["metadata"]["uid"] == uid:
            assert time.monotonic() < deadline, "the ended session was never removed"
            await asyncio.sleep(0.5)
        fresh = await start()
        assert fresh.title != "Already recording in this server", fresh.to_dict()
        made = read(kubectl, namespace, name)
        assert made is not None and made["metadata"]["uid"] != uid
        # ended without a finalizer: deleted and made again by the same start
        uid = end(kubectl, namespace, name, state, hold=False)
        restarted = await start()
        assert restarted.title != "Already recording in this server", restarted.to_dict()
        made = read(kubectl, namespace, name)
        assert made is not None and made["metadata"]["uid"] != uid
        assert not made["metadata"].get("deletionTimestamp")
    kubectl("-n", namespace, "delete", "recsess", name, "--wait=false", check=False)
