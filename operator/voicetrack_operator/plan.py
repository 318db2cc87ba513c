"""The promotion plan, built purely from a session's spec and chunks.

Output time starts at the first chunk's start (the moment capture began, t = 0 of the
recording), so the plan is rebased: every window and gap is shifted by that origin. Every
interval of `[0, end)` that no promoted chunk covers is a gap with its cause: a failed
chunk's window is `chunk-failed`; an interval before a chunk keeps that chunk's recorded
cause (`paused`, `recorder-restart`, …); an interval nobody recorded a cause for is
missing chunks, `chunk-failed` (silence).

Consent (issue 12, "Per-speaker consent"; docs/consent.md, "Promotion"): a member is
EXCLUDED from the meeting when they are opted out at stop, i.e. listed in the `optedOut`
of the last chunk (by index, whatever its transcode status: the recorder's latest word)
or in `spec.optOutUserIds` at deletion. An excluded member has no final track and is not
in the mix, even for audio recorded before they opted out (retroactive: none of their
bytes in any final object); their raw chunks, chunk MP3s and pieces go with the normal
collection of the chunk folders. A member who opted out and back in keeps their audio
outside the opted-out interval (the recorder dropped it there: silence).

Only the chunks of the session's run of consecutive indexes decide who is excluded
(`consent_chunks`): a recorder numbers its chunks 0, 1, 2, … with no hole (a restart
continues after the last one, a lost window becomes a marker at its index), but its
upload grant lets it store a `chunk.json` at any index, which the inventory rebuilds
(`services.inventory`), and its ServiceAccount may create a RecordingChunk at any index.
A chunk past a hole in the indexes (a forged one at index 999999 listing every member in
`optedOut`) decided the exclusion before, and every speaker's audio was dropped and then
collected. Its opt-outs are now not applied retroactively (`rejected_consent` says so);
`spec.optOutUserIds` and the last chunk of the run still exclude as before.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from voicetrack.chunkspec import ChunkSpec, Gap
from voicetrack.manifests import (
    ConsentEntry,
    ConsentRecord,
    DegradedConsent,
    PromotionPlan,
    RecordedMember,
)
from voicetrack.resources import SessionSpec, TranscodeStatus


def run_end(indexes: Collection[int]) -> int:
    """The last index of the run of consecutive `indexes` from the lowest (-1 when empty):
    the chunks that decide consent (`consent_chunks`, `services.livechunks.withheld`)."""
    end = min(indexes, default=-1)
    while end + 1 in indexes:  # at most len(indexes) steps
        end += 1
    return end


def consent_chunks(chunks: Iterable[ChunkSpec], held: Collection[int] = ()
                   ) -> tuple[list[ChunkSpec], list[ChunkSpec]]:
    """(trusted, rejected) for consent: the `chunks` whose index lies in the run of
    consecutive indexes that starts at the lowest index held, and the others (past a hole).

    `held`: the indexes that hold anything besides `chunks` (a refused chunk, a folder in S3
    whose `chunk.json` is unusable: `ChunkInventory.held`), so an honest chunk that could not
    be used leaves no hole. The run starts at the lowest index, not 0: a collection retried
    after deleting the first folders (their RecordingChunks gone) leaves the rest a run.
    Both lists keep the order of `chunks`."""
    chunks = list(chunks)
    end = run_end(set(held) | {c.index for c in chunks})
    return [c for c in chunks if c.index <= end], [c for c in chunks if c.index > end]


def excluded_users(spec: SessionSpec, chunks: Iterable[ChunkSpec],
                   held: Collection[int] = ()) -> set[str]:
    """The user ids opted out at stop (see the module docstring): the `optedOut` of the
    last chunk (by `index`) of the run `consent_chunks` trusts, and `spec.optOutUserIds`.
    Includes listed users who never were in the channel; callers that report them
    intersect with who was there."""
    trusted, _ = consent_chunks(chunks, held)
    last = max(trusted, key=lambda c: c.index, default=None)
    return set(spec.opt_out_user_ids) | ({o.user_id for o in last.opted_out} if last else set())


def rejected_consent(spec: SessionSpec, chunks: Iterable[ChunkSpec],
                     held: Collection[int] = ()) -> str | None:
    """The warning (str, names no member) for the chunks past a hole in the indexes
    (`consent_chunks`) that disagree with the decision: their `optedOut` lists members not
    excluded otherwise (their audio recorded before those chunks is kept), or leaves out
    members the last consecutive chunk excludes (an opt-in not applied: they stay
    excluded, the privacy-safe reading, and an honest hole would cost their audio, so it
    is said too). None when there are none."""
    chunks = list(chunks)
    trusted, rejected = consent_chunks(chunks, held)
    excluded = excluded_users(spec, chunks, held)
    by_run = excluded - set(spec.opt_out_user_ids)  # what only the last consecutive chunk says
    claims = []
    for c in sorted(rejected, key=lambda c: c.index):
        listed = {o.user_id for o in c.opted_out}
        outs, ins = len(listed - excluded), len(by_run - listed)
        if outs or ins:
            said = [f"{outs} opted out" if outs else "", f"{ins} opted in" if ins else ""]
            claims.append(f"{c.index} ({', '.join(x for x in said if x)})")
    if not claims:
        return None
    end = max((c.index for c in trusted), default=None)
    ends = f"end at {end}" if end is not None else "hold no chunk"
    more = f" and {len(claims) - 5} more" if len(claims) > 5 else ""
    return (f"consent of chunk(s) {', '.join(claims[:5])}{more} not applied: they lie past "
            f"a hole in the session's chunk indexes (its consecutive chunks {ends}), which "
            f"no recorder leaves (a forged chunk.json or RecordingChunk). Audio recorded "
            f"before them is kept for members they opt out; members they opt back in stay "
            f"excluded. spec.optOutUserIds and the last consecutive chunk's optedOut decide")


def output_ms(session_ms: int, origin_ms: int, gaps: list[Gap]) -> int:
    """Session ms → output ms (the final tracks' time, as `final/timeline.json`): rebased
    on `origin_ms` (the first chunk's start) with the rebased `paused` gaps cut. A time
    before the origin is 0; a time inside a pause is where the pause was cut."""
    at = max(session_ms - origin_ms, 0)
    cut = sum(max(0, min(g.end_ms, at) - g.start_ms) for g in gaps if g.cause == "paused")
    return at - cut


def degraded_consent(chunks: list[ChunkSpec], origin_ms: int, gaps: list[Gap]
                     ) -> DegradedConsent | None:
    """Whether role opt-outs were not enforced while `chunks` (session ms) were recorded:
    None when no chunk carries `consentDegraded`; else the newest (highest index) marked
    chunk's reason and message, from the first marked chunk's start to the last one's end
    (output ms, `output_ms`). The same marks as the session's `ConsentDegraded` condition
    (`voicetrack_operator.status`), kept in `final/consent.json` (docs/consent.md)."""
    marked = sorted((c for c in chunks if c.consent_degraded), key=lambda c: c.index)
    if not marked or marked[-1].consent_degraded is None:
        return None
    newest = marked[-1].consent_degraded
    return DegradedConsent(
        reason=newest.reason, message=newest.message,
        since_ms=output_ms(min(c.start_ms for c in marked), origin_ms, gaps),
        until_ms=output_ms(max(c.end_ms for c in marked), origin_ms, gaps))


def consent_record(meeting_id: str, ordered: list[ChunkSpec], excluded: set[str],
                   origin_ms: int, session_end_ms: int, gaps: list[Gap]) -> ConsentRecord:
    """`final/consent.json` from every chunk of the session (`ordered` by start, done or
    failed; session ms) and the `excluded` users.

    `recorded`: every member not excluded with a track in any chunk, `firstMs` their
    first packet (output ms; a track without packets counts its `firstMs` only when they
    have no other). `optedOut`: every member in any chunk's `optedOut`, with the `sinceMs`
    and `via` of the first chunk that lists them; plus an excluded member with a track
    whom no chunk lists (opted out with `/record optout` after the last chunk was
    sealed) at `sessionEndMs`, via `user`. Members listed in `spec.optOutUserIds` who
    left no trace in the chunks are not named (they were not in the channel).
    `consentDegraded`: `degraded_consent` of the chunks."""
    first: dict[str, tuple[bool, int]] = {}  # user → (had no packets, first session ms)
    for chunk in ordered:
        for t in chunk.tracks:
            here = (t.frames == 0, t.first_ms)
            first[t.user_id] = min(first.get(t.user_id, here), here)
    opted: dict[str, ConsentEntry] = {}
    for chunk in sorted(ordered, key=lambda c: c.index):
        for o in chunk.opted_out:
            opted.setdefault(o.user_id, ConsentEntry(
                user_id=o.user_id, since_ms=output_ms(o.since_ms, origin_ms, gaps),
                via=o.via, excluded=o.user_id in excluded))
    end = output_ms(origin_ms + session_end_ms, origin_ms, gaps)
    for user in sorted(excluded & set(first) - set(opted)):
        opted[user] = ConsentEntry(user_id=user, since_ms=end, via="user", excluded=True)
    return ConsentRecord(
        meeting_id=meeting_id,
        consent_degraded=degraded_consent(ordered, origin_ms, gaps),
        recorded=[RecordedMember(user_id=u, first_ms=output_ms(ms, origin_ms, gaps))
                  for u, (_, ms) in sorted(first.items()) if u not in excluded],
        opted_out=sorted(opted.values(), key=lambda e: (e.since_ms, e.user_id)))


def overlapping(chunks: Iterable[tuple[ChunkSpec, TranscodeStatus]]) -> list[ChunkSpec]:
    """The chunks a promotion leaves out: in index order, each chunk must start at or after
    the end of every chunk kept before it (session ms); one that does not is left out.

    A recorder never writes such windows; a buggy or compromised one can (its grant lets
    it create chunks and their stored `chunk.json`). Refusing the whole promotion would
    keep the session's finalizer, and its namespace, for ever. Index order decides, not
    start time: a chunk's index is fixed when it is made and no recorder can replace an
    earlier one, so a forged chunk (a later index) can never push real audio out, however
    early its window claims to start."""
    out: list[ChunkSpec] = []
    cursor: int | None = None
    for chunk, _ in sorted(chunks, key=lambda c: c[0].index):
        if cursor is not None and chunk.start_ms < cursor:
            out.append(chunk)
        else:
            cursor = chunk.end_ms
    return out


def build_promotion_plan(spec: SessionSpec, meeting_id: str,
                         chunks: list[tuple[ChunkSpec, TranscodeStatus]],
                         held: Collection[int] = ()) -> PromotionPlan | None:
    """The plan for `chunks` (spec, transcode status) or None when no chunk is `done`;
    `held`: the other indexes that hold something (`consent_chunks`).

    Consent (module docstring): only the chunks `consent_chunks` trusts count (`optedOut`
    of the others is neither applied nor listed: `rejected_consent` reports it); the
    excluded users' tracks are left out of the promoted
    chunks and of `speakers`, the ones who were in the channel are listed in `excluded`,
    and `consent` holds `final/consent.json` (`consent_record`). `spec.optOutUserIds` is
    read as it is now (deletion time).

    A chunk that overlaps an earlier one is left out (`overlapping`; the caller reports
    them): its audio is not promoted, but its opt-outs count (the recorder's word on
    consent is never dropped) and the time after the last kept chunk that only it covered
    is a gap."""
    left_out = {id(c) for c in overlapping(chunks)}
    ordered = sorted((c for c in chunks if id(c[0]) not in left_out),
                     key=lambda c: (c[0].start_ms, c[0].index))
    if not any(status == TranscodeStatus.DONE for _, status in ordered):
        return None
    trusted, _ = consent_chunks((c for c, _ in chunks), held)
    excluded = excluded_users(spec, (c for c, _ in chunks), held)
    origin = ordered[0][0].start_ms
    cursor = origin
    promoted: list[ChunkSpec] = []
    gaps: list[Gap] = []
    for chunk, status in ordered:
        if chunk.start_ms > cursor:
            # no recorded cause: chunks are missing here (lost), never a made-up restart
            cause = chunk.gap.cause if chunk.gap else "chunk-failed"
            gaps.append(Gap(start_ms=cursor - origin, end_ms=chunk.start_ms - origin,
                            cause=cause))
        if status == TranscodeStatus.DONE:
            promoted.append(chunk.model_copy(update={
                "start_ms": chunk.start_ms - origin, "end_ms": chunk.end_ms - origin,
                "gap": None,
                "tracks": [t for t in chunk.tracks if t.user_id not in excluded]}))
        else:
            gaps.append(Gap(start_ms=chunk.start_ms - origin, end_ms=chunk.end_ms - origin,
                            cause="chunk-failed"))
        cursor = chunk.end_ms
    end = max(c.end_ms for c, _ in chunks)
    if end > cursor:  # covered only by chunks left out
        gaps.append(Gap(start_ms=cursor - origin, end_ms=end - origin, cause="chunk-failed"))
        cursor = end
    speakers = sorted({t.user_id for c in promoted for t in c.tracks})
    present = {t.user_id for c, _ in chunks for t in c.tracks} | {
        o.user_id for c in trusted for o in c.opted_out}
    listed = {id(c) for c in trusted}  # the rejected chunks' tracks only, not their opt-outs
    consent = consent_record(meeting_id, sorted(
        (c if id(c) in listed else c.model_copy(update={"opted_out": []}) for c, _ in chunks),
        key=lambda c: c.start_ms), excluded, origin, cursor - origin, gaps)
    return PromotionPlan(
        guild_id=spec.guild_id, meeting_id=meeting_id, prefix=spec.storage.prefix,
        session_end_ms=cursor - origin, speakers=speakers, chunks=promoted, gaps=gaps,
        tracks=spec.output.tracks, formats=list(spec.output.formats),
        mp3_bitrate=spec.output.mp3_bitrate, excluded=sorted(excluded & present),
        consent=consent)
