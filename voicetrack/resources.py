"""The custom resources: API names, labels, shared patterns, and the RecordingSession models.

One home for the `voicetrack.dev/v1alpha1` contract, with `voicetrack.chunkspec` (the
RecordingChunk models) and `voicetrack.names` (child names and ownerReferences). The CRD
YAML in `voicetrack/crds/` states the same schema for the API server;
`tests/unit/test_crd_models.py` checks the two agree field by field, and every CEL rule of
the CRDs has its mirror here, so the operator refuses what the API server would, naming the
same field.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)
from pydantic.alias_generators import to_camel

from voicetrack.layout import MEETING_OBJECT_PATTERN

GROUP = "voicetrack.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
SESSION_KIND = "RecordingSession"
SESSION_PLURAL = "recordingsessions"
CHUNK_KIND = "RecordingChunk"
CHUNK_PLURAL = "recordingchunks"
FINALIZER = f"{GROUP}/promote"
TRANSCODER_SERVICE_ACCOUNT = "voicetrack-transcoder"
"""The ServiceAccount (no token, no Role) the operator makes once per namespace for its
transcoder, promotion and live Jobs; `voicetrack uninstall-cleanup` removes it."""

LABEL_SESSION = f"{GROUP}/session"
LABEL_COMPONENT = f"{GROUP}/component"
LABEL_CHUNK_INDEX = f"{GROUP}/chunk-index"
LABEL_GUILD = f"{GROUP}/guild"
MANAGED_BY = {"app.kubernetes.io/managed-by": "voicetrack"}

SNOWFLAKE_PATTERN = r"^[0-9]{15,20}$"
MEETING_ID_PATTERN = r"^[A-Za-z0-9]{16}$"
DNS_LABEL_MAX = 63
SESSION_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
"""A session name: a DNS subdomain name within 63 characters, since it is a label value."""
BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
"""S3 bucket naming rules (3..63 lowercase letters, digits, dots, hyphens, alphanumeric at
both ends); the CEL rules and `_check_bucket` add: no `..`, not shaped like an IP address."""
IP_SHAPED = r"^[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+$"
PREFIX_PATTERN = r"^$|^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$"
"""`storage.prefix`: empty, or `/`-separated segments of letters, digits, `.`, `_`, `-`, no
segment starting with a dot (so no `.` or `..`), no leading, trailing or double slash."""
PREFIX_MAX = 128
RAW_KEY_PATTERN = (r"^([A-Za-z0-9_-][A-Za-z0-9._-]*/)*[0-9]{15,20}/[A-Za-z0-9]{16}"
                   r"/chunks/[0-9]{6}/[0-9]{15,20}[.](opus|pcm)$")
"""A raw track key: `<prefix>/<guildId>/<meetingId>/chunks/<index:06d>/<userId>.<ext>`
(`voicetrack.layout`); the chunk's own guild, meeting, index and user are checked by rule."""
KEY_MAX = 256
SHA256_PATTERN = r"^[0-9a-f]{64}$"
FRAME_GRID_MS = 20
MAX_SESSION_MS = 7 * 86_400_000
"""Bound of session time (7 days): a forged window cannot make promotion allocate more."""
MAX_CHUNK_INDEX = 999_999
MAX_TRACKS = 128
MAX_CHUNK_SECONDS = 300
"""Longest chunk window a session may ask for (`SessionSpec.chunkSeconds`): no chunk the
recorder seals is longer (the chunker cuts at the nominal length or earlier)."""


LONGEST_CHILD_SUFFIX = "-chunk-000000"
"""The longest suffix of a session's child names (`voicetrack.names`): chunks
`<session>-chunk-<index:06d>` (13); the others are shorter (`-live-<n:06d>` 12,
`-tx-<index:06d>` 10, `-promote` 8, `-rec` 4)."""
SESSION_NAME_MAX = DNS_LABEL_MAX - len(LONGEST_CHILD_SUFFIX)
"""50: a RecordingSession name within which every child name is `<session>-<suffix>`
within 63 characters, never cut and hashed, so the recorder chunk admission policy
(`voicetrack/policies/recordingchunks-policy.yaml`) checks a chunk's name exactly. The
CRD's `metadata.name` maxLength says the same."""


