"""Operator start-up and clean-up: one typed context in memo; kopf's settings; the
database at its Alembic head; heartbeat and orphan collection in the background, only
while this replica is the active one (`voicetrack_operator.leadership`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from prometheus_client import start_http_server

from voicetrack.db import migrate
from voicetrack.db.service import RecordingService
from voicetrack.errors import TemporaryFailure
from voicetrack.kubeclient import load_api_client
from voicetrack.resources import FINALIZER, GROUP
from voicetrack_operator.adapters.kube import KubeAdapter
from voicetrack_operator.context import Context, OperatorSettings, SessionIndex
from voicetrack_operator.leadership import Leadership, PeeringConfig
from voicetrack_operator.services.janitor import SERVICE_NAME, JanitorService

log = logging.getLogger(__name__)
HEARTBEAT_S = 15.0
ORPHAN_SWEEP_S = 3600.0
WORKER_LIMIT = 2000
"""kopf's per-resource limit on concurrent per-object workers. Each chunk and each Job keeps
a worker while its events come and for `WORKER_IDLE_S` after: the old limit of 64 with
kopf's 5 s idle time let at most ~13 new objects per second through (issue 16)."""
WORKER_IDLE_S = 1.0
STARTUP_RETRY_S = 5.0
"""Seconds between start-up attempts when the database or S3 does not answer (kopf's
default is 60 s: the operator stayed down a minute after PostgreSQL came back). Nothing
waits on it meanwhile but the operator: recorders keep writing chunks, which are picked up
once it runs."""
BLOCKING_THREADS = 32
"""The event loop's default executor (S3 calls, `asyncio.to_thread`); Python's default is
min(32, cores + 4)."""


async def _every(seconds: float, what: str, fn: Any) -> None:
    while True:
        try:
            await fn()
        except Exception as err:  # housekeeping must never stop the operator
            log.warning("%s failed: %s", what, err)
        await asyncio.sleep(seconds)


@kopf.on.startup(id="context", backoff=STARTUP_RETRY_S)
async def on_startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any
                     ) -> None:
    cfg = OperatorSettings.from_env()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.queueing.worker_limit = WORKER_LIMIT
    settings.queueing.idle_timeout = WORKER_IDLE_S
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(BLOCKING_THREADS, thread_name_prefix="blocking"))
    settings.posting.level = logging.INFO
    # one ClusterKopfPeering whatever namespaces are served (kopf's PeeringSettings allows
    # cluster-wide peering for a namespaced operator)
    settings.peering.clusterwide = True
    try:
        applied = await asyncio.to_thread(migrate.upgrade_head, cfg.database_url)
    except Exception as err:  # kopf retries the start-up in STARTUP_RETRY_S
        raise kopf.TemporaryError(f"database not ready: {err}",
                                  delay=STARTUP_RETRY_S) from err
    for revision in applied:
        log.info("database migrated to revision %s", revision)
    ctx = Context(settings=cfg, kube=KubeAdapter(load_api_client(cfg.kubeconfig)),
                  db=RecordingService.from_url(cfg.database_url))
    if "session_index" in kwargs:  # kopf's live indexes (empty now, filled before handlers)
        ctx.sessions = SessionIndex(kwargs["session_index"], kwargs.get("recorder_index"))
    try:
        await ctx.store(cfg.s3.bucket).ensure_bucket()
    except Exception as err:  # this attempt's clients go; the next one makes its own
        await ctx.db.close()
        ctx.kube.api.close()
        raise kopf.TemporaryError(f"S3 not ready: {err}", delay=STARTUP_RETRY_S) from err
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port, addr=cfg.listen_address,
                          registry=ctx.metrics.registry)
    janitor = JanitorService(ctx)
    memo.ctx = ctx
    lead = leadership(memo)
    lead.bind(settings)  # a tie lowers the priority kopf's keep-alives write
    memo.tasks = [
        asyncio.create_task(lead.while_active(
            "heartbeat", lambda: _every(HEARTBEAT_S, "heartbeat", janitor.beat))),
        asyncio.create_task(lead.while_active("orphan sweep", lambda: _every(
            ORPHAN_SWEEP_S, "orphan sweep", janitor.collect_orphans))),
        asyncio.create_task(lead.while_active("mirror audit", lambda: _audit_anew(ctx))),
    ]
    if lead.config.enabled:  # standalone: always active, nothing to watch
        memo.tasks.append(asyncio.create_task(lead.watch(ctx.kube.api)))


async def _audit_anew(ctx: Context) -> None:
    """On each turn to active (including the one after this replica's peering record
    lapsed: `Leadership.observe`): forget which sessions' SQL mirrors were audited, so the
    observe timer compares each once more (`SessionService.resync`), and the last turn's
    throttle clocks (`Context.turned_active`); then wait out the turn."""
    ctx.turned_active()
    await asyncio.Event().wait()


def leadership(memo: kopf.Memo) -> Leadership:
    """The replica's `Leadership` (main.py puts it in memo); standalone when absent (the
    handlers called directly, as in the unit tests)."""
    if getattr(memo, "leadership", None) is None:
        memo.leadership = Leadership(PeeringConfig("", "standalone", 0))
    lead: Leadership = memo.leadership
    return lead


@kopf.on.cleanup(id="context")
async def on_cleanup(memo: kopf.Memo, **_: Any) -> None:
    for task in getattr(memo, "tasks", []):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    ctx: Context | None = getattr(memo, "ctx", None)
    if ctx is not None:
        if leadership(memo).active:  # a passive replica stopping says nothing of the operator
            await JanitorService(ctx).beat("stopped")
        await ctx.db.close()
        ctx.kube.api.close()
        ctx.kube.executor.shutdown(wait=False, cancel_futures=True)


@kopf.on.probe(id="database")
async def on_probe_database(memo: kopf.Memo, **_: Any) -> str:
    if leadership(memo).active:
        ok = await JanitorService(memo.ctx).beat()
    else:  # a passive replica reads the row: the database answers, no heartbeat written
        try:
            await memo.ctx.db.read_heartbeat(SERVICE_NAME)
            ok = True
        except TemporaryFailure:
            ok = False
    return "ok" if ok else "unavailable"
