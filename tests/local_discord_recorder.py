"""Run the recorder's unmodified `DiscordSource` against a local Discord (a subprocess).

`python -m tests.local_discord_recorder DISCORD_JSON [TOKEN] [EMPTY_CHANNEL_S]` (default: the
bot token, no auto-stop; pass `-` as TOKEN for the bot token).
The source reaches the local Discord through its supported `endpoint` (the API base,
gateway URL and CA bundle of discord.json; in the pod, `DiscordEndpoint.from_env()`).
It records until SIGTERM (or its auto-stop), then prints one JSON line: `{"end_reason":
…, "frames": {user_id: count}, "hz": {user_id: dominant Hz}, "stats":
ReceiveStats.as_dict(), "cpu_s": process CPU seconds from the first frame to the end of
recording, "wall_s": the same span's wall time}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time

from tests.discord_rig import CaptureSink
from tests.local_discord_clients import dominant_hz
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.discord.endpoint import DiscordEndpoint
from voicetrack_recorder.discord.source import DiscordSource


class TimedSink(CaptureSink):
    """A CaptureSink that notes the process CPU and wall time of the first frame."""

    def __init__(self) -> None:
        super().__init__()
        self.first: tuple[float, float] | None = None

    def push(self, user_id: str, slot: int, packet: bytes, phase: int = 0) -> bool:
        if self.first is None:
            self.first = (time.process_time(), time.monotonic())
        return super().push(user_id, slot, packet, phase)


async def main(path: str, token: str | None = None, empty_channel_s: str | None = None
               ) -> None:
    with open(path) as f:
        info = json.load(f)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    sink = TimedSink()
    source = DiscordSource(token=token if token not in (None, "-") else info["bot_token"],
                           guild_id=info["guild_id"],
                           empty_channel_s=float(empty_channel_s) if empty_channel_s else None,
                           channel_id=info["voice_channel_id"],
                           clock=SessionClock(int(time.time() * 1000)), sink=sink,
                           endpoint=DiscordEndpoint(info["api_base"], info["gateway_url"],
                                                    info["ca_bundle"]))
    await source.run(stop)
    cpu0, wall0 = sink.first or (time.process_time(), time.monotonic())
    print(json.dumps({"end_reason": source.end_reason,
                      "frames": {u: len(f) for u, f in sink.frames.items()},
                      "hz": {u: dominant_hz(f) for u, f in sink.frames.items()},
                      "stats": source.stats.as_dict(), "cpu_s": time.process_time() - cpu0,
                      "wall_s": time.monotonic() - wall0}), flush=True)


if __name__ == "__main__":
    # the recorder's log on stderr, as in the pod: what a failing test shows
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main(*sys.argv[1:4]))
