"""A zip bundle whose client leaves mid-build keeps its slot until the build has stopped,
on the real web process (`voicetrack-web` under uvicorn), a real promotion in SeaweedFS,
real ffmpeg and SQLite: the build's ffmpeg is stopped within seconds, its directory is
deleted, and only then may the same user start another bundle (before, the slot was
freed at once while ffmpeg went on rendering into a deleted directory, so leaving and
asking again ran builds without bound)."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.audio_helpers import Speaker, promote_plan, upload_chunks
from tests.integration.test_recordings_cli import (  # noqa: F401 (the fixture)
    BIN,
    DONE,
    GUILD,
    A,
    B,
    world,
)
from tests.integration.test_web_bundles import (  # noqa: F401 (the fixtures)
    discord_info,
    log_in,
    post_and_never_read,
    web,
)
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest, PromotionPlan
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_local.web import WebProcess
from voicetrack_web.settings import MAX_BUNDLES

pytestmark = pytest.mark.integration

TALK_MS = 10_000
"""The speakers talk in the first TALK_MS (ms) only ..."""
SESSION_MS = 2 * 3600 * 1000
"""... of a 2 h session: every FLAC of the bundle is 2 h long (ffmpeg pads the silence),
so each render takes seconds, long enough to leave in the middle of one."""
STOP_S = 3.0
"""How soon (s) after the client left its build must be over (ffmpeg gone, directory
deleted): the web checks every 0.5 s, ffmpeg gets 2 s after SIGTERM."""
WORK_GLOB = "voicetrack-web-zip-*"


@pytest.fixture(scope="module")
def promoted(s3_server: S3Settings) -> tuple[ObjectStore, MeetingLayout, FinalManifest]:
    """Meeting DONE promoted for real as FLAC: A and B talk for TALK_MS of SESSION_MS."""
    store = ObjectStore(dataclasses.replace(s3_server, bucket=f"vt-web-stop-{os.getpid()}"))
    store.ensure_bucket()
    layout = MeetingLayout("recordings", GUILD, DONE)
    speakers = [Speaker(A, 180, talks=[(0, TALK_MS)]), Speaker(B, 260, talks=[(0, TALK_MS)])]
    session = upload_chunks(store, layout, speakers, [(0, TALK_MS)], TALK_MS, [])
    plan = PromotionPlan(guild_id=GUILD, meeting_id=DONE, prefix=layout.prefix,
                         session_end_ms=SESSION_MS, speakers=[A, B], chunks=session.chunks,
                         formats=["flac"])
    return store, layout, promote_plan(store, layout, plan, 600)


def ffmpeg_builds(tmp: Path) -> dict[int, str]:
    """Every running (not zombie) ffmpeg descended from this test process: pid -> the
    bundle directory (under `tmp`) it writes into, "" when none."""
    parents: dict[int, int] = {}
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            tail = stat[stat.rindex(")") + 2:].split()
            parents[int(entry.name)] = int(tail[1])
            if stat[stat.index("(") + 1:stat.rindex(")")] == "ffmpeg" and tail[0] != "Z":
                cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
                match = re.search(re.escape(str(tmp)) + r"/(voicetrack-web-zip-[^/\x00]+)", cmd)
                found[int(entry.name)] = match.group(1) if match else ""
        except (OSError, ValueError, IndexError):
            continue
    me = os.getpid()

    def mine(pid: int) -> bool:
        for _ in range(64):
            pid = parents.get(pid, 0)
            if pid == me:
                return True
            if pid <= 1:
                return False
        return False

    return {pid: work for pid, work in found.items() if mine(pid)}


@dataclasses.dataclass
class Sample:
    """What was alive at `at` (monotonic s): bundle directories, ffmpeg pid -> its dir."""

    at: float
    dirs: frozenset[str]
    ffmpeg: dict[int, str]

    @property
    def builds(self) -> set[str]:
        """The builds alive: a directory on disk or an ffmpeg writing into one (an ffmpeg
        whose command line could not be read, as while it exits, names none)."""
        return set(self.dirs) | {work for work in self.ffmpeg.values() if work}

    @property
    def idle(self) -> bool:
        """No build alive and no ffmpeg at all."""
        return not self.dirs and not self.ffmpeg


class BuildWatch:
    """Samples the web's bundle directories and ffmpeg processes every 20 ms."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.samples: list[Sample] = []
        self._seen: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> Sample:
        """What is alive now; an ffmpeg keeps the directory it was seen writing into."""
        ffmpeg = ffmpeg_builds(self.tmp)
        for pid, work in ffmpeg.items():
            if work:
                self._seen.setdefault(pid, work)
            ffmpeg[pid] = self._seen.get(pid, work)
        return Sample(time.monotonic(), frozenset(p.name for p in self.tmp.glob(WORK_GLOB)),
                      ffmpeg)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            time.sleep(0.02)

    def wait(self, what: str, ok: Any, timeout_s: float) -> Sample:
        """The first sample (taken from now on) for which `ok(sample)` holds."""
        deadline = time.monotonic() + timeout_s
        while True:
            s = self.sample()
            if ok(s):
                return s
            assert time.monotonic() < deadline, f"not {what} within {timeout_s} s: {s}"
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def outcome(sock: socket.socket, watch: BuildWatch, old: str, timeout_s: float
            ) -> int | Sample:
    """What became of the bundle request on `sock`: the HTTP status the server answered
    it with, or the first sample with a bundle directory other than `old` (the request
    took a slot: its build started)."""
    sock.settimeout(0.05)
    deadline = time.monotonic() + timeout_s
    while True:
        s = watch.sample()
        if s.dirs - {old}:
            return s
        try:
            head = sock.recv(64)
        except TimeoutError:
            assert time.monotonic() < deadline, f"no answer, no build in {timeout_s} s: {s}"
            continue
        match = re.match(rb"HTTP/1\.1 (\d{3})", head)
        assert match, head
        return int(match.group(1))


