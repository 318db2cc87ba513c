"""JSON manifests exchanged through S3: the transcoder's `result.json`, the operator's
promotion plan, and the promotion's final `manifest.json`. One home for each shape."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import ConfigDict, Field, model_validator

from voicetrack.audio import Channels
from voicetrack.chunkspec import ChunkOutput, ChunkSpec, ConsentDegraded, Gap
from voicetrack.resources import _Model


class TranscodeResult(_Model):
    """`outputs/<index>/result.json`: every output of one chunk's transcode."""

    tool_version: str
    index: int
    outputs: list[ChunkOutput] = Field(default_factory=list)


class RecordedMember(_Model):
    """A member whose audio is in the final tracks: `firstMs` is their first received
    packet in output time (ms, as `final/timeline.json`: paused time cut, t = 0 at the
    first chunk's start)."""

    user_id: str
    first_ms: int = Field(ge=0)


class ConsentEntry(_Model):
    """A member the recorder reported opted out (a chunk's `optedOut`, or
    `spec.optOutUserIds` at deletion for a member with audio): `sinceMs` (output ms, as
    `RecordedMember.firstMs`) and `via` of their first opt-out; `excluded` whether they
    were opted out at stop, so that none of their audio is in any final object."""

    user_id: str
    since_ms: int = Field(ge=0)
    via: Literal["role", "user"]
    excluded: bool


class DegradedConsent(ConsentDegraded):
    """`consentDegraded` of `final/consent.json`: role opt-outs were not enforced as asked
    while part of the meeting recorded (the Discord Server Members Intent refused or not
    requested; the session's `ConsentDegraded` condition, docs/consent.md). `reason` and
    `message` are the newest degraded chunk's (`ChunkSpec.consentDegraded`, verbatim);
    `sinceMs`/`untilMs` (output ms, as `RecordedMember.firstMs`) the start of the first
    and the end of the last chunk recorded that way (chunks in between may have been
    recorded normally, e.g. around a recorder restart that was granted the intent)."""

    since_ms: int = Field(ge=0)
    until_ms: int = Field(ge=0)


class ConsentRecord(_Model):
    """`final/consent.json` (issue 12, "Per-speaker consent"): who was recorded and who
    opted out, and when, and `consentDegraded` (`DegradedConsent`) when role opt-outs were
    not enforced as asked while it recorded (absent otherwise, and in records written
    before it existed). Written by every promotion, also when nobody opted out (then
    `optedOut` is empty). Built by the operator (`voicetrack_operator.plan`), written by
    the promotion Job."""

    meeting_id: str
    recorded: list[RecordedMember] = Field(default_factory=list)
    opted_out: list[ConsentEntry] = Field(default_factory=list)
    consent_degraded: DegradedConsent | None = None


class PromotionPlan(_Model):
    """`promotion.json`, written by the operator for the promotion Job.

    `chunks` are the chunks to promote (transcoded `done`), in index order; `gaps` every
    interval of `[0, sessionEndMs)` not covered by a promoted chunk, with its cause.
    Paused gaps are cut from the output; all others become silence. `speakers` fixes the
    order of the per-speaker tracks.

    Consent: `excluded` are the members opted out at stop who were in the channel; their
    tracks are already left out of `chunks` and `speakers`, and a piece holding their
    audio must not be used (`voicetrack_transcoder.promote`). `consent` is written as
    `final/consent.json`; None only in a plan from an operator that predates consent
    (then no consent.json is written)."""

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
    excluded: list[str] = Field(default_factory=list)
    consent: ConsentRecord | None = None


class _Track(_Model):
    """What a final and a live track (`FinalTrack`, `LiveTrack`) both say: a speaker's
    (`userId` set, kind `speaker`) or the mix, at `key`, `bytes` long, `durationMs` of
    audio."""

    track: str
    kind: Literal["speaker", "mixed"]
    user_id: str | None = None
    format: str
    key: str
    bytes: int
    duration_ms: int
    channels: Channels = 2
    """1 for a speaker whose packets were all mono-coded (and the mix when every speaker's
    were), else 2."""
    peaks_key: str | None = None
    overview_key: str | None = None


class FinalTrack(_Track):
    """One final track (`final/manifest.json`): `sha256` (hex) of the whole object,
    always; the operator records it and downloads are verified against it."""

    sha256: str


ETAG_PATTERN = r"^[\x21\x23-\x7e]+$"
"""An ETag without its quotes: RFC 7232 §2.3 `etagc` less obs-text, at least one."""


