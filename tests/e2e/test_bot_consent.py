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
RACE_GUILD = "300000000000000091"
RACE_GUILD2 = "300000000000000092"
"""The race tests' guilds (the namespace may hold the first test's sessions)."""
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


async def test_an_opt_out_racing_start_reaches_the_new_session(
        cluster: LocalCluster, kubectl: Kubectl, namespace: str) -> None:
    """Review finding #11: `/record optout` between `/record start`'s read of the
    ConfigMap and its create of the session (no live session to patch yet) was in the
    ConfigMap only. `start` reads the ConfigMap again once the session exists and merges
    what it missed."""
    install_crds(cluster.kubeconfig)
    sessions = BotSessions(load_api_client(str(cluster.kubeconfig)), namespace,
                           spec_defaults=PAUSED_FILES, settle_seconds=0)
    consent = BotConsent(sessions)

    raced: list[bool] = []

    async def remembered_then_bob_opts_out() -> list[str]:
        before = await consent.remembered(RACE_GUILD)
        if not raced:  # the first read only: bob types /record optout right after it
            raced.append(True)
            change = await consent.opt_out(RACE_GUILD, BOB)  # no session yet
            assert change.changed and change.session is None
        return before

    started = await sessions.start(RACE_GUILD, CHANNEL, ALICE,
                                   remembered=remembered_then_bob_opts_out)
    assert started.created
    spec = json.loads(kubectl("-n", namespace, "get", "recsess",
                              started.session["metadata"]["name"], "-o", "json").stdout
                      )["spec"]
    assert spec["optOutUserIds"] == [BOB]
    assert started.session["spec"]["optOutUserIds"] == [BOB]


class StartsMeanwhile(BotConsent):
    """An opt-out whose session lookup ran before a racing `/record start` created the
    session, and whose ConfigMap write lands after that start read the ConfigMap twice."""

    start: Any = None

    async def _remember(self, guild_id: str, user_id: str, opt_out: bool) -> bool:
        if self.start is not None:
            start, self.start = self.start, None
            await start()
        return await super()._remember(guild_id, user_id, opt_out)


async def test_an_opt_out_whose_lookup_preceded_start_reaches_the_new_session(
        cluster: LocalCluster, kubectl: Kubectl, namespace: str) -> None:
    """The other order of #11: the opt-out found no session, `start` then read the
    ConfigMap (before and after its create) before the opt-out wrote it. The opt-out
    looks for the live session again after writing the ConfigMap."""
    install_crds(cluster.kubeconfig)
    sessions = BotSessions(load_api_client(str(cluster.kubeconfig)), namespace,
                           spec_defaults=PAUSED_FILES, settle_seconds=0)
    consent = StartsMeanwhile(sessions)
    started: list[Any] = []

    async def start() -> None:
        other = BotConsent(sessions)  # the start's own reads of the ConfigMap
        started.append(await sessions.start(
            RACE_GUILD2, CHANNEL, ALICE, remembered=lambda: other.remembered(RACE_GUILD2)))

    consent.start = start
    change = await consent.opt_out(RACE_GUILD2, BOB)
    assert started and started[0].created and change.changed
    assert change.session is not None and change.session["spec"]["optOutUserIds"] == [BOB]
    spec = json.loads(kubectl("-n", namespace, "get", "recsess",
                              started[0].session["metadata"]["name"], "-o", "json").stdout
                      )["spec"]
    assert spec["optOutUserIds"] == [BOB]
