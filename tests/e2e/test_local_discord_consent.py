"""Per-speaker consent on the wire (issue 12): the recorder's unmodified `Recorder` and
`DiscordSource` (in this process, as `voicetrack-recorder run` wires them) record three
discord.py members through the local Discord into real S3 (SeaweedFS) and RecordingChunks
on the local control plane (CRDs only, no operator: nothing else writes the meeting's
prefix).

carol has a role listed in the session's `spec.optOutRoleIds` from the start; bob is added
to `spec.optOutUserIds` mid-call (a merge patch with kubectl, as any client would); alice is
recorded throughout. Each member plays their own tone through discord.py's send path
(libopus, DAVE, transport AEAD, UDP). Then:

- carol: no track in any chunk, no object keyed by or mentioning her id, no object whose
  audio is her tone; she is in every chunk's `optedOut` (via `role`) once seen;
- bob (opted out while talking): every track of his ends before his `sinceMs`, his frames
  up to it are there; the chunks sealed after it list him (via `user`, the same `sinceMs`);
- alice: every packet she sent is in a track, and the objects decode to her tone.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest

from tests.discord_rig import tone_pcm
from tests.integration.test_local_discord import _until
from tests.local_discord_clients import (
    dave_ready,
    dominant_hz,
    play,
    point_discord_py,
    start_client,
    stop_client,
)
from voicetrack.audio import OPUS_SILENCE_FRAME
from voicetrack.kubeclient import load_api_client
from voicetrack.objectstore import ObjectStore
from voicetrack.oggopus import decode_ogg_opus
from voicetrack.resources import API_VERSION, SESSION_KIND, SessionSpec
from voicetrack_local.discord.server import LocalDiscord, Settings
from voicetrack_local.stack import install_crds
from voicetrack_recorder.clock import SessionClock
from voicetrack_recorder.discord.endpoint import DiscordEndpoint
from voicetrack_recorder.discord.source import DiscordSource
from voicetrack_recorder.kube import RecorderKube
from voicetrack_recorder.main import meeting_id_of, session_layout, start_pause_watch
from voicetrack_recorder.recorder import Recorder
from voicetrack_recorder.spool import Spool
from voicetrack_recorder.uploader import ChunkUploader

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

HZ = (440.0, 660.0, 880.0)
"""alice, bob, carol."""
FRAMES = 300
"""Frames (6 s) each member plays without a pause; bob opts out about half-way."""


@pytest.fixture
async def local_discord(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                        ) -> AsyncIterator[tuple[LocalDiscord, dict[str, Any], int]]:
    server = LocalDiscord(tmp_path / "discord", Settings())  # alice, bob, carol
    role = server.world.add_role("not-recorded")
    server.world.users[2].roles = [role]
    info = await server.start()
    point_discord_py(monkeypatch, info)
    yield server, info, role
    await server.stop()


def _session(name: str, info: dict[str, Any], bucket: str, role: int) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": SESSION_KIND, "metadata": {"name": name},
            "spec": {"guildId": info["guild_id"], "channelId": info["voice_channel_id"],
                     "chunkSeconds": 5, "storage": {"bucket": bucket},
                     "optOutRoleIds": [str(role)]}}


async def test_opted_out_members_leave_no_audio_anywhere(
        local_discord: Any, cluster: Any, kubectl: Any, namespace: str,
        object_store: ObjectStore, tmp_path: Path) -> None:
    server, info, role = local_discord
    alice, bob, carol = (u["id"] for u in info["users"])
    install_crds(cluster.kubeconfig)
    name = "consent"
    kubectl("-n", namespace, "apply", "-f", "-",
            input=json.dumps(_session(name, info, object_store.settings.bucket, role)))
    kube = RecorderKube(load_api_client(str(cluster.kubeconfig)), namespace, name)
    obj = kube.get_session()
    spec = SessionSpec.model_validate(obj["spec"])
    layout = session_layout(spec, meeting_id_of(obj))
    uploader = ChunkUploader(object_store, kube, Spool(tmp_path / "spool", 1 << 30, layout, name),
                             obj["metadata"]["uid"], ack_file=str(tmp_path / "acked.json"))
    clock = SessionClock(int(time.time() * 1000))
    kube.paused = False
    watch_stop = start_pause_watch(kube)
    rec = Recorder(kube, uploader, spec, clock)
    await rec.prepare()
    source = DiscordSource(token=info["bot_token"], guild_id=info["guild_id"],
                           channel_id=info["voice_channel_id"], clock=clock, sink=rec,
                           endpoint=DiscordEndpoint(info["api_base"], info["gateway_url"],
                                                    info["ca_bundle"]),
                           consent=rec.consent)
    run = asyncio.create_task(rec.run(source))
    clients = [await start_client(u["token"], info["ca_bundle"]) for u in info["users"]]
    try:
        bot_id = int(info["application_id"])
        await _until(lambda: server.voice is not None and bot_id in server.voice.connections
                     and server.voice.connections[bot_id].mode is not None,
                     "the recorder in the voice channel")
        voices: list[discord.VoiceClient] = []
        for client, _ in clients:
            channel = client.get_channel(int(info["voice_channel_id"]))
            assert isinstance(channel, discord.VoiceChannel)
            voices.append(await channel.connect(timeout=20))
        await dave_ready(*voices)
        await _until(lambda: server.voice is not None and all(
            c.transition is None for c in server.voice.calls.values()), "op 22")
        await _until(lambda: rec.consent.excluded(carol), "carol seen, opted out by role")
        carol_seen_ms = clock.now_ms()
        playing = asyncio.gather(*(play(v, tone_pcm(FRAMES, hz))
                                   for v, hz in zip(voices, HZ, strict=True)))
        await asyncio.sleep(3.0)  # bob is talking when he opts out
        await asyncio.to_thread(kubectl, "-n", namespace, "patch", "recsess", name,
                                "--type=merge",
                                "-p", json.dumps({"spec": {"optOutUserIds": [bob]}}))
        await _until(lambda: rec.consent.excluded(bob), "the recorder sees bob's opt-out")
        since = rec.consent.since_ms(bob)
        assert since is not None
        sent = await playing
        await asyncio.sleep(1.0)  # jitter buffer and seal delay, with room under load
    finally:
        rec.stop.set()
        result = await asyncio.wait_for(run, 60)
        watch_stop.set()
        for client, runner in clients:
            await stop_client(client, runner)
    assert result.reason == "stopped" and result.error is None, result

    chunks = kube.list_chunks()
    assert chunks and [c.index for c in chunks] == list(range(len(chunks)))
    assert all(t.user_id != carol for c in chunks for t in c.tracks)
    assert all(t.last_ms < since for c in chunks for t in c.tracks if t.user_id == bob)
    listed = [{o.user_id: (o.since_ms, o.via) for o in c.opted_out} for c in chunks]
    assert listed[-1][carol][1] == "role" and listed[-1][bob] == (since, "user")
    assert all(d[bob] == (since, "user") for c, d in zip(chunks, listed, strict=True)
               if c.end_ms > since + 400)  # sealed after the opt-out was seen
    assert all(d[carol][1] == "role" for c, d in zip(chunks, listed, strict=True)
               if c.end_ms > carol_seen_ms + 400)

    # the raw tracks (each chunk folder also holds its spec, chunk.json, which lists the
    # opted-out members by id: not audio)
    keys = [k for k in object_store.list_keys(layout.root) if k.endswith(".opus")]
    assert keys and all(carol not in k for k in keys)
    packets: dict[str, list[bytes]] = {alice: [], bob: []}
    for key in keys:
        data = object_store.get_bytes(key)
        assert carol.encode() not in data, key
        user = key.rsplit("/", 1)[-1].split(".")[0]
        packets[user] += [p for p in decode_ogg_opus(data).packets
                          if p != OPUS_SILENCE_FRAME]
    received = {u: sum(t.frames for c in chunks for t in c.tracks if t.user_id == u)
                for u in (alice, bob)}
    bob_first = min(t.first_ms for c in chunks for t in c.tracks if t.user_id == bob)
    print(f"chunks {len(chunks)}, objects {len(keys)}, bob since {since} ms (first "
          f"{bob_first} ms), frames alice {received[alice]}/{sent[0]}, bob {received[bob]}, "
          f"audio frames alice {len(packets[alice])} bob {len(packets[bob])}, "
          f"dropped {source.stats.as_dict()['dropped']}, chunker {rec.chunker.stats}")
    # every packet alice sent (discord.py ends a play with 5 silence frames) is in a track
    assert received[alice] == sent[0] and len(packets[alice]) == FRAMES
    # bob: each frame up to his opt-out, less what was still in the jitter buffer then
    # (released after the opt-out was seen: dropped before decryption too)
    assert (since - bob_first) // 20 - 10 <= received[bob] <= (since - bob_first) // 20
    assert received[bob] == len(packets[bob])  # all of them his tone, no silence frames
    assert source.stats.dropped["opted_out"] == sent[2] + sent[1] - received[bob]
    for user, hz in ((alice, HZ[0]), (bob, HZ[1])):
        assert abs(dominant_hz(dict(enumerate(packets[user]))) - hz) < 5, user
    assert carol not in source.stats.decrypt
