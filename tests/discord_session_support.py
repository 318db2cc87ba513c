"""What the local-Discord session e2e modules (`tests/e2e/discord/`) share besides their
fixtures: kubectl and object waits, a sender's voice join, the recorder's log, the promoted
tracks, and the locators of click markers in them (tests only)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import discord
import numpy as np

from tests.audio_helpers import CLICK_LEVEL, CLICK_MS, decode_file
from voicetrack.audio import SAMPLE_RATE
from voicetrack.db.service import RecordingService
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_local.kubectl import kubectl, kubectl_path
from voicetrack_local.stack import prepare_namespace

CLI = str(Path(sys.executable).parent / "voicetrack")


def kube(cluster: Any, *args: str, **kw: Any) -> Any:
    """`kubectl` against the test cluster (`voicetrack_local.kubectl.kubectl`)."""
    return kubectl(cluster.kubeconfig, *args, **kw)


async def get_object(cluster: Any, ns: str, kind: str, name: str) -> dict[str, Any] | None:
    """The object as JSON, None when it does not exist."""
    res = await asyncio.to_thread(kube, cluster, "-n", ns, "get", kind, name, "-o", "json",
                                  check=False)
    return json.loads(res.stdout) if res.returncode == 0 else None


async def until(what: str, fn: Callable[[], Any], timeout_s: float, every_s: float = 0.5
                ) -> Any:
    """Poll `fn` (sync or async) until it returns a true value, which is returned; raises
    AssertionError naming `what` after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        value = fn()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


async def join_voice(client: discord.Client, channel: Any) -> discord.VoiceClient:
    """A sender joins voice; a handshake that times out is retried once, with a warning
    that shows in the run's summary (CI saw one sender's VOICE_STATE_UPDATE/
    VOICE_SERVER_UPDATE wait time out once; the local Discord's log then says whether
    it sent them). The sender is a test client: the recorder's joins are not retried."""
    try:
        return await channel.connect(timeout=20)  # type: ignore[no-any-return]
    except TimeoutError:
        warnings.warn(f"sender {client.user}: voice handshake timed out once (gateway "
                      f"closed {client.is_closed()}, latency {client.latency:.3f} s); "
                      "retrying", stacklevel=1)
        return await channel.connect(timeout=20)  # type: ignore[no-any-return]


async def session_status(cluster: Any, ns: str, name: str) -> dict[str, Any]:
    """The RecordingSession's status ({} when it has none or is gone)."""
    return ((await get_object(cluster, ns, "recsess", name)) or {}).get("status", {})


def chunks_at_least(cluster: Any, ns: str, total: int, name: str = "call"
                    ) -> Callable[[], Any]:
    """A check for `until`: the session has sealed at least `total` chunks."""
    async def check() -> bool:
        st = await session_status(cluster, ns, name)
        return st.get("chunks", {}).get("total", 0) >= total

    return check


async def session_gone(cluster: Any, ns: str, name: str = "call") -> bool:
    """True once the RecordingSession is deleted (its finalizer released: promoted)."""
    return await get_object(cluster, ns, "recsess", name) is None


def onset_ms(track: np.ndarray, level: int = 3000) -> int:
    """The first time (ms) any sample's magnitude reaches `level`."""
    loud = np.flatnonzero(np.abs(track.astype(np.int32)).max(axis=1) >= level)
    assert loud.size, "the track is silent"
    return int(loud[0]) * 1000 // SAMPLE_RATE


