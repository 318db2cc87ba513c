"""`BotConsent` against the local control plane (CRDs installed, no operator): an opt-out
computed from a stale read of the session is refused by the API server (409: the merge
patch carries the `resourceVersion` read) and redone from a fresh read, so the change made
meanwhile (another member's opt-out) is kept; the guild's consent ConfigMap holds the
same list and a later `start` copies it into the new session."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fixtures.cluster import Kubectl
from voicetrack.kubeclient import load_api_client
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.stack import install_crds
from voicetrack_recorder.bot.consent import BotConsent, configmap_name
from voicetrack_recorder.bot.sessions import BotSessions

pytestmark = pytest.mark.e2e

GUILD = "300000000000000081"
CHANNEL = "300000000000000082"
ALICE, BOB = "400000000000000083", "400000000000000084"
PAUSED_FILES = {"paused": True, "source": {"type": "files", "speakers": [
    {"userId": ALICE, "objectKey": "absent.wav"}]}}
"""Spec defaults that record nothing even when an operator runs (another test's)."""


class StaleOnce(BotSessions):
    """A lookup that answers once with an object read earlier (a slow reader)."""

    stale: dict[str, Any] | None = None

    async def find(self, guild_id: str) -> dict[str, Any] | None:
        if self.stale is not None:
            stale, self.stale = self.stale, None
            return stale
        return await super().find(guild_id)


async def test_an_opt_out_from_a_stale_read_keeps_the_change_made_meanwhile(
        cluster: LocalCluster, kubectl: Kubectl, namespace: str) -> None:
    install_crds(cluster.kubeconfig)
    api = load_api_client(str(cluster.kubeconfig))
    sessions = StaleOnce(api, namespace, spec_defaults=PAUSED_FILES, settle_seconds=0)
    started = await sessions.start(GUILD, CHANNEL, ALICE)
    name = started.session["metadata"]["name"]
    sessions.stale = await sessions.find(GUILD)
    kubectl("-n", namespace, "patch", "recsess", name, "--type=merge",
            "-p", json.dumps({"spec": {"optOutUserIds": [ALICE]}}))  # alice, meanwhile
    change = await BotConsent(sessions).opt_out(GUILD, BOB)
    assert change.changed and change.session is not None
    spec = json.loads(kubectl("-n", namespace, "get", "recsess", name, "-o", "json").stdout
                      )["spec"]
    assert spec["optOutUserIds"] == [ALICE, BOB]
    data = json.loads(kubectl("-n", namespace, "get", "configmap", configmap_name(GUILD),
                              "-o", "json").stdout)["data"]
    assert json.loads(data["optOutUserIds"]) == [BOB]

    consent = BotConsent(sessions)
    assert (await consent.opt_out(GUILD, BOB)).changed is False  # already out everywhere
    assert await consent.remembered(GUILD) == [BOB]
    kubectl("-n", namespace, "delete", "recsess", name)
    again = await sessions.start(GUILD, CHANNEL, ALICE,
                                 remembered=lambda: consent.remembered(GUILD))
    assert again.session["spec"]["optOutUserIds"] == [BOB]
    assert (await consent.opt_in(GUILD, BOB)).changed
    assert await consent.remembered(GUILD) == []
