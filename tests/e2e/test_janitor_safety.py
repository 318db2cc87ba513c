"""The orphan sweep (`services.janitor`) deletes only what was provably promoted.

Against the local API server (no session lists the meetings here), SeaweedFS and SQLite at
its head, as `test_operator_services`; the TTL is 1 s. Before the fix the sweep deleted
every chunk object older than the TTL (upload time) of a meeting no session owned: the raw
audio of a session released unpromoted, of the folders deletion keeps on purpose, and of
meeting ids the database never knew; and every such temp row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e import test_operator_services as services_tests
from tests.e2e.test_operator_services import USERS, promoted_by_hand, snowflake
from voicetrack.layout import MeetingLayout
from voicetrack_operator.context import Context
from voicetrack_operator.services.janitor import JanitorService

pytestmark = pytest.mark.e2e

crds = services_tests.crds
ctx = services_tests.ctx
"""The services tests' context: admin client, SQLite at its head, SeaweedFS, TTL 1 s."""


@pytest.fixture
async def own(ctx: Context) -> Context:
    """`ctx` on a bucket of its own, so a sweep sees only this test's objects."""
    s3 = dataclasses.replace(ctx.settings.s3, bucket=f"vt-janitor-{secrets.token_hex(4)}")
    ctx.settings = dataclasses.replace(ctx.settings, s3=s3)
    await ctx.store(s3.bucket).ensure_bucket()
    return ctx


def kept(ctx: Context, kind: str, reason: str) -> float | None:
    """The gauge `voicetrack_orphans_kept{kind, reason}` after the last sweep."""
    return ctx.metrics.registry.get_sample_value(
        "voicetrack_orphans_kept", {"kind": kind, "reason": reason})


async def meeting(ctx: Context, *, ended: bool = True, recordings: bool = True,
                  plan: tuple[int, ...] = ()) -> MeetingLayout:
    """A meeting no session owns with raw tracks in chunk folders 0 and 1, its row ended a
    minute ago with a `recordings` row and a stored plan naming `plan`, as asked
    (`promoted_by_hand`)."""
    layout = MeetingLayout("recordings", snowflake(), secrets.token_hex(8))
    bucket = ctx.settings.s3.bucket
    await promoted_by_hand(ctx, layout, bucket, plan, ended=ended, recordings=recordings)
    for index in (0, 1):
        await ctx.store(bucket).put_json(layout.raw_key(index, USERS[0], "ogg-opus"),
                                         {"raw": index})
    return layout


async def raw_left(ctx: Context, layout: MeetingLayout) -> list[int]:
    """The chunk indices whose raw track is still in S3."""
    store = ctx.store(ctx.settings.s3.bucket)
    return [i for i in (0, 1)
            if await store.exists(layout.raw_key(i, USERS[0], "ogg-opus"))]


async def test_raw_audio_nobody_promoted_is_kept_and_reported(own: Context) -> None:
    """Fault 1: older than the TTL and no session owns them, yet kept: a meeting id the
    database does not know, one that never ended, one that ended without `recordings`
    (a session released unpromoted), and the folders of a promoted meeting that its
    promotion plan does not name (kept by deletion). The gauge says how many and why."""
    unknown = MeetingLayout("recordings", snowflake(), secrets.token_hex(8))
    await own.store(own.settings.s3.bucket).put_json(
        unknown.raw_key(7, USERS[0], "ogg-opus"), {"raw": "nobody's"})
    open_ = await meeting(own, ended=False, recordings=False)
    unpromoted = await meeting(own, recordings=False, plan=(0, 1))
    promoted_elsewhere = await meeting(own)  # collected except the folders it kept
    await asyncio.sleep(2.2)  # older than the TTL (1 s; S3 times have whole seconds)

    deleted, _ = await JanitorService(own).collect_orphans()

    assert await own.store(own.settings.s3.bucket).exists(
        unknown.raw_key(7, USERS[0], "ogg-opus")), "raw audio of an unknown meeting deleted"
    for layout in (open_, unpromoted, promoted_elsewhere):
        assert await raw_left(own, layout) == [0, 1], f"raw audio of {layout.root} deleted"
    assert deleted == 0
    reasons = ("unknown_meeting", "not_ended", "not_promoted", "not_in_plan")
    assert {r: kept(own, "chunk_objects", r) for r in reasons} == {
        "unknown_meeting": 1, "not_ended": 2, "not_promoted": 2, "not_in_plan": 2}


async def test_only_the_planned_folders_of_a_promoted_meeting_go(own: Context) -> None:
    """A promoted meeting (ended over the TTL ago, `recordings` rows) whose collection
    stopped before its end (its stored plan names chunk 0): folder 0 goes, folder 1 (raw
    audio the promotion did not use) stays; a second sweep changes nothing."""
    layout = await meeting(own, plan=(0,))
    await asyncio.sleep(2.2)
    janitor = JanitorService(own)
    deleted, _ = await janitor.collect_orphans()
    assert deleted == 1 and await raw_left(own, layout) == [1]
    assert (await janitor.collect_orphans())[0] == 0 and await raw_left(own, layout) == [1]


async def test_only_temp_rows_of_promoted_meetings_go(own: Context) -> None:
    """Temp rows older than the TTL of meetings no session owns: a promoted meeting's go;
    those of a meeting that never ended, or ended without `recordings`, stay (they index
    raw chunks still in S3) and are counted in the gauge."""
    layouts = {name: await meeting(own, **kw) for name, kw in (
        ("promoted", {}), ("open", {"ended": False, "recordings": False}),
        ("unpromoted", {"recordings": False}))}
    old = datetime.now(UTC) - timedelta(hours=2)
    for layout in layouts.values():
        await own.db.insert_temp_recording(
            layout.meeting_id, USERS[0], layout.guild_id,
            layout.raw_key(0, USERS[0], "ogg-opus"), chunk_index=0, created_at=old)
    _, rows = await JanitorService(own).collect_orphans()
    assert rows == 1
    left = {name: len(await own.db.get_temp_recordings_for_meeting(layout.meeting_id))
            for name, layout in layouts.items()}
    assert left == {"promoted": 0, "open": 1, "unpromoted": 1}
    assert kept(own, "temp_rows", "not_promoted") == 2
