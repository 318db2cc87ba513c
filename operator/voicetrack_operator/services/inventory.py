"""What a session recorded, from S3 and the API together: the RecordingChunk objects are not
the only index of the raw audio. A chunk whose object is gone (deleted by hand, or by the
garbage collector during `kubectl delete --cascade=foreground`) or was never made (the
chunk the recorder flushes at SIGTERM while the session's namespace terminates: the API
server refuses the create, 403) while its raw tracks are in S3 is rebuilt from its
`chunk.json`, which the recorder writes after the raw tracks and before the object, and
the operator again when it first sees the chunk. A chunk its Job transcoded is rebuilt
from the frozen copy of its spec instead (`MeetingLayout.frozen_spec_key`, outside the
recorder's upload grant, stored by the Job with the frozen raw tracks it verified), so a
recorder that overwrites a done chunk's `chunk.json` cannot change what is promoted (drop
a track, or name a sha256 the frozen raw tracks do not match, which left the chunk out);
`chunks/<index>/chunk.json` is read only when there is none (a chunk not transcoded, or
transcoded before frozen copies existed).

Whose `chunk.json` is adopted: only the session's own, read from the session's own chunk
folders (its bucket, prefix, guild and meeting id). Those are written by the operator and
by the session's recorder alone (its upload grant is a POST policy for that prefix and no
other, `voicetrack.uploadgrant`), and a meeting id is one session's (`services.admission`,
the database's `meetings.session_uid`). The spec must then pass `isolation.chunk_refusal`
as a RecordingChunk does: the session's name, guild, meeting, raw format, each track key
exactly the session's own raw key for that index and speaker, and a window within the
session's elapsed time. So a recorder can add to its own meeting only (which it records
anyway), and a raw object of another session's meeting is never named by an adopted spec.

Deletion promotes the inventory's chunks and collects only the chunk folders it promoted or
kept as failed; a folder with raw tracks but no manifest is left in place (logged), and
the orphan sweep keeps it too and reports it (`services.janitor`: not in the plan).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from voicetrack.chunkspec import SPEC_MAX_BYTES, ChunkSpec, ChunkStatus
from voicetrack.errors import InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.layout import parse_key
from voicetrack.manifests import PromotionPlan
from voicetrack.names import chunk_name, controller_uid
from voicetrack.resources import LABEL_COMPONENT, LABEL_SESSION, TranscodeStatus
from voicetrack_operator.context import Context
from voicetrack_operator.plan import excluded_users
from voicetrack_operator.services.chunkstate import parsed as parse_chunk
from voicetrack_operator.services.isolation import ChunkClaim, SessionFacts, chunk_refusal
from voicetrack_operator.services.rebuilt import failed_indexes, rebuilt_status
from voicetrack_operator.services.sessionview import SessionView, parse_time
from voicetrack_operator.services.stuck import force_stuck

log = logging.getLogger(__name__)


@dataclass
class InventoryChunk:
    """One chunk of the session: its spec, status, and whether it was rebuilt from S3."""

    spec: ChunkSpec
    status: ChunkStatus
    rebuilt: bool = False

    @property
    def transcode_status(self) -> TranscodeStatus:
        return TranscodeStatus(self.status.transcode_status)


@dataclass
class ChunkInventory:
    """Every chunk of a session by index, and the chunk folders nobody can account for."""

    chunks: dict[int, InventoryChunk] = field(default_factory=dict)
    unaccounted: set[int] = field(default_factory=set)
    """Indices with objects in S3 but neither a RecordingChunk nor a manifest: kept."""
    refused: dict[str, str] = field(default_factory=dict)
    """Chunks (RecordingChunk name, or S3 manifest key) that are not this session's, and
    why (`isolation.chunk_refusal`): neither promoted, kept nor collected."""
    refused_indexes: set[int] = field(default_factory=set)
    """Indices of the listed RecordingChunks refused."""
    unparsed_indexes: set[int] = field(default_factory=set)
    """The `spec.index` of listed RecordingChunks whose spec does not parse (a marker
    stored before a CRD update): their folders are still rebuilt, as before."""

    @property
    def held(self) -> set[int]:
        """Every index that holds something: a chunk, a refused or unparsable
        RecordingChunk, or objects in S3 (`plan.consent_chunks`: an honest chunk that
        cannot be used leaves no hole in the indexes that decide consent)."""
        return set(self.chunks) | self.unaccounted | self.refused_indexes \
            | self.unparsed_indexes

    def leave_out(self, left_out: Mapping[int, str]) -> None:
        """Mark the chunks `left_out` names (index → reason: left out of the promotion,
        their raw input bad, `services.leftout`) failed with that reason, whatever their
        status says: a RecordingChunk whose status patch was lost, or one rebuilt from its
        `chunk.json` (no object left to patch, its raw tracks present), is failed all the
        same. Its time is then a gap of the plan and its raw tracks are kept as failed."""
        for index, reason in left_out.items():
            chunk = self.chunks.get(index)
            if chunk is not None and chunk.transcode_status is not TranscodeStatus.FAILED:
                chunk.status = chunk.status.model_copy(update={
                    "transcode_status": TranscodeStatus.FAILED, "error": reason})

    def for_plan(self) -> list[tuple[ChunkSpec, TranscodeStatus]]:
        return [(c.spec, c.transcode_status) for _, c in sorted(self.chunks.items())]

    @property
    def failed(self) -> list[InventoryChunk]:
        return [c for _, c in sorted(self.chunks.items())
                if c.transcode_status is TranscodeStatus.FAILED]


def session_facts(s: SessionView) -> SessionFacts:
    """What the session's chunks are checked against (`isolation.chunk_refusal`)."""
    return SessionFacts(ref=s.ref, layout=s.layout, raw_format=s.spec.storage.raw_format,
                        created=parse_time(s.created))