class LiveTrack(_Track):
    """One track of the audio so far (`live/manifest.json`), replaced every live interval.

    `etag`: the S3 ETag of the object the live Job wrote (its own PUT's or server-side
    compose's, `voicetrack_transcoder.liveextend`); a reader checks what it fetched by
    `bytes` and that ETag (the object is the one this manifest describes, not the next
    Job's or a damaged one). `sha256`: absent in what live Jobs write now (a live Job
    extends the last object without reading it, and SHA-256 cannot be continued past the
    header it rewrites); kept, and then checked, in live manifests written before. Absent
    `etag`: only in those older manifests. An empty string is refused for either (it
    would be no check at all); a `LiveManifest` refuses a track with neither. `etag` is
    what goes between the quotes of an RFC 7232 §2.3 opaque-tag (If-Match): one or more
    of %x21 / %x23-7E (no quote, space, control character or obs-text), as
    `ObjectStore.put_file`/`compose`/`stat` return it (the quotes S3, SeaweedFS and MinIO
    send stripped); anything else (a quoted ETag would make If-Match `""x""`, CR/LF
    an HTTP client error) fails validation naming `etag`."""

    # revalidated when a manifest is made of it: the ETag is assigned after the track is
    model_config = ConfigDict(revalidate_instances="always")

    sha256: str | None = Field(default=None, min_length=1)
    etag: str | None = Field(default=None, pattern=ETAG_PATTERN)


TrackT = TypeVar("TrackT", FinalTrack, LiveTrack)


class _Manifest(_Model, Generic[TrackT]):
    """What the final and the live manifest (`FinalManifest`, `LiveManifest`) both hold;
    only their tracks differ (`FinalTrack`, `LiveTrack`)."""

    tool_version: str
    meeting_id: str
    duration_ms: int
    recorded_ms: int
    paused_ms: int
    tracks: list[TrackT]
    gaps: list[Gap] = Field(default_factory=list)
    timeline_key: str | None = None
    consent_key: str | None = None
    assembly: Literal["incremental", "full"] | None = None
    fallback_reason: str | None = None
    concealed_frames: dict[str, int] = Field(default_factory=dict)


class FinalManifest(_Manifest[FinalTrack]):
    """`final/manifest.json`: what promotion wrote, for the operator to verify and record.

    `assembly` says how the tracks were made: `incremental` (from the chunks' pieces,
    `voicetrack_transcoder.pieces`) or `full` (every chunk decoded and encoded again);
    `fallbackReason` says why pieces were not used when some existed. `timelineKey` is the
    speech timeline (`SpeechTimeline`), `consentKey` the consent record (`ConsentRecord`;
    None when the plan carried none). `concealedFrames`: user id → 20 ms slots of that
    speaker whose packet libopus rejected and promotion concealed (absent speakers: none;
    `voicetrack_transcoder.opusdec`). Every track has its `sha256`."""


class LiveManifest(_Manifest[LiveTrack]):
    """`live/manifest.json`: the audio so far of a live session (`assembly`
    `incremental`, `voicetrack_transcoder.live`), replaced every live interval: its
    tracks (`LiveTrack`) carry their S3 ETag and no sha256 (older ones: a sha256 and no
    ETag). Never the final tracks: promotion makes those from the pieces. Validation
    fails (ValueError, a pydantic ValidationError) naming a track that has neither an
    `etag` nor a `sha256`: what a reader fetched of it could not be checked. (A live Job
    makes each `LiveTrack` before its object is written, so the track alone may lack the
    ETag until then; the manifest is made after, and revalidates each track then: an ETag
    set afterwards by assignment is checked against its pattern before the manifest is
    written, not first by every reader.)"""

    @model_validator(mode="after")
    def _every_track_checkable(self) -> LiveManifest:
        for t in self.tracks:
            if not t.etag and not t.sha256:
                raise ValueError(
                    f"live track {t.track!r} ({t.key}) has neither an etag nor a sha256: "
                    "what is fetched of it could not be checked")
        return self


class FlacPiece(_Model):
    """A final track's FLAC piece in a chunk (`outputs/<index>/piece-<track>.flac`): the
    FLAC frames (RFC 9639 §9, no `fLaC`, no metadata) of the piece's whole unit, `samples`
    per channel in `frames` frames, already numbered as variable-blocksize frames at
    their place in the final track (`voicetrack_transcoder.flacframes`), `bytes` long,
    `sha256` of them. `minBlock`/`maxBlock`: the smallest and largest block size of
    every frame but the last (0 for a single frame), `lastBlock` the last one's."""

    key: str
    samples: int = Field(ge=0)
    frames: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str
    min_block: int = Field(ge=0)
    max_block: int = Field(ge=0)
    last_block: int = Field(ge=0)


