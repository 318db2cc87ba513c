"""The transcoder image: `voicetrack-transcoder chunk` (one chunk's raw tracks → MP3/FLAC/Opus
with integrity data) and `voicetrack-transcoder promote` (gapless per-speaker and mixed final
tracks, waveforms). Imports `voicetrack`, never another component."""

from voicetrack import __version__

TOOL_VERSION = f"voicetrack-transcoder/{__version__}"
"""Written into result.json and final/manifest.json as `toolVersion`."""
