"""A replica whose event loop stalls past its peering lifetime comes back as a new turn
(voicetrack_operator/leadership.py, `Leadership.observe`): on the real API server, with a
real ClusterKopfPeering, `Leadership.watch` runs as the senior replica "a" next to a
stand-in for kopf's keep-alive (same loop, so it stalls with it); a thread plays the junior
replica "b" as kopf runs it (keep-alive, and autoclean of "a"'s record once it is dead).
The test blocks the loop longer than the lifetime: "b" may act meanwhile, so "a" must step
down and start its workers again (the mirror audit is one of them), not carry on as if
nothing happened. A stall shorter than the lifetime changes nothing."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from kubernetes import client

from voicetrack.kubeclient import load_api_client
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.stack import install_crds
from voicetrack_operator.leadership import (
    PEERING_GROUP,
    PEERING_PLURAL,
    PEERING_VERSION,
    Leadership,
    PeeringConfig,
    is_active,
)

pytestmark = pytest.mark.e2e
LIFETIME_S = 3
KEEPALIVE_S = 1.0
"""kopf's keep-alive period for a 3 s lifetime: `max(1, lifetime - randint(5, 10))`."""


@pytest.fixture
def peering(cluster: LocalCluster) -> Iterator[tuple[client.ApiClient, str]]:
    """An API client and a fresh ClusterKopfPeering's name (deleted after the test)."""
    install_crds(cluster.kubeconfig)
    api = load_api_client(str(cluster.kubeconfig))
    objects = client.CustomObjectsApi(api)
    name = f"t-lapse-{secrets.token_hex(3)}"
    objects.create_cluster_custom_object(
        PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL,
        {"apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}", "kind": "ClusterKopfPeering",
         "metadata": {"name": name}})
    try:
        yield api, name
    finally:
        objects.delete_cluster_custom_object(PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL,
                                             name)
        api.close()


def patch_status(api: client.ApiClient, name: str, records: dict[str, object]) -> None:
    """Merge `records` into the peering's status (None deletes one), as kopf does."""
    client.CustomObjectsApi(api).patch_cluster_custom_object_status(
        PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL, name, {"status": records},
        _content_type="application/merge-patch+json", _request_timeout=5)


def record(priority: int) -> dict[str, object]:
    return {"priority": priority, "lifetime": LIFETIME_S,
            "lastseen": datetime.now(UTC).isoformat()}


class Junior(threading.Thread):
    """Replica "b" (priority 5) as kopf runs it: a keep-alive every second, and any dead
    record cleaned away (kopf's autoclean). `acted` is set once "a"'s record was dead to it
    (kopf resumes "b" then)."""

    def __init__(self, api: client.ApiClient, name: str) -> None:
        super().__init__(daemon=True)
        self.api, self.name = api, name
        self.acted = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        objects = client.CustomObjectsApi(self.api)
        while not self.stop.is_set():
            body = cast(dict[str, Any], objects.get_cluster_custom_object(
                PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL, self.name, _request_timeout=5))
            status = body.get("status") or {}
            now = datetime.now(UTC)
            update: dict[str, object] = {"b": record(5)}
            if status.get("a") and is_active({"a": status["a"]}, "b", 5, now):  # "a" dead
                update["a"] = None
                self.acted.set()
            patch_status(self.api, self.name, update)
            self.stop.wait(KEEPALIVE_S / 2)


async def test_a_stall_past_the_lifetime_is_a_new_turn(
        peering: tuple[client.ApiClient, str]) -> None:
    api, name = peering
    lead = Leadership(PeeringConfig(name, "a", 10, LIFETIME_S))
    turns: list[float] = []

    async def keepalive() -> None:  # kopf's, on the same event loop
        while True:
            await asyncio.to_thread(patch_status, api, name, {"a": record(10)})
            await asyncio.sleep(KEEPALIVE_S)

    async def worker() -> None:
        turns.append(time.monotonic())
        await asyncio.Event().wait()

    await asyncio.to_thread(patch_status, api, name, {"a": record(10)})
    junior = Junior(api, name)
    tasks = [asyncio.create_task(keepalive()),
             asyncio.create_task(lead.watch(api, poll_s=0.2)),
             asyncio.create_task(lead.while_active("audit", worker))]
    junior.start()
    try:
        for _ in range(100):
            if turns:
                break
            await asyncio.sleep(0.1)
        assert lead.active and len(turns) == 1

        time.sleep(0.5)  # a short stall: the record outlives it
        await asyncio.sleep(2)
        assert lead.active and len(turns) == 1 and not junior.acted.is_set()

        time.sleep(LIFETIME_S + 1.5)  # the whole loop stops: keep-alive, watch, workers
        assert junior.acted.is_set()  # "b" saw "a" dead: kopf let it act
        for _ in range(60):  # its record is live again at once, then SETTLE_S (2 s)
            if len(turns) > 1:
                break
            await asyncio.sleep(0.1)
        assert len(turns) == 2, "the resumed replica carried on in its old turn"
        assert lead.active and lead.lapses == 1
    finally:
        junior.stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        junior.join(5)
