"""Many concurrent sessions on one operator, with simulated nodes (issue 16).

Everything is real except what runs inside the pods: the local control plane (with the
controller-manager's and scheduler's client QPS raised), kwok fake Nodes, PostgreSQL,
SeaweedFS and the operator (`voicetrack-operator`, its pods sent to the fake nodes with
`VOICETRACK_POD_NODE_POOL=kwok`).  This generator plays the pods' part:

- recorder: once its session's recorder pod is Running (kwok), every `chunkSeconds` it
  uploads each speaker's raw track to S3 and creates the RecordingChunk (session phases
  spread evenly over the chunk period);
- transcoder: when a transcoder Job appears it writes the chunk's outputs and `result.json`
  (kwok completes the Job's pod after `--job-ms`);
- promoter: when a promotion Job appears it reads the plan and writes the final tracks and
  `final/manifest.json` with their true sizes and sha256.

Per step (N sessions, fresh namespace, fresh operator) it prints: seconds from the first
session's create to the last one's state Recording, chunk created → done in
SQL (`temp_recordings.completed_at`) p50/p95/p99, operator CPU (cores, /proc) and peak RSS,
API writes per chunk by the operator, by the generator and in the whole cluster (API
Priority and Fairness counts each actor's requests, `voicetrack_local.accounting`), SQL
writes/s (`pg_stat_database`), sessions promoted and collected after deletion, lost chunks.
Last line: `scale: sessions N, chunks_per_s C, p95 P s, operator_cpu X, rss M MB,
writes_per_chunk W, lost L` for the largest step that held (p95 ≤ 2 s, nothing lost).

    .venv/bin/python benchmarks/scale.py --steps 50,200 --seconds 120

The generator that plays the pods is `benchmarks/scaleload/generator.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import signal
import ssl
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from voicetrack.names import meeting_id_for
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack.resources import SESSION_PLURAL
from voicetrack_local import accounting, cluster, kwok
from voicetrack_local.postgres import PostgresServer
from voicetrack_local.procs import ProcRecord
from voicetrack_local.seaweed import SeaweedServer
from voicetrack_local.stack import OperatorProcess, install_crds, prepare_namespace

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ itself: run as a script
from scaleload.generator import Api, Generator, Step, log

OPERATOR = "voicetrack-operator"
LOAD = "voicetrack-load"
def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def proc_cpu_s(pid: int) -> float:
    """utime + stime of `pid` in seconds (proc(5) fields 14, 15)."""
    rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stack_pids(state: Path) -> dict[str, int]:
    """The cluster's processes (kube-apiserver, etcd, kube-controller-manager, kube-scheduler,
    kwok) by name, from the records `up` wrote."""
    out = {}
    for rec_file in (state / "pids").glob("*.json"):
        rec = ProcRecord.load(rec_file)
        if rec and rec.alive() and rec.name != "node-agent":
            out[rec.name] = rec.pid
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


@dataclass
class Figures:
    sessions: int
    chunks: int
    chunks_per_s: float
    p50: float
    p95: float
    p99: float
    cpu: float
    rss: float
    op_writes: float
    op_reads: float
    load_writes: float
    all_writes: float
    sql_writes_s: float
    promoted: int
    collected: int
    lost: int
    load: str
    started_s: float = float("nan")
    """Seconds from the first session's create to the last one's state Recording."""
    started: int = 0
    """Sessions Recording by then."""
    components: dict[str, float] = field(default_factory=dict)
    """Cores used by each process of the stack during the measured window."""

    @property
    def held(self) -> bool:
        return self.p95 <= 2.0 and self.lost == 0 and self.promoted == self.sessions


def sql_done(dsn: str, namespace_uids: dict[str, str]) -> dict[tuple[str, int], float]:
    """(session, index) -> completed_at (epoch s) of every chunk whose rows are all done."""
    by_uid = {u: n for n, u in namespace_uids.items()}
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT session_uid, chunk_index, max(completed_at), "
            "bool_and(transcode_status = 'done') FROM temp_recordings "
            "WHERE session_uid = ANY(%s) GROUP BY session_uid, chunk_index",
            (list(by_uid),)).fetchall()
    return {(by_uid[u], int(i)): c.timestamp() for u, i, c, ok in rows if ok and c}


def sql_writes(dsn: str) -> float:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT tup_inserted + tup_updated + tup_deleted FROM "
                           "pg_stat_database WHERE datname = current_database()").fetchone()
    return float(row[0]) if row else 0.0


async def run_step(n: int, args: argparse.Namespace, env: dict[str, Any]) -> Figures:
    ns = f"scale-{n}-{secrets.token_hex(2)}"
    prepare_namespace(env["admin"], ns, env["s3"])
    step = Step(sessions=n, namespace=ns)
    op = OperatorProcess(env["op_kubeconfig"], env["s3"], env["db_url"],
                         env["out"] / f"operator-{n}.log",
                         extra_env={"VOICETRACK_POD_NODE_POOL": kwok.NODE_POOL_VALUE,
                                    "VOICETRACK_NAMESPACES": ns, **env["op_env"]})
    op.start()
    assert op.process is not None
    pid = op.process.pid
    gen = Generator(env["api"], env["store"], step, args.chunk_seconds, env["pool"])
    watcher = asyncio.create_task(env["api"].watch(
        f"/apis/batch/v1/namespaces/{ns}/jobs?labelSelector=app.kubernetes.io%2Fmanaged-by"
        "%3Dvoicetrack", gen.on_job))
    try:
        t_create = time.monotonic()
        await gen.create_sessions()
        running = await gen.wait_recorders(max(60.0, n / 5))
        log(f"step {n}: {len(step.uids)} sessions created, {len(running)} recorders Running "
            f"in {time.monotonic() - t_create:.1f} s")
        recording = await gen.wait_recording(max(60.0, n / 5))
        started_s = time.monotonic() - t_create
        log(f"step {n}: {recording} sessions Recording {started_s:.1f} s after the first "
            "create")
        recorders = [asyncio.create_task(gen.record(s, random.uniform(0, args.chunk_seconds)))
                     for s in sorted(running)]
        await asyncio.sleep(args.chunk_seconds)  # warm-up: every session's first chunk
        others = {**env["pids"], "generator": os.getpid()}
        others_cpu0 = {n: proc_cpu_s(p) for n, p in others.items()}
        cpu0, wall0 = proc_cpu_s(pid), time.monotonic()
        api0 = accounting.api_writes(await metrics_text(env["api"]))
        sql0 = sql_writes(env["dsn"])
        chunks0 = len(step.created)
        rss = 0.0
        while time.monotonic() - wall0 < args.seconds:
            await asyncio.sleep(2)
            rss = max(rss, proc_rss_mb(pid))
        wall = time.monotonic() - wall0
        cpu = (proc_cpu_s(pid) - cpu0) / wall
        components = {n: (proc_cpu_s(p) - others_cpu0[n]) / wall for n, p in others.items()}
        api1 = accounting.api_writes(await metrics_text(env["api"]))
        sql_rate = (sql_writes(env["dsn"]) - sql0) / wall
        chunks = len(step.created) - chunks0
        load = load_avg()
        step.stop_chunks.set()
        await asyncio.gather(*recorders, return_exceptions=True)
        # every created chunk done in SQL, or lost
        deadline = time.monotonic() + 120
        done: dict[tuple[str, int], float] = {}
        while time.monotonic() < deadline:
            done = await asyncio.to_thread(sql_done, env["dsn"], step.uids)
            if all(k in done for k in step.created):
                break
            await asyncio.sleep(2)
        lat = [done[k] - t for k, t in step.created.items() if k in done]
        lost = sum(1 for k in step.created if k not in done)
        promoted, collected = await finish(gen, step, env, op)
        d = {k: api1.get(k, 0.0) - api0.get(k, 0.0) for k in api1}
        per = max(chunks, 1)
        return Figures(
            sessions=n, chunks=len(step.created), chunks_per_s=chunks / wall,
            p50=pct(lat, 50), p95=pct(lat, 95), p99=pct(lat, 99), cpu=cpu, rss=rss,
            op_writes=d.get(f"{OPERATOR}-writes", 0) / per,
            op_reads=d.get(f"{OPERATOR}-reads", 0) / per,
            load_writes=d.get(f"{LOAD}-writes", 0) / per, all_writes=d["total"] / per,
            sql_writes_s=sql_rate, promoted=promoted, collected=collected,
            lost=lost + step.errors, load=load, started_s=started_s, started=recording,
            components=components)
    finally:
        watcher.cancel()
        op.stop()


async def finish(gen: Generator, step: Step, env: dict[str, Any], op: OperatorProcess
                 ) -> tuple[int, int]:
    """Delete every session; wait until all are gone. Returns (promoted, collected):
    sessions whose meeting is `completed` with recordings rows, and those whose chunk
    folders and temp rows are gone too."""
    sem = asyncio.Semaphore(16)

    async def delete(name: str) -> None:
        async with sem:
            await gen.api.request("DELETE", f"{gen.ns_path(SESSION_PLURAL)}/{name}",
                                  ok=(200, 202, 404))

    await asyncio.gather(*(delete(s) for s in step.uids))
    deadline = time.monotonic() + 420 + step.sessions * 0.5  # transcode timeout 120 s + promotion
    left = len(step.uids)
    while time.monotonic() < deadline:
        _, data = await gen.api.request("GET", gen.ns_path(SESSION_PLURAL))
        left = len(data["items"])
        if not left:
            break
        await asyncio.sleep(2)
    if left:
        log(f"{left} session(s) not finalized in time; operator log {op.log_path}")
    meetings = {meeting_id_for(u, None): s for s, u in step.uids.items()}
    with psycopg.connect(env["dsn"]) as conn:
        done = {m for (m,) in conn.execute(
            "SELECT m.id FROM meetings m WHERE m.id = ANY(%s) AND m.status = 'completed' "
            "AND EXISTS (SELECT 1 FROM recordings r WHERE r.meeting_id = m.id)",
            (list(meetings),)).fetchall()}
        temp = {m for (m,) in conn.execute(
            "SELECT DISTINCT meeting_id FROM temp_recordings WHERE meeting_id = ANY(%s)",
            (list(meetings),)).fetchall()}
    chunk_keys = await gen.s3(env["store"].list_keys, "recordings/")
    with_chunks = {k.split("/")[2] for k in chunk_keys if "/chunks/" in k or "/outputs/" in k}
    collected = sum(1 for m in done if m not in temp and m not in with_chunks)
    return len(done), collected


async def metrics_text(api: Api) -> str:
    async with api.http.get(api.server + "/metrics") as r:
        return await r.text()


def print_step(f: Figures) -> None:
    print(f"step {f.sessions} sessions: {f.started} Recording {f.started_s:.1f} s after the "
          f"first create; {f.chunks} chunks, {f.chunks_per_s:.1f} chunks/s; "
          f"created->done p50 {f.p50:.2f} s p95 {f.p95:.2f} s p99 {f.p99:.2f} s; "
          f"operator cpu {f.cpu:.2f} cores ({1000 * f.cpu / max(f.chunks_per_s, 1e-9):.0f} ms "
          f"per chunk), rss {f.rss:.0f} MB; API writes/chunk: operator "
          f"{f.op_writes:.2f} (reads {f.op_reads:.2f}), generator {f.load_writes:.2f}, "
          f"cluster {f.all_writes:.1f}; SQL writes {f.sql_writes_s:.0f}/s; promoted "
          f"{f.promoted}/{f.sessions}, collected {f.collected}; lost {f.lost}; "
          f"load {f.load}", flush=True)
    print("  cores of the stack: " + ", ".join(f"{n} {c:.2f}" for n, c in
                                               sorted(f.components.items())), flush=True)


async def amain(args: argparse.Namespace) -> None:
    base = Path(args.out or tempfile.mkdtemp(prefix="vt-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    state = base / "cluster"
    c = cluster.up(state, log=log, fake_nodes=args.fake_nodes,
                   limits=cluster.ClientLimits(args.kube_api_qps, args.kube_api_burst,
                                               args.job_syncs),
                   kwok_timings=kwok.KwokTimings(job_pod_ms=args.job_ms))
    weed = SeaweedServer(base / "s3")
    pg = PostgresServer(durable=True)
    pool = ThreadPoolExecutor(32)
    api: Api | None = None
    try:
        s3: S3Settings = weed.start()
        pg.start()
        db_url = pg.create_database("vt_scale")
        install_crds(c.kubeconfig)
        accounting.apply_accounting(c.kubeconfig, [OPERATOR, LOAD])
        op_kc = accounting.issue_identity(state, OPERATOR, c.server)
        accounting.issue_identity(state, LOAD, c.server)
        ctx = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
        ctx.load_cert_chain(str(state / "pki" / f"{LOAD}.crt"), str(state / "pki" / f"{LOAD}.key"))
        api = Api(c.server, ctx)
        await api.start()
        store = ObjectStore(s3)
        store.ensure_bucket()
        op_env = dict(kv.split("=", 1) for kv in args.operator_env)
        env = {"admin": c.kubeconfig, "op_kubeconfig": op_kc, "s3": s3, "db_url": db_url,
               "dsn": db_url.replace("postgresql+psycopg://", "postgresql://"),
               "api": api, "store": store, "pool": pool, "out": base, "op_env": op_env,
               "pids": {**stack_pids(state), "seaweedfs": weed.process.pid if weed.process
                        else os.getpid()}}
        log(f"stack up (state {base}); load {load_avg()}")
        best: Figures | None = None
        for n in args.steps:
            f = await run_step(n, args, env)
            print_step(f)
            if f.held:
                best = f
            elif args.stop_on_failure:
                break
        if best is None:
            print("no step held (p95 <= 2 s, nothing lost, every session promoted): the "
                  "last line shows the last step", flush=True)
        f = best or f
        print(f"scale: sessions {f.sessions}, chunks_per_s {f.chunks_per_s:.1f}, "
              f"p95 {f.p95:.2f} s, operator_cpu {f.cpu:.2f}, rss {f.rss:.0f} MB, "
              f"writes_per_chunk {f.op_writes:.2f}, lost {f.lost}", flush=True)
    finally:
        if api is not None:
            await api.http.close()
        pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            pg.stop()
        with contextlib.suppress(Exception):
            weed.stop()
        if not args.keep_cluster:
            c.stop(force=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", default="50,200,1000",
                   type=lambda v: [int(x) for x in v.split(",")])
    p.add_argument("--seconds", type=float, default=300, help="measured seconds per step")
    p.add_argument("--chunk-seconds", type=int, default=10)
    p.add_argument("--job-ms", type=int, default=1000, help="simulated transcode time")
    p.add_argument("--fake-nodes", type=int, default=4)
    p.add_argument("--kube-api-qps", type=float, default=400)
    p.add_argument("--kube-api-burst", type=int, default=800)
    p.add_argument("--job-syncs", type=int, default=50,
                   help="the controller-manager's --concurrent-job-syncs")
    p.add_argument("--operator-env", action="append", default=[],
                   help="NAME=VALUE for the operator (repeatable)")
    p.add_argument("--out", default=None, help="directory for state and logs")
    p.add_argument("--keep-cluster", action="store_true")
    p.add_argument("--stop-on-failure", action="store_true")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on `kill` too
    log(f"scale: steps {args.steps}, {args.seconds:.0f} s each, load {load_avg()}")
    asyncio.run(amain(args))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
