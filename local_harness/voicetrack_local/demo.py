"""`voicetrack demo`: the main job end to end on the embedded default.

Starts (or reuses) the local control plane, starts SeaweedFS and the database (a SQLite
file, or PostgreSQL with `--postgres`) and the operator; uploads one audio file per speaker
(default: three speech recordings made with espeak-ng); applies a RecordingSession with the
`files` source; shows `kubectl get recsess` while it records; pauses and resumes once;
deletes it; prints the `recordings` rows and a presigned URL per track; writes the final
tracks, waveform PNGs and a `manifest.json` to `--out`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from voicetrack.db.service import RecordingService
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest
from voicetrack.objectstore import ObjectStore
from voicetrack_local import cluster as local_cluster
from voicetrack_local.kubectl import kubectl
from voicetrack_local.postgres import PostgresServer
from voicetrack_local.seaweed import SeaweedServer
from voicetrack_local.stack import OperatorProcess, install_crds, prepare_namespace

NAMESPACE = "voicetrack-demo"
SESSION = "demo"
GUILD = "100000000000000001"
CHANNEL = "100000000000000002"
DEFAULT_SPEAKERS = (
    ("en-us+m3", "Good morning everyone. This is the weekly standup, recorded by Voicetrack. "
                 "Each of us gets a separate track, and a mixed one too."),
    ("en-gb+f3", "Thanks. I finished the transcoder benchmarks yesterday. Today I am "
                 "looking at the promotion job and the waveform pictures."),
    ("en-us+m7", "I will keep working on the recorder. The pause we just had should not "
                 "appear in the final recording at all."),
)
DEFAULT_OFFSETS = (0, 2500, 5000)

console = Console(stderr=True)


@dataclass
class Speaker:
    user_id: str
    source: Path
    offset_ms: int
    duration_ms: int


def _duration_ms(path: Path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True,
                         check=True).stdout.strip()
    return int(float(out) * 1000)


def make_default_audio(folder: Path) -> list[Path]:
    """Three short speech recordings with different voices (espeak-ng), as WAV."""
    paths = []
    for i, (voice, text) in enumerate(DEFAULT_SPEAKERS):
        path = folder / f"speaker{i + 1}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "165", "-w", str(path), text],
                       check=True, capture_output=True)
        paths.append(path)
    return paths


def _kget(kubeconfig: Path, *args: str) -> str:
    return kubectl(kubeconfig, "-n", NAMESPACE, "get", *args, check=False).stdout


def _session(kubeconfig: Path) -> dict[str, Any] | None:
    res = kubectl(kubeconfig, "-n", NAMESPACE, "get", "recsess", SESSION, "-o", "json",
                  check=False)
    return json.loads(res.stdout) if res.returncode == 0 else None


def _session_manifest(speakers: list[Speaker], keys: list[str], chunk_seconds: int,
                      bucket: str) -> str:
    doc = {
        "apiVersion": "voicetrack.dev/v1alpha1",
        "kind": "RecordingSession",
        "metadata": {"name": SESSION, "namespace": NAMESPACE},
        "spec": {
            "guildId": GUILD, "channelId": CHANNEL, "requestedBy": speakers[0].user_id,
            "chunkSeconds": chunk_seconds,
            "output": {"formats": ["mp3"], "tracks": "both"},
            "storage": {"bucket": bucket},
            "source": {"type": "files", "speakers": [
                {"userId": s.user_id, "objectKey": k, "offsetMs": s.offset_ms,
                 "name": s.source.name} for s, k in zip(speakers, keys, strict=True)]},
        },
    }
    return json.dumps(doc)


def _show(kubeconfig: Path, last: list[str]) -> None:
    """Print `kubectl get recsess` when a column other than AGE changed."""
    text = _kget(kubeconfig, "recsess").rstrip()
    lines = text.splitlines()
    if len(lines) < 2:
        return
    age = lines[0].split().index("AGE")
    key = " ".join(w for i, w in enumerate(lines[1].split()) if i != age)
    if key != last[0]:
        console.print(f"[dim]$ kubectl get recsess[/dim]\n{text}", soft_wrap=True)
        last[0] = key


def _capture_origin(kubeconfig: Path, status: dict[str, Any]) -> float | None:
    """Unix time (s) at which capture began: status.startedAt (the recorder's session
    clock t0) plus the first chunk's startMs; None until the first chunk exists."""
    res = kubectl(kubeconfig, "-n", NAMESPACE, "get", "recchunk", "-o", "json", check=False)
    items = json.loads(res.stdout).get("items", []) if res.returncode == 0 else []
    if not items or not status.get("startedAt"):
        return None
    first = min(items, key=lambda i: i["spec"]["index"])["spec"]["startMs"]
    t0 = datetime.fromisoformat(status["startedAt"].replace("Z", "+00:00")).timestamp()
    return t0 + first / 1000


