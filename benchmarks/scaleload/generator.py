"""The load generator of `benchmarks/scale.py` (issue 16): it plays the pods' part for one
step of N sessions, over the API server (`Api`, its own identity) and S3:

- recorder: once its session's recorder pod is Running (kwok), every `chunkSeconds` it
  uploads each speaker's raw track to S3 and creates the RecordingChunk;
- transcoder: when a transcoder Job appears it writes the chunk's outputs and `result.json`;
- promoter: when a promotion Job appears it reads the plan and writes the final tracks and
  `final/manifest.json` with their true sizes and sha256.

`Step` keeps one step's bookkeeping (created chunks with their wall-clock times, Jobs
answered, errors).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from voicetrack.chunkspec import ChunkOutput, ChunkSpec, ChunkTrack
from voicetrack.layout import MIX_TRACK, MeetingLayout
from voicetrack.manifests import FinalManifest, FinalTrack, PromotionPlan, TranscodeResult
from voicetrack.names import chunk_name, meeting_id_for, owner_reference
from voicetrack.objectstore import ObjectStore
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

SPEAKERS = ("111111111111111111", "222222222222222222")
RAW_BYTES = 2048
"""Size of each simulated raw track (bytes): S3 traffic is not what is measured here."""



def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)



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
