"""The bot's commands against the local control plane with the operator running.

Interactions are built offline as in tests/unit/test_bot_app.py (discord.py's state fed
documented gateway payloads); everything behind `RecordCommands` is real: `BotSessions`
on the API server, the operator starting a recorder pod, the transcodes and the promotion.
The bot's spec defaults select the `files` source (one speaker, a 6 s tone in S3), because
the `discord` source would need Discord's servers.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import discord
import numpy as np
import pytest
from kubernetes import client, config

from tests.fixtures.stack import Stack
from tests.unit.test_bot_app import (
    ALICE,
    BOB,
    GUILD,
    MANAGER_ROLE,
    OTHER_VOICE,
    RECORDER_ROLE,
    VOICE,
    discord_world,
)
from voicetrack.errors import NotFoundError, TemporaryFailure
from voicetrack.kubeclient import load_api_client
from voicetrack.resources import SessionState, StorageSpec
from voicetrack_local.stack import prepare_namespace
from voicetrack_recorder.bot.access import ControlPolicy
from voicetrack_recorder.bot.app import RecordCommands
from voicetrack_recorder.bot.archive import MeetingArchive
from voicetrack_recorder.bot.sessions import BotSessions
from voicetrack_recorder.bot.sessionspec import session_name

pytestmark = pytest.mark.e2e

SPEAKER = "400000000000000021"
OTHER_GUILD = "300000000000000077"


DOCS = Path(__file__).resolve().parents[2] / "docs" / "bot.md"


def bot_api(stack: Stack, ns: str, *, rbac: bool) -> client.ApiClient:
    """An API client with the token of ServiceAccount `voicetrack-bot` in `ns`, bound to
    the Role in docs/bot.md (the RBAC block, applied verbatim) when `rbac`."""
    stack.kubectl("-n", ns, "create", "serviceaccount", "voicetrack-bot")
    if rbac:
        block = re.search(r"## RBAC.*?```yaml\n(.*?)```", DOCS.read_text(), re.S)
        assert block is not None, "docs/bot.md has no RBAC yaml block"
        stack.kubectl("-n", ns, "apply", "-f", "-", input=block.group(1))
    token = stack.kubectl("-n", ns, "create", "token", "voicetrack-bot").stdout.strip()
    conf = client.Configuration()
    config.load_kube_config(config_file=str(stack.kubeconfig), client_configuration=conf)
    conf.cert_file = conf.key_file = None  # not the admin's certificate: the token only
    conf.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(conf)


def tone_wav(ms: int) -> bytes:
    t = np.arange(ms * 48) / 48_000
    mono = (0.2 * 32767 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(48_000)
        w.writeframes(np.repeat(mono[:, None], 2, axis=1).tobytes())
    return buf.getvalue()


def get(stack: Stack, ns: str, name: str) -> dict[str, Any] | None:
    res = stack.kubectl("-n", ns, "get", "recsess", name, "-o", "json", check=False)
    return json.loads(res.stdout) if res.returncode == 0 else None


async def wait_for(what: str, fn: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def field(embed: discord.Embed, name: str) -> str:
    return next(f.value or "" for f in embed.fields if f.name == name)


async def test_record_start_pause_resume_status_stop(stack: Stack, e2e_namespace: str) -> None:
    ns = e2e_namespace
    key = f"e2e-input/{ns}/{SPEAKER}.wav"
    stack.store.put_bytes(key, tone_wav(6_000), "audio/wav")
    defaults = {"chunkSeconds": 5, "source": {"type": "files", "speakers": [
        {"userId": SPEAKER, "objectKey": key}]}}
    sessions = BotSessions(bot_api(stack, ns, rbac=True), ns, spec_defaults=defaults,
                           settle_seconds=15)
    cmds = RecordCommands(sessions, ControlPolicy.parse(str(RECORDER_ROLE)))
    name = session_name(str(GUILD))

    async for world in discord_world(cmds):
        # start: Alice (Manage Server) records the voice channel she is in.
        embed = await cmds.start(world.interaction(ALICE, "alice", [MANAGER_ROLE]))
        obj = get(stack, ns, name)
        assert obj is not None, embed.description
        assert obj["spec"]["guildId"] == str(GUILD) and obj["spec"]["channelId"] == str(VOICE)
        assert obj["spec"]["requestedBy"] == str(ALICE) and obj["spec"]["chunkSeconds"] == 5
        assert obj["spec"]["source"]["type"] == "files"
        assert obj["metadata"]["labels"]["voicetrack.dev/guild"] == str(GUILD)
        meeting = obj["status"]["meetingId"]  # the operator started it within settle time
        assert field(embed, "Meeting") == f"`{meeting}`"
        assert field(embed, "Channel") == f"<#{VOICE}>"
        await wait_for("Recording", lambda: (get(stack, ns, name) or {}).get(
            "status", {}).get("state") == SessionState.RECORDING, 60)

        # start again (Bob, role holder, another channel): the same session answers.
        other = world.guild.get_channel(OTHER_VOICE)
        assert isinstance(other, discord.VoiceChannel)
        again = await cmds.start(world.interaction(BOB, "bob", [RECORDER_ROLE]), other)
        assert again.title == "Already recording in this server"
        assert field(again, "Meeting") == f"`{meeting}`"
        assert field(again, "Channel") == f"<#{VOICE}>"
        listed = json.loads(stack.kubectl("-n", ns, "get", "recsess", "-o", "json").stdout)
        assert [o["metadata"]["name"] for o in listed["items"]] == [name]

        # pause / resume patch spec.paused; the operator reports Paused.
        paused = await cmds.pause(world.interaction(ALICE, "alice", [MANAGER_ROLE], "pause"))
        assert paused.title == "Recording paused", paused.description
        assert (get(stack, ns, name) or {})["spec"]["paused"] is True
        await wait_for("Paused", lambda: (get(stack, ns, name) or {}).get(
            "status", {}).get("state") == SessionState.PAUSED, 30)
        resumed = await cmds.resume(world.interaction(BOB, "bob", [RECORDER_ROLE], "resume"))
        assert resumed.title == "Recording resumed", resumed.description
        assert (get(stack, ns, name) or {})["spec"]["paused"] is False
        await wait_for("a chunk", lambda: (get(stack, ns, name) or {}).get(
            "status", {}).get("chunks", {}).get("total", 0) >= 1, 60)

        # status: any member sees the live object.
        status = (await cmds.status(world.interaction(BOB, "bob", [], "status")))[0]
        assert field(status, "State") in (SessionState.RECORDING, SessionState.PAUSED)
        assert field(status, "Meeting") == f"`{meeting}`"
        total = re.search(r"(\d+) total", field(status, "Chunks"))
        assert total is not None and int(total.group(1)) >= 1, field(status, "Chunks")

        # stop deletes it; the operator promotes and releases it; then nothing is left.
        stopped = (await cmds.stop(world.interaction(ALICE, "alice", [MANAGER_ROLE], "stop")))[0]
        assert field(stopped, "State") in (SessionState.STOPPING, SessionState.TRANSCODING,
                                           SessionState.PROMOTING, SessionState.PROMOTED
                                           ), stopped.title
        again_stop = (await cmds.stop(world.interaction(ALICE, "alice", [MANAGER_ROLE],
                                                 "stop")))[0]
        assert again_stop.title != "No recording" or get(stack, ns, name) is None
        await wait_for("the session to be promoted and gone",
                       lambda: get(stack, ns, name) is None, 120)
        gone = (await cmds.status(world.interaction(BOB, "bob", [], "status")))[0]
        assert gone.title == "No recording" and str(GUILD) in (gone.description or "")
        recs = await asyncio.to_thread(
            stack.db, lambda s, m=meeting: s.get_recordings_for_meeting(m))
        assert sorted((str(r.kind), r.user_id) for r in recs) == [
            ("mixed", None), ("speaker", SPEAKER)]
        assert await asyncio.to_thread(
            stack.db, lambda s, m=meeting: s.get_temp_recordings_for_meeting(m)) == []


async def test_a_session_made_with_kubectl_is_the_guilds_session(stack: Stack,
                                                                 e2e_namespace: str) -> None:
    ns = e2e_namespace
    doc = {"apiVersion": "voicetrack.dev/v1alpha1", "kind": "RecordingSession",
           "metadata": {"name": "standup", "namespace": ns},
           "spec": {"guildId": OTHER_GUILD, "channelId": "300000000000000078",
                    "paused": True, "source": {"type": "files", "speakers": [
                        {"userId": SPEAKER, "objectKey": "absent.wav"}]}}}
    stack.kubectl("apply", "-f", "-", input=json.dumps(doc))
    sessions = BotSessions(load_api_client(str(stack.kubeconfig)), ns, settle_seconds=0)
    started = await sessions.start(OTHER_GUILD, "300000000000000079", "400000000000000001")
    assert not started.created and started.session["metadata"]["name"] == "standup"
    assert (await sessions.status(OTHER_GUILD))["metadata"]["name"] == "standup"
    # a namespace that does not exist: the API server's 404 message comes through
    bad = BotSessions(load_api_client(str(stack.kubeconfig)), f"{ns}-absent",
                      settle_seconds=0)
    with pytest.raises(NotFoundError, match="not found"):
        await bad.start(OTHER_GUILD, "300000000000000079", "400000000000000001")
    # without the Role the API server's 403 message reaches the member; RBAC is fixed by
    # an admin (or a fresh RoleBinding propagates), so it is "try again"
    forbidden = BotSessions(bot_api(stack, ns, rbac=False), ns, settle_seconds=0)
    with pytest.raises(TemporaryFailure, match=r"forbidden.*recordingsessions"):
        await forbidden.status(OTHER_GUILD)
    stopped = await sessions.stop(OTHER_GUILD)
    assert stopped["metadata"]["name"] == "standup"
    assert (get(stack, ns, "standup") or {}).get("metadata", {}).get(
        "deletionTimestamp") or get(stack, ns, "standup") is None



async def test_a_busy_refusal_names_no_other_session(stack: Stack, e2e_namespace: str
                                                     ) -> None:
    # Another team's namespace records the guild (the operator serves both); the bot's
    # start in its own namespace is refused as busy, and the member's answer names
    # neither that namespace nor its session.
    ns, other_ns = e2e_namespace, f"{e2e_namespace}-team-b"
    prepare_namespace(stack.kubeconfig, other_ns, stack.s3)
    try:
        key = f"e2e-input/{other_ns}/{SPEAKER}.wav"
        stack.store.put_bytes(key, tone_wav(60_000), "audio/wav")
        files = {"type": "files", "speakers": [{"userId": SPEAKER, "objectKey": key}]}
        doc = {"apiVersion": "voicetrack.dev/v1alpha1", "kind": "RecordingSession",
               "metadata": {"name": "secret-standup", "namespace": other_ns},
               "spec": {"guildId": str(GUILD), "channelId": str(OTHER_VOICE),
                        "chunkSeconds": 5, "source": files}}
        stack.kubectl("apply", "-f", "-", input=json.dumps(doc))
        await wait_for("the other namespace's session to record", lambda: (get(
            stack, other_ns, "secret-standup") or {}).get("status", {}).get(
            "state") == SessionState.RECORDING, 60)
        sessions = BotSessions(bot_api(stack, ns, rbac=True), ns, settle_seconds=15,
                               spec_defaults={"source": files})
        cmds = RecordCommands(sessions, ControlPolicy.parse(str(RECORDER_ROLE)))
        async for world in discord_world(cmds):
            embed = await cmds.start(world.interaction(ALICE, "alice", [MANAGER_ROLE]))
            assert field(embed, "State") == SessionState.REFUSED, embed.to_dict()
            shown = json.dumps(embed.to_dict())
            assert "already using this server" in shown
            assert other_ns not in shown and "secret-standup" not in shown, shown
            status = (await cmds.status(world.interaction(BOB, "bob", [], "status")))[0]
            shown = json.dumps(status.to_dict())
            assert other_ns not in shown and "secret-standup" not in shown, shown

            # once the other recording has ended, a new start records: the refusal
            # does not outlive its cause
            await release(stack, other_ns, "secret-standup")
            again = await cmds.start(world.interaction(ALICE, "alice", [MANAGER_ROLE]))
            assert again.title != "Already recording in this server", again.to_dict()
            await wait_for("Recording", lambda: (get(stack, ns, session_name(str(GUILD)))
                                                 or {}).get("status", {}).get("state")
                           == SessionState.RECORDING, 60)
            await release(stack, ns, session_name(str(GUILD)))
    finally:  # release the guild for the next test: its recorders must have left
        await release(stack, other_ns, "secret-standup")
        stack.kubectl("delete", "namespace", other_ns, "--wait=false", check=False)


async def release(stack: Stack, ns: str, name: str) -> None:
    """Delete session `name` and wait until its recorder pod is gone (the guild is free)."""
    stack.kubectl("-n", ns, "delete", "recsess", name, "--wait=false", check=False)
    await wait_for(f"{name}'s recorder to leave", lambda: stack.kubectl(
        "-n", ns, "get", "pod", f"{name}-rec", check=False).returncode != 0, 120)


async def test_a_promotion_outlasting_the_reply_ends_with_a_channel_notice(
        stack: Stack, e2e_namespace: str) -> None:
    # The reply may be edited for 15 minutes (the interaction token's lifetime); here it
    # may follow for 0.5 s only, so the answer says "still saving" and the bot posts a
    # plain message in the channel, without links, once the tracks are saved.
    ns = e2e_namespace
    key = f"e2e-input/{ns}/{SPEAKER}.wav"
    stack.store.put_bytes(key, tone_wav(6_000), "audio/wav")
    defaults = {"chunkSeconds": 5, "storage": {"bucket": stack.s3.bucket},
                "source": {"type": "files", "speakers": [
                    {"userId": SPEAKER, "objectKey": key}]}}
    sessions = BotSessions(bot_api(stack, ns, rbac=True), ns, spec_defaults=defaults,
                           settle_seconds=15)
    archive = MeetingArchive(stack.s3, StorageSpec(bucket=stack.s3.bucket))
    cmds = RecordCommands(sessions, ControlPolicy.parse(str(RECORDER_ROLE)),
                          archive=archive, follow_s=0.5)
    name = session_name(str(GUILD))
    notices: list[str] = []
    progress: list[discord.Embed] = []

    async def notice(text: str) -> None:
        notices.append(text)

    async def shown(embed: discord.Embed) -> None:
        progress.append(embed)

    async for world in discord_world(cmds):
        await cmds.start(world.interaction(ALICE, "alice", [MANAGER_ROLE]))
        await wait_for("a chunk", lambda: (get(stack, ns, name) or {}).get(
            "status", {}).get("chunks", {}).get("total", 0) >= 1, 60)
        meeting = (get(stack, ns, name) or {})["status"]["meetingId"]
        answer = (await cmds.stop(world.interaction(ALICE, "alice", [MANAGER_ROLE], "stop"),
                                  shown, notice))[0]
        assert (answer.title or "").startswith("Still saving after 0 min"), answer.title
        assert f"/record get {meeting}" in (answer.title or "")
        assert progress and field(progress[0], "Meeting") == f"`{meeting}`"
        await wait_for("the channel notice", lambda: notices, 180)
        assert notices == [f"The recording `{meeting}` is saved: `/record get {meeting}` "
                           "for download links (only you will see them)."]
        # Bob neither spoke nor manages the server: not found (issue 14's rule)
        hidden = (await cmds.get(world.interaction(BOB, "bob", [], "get"), meeting))[0]
        assert hidden.title == "No recording", hidden.to_dict()
        got = (await cmds.get(world.interaction(ALICE, "alice", [MANAGER_ROLE], "get"),
                              meeting))[0]
        assert got.title == f"Recording {meeting}"
        assert [f.name for f in got.fields] == [f"user {SPEAKER} (mp3)", "Mix (mp3)"]
