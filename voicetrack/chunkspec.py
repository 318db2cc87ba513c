"""The RecordingChunk models: one window of a session's audio (`ChunkSpec`, written by the
recorder) and its transcode (`ChunkStatus`, written by the operator), with the gaps between
windows and the members not recorded in it.

Part of the `voicetrack.dev/v1alpha1` contract whose API names, session models and shared
patterns live in `voicetrack.resources`; the CRD YAML (`voicetrack/crds/recordingchunks.yaml`)
states the same schema, and `tests/unit/test_crd_models.py` checks the two agree.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from voicetrack.audio import FRAME_SAMPLES, RAW_EXTENSIONS, Channels
from voicetrack.resources import (
    DNS_LABEL_MAX,
    FRAME_GRID_MS,
    KEY_MAX,
    MAX_CHUNK_INDEX,
    MAX_SESSION_MS,
    MAX_TRACKS,
    MEETING_ID_PATTERN,
    RAW_KEY_PATTERN,
    SESSION_NAME_PATTERN,
    SHA256_PATTERN,
    SNOWFLAKE_PATTERN,
    RawFormat,
    Snowflake,
    TranscodeStatus,
    _Model,
)


class Gap(_Model):
    """An interval of session time with no capture, and why: `paused` intervals are cut
    from the output; every other cause becomes digital silence of the exact length."""

    start_ms: int = Field(ge=0, le=MAX_SESSION_MS, multiple_of=FRAME_GRID_MS)
    end_ms: int = Field(ge=0, le=MAX_SESSION_MS, multiple_of=FRAME_GRID_MS)
    cause: Literal["paused", "recorder-restart", "chunk-failed", "connection-lost"]

    @model_validator(mode="after")
    def _ends_after_start(self) -> Gap:
        if self.end_ms <= self.start_ms:
            raise ValueError("gap.endMs must be greater than gap.startMs")
        return self


class ChunkTrack(_Model):
    """One speaker's raw track in a chunk. `frames` counts the 20 ms slots that hold a
    received packet (the rest hold the silence frame); `firstMs`/`lastMs` are the session
    times of the first and last received packet; `bytes` and `sha256` are of the raw object."""

    user_id: str = Field(pattern=SNOWFLAKE_PATTERN, max_length=20)
    key: str = Field(pattern=RAW_KEY_PATTERN, max_length=KEY_MAX)
    frames: int = Field(ge=0)
    first_ms: int = Field(ge=0)
    last_ms: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_PATTERN)
    channels: Channels = 2
    """1 when every packet of the track is mono-coded (`voicetrack.audio.opus_channels`):
    both decoded channels are then identical and outputs are mono. 2 (the default, also
    for chunks written before this field existed) otherwise."""
    phase_samples: int = Field(default=0, ge=0, le=FRAME_SAMPLES - 1)
    """The track's audio belongs this many samples (48 kHz, 0..959) after the 20 ms slots
    it is stored in: its true session time is slot start + `phaseSamples`. The recorder
    places each Discord stream on the slot grid rounded down and keeps the sub-slot rest
    here (`voicetrack_recorder.discord.timeline`); promotion delays the track by it
    (`voicetrack_transcoder.streams.SpeakerStream`). 0 for chunks written before this
    field existed and for the files source; 0 is left out of the JSON form (`to_api`),
    so such chunks stay readable by an operator or transcoder of before the field (their
    models forbid unknown fields) while an upgrade rolls out."""

    @model_serializer(mode="wrap")
    def _phase_only_when_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if self.phase_samples == 0:
            out.pop("phaseSamples", None)
            out.pop("phase_samples", None)
        return out


class OptOut(_Model):
    """A member the recorder did not record, as it stood at the end of a chunk: from
    `sinceMs` (session ms; their packets from then on were dropped before decryption) by
    `via` `role` (a role in `spec.optOutRoleIds`) or `user` (`spec.optOutUserIds`)."""

    user_id: Snowflake
    since_ms: int = Field(ge=0, le=MAX_SESSION_MS)
    via: Literal["role", "user"]


SPEC_MAX_BYTES = 1024**2
"""The largest `chunk.json` (a ChunkSpec as JSON, bytes) the operator and the transcoder
read from S3: the recorder writes it, so it is untrusted, and a legitimate one (at most
`MAX_TRACKS` tracks with keys of at most `KEY_MAX` characters, and the opt-out lists) is
a few hundred KB at most."""

CONDITION_REASON_PATTERN = r"^[A-Z][A-Za-z0-9]*$"
"""A Kubernetes condition reason: UpperCamelCase, letters and digits (API conventions,
"Typical status properties"; `metav1.Condition.reason`)."""
CONDITION_REASON_MAX = 64
DEGRADED_MESSAGE_MAX = 1024


class ConsentDegraded(_Model):
    """Why the recorder applied the session's consent with less than it asked for while
    it sealed a chunk (`ChunkSpec.consentDegraded`); the operator shows the newest one as
    the session's `ConsentDegraded` condition (`reason`, `message` verbatim). Today the
    one cause is `MembersIntentRefused`: Discord closed the gateway with 4014 on an
    IDENTIFY asking GUILD_MEMBERS, so role opt-outs are read from voice states, failing
    closed where a member's roles are unknown (docs/consent.md)."""

    reason: str = Field(pattern=CONDITION_REASON_PATTERN, max_length=CONDITION_REASON_MAX)
    message: str = Field(min_length=1, max_length=DEGRADED_MESSAGE_MAX)


