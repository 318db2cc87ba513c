"""Discord voice receive under DAVE end-to-end encryption: the recorder's `discord` source.

`DiscordSource` (source.py) joins the channel with discord.py, whose voice connection
feeds the receiver through `RecorderVoiceClient` and `ConnectionReceiver` (voiceclient.py);
`VoiceReceiver` (receiver.py, its stages after the jitter buffer in delivery.py) is the
pipeline from raw UDP datagrams to decrypted Opus frames on the session's slot grid. See
docs/discord.md for what a server admin configures.
"""

from voicetrack_recorder.discord.receiver import VoiceReceiver
from voicetrack_recorder.discord.source import DiscordSource
from voicetrack_recorder.discord.stats import ReceiveStats

__all__ = ["DiscordSource", "ReceiveStats", "VoiceReceiver"]
