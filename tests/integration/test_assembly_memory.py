"""The assembly's memory does not grow with the session: piece objects are fetched a few
ahead per track and released once written (`assembly.fetched_in_order`).

Before, promotion fetched every piece of every track at once and held them all until the
end: the pieces of a 4 h meeting of 5 speakers (~1.4 GB at 128 kbit/s) exceed the
promotion Job's 768 MiB limit, so the Job was OOM-killed and re-run forever. The test
counts the piece bytes alive at once (each piece object the store returns is tracked
until it is freed) with the look-ahead set to 2, on the session of
`test_transcoder_pieces.py` (14 pieces per track).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from tests.integration.test_transcoder_pieces import LAYOUT, _store, record
from voicetrack.manifests import PieceManifest
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_transcoder import assembly
from voicetrack_transcoder.live import assemble_live
from voicetrack_transcoder.promote import promote

pytestmark = pytest.mark.integration

AHEAD = 2


class Alive:
    """Bytes of piece objects not yet freed: now and at most."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.lock = threading.Lock()

    def track(self, get_bytes: Callable[..., bytes]) -> Callable[..., bytes]:
        alive = self

        class Piece(bytes):
            def __del__(self) -> None:
                with alive.lock:
                    alive.now -= len(self)

        def get(key: str, limit: int | None = None) -> bytes:
            data = get_bytes(key, limit=limit)
            if "/piece-" not in key:
                return data
            piece = Piece(data)
            with self.lock:
                self.now += len(piece)
                self.peak = max(self.peak, self.now)
            return piece

        return get


@pytest.fixture(scope="module")
def recorded(s3_server: S3Settings) -> ObjectStore:
    store = _store(s3_server)
    record(store, LAYOUT)
    return store


@pytest.fixture
def alive(recorded: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[Alive]:
    monkeypatch.setattr(assembly, "PREFETCH_PIECES", AHEAD)
    counter = Alive()
    monkeypatch.setattr(recorded, "get_bytes", counter.track(recorded.get_bytes))
    yield counter


def piece_sizes(store: ObjectStore) -> dict[str, list[int]]:
    """Bytes of each piece object, by track."""
    sizes: dict[str, list[int]] = {}
    for key in sorted(store.list_keys(LAYOUT.outputs_root)):
        if key.endswith("/piece.json"):
            for t in PieceManifest.model_validate(store.get_json(key)).tracks:
                sizes.setdefault(t.track, []).append(t.bytes)
    return sizes


def test_promotion_holds_a_few_pieces_per_track_not_all(recorded: ObjectStore,
                                                        alive: Alive) -> None:
    sizes = piece_sizes(recorded)
    total = sum(map(sum, sizes.values()))
    largest = max(map(max, sizes.values()))
    manifest = promote(recorded, LAYOUT.promotion_plan_key)
    bound = (AHEAD + 1) * len(sizes) * largest
    print(f"pieces {sum(map(len, sizes.values()))} of {len(sizes)} tracks, {total} bytes; "
          f"alive at most {alive.peak} bytes (bound {bound})")
    assert manifest.assembly == "incremental", manifest.fallback_reason
    assert min(map(len, sizes.values())) > 2 * (AHEAD + 1)
    assert 0 < alive.peak <= bound < total


def test_live_assembly_holds_a_few_pieces_not_a_whole_track(recorded: ObjectStore,
                                                            alive: Alive) -> None:
    sizes = piece_sizes(recorded)
    largest = max(map(max, sizes.values()))
    manifest = assemble_live(recorded, LAYOUT)
    bound = (AHEAD + 1) * largest
    print(f"live: alive at most {alive.peak} bytes (bound {bound}, the smallest track "
          f"{min(map(sum, sizes.values()))})")
    assert manifest is not None
    assert 0 < alive.peak <= bound < min(map(sum, sizes.values()))


def test_large_pieces_are_fetched_fewer_ahead(recorded: ObjectStore, alive: Alive,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The byte budget (`PREFETCH_BYTES`, all tracks together) wins over the count: with a
    budget of one largest piece per track, one piece per track is fetched ahead."""
    sizes = piece_sizes(recorded)
    largest = max(map(max, sizes.values()))
    monkeypatch.setattr(assembly, "PREFETCH_PIECES", 16)
    monkeypatch.setattr(assembly, "PREFETCH_BYTES", largest * len(sizes))
    assert assembly.prefetch_depth(largest, len(sizes)) == 1
    manifest = promote(recorded, LAYOUT.promotion_plan_key)
    bound = 2 * len(sizes) * largest
    print(f"budget of one piece per track: alive at most {alive.peak} bytes (bound {bound})")
    assert manifest.assembly == "incremental", manifest.fallback_reason
    assert 0 < alive.peak <= bound
