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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
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

import aiohttp
import psycopg

from voicetrack.chunkspec import ChunkOutput, ChunkSpec, ChunkTrack
from voicetrack.layout import MIX_TRACK, MeetingLayout
from voicetrack.manifests import FinalManifest, FinalTrack, PromotionPlan, TranscodeResult
from voicetrack.names import chunk_name, meeting_id_for, owner_reference
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack.resources import (
    API_VERSION,
    CHUNK_KIND,
    CHUNK_PLURAL,
    GROUP,
    LABEL_CHUNK_INDEX,
    LABEL_COMPONENT,
    LABEL_SESSION,
    MANAGED_BY,
    SESSION_PLURAL,
    VERSION,
)
from voicetrack_local import accounting, cluster, kwok
from voicetrack_local.postgres import PostgresServer
from voicetrack_local.procs import ProcRecord
from voicetrack_local.seaweed import SeaweedServer
from voicetrack_local.stack import OperatorProcess, install_crds, prepare_namespace

OPERATOR = "voicetrack-operator"
LOAD = "voicetrack-load"
SPEAKERS = ("111111111111111111", "222222222222222222")
RAW_BYTES = 2048
"""Size of each simulated raw track (bytes): S3 traffic is not what is measured here."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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
class Api:
    """The generator's API client (aiohttp, its own identity `voicetrack-load`)."""

    server: str
    ssl_ctx: ssl.SSLContext
    http: aiohttp.ClientSession = field(init=False)

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl_ctx, limit=64),
            timeout=aiohttp.ClientTimeout(total=60))

    async def request(self, method: str, path: str, body: Any = None,
                      ok: tuple[int, ...] = (200, 201, 202)) -> tuple[int, Any]:
        async with self.http.request(method, self.server + path, json=body) as r:
            data = await r.json(content_type=None)
            if r.status not in ok:
                raise RuntimeError(f"{method} {path}: {r.status} {str(data)[:300]}")
            return r.status, data

    async def watch(self, path: str, handler: Any) -> None:
        """Call `await handler(event)` for every event of a list-watch on `path`
        (a query string with a label selector), re-listing when the watch ends."""
        rv = ""
        while True:
            try:
                if not rv:
                    _, data = await self.request("GET", path)
                    rv = data["metadata"]["resourceVersion"]
                    for item in data["items"]:
                        await handler({"type": "ADDED", "object": item})
                url = f"{self.server}{path}&watch=1&resourceVersion={rv}&timeoutSeconds=300"
                async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=None)) as r:
                    async for line in r.content:
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            rv = ""
                            break
                        rv = event["object"]["metadata"]["resourceVersion"]
                        await handler(event)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log(f"watch {path.split('?')[0]}: {err!r}")
                await asyncio.sleep(1)
                rv = ""


@dataclass
class Step:
    """One step's bookkeeping."""

    sessions: int
    namespace: str
    uids: dict[str, str] = field(default_factory=dict)
    created: dict[tuple[str, int], float] = field(default_factory=dict)
    """(session, index) -> wall-clock time its RecordingChunk was created (s)."""
    transcoded: set[str] = field(default_factory=set)
    promoted: set[str] = field(default_factory=set)
    plans: dict[str, list[int]] = field(default_factory=dict)
    errors: int = 0
    stop_chunks: asyncio.Event = field(default_factory=asyncio.Event)