class ChunkSpec(_Model):
    """`RecordingChunk.spec`: one time window `[startMs, endMs)` of one session holding
    the raw track of every speaker who spoke in it. `gap` is the interval between the
    previous chunk's end and this chunk's start, when there is one."""

    session_name: str = Field(pattern=SESSION_NAME_PATTERN, max_length=DNS_LABEL_MAX)
    meeting_id: str = Field(pattern=MEETING_ID_PATTERN, max_length=16)
    guild_id: str = Field(pattern=SNOWFLAKE_PATTERN, max_length=20)
    index: int = Field(ge=0, le=MAX_CHUNK_INDEX)
    start_ms: int = Field(ge=0, le=MAX_SESSION_MS, multiple_of=FRAME_GRID_MS)
    end_ms: int = Field(ge=0, le=MAX_SESSION_MS, multiple_of=FRAME_GRID_MS)
    raw_format: RawFormat = "ogg-opus"
    gap: Gap | None = None
    tracks: list[ChunkTrack] = Field(default_factory=list, max_length=MAX_TRACKS)
    opted_out: list[OptOut] = Field(default_factory=list, max_length=MAX_TRACKS)
    """Members opted out at the chunk's end who were in the channel during the session
    (consent, `SessionSpec`); the promotion's source for exclusion and consent.json."""
    consent_degraded: ConsentDegraded | None = None
    """Set on every chunk the recorder seals while its consent runs degraded (e.g. the
    GUILD_MEMBERS intent refused); None (absent in the API) for a normal chunk."""

    @model_validator(mode="after")
    def _window_and_keys(self) -> ChunkSpec:
        """The CRD's CEL rules: a non-empty window, and each track's key in this chunk's
        own directory, named after its speaker, with the raw format's extension."""
        if self.end_ms <= self.start_ms:
            raise ValueError("endMs must be greater than startMs")
        for i, t in enumerate(self.tracks):
            tail = (f"{self.guild_id}/{self.meeting_id}/chunks/{self.index:06d}/"
                    f"{t.user_id}.{RAW_EXTENSIONS[self.raw_format]}")
            if t.key != tail and not t.key.endswith("/" + tail):
                raise ValueError(f"tracks[{i}].key must end with {tail!r} (this chunk's "
                                 f"guild, meeting, index, user and raw format), got {t.key!r}")
        since = {o.user_id: o.since_ms for o in self.opted_out}
        if len(since) != len(self.opted_out):
            raise ValueError("optedOut must list each user once")
        for i, t in enumerate(self.tracks):
            if t.user_id in since and t.frames and t.last_ms >= since[t.user_id]:
                raise ValueError(f"tracks[{i}] has packets of user {t.user_id} at or after "
                                 f"their opt-out (optedOut sinceMs {since[t.user_id]})")
        return self

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


class ChunkOutput(_Model):
    """One transcoded output of one track (`result.json` entry and chunk status entry)."""

    user_id: str
    format: str
    key: str
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_PATTERN)
    duration_ms: int = Field(ge=0)


class ChunkStatus(_Model):
    """`RecordingChunk.status`, written by the operator only: the transcode's state, its
    Job, the outputs read from `result.json` once done, the reason once failed. The SQL
    mirror (`temp_recordings`) is written from this, never from anything else."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    transcode_status: TranscodeStatus = TranscodeStatus.QUEUED
    track_count: int | None = Field(default=None, ge=0)
    job_name: str | None = None
    tracks: list[ChunkOutput] = Field(default_factory=list)
    error: str | None = None
    refused: str | None = None
    """Why the operator refused the chunk as not its session's (then `failed`, never
    transcoded, mirrored or promoted, its raw data left in place); None otherwise."""

    def primary_output(self, user_id: str) -> ChunkOutput | None:
        """The output that stands for `user_id`'s track in SQL: its MP3, else the first."""
        outs = [o for o in self.tracks if o.user_id == user_id]
        return next((o for o in outs if o.format == "mp3"), outs[0] if outs else None)
