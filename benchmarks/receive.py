"""Benchmark: recorder CPU per active speaker in the `discord` receive pipeline.

The rig (tests/discord_rig.py: real davey MLS group, real AEAD, real libopus) prepares
`--seconds` of speech for `--speakers` speakers, with `--loss` % of packets lost and up to
`--jitter` ms of network jitter (so reordering, the jitter buffer and FEC/PLC are exercised).
The datagrams are then fed, in arrival order and on a virtual clock, through the real
pipeline (transport decrypt, jitter buffer, DAVE decrypt, per-speaker decoder for loss
concealment, timeline) into the recorder's chunker, sealing a window every 10 s. Only this
receive side is timed (process CPU time); preparing the traffic is the senders' work.

Prints the setup and figures; last line
`receive: cpu_per_speaker P %, decrypted R %` where P is the percentage of one core used per
active speaker in real time (goal ≤ 2 %) and R the share of audio frames DAVE-decrypted
(silence and concealment aside) out of the frames that arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.discord_rig import (
    DirectBot,
    Speaker,
    VirtualTime,
    VoiceServerRig,
    encode_frames,
    tone_pcm,
)
from voicetrack_recorder.chunker import Chunker
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.discord.receiver import VoiceReceiver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--loss", type=float, default=1.0, help="packet loss, percent")
    parser.add_argument("--jitter", type=float, default=30.0, help="max jitter, ms")
    parser.add_argument("--mode", default="aead_xchacha20_poly1305_rtpsize")
    args = parser.parse_args()
    rng = random.Random(1)

    vtime = VirtualTime()
    t0 = int(vtime.now * 1000)
    clock = SessionClock(t0, time_fn=vtime)
    chunker = Chunker(500)
    chunker.open(0)
    bot = DirectBot(1, 2)
    rig = VoiceServerRig(bot, 2, mode=args.mode)
    receiver = VoiceReceiver(clock=clock, sink=chunker,
                             keys=lambda: (rig.mode, rig.secret_key), session=lambda: rig.bot)
    bot.events = lambda msg: receiver.gateway_event(msg["op"], msg["d"])

    async def setup() -> list[Speaker]:
        await rig.start()
        return await rig.join(*range(10**17, 10**17 + args.speakers))

    speakers = asyncio.run(setup())
    frames = args.seconds * 50
    prep = time.perf_counter()
    traffic: list[tuple[float, bytes]] = []
    for n, speaker in enumerate(speakers):
        packets = encode_frames(tone_pcm(frames, 220 + 110 * n), bitrate=64)
        for i, packet in enumerate(packets):
            datagram = rig.packet(speaker, packet)
            if rng.random() * 100 >= args.loss:
                traffic.append((20 * (i + 1) + 5 + rng.uniform(0, args.jitter), datagram))
    traffic.sort(key=lambda item: item[0])
    prep = time.perf_counter() - prep

    cpu0 = time.process_time()
    next_tick = 20.0
    for at_ms, datagram in traffic:
        while next_tick <= at_ms:
            vtime.now = (t0 + next_tick) / 1000
            receiver.tick()
            if chunker.due(clock.now_slot() - 10):
                chunker.seal()
            next_tick += 20
        vtime.now = (t0 + at_ms) / 1000
        receiver.datagram(datagram)
    vtime.now += 1
    receiver.flush()
    chunker.seal()
    cpu = time.process_time() - cpu0

    stats = receiver.stats
    arrived = len(traffic)
    ok = sum(s.decrypted for s in stats.decrypt.values())
    failed = sum(sum(s.failures.values()) for s in stats.decrypt.values())
    per_speaker = cpu / (args.seconds * args.speakers) * 100
    decrypted = ok / arrived * 100 if arrived else 0.0
    print(f"setup: {args.speakers} speakers x {args.seconds} s, mode {args.mode}, "
          f"loss {args.loss} %, jitter ≤ {args.jitter} ms (traffic built in {prep:.1f} s)")
    print(f"datagrams {arrived}, frames pushed {stats.frames} (recovered {stats.recovered}, "
          f"fec {stats.fec}), lost {stats.lost}, dave failures {failed}, "
          f"dropped {dict(stats.dropped)}")
    print(f"receive CPU {cpu:.3f} s for {args.seconds * args.speakers} speaker-seconds")
    print(f"receive: cpu_per_speaker {per_speaker:.2f} %, decrypted {decrypted:.2f} %")


if __name__ == "__main__":
    main()