def _record(kubeconfig: Path, speakers: list[Speaker], pause: bool) -> None:
    """Wait for the recorder to capture every speaker's audio, pausing once on the way
    (the pause starts once the first chunk is sealed, so speech goes on through it and
    that stretch is left out of the recording, as in a real meeting)."""
    last = [""]
    audio_end = max(s.offset_ms + s.duration_ms for s in speakers)
    pause_for = 3000
    origin: float | None = None
    state = "before"
    deadline = time.monotonic() + audio_end / 1000 + 120
    while time.monotonic() < deadline:
        _show(kubeconfig, last)
        obj = _session(kubeconfig) or {}
        status = obj.get("status", {})
        if status.get("state") in ("Refused", "Failed"):
            raise RuntimeError(f"session {status.get('state')}: {status.get('conditions')}")
        if origin is None:
            origin = _capture_origin(kubeconfig, status)
        if origin is not None:
            elapsed = (time.time() - origin) * 1000  # the files play on through a pause
            if pause and state == "before":
                kubectl(kubeconfig, "-n", NAMESPACE, "patch", "recsess", SESSION,
                        "--type=merge", "-p", '{"spec":{"paused":true}}')
                console.print(f"[yellow]paused at ~{elapsed / 1000:.1f} s[/yellow]")
                state, paused_since = "paused", time.time()
            elif state == "paused" and time.time() - paused_since >= pause_for / 1000:
                kubectl(kubeconfig, "-n", NAMESPACE, "patch", "recsess", SESSION,
                        "--type=merge", "-p", '{"spec":{"paused":false}}')
                console.print("[yellow]resumed[/yellow]")
                state = "after"
            elif state != "paused" and elapsed >= audio_end + 500:
                return
        time.sleep(0.5)
    raise RuntimeError("the recording did not finish in time")


WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")


def api_writes(kubeconfig: Path) -> dict[str, int]:
    """Write requests the apiserver has served, by resource (its own
    `apiserver_request_total` counter, read through `kubectl get --raw /metrics`)."""
    text = kubectl(kubeconfig, "get", "--raw", "/metrics", check=False).stdout
    out: dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        fields = dict(kv.split("=", 1) for kv in labels[labels.index("{") + 1:-1].split(",")
                      if "=" in kv)
        if fields.get("verb", "").strip('"') in WRITE_VERBS:
            res = fields.get("resource", '""').strip('"')
            sub = fields.get("subresource", '""').strip('"')
            key = f"{res}/{sub}" if sub else res
            out[key] = out.get(key, 0) + int(float(value))
    return out


def _latency(database_url: str, meeting_id: str) -> tuple[float, float, int]:
    """p50 and p95 (s) of chunk rows from queued (created_at) to done (completed_at)."""
    async def rows() -> list[Any]:
        svc = RecordingService.from_url(database_url)
        try:
            return await svc.get_temp_recordings_for_meeting(meeting_id)
        finally:
            await svc.close()

    lat = sorted((r.completed_at - r.created_at).total_seconds() for r in asyncio.run(rows())
                 if r.completed_at is not None)
    if not lat:
        return 0.0, 0.0, 0
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.95))], len(lat)


