"""Degraded consent outlives the session (issue 12 follow-up; docs/consent.md, "After the
session"), on real PostgreSQL and SQLite, real SeaweedFS and the real CLI:

- the operator keeps a session's `ConsentDegraded` in its meeting row when the status
  first shows it, and at deletion beside the meeting's end (from the chunks: the newest
  mark, even after the condition turned False);
- `voicetrack recordings show` and `list` print it, the web page's meeting view says it;
- `final/consent.json` records it (`consentDegraded`, output ms, pauses cut);
- revision 0008 adds and drops the two columns, keeping the meeting rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
import pytest
import sqlalchemy as sa

from tests.unit.test_consent_degraded import GUILD, MEETING, chunk_obj
from voicetrack.chunkspec import ChunkSpec, ConsentDegraded, Gap
from voicetrack.db import migrate
from voicetrack.db.engine import sync_url
from voicetrack.db.service import RecordingService
from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import ConsentRecord, DegradedConsent
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack.resources import SessionSpec, TranscodeStatus
from voicetrack_operator.builders import PodSettings
from voicetrack_operator.context import Context, OperatorSettings
from voicetrack_operator.plan import build_promotion_plan
from voicetrack_operator.services.consent import note_degraded_consent
from voicetrack_operator.services.deletion import DeletionService
from voicetrack_operator.services.deletionstate import DeletionProgress, DeletionStep
from voicetrack_operator.services.sessionview import SessionView
from voicetrack_operator.status import ChunkView, Observation, build_status
from voicetrack_recorder.discord.login import (
    MEMBERS_NOT_ASKED,
    MEMBERS_NOT_ASKED_REASON,
    MEMBERS_REFUSED,
    MEMBERS_REFUSED_REASON,
)
from voicetrack_transcoder.assembly import write_consent
from voicetrack_web.access import MeetingAccess, Viewer, read_only_engine

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
CHANNEL, UID = "123456789012345679", "5e55-1011-uid"
NOT_ASKED = ConsentDegraded(reason=MEMBERS_NOT_ASKED_REASON, message=MEMBERS_NOT_ASKED)
REFUSED = ConsentDegraded(reason=MEMBERS_REFUSED_REASON, message=MEMBERS_REFUSED)
T0 = datetime(2026, 12, 3, 18, 0, tzinfo=UTC)
TEMPLATES = Path(__file__).parents[2] / "web_image" / "voicetrack_web" / "templates"


class ListingKube:
    """The API's view of the session's RecordingChunks (list only; the e2e tier runs the
    real adapter)."""

    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self.chunks = chunks
        self.listed: list[tuple[str, str, str | None]] = []

    async def list_chunks(self, ns: str, session: str, uid: str | None = None
                          ) -> list[dict[str, Any]]:
        self.listed.append((ns, session, uid))
        return self.chunks


def session(status: dict[str, Any], *, deleting: bool = False) -> SessionView:
    meta: dict[str, Any] = {"name": "standup", "namespace": "team", "uid": UID,
                            "creationTimestamp": "2026-12-03T18:00:00Z"}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-03T18:30:00Z"
    return SessionView.parse({"metadata": meta, "spec": {
        "guildId": GUILD, "channelId": CHANNEL, "meetingId": MEETING,
        "optOutRoleIds": ["600000000000000001"]}, "status": status})


def status_of(chunks: list[dict[str, Any]], previous: dict[str, Any]) -> dict[str, Any]:
    """The status the operator's observe builds from `chunks` (status.build_status)."""
    obs = Observation(generation=1, paused=False, recorder_phase="Running",
                      chunks=[ChunkView.from_object(o) for o in chunks])
    return build_status(obs, previous.get("conditions"), "2026-12-03T18:10:00Z")


def operator(db: RecordingService, kube: ListingKube) -> Context:
    settings = OperatorSettings(database_url="unused", pods=PodSettings(), live_interval_s=0,
                                s3=S3Settings(endpoint="http://127.0.0.1:1", access_key="a",
                                              secret_key="b", bucket="voicetrack"))
    return Context(settings=settings, kube=kube, db=db)  # type: ignore[arg-type]