class PieceTrack(_Model):
    """One final track's piece in a chunk (`outputs/<index>/piece-<track>.<ext>`).

    For MP3: `frames` whole MPEG-1 Layer III frames (1152 samples each, ISO/IEC 11172-3),
    no tag, `bytes` long, `sha256` of them. `peaks`: 8-bit min/max pairs per 480-sample
    pixel over the piece's unit (the audiowaveform layout, `waveform.py`). `flac`: the
    same unit as FLAC frames (`FlacPiece`), when the session asked for FLAC; absent in
    pieces made without it (and before FLAC pieces existed): a plan asking for FLAC is
    then promoted in full."""

    track: str
    channels: Channels
    key: str
    frames: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str
    peaks: list[int] = Field(default_factory=list)
    flac: FlacPiece | None = None


class PieceManifest(_Model):
    """`outputs/<index>/piece.json`: what chunk `index` contributes to the final tracks.

    Times are ms; `originMs`/`chunkEndMs` in session time, `unitStartMs`/`unitEndMs` in
    output time (paused time cut, t = 0 at the first chunk's start): the unit is the
    output time from the end of the chunk before (index - 1) to this chunk's end, gap
    silence included. `firstFrame`..`endFrame` are the global MP3 frame indices the piece
    owns (see `voicetrack_transcoder.mp3grid`). `pausedMs` is the paused time cut up to
    this chunk (the chain the next chunk's piece continues); `stereoSeen` whether any
    speaker so far sent stereo-coded packets (the mix's channel count). `sources` are
    `userId:sha256` of the raw tracks decoded (this chunk's, and the previous chunk's in
    `prevSources` when `prevUsed`), so assembly can prove the piece was made from what the
    plan promotes. `speech` holds, per speaker, raw voice-activity runs `[startMs, endMs)`
    in output time (before smoothing)."""

    tool_version: str
    index: int
    format: str = "mp3"
    mp3_bitrate: int
    origin_ms: int
    paused_ms: int
    chunk_end_ms: int
    stereo_seen: bool
    unit_start_ms: int
    unit_end_ms: int
    first_frame: int
    end_frame: int
    sources: list[str]
    prev_used: bool
    prev_sources: list[str] = Field(default_factory=list)
    tracks: list[PieceTrack]
    speech: dict[str, list[list[int]]] = Field(default_factory=dict)


class PlacedSource(_Model):
    """A chunk placed in output time (ms) as a render used it: its window
    `[outStartMs, outEndMs)` and the raw tracks decoded (`userId:sha256`)."""

    index: int
    out_start_ms: int
    out_end_ms: int
    sources: list[str]


class SilentHeadTrack(_Model):
    """One final track's head in a silent unit: `frames` MPEG-1 Layer III frames (no
    tag), base64 in `mp3`, `sha256` of the bytes; `peaks` as in PieceTrack over the
    head's output time."""

    track: str
    channels: Channels
    frames: int = Field(ge=0)
    sha256: str
    mp3: str
    peaks: list[int] = Field(default_factory=list)


class SilentHeadManifest(_Model):
    """`outputs/<index>/head-after.json`: the head of a unit of digital silence right after
    chunk `index` (a window nobody spoke in, a failed chunk's gap, the time up to stop),
    made by chunk `index`'s own transcoder Job before anyone knows what follows
    (`voicetrack_transcoder.silenthead`). Output time in ms: the unit starts at
    `unitStartMs` (the chunk's end); the head is rendered from `fromMs` to `headMs` and
    its frames are the global frames `[firstFrame, headEndFrame)`; in a unit that ends
    after the head, every later frame is LAME's silent frame. `placed`: the chunks the
    render decoded, all before the unit (their order and place, so assembly can prove the
    head was made from what the plan promotes). Tracks of speakers not in `tracks` are
    silent frames over the whole unit."""

    tool_version: str
    index: int
    mp3_bitrate: int
    unit_start_ms: int
    from_ms: int
    head_ms: int
    first_frame: int
    head_end_frame: int
    placed: list[PlacedSource]
    tracks: list[SilentHeadTrack]
    speech: dict[str, list[list[int]]] = Field(default_factory=dict)


class SpeechTimeline(_Model):
    """`final/timeline.json`: when each speaker spoke, as `[startMs, endMs)` intervals in
    output time (the final tracks' time: paused time cut, t = 0 at capture start).

    Made from the decoded audio: a 20 ms slot is voiced when its RMS over both channels
    exceeds `thresholdDbfs` (no packet means digital silence, so absence is never voice);
    runs closer than `mergeGapMs` are joined, runs shorter than `minSpeechMs` dropped, and
    each run is held for `hangoverMs` after its last voiced slot."""

    version: int = 1
    duration_ms: int
    frame_ms: int = 20
    threshold_dbfs: float
    merge_gap_ms: int
    min_speech_ms: int
    hangover_ms: int
    speakers: dict[str, list[list[int]]]
