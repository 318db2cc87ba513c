"""JSON manifests exchanged through S3: the transcoder's `result.json`, the operator's
promotion plan, and the promotion's final `manifest.json`. One home for each shape."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from voicetrack.audio import Channels
from voicetrack.resources import ChunkOutput, ChunkSpec, Gap, _Model


class TranscodeResult(_Model):
    """`chunks/<index>/result.json`: every output of one chunk's transcode."""

    tool_version: str
    index: int
    outputs: list[ChunkOutput] = Field(default_factory=list)


class PromotionPlan(_Model):
    """`promotion.json`, written by the operator for the promotion Job.

    `chunks` are the chunks to promote (transcoded `done`), in index order; `gaps` every
    interval of `[0, sessionEndMs)` not covered by a promoted chunk, with its cause.
    Paused gaps are cut from the output; all others become silence. `speakers` fixes the
    order of the per-speaker tracks."""

    guild_id: str
    meeting_id: str
    prefix: str
    session_end_ms: int = Field(ge=0)
    speakers: list[str]
    chunks: list[ChunkSpec]
    gaps: list[Gap] = Field(default_factory=list)
    tracks: Literal["perSpeaker", "mixed", "both"] = "both"
    formats: list[str] = Field(default_factory=lambda: ["mp3"])
    mp3_bitrate: int = 128


class FinalTrack(_Model):
    """One final track: a speaker's (`userId` set, kind `speaker`) or the mix."""

    track: str
    kind: Literal["speaker", "mixed"]
    user_id: str | None = None
    format: str
    key: str
    bytes: int
    sha256: str
    duration_ms: int
    channels: Channels = 2
    """1 for a speaker whose packets were all mono-coded (and the mix when every speaker's
    were), else 2."""
    peaks_key: str | None = None
    overview_key: str | None = None


class FinalManifest(_Model):
    """`final/manifest.json`: what promotion wrote, for the operator to verify and record."""

    tool_version: str
    meeting_id: str
    duration_ms: int
    recorded_ms: int
    paused_ms: int
    tracks: list[FinalTrack]
    gaps: list[Gap] = Field(default_factory=list)