async def chunk_inventory(ctx: Context, s: SessionView,
                          left_out: Mapping[int, str] | None = None) -> ChunkInventory:
    """Reconcile the session's chunk folders in S3 with the chunks the API lists. A listed
    chunk is taken as it is, unless it is not this session's (refused when it was ensured,
    or refused now by `isolation.chunk_refusal`: owner, name, keys, window); a folder
    without one is rebuilt from its `chunk.json` (checked the same way), its state judged
    by `rebuilt.rebuilt_status` (raw tracks present, then its Job's result, the SQL
    mirror's `failed`, or the raw tracks' sha256). Refused chunks are left out
    (`refused`), and their folders are never rebuilt (kept: `unaccounted`). The chunks in
    `left_out` (the deletion's `leftOut`: index → reason) are failed
    (`ChunkInventory.leave_out`). Raises TemporaryFailure (S3, the API server or, for a
    rebuilt chunk its Job never vouched for, the database away)."""
    namespace, name = s.ref.namespace, s.ref.name
    inv = ChunkInventory()
    facts, now = session_facts(s), datetime.now(UTC)
    refused_at = inv.refused_indexes  # indexes of listed chunks refused: never rebuilt
    for obj in await ctx.kube.list_chunks(namespace, name, s.ref.uid):
        ref = parse_chunk(obj)
        if ref is None:  # refused as it is seen (`services.unparsable`): not a chunk of it
            inv.refused[str(obj["metadata"]["name"])] = "spec does not parse"
            index = (obj.get("spec") or {}).get("index")
            if isinstance(index, int) and not isinstance(index, bool) and index >= 0:
                inv.unparsed_indexes.add(index)  # held: an honest one leaves no hole
            continue
        why = ref.status.refused or chunk_refusal(ref.claim, facts, now, None)
        if why is not None:
            inv.refused[ref.name] = why
            refused_at.add(ref.spec.index)
            log.warning("session %s/%s: chunk %s refused, left out: %s", namespace, name,
                        ref.name, why)
            continue
        inv.chunks[ref.spec.index] = InventoryChunk(ref.spec, ref.status)
    store = ctx.store(s.spec.storage.bucket)
    failed_in_sql: dict[int, str] | None = None

    async def failed_rows() -> dict[int, str]:
        nonlocal failed_in_sql
        if failed_in_sql is None:
            try:
                rows = await ctx.db.get_temp_recordings_for_meeting(s.meeting_id)
            except NotFoundError:  # no meeting row (never written): no row failed
                rows = []
            failed_in_sql = failed_indexes(rows, s.ref.uid)
        return failed_in_sql

    folders: dict[int, set[str]] = defaultdict(set)
    for key in await store.list_keys(s.layout.chunks_root):
        parsed = parse_key(key, s.spec.storage.prefix)
        if parsed is None or parsed.area != "chunks" or parsed.index is None \
                or (parsed.guild_id, parsed.meeting_id) != (s.spec.guild_id, s.meeting_id):
            continue
        folders[parsed.index].add(key)
    for index, keys in sorted(folders.items()):
        if index in inv.chunks:
            continue
        if index in refused_at:  # its `chunk.json`, checked with no creation time, could
            inv.unaccounted.add(index)  # pass once the session ran past a forged window
            continue
        manifest = next((k for k in keys if k.endswith("/chunk.json")), None)
        if await store.exists(s.layout.frozen_spec_key(index)):
            manifest = s.layout.frozen_spec_key(index)
        spec = None
        if manifest is not None:
            try:
                spec = ChunkSpec.model_validate(await store.get_json(manifest,
                                                                     SPEC_MAX_BYTES))
            except (InvalidInputError, NotFoundError, ValueError) as err:
                log.warning("chunk manifest %s unusable: %s", manifest, err)
        why = None if spec is None else chunk_refusal(
            ChunkClaim(name=chunk_name(name, spec.index), label_session=None,
                       owner_uid=s.ref.uid, spec=spec, created=None), facts, now, None)
        if why is not None and manifest is not None:
            inv.refused[manifest] = why
            log.warning("session %s/%s: chunk manifest %s refused: %s", namespace, name,
                        manifest, why)
        if spec is None or spec.index != index or why is not None:
            inv.unaccounted.add(index)
            log.warning("session %s/%s: chunk %06d has objects in S3 but no RecordingChunk "
                        "and no manifest: kept", namespace, name, index)
            continue
        status = await rebuilt_status(store, s.layout, spec, keys, failed_rows)
        log.info("session %s/%s: chunk %06d rebuilt from its manifest (%s)", namespace, name,
                 index, status.transcode_status)
        inv.chunks[index] = InventoryChunk(spec, status, rebuilt=True)
    inv.leave_out(left_out or {})
    return inv


