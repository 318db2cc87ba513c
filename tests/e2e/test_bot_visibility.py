"""Who the bot shows a meeting's audio to (issue 14's rule, `voicetrack.visibility`, as the
web page applies it): members with Manage Server see every meeting of the guild, other
members the meetings they spoke in; for everyone else a meeting answers exactly like one
that does not exist. `/record get`, `/record list` and `/record status`'s audio so far, on
the local control plane (CRDs installed, no operator) and a real SeaweedFS; interactions
built offline as in tests/unit/test_bot_app.py."""

from __future__ import annotations

import json

import discord
import pytest

from tests.fixtures.cluster import Kubectl
from tests.integration.test_bot_live import MEETING as LIVE_MEETING
from tests.integration.test_bot_live import save_live
from tests.unit.test_bot_app import ALICE, BOB, DAVE, GUILD, MANAGER_ROLE, discord_world
from voicetrack.kubeclient import load_api_client
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest, FinalTrack
from voicetrack.objectstore import ObjectStore, sha256_hex
from voicetrack.resources import StorageSpec
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.stack import install_crds
from voicetrack_recorder.bot.access import ControlPolicy
from voicetrack_recorder.bot.app import RecordCommands
from voicetrack_recorder.bot.archive import MeetingArchive
from voicetrack_recorder.bot.sessions import BotSessions
from voicetrack_recorder.bot.sessionspec import session_name

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

DAVES, CAROLS, MISSING = "DaveSpokeHere001", "CarolSpokeHere01", "NobodyHereAtAll1"
CAROL_ID = "840000000000000003"
PAUSED_FILES = {"paused": True, "source": {"type": "files", "speakers": [
    {"userId": str(ALICE), "objectKey": "absent.wav"}]}}


def save(store: ObjectStore, meeting: str, speaker: str) -> None:
    """A promoted meeting of GUILD in which only `speaker` spoke."""
    layout = MeetingLayout("recordings", str(GUILD), meeting)
    tracks = []
    for track, user in ((speaker, speaker), ("mix", None)):
        key = layout.final_key(track, "mp3")
        store.put_bytes(key, b"audio", "audio/mpeg")
        tracks.append(FinalTrack(track=track, kind="mixed" if user is None else "speaker",
                                 user_id=user, format="mp3", key=key, bytes=5,
                                 sha256=sha256_hex(b"audio"), duration_ms=6000))
    store.put_json(layout.final_manifest_key, FinalManifest(
        tool_version="test", meeting_id=meeting, duration_ms=6000, recorded_ms=6000,
        paused_ms=0, tracks=tracks).to_api())


def so_far(embeds: list[discord.Embed]) -> list[str]:
    return [f.name or "" for e in embeds for f in e.fields if (f.name or "").startswith(
        "So far")]


async def test_meetings_are_shown_to_managers_and_their_speakers_only(
        cluster: LocalCluster, kubectl: Kubectl, namespace: str,
        object_store: ObjectStore) -> None:
    install_crds(cluster.kubeconfig)
    save(object_store, DAVES, str(DAVE))
    save(object_store, CAROLS, CAROL_ID)
    sessions = BotSessions(load_api_client(str(cluster.kubeconfig)), namespace,
                           spec_defaults=PAUSED_FILES, settle_seconds=0)
    archive = MeetingArchive(object_store.settings, StorageSpec(bucket=object_store.bucket))
    cmds = RecordCommands(sessions, ControlPolicy(), archive=archive)
    async for world in discord_world(cmds):
        alice = world.interaction(ALICE, "alice", [MANAGER_ROLE], "get")  # Manage Server
        dave = world.interaction(DAVE, "dave", [], "get")  # spoke in DAVES
        bob = world.interaction(BOB, "bob", [], "get")  # spoke in neither

        for who in (alice, dave):
            got = await cmds.get(who, DAVES)
            assert got[0].title == f"Recording {DAVES}", got[0].to_dict()
            assert any("](http" in (f.value or "") for f in got[0].fields)
        assert (await cmds.get(dave, CAROLS))[0].to_dict() == (
            await cmds.get(dave, MISSING))[0].to_dict() | {
            "description": f"no saved recording `{CAROLS}` in this server"}
        no_opus = (await cmds.get(dave, DAVES, "opus"))[0]
        assert not no_opus.fields and no_opus.description == (
            f"format: track {DAVE} has no 'opus'; it has mp3"), no_opus.to_dict()
        assert (await cmds.get(bob, DAVES, "opus"))[0].to_dict() == (
            await cmds.get(bob, DAVES))[0].to_dict()  # no hint that the meeting exists
        refused = (await cmds.get(bob, DAVES))[0]
        assert refused.title == "No recording" and not refused.fields
        assert refused.description == f"no saved recording `{DAVES}` in this server"

        def listed(e: discord.Embed) -> set[str]:
            return {m for m in (DAVES, CAROLS) if m in (e.description or "")}
        assert listed(await cmds.recent(alice)) == {DAVES, CAROLS}
        assert listed(await cmds.recent(dave)) == {DAVES}
        assert listed(await cmds.recent(bob)) == set()

        # the live session's audio so far: for managers and its speakers only
        started = await sessions.start(str(GUILD), "820000000000000001", str(ALICE))
        name = started.session["metadata"]["name"]
        assert name == session_name(str(GUILD))
        kubectl("-n", namespace, "patch", "recsess", name, "--subresource=status",
                "--type=merge", "-p", json.dumps({"status": {
                    "state": "Recording", "meetingId": LIVE_MEETING,
                    "speakers": [str(DAVE)]}}))
        save_live(object_store, str(GUILD), [str(DAVE)])
        assert so_far(await cmds.status(alice)) and so_far(await cmds.status(dave))
        answer = await cmds.status(bob)
        assert answer[0].title == "Recording" and not so_far(answer)
    kubectl("-n", namespace, "delete", "recsess", session_name(str(GUILD)), "--wait=false",
            check=False)
