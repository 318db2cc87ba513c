"""Operator HA (issue 16): two operator processes peer through a ClusterKopfPeering
(voicetrack_operator/leadership.py); only the older acts. SIGKILL the active one while a
files session records: the other takes over and handles the next chunk within 15 s, and
the session still stops and promotes with every chunk the recorder acknowledged (a
RecordingChunk) done in Kubernetes, in `temp_recordings` and in the final recordings, 0
lost. Killing the passive one changes nothing. With both running, only one ever acts.

Each pair serves its own `ha-*` namespace (the session stack's operator serves `e2e-*`) with
its own database and peering object; the real local control plane, node agent (recorder
and transcoder pods as processes), SeaweedFS and PostgreSQL.
"""

from __future__ import annotations

import json
import re
import secrets
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.audio_helpers import Speaker
from tests.e2e.test_main_job import wait_for, wav_bytes
from tests.fixtures.stack import Stack
from voicetrack.db.service import RecordingService
from voicetrack.kubeclient import load_api_client
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest
from voicetrack.resources import CHUNK_PLURAL, GROUP, SESSION_PLURAL, VERSION
from voicetrack_local.postgres import PostgresServer
from voicetrack_local.stack import OperatorProcess, prepare_namespace
from voicetrack_operator.leadership import (
    PEERING_GROUP,
    PEERING_PLURAL,
    PEERING_VERSION,
    is_active,
)

pytestmark = pytest.mark.disruptive

GUILD = "300000000000000777"
USER = "400000000000000071"
TAKEOVER_S = 15.0
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@dataclass
class Pair:
    """The operator replicas of one test, their peering object, database and namespace."""

    stack: Stack
    api: client.ApiClient
    peering: str
    database_url: str
    namespace: str
    logs: Path
    ops: dict[str, OperatorProcess] = field(default_factory=dict)

    def start(self, name: str) -> OperatorProcess:
        """Start replica `name` (its kopf identity) and wait for /healthz."""
        op = OperatorProcess(self.stack.kubeconfig, self.stack.s3, self.database_url,
                             self.logs / f"{name}.log", extra_env={
                                 # its own namespace only: a session an earlier test
                                 # left behind is not this pair's to handle
                                 "VOICETRACK_NAMESPACES": self.namespace,
                                 "VOICETRACK_PEERING": self.peering,
                                 "VOICETRACK_POD_NAME": name,
                                 "VOICETRACK_LOG_LEVEL": "INFO"})
        op.start()
        self.ops[name] = op
        return op

    def kill(self, name: str) -> float:
        """SIGKILL replica `name`; returns the wall-clock time of the kill."""
        proc = self.ops[name].process
        assert proc is not None
        at = time.time()
        proc.kill()
        proc.wait()
        return at

    def status(self) -> dict[str, Any]:
        body = client.CustomObjectsApi(self.api).get_cluster_custom_object(
            PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL, self.peering)
        return dict(body.get("status") or {})

    def active(self) -> list[str]:
        """The live replicas that kopf's rule lets act, from the peering object."""
        st, now = self.status(), datetime.now(UTC)
        return [n for n, info in st.items() if isinstance(info, dict)
                and n in self.ops and self.ops[n].process is not None
                and self.ops[n].process.poll() is None  # type: ignore[union-attr]
                and is_active(st, n, int(info["priority"]), now)]

    def counter(self, name: str, metric: str) -> float:
        """A counter of replica `name` (sum over its labels) from its /metrics."""
        return sum(float(line.rsplit(" ", 1)[1]) for line in
                   self.ops[name].metrics().splitlines()
                   if line.startswith(metric) and not line.startswith("#"))

    def log_times(self, name: str, text: str, after: float) -> list[float]:
        """Wall-clock times of replica `name`'s log lines containing `text` after `after`."""
        out = []
        for line in (self.logs / f"{name}.log").read_text(errors="replace").splitlines():
            m = LOG_TIME.match(line)
            if m and text in line:
                at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").astimezone().timestamp()
                if at >= after:
                    out.append(at)
        return out

    def stop(self) -> None:
        for op in self.ops.values():
            op.stop()