def _wait_deleted(kubeconfig: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    shown = ""
    while time.monotonic() < deadline:
        obj = _session(kubeconfig)
        if obj is None:
            return
        st = obj.get("status", {})
        line = f"{st.get('state', '?')}: {st.get('phaseMessage', '')}"
        if line != shown:
            console.print(f"[cyan]deleting[/cyan] {line}")
            shown = line
        if st.get("state") == "PromotionFailed":
            raise RuntimeError(f"promotion failed: {st.get('phaseMessage')}")
        time.sleep(1)
    raise RuntimeError("the session was not promoted in time")


def _wait_transcoded(kubeconfig: Path, timeout_s: float) -> None:
    """Wait until no chunk of the session is queued or in progress."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = (_session(kubeconfig) or {}).get("status", {}).get("chunks", {})
        if st.get("total") and not st.get("queued") and not st.get("inProgress"):
            return
        time.sleep(0.5)


def _write_outputs(store: ObjectStore, manifest: FinalManifest, layout: MeetingLayout,
                   speakers: list[Speaker], out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    by_user = {s.user_id: s for s in speakers}
    tracks, mix = [], None
    for t in manifest.tracks:
        local = out / Path(t.key).name
        store.get_file(t.key, str(local))
        for key in (t.overview_key, t.peaks_key):
            if key:
                store.get_file(key, str(out / Path(key).name))
        entry = {"file": str(local), "key": t.key, "sha256": t.sha256, "bytes": t.bytes,
                 "duration_ms": t.duration_ms, "format": t.format, "channels": t.channels,
                 "url": store.presigned_get(t.key, 3600)}
        if t.kind == "mixed":
            mix = entry
        else:
            s = by_user[t.user_id or ""]
            tracks.append({"source": str(s.source), "offset_ms": s.offset_ms,
                           "user_id": t.user_id, **entry})
    doc = {"meeting_id": manifest.meeting_id, "duration_ms": manifest.duration_ms,
           "paused": [g.to_api() for g in manifest.gaps if g.cause == "paused"],
           "gaps": [g.to_api() for g in manifest.gaps], "tracks": tracks, "mix": mix}
    (out / "manifest.json").write_text(json.dumps(doc, indent=2))
    return doc


def outputs_bytes(store: ObjectStore, layout: MeetingLayout) -> tuple[int, int]:
    """(frozen raw copies, transcoded chunk tracks) in bytes under the meeting's
    `outputs/` now (`voicetrack.layout`: `raw-<user>.<ext>`, `<user>.<fmt>`); pieces
    and manifests are not counted. Each object is read once (a demo's few MB)."""
    frozen = tracks = 0
    for key in store.list_keys(layout.outputs_root):
        name = key.rsplit("/", 1)[-1]
        if name.startswith("raw-"):
            frozen += store.digest(key)[0]
        elif name.split(".")[0].isdigit():
            tracks += store.digest(key)[0]
    return frozen, tracks


def _print_rows(database_url: str, meeting_id: str) -> None:
    async def rows() -> list[Any]:
        svc = RecordingService.from_url(database_url)
        try:
            return await svc.get_recordings_for_meeting(meeting_id)
        finally:
            await svc.close()

    table = Table(title=f"recordings (meeting {meeting_id})")
    for col in ("id", "kind", "user_id", "format", "duration_in_ms", "bytes", "sha256"):
        table.add_column(col)
    for r in asyncio.run(rows()):
        table.add_row(r.id, str(r.kind), r.user_id or "—", r.format, str(r.duration_in_ms),
                      str(r.bytes), r.sha256[:16] + "…")
    console.print(table)


def run_demo(audio: list[Path], offsets: list[int], out: Path, *, postgres: bool,
             pause: bool, chunk_seconds: int, state_dir: Path | None, keep: bool) -> Path:
    """Run the main job end to end; returns the path of `out/manifest.json`.

    Raises RuntimeError (with the operator's log tail) when a step does not complete."""
    work = Path(tempfile.mkdtemp(prefix="voicetrack-demo-"))
    started: list[Any] = []
    try:
        console.rule("Voicetrack demo")
        console.print("starting the local control plane (built once, then reused)…")
        kc = local_cluster.up(state_dir, log=lambda m: console.print(f"[dim]{m}[/dim]"))
        if kc.owned and not keep:
            started.append(kc)
        console.print(f"cluster ready: {kc.server}; kubeconfig {kc.kubeconfig}")
        seaweed = SeaweedServer(work / "s3")
        s3 = seaweed.start()
        started.append(seaweed)
        console.print(f"SeaweedFS S3 at {s3.endpoint}")
        if postgres:
            pg = PostgresServer()
            database_url = pg.start()
            started.append(pg)
        else:
            database_url = f"sqlite+aiosqlite:///{work / 'voicetrack.db'}"
        console.print(f"database: {database_url.split('@')[-1]}")
        install_crds(kc.kubeconfig)
        prepare_namespace(kc.kubeconfig, NAMESPACE, s3)
        kubectl(kc.kubeconfig, "-n", NAMESPACE, "delete", "recsess", "--all", "--wait=false",
                check=False)
        op = OperatorProcess(kc.kubeconfig, s3, database_url, out / "operator.log")
        op.start()
        started.append(op)
        console.print(f"operator running (log {op.log_path})")

        if not audio:
            (out / "sources").mkdir(parents=True, exist_ok=True)
            audio = make_default_audio(out / "sources")
            offsets = list(DEFAULT_OFFSETS)
        offsets = (offsets + [0] * len(audio))[: len(audio)]
        speakers = [Speaker(user_id=f"2000000000000000{i + 11:02d}", source=p,
                            offset_ms=off, duration_ms=_duration_ms(p))
                    for i, (p, off) in enumerate(zip(audio, offsets, strict=True))]
        store = ObjectStore(s3)
        store.ensure_bucket()
        keys = []
        for s in speakers:
            key = f"demo-input/{s.user_id}{s.source.suffix}"
            store.put_file(key, str(s.source))
            keys.append(key)
            console.print(f"speaker {s.user_id}: {s.source.name}, {s.duration_ms} ms, "
                          f"offset {s.offset_ms} ms")
        writes_before = api_writes(kc.kubeconfig)
        kubectl(kc.kubeconfig, "apply", "-f", "-",
                input=_session_manifest(speakers, keys, chunk_seconds, s3.bucket))
        console.print("[green]RecordingSession applied[/green]")
        _record(kc.kubeconfig, speakers, pause)
        console.print(_kget(kc.kubeconfig, "recchunk"))
        obj = _session(kc.kubeconfig) or {}
        meeting_id = obj.get("status", {}).get("meetingId", "")
        chunks = int(obj.get("status", {}).get("chunks", {}).get("total", 0))
        _wait_transcoded(kc.kubeconfig, 120)
        frozen, encoded = outputs_bytes(store, MeetingLayout("recordings", GUILD, meeting_id))
        p50, p95, n = _latency(database_url, meeting_id)
        kubectl(kc.kubeconfig, "-n", NAMESPACE, "delete", "recsess", SESSION, "--wait=false")
        console.print("[green]RecordingSession deleted: stop → transcodes → promotion[/green]")
        from voicetrack_local.web import DEMO_WEB_SECONDS_ENV, LocalWeb, demo_web_seconds
        web_s = demo_web_seconds()
        if web_s > 0:  # the web page comes up while promotion runs (no wait at the end)
            web = LocalWeb(out / "discord", s3, database_url, out / "web.log",
                           extra_guilds=(GUILD,))
            started.append(web.start())
        _wait_deleted(kc.kubeconfig, 300)
        layout = MeetingLayout("recordings", GUILD, meeting_id)
        manifest = FinalManifest.model_validate(store.get_json(layout.final_manifest_key))
        _print_rows(database_url, meeting_id)
        doc = _write_outputs(store, manifest, layout, speakers, out)
        for t in [*doc["tracks"], doc["mix"]]:
            kind = "mono" if t["channels"] == 1 else "stereo"
            console.print(f"{Path(t['file']).name} ({kind}): {t['url']}", soft_wrap=True)
        writes_after = api_writes(kc.kubeconfig)
        delta = {k: v - writes_before.get(k, 0) for k, v in writes_after.items()
                 if v - writes_before.get(k, 0) > 0}
        total = sum(delta.values())
        console.print(f"chunk sealed → done: p50 {p50:.2f} s, p95 {p95:.2f} s over {n} "
                      f"track(s); operator RSS {op.rss_mb():.0f} MB; API writes "
                      f"{total} for {chunks} chunk(s) = {total / max(chunks, 1):.1f} per chunk")
        console.print("API writes by resource: " + ", ".join(
            f"{k} {v}" for k, v in sorted(delta.items(), key=lambda kv: -kv[1])))
        console.print(f"before stop: frozen raw copies {frozen / 1e3:.0f} kB = "
                      f"{100 * frozen / max(encoded, 1):.0f}% of the MP3 chunk tracks "
                      f"({encoded / 1e3:.0f} kB), until collection")
        console.print(f"final tracks in {out}")
        if web_s > 0:  # the web page on this demo's meeting, logged in via the local Discord
            console.print(f"web page on this meeting for {web_s:g} s "
                          f"({DEMO_WEB_SECONDS_ENV}=600 keeps it open 10 minutes, 0 skips it):")
            web.serve(web_s, echo=console.print, meeting_id=meeting_id)
        return out / "manifest.json"
    except Exception:
        for part in started:
            if isinstance(part, OperatorProcess):
                console.print(f"[red]operator log tail:[/red]\n{part.tail(40)}")
        raise
    finally:
        for part in reversed(started):
            part.stop()
        shutil.rmtree(work, ignore_errors=True)