def click_ms(track: np.ndarray, around_ms: int, search_ms: int = 150) -> float:
    """Where (ms, sample precision) the click marker near `around_ms` starts: the lag of
    the best match of the click's own waveform (tests.audio_helpers) within ±`search_ms`."""
    n = CLICK_MS * SAMPLE_RATE // 1000
    click = CLICK_LEVEL * np.sin(np.linspace(0, 3 * np.pi, n))
    a = max((around_ms - search_ms) * SAMPLE_RATE // 1000, 0)
    b = min((around_ms + search_ms) * SAMPLE_RATE // 1000, track.shape[0])
    mono = track[a:b].astype(np.float64).sum(axis=1)
    corr = np.correlate(mono, click, mode="valid")
    return (a + int(np.argmax(corr))) * 1000 / SAMPLE_RATE


@contextlib.contextmanager
def pod_log(cluster: Any, ns: str, pod: str, path: Path) -> Iterator[Path]:
    """Follow the pod's log into `path` (it outlives the pod) and print its tail after."""
    with path.open("wb") as out:
        follower = subprocess.Popen([str(kubectl_path()), "--kubeconfig",
                                     str(cluster.kubeconfig), "-n", ns, "logs", "-f", pod],
                                    stdout=out, stderr=subprocess.STDOUT)
    try:
        yield path
    finally:
        follower.terminate()
        follower.wait(10)
        print(f"{pod} log {path}:\n" + "\n".join(
            path.read_text(errors="replace").splitlines()[-25:]))


def final_tracks(s3: S3Settings, guild: str, meeting: str) -> dict[str | None, np.ndarray]:
    """The promoted MP3 tracks of a meeting, decoded: {user id (None: the mix): int16
    (n, 2) at 48 kHz} (the final manifest names them)."""
    store = ObjectStore(s3)
    manifest = FinalManifest.model_validate(store.get_json(
        MeetingLayout("recordings", guild, meeting).final_manifest_key))
    return {t.user_id: decode_file(store.get_bytes(t.key)) for t in manifest.tracks
            if t.format == "mp3"}


async def start_session(cluster: Any, s3: S3Settings, info: dict[str, Any],
                        members: list[discord.Client], name: str, chunk_seconds: int
                        ) -> tuple[str, list[Any]]:
    """A `source: discord` RecordingSession `name` in a fresh `dsc-*` namespace (with the
    bot token's Secret) for the local Discord's voice channel; returns once the recorder's
    bot is in the channel: (namespace, the channel as each member's client sees it)."""
    ns = f"dsc-{secrets.token_hex(3)}"
    prepare_namespace(cluster.kubeconfig, ns, s3)
    kube(cluster, "-n", ns, "create", "secret", "generic", "voicetrack-discord",
         f"--from-literal=token={info['bot_token']}")
    voice_id, bot_id = int(info["voice_channel_id"]), int(info["application_id"])
    kube(cluster, "apply", "-f", "-", input=json.dumps({
        "apiVersion": "voicetrack.dev/v1alpha1", "kind": "RecordingSession",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"guildId": info["guild_id"], "channelId": str(voice_id),
                 "chunkSeconds": chunk_seconds, "source": {"type": "discord"}}}))
    channels = [c.get_channel(voice_id) for c in members]
    assert all(isinstance(c, discord.VoiceChannel) for c in channels)
    await until("the recorder's bot in the voice channel",
                lambda: bot_id in channels[0].voice_states, 120)  # type: ignore[union-attr]
    return ns, channels


async def recorded_frames(cluster: Any, ns: str, users: list[str]) -> dict[str, int]:
    """Frames per user id in the namespace's RecordingChunks (their specs' `frames`)."""
    listed = json.loads((await asyncio.to_thread(
        kube, cluster, "-n", ns, "get", "recchunk", "-o", "json")).stdout)["items"]
    recorded = {u: 0 for u in users}
    for item in listed:
        for track in item["spec"]["tracks"]:
            recorded[track["userId"]] = recorded.get(track["userId"], 0) + track["frames"]
    return recorded


async def delete_and_wait_promoted(cluster: Any, ns: str, name: str) -> str:
    """Delete the session and wait until its deletion (the promotion) is done; returns its
    meeting id."""
    meeting = str((await session_status(cluster, ns, name))["meetingId"])
    await asyncio.to_thread(kube, cluster, "-n", ns, "delete", "recsess", name,
                            "--wait=false")
    await until("promotion", lambda: session_gone(cluster, ns, name), 240, every_s=1)
    return meeting


async def recording_rows(database_url: str, meeting: str) -> list[tuple[str, str | None]]:
    """The meeting's `recordings` rows as sorted (kind, user id) pairs."""
    svc = RecordingService.from_url(database_url)
    try:
        recs = await svc.get_recordings_for_meeting(meeting)
    finally:
        await svc.close()
    return sorted((str(r.kind), r.user_id) for r in recs)