class JobWatch:
    """Polls the namespace's transcoder Jobs every 0.2 s in a thread and keeps when each
    Job name was first seen (wall clock)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.batch = client.BatchV1Api(api)
        self.namespace = namespace
        self.first_seen: dict[str, float] = {}
        self.uids: dict[str, set[str]] = {}
        """Job name -> every uid seen under it (a Job made twice has two)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                jobs = self.batch.list_namespaced_job(
                    self.namespace, label_selector=f"{GROUP}/component=transcoder",
                    _request_timeout=5)
                now = time.time()
                for job in jobs.items:
                    self.first_seen.setdefault(job.metadata.name, now)
                    self.uids.setdefault(job.metadata.name, set()).add(job.metadata.uid)
            except Exception:  # the API answers again on the next pass
                pass
            self._stop.wait(0.2)

    def after(self, at: float) -> list[float]:
        """First-seen times of the Jobs that appeared more than 1 s after `at`, sorted (a
        Job made just before `at` may be seen by the next poll; no takeover is that fast)."""
        return sorted(t for t in self.first_seen.values() if t > at + 1.0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def pair(stack: Stack, postgres_server: PostgresServer,
         tmp_path: Path) -> Iterator[Pair]:
    """A peering object, a database and an `ha-*` namespace; replicas started by the test
    (stopped after it)."""
    api = load_api_client(str(stack.kubeconfig))
    name = f"ha-{secrets.token_hex(3)}"
    client.CustomObjectsApi(api).create_cluster_custom_object(
        PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL,
        {"apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}", "kind": "ClusterKopfPeering",
         "metadata": {"name": name}})
    prepare_namespace(stack.kubeconfig, name, stack.s3)
    p = Pair(stack, api, name, postgres_server.create_database(f"vt_{name.replace('-', '_')}"),
             name, tmp_path)
    try:
        yield p
    finally:
        p.stop()
        for op_name in p.ops:
            print(f"--- {op_name} log tail\n{p.ops[op_name].tail(40)}")
        stack.kubectl("delete", "namespace", name, "--wait=false", check=False)
        stack.kubectl("delete", "clusterkopfpeering", name, check=False)


def start_session(pair: Pair, name: str, audio_ms: int) -> None:
    spk = Speaker(user_id=USER, f0=160.0, talks=[(300, audio_ms - 300)])
    key = f"e2e-input/{pair.namespace}/{name}.wav"
    pair.stack.store.put_bytes(key, wav_bytes(spk.pcm(audio_ms)), "audio/wav")
    doc = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RecordingSession",
           "metadata": {"name": name, "namespace": pair.namespace},
           "spec": {"guildId": GUILD, "channelId": "300000000000000778", "chunkSeconds": 5,
                    "source": {"type": "files",
                               "speakers": [{"userId": USER, "objectKey": key}]}}}
    pair.stack.kubectl("apply", "-f", "-", input=json.dumps(doc))


def session(pair: Pair, name: str) -> dict[str, Any] | None:
    try:
        return dict(client.CustomObjectsApi(pair.api).get_namespaced_custom_object(
            GROUP, VERSION, pair.namespace, SESSION_PLURAL, name))
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise


def chunks(pair: Pair) -> list[dict[str, Any]]:
    return list(client.CustomObjectsApi(pair.api).list_namespaced_custom_object(
        GROUP, VERSION, pair.namespace, CHUNK_PLURAL)["items"])


def db(pair: Pair, fn: Any) -> Any:
    import asyncio

    async def go() -> Any:
        svc = RecordingService.from_url(pair.database_url)
        try:
            return await fn(svc)
        finally:
            await svc.close()

    return asyncio.run(go())


def finish_and_check_nothing_lost(pair: Pair, name: str, audio_ms: int) -> dict[str, int]:
    """Wait until the recorder has played everything and every chunk is done; delete the
    session and wait for promotion. Asserts the recorder's chunks (RecordingChunks) ==
    done chunks == done temp rows per track == the final manifest's chunks. Returns
    counts."""
    def recorded() -> bool:
        st = (session(pair, name) or {}).get("status", {})
        items = chunks(pair)
        # a whole 5 s chunk past the file's end: the last voiced chunk is sealed (the
        # files source goes on recording silence, whose chunks have no tracks and no rows)
        return st.get("recordedSeconds", 0) * 1000 >= audio_ms + 6000 and bool(items) and all(
            (i.get("status") or {}).get("transcodeStatus") == "done" for i in items)

    # from wherever the caller is in the file's playback (the takeover test comes here
    # about 60 s into 155 s of audio), and the status counts are up to two chunk periods
    # old with live Jobs on (the operator's write budget, docs/scale.md): before, a fixed
    # 120 s left ~8 s of slack there and timed out in a CI simulation
    wait_for("every chunk done", recorded, audio_ms / 1000 + 60, every_s=1)
    items = chunks(pair)
    meeting = session(pair, name)["status"]["meetingId"]  # type: ignore[index]
    tracks = sum(len(i["spec"].get("tracks", [])) for i in items)
    rows = db(pair, lambda s: s.get_temp_recordings_for_meeting(meeting))
    assert len(rows) == tracks and all(str(r.transcode_status) == "done" for r in rows), rows
    client.CustomObjectsApi(pair.api).delete_namespaced_custom_object(
        GROUP, VERSION, pair.namespace, SESSION_PLURAL, name)
    # the recorder seals its open chunk at stop: it gets its Job too (every chunk is kept
    # until promotion has collected them, so a poll a second sees it)
    seen = {i["metadata"]["name"]: bool(i["spec"].get("tracks")) for i in items}

    def promoted() -> bool:
        for i in chunks(pair):
            seen[i["metadata"]["name"]] = bool(i["spec"].get("tracks"))
        return session(pair, name) is None

    wait_for("promotion", promoted, 180, every_s=1)
    recs = db(pair, lambda s: s.get_recordings_for_meeting(meeting))
    assert {str(r.kind) for r in recs} == {"speaker", "mixed"}, recs
    manifest = FinalManifest.model_validate(pair.stack.store.get_json(
        MeetingLayout("recordings", GUILD, meeting).final_manifest_key))
    # nothing missing from the final tracks: no gap, the whole file recorded
    assert not manifest.gaps, manifest.gaps
    assert manifest.recorded_ms >= audio_ms - 2000, (manifest.recorded_ms, audio_ms)
    return {"chunks": len(seen), "voiced": sum(seen.values()),
            "tracks": tracks, "rows": len(rows),
            "recordings": len(recs), "recorded_ms": manifest.recorded_ms}


