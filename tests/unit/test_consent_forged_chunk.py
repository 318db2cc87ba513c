"""A consent claim from past a hole in the chunk indexes is reported at deletion
(docs/consent.md, "Only consecutive chunks decide"): the promote step builds the plan with
the inventory's held indexes and, once promoted, asks for a `ConsentClaimRejected` Event
naming the chunk (no member). The rule itself: tests/unit/test_plan_consent.py."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_operator_observe_indexed import session_view
from tests.unit.test_operator_unparsable_chunks import Kube, ctx_with
from tests.unit.test_plan_consent import ANN, BOB, CAT, chunk
from voicetrack.chunkspec import ChunkStatus
from voicetrack.manifests import PromotionPlan
from voicetrack.resources import TranscodeStatus
from voicetrack_operator.services import deletion
from voicetrack_operator.services.deletion import DeletionService
from voicetrack_operator.services.deletionstate import DeletionProgress, DeletionStep
from voicetrack_operator.services.inventory import ChunkInventory, InventoryChunk

pytestmark = pytest.mark.unit

DONE = ChunkStatus(transcode_status=TranscodeStatus.DONE)


async def promote_with(monkeypatch: pytest.MonkeyPatch, inv: ChunkInventory
                       ) -> tuple[DeletionService, list[PromotionPlan]]:
    """Run the promote step on `inv` (the inventory served as is, the Job done at once);
    returns the service (its notices) and the plans it promoted."""
    plans: list[PromotionPlan] = []

    async def inventory(ctx: Any, s: Any, left_out: Any = None) -> ChunkInventory:
        return inv

    async def run(ctx: Any, s: Any, plan: PromotionPlan) -> None:
        plans.append(plan)

    monkeypatch.setattr(deletion, "chunk_inventory", inventory)
    monkeypatch.setattr(deletion, "run_promotion", run)
    ctx = ctx_with(Kube([]))

    async def no_recordings(meeting_id: str) -> list[Any]:
        return []

    monkeypatch.setattr(ctx.db, "get_recordings_for_meeting", no_recordings, raising=False)
    service = DeletionService(ctx)
    out = await service.promote(session_view(), DeletionProgress(step=DeletionStep.PROMOTE))
    assert isinstance(out, DeletionProgress) and out.promoted, out
    return service, plans


def inventory(*extra: Any, unaccounted: set[int] | None = None) -> ChunkInventory:
    specs = [chunk(0, 0, 10_000, {ANN: (0, 9_980), BOB: (0, 9_980)}),
             chunk(1, 10_000, 20_000, {ANN: (10_000, 19_980)}), *extra]
    return ChunkInventory(chunks={c.index: InventoryChunk(c, DONE, rebuilt=c.index > 1)
                                  for c in specs}, unaccounted=unaccounted or set())


async def test_a_forged_chunk_is_reported_and_excludes_nobody(
        monkeypatch: pytest.MonkeyPatch) -> None:
    forged = chunk(999_999, 20_000, 20_020, {}, opted=((ANN, 0, "user"), (BOB, 0, "user")))
    service, (plan,) = await promote_with(monkeypatch, inventory(forged))
    assert plan.excluded == [] and plan.speakers == [ANN, BOB]
    ((reason, message),) = service.notices
    assert reason == "ConsentClaimRejected" and "999999 (2 opted out)" in message
    assert ANN not in message and BOB not in message


async def test_a_genuine_marker_after_a_held_index_excludes_unreported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Index 2 holds a folder whose `chunk.json` is unusable (`unaccounted`): no hole, the
    consent marker at 3 decides."""
    marker = chunk(3, 20_000, 20_020, {}, opted=((BOB, 15_000, "user"), (CAT, 0, "role")))
    service, (plan,) = await promote_with(monkeypatch, inventory(marker, unaccounted={2}))
    assert plan.excluded == [BOB, CAT] and plan.speakers == [ANN]
    assert service.notices == []


async def test_an_unparsable_recording_chunk_holds_its_index() -> None:
    """Review rev-consent finding 1: a RecordingChunk the operator's model cannot parse
    (a consent marker stored before a CRD update) is refused as it is seen, and its index
    was not held: with no folder in S3 (a marker made through the API only) it left a
    hole, so the chunks after it decided nothing and a role opt-out there was not
    applied. Its index (its raw `spec.index`) is held now. Failed before."""
    from tests.unit.test_operator_observe_indexed import chunk as chunk_obj
    from tests.unit.test_operator_unparsable_chunks import unparsable
    from voicetrack_operator.services.inventory import chunk_inventory

    class EmptyStore:  # no folder in S3: the marker was made through the API only
        async def list_keys(self, prefix: str) -> list[str]:
            return []

    objs = [chunk_obj(0, "done", 60), unparsable(1), chunk_obj(2, "done", 60)]
    ctx = ctx_with(Kube(objs))
    ctx.store = lambda bucket: EmptyStore()
    inv = await chunk_inventory(ctx, session_view())
    assert sorted(inv.chunks) == [0, 2] and inv.held == {0, 1, 2}