async def collect_chunks(ctx: Context, s: SessionView,
                         left_out: Mapping[int, str] | None = None) -> int:
    """Keep the raw tracks of failed chunks (those `left_out` of the promotion too,
    `chunk_inventory`) under `final/failed/…` with their reasons in
    `final/failed-chunks.json`, then delete the chunk folders that were promoted (named in
    the stored promotion plan) or kept as failed, each with its transcoder outputs folder
    (`MeetingLayout.output_dir`), and the plan. Folders nobody accounts for
    stay. Transcoder pods still Running are waited for (TemporaryFailure), but those that
    will never stop (`stuck.force_stuck`: a dead node) are force-deleted. Returns the
    number of objects deleted."""
    store, layout = ctx.store(s.spec.storage.bucket), s.layout
    running = [p for p in await ctx.kube.list_pods(
        s.ref.namespace, f"{LABEL_SESSION}={s.ref.name},{LABEL_COMPONENT}=transcoder")
        if controller_uid(p, "Job") is not None
        and (p.get("status") or {}).get("phase") == "Running"]
    # one on a dead node stays Running for ever: force-deleted, not waited for (the
    # chunks are terminal by now, so its outputs are no longer wanted)
    forced = await force_stuck(ctx, running, datetime.now(UTC))
    names = [str(p["metadata"]["name"]) for p in running
             if p["metadata"]["name"] not in forced]
    if names:  # their outputs would land after the folders are collected
        raise TemporaryFailure(f"waiting for transcoder pod(s) {', '.join(names)} to stop "
                               "before collecting", delay=2)
    inv = await chunk_inventory(ctx, s, left_out)
    plan: PromotionPlan | None = None
    try:
        plan = PromotionPlan.model_validate(await store.get_json(layout.promotion_plan_key))
    except NotFoundError:
        pass  # nothing was done: nothing promoted
    except (InvalidInputError, ValueError) as err:
        log.warning("promotion plan of %s/%s unusable, no promoted chunk collected: %s",
                    s.ref.namespace, s.ref.name, err)
    kept = await keep_failed(ctx, s, inv, plan)
    promoted = {c.index for c in plan.chunks} if plan else set()
    deleted = 0
    for root in (layout.chunks_root, layout.outputs_root):  # once, not per chunk folder:
        await store.abort_uploads(root)  # a recorder or Job killed mid-upload left parts
    for index in sorted(promoted | kept):
        deleted += await store.delete_prefix(layout.chunk_dir(index) + "/", abort=False)
        deleted += await store.delete_prefix(layout.output_dir(index) + "/", abort=False)
    left = sorted(set(inv.chunks) - promoted - kept) + sorted(inv.unaccounted)
    if left:
        log.warning("session %s/%s: chunk folders %s neither promoted nor kept: left in S3",
                    s.ref.namespace, s.ref.name, left)
    await store.delete_keys([layout.promotion_plan_key])
    return deleted


