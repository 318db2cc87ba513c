"""Per-speaker consent on the recorder: who is not recorded, and since when (issue 12).

A member is opted out while their user id is in the session's `spec.optOutUserIds`
(`via` "user", what `/record optout` sets), or while any of their guild roles is in
`spec.optOutRoleIds` (`via` "role"; the roles come from the source, for `discord` from
discord.py's member cache). `Consent` holds that policy (followed live: the recorder hands
it every change its session watch sees) and, for each member seen in the channel (a voice
state, an SSRC or a files speaker), whether they are opted out now and since which session
ms (`OptOut.since_ms`: the session clock when the recorder first saw them opted out).

Who reads it: the receive pipeline drops an opted-out member's packets before DAVE
decryption (`VoiceReceiver`), the recorder's sink refuses their frames, the chunker cuts
a track at its user's `sinceMs` and lists `opted_out()` in each sealed chunk
(`ChunkSpec.optedOut`). When the source cannot follow the policy as asked (Discord refused
the GUILD_MEMBERS intent), it says so in `degraded`, and every chunk sealed from then on
carries it (`ChunkSpec.consentDegraded`), which the operator shows on the session.
Everything runs on the event loop's thread; no locks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

from voicetrack.chunkspec import ConsentDegraded, OptOut
from voicetrack.resources import MAX_TRACKS
from voicetrack_recorder.clock import SessionClock

log = logging.getLogger(__name__)

RolesOf = Callable[[str], "Iterable[str] | None"]
"""user id → the role ids (snowflake strings) of that guild member now, or None when the
member is not known (not in discord.py's member cache, or no longer)."""

UNKNOWN: Final = "unknown"
"""`_via` for a member whose roles cannot be read while `optOutRoleIds` is set: consent
fails closed. A member opted out keeps their verdict (discord.py drops a member who left
voice from its cache without the GUILD_MEMBERS intent: that is no opt-in), and a member
seen before their roles are known is not recorded until they are (`pending`)."""


Via = Literal["role", "user"]


@dataclass(frozen=True)
class _Out:
    since_ms: int
    via: Via


class Consent:
    """The opt-out policy of one session and the opt-outs it causes.

    `user_ids`, `role_ids`: the session's `spec.optOutUserIds` / `optOutRoleIds` at start;
    `roles_of`: how to read a member's roles (None: no roles, e.g. the `files` source)."""

    def __init__(self, clock: SessionClock, user_ids: Iterable[str] = (),
                 role_ids: Iterable[str] = (), roles_of: RolesOf | None = None) -> None:
        self.clock = clock
        self.user_ids = frozenset(user_ids)
        self.role_ids = frozenset(role_ids)
        self.roles_of = roles_of
        self.seen: set[str] = set()
        """Every member seen in the channel during this recorder's run."""
        self._out: dict[str, _Out] = {}
        self.pending: set[str] = set()
        """Members seen whose roles are not known yet while `role_ids` is set: their
        packets are dropped, but they are not listed as opted out (`UNKNOWN`)."""
        self.recorded: set[str] = set()
        """Members with audio in a chunk of this session (`note_recorded`, `restore`):
        the ones promotion must know about when they opt out."""
        self._left_off = 0
        self.degraded: ConsentDegraded | None = None
        """Why consent runs with less than the policy asks; None while it runs as asked.
        Each sealed chunk carries it (`ChunkSpec.consentDegraded`). Kept by
        `lacks_members` and `set_policy`: the source's lack while `role_ids` is set."""
        self._without_members: ConsentDegraded | None = None

    def lacks_members(self, why: ConsentDegraded | None) -> None:
        """What role opt-outs lack on the source's connection (`why`: e.g. the gateway
        has no GUILD_MEMBERS, refused or not asked for at start; None: nothing). It
        degrades consent while the policy has role opt-outs, also ones added later."""
        self._without_members = why
        self.degraded = why if self.role_ids else None

    def excluded(self, user_id: str) -> bool:
        """Whether `user_id` is not recorded now (as last evaluated: `see`, `refresh`):
        opted out, or `pending` (roles not known yet while role opt-outs are set)."""
        return user_id in self._out or user_id in self.pending

    def since_ms(self, user_id: str) -> int | None:
        """The session ms from which `user_id`'s packets are dropped, None while recorded."""
        out = self._out.get(user_id)
        return None if out is None else out.since_ms

    def see(self, user_id: str) -> bool:
        """Note that `user_id` is in the channel (a voice state, an SSRC, a speaker);
        evaluates them the first time. Returns whether they are opted out now."""
        if user_id not in self.seen:
            self.seen.add(user_id)
            self._evaluate(user_id)
        return self.excluded(user_id)

    def restore(self, opted_out: Iterable[OptOut]) -> None:
        """Carry on the opt-outs of the session's last chunk (`ChunkSpec.optedOut`) after
        a recorder restart: each member keeps their `sinceMs` and `via`, and counts as seen,
        so a member opted out by role who left before the restart stays listed (and
        excluded at promotion) until the policy, read again, says otherwise."""
        for o in opted_out:
            self.seen.add(o.user_id)
            self.recorded.add(o.user_id)  # listed: may have audio in an earlier chunk
            self._out.setdefault(o.user_id, _Out(o.since_ms, o.via))

    def note_recorded(self, user_ids: Iterable[str]) -> None:
        """Note that `user_ids` have a track in a sealed chunk (the chunker, at each seal)."""
        self.recorded.update(user_ids)

    def see_all(self, user_ids: Iterable[str]) -> None:
        """`see` each of `user_ids` (e.g. the members in the channel's voice states)."""
        for user_id in user_ids:
            self.see(user_id)

    def set_policy(self, user_ids: Iterable[str], role_ids: Iterable[str]) -> list[str]:
        """Take the session's current opt-out lists and re-evaluate every member seen;
        returns the members opted out by this call (see `refresh`)."""
        self.user_ids, self.role_ids = frozenset(user_ids), frozenset(role_ids)
        self.lacks_members(self._without_members)  # role opt-outs added or all removed
        return self.refresh()

    def refresh(self) -> list[str]:
        """Re-evaluate every member seen (their roles may have changed). A member newly
        opted out gets `since_ms` = the session clock now; one opted back in is recorded
        again from now on. Returns the user ids newly opted out."""
        return [u for u in sorted(self.seen) if self._evaluate(u)]

    def cuts(self) -> list[tuple[str, int]]:
        """Every member opted out now with their `since_ms` (what the chunker cuts at),
        however many: unlike `opted_out`, never bounded."""
        return [(u, o.since_ms) for u, o in sorted(self._out.items())]

    def opted_out(self) -> list[OptOut]:
        """The members opted out now among those seen, by user id (`ChunkSpec.optedOut`),
        at most MAX_TRACKS (the model's and the CRD's limit): past it, the members with
        audio in this session (`recorded`: promotion excludes them by this list) come
        first, then the others by user id (they have nothing to exclude), and the number
        left off is logged as an error. Raises pydantic's ValidationError for a user id
        that is not a snowflake."""
        users = sorted(self._out)
        if len(users) > MAX_TRACKS:
            users = sorted(sorted(users, key=lambda u: u not in self.recorded)[:MAX_TRACKS])
            left = len(self._out) - MAX_TRACKS
            lost = len([u for u in self._out if u in self.recorded and u not in users])
            if left != self._left_off:
                self._left_off = left
                log.error("%d members opted out: a chunk lists at most %d (optedOut); "
                          "%d left off the list, %d of whom have audio in this session "
                          "(their audio before the opt-out would be promoted)",
                          len(self._out), MAX_TRACKS, left, lost)
        return [OptOut(user_id=u, since_ms=self._out[u].since_ms, via=self._out[u].via)
                for u in users]

    def _via(self, user_id: str) -> Via | Literal["unknown"] | None:
        if user_id in self.user_ids:
            return "user"
        if self.role_ids:
            roles = self.roles_of(user_id) if self.roles_of is not None else None
            if roles is None:
                # no roles to read: a source without roles (files) records whoever is not
                # out already; a role opt-out carried over a restart (`restore`) holds
                # until the source can read roles again
                out = self._out.get(user_id)
                if self.roles_of is not None or (out is not None and out.via == "role"):
                    return UNKNOWN
                return None
            if not self.role_ids.isdisjoint(roles):
                return "role"
        return None

    def _evaluate(self, user_id: str) -> bool:
        """Apply the policy to one member; True when this opts them out."""
        via = self._via(user_id)
        current = self._out.get(user_id)
        if via == UNKNOWN:
            if current is None:
                self.pending.add(user_id)
            return False
        self.pending.discard(user_id)
        if via is None:
            if current is not None:
                del self._out[user_id]
                log.info("user %s opted in: recorded again from %d ms", user_id,
                         self.clock.now_ms())
            return False
        if current is not None:
            if current.via != via:  # still out, for another reason: keep sinceMs
                self._out[user_id] = _Out(current.since_ms, via)
            return False
        since = max(self.clock.now_ms(), 0)
        self._out[user_id] = _Out(since, via)
        log.info("user %s opted out (%s): not recorded from %d ms", user_id, via, since)
        return True
