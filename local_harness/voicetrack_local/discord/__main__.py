"""`python -m voicetrack_local.discord --state-dir DIR`: run the local Discord until killed.

Writes `DIR/discord.json` (see `server.py`) once it serves, then logs one line with the
API base; SIGINT/SIGTERM stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from voicetrack_local.discord.relay import Faults
from voicetrack_local.discord.server import LocalDiscord, Settings


def parse(argv: list[str] | None = None) -> tuple[Path, Settings]:
    p = argparse.ArgumentParser(prog="python -m voicetrack_local.discord",
                                description="A local Discord (REST, gateway, voice, relay).")
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--port", type=int, default=0, help="TLS port (0 = any free port)")
    p.add_argument("--udp-port", type=int, default=0, help="media relay port (0 = any)")
    p.add_argument("--users", default="alice,bob,carol", help="member names, comma-separated")
    p.add_argument("--loss-pct", type=float, default=0.0)
    p.add_argument("--reorder-pct", type=float, default=0.0)
    p.add_argument("--duplicate-pct", type=float, default=0.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--allow-no-dave", action="store_true",
                   help="accept voice clients without DAVE (else close 4017)")
    a = p.parse_args(argv)
    faults = Faults(loss_pct=a.loss_pct, reorder_pct=a.reorder_pct,
                    duplicate_pct=a.duplicate_pct, jitter_ms=a.jitter_ms)
    return a.state_dir, Settings(port=a.port, udp_port=a.udp_port,
                                 users=[u for u in a.users.split(",") if u], faults=faults,
                                 require_dave=not a.allow_no_dave)


async def serve(state_dir: Path, settings: Settings) -> None:
    discord = LocalDiscord(state_dir, settings)
    info = await discord.start()
    logging.getLogger("voicetrack_local.discord").info(
        "local Discord at %s (udp %s); %s", info["api_base"], info["udp_port"],
        state_dir / "discord.json")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await discord.stop()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(*parse(argv)))


if __name__ == "__main__":
    main()
