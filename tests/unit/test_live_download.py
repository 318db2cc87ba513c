"""`recordings download --live` (`voicetrack.recordings.live.download_live`) against a
fake store: a track replaced after the wait was spent still gets one fresh read of the
manifest, one track's S3 failure does not stop the others, and a manifest naming a key
outside the meeting's `live/` or an unsafe track name is refused."""

from __future__ import annotations

import asyncio
import copy
import hashlib
from collections.abc import Callable, Generator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.exceptions import HTTPException

from voicetrack.errors import (
    InvalidInputError,
    PreconditionFailed,
    ServiceUnavailable,
    TemporaryFailure,
)
from voicetrack.layout import MeetingLayout, is_track_name
from voicetrack.manifests import LiveManifest
from voicetrack.recordings.live import download_live
from voicetrack_web.access import MeetingView
from voicetrack_web.downloads import _live_track

pytestmark = pytest.mark.unit

GUILD, MEETING = "123456789012345678", "abcdefABCDEF0123"
LAYOUT = MeetingLayout("p", GUILD, MEETING)
A, B = "400000000000000011", "400000000000000012"


class Store:
    """Objects with MD5 ETags, a live manifest, and hooks: `on_get[key]` runs before
    that key's GET; `cut[key]` is raised after the first block of it."""

    def __init__(self) -> None:
        self.objs: dict[str, bytes] = {}
        self.manifest: dict[str, Any] = {}
        self.on_get: dict[str, Callable[[], None]] = {}
        self.cut: dict[str, Exception] = {}
        self.reads = 0

    def put(self, key: str, data: bytes) -> None:
        self.objs[key] = data

    def etag(self, key: str) -> str:
        return hashlib.md5(self.objs[key], usedforsecurity=False).hexdigest()

    def write_manifest(self, tracks: dict[str, str]) -> None:
        """The manifest naming each track (name → key) as its object is now."""
        self.manifest = {
            "toolVersion": "t", "meetingId": MEETING, "durationMs": 1, "recordedMs": 1,
            "pausedMs": 0, "assembly": "incremental", "tracks": [{
                "track": n, "kind": "mixed" if n == "mix" else "speaker",
                "userId": None if n == "mix" else n, "format": "mp3", "key": k,
                "bytes": len(self.objs[k]), "durationMs": 1, "etag": self.etag(k)}
                for n, k in tracks.items()]}

    def get_json(self, key: str) -> Any:
        assert key == LAYOUT.live_manifest_key
        self.reads += 1
        return copy.deepcopy(self.manifest)

    def iter_range(self, key: str, offset: int = 0, etag: str | None = None,
                   part: int = 1 << 20, length: int | None = None,
                   on_headers: Callable[[Mapping[str, str]], None] | None = None
                   ) -> Generator[bytes, None, None]:
        if key in self.on_get:
            self.on_get.pop(key)()
        if etag and etag != self.etag(key):
            raise PreconditionFailed(f"get {key}: PreconditionFailed")
        if on_headers:
            on_headers({})
        data = self.objs[key]
        yield data[:4]
        if key in self.cut:
            raise self.cut[key]
        yield data[4:]


class Reader:
    """What `download_live` uses of a RecordingsReader."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = SimpleNamespace(get_temp_recordings_for_meeting=self._rows)

    async def _rows(self, meeting: str) -> list[Any]:
        return [SimpleNamespace(pcm_path=f"{LAYOUT.chunk_dir(0)}/{A}.opus")]

    async def resolve(self, ref: str) -> Any:
        return SimpleNamespace(live=True, meeting_id=MEETING, guild_id=GUILD,
                               status="recording")


def _live(store: Store, names: list[str], version: bytes = b"v1") -> dict[str, str]:
    keys = {n: LAYOUT.live_key(n, "mp3") for n in names}
    for n, k in keys.items():
        store.put(k, version + b" of track " + n.encode())
    return keys


def _download(store: Store, dest: Path, wait_s: float = 0.2) -> Any:
    return asyncio.run(download_live(Reader(store), MEETING, dest, replaced_wait_s=wait_s,
                                     poll_s=0.02))


def test_a_later_replaced_track_reads_the_manifest_again_after_the_wait_is_spent(
        tmp_path: Path) -> None:
    """A Job died after rewriting A's and B's objects, not the manifest: A waits it out
    and is missed. The next Job writes a manifest while mix is fetched; B's 412 then
    reads the manifest once more and fetches B's new object. Before, B was missed at
    once, "still names the old object", the manifest never read again."""
    store = Store()
    keys = _live(store, [A, "mix", B])
    store.write_manifest(keys)
    for n in (A, B):
        store.put(keys[n], b"v2 of track " + n.encode())
    store.on_get[keys["mix"]] = lambda: store.write_manifest(keys)
    with pytest.raises(TemporaryFailure) as caught:
        _download(store, tmp_path)
    said = str(caught.value)
    assert f"{MEETING}-live-{A}.mp3: replaced by a newer live Job" in said
    assert f"{MEETING}-live-{B}.mp3" not in said.split("(not saved")[0]
    assert (tmp_path / f"{MEETING}-live-{B}.mp3").read_bytes() == b"v2 of track " + B.encode()
    assert f"saved and verified: {MEETING}-live-mix.mp3, {MEETING}-live-{B}.mp3" in said


def test_after_the_wait_a_replaced_track_is_missed_on_a_true_reread(
        tmp_path: Path) -> None:
    """No newer manifest at all: B's 412 reads it once more (no wait) and says so."""
    store = Store()
    keys = _live(store, [A, B])
    store.write_manifest(keys)
    for n in (A, B):
        store.put(keys[n], b"v2 of track " + n.encode())
    reads: list[int] = []
    store.on_get[keys[B]] = lambda: reads.append(store.reads)
    with pytest.raises(TemporaryFailure) as caught:
        _download(store, tmp_path, wait_s=0.1)
    assert store.reads == reads[0] + 1  # exactly one fresh read for B
    b_said = str(caught.value).split(f"{MEETING}-live-{B}.mp3: ")[1]
    assert "still names the old object" in b_said and "read again at once" in b_said


