"""The S3 key layout: one pure home for every object key Voicetrack writes.

    <prefix>/<guildId>/<meetingId>/chunks/<index:06d>/<userId>.<raw-ext>   raw track
    <prefix>/<guildId>/<meetingId>/chunks/<index:06d>/<userId>.<fmt>       transcoded track
    <prefix>/<guildId>/<meetingId>/chunks/<index:06d>/result.json          transcoder manifest
    <prefix>/<guildId>/<meetingId>/promotion.json                          promotion plan
    <prefix>/<guildId>/<meetingId>/final/<userId>.<fmt> | mix.<fmt>        final tracks
    <prefix>/<guildId>/<meetingId>/final/waveform-<track>.json | .png      peaks, overview
    <prefix>/<guildId>/<meetingId>/final/manifest.json                     promotion manifest
    <prefix>/<guildId>/<meetingId>/final/failed/<index:06d>/<userId>.<ext> raw of a failed chunk
    <prefix>/<guildId>/<meetingId>/final/failed-chunks.json                why each one failed

No clock, no client: functions of their arguments only.
"""

from __future__ import annotations

from dataclasses import dataclass

from voicetrack.audio import RAW_EXTENSIONS

MIX_TRACK = "mix"
"""The track name of the mixed track (speaker tracks are named by user id)."""


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
        return f"{self.root}/chunks/"

    def chunk_dir(self, index: int) -> str:
        return f"{self.root}/chunks/{index:06d}"

    def raw_key(self, index: int, user_id: str, raw_format: str) -> str:
        """Key of a speaker's raw track in chunk `index` (`.opus` or `.pcm`)."""
        return f"{self.chunk_dir(index)}/{user_id}.{RAW_EXTENSIONS[raw_format]}"

    def chunk_output_key(self, index: int, user_id: str, fmt: str) -> str:
        """Key of a speaker's transcoded track in chunk `index` (`mp3`, `flac`, `ogg`)."""
        return f"{self.chunk_dir(index)}/{user_id}.{output_extension(fmt)}"

    def result_key(self, index: int) -> str:
        """Key of the transcoder's `result.json` for chunk `index`."""
        return f"{self.chunk_dir(index)}/result.json"

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
    def final_manifest_key(self) -> str:
        return f"{self.root}/final/manifest.json"

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