def cli(db_url: str, s3: S3Settings, *args: str) -> str:
    env = {**os.environ, **s3.env(), "VOICETRACK_DATABASE_URL": db_url}
    env.pop("COLUMNS", None)  # piped: one line per row
    proc = subprocess.run([str(BIN / "voicetrack"), "recordings", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def test_degraded_consent_reaches_the_meeting_row_and_stays(
        db_service: RecordingService, db_url: str, s3_server: S3Settings) -> None:
    await db_service.create_meeting(MEETING, GUILD, CHANNEL, T0, UID, namespace="team",
                                    session_name="standup")
    # while recording: role opt-outs added to a session started without them (chunk 0),
    # the status's first ConsentDegraded goes to SQL
    chunks = [chunk_obj(0, NOT_ASKED)]
    kube = ListingKube(chunks)
    ctx = operator(db_service, kube)
    before = session({"state": "Recording"})
    first = status_of(chunks, before.status)
    await note_degraded_consent(ctx, before, first)
    row = await db_service.get_meeting(MEETING)
    assert (row.consent_degraded_reason, row.consent_degraded_message) == (
        MEMBERS_NOT_ASKED_REASON, MEMBERS_NOT_ASKED)
    assert row.status == "recording" and row.ended_at is None

    # a restarted recorder asked and was refused (chunk 1), then was granted the intent
    # (chunk 2: the condition turns False, NotDegraded); the session is deleted with no
    # audio promoted: the meeting ends and keeps the newest mark, from the chunks
    chunks += [chunk_obj(1, REFUSED), chunk_obj(2, None)]
    later = status_of(chunks, first)
    degraded = [c for c in later["conditions"] if c["type"] == "ConsentDegraded"]
    assert [(c["status"], c["reason"]) for c in degraded] == [("False", "NotDegraded")]
    gone = session({**later, "deletion": {"step": "record", "promoted": False}},
                   deleting=True)
    progress = await DeletionService(ctx).record(
        gone, DeletionProgress(step=DeletionStep.RECORD, promoted=False))
    assert progress.step is DeletionStep.COLLECT
    assert kube.listed == [("team", "standup", UID)]
    row = await db_service.get_meeting(MEETING)
    assert (row.status, row.failure_reason) == ("cancelled", "no audio was recorded")
    assert (row.consent_degraded_reason, row.consent_degraded_message) == (
        MEMBERS_REFUSED_REASON, MEMBERS_REFUSED)

    # the history shows it after the object is gone
    shown = json.loads(await asyncio.to_thread(cli, db_url, s3_server, "show", "team/standup",
                                               "--json"))
    assert shown["consent_degraded"] == {"reason": MEMBERS_REFUSED_REASON,
                                         "message": MEMBERS_REFUSED}
    text = await asyncio.to_thread(cli, db_url, s3_server, "show", MEETING)
    assert f"DEGRADED, role opt-outs not enforced as asked ({MEMBERS_REFUSED_REASON})" in text
    assert "4014" in text
    listed = await asyncio.to_thread(cli, db_url, s3_server, "list")
    assert f"consent degraded ({MEMBERS_REFUSED_REASON})" in listed
    rows = json.loads(await asyncio.to_thread(cli, db_url, s3_server, "list", "--json"))
    assert rows[0]["consent_degraded"]["reason"] == MEMBERS_REFUSED_REASON


async def test_a_normal_session_leaves_the_columns_empty_and_a_mark_is_checked(
        db_service: RecordingService, db_url: str, s3_server: S3Settings) -> None:
    await db_service.create_meeting(MEETING, GUILD, CHANNEL, T0, UID, namespace="team",
                                    session_name="standup")
    chunks = [chunk_obj(0, None), chunk_obj(1, None)]
    ctx = operator(db_service, ListingKube(chunks))
    normal = status_of(chunks, {})
    await note_degraded_consent(ctx, session({}), normal)
    await DeletionService(ctx).record(session(normal, deleting=True),
                                      DeletionProgress(step=DeletionStep.RECORD,
                                                       promoted=False))
    row = await db_service.get_meeting(MEETING)
    assert row.ended_at is not None
    assert (row.consent_degraded_reason, row.consent_degraded_message) == (None, None)
    shown = json.loads(await asyncio.to_thread(cli, db_url, s3_server, "show", MEETING,
                                               "--json"))
    assert shown["consent_degraded"] is None
    assert "degraded" not in await asyncio.to_thread(cli, db_url, s3_server, "list")

    with pytest.raises(InvalidInputError, match="consent_degraded_reason"):
        await db_service.mark_consent_degraded(MEETING, "not a reason", "x")
    with pytest.raises(InvalidInputError, match="consent_degraded_message"):
        await db_service.mark_consent_degraded(MEETING, "MembersIntentRefused", "x" * 4001)
    with pytest.raises(NotFoundError):
        await db_service.mark_consent_degraded("0000000000000000", "MembersIntentRefused",
                                               "x")
    # a mark after the end is kept too (a late observe), and again is a no-op
    for _ in range(2):
        await db_service.mark_consent_degraded(MEETING, MEMBERS_REFUSED_REASON, "late")
    assert (await db_service.get_meeting(MEETING)).consent_degraded_message == "late"


async def test_the_meeting_page_says_consent_was_degraded(
        db_service: RecordingService, db_url: str) -> None:
    await db_service.create_meeting(MEETING, GUILD, CHANNEL, T0, UID)
    await db_service.create_meeting("n0rma1000000000a", GUILD, CHANNEL, T0, "other-uid")
    await db_service.mark_consent_degraded(MEETING, MEMBERS_REFUSED_REASON,
                                           "<b>4014</b> refused")
    await db_service.end_meeting(MEETING, T0 + timedelta(minutes=5), "cancelled",
                                 "no audio was recorded")
    access = MeetingAccess(read_only_engine(db_url))
    manager = Viewer("400000000000000099", {GUILD: True})
    try:
        view = await access.meeting(manager, MEETING)
        normal = await access.meeting(manager, "n0rma1000000000a")
    finally:
        await access.engine.dispose()
    assert view is not None and normal is not None
    doc = view.as_dict()
    assert doc["consent_degraded"] == {"reason": MEMBERS_REFUSED_REASON,
                                       "message": "<b>4014</b> refused"}
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    env.globals["url_for"] = lambda name, path: f"/{name}/{path}"
    template = env.get_template("meeting.html")
    page = template.render(meeting={**doc, "names": {}, "live_url": "", "bundle_url": ""},
                           user=None, csrf="")
    assert "Consent degraded:" in page and MEMBERS_REFUSED_REASON in page
    assert "&lt;b&gt;4014&lt;/b&gt; refused" in page  # the message is escaped
    plain = template.render(meeting={**normal.as_dict(), "names": {}, "live_url": "",
                                     "bundle_url": ""}, user=None, csrf="")
    assert "Consent degraded" not in plain


def test_consent_json_records_degraded_consent(s3_server: S3Settings) -> None:
    """The plan's consent record says it (newest mark; output ms, the pause cut) and the
    promotion Job's `write_consent` puts it in `final/consent.json`."""
    spec = SessionSpec.model_validate({"guildId": GUILD, "channelId": CHANNEL})

    def at(index: int, start: int, mark: ConsentDegraded | None,
           gap: Gap | None = None) -> ChunkSpec:
        spec_doc = chunk_obj(index, mark)["spec"]
        spec_doc.update({"startMs": start, "endMs": start + 5000})
        track = spec_doc["tracks"][0]
        track.update({"firstMs": start, "lastMs": start + 4980})
        if gap is not None:
            spec_doc["gap"] = gap.to_api()
        return ChunkSpec.model_validate(spec_doc)

    done = TranscodeStatus.DONE
    chunks = [(at(0, 1000, None), done), (at(1, 6000, NOT_ASKED), done),
              (at(2, 21000, REFUSED, Gap(start_ms=11000, end_ms=21000, cause="paused")),
               done),
              (at(3, 26000, None), done)]
    plan = build_promotion_plan(spec, MEETING, chunks)
    assert plan is not None and plan.consent is not None
    assert plan.consent.consent_degraded == DegradedConsent(
        reason=MEMBERS_REFUSED_REASON, message=MEMBERS_REFUSED, since_ms=5000,
        until_ms=15000)  # 6000-1000; 26000-1000 less the 10 s pause
    normal = build_promotion_plan(spec, MEETING, [chunks[0], chunks[3]])
    assert normal is not None and normal.consent is not None
    assert normal.consent.consent_degraded is None

    store = ObjectStore(dataclasses.replace(s3_server, bucket=f"vt-consent-{os.getpid()}"))
    store.ensure_bucket()
    layout = MeetingLayout(spec.storage.prefix, GUILD, MEETING)
    assert write_consent(store, layout, plan) == layout.consent_key
    written = store.get_json(layout.consent_key)
    assert written["consentDegraded"] == {
        "reason": MEMBERS_REFUSED_REASON, "message": MEMBERS_REFUSED,
        "sinceMs": 5000, "untilMs": 15000}
    assert ConsentRecord.model_validate(written) == plan.consent
    write_consent(store, layout, normal)
    assert "consentDegraded" not in store.get_json(layout.consent_key)


def test_revision_0008_adds_and_drops_the_columns_keeping_rows(db_url: str) -> None:
    migrate.upgrade(db_url, "0007")
    engine = sa.create_engine(sync_url(db_url), poolclass=sa.pool.NullPool)

    def columns() -> set[str]:
        with engine.connect() as conn:
            return {c["name"] for c in sa.inspect(conn).get_columns("meetings")}

    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO meetings (id, guild_id, channel_id, started_at, status) "
                "VALUES (:id, :g, :c, :t, 'completed')"),
                {"id": MEETING, "g": GUILD, "c": CHANNEL, "t": "2026-12-03 18:00:00"})
        assert "consent_degraded_reason" not in columns()
        assert migrate.upgrade(db_url, "0008") == ["0008"]
        assert {"consent_degraded_reason", "consent_degraded_message"} <= columns()
        with engine.begin() as conn:
            conn.execute(sa.text(
                "UPDATE meetings SET consent_degraded_reason = :r, "
                "consent_degraded_message = :m WHERE id = :id"),
                {"r": MEMBERS_REFUSED_REASON, "m": MEMBERS_REFUSED, "id": MEETING})
        assert migrate.downgrade(db_url, "0007") == ["0008"]
        assert not {"consent_degraded_reason", "consent_degraded_message"} & columns()
        assert migrate.upgrade(db_url, "0008") == ["0008"]
        with engine.connect() as conn:
            row = conn.execute(sa.text(
                "SELECT id, status, consent_degraded_reason FROM meetings")).one()
        assert tuple(row) == (MEETING, "completed", None)
    finally:
        engine.dispose()
