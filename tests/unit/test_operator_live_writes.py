"""The observe timer's API writes for one recording session with live Jobs on (issue 16:
the operator's writes per chunk ≤ 4).

Each chunk costs three writes of the chunk path (its `queued` status, its transcoder Job,
its `done` status: `services.chunks`), so the session's own writes (status patches and
live Job creates) may be one per chunk period. Before, a live Job's create and its
`status.live` patch came on top of the progress patch: ~1.6 per chunk at 10 s chunks and
a 30 s interval (benchmarks/scale.py: 4.53 per chunk in all). The timer is run here on a
fake clock over a session recording 10 s chunks, each transcoded 2 s after it appears,
with every live Job completing 4 s after its create."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from voicetrack.errors import NotFoundError
from voicetrack.names import meeting_id_for
from voicetrack.objectstore import S3Settings
from voicetrack_operator.builders import PodSettings
from voicetrack_operator.context import Context, OperatorSettings
from voicetrack_operator.jobs import LIVE_JOB_TTL_S
from voicetrack_operator.services import live, sessions
from voicetrack_operator.services.sessions import SessionService
from voicetrack_operator.services.sessionview import Observed

from .test_operator_observe_indexed import (
    RUNNING_POD,
    UID,
    FakeDb,
    _fresh_grant,  # noqa: F401  (autouse: the grant Secret is not read)
    chunk,
    session_view,
)

pytestmark = pytest.mark.unit

BASE = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)
CHUNK_S, TICK_S, TRANSCODE_S, LIVE_JOB_S = 10, 2, 2, 4


class Clock:
    """The fake time of the run: `t` seconds after BASE (monotonic and wall)."""

    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return 1000.0 + self.t

    def now(self) -> datetime:
        return BASE + timedelta(seconds=self.t)


class LiveKube:
    """The API as the live path uses it: live Job creates (completing `job_s` after,
    gone `LIVE_JOB_TTL_S` after that; the API server's clock `skew_s` behind the
    operator's) and deletes, counted."""

    def __init__(self, clock: Clock, job_s: float = LIVE_JOB_S, skew_s: float = 0,
                 fail_until: float = 0) -> None:
        self.clock, self.job_s, self.skew_s = clock, job_s, skew_s
        self.fail_until = fail_until  # Jobs created before this (s) fail
        self.launched_at: list[float] = []
        self.jobs: dict[str, tuple[dict[str, Any], float]] = {}
        self.creates = 0
        self.deletes = 0
        self.names: list[str] = []

    async def ensure(self, manifest: dict[str, Any]) -> bool:
        self.creates += 1
        self.names.append(manifest["metadata"]["name"])
        self.launched_at.append(self.clock.t)
        manifest["metadata"]["creationTimestamp"] = stamp(
            self.clock.now() - timedelta(seconds=self.skew_s))
        self.jobs[manifest["metadata"]["name"]] = (manifest, self.clock.t)
        return True

    async def delete_job(self, ns: str, name: str) -> bool:
        self.deletes += 1
        return self.jobs.pop(name, None) is not None

    def seen(self) -> list[dict[str, Any]]:
        """The live Jobs as the watch shows them now."""
        out = []
        for manifest, created in self.jobs.values():
            if self.clock.t >= created + self.job_s + LIVE_JOB_TTL_S:
                continue  # removed by the TTL controller
            job = {**manifest, "status": {"active": 1}}
            if self.clock.t >= created + self.job_s:
                done = BASE + timedelta(seconds=created + self.job_s - self.skew_s)
                job["status"] = {"conditions": [{"type": "Complete", "status": "True"}],
                                 "completionTime": stamp(done)}
                if created < self.fail_until:
                    job["status"] = {"failed": 1, "conditions": [
                        {"type": "Failed", "status": "True",
                         "lastTransitionTime": stamp(done)}]}
            out.append(job)
        return out


class NoManifest:
    """S3 without live/manifest.json (the generator's Jobs write none): durationMs 0."""

    def __init__(self) -> None:
        self.reads = 0

    async def get_json(self, key: str) -> Any:
        self.reads += 1
        raise NotFoundError(key)


def stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def apply(status: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            status.pop(key, None)
        else:
            status[key] = value


def live_ctx(monkeypatch: pytest.MonkeyPatch, kube: LiveKube, store: NoManifest,
             interval_s: float = 30) -> Context:
    """The operator's context over `kube` and `store`, live Jobs every `interval_s`."""
    settings = OperatorSettings(database_url="sqlite+aiosqlite://",
                                s3=S3Settings(endpoint="http://127.0.0.1:1", access_key="a",
                                              secret_key="b", bucket="voicetrack"),
                                pods=PodSettings(), live_interval_s=interval_s)
    ctx = Context(settings=settings, kube=kube,  # type: ignore[arg-type]
                  db=FakeDb({meeting_id_for(UID, None)}))  # type: ignore[arg-type]
    ctx.audited.add(UID)
    monkeypatch.setattr(ctx, "store", lambda bucket: store)
    return ctx


async def run(monkeypatch: pytest.MonkeyPatch, chunks: int, interval_s: float = 30,
              chunk_s: int = CHUNK_S, job_s: float = LIVE_JOB_S, skew_s: float = 0,
              lags: list[float] | None = None, lives: list[int] | None = None,
              tick_s: float = TICK_S, fail_until: float = 0, quiet_s: float = 60,
              ) -> tuple[int, LiveKube, NoManifest, dict[str, Any]]:
    """Tick the observe timer every `tick_s` while `chunks` chunks of `chunk_s` are
    recorded, then for `quiet_s` of quiet (two chunk periods when longer); live Jobs take
    `job_s` (those created before `fail_until` fail), the API server's clock is `skew_s`
    behind. Returns
    (status patches, the kube, the store, the final status); `lags` gets, per tick while
    recording, how long (s) the oldest transcoded chunk the status does not count yet has
    been done (0: current), and `lives` the chunks `status.live` covers (0: not set)."""
    clock = Clock()
    monkeypatch.setattr(sessions, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(live, "datetime", SimpleNamespace(now=lambda tz=None: clock.now(),
                                                          fromisoformat=datetime.fromisoformat))
    kube, store = LiveKube(clock, job_s, skew_s, fail_until), NoManifest()
    ctx = live_ctx(monkeypatch, kube, store, interval_s)
    service, s = SessionService(ctx), session_view()
    s.status["state"] = "Recording"
    s.spec.chunk_seconds = chunk_s
    patches = 0
    end = chunks * chunk_s
    while clock.t < end + max(quiet_s, 2 * chunk_s):
        made = [i for i in range(chunks) if clock.t >= i * chunk_s + 1]
        objs = []
        for i in made:
            done = clock.t >= i * chunk_s + 1 + TRANSCODE_S
            # a chunk transcoding is young: the safety net leaves it to its Job
            objs.append(chunk(i, "done", 30) if done else chunk(i, "queued", 0))
        patch = await service.observe_session(s, Observed(pod=RUNNING_POD, chunks=objs,
                                                          live=kube.seen()))
        if patch:
            patches += 1
            apply(s.status, patch)
        if lags is not None and clock.t < end:
            counted = s.status["chunks"]["done"]
            lags.append(max(0, clock.t - (counted * chunk_s + 1 + TRANSCODE_S))
                        if counted < sum(1 for o in objs if o["status"]["transcodeStatus"]
                                         == "done") else 0)
        if lives is not None and clock.t < end:
            lives.append(int((s.status.get("live") or {}).get("chunks") or 0))
        clock.t += tick_s
    return patches, kube, store, s.status


async def test_session_writes_with_live_jobs_are_one_per_chunk_period(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """30 chunks (5 minutes): the session's status patches and live Job creates together
    are at most one per chunk period (plus the first tick's), live Jobs still run about
    every interval, and at the end status.live and the counts are current."""
    n = 30
    patches, kube, store, status = await run(monkeypatch, n)
    writes = patches + kube.creates
    assert writes <= n + 6 + 1, (patches, kube.creates)  # + the quiet minute's 6 periods
    assert kube.creates >= n * CHUNK_S // 40, kube.creates  # one per ≤ 40 s (30 s interval)
    assert kube.deletes == 0
    assert status["chunks"]["total"] == n
    assert status["live"]["chunks"] == n  # eventually current
    assert store.reads <= kube.creates  # the manifest is read once per reported Job


async def test_a_short_interval_still_leaves_room_for_progress(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An interval shorter than the chunk period: live Jobs take at most every other
    chunk period, so the progress patch is never starved, and writes stay one per
    period."""
    n = 20
    patches, kube, _, status = await run(monkeypatch, n, interval_s=5)
    assert patches + kube.creates <= n + 6 + 1, (patches, kube.creates)
    assert patches >= n // 2 and kube.creates >= n // 3, (patches, kube.creates)
    assert status["chunks"]["total"] == n and status["live"]["chunks"] == n


async def test_a_withdrawal_of_status_live_is_not_held_by_the_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A member opted out with audio in the chunks (consent): `status.live` is removed at
    the next tick even when the period's write is spent, and `live/` emptied."""
    clock = Clock()
    monkeypatch.setattr(sessions, "time", SimpleNamespace(monotonic=clock.monotonic))
    emptied: list[str] = []

    class Store(NoManifest):
        async def delete_prefix(self, prefix: str) -> int:
            emptied.append(prefix)
            return 0

    ctx = live_ctx(monkeypatch, LiveKube(clock), Store(), 30)
    service, s = SessionService(ctx), session_view()
    objs = [chunk(0, "done", 30)]
    s.status.update(await service.observe_session(s, Observed(pod=RUNNING_POD, chunks=objs)))
    s.status["live"] = {"chunks": 1, "durationMs": 10_000, "updatedAt": stamp(BASE)}
    clock.t += TICK_S  # the period's write was just spent
    s.spec.opt_out_user_ids = [objs[0]["spec"]["tracks"][0]["userId"]]
    patch = await service.observe_session(s, Observed(pod=RUNNING_POD, chunks=objs))
    assert patch == {"live": None} and emptied


async def test_long_chunks_report_a_live_job_before_its_ttl(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 150 s: the next free period comes after the finished live Job's TTL
    (`LIVE_JOB_TTL_S`) removed it from the watch; its report does not wait that long, so
    status.live is current and no Job is run twice for the same chunks."""
    n = 8
    _, kube, _, status = await run(monkeypatch, n, chunk_s=150)
    assert status["live"]["chunks"] == n
    assert len(set(kube.names)) == len(kube.names), kube.names


async def test_long_chunks_keep_progress_current_and_the_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 150 s (interval two periods, 300 s): the finished live Job leaves the
    watch at its TTL long before the next launch is due; the interval still holds (it
    counts from the operator's launch, not the Job), so the progress patch gets every
    other period: the chunk counts are never more than two chunk periods behind. Before,
    a Job gone made the next one due at once, every free period went to a launch, and the
    counts stayed 0 while recording."""
    n, chunk_s = 8, 150
    lags: list[float] = []
    _, kube, _, status = await run(monkeypatch, n, chunk_s=chunk_s, lags=lags)
    assert max(lags) <= 2 * chunk_s, lags
    gaps = [b - a for a, b in zip(kube.launched_at, kube.launched_at[1:], strict=False)]
    assert gaps and min(gaps) >= 2 * chunk_s, kube.launched_at
    assert status["chunks"]["done"] == n and status["live"]["chunks"] == n


async def test_slow_live_jobs_are_reported_while_recording(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Live Jobs taking 25 s (10 s chunks, 30 s interval): a completed Job's report
    waiting for a free period while the next Job is launched is still made at the next
    (the newest completed Job is reported, not only the current one), so `status.live` is
    set while the session records; the counts stay within two chunk periods. Before, the
    next Job became the current one and no Job was ever reported while recording."""
    n, lags, lives = 30, list[float](), list[int]()
    patches, kube, _, status = await run(monkeypatch, n, job_s=25, lags=lags, lives=lives)
    assert max(lags) <= 2 * CHUNK_S, lags
    assert len(set(lives) - {0}) >= n * CHUNK_S // 40 - 1, lives  # set, and growing
    assert status["live"]["chunks"] == n
    assert patches + kube.creates <= n + 6 + 1, (patches, kube.creates)


async def test_the_interval_ignores_the_api_servers_clock(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The API server's clock 25 s behind the operator's: the interval counts from the
    operator's own launch (monotonic), so Jobs do not run every free period and progress
    is not held back."""
    n = 30
    lags: list[float] = []
    _, kube, _, _ = await run(monkeypatch, n, skew_s=25, lags=lags)
    assert max(lags) <= 2 * CHUNK_S, lags
    assert kube.creates <= n * CHUNK_S // 30 + 1, kube.launched_at


async def test_a_pending_report_goes_before_the_next_launch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review rev-live2 fault 2: 45 s chunks and live Jobs of 55 s. A completed Job's
    report waited while the next Job's launch took the free period, passed
    `REPORT_WAIT_MAX_S` and went out overdue, unbudgeted: three writes per two chunk
    periods (and, with the next Job's manifest already written, `status.live` paired one
    Job's chunks with the next one's duration: fault 1). The report now has the period
    before a launch. Failed before."""
    n = 12
    patches, kube, _, status = await run(monkeypatch, n, chunk_s=45, job_s=55)
    assert patches + kube.creates <= n + 2 + 1, (patches, kube.creates)  # + 2 quiet periods
    # the last Job (90 s after the one before, then 55 s) has not completed by the end
    assert status["live"]["chunks"] >= n - 1 and status["chunks"]["done"] == n


async def test_a_timer_as_coarse_as_two_periods_leaves_progress_its_share(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review rev-live2 fault 3: the observe timer ticking every 10 s over 5 s chunks
    (a loaded operator, or `VOICETRACK_OBSERVE_INTERVAL_S`) with live Jobs done within a
    tick: every tick had a free period and a due launch, so every write was a create and
    the chunk counts stayed 0 while recording. A report now takes every other one, and
    the progress patch rides on it. Failed before."""
    lags: list[float] = []
    await run(monkeypatch, 40, interval_s=5, chunk_s=5, job_s=9, tick_s=10, lags=lags)
    assert max(lags) <= 2 * 5 + 2 * 10, max(lags)


async def test_a_live_job_that_keeps_failing_is_not_relaunched_every_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Live Jobs that cannot succeed (e.g. a FLAC-only session's chunks transcoded before
    pieces were made for it, review rev-flac fault 1) are launched `LIVE_TRIES` times at
    the interval for the same chunks, then with a doubling wait: a session kept Stopped
    for an hour costs a few Jobs, not one every interval. Before, 6 chunks and an hour of
    quiet took a Job every 30 s: 113 creates for the 6 chunks."""
    _, kube, _, status = await run(monkeypatch, chunks=6, fail_until=1e9, quiet_s=3600)
    assert "live" not in status
    ready_counts = [int(n.rsplit("-", 1)[1]) for n in kube.names]
    assert 3 <= ready_counts.count(6) <= 10, kube.names  # 3 + 30 s x 2, 4, ... 60 min
    assert live.LIVE_TRIES == 3


async def test_live_jobs_failing_through_an_outage_resume_after_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 away for 100 s at a quiet session (review rev-tries fault 2): the Jobs of the
    outage fail, the later ones wait longer, and the audio so far is whole again within
    the backoff's wait once S3 is back (a hard stop after three failures froze it)."""
    _, kube, _, status = await run(monkeypatch, chunks=6, fail_until=6 * CHUNK_S + 100,
                                   quiet_s=1800)
    assert status["live"]["chunks"] == 6, kube.names


async def test_the_audio_so_far_comes_back_after_every_withdrawal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept, quiet session whose member opts out and back in four times (review
    rev-tries fault 1): each resumption assembles from chunk 0 again and `status.live` is
    back every time (the tries count failures since a success only, and a withdrawal
    forgets them)."""
    clock = Clock()
    monkeypatch.setattr(sessions, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(live, "datetime", SimpleNamespace(now=lambda tz=None: clock.now(),
                                                          fromisoformat=datetime.fromisoformat))

    class Store(NoManifest):
        async def delete_prefix(self, prefix: str) -> int:
            return 0

    kube = LiveKube(clock)
    ctx = live_ctx(monkeypatch, kube, Store(), 30)
    service, s = SessionService(ctx), session_view()
    s.status["state"] = "Stopped"
    s.spec.limits.delete_when_stopped = False  # kept Stopped
    objs = [chunk(i, "done", 300) for i in range(6)]
    member = objs[0]["spec"]["tracks"][0]["userId"]
    done_pod = {**RUNNING_POD, "status": {**RUNNING_POD["status"], "phase": "Succeeded"}}

    async def tick_for(seconds: float) -> None:
        end = clock.t + seconds
        while clock.t < end:
            patch = await service.observe_session(s, Observed(pod=done_pod, chunks=objs,
                                                              live=kube.seen()))
            apply(s.status, patch)
            clock.t += TICK_S

    for cycle in range(4):
        s.spec.opt_out_user_ids = []
        await tick_for(240)
        assert (s.status.get("live") or {}).get("chunks") == 6, (cycle, kube.names)
        s.spec.opt_out_user_ids = [member]
        await tick_for(10)
        assert "live" not in s.status, cycle
