"""Which operator replica acts: kopf's peering, and the same rule for our own workers.

Two or more replicas run with peering on (`VOICETRACK_PEERING` names a ClusterKopfPeering,
`crds/kopfpeerings.yaml` and the chart's `peering.yaml`). kopf itself pauses the replica
that sees a live peer of higher priority: its watch streams stop and its timers and daemons
are stopped (kopf docs, "Peering": priorities; `kopf._core.engines.daemons.daemon_killer`,
reason OPERATOR_PAUSING); on resume the fresh watch lists every object again, so the event
handlers see in-flight chunks, Jobs and deleting sessions as they are (level-based), and
sub-handler progress lives in annotations.

Priorities are by seniority: the replica that started first has the highest one, so a
restarted or newly scaled replica never pre-empts the one acting (kopf pauses *all* peers
of equal priority, so two replicas must never share one). A peer counts as gone when its
`lastseen` is older than its `lifetime`: kopf's default of 60 s is far too slow for
the 15 s takeover of issue 16, so we use `DEFAULT_LIFETIME_S` (kopf's keep-alive then
touches every 1-5 s: `min(lifetime, max(1, lifetime - randint(5, 10)))`).

kopf does not expose its paused state to handlers, and the operator runs work of its own
outside kopf's handlers (heartbeat row, orphan sweep, webhook delivery). `Leadership`
reads the same peering object and applies kopf's rule (`is_active`), and
`Leadership.while_active` runs such a worker only while this replica acts.

A replica that stops for longer than its record lives (event loop blocked, SIGSTOP, a long
GC pause, cut off from the API server) is dead to its peers meanwhile: a junior one resumes
and acts, and kopf's autoclean deletes the stalled one's record. When the stalled one comes
back, kopf's rule (which looks only at *other* peers) still finds it the senior, so it
never pauses; its first keep-alive makes the junior pause instead. Both act from the resume
until the junior sees that keep-alive (a PATCH, a watch event, and the junior's in-flight
handler calls finishing: kopf does not cancel them). Nothing in kopf tells the resumed one
it was not in control. `Leadership` tells it: while active, its own record must stay live
without a gap, read after read (`record_lapsed`); when it lapsed, this replica steps down
(`while_active` cancels its workers) and acts again only once its record is live again
(and `SETTLE_S` more, for the junior to stop), as a new turn (so `Context.turned_active`
runs: the SQL mirror audit is redone, which finds rows the other replica left behind).

Ties. Equal priorities despite the random tiebreak (`seniority_priority`: one same-ms start
in a thousand) would pause every tied replica for good: kopf resumes only when the tie is
gone, and nothing restarts a paused replica (its liveness passes). `Leadership.observe`
breaks it: of two live peers with one priority, the one whose identity sorts later lowers
its own by one (`tied_peer`), in kopf's settings too (kopf's keep-alive writes
`settings.peering.priority` each time), so its next keep-alive ends the tie for both.

Without `VOICETRACK_PEERING` the operator is standalone (one replica, always active).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from kubernetes import client

log = logging.getLogger(__name__)

PEERING_GROUP = "kopf.dev"
PEERING_VERSION = "v1"
PEERING_PLURAL = "clusterkopfpeerings"
DEFAULT_LIFETIME_S = 10
"""A killed replica's record expires this long after its last keep-alive; the paused one
resumes then (measured by tests/disruptive/test_operator_ha.py)."""
POLL_S = 1.0
"""How often `Leadership.watch` reads the peering object (one GET per replica)."""
LAPSE_MARGIN_S = 0.5
"""A record this close to its end counts as ended (`record_lapsed`): the clock skew between
replicas allowed for (a peer judges our record by its own clock)."""
SETTLE_S = 2 * POLL_S
"""After a lapse, this replica acts again only this long after its first keep-alive that is
live again: its peers, reading every `POLL_S`, have seen it and stopped their workers."""


@dataclass(frozen=True)
class PeeringConfig:
    """This replica's peering: `name` of the ClusterKopfPeering ("" = standalone), its
    `identity` (kopf's peer key: the pod name), `priority` (higher acts; by default
    `seniority_priority` of the start time) and `lifetime_s` (seconds a record lives).

    Variables: VOICETRACK_PEERING (name), VOICETRACK_PEERING_PRIORITY (int),
    VOICETRACK_PEERING_LIFETIME_S (int, default `DEFAULT_LIFETIME_S`), POD_ID or
    VOICETRACK_POD_NAME (identity; else host/pid)."""

    name: str
    identity: str
    priority: int
    lifetime_s: int = DEFAULT_LIFETIME_S

    @property
    def enabled(self) -> bool:
        """True when peering is on (several replicas may run)."""
        return bool(self.name)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 started: datetime | None = None) -> PeeringConfig:
        """Read the variables above. Raises ValueError for a non-integer priority or a
        lifetime below 2 s (kopf keeps alive at most once a second)."""
        env = os.environ if env is None else env
        priority = env.get("VOICETRACK_PEERING_PRIORITY", "").strip()
        lifetime = int(env.get("VOICETRACK_PEERING_LIFETIME_S", "") or DEFAULT_LIFETIME_S)
        if lifetime < 2:
            raise ValueError(f"VOICETRACK_PEERING_LIFETIME_S must be >= 2, not {lifetime}")
        identity = (env.get("POD_ID") or env.get("VOICETRACK_POD_NAME")
                    or f"{socket.gethostname()}/{os.getpid()}")
        return cls(name=env.get("VOICETRACK_PEERING", "").strip(), identity=identity,
                   priority=int(priority) if priority else seniority_priority(
                       started or datetime.now(UTC)),
                   lifetime_s=lifetime)


TIEBREAK = 1000
"""Priorities per millisecond of start time: the random `tiebreak` below it."""


def seniority_priority(started: datetime, tiebreak: int | None = None) -> int:
    """A kopf priority that is higher the earlier `started` is (ms resolution):
    `-(epoch_ms * TIEBREAK + tiebreak)`, `tiebreak` in [0, TIEBREAK) at random unless
    given. Two replicas starting in the same millisecond (a Deployment's replicas start
    together) then tie only one time in a thousand; a tie makes kopf pause both until one
    restarts, and a Deployment's replicas cannot be given distinct
    VOICETRACK_PEERING_PRIORITY values. Before, every same-millisecond start tied. The
    magnitude (about 1.8e15) stays below 2**53, exact in any JSON reader."""
    rank = secrets.randbelow(TIEBREAK) if tiebreak is None else tiebreak
    return -(int(started.timestamp() * 1000) * TIEBREAK + rank)


def is_active(status: Mapping[str, Any], identity: str, priority: int,
              now: datetime) -> bool:
    """kopf's rule (`kopf._core.engines.peering.process_peering_event`): this peer acts
    unless another live peer in the peering object's `status` has a priority >= ours.

    `status` maps identity -> {priority, lifetime (s), lastseen (ISO 8601)}; a record
    without lastseen is live, one without lifetime lives 60 s, as in kopf's `Peer`."""
    for other, info in status.items():
        if other == identity or not isinstance(info, Mapping):
            continue
        seen = info.get("lastseen")
        deadline = (datetime.fromisoformat(seen) if seen else now) + timedelta(
            seconds=int(info.get("lifetime", 60)))
        if deadline > now and int(info.get("priority", 0)) >= priority:
            return False
    return True


