"""Mono coding for discord.py's Opus encoder, which is always created with two channels.

A Discord client codes its microphone as mono (every packet's TOC s bit clear, RFC 6716
§3.1); the `files` source plays files as a client would, and loss concealment rebuilds a
mono speaker's lost frames as mono packets, so a speaker's track stays mono-coded
(`voicetrack.audio.opus_channels`) and keeps its mono outputs.
"""

from __future__ import annotations

from discord import opus

OPUS_SET_FORCE_CHANNELS = 4022
"""libopus encoder ctl request: code the input as this many channels (opus_defines.h,
`OPUS_SET_FORCE_CHANNELS_REQUEST`)."""


def code_as_mono(encoder: opus.Encoder) -> None:
    """Make discord.py's `encoder` code every packet as mono; its input stays stereo s16le
    PCM (the channels are down-mixed). Raises discord.opus.OpusError if libopus refuses
    the ctl."""
    opus._lib.opus_encoder_ctl(encoder._state, OPUS_SET_FORCE_CHANNELS, 1)