async def keep_failed(ctx: Context, s: SessionView, inv: ChunkInventory,
                      plan: PromotionPlan | None = None) -> set[int]:
    """Copy the raw tracks of the failed chunks to `final/failed/…` and list them, with
    their reasons, in `final/failed-chunks.json`, so collecting the chunk folders loses
    nothing. Consent (`plan.excluded_users`, docs/consent.md): the tracks of members
    opted out at stop are neither copied nor listed; they go with their chunk folder.
    Opted out at stop means excluded by the stored promotion `plan` (the decision the
    final tracks were made by) or by `spec.optOutUserIds` now (it may have changed
    since); without a plan, by the spec and the chunks now (`plan.excluded_users`: the
    chunks past a hole in the indexes decide nothing). The chunks now are not read when
    there is a plan: a retry after some folders were collected sees fewer of them.
    Returns the indices kept (their folders are collected)."""
    failed = inv.failed
    if not failed:
        return set()
    store, layout = ctx.store(s.spec.storage.bucket), s.layout
    if plan is not None:
        excluded = set(plan.excluded) | set(s.spec.opt_out_user_ids)
    else:
        excluded = excluded_users(s.spec, (c.spec for c in inv.chunks.values()), inv.held)
    entries: list[dict[str, Any]] = []
    for chunk in failed:
        for track in chunk.spec.tracks:
            kept = layout.failed_raw_key(chunk.spec.index, track.user_id,
                                         chunk.spec.raw_format)
            if track.user_id in excluded:  # a run before they opted out may have kept it
                await store.delete_keys([kept])
                continue
            if not await store.exists(kept):  # a retry keeps it
                try:
                    await store.copy(track.key, kept)
                except NotFoundError:
                    kept = ""  # the recorder never uploaded it: say so
            entries.append({"index": chunk.spec.index, "startMs": chunk.spec.start_ms,
                            "endMs": chunk.spec.end_ms, "userId": track.user_id,
                            "key": kept, "sha256": track.sha256, "bytes": track.bytes,
                            "rawFormat": chunk.spec.raw_format,
                            "error": chunk.status.error or ""})
    # a retry may see fewer failed chunks (their objects and folders collected already):
    # the entries written before stand, so no reason is lost
    try:
        before = (await store.get_json(layout.failed_manifest_key)).get("failed") or []
    except NotFoundError:
        before = []
    written = {(e["index"], e["userId"]) for e in entries}
    merged = [e for e in before if (e.get("index"), e.get("userId")) not in written
              and e.get("userId") not in excluded]
    entries = sorted(merged + entries, key=lambda e: (int(e["index"]), str(e["userId"])))
    await store.put_json(layout.failed_manifest_key,
                         {"meetingId": s.meeting_id, "failed": entries})
    return {c.spec.index for c in failed}
