"""The recorder's and the bot's Kubernetes calls against the local control plane (the
CRDs installed, no operator needed): the API server's 409 on a deterministic name is a
ConflictError that both treat as "it exists" (the recorder's chunk create is idempotent,
the bot's losing start answers with the winner's session); a CEL rule's 422 is an
InvalidInputError carrying the rule's message; chunks are owned by their session through
`voicetrack.names.owner_reference`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fixtures.cluster import Kubectl
from voicetrack.chunkspec import ChunkSpec
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.kubeclient import load_api_client
from voicetrack.names import chunk_name, owner_reference
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.stack import install_crds
from voicetrack_recorder.bot.sessions import BotSessions
from voicetrack_recorder.kube import RecorderKube

pytestmark = pytest.mark.e2e

GUILD = "300000000000000051"
CHANNEL = "300000000000000052"
USER = "400000000000000053"
PAUSED_FILES = {"paused": True, "source": {"type": "files", "speakers": [
    {"userId": USER, "objectKey": "absent.wav"}]}}
"""Spec defaults that record nothing even when an operator runs (another test's)."""


@pytest.fixture(scope="module")
def crds(cluster: LocalCluster) -> None:
    install_crds(cluster.kubeconfig)


class LateLookup(BotSessions):
    """A start whose lookup ran before a racing start's create: it sees no session."""

    async def find(self, guild_id: str) -> dict[str, Any] | None:
        return None


async def test_a_start_that_lost_the_race_answers_with_the_winners_session(
        cluster: LocalCluster, crds: None, namespace: str) -> None:
    api = load_api_client(str(cluster.kubeconfig))
    won = await BotSessions(api, namespace, spec_defaults=PAUSED_FILES,
                            settle_seconds=0).start(GUILD, CHANNEL, USER)
    assert won.created
    lost = await LateLookup(api, namespace, spec_defaults=PAUSED_FILES,
                            settle_seconds=0).start(GUILD, CHANNEL, USER)
    assert not lost.created
    assert lost.session["metadata"]["uid"] == won.session["metadata"]["uid"]


async def test_chunk_create_is_idempotent_owned_and_refused_with_the_rules_message(
        cluster: LocalCluster, crds: None, namespace: str, kubectl: Kubectl) -> None:
    api = load_api_client(str(cluster.kubeconfig))
    started = await BotSessions(api, namespace, spec_defaults=PAUSED_FILES,
                                settle_seconds=0).start(GUILD, CHANNEL, USER)
    name, uid = started.session["metadata"]["name"], started.session["metadata"]["uid"]
    kube = RecorderKube(api, namespace, name)
    assert kube.get_session()["metadata"]["uid"] == uid
    spec = ChunkSpec(session_name=name, meeting_id="abcdef0123456789", guild_id=GUILD,
                     index=3, start_ms=30_000, end_ms=40_000)
    kube.create_chunk(spec, uid)
    kube.create_chunk(spec, uid)  # the retry of a create that got through: 409, done
    assert kube.list_chunks() == [spec]
    obj = json.loads(kubectl("-n", namespace, "get", "recchunk", chunk_name(name, 3),
                             "-o", "json").stdout)
    assert obj["metadata"]["ownerReferences"] == [owner_reference(name, uid)]
    off_grid = spec.model_copy(update={"index": 4, "end_ms": 40_010})
    with pytest.raises(InvalidInputError, match=r"spec\.endMs.*multiple of 20"):
        kube.create_chunk(off_grid, uid)
    with pytest.raises(NotFoundError, match="absent"):
        RecorderKube(api, namespace, "absent").get_session()


async def test_reading_the_session_measures_the_api_servers_clock(
        cluster: LocalCluster, crds: None, namespace: str) -> None:
    """The recorder's clock offset against the API server (`RecorderKube.clock_offset_ms`,
    from the `Date` header of the session's GET) that `clock.session_origin` corrects
    windows by: same machine here, so within the header's 1 s resolution."""
    api = load_api_client(str(cluster.kubeconfig))
    started = await BotSessions(api, namespace, spec_defaults=PAUSED_FILES,
                                settle_seconds=0).start(GUILD, CHANNEL, USER)
    kube = RecorderKube(api, namespace, started.session["metadata"]["name"])
    assert kube.clock_offset_ms is None
    kube.get_session()
    assert kube.clock_offset_ms is not None and abs(kube.clock_offset_ms) <= 1500