def tied_peer(status: Mapping[str, Any], identity: str, priority: int,
              now: datetime) -> str | None:
    """The identity of a live peer in the peering `status` (records as in `is_active`) that
    has exactly `priority` and whose identity sorts before ours, the earliest such; None
    when there is none. Of two tied replicas only the later identity sees the other, so
    exactly one of them yields (`Leadership.observe`)."""
    tied = []
    for other, info in status.items():
        if other >= identity or not isinstance(info, Mapping):
            continue
        seen = info.get("lastseen")
        deadline = (datetime.fromisoformat(seen) if seen else now) + timedelta(
            seconds=int(info.get("lifetime", 60)))
        if deadline > now and int(info.get("priority", 0)) == priority:
            tied.append(other)
    return min(tied, default=None)


def own_record(status: Mapping[str, Any], identity: str,
               now: datetime) -> tuple[datetime, datetime] | None:
    """This replica's record in the peering `status` as its peers read it: (lastseen, end =
    lastseen + lifetime), as in kopf's `Peer` (no lastseen: `now`; no lifetime: 60 s).
    None when it has none (never written yet, deleted by a peer's autoclean once it was
    dead, or written with lifetime 0 on exit)."""
    info = status.get(identity)
    if not isinstance(info, Mapping):
        return None
    seen = info.get("lastseen")
    lastseen = datetime.fromisoformat(seen) if seen else now
    lifetime = int(info.get("lifetime", 60))
    if lifetime <= 0:
        return None
    return lastseen, lastseen + timedelta(seconds=lifetime)