def test_both_running_only_one_acts(pair: Pair) -> None:
    pair.start("op-a")
    wait_for("op-a active", lambda: pair.active() == ["op-a"], 30)
    pair.start("op-b")
    wait_for("op-b's keep-alive", lambda: "op-b" in pair.status(), 30)
    assert pair.active() == ["op-a"]
    audio_ms = 16_000
    jobs = JobWatch(pair.api, pair.namespace)
    try:
        start_session(pair, "both", audio_ms)
        counts = finish_and_check_nothing_lost(pair, "both", audio_ms)
    finally:
        jobs.close()
    assert pair.active() == ["op-a"]
    done = {n: pair.counter(n, "voicetrack_chunks_total") for n in ("op-a", "op-b")}
    promoted = {n: pair.counter(n, "voicetrack_promotions_total") for n in ("op-a", "op-b")}
    print(f"both running: {counts}, chunk outcomes counted {done}, promotions {promoted}, "
          f"transcoder Jobs {len(jobs.uids)}")
    # one Job per chunk with audio (a silent chunk needs none), each made once (a second
    # maker would re-create a collected one)
    assert len(jobs.uids) == counts["voiced"], (jobs.uids, counts)
    assert all(len(u) == 1 for u in jobs.uids.values()), jobs.uids
    assert done["op-a"] >= counts["chunks"] and done["op-b"] == 0, done
    assert promoted == {"op-a": 1, "op-b": 0}, promoted
    assert not pair.log_times("op-b", "Handler '", 0), "the passive replica ran handlers"
    assert pair.log_times("op-b", "is now passive", 0) == []  # it never was active


def test_active_killed_the_other_takes_over_within_15s(pair: Pair) -> None:
    names = iter(f"op-{i}" for i in range(10))
    active = next(names)
    pair.start(active)
    wait_for(f"{active} active", lambda: pair.active() == [active], 30)
    rounds = 3
    audio_ms = 45_000 * rounds + 20_000
    start_session(pair, "hand", audio_ms)
    jobs = JobWatch(pair.api, pair.namespace)
    takeovers: list[tuple[float, float]] = []
    try:
        wait_for("the first Job", lambda: jobs.first_seen, 60)
        for _ in range(rounds):
            passive = next(names)
            pair.start(passive)
            wait_for(f"{passive}'s keep-alive", lambda p=passive: p in pair.status(), 30)
            time.sleep(3)  # the session goes on with both running
            assert pair.active() == [active]
            killed_at = pair.kill(active)
            first = wait_for("a Job after the kill", lambda k=killed_at: jobs.after(k),
                             TAKEOVER_S + 5, every_s=0.2)[0]
            resumed = pair.log_times(passive, "Resuming operations", killed_at)
            takeovers.append((resumed[0] - killed_at if resumed else float("nan"),
                              first - killed_at))
            print(f"kill {len(takeovers)}: kopf resumed {takeovers[-1][0]:.1f} s, first Job "
                  f"{takeovers[-1][1]:.1f} s after the SIGKILL")
            assert first - killed_at <= TAKEOVER_S, takeovers
            # our own workers (heartbeat, orphan sweep, webhooks) moved over too
            wait_for(f"{passive}'s workers active", lambda p=passive, k=killed_at:
                     pair.log_times(p, "is now active", k), 5)
            active = passive

        # the reverse: a new replica (passive) killed changes nothing
        passive = next(names)
        pair.start(passive)
        wait_for(f"{passive}'s keep-alive", lambda: passive in pair.status(), 30)
        before = {c["metadata"]["name"] for c in chunks(pair)}
        killed_at = pair.kill(passive)
        time.sleep(1)
        assert pair.active() == [active]
        wait_for("the active replica handles the next chunk", lambda: [
            c for c in chunks(pair) if c["metadata"]["name"] not in before
            and (c.get("status") or {}).get("transcodeStatus") == "done"], 20, every_s=0.5)
        assert pair.log_times(active, "Pausing operations", killed_at) == []
    finally:
        jobs.close()
    counts = finish_and_check_nothing_lost(pair, "hand", audio_ms)
    resumes = [r for r, _ in takeovers]
    handled = [h for _, h in takeovers]
    print(f"takeover over {len(takeovers)} kills: resume after kill "
          f"min/median/max {min(resumes):.1f}/{statistics.median(resumes):.1f}/"
          f"{max(resumes):.1f} s; first Job after kill "
          f"{min(handled):.1f}/{statistics.median(handled):.1f}/{max(handled):.1f} s; "
          f"{counts}, lost 0")