class Generator:
    """Plays the recorder, transcoder and promotion pods of one step."""

    def __init__(self, api: Api, store: ObjectStore, step: Step, chunk_s: int,
                 pool: ThreadPoolExecutor) -> None:
        self.api, self.store, self.step, self.chunk_s = api, store, step, chunk_s
        self.pool = pool
        self.tasks: set[asyncio.Task[Any]] = set()

    async def s3(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def session_manifest(self, i: int) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": "RecordingSession",
                "metadata": {"name": f"s{i:04d}", "namespace": self.step.namespace},
                "spec": {"guildId": str(10**17 + i), "channelId": str(2 * 10**17 + i),
                         "chunkSeconds": self.chunk_s, "transcodeTimeoutSeconds": 120}}

    def ns_path(self, plural: str) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{self.step.namespace}/{plural}"

    async def create_sessions(self) -> None:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                _, obj = await self.api.request("POST", self.ns_path(SESSION_PLURAL),
                                                self.session_manifest(i))
                self.step.uids[obj["metadata"]["name"]] = obj["metadata"]["uid"]

        await asyncio.gather(*(one(i) for i in range(self.step.sessions)))

    async def wait_recorders(self, timeout_s: float) -> set[str]:
        """Sessions whose recorder pod is Running (kwok), waited for up to `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        running: set[str] = set()
        while time.monotonic() < deadline:
            _, pods = await self.api.request(
                "GET", f"/api/v1/namespaces/{self.step.namespace}/pods"
                f"?labelSelector={LABEL_COMPONENT}%3Drecorder")
            running = {p["metadata"]["labels"][LABEL_SESSION] for p in pods["items"]
                       if (p.get("status") or {}).get("phase") == "Running"}
            if len(running) >= self.step.sessions:
                break
            await asyncio.sleep(1)
        return running

    async def wait_recording(self, timeout_s: float) -> int:
        """How many sessions have `status.state` Recording, waited for until all do or up
        to `timeout_s` (polled every 0.5 s)."""
        deadline = time.monotonic() + timeout_s
        n = 0
        while time.monotonic() < deadline:
            _, data = await self.api.request("GET", self.ns_path(SESSION_PLURAL))
            n = sum(1 for o in data["items"]
                    if (o.get("status") or {}).get("state") == "Recording")
            if n >= self.step.sessions:
                break
            await asyncio.sleep(0.5)
        return n

    async def record(self, session: str, phase_s: float) -> None:
        """The recorder of `session`: a chunk every `chunk_s` seconds from `phase_s` on."""
        uid = self.step.uids[session]
        meeting = meeting_id_for(uid, None)
        layout = MeetingLayout("recordings", str(10**17 + int(session[1:])), meeting)
        await asyncio.sleep(phase_s)
        t0 = time.monotonic()
        index = 0
        while not self.step.stop_chunks.is_set():
            start_ms, end_ms = index * self.chunk_s * 1000, (index + 1) * self.chunk_s * 1000
            tracks = []
            for user in SPEAKERS:
                data = secrets.token_bytes(RAW_BYTES)
                key = layout.raw_key(index, user, "ogg-opus")
                await self.s3(self.store.put_bytes, key, data)
                tracks.append(ChunkTrack(user_id=user, key=key, frames=self.chunk_s * 50,
                                         first_ms=start_ms, last_ms=end_ms - 20,
                                         bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                         channels=1))
            spec = ChunkSpec(session_name=session, meeting_id=meeting, guild_id=layout.guild_id,
                             index=index, start_ms=start_ms, end_ms=end_ms, tracks=tracks)
            body = {"apiVersion": API_VERSION, "kind": CHUNK_KIND,
                    "metadata": {"name": chunk_name(session, index),
                                 "labels": {LABEL_SESSION: session, LABEL_COMPONENT: "chunk",
                                            LABEL_CHUNK_INDEX: str(index), **MANAGED_BY},
                                 "ownerReferences": [owner_reference(session, uid)]},
                    "spec": spec.to_api()}
            try:
                await self.api.request("POST", self.ns_path(CHUNK_PLURAL), body)
                self.step.created[(session, index)] = time.time()
            except Exception as err:
                self.step.errors += 1
                log(f"chunk {session}/{index}: {err}")
            index += 1
            await asyncio.sleep(max(0.0, t0 + index * self.chunk_s - time.monotonic()))

    async def on_job(self, event: dict[str, Any]) -> None:
        if event["type"] != "ADDED":
            return
        job = event["object"]
        name = job["metadata"]["name"]
        component = job["metadata"]["labels"].get(LABEL_COMPONENT)
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        if component == "transcoder" and name not in self.step.transcoded:
            self.step.transcoded.add(name)
            self.spawn(self.transcode(ChunkSpec.model_validate(
                json.loads(args[args.index("--chunk-json") + 1]))))
        elif component == "promoter" and name not in self.step.promoted:
            self.step.promoted.add(name)
            self.spawn(self.promote(args[args.index("--plan-key") + 1]))

    def spawn(self, coro: Any) -> None:
        """Run `coro` as a pod's work, kept until it ends; a failure is counted."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self.tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.step.errors += 1
                log(f"simulated pod failed: {t.exception()!r}")

        task.add_done_callback(done)

    async def transcode(self, spec: ChunkSpec) -> None:
        """What a transcoder pod writes: one MP3 per track, then result.json."""
        layout = MeetingLayout("recordings", spec.guild_id, spec.meeting_id)
        outputs = []
        for t in spec.tracks:
            data = secrets.token_bytes(512)
            key = layout.chunk_output_key(spec.index, t.user_id, "mp3")
            await self.s3(self.store.put_bytes, key, data, "audio/mpeg")
            outputs.append(ChunkOutput(user_id=t.user_id, format="mp3", key=key,
                                       bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                       duration_ms=spec.end_ms - spec.start_ms))
        result = TranscodeResult(tool_version="scale-bench", index=spec.index, outputs=outputs)
        await self.s3(self.store.put_json, layout.result_key(spec.index), result.to_api())

    async def promote(self, plan_key: str) -> None:
        """What a promotion pod writes: the final tracks and final/manifest.json."""
        plan = PromotionPlan.model_validate(await self.s3(self.store.get_json, plan_key))
        self.step.plans[plan.meeting_id] = [c.index for c in plan.chunks]
        layout = MeetingLayout(plan.prefix, plan.guild_id, plan.meeting_id)
        tracks = []
        for user in [*plan.speakers, None]:
            data = secrets.token_bytes(1024)
            key = layout.final_key(user or MIX_TRACK, "mp3")
            await self.s3(self.store.put_bytes, key, data, "audio/mpeg")
            tracks.append(FinalTrack(track=user or MIX_TRACK,
                                     kind="speaker" if user else "mixed", user_id=user,
                                     format="mp3", key=key, bytes=len(data),
                                     sha256=hashlib.sha256(data).hexdigest(),
                                     duration_ms=plan.session_end_ms, channels=1))
        manifest = FinalManifest(tool_version="scale-bench", meeting_id=plan.meeting_id,
                                 duration_ms=plan.session_end_ms,
                                 recorded_ms=plan.session_end_ms, paused_ms=0,
                                 tracks=tracks, gaps=plan.gaps)
        await self.s3(self.store.put_json, layout.final_manifest_key, manifest.to_api())


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
    with_chunks = {k.split("/")[2] for k in chunk_keys if "/chunks/" in k}
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
