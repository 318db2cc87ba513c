"""The bot's answers with links as Discord takes them: `/record get|stop|status` links
minted by `MeetingArchive` with the minio signer (meetings on a real SeaweedFS, signed for
a public endpoint of a realistic length), split by `links_embeds` / `add_live_links`, and
sent by the bot's own reply path (`client._reply`) to the local Discord, which refuses a
message over Discord's embed limits ("Resources › Message › Embed Limits": 6000
characters in all of a message's embeds, 25 fields, field value 1024) with a 400 as
Discord does. Every link must arrive; a refused answer must still answer the member.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import discord
import pytest

from tests.local_discord_clients import point_discord_py
from tests.unit.test_bot_app import interaction_payload
from voicetrack.layout import MeetingLayout
from voicetrack.manifests import FinalManifest, FinalTrack
from voicetrack.objectstore import ObjectStore, sha256_hex
from voicetrack.resources import StorageSpec
from voicetrack_local.discord.rest import embed_problem
from voicetrack_local.discord.server import LocalDiscord, Settings
from voicetrack_recorder.bot.archive import MeetingArchive, TrackLink
from voicetrack_recorder.bot.client import _reply
from voicetrack_recorder.bot.embeds import EMBED_FIELDS, EMBED_TOTAL
from voicetrack_recorder.bot.linkembeds import add_live_links, links_embeds

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

GUILD = "300000000000000031"
MEETING = "ManyManyManyMan1"
PUBLIC = "https://s3.recordings.voicetrack-example.org"
FORMATS = ("mp3", "flac", "opus")


def save_meeting(store: ObjectStore, speakers: list[str]) -> FinalManifest:
    """A promoted meeting with every speaker and the mix in mp3, flac and opus."""
    layout = MeetingLayout("recordings", GUILD, MEETING)
    tracks = []
    for user in [*speakers, None]:
        for fmt in FORMATS:
            name = user or "mix"
            key = layout.final_key(name, fmt)
            data = f"{name}.{fmt}".encode()
            store.put_bytes(key, data, "application/octet-stream")
            tracks.append(FinalTrack(track=name, kind="mixed" if user is None else "speaker",
                                     user_id=user, format=fmt, key=key, bytes=len(data),
                                     sha256=sha256_hex(data), duration_ms=3_600_000))
    manifest = FinalManifest(tool_version="test", meeting_id=MEETING, duration_ms=3_600_000,
                             recorded_ms=3_600_000, paused_ms=0, tracks=tracks)
    store.put_json(layout.final_manifest_key, manifest.to_api())
    return manifest


def archive_of(store: ObjectStore) -> MeetingArchive:
    return MeetingArchive(dataclasses.replace(store.settings, public_endpoint=PUBLIC),
                          StorageSpec(bucket=store.bucket))


def assert_within_limits(embeds: list[discord.Embed]) -> None:
    for e in embeds:
        assert len(e) <= EMBED_TOTAL and len(e.fields) <= EMBED_FIELDS, (len(e), len(e.fields))
        assert embed_problem([as_dict(e)]) is None  # what the local Discord checks


def as_dict(embed: discord.Embed) -> dict[str, Any]:
    return cast(dict[str, Any], embed.to_dict())


def urls(embeds: list[dict[str, Any]]) -> list[str]:
    return [v.split("](", 1)[1].split(")", 1)[0] for e in embeds for f in e.get("fields", [])
            if "](" in (v := f.get("value") or "")]


@pytest.mark.parametrize("speakers", [4, 11, 40])
async def test_link_answers_stay_within_discords_limits(object_store: ObjectStore,
                                                        speakers: int) -> None:
    users = [f"4000000000000003{i:02d}" for i in range(speakers)]
    save_meeting(object_store, users)
    archive = archive_of(object_store)
    saved = await archive.get(GUILD, MEETING)
    links = await archive.links(saved)
    # one link per track, mp3 (the CLI's default format), speakers first, the mix last
    assert [(t.user_id, t.link.format) for t in links] == [
        *((u, "mp3") for u in users), (None, "mp3")]
    assert all(len(t.link.url) > 300 for t in links)  # real SigV4 URLs, not toy ones
    embeds = links_embeds(saved, links, {})
    assert_within_limits(embeds)
    assert urls([as_dict(e) for e in embeds]) == [t.link.url for t in links]
    # every format of every track (what the answer used to carry) still fits, split
    every = [TrackLink(t.user_id, t.kind, archive.store.presigned_link(t.key), t.bytes,
                       t.sha256, t.duration_ms) for t in saved.manifest.tracks]
    embeds = links_embeds(saved, every, {})
    assert len(embeds) > 1
    assert_within_limits(embeds)
    assert urls([as_dict(e) for e in embeds]) == [t.link.url for t in every]
    # /record status: the session's embed, then the audio so far
    session = discord.Embed(title="Recording", description="x" * 900)
    for i in range(10):
        session.add_field(name=f"f{i}", value="y" * 100)
    live = add_live_links(session, saved.manifest, every, {})
    assert_within_limits(live)
    assert urls([as_dict(e) for e in live]) == [t.link.url for t in every]


@pytest.fixture
async def bot_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                    ) -> AsyncIterator[tuple[LocalDiscord, dict[str, Any], discord.Client]]:
    """The local Discord and a discord.py client logged in to its REST API as the bot
    (the interaction endpoints need no gateway)."""
    server = LocalDiscord(tmp_path / "discord", Settings())
    info = await server.start()
    point_discord_py(monkeypatch, info)
    ctx = ssl.create_default_context(cafile=info["ca_bundle"])
    bot = discord.Client(intents=discord.Intents.none(),
                         connector=aiohttp.TCPConnector(ssl=ctx))
    await bot.login(info["bot_token"])
    yield server, info, bot
    await bot.close()
    await server.stop()


def interaction(bot: discord.Client, info: dict[str, Any], token: str) -> discord.Interaction:
    doc = interaction_payload(840000000000000001, "alice", [], "get") | {
        "token": token, "application_id": info["application_id"]}
    doc["channel"] |= {"name": "general", "position": 0, "guild_id": doc["guild_id"],
                       "permission_overwrites": [], "nsfw": False, "parent_id": None}
    return discord.Interaction(data=doc, state=bot._connection)  # type: ignore[arg-type]


def answers(server: LocalDiscord, token: str) -> list[dict[str, Any]]:
    return [e for m in server.world.messages if m.get("interaction_token") == token
            for e in m["embeds"]]


async def test_every_link_arrives_through_the_reply(
        bot_state: Any, object_store: ObjectStore) -> None:
    server, info, bot = bot_state
    users = [f"4000000000000004{i:02d}" for i in range(11)]
    save_meeting(object_store, users)
    archive = archive_of(object_store)
    saved = await archive.get(GUILD, MEETING)
    links = await archive.links(saved)

    async def work() -> list[discord.Embed]:
        return links_embeds(saved, links, {})
    await _reply(interaction(bot, info, "tok-links"), work())
    got = answers(server, "tok-links")
    assert got and got[0]["title"] == "Recording saved"
    assert urls(got) == [t.link.url for t in links]


async def test_an_answer_discord_refuses_still_answers(bot_state: Any) -> None:
    server, info, bot = bot_state
    too_big = discord.Embed(title="Recording saved")
    for i in range(EMBED_FIELDS):
        too_big.add_field(name=f"track {i}", value="z" * 1000)

    async def work() -> discord.Embed:
        return too_big
    await _reply(interaction(bot, info, "tok-refused"), work())
    got = answers(server, "tok-refused")
    assert [e["title"] for e in got] == ["Something went wrong"]
    assert "Discord refused the answer" in got[0]["description"]
    assert "50035" in got[0]["description"] or "400" in got[0]["description"]