def check_session_name(name: str) -> str:
    """Refuse a RecordingSession name longer than `SESSION_NAME_MAX` (50) characters, as
    the API server does (the CRD's `metadata.name` maxLength). Returns `name`.
    Raises ValueError naming `metadata.name`. Sessions named 51..63 characters stored
    before this limit still parse (`SessionView` does not call this) and are deleted as
    usual; their recorders can no longer write chunks (docs/deploy.md, upgrading)."""
    if len(name) > SESSION_NAME_MAX:
        raise ValueError(f"metadata.name must be at most {SESSION_NAME_MAX} characters "
                         f"(so that <name>-chunk-<index:06d> fits the 63 of a DNS label), "
                         f"got {len(name)}")
    return name

OutputFormat = Literal["mp3", "flac", "opus"]
RawFormat = Literal["ogg-opus", "pcm-s16le"]
TracksOption = Literal["perSpeaker", "mixed", "both"]
"""`spec.output.tracks`, the one vocabulary for which final tracks become `recordings` rows:
every speaker's (N rows), the mix (1 row, user_id NULL), or both (N + 1)."""
TRACKS_OPTIONS: tuple[TracksOption, ...] = ("perSpeaker", "mixed", "both")


class TranscodeStatus(enum.StrEnum):
    """A chunk's `status.transcodeStatus` and `temp_recordings.transcode_status`.
    Forward-only: queued → in_progress → done | failed; `done` and `failed` are terminal."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    FAILED = "failed"

    @property
    def rank(self) -> int:
        """A status write takes effect only when it raises this rank."""
        return TRANSCODE_ORDER[self.value]

    @property
    def terminal(self) -> bool:
        return self in (TranscodeStatus.DONE, TranscodeStatus.FAILED)


TRANSCODE_ORDER: dict[str, int] = {"queued": 0, "in_progress": 1, "done": 2, "failed": 2}
"""Forward-only rank of a transcode status by value: a write may only raise the rank."""


class SessionState(enum.StrEnum):
    """`RecordingSession.status.state`, the printer column `State`, written by the operator
    only. While recording: Pending → Recording ⇄ Paused, or Stopped (a limit ended the
    recorder; the operator then deletes the session unless `limits.deleteWhenStopped` is
    false), Failed (the recorder cannot run), Refused (the guild is busy). While
    deleting: Stopping → Transcoding → Promoting → Promoted, or PromotionFailed (retried,
    raw data kept)."""

    PENDING = "Pending"
    RECORDING = "Recording"
    PAUSED = "Paused"
    STOPPED = "Stopped"
    FAILED = "Failed"
    REFUSED = "Refused"
    STOPPING = "Stopping"
    TRANSCODING = "Transcoding"
    PROMOTING = "Promoting"
    PROMOTED = "Promoted"
    PROMOTION_FAILED = "PromotionFailed"

    @property
    def active(self) -> bool:
        """True while the session holds its guild's voice channel (or may again)."""
        return self not in INACTIVE_STATES

    @property
    def deleting(self) -> bool:
        return self in DELETION_STATES

    @classmethod
    def of(cls, obj: dict[str, Any]) -> SessionState | None:
        """The `status.state` of a RecordingSession object; None before the operator wrote
        one, or for a value this version does not know (a newer operator's)."""
        value = (obj.get("status") or {}).get("state")
        try:
            return cls(value) if value else None
        except ValueError:
            return None


INACTIVE_STATES = frozenset({SessionState.STOPPED, SessionState.FAILED, SessionState.REFUSED})
"""States of a session that no longer records."""
DELETION_STATES = frozenset({SessionState.STOPPING, SessionState.TRANSCODING,
                             SessionState.PROMOTING, SessionState.PROMOTED,
                             SessionState.PROMOTION_FAILED})
"""States the operator writes while a deleted session's finalizer runs."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_api(self) -> dict:
        """The camelCase JSON form the API server and S3 manifests hold."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# ---------------------------------------------------------------- RecordingSession spec