@pytest.mark.parametrize("failure", [
    ServiceUnavailable("get k: S3 server error: IncompleteRead(4 bytes read, 9 more "
                       "expected)"),
    TemporaryFailure("get k: S3 endpoint unreachable")])
def test_one_tracks_s3_failure_misses_that_track_only(tmp_path: Path,
                                                      failure: Exception) -> None:
    """Before, a TemporaryFailure mid-track aborted the download: B was not attempted,
    the saved mix not named. Now A is missed with the reason, no file or `.part` is left
    for it, and the others are saved."""
    store = Store()
    keys = _live(store, ["mix", A, B])
    store.write_manifest(keys)
    store.cut[keys[A]] = failure
    with pytest.raises(TemporaryFailure) as caught:
        _download(store, tmp_path)
    said = str(caught.value)
    assert f"{MEETING}-live-{A}.mp3: not fetched: {failure}" in said
    assert f"saved and verified: {MEETING}-live-mix.mp3, {MEETING}-live-{B}.mp3" in said
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{MEETING}-live-mix.mp3", f"{MEETING}-live-{B}.mp3"])


@pytest.mark.parametrize(("name", "key"), [
    ("mix", "p/999999999999999999/ZZZZZZZZZZZZZZZZ/final/mix.flac"),  # another meeting's
    ("mix", f"{LAYOUT.live_root}../final/mix.flac"),
    ("mix", f"{LAYOUT.live_root}parts/mix.head"),
    ("../../evil", LAYOUT.live_key("mix", "mp3")),
    ("a/b", LAYOUT.live_key("mix", "mp3")),
])
def test_a_track_outside_live_or_with_an_unsafe_name_is_refused(
        tmp_path: Path, name: str, key: str) -> None:
    """Before, the key was fetched as given and the name put in a path unchecked (a `/`
    an OSError aborting everything, `..` a file outside DEST)."""
    store = Store()
    store.put(key, b"v1 of something")
    store.write_manifest({name: key})
    with pytest.raises(InvalidInputError, match=r"track .* is refused") as caught:
        _download(store, tmp_path / "dest")
    assert repr(name) in str(caught.value) and repr(key) in str(caught.value)
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())


def test_layout_checks_track_names_and_live_keys() -> None:
    """One home for both (`voicetrack.layout`), used by the web page and the CLI."""
    assert is_track_name(A) and is_track_name("mix")
    assert not any(map(is_track_name, ["", ".", "..", "a/b", "a b", "x" * 65, "é"]))
    assert LAYOUT.holds_live_track(LAYOUT.live_key(A, "mp3"))
    assert not LAYOUT.holds_live_track(LAYOUT.live_root)
    assert not LAYOUT.holds_live_track(f"{LAYOUT.live_root}..")
    assert not LAYOUT.holds_live_track(LAYOUT.live_part_key("mix", "head"))
    assert not LAYOUT.holds_live_track(MeetingLayout("q", GUILD, MEETING).live_key(A, "mp3"))


@pytest.mark.parametrize(("key", "served"), [
    (LAYOUT.live_key("mix", "mp3"), True),
    (f"{LAYOUT.live_root}../final/mix.flac", False),
    (LAYOUT.live_part_key("mix", "head"), False),  # a live Job's part, not a track
    ("p/999999999999999999/ZZZZZZZZZZZZZZZZ/live/mix.mp3", False)])
def test_the_web_page_makes_the_same_key_check(key: str, served: bool) -> None:
    """The page's live track lookup uses `MeetingLayout.holds_live_track` too."""
    store = Store()
    store.put(key, b"v1 of mix")
    store.write_manifest({"mix": key})
    view = MeetingView(MEETING, GUILD, "1", "recording", datetime(2026, 1, 1, tzinfo=UTC),
                       None, root=LAYOUT.root)
    manifest = LiveManifest.model_validate(store.manifest)
    if served:
        assert _live_track(manifest, view, "mix").key == key
    else:
        with pytest.raises(HTTPException):
            _live_track(manifest, view, "mix")


def test_s3_failing_for_two_tracks_in_a_row_stops_the_download(tmp_path: Path) -> None:
    """S3 away mid-download: after two tracks in a row fail, the rest are missed untried,
    each named; before, every track paid the client's time-outs one after another (a
    blackholed S3: ~20 s a track). A failure between successes does not count on."""
    store = Store()
    names = ["mix", A, B, "400000000000000013", "400000000000000014"]
    keys = _live(store, names)
    store.write_manifest(keys)
    tried: list[str] = []
    for n in names[1:]:
        store.on_get[keys[n]] = lambda n=n: tried.append(n)  # type: ignore[misc]
        store.cut[keys[n]] = TemporaryFailure("get k: S3 endpoint unreachable")
    with pytest.raises(TemporaryFailure) as caught:
        _download(store, tmp_path)
    said = str(caught.value)
    assert tried == [A, B]
    for n in names[3:]:
        assert f"{MEETING}-live-{n}.mp3: not tried: S3 failed for the 2 tracks before it" \
            in said
    assert f"saved and verified: {MEETING}-live-mix.mp3" in said
