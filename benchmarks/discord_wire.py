"""The recorder on the wire: N discord.py senders for M minutes through the local Discord.

The local Discord (`voicetrack_local.discord`) runs in this process with N unmodified
discord.py 2.7.1 member clients, each playing its own tone through discord.py's send path
(Opus, DAVE, transport AEAD, UDP); the recorder's unmodified `DiscordSource` runs in a
subprocess (`tests/local_discord_recorder.py`, trusting the CA through SSL_CERT_FILE), so
its CPU is measured alone: process CPU from its first frame to the end of recording,
divided by that span and by N. Frames: recorded by the recorder over sent by the clients
(their RTP sequence counters).

    python -m benchmarks.discord_wire [--senders N] [--minutes M] [--loss-pct P]

Last line: `discord_wire: cpu_per_speaker P %, frames R %`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

import discord
import yarl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `make bench` runs it as a script: `tests` is at the root

from tests.discord_rig import tone_pcm  # noqa: E402
from tests.local_discord_clients import dave_ready, play, start_client, stop_client  # noqa: E402
from voicetrack_local.discord.relay import Faults  # noqa: E402
from voicetrack_local.discord.server import LocalDiscord, Settings  # noqa: E402


async def run(senders: int, minutes: float, loss_pct: float) -> None:
    with tempfile.TemporaryDirectory(prefix="vt-bench-discord-") as tmp:
        names = [f"speaker{i}" for i in range(senders)]
        server = LocalDiscord(Path(tmp), Settings(users=names,
                                                  faults=Faults(loss_pct=loss_pct, seed=1)))
        info = await server.start()
        discord.http.Route.BASE = info["api_base"]
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(info["gateway_url"])
        bot_id, channel_id = int(info["application_id"]), int(info["voice_channel_id"])
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.local_discord_recorder", str(Path(tmp) / "discord.json"),
            env={**os.environ, "SSL_CERT_FILE": info["ca_bundle"]}, cwd=str(REPO),
            stdout=asyncio.subprocess.PIPE)
        clients = [await start_client(u["token"], info["ca_bundle"]) for u in info["users"]]
        try:
            assert server.voice is not None
            while bot_id not in server.voice.connections:
                await asyncio.sleep(0.1)
            voices: list[discord.VoiceClient] = []
            for client, _ in clients:
                channel = client.get_channel(channel_id)
                assert isinstance(channel, discord.VoiceChannel)
                voices.append(await channel.connect(timeout=30))
            await dave_ready(*voices, epoch=senders, timeout=30)
            frames = int(minutes * 60 * 50)
            sent = await asyncio.gather(*(play(v, tone_pcm(frames, 300.0 + 110 * i))
                                          for i, v in enumerate(voices)))
            await asyncio.sleep(1.0)
            child.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(child.communicate(), 60)
        finally:
            if child.returncode is None:
                child.kill()
            for client, runner in clients:
                await stop_client(client, runner)
            await server.stop()
        result = json.loads(out.decode().strip().splitlines()[-1])
        recorded = sum(result["frames"].values())
        per_speaker = 100 * result["cpu_s"] / result["wall_s"] / senders
        print(f"senders {senders}, {minutes} min, relay loss {loss_pct} %: sent {sum(sent)}, "
              f"recorded {recorded}, recorder CPU {result['cpu_s']:.2f} s over "
              f"{result['wall_s']:.1f} s; stats {json.dumps(result['stats'])[:300]}")
        print(f"discord_wire: cpu_per_speaker {per_speaker:.2f} %, "
              f"frames {100 * recorded / sum(sent):.2f} %")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--senders", type=int, default=3)
    p.add_argument("--minutes", type=float, default=0.5)
    p.add_argument("--loss-pct", type=float, default=0.0)
    a = p.parse_args()
    asyncio.run(run(a.senders, a.minutes, a.loss_pct))


if __name__ == "__main__":
    main()