class FileSpeaker(_Model):
    """One speaker of the `files` source: an audio object played from `offsetMs`."""

    user_id: str = Field(pattern=SNOWFLAKE_PATTERN, max_length=20)
    object_key: str = Field(min_length=1, max_length=1024)
    offset_ms: int = Field(default=0, ge=0)
    name: str | None = None

    @field_validator("object_key")
    @classmethod
    def _not_a_recording(cls, key: str) -> str:
        """An input, never a recorded meeting's object (`MEETING_OBJECT_PATTERN`): with
        one bucket for every namespace, a files session naming another meeting's final
        tracks would copy that audio into its own (third review, fault 4)."""
        if re.search(MEETING_OBJECT_PATTERN, key):
            raise ValueError("may not name a recorded meeting's object "
                             "(<guildId>/<meetingId>/chunks|outputs|final|live/...): a files "
                             "session plays inputs, never other recordings")
        return key


class SourceSpec(_Model):
    type: Literal["discord", "files"] = "discord"
    speakers: list[FileSpeaker] = Field(default_factory=list, max_length=25)


def pieced(formats: Iterable[str]) -> bool:
    """Whether a session of output `formats` gets pieces while it records (each chunk's
    share of the final tracks, made by its transcoder Job: incremental promotion, and the
    audio so far of a live session): MP3, FLAC, or MP3 and FLAC. The MP3 pieces are made
    for every such session, FLAC alone too: they carry the units, peaks and voice
    activity, and the audio so far is MP3; assembly writes only the formats asked for.
    Opus is not cut at chunk boundaries without re-encoding (transcoder `pieces.py`,
    `flacpieces.py`). False for no formats."""
    wanted = set(formats)
    return bool(wanted) and wanted <= {"mp3", "flac"}


class OutputSpec(_Model):
    formats: list[OutputFormat] = Field(default_factory=lambda: list[OutputFormat](["mp3"]),
                                        min_length=1, max_length=3)
    mp3_bitrate: int = Field(default=128, ge=32, le=320)
    """MP3 bitrate in kbit/s."""
    tracks: TracksOption = "both"

    @field_validator("formats")
    @classmethod
    def _unique_formats(cls, v: list[OutputFormat]) -> list[OutputFormat]:
        if len(set(v)) != len(v):  # the CRD's x-kubernetes-list-type: set
            raise ValueError("output.formats must not repeat a format")
        return v


