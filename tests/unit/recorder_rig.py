"""The recorder's unit-test rig: one home for what its tests build alike.

A recorder or uploader of session `rec/standup` on a real Spool under a test's temporary
directory, with real libopus packets; its Kubernetes client and object store point at a
loopback port nothing listens on (spooling and sealing touch neither; an upload fails as
against an outage)."""

from __future__ import annotations

import math
import socket
import struct
from pathlib import Path
from typing import Any

from discord import opus
from kubernetes import client

from voicetrack.audio import FRAME_SAMPLES
from voicetrack.layout import MeetingLayout
from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack.resources import SessionSpec
from voicetrack_recorder.chunker import SealedChunk, SealedTrack
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.recorder import Recorder
from voicetrack_recorder.spool import Spool
from voicetrack_recorder.uploader import ChunkUploader

GUILD = "300000000000000001"
LAYOUT = MeetingLayout(prefix="recordings", guild_id=GUILD, meeting_id="abcdef0123456789")


def sine_packet() -> bytes:
    """One real 20 ms Opus packet of a 440 Hz tone (libopus, stereo)."""
    assert opus.is_loaded() or opus._load_default()
    pcm = b"".join(struct.pack("<hh", v, v) for v in (
        int(8000 * math.sin(2 * math.pi * 440 * i / 48_000)) for i in range(FRAME_SAMPLES)))
    return opus.Encoder().encode(pcm, FRAME_SAMPLES)


def chunk_of(index: int, slots: int, packet: bytes,
             user: str = "200000000000000001") -> SealedChunk:
    """Sealed chunk `index` of `slots` 20 ms slots (windows back to back from 0), one
    speaker `user` sending `packet` in every slot."""
    return SealedChunk(index=index, start_ms=index * slots * 20,
                       end_ms=(index + 1) * slots * 20, gap=None,
                       tracks=[SealedTrack(user_id=user, packets=[packet] * slots,
                                           frames=slots, first_ms=index * slots * 20,
                                           last_ms=((index + 1) * slots - 1) * 20)])


def unreachable() -> str:
    """`127.0.0.1:<port>` of a loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def uploader_at(tmp_path: Path, spool_bytes: int = 1 << 30) -> ChunkUploader:
    """An uploader of session `rec/standup` (uid `uid-1`) on a spool of at most
    `spool_bytes` under `tmp_path/s`, its ack file `tmp_path/acks.json`; the Kubernetes
    client (`uploader.kube`) and the object store unreachable."""
    kube = RecorderKube(client.ApiClient(client.Configuration(host=f"http://{unreachable()}")),
                        "rec", "standup")
    store = ObjectStore(S3Settings(endpoint=f"http://{unreachable()}", access_key="a",
                                   secret_key="b"))
    return ChunkUploader(store, kube, Spool(tmp_path / "s", spool_bytes, LAYOUT, "standup"),
                         "uid-1", str(tmp_path / "acks.json"))


def recorder_at(tmp_path: Path, clock: SessionClock, spool_bytes: int = 1 << 30,
                **spec: Any) -> Recorder:
    """A recorder on `uploader_at(tmp_path, spool_bytes)` with session clock `clock`; its
    SessionSpec is guild and channel GUILD with the fields of `spec` (camelCase, as in the
    API: `chunkSeconds=5`)."""
    uploader = uploader_at(tmp_path, spool_bytes)
    return Recorder(uploader.kube, uploader, SessionSpec.model_validate(
        {"guildId": GUILD, "channelId": GUILD, **spec}), clock)
