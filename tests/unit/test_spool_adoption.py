"""A restarted recorder re-adopts what its previous run left in the spool (audio-loss fault).

The spool lives in the pod's emptyDir, which outlives the container. `Spool.__init__`
deleted it at start: the chunks a crashed run had sealed but not uploaded (S3 or the API
server away) became a `recorder-restart` gap though their files were on disk. Now each
chunk's spec is written next to its files once they are complete, and a new `Spool` on the
same root adopts the chunks whose files match their spec, of the same session and meeting;
`ChunkUploader.adopt` queues those that continue the session's RecordingChunks.

Real files in a temporary directory and real libopus; the uploader's Kubernetes client and
object store point at a loopback port nothing listens on (adoption touches neither).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from kubernetes import client

from tests.unit.recorder_rig import LAYOUT, chunk_of, sine_packet, unreachable
from voicetrack.chunkspec import ChunkSpec
from voicetrack.layout import MeetingLayout
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.spool import Spool, SpooledChunk, SpoolFull
from voicetrack_recorder.uploader import ChunkUploader, read_acked

pytestmark = pytest.mark.unit

SESSION = "standup"
SPEC_FILE = "chunk.json"
"""A spooled chunk's spec, next to its files (`voicetrack_recorder.spool.SPEC_FILE`)."""


def spool_with(root: Path, count: int, raw_format: str = "ogg-opus",
               layout: MeetingLayout = LAYOUT) -> tuple[Spool, list[SpooledChunk]]:
    """A spool at `root` holding chunks 0..count-1 (50 slots of a tone each)."""
    spool = Spool(root, 1 << 30, layout, SESSION, raw_format)  # type: ignore[arg-type]
    packet = sine_packet()
    return spool, [spool.add(chunk_of(i, 50, packet)) for i in range(count)]


@pytest.mark.parametrize("raw_format", ["ogg-opus", "pcm-s16le"])
def test_a_restarted_spool_adopts_complete_chunks_with_their_exact_specs(
        tmp_path: Path, raw_format: str) -> None:
    """Before: the new Spool deleted the directory; nothing was adopted."""
    first, spooled = spool_with(tmp_path / "s", 3, raw_format)
    again = Spool(tmp_path / "s", 1 << 30, LAYOUT, SESSION, raw_format)  # type: ignore[arg-type]
    assert [a.spec for a in again.adopted] == [s.spec for s in spooled]
    assert [a.files for a in again.adopted] == [s.files for s in spooled]
    assert [a.size for a in again.adopted] == [s.size for s in spooled]
    on_disk = sum(p.stat().st_size for p in (tmp_path / "s").rglob("*") if p.is_file())
    assert again.used == first.used == sum(s.size for s in spooled) == on_disk > 0
    assert all(os.path.exists(p) for a in again.adopted for p in a.files.values())
    written = json.loads((Path(spooled[1].directory) / SPEC_FILE).read_text())
    assert ChunkSpec.model_validate(written) == spooled[1].spec
    assert not list(Path(spooled[1].directory).glob("*.tmp"))