class LimitsSpec(_Model):
    max_duration_seconds: int = Field(default=14_400, ge=10, le=MAX_SESSION_MS // 1000)
    empty_channel_seconds: int = Field(default=300, ge=0, le=86_400)
    """Auto-stop: the recorder ends (reason `channel-empty`, state Stopped) once nobody but
    itself has been in the voice channel this long (s); 0 never stops. `discord` only."""
    max_bytes: int = Field(default=2_000_000_000, ge=1_000_000)
    delete_when_stopped: bool = True
    """When the recorder ends by itself (auto-stop, `maxDurationSeconds`, `maxBytes`: state
    Stopped), the operator deletes the session, which promotes it (its meeting row keeps
    the history). False leaves it Stopped until someone deletes it (for tools that
    re-create deleted objects, e.g. GitOps)."""


class StorageSpec(_Model):
    bucket: str = Field(default="voicetrack", min_length=3, max_length=63,
                        pattern=BUCKET_PATTERN)
    prefix: str = Field(default="recordings", max_length=PREFIX_MAX, pattern=PREFIX_PATTERN)
    raw_format: RawFormat = "ogg-opus"

    @field_validator("bucket")
    @classmethod
    def _check_bucket(cls, v: str) -> str:
        if ".." in v:
            raise ValueError("storage.bucket must not contain two adjacent dots")
        if re.match(IP_SHAPED, v):
            raise ValueError("storage.bucket must not be shaped like an IP address")
        return v


WEBHOOK_URL_PATTERN = r"^https?://[^/?#@[:space:]]+([/?#][^[:space:]]*)?$"
"""`spec.notify.webhook.url`: http or https, a host, no user info (`@`) and no whitespace
(POSIX class, understood alike by RE2 in CEL and by pydantic's Rust regex)."""
WEBHOOK_URL_MAX = 2048
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
"""A Secret's data key (Kubernetes `IsConfigMapKey`)."""


class SecretKeyRef(_Model):
    """A key of a Secret in the session's own namespace."""

    name: str = Field(max_length=253, pattern=SECRET_NAME_PATTERN)
    key: str = Field(max_length=253, pattern=SECRET_KEY_PATTERN)


class WebhookSpec(_Model):
    """`spec.notify.webhook`: where the completion webhook goes and the Secret key that
    signs it (HMAC-SHA256, docs/webhooks.md). The URL is checked like the CRD's CEL rules:
    the pattern, then a parse that must find a host name and a valid port."""

    url: str = Field(max_length=WEBHOOK_URL_MAX, pattern=WEBHOOK_URL_PATTERN)
    secret_ref: SecretKeyRef

    @field_validator("url")
    @classmethod
    def _parses(cls, v: str) -> str:
        parts = urlsplit(v)
        try:
            parts.port  # noqa: B018  (raises ValueError for a bad port)
        except ValueError as err:
            raise ValueError(f"notify.webhook.url has a bad port: {err}") from err
        if not parts.hostname:
            raise ValueError("notify.webhook.url must be an http:// or https:// URL with a "
                             "host")
        return v


class NotifySpec(_Model):
    """`spec.notify`: who is told when the session ends."""

    webhook: WebhookSpec


Snowflake = Annotated[str, StringConstraints(pattern=SNOWFLAKE_PATTERN, max_length=20)]
"""A Discord id (user, role, guild, channel): 15 to 20 digits."""
MAX_OPT_OUT_ROLES = 50
MAX_OPT_OUT_USERS = 1000


class SessionSpec(_Model):
    """`RecordingSession.spec` (DESIGN.md, "Custom resources").

    Consent (issue 12, "Per-speaker consent"): a member with any role in `optOutRoleIds`,
    or listed in `optOutUserIds` (the bot's `/record optout` adds the member, `/record
    optin` removes them), is not recorded: the recorder drops their packets before DAVE
    decryption and Opus decoding, so none of their audio is written anywhere, and reports
    them in each chunk's `optedOut`. A member opted out when the session stops has no
    final track and is not in the mix, even for audio recorded before they opted out;
    `final/consent.json` lists who was recorded and who opted out, and when."""

    guild_id: str = Field(pattern=SNOWFLAKE_PATTERN, max_length=20)
    channel_id: str = Field(pattern=SNOWFLAKE_PATTERN, max_length=20)
    meeting_id: str | None = Field(default=None, pattern=MEETING_ID_PATTERN, max_length=16)
    requested_by: str | None = Field(default=None, pattern=SNOWFLAKE_PATTERN, max_length=20)
    chunk_seconds: int = Field(default=10, ge=5, le=MAX_CHUNK_SECONDS)
    paused: bool = False
    output: OutputSpec = Field(default_factory=OutputSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    transcode_timeout_seconds: int = Field(default=300, ge=10, le=86_400)
    retain_temp_rows: bool = False
    source: SourceSpec = Field(default_factory=SourceSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    notify: NotifySpec | None = None
    opt_out_role_ids: list[Snowflake] = Field(default_factory=list,
                                              max_length=MAX_OPT_OUT_ROLES)
    opt_out_user_ids: list[Snowflake] = Field(default_factory=list,
                                              max_length=MAX_OPT_OUT_USERS)

    @field_validator("opt_out_role_ids", "opt_out_user_ids")
    @classmethod
    def _unique_ids(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):  # the CRD's x-kubernetes-list-type: set
            raise ValueError("opt-out lists must not repeat an id")
        return v

    @field_validator("source")
    @classmethod
    def _files_need_speakers(cls, v: SourceSpec) -> SourceSpec:
        if v.type == "files" and not v.speakers:
            raise ValueError("source.speakers must list at least one speaker for type files")
        return v
