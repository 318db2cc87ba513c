"""The S3 key layout: one pure home for every object key Voicetrack writes.

    <prefix>/<guildId>/<meetingId>/chunks/<index:06d>/<userId>.<raw-ext>   raw track
    <prefix>/<guildId>/<meetingId>/chunks/<index:06d>/chunk.json           chunk spec
    <prefix>/<guildId>/<meetingId>/outputs/<index:06d>/<userId>.<fmt>      transcoded track
    <prefix>/<guildId>/<meetingId>/outputs/<index:06d>/raw-<userId>.<raw-ext> frozen raw track
    <prefix>/<guildId>/<meetingId>/outputs/<index:06d>/chunk.json          frozen chunk spec
    <prefix>/<guildId>/<meetingId>/outputs/<index:06d>/result.json         transcoder manifest
    <prefix>/<guildId>/<meetingId>/outputs/<index:06d>/piece-<track>.<fmt> promotion piece
    <prefix>/<guildId>/<meetingId>/outputs/<index:06d>/piece.json          piece manifest
    <prefix>/<guildId>/<meetingId>/outputs/<index:06d>/head-after.json     head of silence after
    <prefix>/<guildId>/<meetingId>/promotion.json                          promotion plan
    <prefix>/<guildId>/<meetingId>/final/<userId>.<fmt> | mix.<fmt>        final tracks
    <prefix>/<guildId>/<meetingId>/final/waveform-<track>.json | .png      peaks, overview
    <prefix>/<guildId>/<meetingId>/final/manifest.json                     promotion manifest
    <prefix>/<guildId>/<meetingId>/final/timeline.json                     speech timeline
    <prefix>/<guildId>/<meetingId>/final/consent.json                      who was recorded
    <prefix>/<guildId>/<meetingId>/live/<track>.<fmt> | manifest.json      audio so far
    <prefix>/<guildId>/<meetingId>/live/state.json | parts/<track>.<part>  live assembly's own
    <prefix>/<guildId>/<meetingId>/final/failed/<index:06d>/<userId>.<ext> raw of a failed chunk
    <prefix>/<guildId>/<meetingId>/final/failed-chunks.json                why each one failed

Who writes where. `chunks/<index>/` holds what the recorder uploads (its raw tracks and
`chunk.json`; the operator writes `chunk.json` again): it is the prefix of the recorder's
upload grant (`chunks_root`, `voicetrack.uploadgrant`). Everything the transcoder makes
from a chunk lies in the chunk's `outputs/<index>/` folder, outside that prefix, so a
recorder (even a compromised one) cannot write what assembly and the operator trust: the
pieces and their `piece.json`, `result.json`, `head-after.json` and the chunk outputs.
The grant can still overwrite a chunk's raw tracks in `chunks/<index>/` after they were
transcoded, so the chunk's Job stores the exact bytes it verified (sha256 against the
chunk's spec) as the frozen raw track `outputs/<index>/raw-<userId>.<raw-ext>` before its
`result.json`, with the spec it verified them against (`outputs/<index>/chunk.json`,
which the operator already wrote from the RecordingChunk when it took the chunk, for a
chunk without tracks too): a done chunk always has them, and every later read of the
chunk's raw audio (promotion in full, assembly's renders, the next chunk's piece) takes
the frozen copy, verified again, and reads `chunks/<index>/` only when there is none (a
chunk transcoded before frozen copies existed; `voicetrack_transcoder.rawtracks.load_raw`);
a chunk rebuilt when its RecordingChunk is gone takes the frozen spec over the recorder's
`chunk.json` (`voicetrack_operator.services.inventory`), and so does a later chunk's Job
placing its piece in output time (`voicetrack_transcoder.context`). Overwriting a done
chunk's raw track or `chunk.json` then changes nothing the final tracks are made of.
Collection deletes a chunk's `outputs/<index>/` with its `chunks/<index>/`. Sessions
transcoded before this split (outputs inside `chunks/<index>/`) are still promoted: their
pieces are not found at the new keys, so promotion is the full one from the raw chunks
(`voicetrack_transcoder.pieces`), and their old outputs go with the chunk folders.

This docstring is the S3 key contract's one home; docs and other modules refer to it.

No clock, no client: functions of their arguments only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from voicetrack.audio import RAW_EXTENSIONS

MEETING_OBJECT_PATTERN = r"(^|/)[0-9]{15,20}/[A-Za-z0-9]{16}/(chunks|outputs|final|live)/"
"""Matches (`re.search`) a key that a `MeetingLayout` under any prefix writes for a
meeting's chunks, chunk outputs, final or live tracks: what a `files` session may not name
as an input (the CRD's rule on `spec.source.speakers[].objectKey` is the same regex)."""

CHUNK_MANIFEST_NAME = "chunk.json"
"""The name of a chunk's spec in its folder (`MeetingLayout.chunk_manifest_key`)."""

MIX_TRACK = "mix"
"""The track name of the mixed track (speaker tracks are named by user id)."""

_TRACK_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_track_name(name: str) -> bool:
    """Whether `name` can be a track's name (a user id, a snowflake, or MIX_TRACK): 1-64
    of `A-Z a-z 0-9 _ -`, so it is safe as one component of a key or a local file name
    (no `/`, no `.`/`..`, nothing a shell or a file system treats specially). What a
    reader checks of a name taken from a manifest before it builds a path from it."""
    return _TRACK_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class MeetingLayout:
    """Keys of one meeting's objects under `prefix` (no leading or trailing slash)."""

    prefix: str
    guild_id: str
    meeting_id: str

    @property
    def root(self) -> str:
        """`<prefix>/<guildId>/<meetingId>` (prefix omitted when empty)."""
        parts = [p for p in (self.prefix.strip("/"), self.guild_id, self.meeting_id) if p]
        return "/".join(parts)

    @property
    def chunks_root(self) -> str:
        """`<root>/chunks/`: what the recorder writes (raw tracks, `chunk.json`), and the
        whole prefix of its upload grant."""
        return f"{self.root}/chunks/"

    def chunk_dir(self, index: int) -> str:
        """`<root>/chunks/<index:06d>` (no trailing slash): chunk `index`'s raw tracks and
        `chunk.json`."""
        return f"{self.root}/chunks/{index:06d}"

    @property
    def outputs_root(self) -> str:
        """`<root>/outputs/`: what the transcoder makes from the chunks; outside the
        recorder's upload grant (`chunks_root`)."""
        return f"{self.root}/outputs/"

    def output_dir(self, index: int) -> str:
        """`<root>/outputs/<index:06d>` (no trailing slash): the transcoder's outputs of
        chunk `index` (frozen raw tracks and spec, transcoded tracks, `result.json`, pieces,
        `piece.json`, `head-after.json`); collected with `chunk_dir(index)`."""
        return f"{self.root}/outputs/{index:06d}"

    def raw_key(self, index: int, user_id: str, raw_format: str) -> str:
        """Key of a speaker's raw track in chunk `index` (`.opus` or `.pcm`)."""
        return f"{self.chunk_dir(index)}/{user_id}.{RAW_EXTENSIONS[raw_format]}"

    def frozen_raw_key(self, index: int, user_id: str, raw_format: str) -> str:
        """Key of the frozen copy of a speaker's raw track in chunk `index`: the bytes the
        chunk's Job verified against the chunk's spec, stored in the chunk's outputs folder
        (outside the recorder's grant) before its `result.json`; collected with the
        chunk's folder. `raw-` keeps it apart from the transcoded `<userId>.<fmt>`."""
        return f"{self.output_dir(index)}/raw-{user_id}.{RAW_EXTENSIONS[raw_format]}"

    def frozen_spec_key(self, index: int) -> str:
        """Key of the frozen copy of chunk `index`'s spec (the RecordingChunk's,
        immutable): written by the operator when it first takes the chunk (a chunk
        without tracks has no Job) and again by its Job, which verified the raw tracks
        against it, before `result.json`; what rebuilds the chunk when its RecordingChunk
        is gone and what later Jobs place their pieces by, rather than the `chunk.json`
        the recorder can overwrite."""
        return f"{self.output_dir(index)}/{CHUNK_MANIFEST_NAME}"

    def chunk_output_key(self, index: int, user_id: str, fmt: str) -> str:
        """Key of a speaker's transcoded track in chunk `index` (`mp3`, `flac`, `ogg`)."""
        return f"{self.output_dir(index)}/{user_id}.{output_extension(fmt)}"

    def chunk_manifest_key(self, index: int) -> str:
        """Key of chunk `index`'s spec (`chunk.json`): written by the recorder after the
        raw tracks and before the RecordingChunk, and again by the operator when it first
        sees the chunk, so the chunk can be rebuilt when its RecordingChunk object is gone
        or was never made (a namespace terminating refuses it)."""
        return f"{self.chunk_dir(index)}/{CHUNK_MANIFEST_NAME}"

    def result_key(self, index: int) -> str:
        """Key of the transcoder's `result.json` for chunk `index`."""
        return f"{self.output_dir(index)}/result.json"

    def piece_key(self, index: int, track: str, fmt: str) -> str:
        """Key of chunk `index`'s piece of a final track (`track`: a user id or MIX_TRACK):
        the encoded frames that chunk contributes to the final track (incremental
        promotion, `voicetrack_transcoder.pieces`). Lives in the chunk's outputs folder,
        collected with the chunk's folder."""
        return f"{self.output_dir(index)}/piece-{track}.{output_extension(fmt)}"

    def piece_manifest_key(self, index: int) -> str:
        """Key of chunk `index`'s `piece.json` (`voicetrack.manifests.PieceManifest`)."""
        return f"{self.output_dir(index)}/piece.json"

    def head_after_key(self, index: int) -> str:
        """Key of the head of the silence right after chunk `index`, a chunk someone spoke
        in (`head-after.json`, `voicetrack.manifests.SilentHeadManifest`), made by that
        chunk's own Job. Lives in the chunk's outputs folder, collected with the chunk's
        folder."""
        return f"{self.output_dir(index)}/head-after.json"

    @property
    def promotion_plan_key(self) -> str:
        return f"{self.root}/promotion.json"

    @property
    def final_root(self) -> str:
        return f"{self.root}/final/"

    def final_key(self, track: str, fmt: str) -> str:
        """Key of a final track: `track` is a user id or MIX_TRACK."""
        return f"{self.root}/final/{track}.{output_extension(fmt)}"

    def waveform_key(self, track: str, ext: str) -> str:
        """Key of a track's peaks (`json`) or overview image (`png`)."""
        return f"{self.root}/final/waveform-{track}.{ext}"

    @property
    def live_root(self) -> str:
        """`<root>/live/`: the audio so far; collected with the chunks after promotion."""
        return f"{self.root}/live/"

    def holds_live_track(self, key: str) -> bool:
        """Whether `key`, as a live manifest names a track's object, is one this meeting's
        live Jobs write: directly in `live_root` (`<root>/live/<name>`, no further `/`,
        `<name>` not empty, `.` or `..`). What a reader (the web page, `recordings
        download --live`) checks before it fetches or links a key a manifest gives: the
        manifest is an S3 object, not proof the key is this meeting's."""
        rest = key[len(self.live_root):] if key.startswith(self.live_root) else ""
        return rest not in ("", ".", "..") and "/" not in rest

    def live_key(self, track: str, fmt: str) -> str:
        """Key of a live session's "audio so far" of a track (a user id or MIX_TRACK): the
        final track up to the last chunk whose piece is made, at a stable key."""
        return f"{self.root}/live/{track}.{output_extension(fmt)}"

    @property
    def live_manifest_key(self) -> str:
        """Key of the `manifest.json` (a FinalManifest) of the audio so far."""
        return f"{self.root}/live/manifest.json"

    @property
    def live_state_key(self) -> str:
        """Key of the live assembly's own record (`state.json`, transcoder-internal: the
        chunks the live tracks cover and what extending them needs)."""
        return f"{self.root}/live/state.json"

    def live_part_key(self, track: str, part: str) -> str:
        """Key of a temporary part (`head`, `tail`) a live Job uploads to compose a live
        track server-side; deleted by the same Job."""
        return f"{self.root}/live/parts/{track}.{part}"

    @property
    def final_manifest_key(self) -> str:
        return f"{self.root}/final/manifest.json"

    @property
    def timeline_key(self) -> str:
        """Key of the speech timeline (`voicetrack.manifests.SpeechTimeline`)."""
        return f"{self.root}/final/timeline.json"

    @property
    def consent_key(self) -> str:
        """Key of the consent record (`voicetrack.manifests.ConsentRecord`): who was
        recorded and who opted out, and when."""
        return f"{self.root}/final/consent.json"

    def failed_raw_key(self, index: int, user_id: str, raw_format: str) -> str:
        """Where a failed chunk's raw track is kept after the session's temporary data is
        collected (bad input loses nothing)."""
        return f"{self.root}/final/failed/{index:06d}/{user_id}.{RAW_EXTENSIONS[raw_format]}"

    @property
    def failed_manifest_key(self) -> str:
        return f"{self.root}/final/failed-chunks.json"


def output_extension(fmt: str) -> str:
    """File extension of an output format: mp3 → mp3, flac → flac, opus → ogg."""
    return {"mp3": "mp3", "flac": "flac", "opus": "ogg"}[fmt]


@dataclass(frozen=True)
class ParsedKey:
    """What a key under some prefix says: its meeting, and for chunk objects the chunk index
    and the file name. `area` is `chunks` (the recorder's: `<userId>.<raw-ext>`,
    `chunk.json`), `outputs` (the transcoder's: `raw-<userId>.<raw-ext>`, `chunk.json`,
    `<userId>.<fmt>`,
    `result.json`, pieces,
    `piece.json`, `head-after.json`), `final` (`name`: the rest of the key after
    `final/`) or `promotion` (the plan; no index, no name). `live/` keys parse to None."""

    guild_id: str
    meeting_id: str
    area: str
    index: int | None = None
    name: str | None = None

    def layout(self, prefix: str) -> MeetingLayout:
        return MeetingLayout(prefix, self.guild_id, self.meeting_id)


_KEY = re.compile(
    r"^(?P<guild>[0-9]{15,20})/(?P<meeting>[A-Za-z0-9]{16})/"
    r"(?:(?P<promotion>promotion\.json)|(?P<area>chunks|outputs|final)/(?P<rest>.+))$")
_CHUNK_REST = re.compile(r"^(?P<index>[0-9]{6})/(?P<name>[^/]+)$")


def parse_key(key: str, prefix: str) -> ParsedKey | None:
    """The inverse of `MeetingLayout`: parse `key` written under `prefix`. Returns None for
    a key this layout did not write (another prefix, a malformed id or index), so a caller
    that deletes by parsed key never touches what it does not understand."""
    head = prefix.strip("/")
    if head:
        if not key.startswith(head + "/"):
            return None
        key = key[len(head) + 1:]
    m = _KEY.match(key)
    if m is None:
        return None
    if m.group("promotion"):
        return ParsedKey(m.group("guild"), m.group("meeting"), "promotion")
    area, rest = m.group("area"), m.group("rest")
    if area in ("chunks", "outputs"):
        c = _CHUNK_REST.match(rest)
        if c is None:
            return None
        return ParsedKey(m.group("guild"), m.group("meeting"), area, int(c.group("index")),
                         c.group("name"))
    return ParsedKey(m.group("guild"), m.group("meeting"), area, None, rest)