def test_a_left_bundle_holds_its_slot_until_its_build_stopped(
        web: WebProcess, discord_info: dict[str, Any],  # noqa: F811 (imported fixtures)
        tmp_path: Path) -> None:
    alice, bob, carol = (log_in(web, discord_info, u) for u in ("alice", "bob", "carol"))
    tmp = tmp_path / "tmp"
    watch = BuildWatch(tmp)
    socks: list[socket.socket] = []
    try:
        first = post_and_never_read(web, *alice)
        rendering = watch.wait("rendering", lambda s: len(s.dirs) == 1
                                == len(s.ffmpeg) and set(s.ffmpeg.values()) == s.dirs, 60)
        (old,) = rendering.ffmpeg.values()
        assert rendering.dirs == {old}, rendering
        first.close()
        left = time.monotonic()
        # (a) alice asks again and again: refused while her first build stops, accepted
        # (a build started: a new directory) only once it is over
        refused, accepted = 0, None
        while accepted is None:
            assert time.monotonic() - left < 30, "alice's second bundle never started"
            sock = post_and_never_read(web, *alice)
            socks.append(sock)
            answer = outcome(sock, watch, old, 30)
            if isinstance(answer, Sample):
                accepted = answer
            else:
                assert answer == 429, answer
                refused += 1
                sock.close()
                time.sleep(0.1)
        twice = [s for s in watch.samples if len(s.builds) > 1]
        assert not twice, (f"two builds of alice at once (slot freed before the first "
                           f"stopped; refused {refused}x): {twice[0]}")
        # (b) the first build was over within STOP_S of the client leaving
        gone = next((s for s in watch.samples if s.at > left and old not in s.builds), None)
        took = (gone.at if gone else time.monotonic()) - left
        assert gone is not None and took < STOP_S, (
            f"alice's left build still alive {took:.1f} s after she left (refused "
            f"{refused}x): {watch.samples[-1]}")
        print(f"the left build stopped {took:.2f} s after its client left; alice refused "
              f"{refused}x meanwhile, accepted {accepted.at - left:.2f} s after she left")
        for s in socks:
            s.close()
        watch.wait("all stopped", lambda s: s.idle, STOP_S + 1)
        # every slot is free again: bob and carol both get one (MAX_BUNDLES of them)
        assert MAX_BUNDLES == 2
        socks = [post_and_never_read(web, *bob), post_and_never_read(web, *carol)]
        watch.wait("two builds", lambda s: len(s.dirs) == MAX_BUNDLES, 10)
        for s in socks:
            s.close()
        watch.wait("all stopped", lambda s: s.idle, STOP_S + 1)
    finally:
        for s in socks:
            s.close()
        watch.stop()
    assert not ffmpeg_builds(tmp) and not list(tmp.glob(WORK_GLOB))
    assert not list(tmp.glob("**/*.flac")), "a render left behind"