def record_lapsed(before: tuple[datetime, datetime], after: tuple[datetime, datetime] | None,
                  now: datetime, margin_s: float = LAPSE_MARGIN_S) -> bool:
    """Whether this replica's peering record may have been dead to its peers at some time
    between two reads: `before` (lastseen, end) from the earlier read, `after` from the
    read that returned at wall time `now`.

    Live throughout when the record is still there, every keep-alive in between was written
    before the one before it ended (the latest, `after`'s lastseen, is no later than
    `before`'s end: keep-alives written in between lie between the two) and the latest has
    not ended by `now`; each end taken `margin_s` early for clock skew. Our own keep-alives
    are stamped with our own clock, so this needs no clock shared with the API server."""
    if after is None:
        return True
    margin = timedelta(seconds=margin_s)
    return after[0] > before[1] - margin or now >= after[1] - margin


class Leadership:
    """Whether this replica acts, kept current by `watch`; `while_active` gates workers.

    A standalone `Leadership` (peering off) is always active. With peering, it starts
    passive and turns active once the peering object shows no live peer of higher or equal
    priority; an unreadable peering object keeps the last answer (kopf cannot touch it
    either)."""

    def __init__(self, config: PeeringConfig) -> None:
        self.config = config
        self._active = asyncio.Event()
        self._passive = asyncio.Event()
        if config.enabled:
            self._passive.set()
        else:
            self._active.set()
        self.changes = 0
        """How often the state flipped (for logs and tests)."""
        self.lapses = 0
        """How often this replica's record lapsed while it acted (for logs and tests)."""
        self._own: tuple[datetime, datetime] | None = None
        """Our record (lastseen, end) at the last read."""
        self._lapsed = False
        """Stepped down after a lapse: passive until our record is live again."""
        self._revived: datetime | None = None
        """After a lapse: the lastseen of our first record live again."""
        self._kopf_settings: Any = None
        """kopf's OperatorSettings (`bind`): where a yielded priority must go too."""
        self.yields = 0
        """How often this replica lowered its priority to break a tie (for tests)."""

    def bind(self, settings: Any) -> None:
        """Keep kopf's `OperatorSettings` (the startup handler's `settings`), whose
        `peering.priority` kopf's keep-alives write: `observe` lowers it on a tie."""
        self._kopf_settings = settings

    @property
    def active(self) -> bool:
        """True while this replica is the one that acts."""
        return self._active.is_set()

    def set_active(self, active: bool) -> None:
        """Record the state; logs a change."""
        if active == self.active:
            return
        self.changes += 1
        (self._active if active else self._passive).set()
        (self._passive if active else self._active).clear()
        log.info("this replica (%s, priority %d) is now %s", self.config.identity,
                 self.config.priority, "active" if active else "passive")

    async def watch(self, api: client.ApiClient, poll_s: float = POLL_S) -> None:
        """Read the ClusterKopfPeering every `poll_s` seconds and apply `is_active`, forever
        (cancel to stop). Does nothing when standalone."""
        if not self.config.enabled:
            return
        objects = client.CustomObjectsApi(api)
        last_error = ""
        while True:
            try:
                body = cast(dict[str, Any], await asyncio.to_thread(
                    objects.get_cluster_custom_object, PEERING_GROUP, PEERING_VERSION,
                    PEERING_PLURAL, self.config.name, _request_timeout=5))
                self.observe(body.get("status") or {}, datetime.now(UTC))
                last_error = ""
            except Exception as err:  # API, network, urllib3: keep the last answer
                text = f"{type(err).__name__}: {getattr(err, 'reason', None) or err}"
                if text != last_error:  # once per kind of failure, not every second
                    log.warning("peering %s not read (state kept): %s", self.config.name,
                                text)
                last_error = text
            await asyncio.sleep(poll_s)

    def observe(self, status: Mapping[str, Any], now: datetime) -> None:
        """Apply one read of the peering object's `status`, returned at wall time `now`.

        Passive -> active by kopf's rule (`is_active`). While active, a lapse of our own
        record since the last read (`record_lapsed`) steps down: another replica may have
        acted meanwhile (it saw us dead), and kopf does not pause us for it, so the next
        turn must be a new one (`while_active` restarts the workers; the mirror audit is
        redone). After a lapse we stay passive until our record is live again, and
        `SETTLE_S` more: our peers see us again from then on, and act no longer (kopf
        pauses them on that keep-alive; their `Leadership` within `POLL_S`)."""
        own = own_record(status, self.config.identity, now)
        before, self._own = self._own, own
        if self.active and before is not None and record_lapsed(before, own, now):
            self.lapses += 1
            self._lapsed = True
            log.warning("this replica's peering record lapsed (%s, read at %s): others may "
                        "have acted meanwhile; stepping down for a new turn",
                        "gone" if own is None else f"seen {own[0].isoformat()}",
                        now.isoformat())
            self.set_active(False)
            return
        if self._lapsed:
            if own is None or now >= own[1] - timedelta(seconds=LAPSE_MARGIN_S):
                self._revived = None
                return  # our peers still see us dead: not ours to act
            self._revived = self._revived or own[0]
            if now - self._revived < timedelta(seconds=SETTLE_S):
                return  # our peers may not have seen us yet
            self._lapsed, self._revived = False, None
        tie = tied_peer(status, self.config.identity, self.config.priority, now)
        if tie is not None:
            self._yield_to(tie)
        self.set_active(is_active(status, self.config.identity, self.config.priority, now))

    def _yield_to(self, peer: str) -> None:
        """Break a tie with `peer` (module doc, "Ties"): our priority one lower, here and in
        kopf's settings; kopf's next keep-alive publishes it."""
        lowered = self.config.priority - 1
        log.warning("replica %s has this replica's priority %d: a tie pauses both, so this "
                    "one (%s) yields, priority %d from its next keep-alive", peer,
                    self.config.priority, self.config.identity, lowered)
        self.config = replace(self.config, priority=lowered)
        if self._kopf_settings is not None:
            self._kopf_settings.peering.priority = lowered
        self.yields += 1

    async def while_active(self, what: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work()` while this replica is active: start it on becoming active, cancel
        it on becoming passive, start it again on the next turn; forever (cancel to
        stop). `work` returning or raising ends this turn only (logged, retried after 1 s)."""
        while True:
            await self._active.wait()
            task = asyncio.ensure_future(work())
            passive = asyncio.ensure_future(self._passive.wait())
            try:
                await asyncio.wait({task, passive}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                passive.cancel()
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if task.cancelled():
                log.info("%s paused: this replica is passive", what)
                continue
            if task.exception() is not None:  # a worker must never stop the operator
                log.warning("%s failed: %s", what, task.exception())
            await asyncio.sleep(1)  # a worker that ended on its own: no hot loop
