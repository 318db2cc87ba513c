"""The custom resources: API names, labels, child names, and typed spec/status models.

One home for the `voicetrack.dev/v1alpha1` contract. The CRD YAML in `crds/` states the same
schema for the API server; tests check the two agree on defaults and ranges.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from voicetrack.audio import Channels

GROUP = "voicetrack.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
SESSION_KIND = "RecordingSession"
SESSION_PLURAL = "recordingsessions"
CHUNK_KIND = "RecordingChunk"
CHUNK_PLURAL = "recordingchunks"
FINALIZER = f"{GROUP}/promote"

LABEL_SESSION = f"{GROUP}/session"
LABEL_COMPONENT = f"{GROUP}/component"
LABEL_CHUNK_INDEX = f"{GROUP}/chunk-index"
LABEL_GUILD = f"{GROUP}/guild"
MANAGED_BY = {"app.kubernetes.io/managed-by": "voicetrack"}

SNOWFLAKE_PATTERN = r"^[0-9]{15,20}$"
MEETING_ID_PATTERN = r"^[A-Za-z0-9]{16}$"
DNS_LABEL_MAX = 63

TranscodeStatus = Literal["queued", "in_progress", "done", "failed"]
OutputFormat = Literal["mp3", "flac", "opus"]
RawFormat = Literal["ogg-opus", "pcm-s16le"]
TRANSCODE_ORDER: dict[str, int] = {"queued": 0, "in_progress": 1, "done": 2, "failed": 2}
"""Forward-only rank of a transcode status: a write may only raise the rank."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_api(self) -> dict:
        """The camelCase JSON form the API server and S3 manifests hold."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# ---------------------------------------------------------------- RecordingSession spec


class FileSpeaker(_Model):
    """One speaker of the `files` source: an audio object played from `offsetMs`."""

    user_id: str = Field(pattern=SNOWFLAKE_PATTERN)
    object_key: str = Field(min_length=1)
    offset_ms: int = Field(default=0, ge=0)
    name: str | None = None


class SourceSpec(_Model):
    type: Literal["discord", "files"] = "discord"
    speakers: list[FileSpeaker] = Field(default_factory=list)


class OutputSpec(_Model):
    formats: list[OutputFormat] = Field(default_factory=lambda: list[OutputFormat](["mp3"]))
    mp3_bitrate: int = Field(default=128, ge=32, le=320)
    """MP3 bitrate in kbit/s."""
    tracks: Literal["perSpeaker", "mixed", "both"] = "both"


class LimitsSpec(_Model):
    max_duration_seconds: int = Field(default=14_400, ge=10)
    max_bytes: int = Field(default=2_000_000_000, ge=1_000_000)


class StorageSpec(_Model):
    bucket: str = Field(default="voicetrack", min_length=3, max_length=63)
    prefix: str = "recordings"
    raw_format: RawFormat = "ogg-opus"


class SessionSpec(_Model):
    """`RecordingSession.spec` (DESIGN.md, "Custom resources")."""

    guild_id: str = Field(pattern=SNOWFLAKE_PATTERN)
    channel_id: str = Field(pattern=SNOWFLAKE_PATTERN)
    meeting_id: str | None = Field(default=None, pattern=MEETING_ID_PATTERN)
    requested_by: str | None = Field(default=None, pattern=SNOWFLAKE_PATTERN)
    chunk_seconds: int = Field(default=10, ge=5, le=300)
    paused: bool = False
    output: OutputSpec = Field(default_factory=OutputSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    transcode_timeout_seconds: int = Field(default=300, ge=10, le=86_400)
    retain_temp_rows: bool = False
    source: SourceSpec = Field(default_factory=SourceSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)

    @field_validator("source")
    @classmethod
    def _files_need_speakers(cls, v: SourceSpec) -> SourceSpec:
        if v.type == "files" and not v.speakers:
            raise ValueError("source.speakers must list at least one speaker for type files")
        return v


# ---------------------------------------------------------------- RecordingChunk spec/status


class Gap(_Model):
    """An interval of session time with no capture, and why: `paused` intervals are cut
    from the output; every other cause becomes digital silence of the exact length."""

    start_ms: int = Field(ge=0)
    end_ms: int = Field(ge=0)
    cause: Literal["paused", "recorder-restart", "chunk-failed", "connection-lost"]


class ChunkTrack(_Model):
    """One speaker's raw track in a chunk. `frames` counts the 20 ms slots that hold a
    received packet (the rest hold the silence frame); `firstMs`/`lastMs` are the session
    times of the first and last received packet; `bytes` and `sha256` are of the raw object."""

    user_id: str
    key: str
    frames: int = Field(ge=0)
    first_ms: int = Field(ge=0)
    last_ms: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    channels: Channels = 2
    """1 when every packet of the track is mono-coded (`voicetrack.audio.opus_channels`):
    both decoded channels are then identical and outputs are mono. 2 (the default, also
    for chunks written before this field existed) otherwise."""


class ChunkSpec(_Model):
    """`RecordingChunk.spec`: one time window `[startMs, endMs)` of one session holding
    the raw track of every speaker who spoke in it. `gap` is the interval between the
    previous chunk's end and this chunk's start, when there is one."""

    session_name: str
    meeting_id: str
    guild_id: str
    index: int = Field(ge=0)
    start_ms: int = Field(ge=0)
    end_ms: int = Field(ge=0)
    raw_format: RawFormat = "ogg-opus"
    gap: Gap | None = None
    tracks: list[ChunkTrack] = Field(default_factory=list)

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


class ChunkOutput(_Model):
    """One transcoded output of one track (`result.json` entry and chunk status entry)."""

    user_id: str
    format: str
    key: str
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    duration_ms: int = Field(ge=0)


# ---------------------------------------------------------------- names


def child_name(session: str, suffix: str) -> str:
    """`<session>-<suffix>` within 63 characters: a long session name is cut and given an
    8-hex-digit hash of the whole name, so the result is deterministic and unique."""
    name = f"{session}-{suffix}"
    if len(name) <= DNS_LABEL_MAX:
        return name
    digest = hashlib.sha256(session.encode()).hexdigest()[:8]
    keep = DNS_LABEL_MAX - len(suffix) - len(digest) - 2
    return f"{session[:keep].rstrip('-')}-{digest}-{suffix}"


def recorder_pod_name(session: str) -> str:
    return child_name(session, "rec")


def transcode_job_name(session: str, index: int) -> str:
    return child_name(session, f"tx-{index:06d}")


def chunk_name(session: str, index: int) -> str:
    return child_name(session, f"chunk-{index:06d}")


def promote_job_name(session: str) -> str:
    return child_name(session, "promote")