def test_incomplete_corrupt_and_foreign_chunks_are_removed_not_adopted(
        tmp_path: Path) -> None:
    """Chunk 1 truncated, chunk 2 one byte flipped (same size: only the sha256 tells),
    chunk 3 without its spec (the run ended while writing it), chunk 4 of a namesake
    session (another meeting id), chunk 5 with a spec that is not JSON and a stray file:
    only chunk 0 is adopted, the rest is removed, and `used` counts chunk 0 alone."""
    root = tmp_path / "s"
    _, spooled = spool_with(root, 4)
    (path1,) = spooled[1].files.values()
    with open(path1, "r+b") as f:
        f.truncate(os.path.getsize(path1) - 10)
    (path2,) = spooled[2].files.values()
    data = bytearray(Path(path2).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(path2).write_bytes(bytes(data))
    (Path(spooled[3].directory) / SPEC_FILE).unlink()
    other = MeetingLayout(prefix="recordings", guild_id=LAYOUT.guild_id,
                          meeting_id="0123456789abcdef")
    namesake = Spool(tmp_path / "namesake", 1 << 30, other, SESSION)
    foreign = namesake.add(chunk_of(4, 50, sine_packet()))
    shutil.move(foreign.directory, root / "000004")
    (root / "000005").mkdir()
    (root / "000005" / SPEC_FILE).write_text('{"sessionName": "standup", "ind')  # not JSON
    (root / "stray.txt").write_text("x")

    again = Spool(root, 1 << 30, LAYOUT, SESSION)

    assert [a.spec for a in again.adopted] == [spooled[0].spec]
    assert again.used == spooled[0].size
    assert sorted(p.name for p in root.iterdir()) == ["000000"]


def test_a_spec_naming_another_index_or_format_is_not_adopted(tmp_path: Path) -> None:
    """A spec must describe its own directory: chunk 1's spec copied into chunk 0's
    directory (index mismatch) and a PCM chunk found by an Ogg Opus run are removed."""
    root = tmp_path / "s"
    _, spooled = spool_with(root, 2)
    shutil.copy(Path(spooled[1].directory) / SPEC_FILE, Path(spooled[0].directory) / SPEC_FILE)
    assert [a.index for a in Spool(root, 1 << 30, LAYOUT, SESSION).adopted] == [1]
    spool_with(tmp_path / "p", 1, "pcm-s16le")
    assert Spool(tmp_path / "p", 1 << 30, LAYOUT, SESSION).adopted == []
    assert not any((tmp_path / "p").iterdir())


def test_adopted_chunks_count_against_the_bound(tmp_path: Path) -> None:
    """A bound lowered below what was left keeps the adopted chunks and refuses new ones
    until they are gone."""
    root = tmp_path / "s"
    _, spooled = spool_with(root, 2)
    small = Spool(root, spooled[0].size + spooled[1].size + 2000, LAYOUT, SESSION)
    assert small.used == spooled[0].size + spooled[1].size
    with pytest.raises(SpoolFull, match="spool holds"):
        small.add(chunk_of(2, 50, sine_packet()))
    small.remove(small.adopted[0])
    assert small.used == spooled[1].size
    small.add(chunk_of(2, 50, sine_packet()))


def uploader_for(spool: Spool, tmp_path: Path) -> ChunkUploader:
    kube = RecorderKube(client.ApiClient(client.Configuration(host=f"http://{unreachable()}")),
                        "rec", SESSION)
    store = ObjectStore(S3Settings(endpoint=f"http://{unreachable()}", access_key="a",
                                   secret_key="b"))
    return ChunkUploader(store, kube, spool, "uid-1", str(tmp_path / "acks.json"))


def test_the_uploader_queues_what_follows_the_api_chunks(tmp_path: Path) -> None:
    """The API holds chunks 0 and 1 with the spooled specs (the run ended between their
    create and the removal of their files): they are done (removed, acknowledged once, not
    uploaded again); 2 and 3 are queued in index order."""
    root = tmp_path / "s"
    _, spooled = spool_with(root, 4)
    spool = Spool(root, 1 << 30, LAYOUT, SESSION)
    uploader = uploader_for(spool, tmp_path)
    queue = uploader.adopt([spooled[0].spec, spooled[1].spec])
    assert [q.spec for q in queue] == [spooled[2].spec, spooled[3].spec]
    assert not Path(spooled[0].directory).exists() and not Path(spooled[1].directory).exists()
    assert uploader.stats.acked == read_acked(uploader.ack_file) == [0, 1]
    assert uploader.stats.chunks == 0  # nothing uploaded by this run
    assert spool.used == spooled[2].size + spooled[3].size
    assert spool.adopted == [] and uploader.adopt([]) == []  # taken once


def test_the_uploader_discards_what_does_not_follow(tmp_path: Path) -> None:
    """Chunk 1's files are gone (corrupt, removed by the spool): chunks 2 and 3 do not
    follow chunk 0 and are removed (their windows fall in the restart gap); a chunk whose
    index the API holds with another spec is removed too."""
    root = tmp_path / "s"
    _, spooled = spool_with(root, 4)
    shutil.rmtree(spooled[1].directory)
    spool = Spool(root, 1 << 30, LAYOUT, SESSION)
    assert [a.index for a in spool.adopted] == [0, 2, 3]
    other0 = spooled[0].spec.model_copy(update={"end_ms": spooled[0].spec.end_ms - 20})
    assert uploader_for(spool, tmp_path).adopt([other0]) == []
    assert spool.used == 0 and not any(root.iterdir())


def test_with_no_api_chunk_the_queue_starts_at_index_0(tmp_path: Path) -> None:
    root = tmp_path / "s"
    _, spooled = spool_with(root, 2)
    queue = uploader_for(Spool(root, 1 << 30, LAYOUT, SESSION), tmp_path).adopt([])
    assert [q.spec for q in queue] == [s.spec for s in spooled]
