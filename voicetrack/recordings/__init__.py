"""Getting the audio out: the read layer over the meeting history and the final tracks.

- `voicetrack.recordings.service`: `RecordingsReader` (SQL history + S3 final objects):
  list, show, presigned links, verified download, the Audacity bundle; typed results.
- `voicetrack.recordings.live`: the audio so far of a live meeting (`live/`), by link.
- `voicetrack.recordings.expiry`: `parse_expiry("15m") -> 900` (1 s .. 7 days).
- `voicetrack.recordings.bundle`: the Audacity `.lof` writer and the ffmpeg FLAC render.
- `voicetrack.recordings.cli`: `voicetrack recordings list|show|url|download|zip`.
"""
