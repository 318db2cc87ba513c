"""Degraded consent in the meeting history (issue 12; docs/consent.md, "Where to see it").

A session whose recorder could not enforce role-based opt-outs (the Discord Server Members
Intent refused or not requested) shows the `ConsentDegraded` condition while the object
exists. The `meetings` row outlives it, so the operator copies the fact there
(`meetings.consent_degraded_reason`/`_message`, revision 0008):

- while recording, when a status about to be patched first shows `ConsentDegraded` True,
  or shows it with another reason or message (`note_degraded_consent`, from the observe);
- at deletion, beside the meeting's final state (`record_degraded_consent`, from
  `DeletionService.record`), from the chunks themselves: a chunk sealed at the recorder's
  last flush may never have reached the session's status, and a condition that turned
  `False` (`NotDegraded`) no longer carries the reason.

The SQL mark is never cleared: the audio recorded meanwhile stays recorded that way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from voicetrack.errors import NotFoundError, TemporaryFailure
from voicetrack_operator.context import Context
from voicetrack_operator.services.sessionview import SessionView
from voicetrack_operator.status import CONSENT_DEGRADED, ChunkView

log = logging.getLogger(__name__)


def _condition(conditions: Iterable[dict[str, Any]] | None) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == CONSENT_DEGRADED), None)


def degraded_mark(conditions: Iterable[dict[str, Any]] | None,
                  chunks: Iterable[ChunkView]) -> tuple[str, str] | None:
    """(reason, message) to keep for a session: the newest (highest index) chunk's
    `spec.consentDegraded`, refused chunks (not the session's) left out; without one
    (chunks gone), the session's `ConsentDegraded` condition's reason and message (True:
    the newest mark; False, `NotDegraded`: its message names the last degraded chunk and
    its reason); None when there is neither (consent ran as asked)."""
    marked = [c for c in chunks if c.consent_degraded and not c.refused]
    if marked:
        newest = max(marked, key=lambda c: c.index).consent_degraded
        assert newest is not None
        return newest
    cond = _condition(conditions)
    if cond is None or not cond.get("reason") or not cond.get("message"):
        return None
    return str(cond["reason"]), str(cond["message"])


def first_shown(previous: Iterable[dict[str, Any]] | None,
                new: Iterable[dict[str, Any]] | None) -> tuple[str, str] | None:
    """(reason, message) when the `new` conditions show `ConsentDegraded` True and the
    `previous` ones did not with the same reason and message; None otherwise (absent,
    False, or unchanged)."""
    cond = _condition(new)
    if cond is None or cond.get("status") != "True":
        return None
    mark = (str(cond.get("reason", "")), str(cond.get("message", "")))
    before = _condition(previous)
    if before is not None and before.get("status") == "True" and (
            str(before.get("reason", "")), str(before.get("message", ""))) == mark:
        return None
    return mark


async def note_degraded_consent(ctx: Context, s: SessionView, new: dict[str, Any]) -> None:
    """Keep in SQL a `ConsentDegraded` that the status `new` (what the observe is about to
    patch) shows for the first time (`first_shown`). Best effort: an unreachable database
    or a missing meeting row is logged and left to the next change or to deletion
    (`record_degraded_consent`), never fails the observe."""
    mark = first_shown(s.status.get("conditions"), new.get("conditions"))
    if mark is None:
        return
    try:
        await ctx.db.mark_consent_degraded(s.meeting_id, *mark)
    except (TemporaryFailure, NotFoundError) as err:
        log.warning("session %s/%s: degraded consent not kept in SQL yet (%s); kept at "
                    "deletion", s.ref.namespace, s.ref.name, err)


async def record_degraded_consent(ctx: Context, s: SessionView,
                                  objs: list[dict[str, Any]] | None = None
                                  ) -> tuple[str, str] | None:
    """At deletion, before the meeting's end is written: keep the session's degraded
    consent (`degraded_mark` of its chunks `objs`, default listed from the API now, and its
    conditions) in its meeting row. Returns what was kept, None when consent ran as asked.
    Raises TemporaryFailure when the API or SQL is away; NotFoundError without a meeting
    row."""
    if objs is None:
        objs = await ctx.kube.list_chunks(s.ref.namespace, s.ref.name, s.ref.uid)
    mark = degraded_mark(s.status.get("conditions"), map(ChunkView.from_object, objs))
    if mark is not None:
        await ctx.db.mark_consent_degraded(s.meeting_id, *mark)
    return mark
