"""`voicetrack-transcoder chunk` on real SeaweedFS and real ffmpeg, run as the Job runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.audio_helpers import (
    Session,
    Speaker,
    best_correlation,
    decode_file,
    file_channels,
    upload_chunks,
)
from voicetrack.audio import ms_to_samples
from voicetrack.chunkspec import ChunkSpec
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import TranscodeResult
from voicetrack.objectstore import ObjectStore, sha256_hex
from voicetrack.oggopus import decode_ogg_opus, encode_ogg_opus
from voicetrack.termination import EXIT_TEMPORARY
from voicetrack_transcoder.opusdec import OpusDecoder

pytestmark = pytest.mark.integration

TRANSCODER = str(Path(sys.executable).parent / "voicetrack-transcoder")
LAYOUT = MeetingLayout("recordings", "123456789012345678", "AbCdEfGhIjKlMnOp")
SPEAKERS = [
    Speaker("111111111111111111", 180, talks=[(2100, 3500), (4200, 5000)], markers=[3800]),
    Speaker("222222222222222222", 260, talks=[(2000, 4600)], markers=[4800],
            mono_coded=True),
]
WINDOW = (2000, 5000)


def run_chunk(store: ObjectStore, chunk: ChunkSpec | str, formats: str = "mp3,flac,opus",
              termination_log: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **store.settings.env()}
    if termination_log is not None:
        env["VOICETRACK_TERMINATION_LOG"] = str(termination_log)
    spec = chunk if isinstance(chunk, str) else json.dumps(chunk.to_api())
    return subprocess.run([TRANSCODER, "chunk", "--chunk-json", spec, "--prefix",
                           LAYOUT.prefix, "--formats", formats, "--mp3-bitrate", "96"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def snapshot(store: ObjectStore) -> dict[str, str]:
    """Every object of the bucket → its sha256."""
    return {k: sha256_hex(store.get_bytes(k)) for k in store.list_keys("")}


@pytest.fixture
def session(object_store: ObjectStore) -> Session:
    return upload_chunks(object_store, LAYOUT, SPEAKERS, [WINDOW], 6000, [])


def test_outputs_and_result_json(object_store: ObjectStore, session: Session) -> None:
    chunk = session.chunks[0]
    proc = run_chunk(object_store, chunk)
    assert proc.returncode == 0, proc.stderr
    assert object_store.settings.secret_key not in proc.stdout + proc.stderr

    result = TranscodeResult.model_validate(object_store.get_json(LAYOUT.result_key(0)))
    assert result.index == 0 and result.tool_version.startswith("voicetrack-transcoder/")
    assert {(o.user_id, o.format) for o in result.outputs} == {
        (s.user_id, f) for s in SPEAKERS for f in ("mp3", "flac", "opus")}
    for out in result.outputs:
        assert out.key == LAYOUT.chunk_output_key(0, out.user_id, out.format)
        data = object_store.get_bytes(out.key)
        assert (len(data), sha256_hex(data)) == (out.bytes, out.sha256)
        assert out.duration_ms == 3000
        pcm = decode_file(data)
        assert pcm.shape[0] == ms_to_samples(3000), out.format

        track = next(t for t in chunk.tracks if t.user_id == out.user_id)
        packets = decode_ogg_opus(object_store.get_bytes(track.key)).packets
        mono = track.channels == 1
        assert file_channels(data) == (2 if out.format == "opus" or not mono else 1)
        if out.format == "flac":
            # lossless: exactly what libopus decodes from the raw track (a mono-coded
            # track with a mono decoder)
            exact = np.repeat(OpusDecoder(1).decode(packets), 2, axis=1) if mono \
                else OpusDecoder().decode(packets)
            assert np.array_equal(pcm, exact)
        elif out.format == "opus":  # the received packets remuxed: the same stream
            assert np.array_equal(pcm, OpusDecoder().decode(packets))
        else:
            source = session.sources[out.user_id][ms_to_samples(2000):ms_to_samples(5000)]
            corr, lag = best_correlation(source, pcm, ms_to_samples(20))
            assert corr >= 0.99 and abs(lag) <= ms_to_samples(20), (corr, lag)


def test_same_chunk_twice_gives_one_set_of_outputs(object_store: ObjectStore,
                                                    session: Session) -> None:
    assert run_chunk(object_store, session.chunks[0]).returncode == 0
    first = snapshot(object_store)
    assert run_chunk(object_store, session.chunks[0]).returncode == 0
    assert snapshot(object_store) == first
    assert len([k for k in first if k.startswith(LAYOUT.chunk_dir(0))]) == 2
    # six tracks, result.json, two frozen raw tracks and the frozen spec
    assert len([k for k in first if k.startswith(LAYOUT.output_dir(0))]) == 6 + 1 + 2 + 1


Spoiler = Callable[[ObjectStore, ChunkSpec], ChunkSpec]
"""Damages a chunk's second raw track in the store; returns the spec the recorder would
have written for what is now stored."""


def _missing(store: ObjectStore, chunk: ChunkSpec) -> ChunkSpec:
    store.delete_keys([chunk.tracks[1].key])
    return chunk


def _empty(store: ObjectStore, chunk: ChunkSpec) -> ChunkSpec:
    track = chunk.tracks[1]
    store.put_bytes(track.key, b"")
    return chunk.model_copy(update={"tracks": [chunk.tracks[0], track.model_copy(
        update={"bytes": 0, "sha256": sha256_hex(b"")})]})


def _truncated(store: ObjectStore, chunk: ChunkSpec) -> ChunkSpec:
    track = chunk.tracks[1]
    data = store.get_bytes(track.key)[:-300]
    store.put_bytes(track.key, data)
    return chunk.model_copy(update={"tracks": [chunk.tracks[0], track.model_copy(
        update={"bytes": len(data), "sha256": sha256_hex(data)})]})


def _short(store: ObjectStore, chunk: ChunkSpec) -> ChunkSpec:
    track = chunk.tracks[1]
    data = encode_ogg_opus(decode_ogg_opus(store.get_bytes(track.key)).packets[:-1])
    store.put_bytes(track.key, data)
    return chunk.model_copy(update={"tracks": [chunk.tracks[0], track.model_copy(
        update={"bytes": len(data), "sha256": sha256_hex(data)})]})


def _wrong_hash(store: ObjectStore, chunk: ChunkSpec) -> ChunkSpec:
    track = chunk.tracks[1].model_copy(update={"sha256": "0" * 64})
    return chunk.model_copy(update={"tracks": [chunk.tracks[0], track]})


@pytest.mark.parametrize(("spoil", "reason"), [
    (_missing, "is missing"), (_empty, "is empty"), (_truncated, "not a valid raw Ogg Opus"),
    (_short, "149 packets for a window of 150 slots"), (_wrong_hash, "does not match"),
])
def test_bad_input_exits_2_and_writes_nothing(object_store: ObjectStore, session: Session,
                                              spoil: Spoiler, reason: str,
                                              tmp_path: Path) -> None:
    chunk = spoil(object_store, session.chunks[0])
    before = snapshot(object_store)
    proc = run_chunk(object_store, chunk, termination_log=tmp_path / "termination-log")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and reason in lines[0], lines
    assert chunk.tracks[1].key in lines[0]
    # the same reason is the container's termination message (what the operator reads)
    assert (tmp_path / "termination-log").read_text().strip() == lines[0][len("error: "):]
    assert snapshot(object_store) == before  # raw kept as it was, nothing written


def test_malformed_arguments_exit_2(object_store: ObjectStore, session: Session) -> None:
    proc = run_chunk(object_store, '{"index": 0}')
    assert proc.returncode == 2 and proc.stderr.startswith("error: bad --chunk-json")
    proc = run_chunk(object_store, session.chunks[0], formats="mp3,wav")
    assert proc.returncode == 2 and "wav" in proc.stderr


def test_unreachable_s3_exits_75(session: Session, object_store: ObjectStore) -> None:
    """S3 away: exit 75 (EX_TEMPFAIL), a Job the operator makes again without counting it
    against the chunk (was exit 1, counted like a crash since transcode failures have a
    limit); the reason on stderr, no secret in it."""
    env = {**os.environ, **object_store.settings.env(),
           "VOICETRACK_S3_ENDPOINT": "http://127.0.0.1:9"}
    proc = subprocess.run([TRANSCODER, "chunk", "--chunk-json",
                           json.dumps(session.chunks[0].to_api()), "--prefix", LAYOUT.prefix],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == EXIT_TEMPORARY and proc.stderr.startswith(
        "error: ServiceUnavailable: ")
    assert object_store.settings.secret_key not in proc.stderr


def test_pcm_raw_chunk(object_store: ObjectStore) -> None:
    session = upload_chunks(object_store, LAYOUT, SPEAKERS, [WINDOW], 6000, [],
                            raw_format="pcm-s16le")
    proc = run_chunk(object_store, session.chunks[0], formats="flac,mp3")
    assert proc.returncode == 0, proc.stderr
    result = TranscodeResult.model_validate(object_store.get_json(LAYOUT.result_key(0)))
    for out in result.outputs:
        pcm = decode_file(object_store.get_bytes(out.key))
        source = session.sources[out.user_id][ms_to_samples(2000):ms_to_samples(5000)]
        assert out.duration_ms == 3000 and pcm.shape == source.shape
        if out.format == "flac":
            assert np.array_equal(pcm, source)
