"""The incremental live assembly (`liveextend.py`) against other writers on real SeaweedFS:
two live Jobs composing the same track at once (a deleted Job's pod still running), a
source rewritten shorter under a compose, and a Job killed mid-compose whose incomplete
multipart upload must not outlive `live/` being emptied (withhold, collection)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
from pathlib import Path

import pytest

from tests.integration.test_transcoder_live_incremental import BIG, REF, A, _synthetic_pieces
from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack.manifests import LiveManifest
from voicetrack.objectstore import ObjectStore, S3Settings, sha256_hex
from voicetrack_transcoder.live import assemble_live
from voicetrack_transcoder.livestate import load_state

pytestmark = pytest.mark.integration

MiB = 1 << 20


def _store(s3: S3Settings, name: str) -> ObjectStore:
    store = ObjectStore(dataclasses.replace(s3, bucket=f"{name}-{os.getpid()}"))
    store.ensure_bucket()
    return store


class _Interleaved(ObjectStore):
    """An ObjectStore whose uploads of track A's composed parts and compose of A's live
    object wait for their turn in `order` (`<thread name>:head|tail|compose|composed`,
    the last once the compose returned)."""

    def __init__(self, settings: S3Settings, order: list[str]) -> None:
        super().__init__(settings)
        self.order = order
        self.turn = threading.Condition()
        self.parts = f"{BIG.live_root}parts/{A}."

    def _gate(self, op: str) -> None:
        me = f"{threading.current_thread().name}:{op}"
        with self.turn:
            self.turn.wait_for(lambda: not self.order or self.order[0] == me, timeout=30)
            if self.order and self.order[0] == me:
                self.order.pop(0)
            self.turn.notify_all()

    def put_file(self, key: str, path: str, content_type: str = "application/octet-stream"
                 ) -> str:
        for op in ("head", "tail"):
            if key.startswith(self.parts + op):
                self._gate(op)
        return super().put_file(key, path, content_type)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream"
                  ) -> str:
        if key.startswith(self.parts + "head"):
            self._gate("head")
        return super().put_bytes(key, data, content_type)

    def compose(self, key: str, parts: list[tuple[str, int, int, str | None]],
                content_type: str = "application/octet-stream") -> str:
        if key != BIG.live_key(A, "mp3"):
            return super().compose(key, parts, content_type)
        self._gate("compose")
        try:
            return super().compose(key, parts, content_type)
        finally:
            self._gate("composed")


def test_two_jobs_composing_one_track_at_once_never_mix_their_parts(
        s3_server: S3Settings) -> None:
    """Jobs X (2 chunks) and Y (3 chunks) extend the same state, interleaved X:head,
    Y:head, Y:tail, X:tail, X:compose (to its end), Y:compose. X's track is the full
    assembly's bytes (before, both used `live/parts/<track>.head`: X composed Y's head,
    whose Info frame counts Y's frames, over its own body, same size, wrong sha256); Y,
    whose copy source X rewrote, fails with TemporaryFailure; no part is left."""
    base = _store(s3_server, "vt-liverace")
    with tempfile.TemporaryDirectory() as tmp:
        _synthetic_pieces(base, Path(tmp))
    assert assemble_live(base, BIG, chunks=1) is not None
    store = _Interleaved(base.settings,
                         ["X:head", "Y:head", "Y:tail", "X:tail", "X:compose", "X:composed",
                          "Y:compose"])
    out: dict[str, object] = {}

    def job(chunks: int) -> None:
        try:
            out[threading.current_thread().name] = assemble_live(store, BIG, chunks=chunks)
        except Exception as err:
            out[threading.current_thread().name] = err

    jobs = [threading.Thread(target=job, args=(2,), name="X"),
            threading.Thread(target=job, args=(3,), name="Y")]
    for t in jobs:
        t.start()
    for t in jobs:
        t.join(120)
    assert not store.order, store.order
    live = out["X"]
    assert isinstance(live, LiveManifest), repr(out)
    track = next(t for t in live.tracks if t.track == A)
    data = base.get_bytes(track.key)
    assert isinstance(out["Y"], TemporaryFailure), out
    assert not base.list_keys(f"{BIG.live_root}parts/")
    base.delete_prefix(REF.live_root)
    ref = assemble_live(base, REF, chunks=2)
    assert ref is not None
    want = next(t for t in ref.tracks if t.track == A)
    assert sha256_hex(data) == sha256_hex(base.get_bytes(want.key))
    assert (len(data), base.stat(track.key)[1]) == (want.bytes, track.etag)


def test_compose_of_a_source_rewritten_shorter_raises_invalid_input(
        s3_server: S3Settings) -> None:
    """A source another Job rewrote shorter than the range asked for: InvalidInputError,
    as documented (minio's bare ValueError before, which `liveextend._write` does not
    catch; it turns InvalidInputError into TemporaryFailure), and the key left as is."""
    store = _store(s3_server, "vt-liveshrink")
    store.put_bytes("k", os.urandom(11 * MiB))
    _, etag = store.stat("k")
    store.put_bytes("head", os.urandom(5 * MiB))
    store.put_bytes("k", os.urandom(6 * MiB))  # rewritten shorter by another Job
    with pytest.raises(InvalidInputError, match="compose k"):
        store.compose("k", [("head", 0, 5 * MiB, None), ("k", 5 * MiB, 6 * MiB, etag)])
    assert store.size("k") == 6 * MiB


class _Overwritten(ObjectStore):
    """An ObjectStore where another writer puts bytes of the same size at track A's live
    key right after this one uploads it whole."""

    def put_file(self, key: str, path: str, content_type: str = "application/octet-stream"
                 ) -> str:
        etag = super().put_file(key, path, content_type)
        if key == BIG.live_key(A, "mp3"):
            self.put_bytes(key, os.urandom(os.path.getsize(path)), content_type)
        return etag


def test_a_full_assembly_records_the_etag_of_what_it_wrote(s3_server: S3Settings) -> None:
    """Another writer replaces a live track with bytes of the same size right after the
    full assembly uploads it: the state holds the ETag of the upload, so the next Job
    sees the track changed and assembles from chunk 0 (before, a stat after the upload
    recorded the other writer's ETag and the next Job extended its bytes)."""
    base = _store(s3_server, "vt-liveetag")
    with tempfile.TemporaryDirectory() as tmp:
        _synthetic_pieces(base, Path(tmp))
    assert assemble_live(_Overwritten(base.settings), BIG, chunks=1) is not None
    reason = load_state(base, BIG)
    assert isinstance(reason, str) and "changed" in reason, reason
    live = assemble_live(base, BIG, chunks=2)
    assert live is not None
    track = next(t for t in live.tracks if t.track == A)
    data = base.get_bytes(track.key)
    assert (len(data), base.stat(track.key)[1]) == (track.bytes, track.etag)


def test_a_state_whose_last_piece_is_not_that_chunks_piece_json_is_not_extended(
        s3_server: S3Settings) -> None:
    """`live/state.json` rewritten with a last piece that is not chunk 0's `piece.json`
    (every other check still passes): the state is refused, and the next Job assembles
    from chunk 0 (before, it was trusted)."""
    store = _store(s3_server, "vt-livelast")
    with tempfile.TemporaryDirectory() as tmp:
        _synthetic_pieces(store, Path(tmp))
    assert assemble_live(store, BIG, chunks=1) is not None
    assert not isinstance(load_state(store, BIG), str)
    state = store.get_json(BIG.live_state_key)
    state["last_piece"]["chunk_end_ms"] += 24
    store.put_json(BIG.live_state_key, state)
    reason = load_state(store, BIG)
    assert isinstance(reason, str) and "piece.json" in reason, reason
    live = assemble_live(store, BIG, chunks=2)
    store.delete_prefix(REF.live_root)
    ref = assemble_live(store, REF, chunks=2)
    assert live is not None and ref is not None
    assert [(t.bytes, sha256_hex(store.get_bytes(t.key))) for t in live.tracks] == \
        [(t.bytes, sha256_hex(store.get_bytes(t.key))) for t in ref.tracks]
