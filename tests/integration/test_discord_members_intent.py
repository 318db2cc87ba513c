"""A Discord application without the Server Members Intent still records (review finding
#4): role opt-outs make the recorder ask for GUILD_MEMBERS (privileged); Discord refuses
it at IDENTIFY with close 4014 "Disallowed intent(s)", which discord.py raises as
`PrivilegedIntentsRequired`, and the source used to fail the session for good (exit 2).
`open_gateway` now connects again without the intent, the role opt-outs still hold from
the roles Discord sends with voice states, and the source says what it records without
(`degraded`, in the recorder's termination message) and in every chunk sealed meanwhile
(`ChunkSpec.consentDegraded`, which the operator shows as the session's `ConsentDegraded`
condition).

The real local Discord (its knob `World.privileged_intents` stands for the developer
portal's toggle) and the recorder's own `DiscordSource`, in-process, feeding the recorder's
sealing path (`Chunker` → `Spool.add` → `ChunkSpec`, as `Recorder` wires them: the
Recorder itself needs a control plane for its chunks, out of this tier)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import discord
import pytest
import yarl

from voicetrack.chunkspec import ConsentDegraded
from voicetrack.layout import MeetingLayout
from voicetrack_local.discord.server import LocalDiscord, Settings
from voicetrack_local.discord.world import VoiceState
from voicetrack_recorder.chunker import Chunker
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.consent import Consent
from voicetrack_recorder.discord.endpoint import DiscordEndpoint
from voicetrack_recorder.discord.login import MEMBERS_REFUSED, MEMBERS_REFUSED_REASON
from voicetrack_recorder.discord.source import DiscordSource
from voicetrack_recorder.spool import Spool

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class _Sink:
    """The recorder's FrameSink (`Recorder.push`): consent first, then the chunker."""

    def __init__(self, consent: Consent, chunker: Chunker) -> None:
        self.consent, self.chunker = consent, chunker

    def push(self, user_id: str, slot: int, packet: bytes, phase: int = 0) -> bool:
        return not self.consent.see(user_id) and self.chunker.push(user_id, slot, packet, phase)


@pytest.mark.parametrize("allowed", [False, True])
async def test_role_opt_outs_record_with_or_without_the_members_intent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allowed: bool) -> None:
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY",
                        yarl.URL(str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)))
    server = LocalDiscord(tmp_path / "discord", Settings(users=["alice", "bob"]))
    world = server.world
    role = world.add_role("not-recorded")
    alice, bob = world.users
    alice.roles = [role]
    for user in (alice, bob):  # in the voice channel before the recorder comes
        world.voice_states[user.id] = VoiceState(user.id, world.voice.id, f"s{user.id}")
    if not allowed:
        world.privileged_intents = 0  # the application lacks the Server Members Intent
    info = await server.start()
    try:
        clock = SessionClock(int(time.time() * 1000))
        consent = Consent(clock, role_ids=[str(role)])
        chunker = Chunker(50, consent=consent)  # 1 s windows, sealed by hand below
        chunker.open(max(clock.now_slot(), 0))
        spool = Spool(tmp_path / "spool", 1 << 20,
                      MeetingLayout(prefix="recordings", guild_id=str(info["guild_id"]),
                                    meeting_id="m" * 16), "standup")

        source = DiscordSource(
            token=info["bot_token"], guild_id=info["guild_id"],
            channel_id=info["voice_channel_id"], clock=clock, sink=_Sink(consent, chunker),
            consent=consent,
            endpoint=DiscordEndpoint(info["api_base"], info["gateway_url"],
                                     info["ca_bundle"]))
        stop = asyncio.Event()
        task = asyncio.create_task(source.run(stop))
        deadline = time.monotonic() + 30
        while not (world.bot.id in world.voice_states and {str(alice.id), str(bob.id)}
                   <= consent.seen):
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, "the source never joined and saw both"
            await asyncio.sleep(0.05)
        assert consent.excluded(str(alice.id)) and not consent.excluded(str(bob.id))
        assert [(o.user_id, o.via) for o in consent.opted_out()] == [(str(alice.id), "role")]
        assert server.gateway is not None
        assert server.gateway.refused_intents == (0 if allowed else 1)
        assert source.degraded == (None if allowed else MEMBERS_REFUSED)
        # every chunk sealed while degraded carries it, in the API form the operator reads
        specs = []
        for _ in range(2):
            sealed = chunker.seal()
            assert sealed is not None
            specs.append(spool.add(sealed).spec.to_api())
        assert [s["index"] for s in specs] == [0, 1]
        if allowed:
            assert all("consentDegraded" not in s for s in specs), specs
        else:
            assert all(s["consentDegraded"] == {"reason": MEMBERS_REFUSED_REASON,
                                                "message": MEMBERS_REFUSED} for s in specs)
            assert ConsentDegraded.model_validate(specs[0]["consentDegraded"]).reason == \
                "MembersIntentRefused"
        assert all(s["optedOut"][0]["userId"] == str(alice.id) for s in specs)
        stop.set()
        await asyncio.wait_for(task, 30)  # a clean end, no InvalidInputError
    finally:
        await server.stop()
