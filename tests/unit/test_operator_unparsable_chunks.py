"""A RecordingChunk whose spec the operator's model cannot parse (stored before a CRD rule
existed, or a rule the CRD cannot express) is refused once and left out, on every path
that walks a session's chunks (`services/unparsable.py`). Before, `ChunkRef.from_object`
raised there for ever: the create handler left the chunk without a status, the observe
timer's safety net raised on every tick (the session's status froze), and deletion's
wait for transcodes raised InvalidInputError, a PromotionFailed retried every 300 s
(found by a review)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.e2e.test_operator_services import bind_events, kopf_events  # noqa: F401
from tests.unit.test_operator_observe_indexed import (
    UID,
    USER,
    FakeDb,
    chunk,
    make_ctx,
    session_view,
)
from voicetrack.names import meeting_id_for
from voicetrack_operator.handlers.chunk import on_chunk_event
from voicetrack_operator.services.deletion import DeletionService
from voicetrack_operator.services.deletionstate import DeletionProgress
from voicetrack_operator.services.sessions import SessionService
from voicetrack_operator.services.unparsable import usable_chunks

pytestmark = pytest.mark.unit


def unparsable(index: int, status: str | None = None) -> dict[str, Any]:
    """A chunk the CRD of before admitted: a track with packets after its user's opt-out."""
    obj = copy.deepcopy(chunk(index, status, 60))
    obj["spec"]["optedOut"] = [{"userId": USER, "sinceMs": 0, "via": "user"}]
    obj["metadata"]["resourceVersion"] = "7"
    return obj


class Kube:
    """The API calls these paths make: chunk status patches recorded, lists served."""

    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self.chunks = chunks
        self.patches: list[tuple[str, dict[str, Any], str | None]] = []

    async def patch_chunk_status(self, ns: str, name: str, status: dict[str, Any],
                                 resource_version: str | None = None) -> bool:
        self.patches.append((name, status, resource_version))
        return True

    async def list_chunks(self, ns: str, session: str, uid: str | None = None
                          ) -> list[dict[str, Any]]:
        return self.chunks

    async def list_jobs(self, ns: str, session: str, uid: str | None = None
                        ) -> list[dict[str, Any]]:
        return []


def ctx_with(kube: Kube) -> Any:
    ctx, _ = make_ctx(FakeDb({meeting_id_for(UID, None)}))
    ctx.kube = kube
    return ctx


async def test_an_unparsable_chunk_is_refused_once_and_left_out() -> None:
    bad = unparsable(1)
    kube = Kube([])
    ctx = ctx_with(kube)
    good = chunk(0, "done", 60)
    assert [c.spec.index for c in await usable_chunks(ctx, [good, bad])] == [0]
    ((name, status, rv),) = kube.patches
    assert (name, status["transcodeStatus"], rv) == (bad["metadata"]["name"], "failed", "7")
    assert status["refused"].startswith("spec does not parse: ") and "opt-out" in status["refused"]
    assert status["error"] == status["refused"]
    refused = {**bad, "status": status}
    assert await usable_chunks(ctx, [refused]) == [] and len(kube.patches) == 1  # once


async def test_the_create_handler_refuses_it(kopf_events: Any) -> None:  # noqa: F811
    bind_events()
    kube = Kube([])
    ctx = ctx_with(kube)
    memo = type("Memo", (), {"ctx": ctx})()
    await on_chunk_event(event={"type": "ADDED", "object": unparsable(0)}, memo=memo)
    assert [s["transcodeStatus"] for _, s, _ in kube.patches] == ["failed"]
    assert (await kopf_events.get()).reason == "ChunkRefused"


async def test_the_observe_timers_safety_net_goes_on_past_it() -> None:
    kube = Kube([])
    service = SessionService(ctx_with(kube))
    objs = [unparsable(0), chunk(1, "done", 60)]
    assert await service.catch_up_seen(session_view(), objs, []) == 0
    assert [n for n, _, _ in kube.patches] == [objs[0]["metadata"]["name"]]


async def test_deletion_does_not_wait_for_it() -> None:
    objs = [chunk(0, "done", 60), unparsable(1)]
    kube = Kube(objs)
    s = session_view()
    s.status["deletion"] = {"step": "transcodes"}
    out = await DeletionService(ctx_with(kube)).wait_transcodes(
        s, DeletionProgress.from_status(s.status))
    assert isinstance(out, DeletionProgress) and out.step.value == "promote", out
    assert [st["refused"][:20] for _, st, _ in kube.patches] == ["spec does not parse:"]
