"""Consent fails closed when a member's roles cannot be read while `optOutRoleIds` is set
(`voicetrack_recorder.consent.UNKNOWN`).

discord.py drops a member who left voice from its cache unless the GUILD_MEMBERS intent
is on (the case when `optOutRoleIds` was added to a live session), and a member's SSRC
can be seen (CLIENT_CONNECT, SPEAKING) before their voice state fills the cache. Before,
both read as "no opt-out role": a member opted out by role was opted back in the moment
the cache forgot them (so they were missing from the last chunk's `optedOut` and their
audio from before the opt-out was promoted), and a member not cached yet was recorded.
"""

from __future__ import annotations

import pytest

from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.consent import Consent

pytestmark = pytest.mark.unit

ROLE = "900000000000000001"
ALICE = "100000000000000001"
BOB = "100000000000000002"


class Cache:
    """discord.py's member cache as `roles_of` reads it: user id → role ids, or None."""

    def __init__(self) -> None:
        self.roles: dict[str, list[str]] = {}

    def __call__(self, user_id: str) -> list[str] | None:
        return self.roles.get(user_id)


def consent(now: list[float], cache: Cache) -> Consent:
    return Consent(SessionClock(0, time_fn=lambda: now[0]), role_ids=[ROLE],
                   roles_of=cache)


def test_a_member_opted_out_by_role_stays_out_when_the_cache_forgets_them() -> None:
    now, cache = [5.0], Cache()
    cache.roles[ALICE] = [ROLE]
    c = consent(now, cache)
    assert c.see(ALICE)
    del cache.roles[ALICE]  # left voice: discord.py forgets them without GUILD_MEMBERS
    now[0] = 9.0
    assert c.refresh() == []
    assert c.excluded(ALICE)
    assert [(o.user_id, o.since_ms, o.via) for o in c.opted_out()] == [(ALICE, 5000, "role")]


def test_a_member_seen_before_their_roles_are_known_is_not_recorded_until_they_are() -> None:
    now, cache = [2.0], Cache()
    c = consent(now, cache)
    assert c.see(BOB)  # an SSRC before the voice state: dropped, not yet listed
    assert c.opted_out() == [] and c.since_ms(BOB) is None
    cache.roles[BOB] = []  # known now, no opt-out role: recorded from here on
    c.refresh()
    assert not c.excluded(BOB) and c.opted_out() == []
    cache.roles[ALICE] = [ROLE]
    assert c.see(ALICE)
    del cache.roles[ALICE]
    cache.roles[ALICE] = [ROLE]
    now[0] = 3.0
    c.refresh()
    assert [o.user_id for o in c.opted_out()] == [ALICE]


def test_without_role_opt_outs_an_unknown_member_is_recorded() -> None:
    c = Consent(SessionClock(0, time_fn=lambda: 1.0), user_ids=[ALICE],
                roles_of=Cache())
    assert not c.see(BOB)
    assert c.see(ALICE) and [o.via for o in c.opted_out()] == ["user"]


def test_a_restart_carries_the_last_chunks_opt_outs() -> None:
    """A recorder restart (`Recorder.prepare`) restores the last chunk's `optedOut`: a
    member opted out by role who left before the restart stays listed with their
    `sinceMs`, also before the source can read roles, until the policy says otherwise."""
    from voicetrack.chunkspec import OptOut

    now = [60.0]
    c = Consent(SessionClock(0, time_fn=lambda: now[0]), user_ids=[BOB], role_ids=[ROLE])
    c.restore([OptOut(user_id=ALICE, since_ms=5000, via="role"),
               OptOut(user_id=BOB, since_ms=7000, via="user")])
    c.refresh()  # the session watch's first look, before the source has logged in
    assert [(o.user_id, o.since_ms, o.via) for o in c.opted_out()] == [
        (ALICE, 5000, "role"), (BOB, 7000, "user")]
    cache = Cache()
    cache.roles[ALICE] = cache.roles[BOB] = []  # roles read now: ALICE lost the role
    c.roles_of = cache
    c.set_policy([], [ROLE])
    assert c.opted_out() == []
