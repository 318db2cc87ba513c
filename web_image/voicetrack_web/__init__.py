"""The Voicetrack web page: log in with Discord, a guild's meetings, per-speaker players with
waveforms, downloads through presigned links minted on click (DESIGN.md, "Getting the
audio"). It reads the database (read-only) and S3, and writes nothing but its signed cookie."""
