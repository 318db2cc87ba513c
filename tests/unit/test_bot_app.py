"""The bot's Discord layer on interactions built offline.

discord.py's own client state is fed the gateway events Discord would send (READY, then
GUILD_CREATE with roles, channels and voice states; https://discord.com/developers/docs/
events/gateway-events) through the parsers its gateway calls, and `discord.Interaction`
objects are built from INTERACTION_CREATE payloads (https://discord.com/developers/docs/
interactions/receiving-and-responding#interaction-object). The service behind the
commands is a real `BotSessions` whose Kubernetes API address has nothing listening, so a
command that gets as far as the service answers "try again"; one refused before that
never reaches it.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import discord
import pytest
from kubernetes import client

from voicetrack.errors import InvalidInputError
from voicetrack_recorder.bot.access import ControlPolicy, GuildAllowList
from voicetrack_recorder.bot.app import (
    ARCHIVE_PER_S,
    ARCHIVE_RATE,
    RecordCommands,
)
from voicetrack_recorder.bot.client import VoicetrackBot, bot_intents
from voicetrack_recorder.bot.names import display_names
from voicetrack_recorder.bot.sessions import BotSessions

pytestmark = pytest.mark.unit

GUILD = 810000000000000001
BOT = 810000000000000002
APP = 810000000000000003
VOICE = 820000000000000001
STAGE = 820000000000000002
TEXT = 820000000000000003
OTHER_VOICE = 820000000000000004
MANAGER_ROLE = 830000000000000001
RECORDER_ROLE = 830000000000000002
ALICE = 840000000000000001  # Manager role, in VOICE
BOB = 840000000000000002  # Recorder role, in no voice channel
CAROL = 840000000000000003  # no role, in STAGE
DAVE = 840000000000000004  # no role, in VOICE
MANAGE_GUILD = 1 << 5
CONNECT_SPEAK_VIEW = (1 << 20) | (1 << 21) | (1 << 10)


def user_payload(uid: int, name: str, bot: bool = False) -> dict[str, Any]:
    return {"id": str(uid), "username": name, "discriminator": "0", "global_name": name,
            "avatar": None, "bot": bot}


def role_payload(rid: int, name: str, perms: int, position: int) -> dict[str, Any]:
    return {"id": str(rid), "name": name, "permissions": str(perms), "position": position,
            "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0}


def voice_state(uid: int, channel: int) -> dict[str, Any]:
    return {"user_id": str(uid), "channel_id": str(channel), "session_id": f"s{uid}",
            "deaf": False, "mute": False, "self_deaf": False, "self_mute": False,
            "self_video": False, "suppress": False, "request_to_speak_timestamp": None}


def member_payload(uid: int, name: str, roles: list[int], bot: bool = False
                   ) -> dict[str, Any]:
    return {"user": user_payload(uid, name, bot), "roles": [str(r) for r in roles],
            "joined_at": "2026-01-01T00:00:00+00:00", "deaf": False, "mute": False,
            "flags": 0}


def channel_payload(cid: int, kind: int, name: str, position: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": str(cid), "type": kind, "name": name, "position": position,
                           "guild_id": str(GUILD), "permission_overwrites": [],
                           "parent_id": None, "nsfw": False}
    if kind in (2, 13):
        doc |= {"bitrate": 64000, "user_limit": 0, "rtc_region": None}
    return doc


def guild_create_payload(voice_overwrites: list[dict[str, Any]] | None = None,
                         extra_roles: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """GUILD_CREATE as sent to a bot with the guilds + voice_states intents; VOICE
    carries `voice_overwrites` ("Channel Object › Overwrite Object")."""
    voice = channel_payload(VOICE, 2, "Voice", 0) | {
        "permission_overwrites": voice_overwrites or []}
    return {
        "id": str(GUILD), "name": "Test Server", "owner_id": str(840000000000000099),
        "unavailable": False, "member_count": 5, "large": False, "features": [],
        "emojis": [], "stickers": [], "threads": [], "stage_instances": [],
        "guild_scheduled_events": [], "presences": [], "premium_tier": 0,
        "roles": [role_payload(GUILD, "@everyone", CONNECT_SPEAK_VIEW, 0),
                  role_payload(MANAGER_ROLE, "Manager", MANAGE_GUILD, 2),
                  role_payload(RECORDER_ROLE, "Recorder", 0, 1), *(extra_roles or [])],
        "channels": [voice,
                     channel_payload(STAGE, 13, "Stage", 1),
                     channel_payload(TEXT, 0, "general", 2),
                     channel_payload(OTHER_VOICE, 2, "Other voice", 3)],
        "voice_states": [voice_state(ALICE, VOICE), voice_state(CAROL, STAGE),
                         voice_state(DAVE, VOICE)],
        "members": [member_payload(BOT, "voicetrack", [], bot=True)],
    }


def ready_payload() -> dict[str, Any]:
    return {"v": 10, "user": user_payload(BOT, "voicetrack", bot=True),
            "guilds": [{"id": str(GUILD), "unavailable": True}], "session_id": "sess",
            "resume_gateway_url": "wss://gateway.invalid", "shard": [0, 1],
            "application": {"id": str(APP), "flags": 0}}


_serial = iter(range(850000000000000001, 860000000000000000))


def interaction_payload(uid: int, name: str, roles: list[int], sub: str,
                        in_guild: bool = True) -> dict[str, Any]:
    """INTERACTION_CREATE (type 2, application command) for `/record <sub>`."""
    doc: dict[str, Any] = {
        "id": str(next(_serial)), "application_id": str(APP), "type": 2,
        "token": "interaction-token", "version": 1, "locale": "en-US",
        "attachment_size_limit": 8 * 1024 * 1024, "entitlements": [],
        "authorizing_integration_owners": {"0": str(GUILD)}, "app_permissions": "0",
        "data": {"id": str(APP + 1), "name": "record", "type": 1,
                 "options": [{"name": sub, "type": 1, "options": []}]},
    }
    if in_guild:
        doc |= {"guild_id": str(GUILD), "guild_locale": "en-US", "context": 0,
                "channel_id": str(TEXT), "channel": {"id": str(TEXT), "type": 0},
                "member": member_payload(uid, name, roles)
                | {"permissions": str(CONNECT_SPEAK_VIEW)}}
    else:
        doc |= {"user": user_payload(uid, name), "context": 1,
                "channel": {"id": str(870000000000000001), "type": 1}}
    return doc


def unreachable_api() -> client.ApiClient:
    """An API client for a loopback port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = client.Configuration(host=f"http://127.0.0.1:{port}")
    conf.retries = False
    return client.ApiClient(conf)


@dataclass
class World:
    """The bot, its cached guild, and a way to make interactions."""

    bot: VoicetrackBot
    cmds: RecordCommands

    @property
    def guild(self) -> discord.Guild:
        guild = self.bot.get_guild(GUILD)
        assert guild is not None
        return guild

    def interaction(self, uid: int, name: str, roles: list[int], sub: str = "start",
                    in_guild: bool = True) -> discord.Interaction:
        return discord.Interaction(
            data=interaction_payload(uid, name, roles, sub, in_guild),  # type: ignore[arg-type]
            state=self.bot._connection)


async def discord_world(cmds: RecordCommands, guild: dict[str, Any] | None = None
                        ) -> AsyncIterator[World]:
    """The real bot class, fed READY and GUILD_CREATE (`guild`, default
    `guild_create_payload()`) through discord.py's gateway parsers; closed after (it never
    logs in: nothing reaches Discord)."""
    bot = VoicetrackBot(cmds)
    bot._connection.guild_ready_timeout = 0.05
    async with bot:
        bot._connection.parsers["READY"](ready_payload())
        bot._connection.parsers["GUILD_CREATE"](guild or guild_create_payload())
        await bot.wait_until_ready()
        yield World(bot, cmds)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    sessions = BotSessions(unreachable_api(), "voicetrack", settle_seconds=0)
    async for w in discord_world(RecordCommands(sessions, ControlPolicy.parse(
            str(RECORDER_ROLE)))):
        yield w


def text(embed: discord.Embed) -> str:
    return f"{embed.title}\n{embed.description}"


async def test_the_gateway_events_give_the_cache_the_commands_read(world: World) -> None:
    guild = world.guild
    alice = world.interaction(ALICE, "alice", [MANAGER_ROLE]).user
    assert isinstance(alice, discord.Member) and alice.guild_permissions.manage_guild
    assert alice.voice is not None and alice.voice.channel == guild.get_channel(VOICE)
    assert guild.me is not None and guild.me.id == BOT


async def test_a_direct_message_is_refused(world: World) -> None:
    embed = await world.cmds.start(world.interaction(ALICE, "alice", [], in_guild=False))
    assert embed.title == "Cannot do that" and "in a server" in text(embed)


@pytest.mark.parametrize("sub", ["start", "stop", "pause", "resume"])
async def test_members_without_manage_server_or_a_role_may_not_control(world: World,
                                                                        sub: str) -> None:
    answer = await getattr(world.cmds, sub)(world.interaction(DAVE, "dave", [], sub))
    embed = answer[0] if isinstance(answer, list) else answer
    assert embed.title == "Cannot do that"
    assert "Manage Server" in text(embed) and f"<@&{RECORDER_ROLE}>" in text(embed)


async def test_status_is_open_to_every_member_and_reaches_the_service(world: World) -> None:
    [embed] = await world.cmds.status(world.interaction(DAVE, "dave", [], "status"))
    assert embed.title is not None and embed.title.startswith("Try again")
    assert "API server unreachable" in text(embed)


async def test_start_needs_a_voice_channel(world: World) -> None:
    embed = await world.cmds.start(world.interaction(BOB, "bob", [RECORDER_ROLE]))
    assert embed.title == "Cannot do that" and "join a voice channel" in text(embed)


async def test_start_refuses_a_stage_channel(world: World) -> None:
    embed = await world.cmds.start(world.interaction(CAROL, "carol", [MANAGER_ROLE]))
    assert embed.title == "Cannot do that" and "stage channel" in text(embed)


async def test_an_allowed_start_reaches_the_service(world: World) -> None:
    # Bob holds the configured role and names the channel; Alice is a manager in VOICE.
    other = world.guild.get_channel(OTHER_VOICE)
    assert isinstance(other, discord.VoiceChannel)
    for embed in (await world.cmds.start(world.interaction(BOB, "bob", [RECORDER_ROLE]),
                                         other),
                  await world.cmds.start(world.interaction(ALICE, "alice", [MANAGER_ROLE]))):
        assert embed.title is not None and embed.title.startswith("Try again"), text(embed)


async def test_a_bad_chunk_length_is_refused_before_the_api(world: World) -> None:
    embed = await world.cmds.start(world.interaction(ALICE, "alice", [MANAGER_ROLE]),
                                   None, 3)
    assert embed.title == "Cannot do that" and "chunkSeconds" in text(embed)


async def test_everyone_policy_lets_any_member_control() -> None:
    sessions = BotSessions(unreachable_api(), "voicetrack", settle_seconds=0)
    async for w in discord_world(RecordCommands(sessions, ControlPolicy(everyone=True))):
        [embed] = await w.cmds.stop(w.interaction(DAVE, "dave", [], "stop"))
        assert embed.title is not None and embed.title.startswith("Try again")


def test_policy_parse() -> None:
    assert ControlPolicy.parse(f" {MANAGER_ROLE},{RECORDER_ROLE} ,").role_ids == {
        MANAGER_ROLE, RECORDER_ROLE}
    assert ControlPolicy.parse("").role_ids == frozenset()
    with pytest.raises(InvalidInputError, match="'admins'"):
        ControlPolicy.parse("admins")


async def test_the_command_group_as_discord_receives_it(world: World) -> None:
    doc = world.bot.record.to_dict(world.bot.tree)
    assert doc["name"] == "record" and doc["contexts"] == [0]  # guild only
    assert doc["dm_permission"] is False
    subs = {o["name"]: o for o in doc["options"]}
    assert sorted(subs) == ["get", "list", "optin", "optout", "pause", "resume", "start",
                            "status", "stop"]
    opts = {o["name"]: o for o in subs["start"]["options"]}
    assert opts["channel"]["type"] == 7 and opts["channel"]["channel_types"] == [2]
    assert not opts["channel"]["required"]
    assert (opts["chunk_seconds"]["type"], opts["chunk_seconds"]["min_value"],
            opts["chunk_seconds"]["max_value"]) == (4, 5, 300)
    assert all(not subs[s].get("options") for s in ("stop", "pause", "resume", "status",
                                                    "list"))
    meeting, fmt = subs["get"]["options"]
    assert (meeting["name"], meeting["type"], meeting["required"]) == ("meeting", 3, True)
    assert (fmt["name"], fmt["type"], fmt["required"]) == ("format", 3, False)
    assert [c["value"] for c in fmt["choices"]] == ["mp3", "flac", "opus"]


def test_intents_are_guilds_and_voice_states_only() -> None:
    assert bot_intents().value == discord.Intents(guilds=True, voice_states=True).value
    assert not bot_intents().members and not bot_intents().message_content


@pytest.mark.parametrize("env, message", [
    ({"VOICETRACK_BOT_SPEC_DEFAULTS": '{"chunkSeconds": 1}'}, "chunkSeconds"),
    ({"VOICETRACK_BOT_SPEC_DEFAULTS": "{bad"}, "VOICETRACK_BOT_SPEC_DEFAULTS is not JSON"),
    ({"VOICETRACK_BOT_ROLES": "admins"}, "VOICETRACK_BOT_ROLES: 'admins'"),
    ({"VOICETRACK_BOT_SYNC_GUILDS": "12"}, "VOICETRACK_BOT_SYNC_GUILDS: 12"),
    ({"VOICETRACK_BOT_GUILDS": "12"}, "VOICETRACK_BOT_GUILDS: '12'"),
    ({"VOICETRACK_BOT_FOLLOW_SECONDS": "900"}, "--follow-seconds"),
    # without keys the bot uses the AWS credential chain; half a pair is refused
    ({"VOICETRACK_S3_ENDPOINT": "http://127.0.0.1:1", "VOICETRACK_S3_ACCESS_KEY": "a"},
     "VOICETRACK_S3_SECRET_KEY is not"),
    ({"KUBECONFIG": "/nonexistent/kubeconfig"}, "no usable Kubernetes configuration"),
])
def test_the_bot_command_refuses_bad_configuration(env: dict[str, str], message: str
                                                   ) -> None:
    from typer.testing import CliRunner

    from voicetrack_recorder.main import app

    base = {"VOICETRACK_DISCORD_TOKEN": "t", "VOICETRACK_NAMESPACE": "rec",
            "KUBECONFIG": "/nonexistent/kubeconfig"}
    result = CliRunner().invoke(app, ["bot"], env=base | env)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


# -- the target channel's permissions and the guild allow-list ---------------------------

VIEW, CONNECT, ADMINISTRATOR = 1 << 10, 1 << 20, 1 << 3
ADMIN_ROLE = 830000000000000003


def overwrite(oid: int, kind: int, allow: int = 0, deny: int = 0) -> dict[str, Any]:
    return {"id": str(oid), "type": kind, "allow": str(allow), "deny": str(deny)}


async def start_as(guild: dict[str, Any], uid: int, name: str, roles: list[int],
                   guilds: GuildAllowList | None = None) -> discord.Embed:
    """`/record start channel:VOICE` by `uid` with the everyone policy (only the channel's
    permissions and the allow-list can refuse it before the unreachable API)."""
    sessions = BotSessions(unreachable_api(), "voicetrack", settle_seconds=0)
    kw: dict[str, Any] = {"guilds": guilds} if guilds is not None else {}
    cmds = RecordCommands(sessions, ControlPolicy(everyone=True), **kw)
    async for w in discord_world(cmds, guild):
        channel = w.guild.get_channel(VOICE)
        assert isinstance(channel, discord.VoiceChannel)
        return await cmds.start(w.interaction(uid, name, roles), channel)
    raise AssertionError("no world")


async def test_a_member_denied_connect_on_the_channel_is_refused() -> None:
    guild = guild_create_payload([overwrite(DAVE, 1, deny=CONNECT)])
    embed = await start_as(guild, DAVE, "dave", [])
    assert embed.title == "Cannot do that" and "you need Connect on" in text(embed), text(embed)
    # the same channel, another member: the overwrite is Dave's only
    embed = await start_as(guild, BOB, "bob", [])
    assert embed.title is not None and embed.title.startswith("Try again"), text(embed)


async def test_a_private_channel_lets_in_its_role_and_administrators_only() -> None:
    guild = guild_create_payload(
        [overwrite(GUILD, 0, deny=VIEW | CONNECT), overwrite(RECORDER_ROLE, 0,
                                                            allow=VIEW | CONNECT),
         overwrite(BOT, 1, allow=VIEW | CONNECT)],
        extra_roles=[role_payload(ADMIN_ROLE, "Admin", ADMINISTRATOR, 3)])
    refused = await start_as(guild, DAVE, "dave", [])
    assert refused.title == "Cannot do that"
    assert "you need View Channel and Connect" in text(refused), text(refused)
    for uid, roles in ((BOB, [RECORDER_ROLE]), (CAROL, [ADMIN_ROLE])):
        embed = await start_as(guild, uid, "m", roles)
        assert embed.title is not None and embed.title.startswith("Try again"), text(embed)


async def test_a_channel_the_bot_cannot_join_is_refused() -> None:
    guild = guild_create_payload([overwrite(BOT, 1, deny=CONNECT)])
    embed = await start_as(guild, ALICE, "alice", [MANAGER_ROLE])
    assert embed.title == "Cannot do that" and "the bot needs Connect" in text(embed)


@pytest.mark.parametrize("sub", ["start", "stop", "pause", "resume", "status", "recent"])
async def test_a_guild_outside_the_allow_list_is_refused(sub: str) -> None:
    sessions = BotSessions(unreachable_api(), "voicetrack", settle_seconds=0)
    cmds = RecordCommands(sessions, ControlPolicy(everyone=True),
                          guilds=GuildAllowList.parse("810000000000000999"))
    async for w in discord_world(cmds):
        answer = await getattr(cmds, sub)(w.interaction(ALICE, "alice", [MANAGER_ROLE]))
        embed = answer[0] if isinstance(answer, list) else answer
        assert embed.title == "Cannot do that"
        assert "not enabled for this server" in text(embed)
    [embed] = await cmds.get(w.interaction(ALICE, "alice", []), "abcdef0123456789")
    assert "not enabled for this server" in text(embed)


async def test_a_listed_guild_is_served() -> None:
    embed = await start_as(guild_create_payload(), ALICE, "alice", [MANAGER_ROLE],
                           GuildAllowList.parse(f"810000000000000999, {GUILD}"))
    assert embed.title is not None and embed.title.startswith("Try again"), text(embed)


def test_allow_list_parse() -> None:
    assert GuildAllowList.parse("").guild_ids == frozenset()
    with pytest.raises(InvalidInputError, match="VOICETRACK_BOT_GUILDS: 'x'"):
        GuildAllowList.parse("x")


async def test_list_and_get_answer_a_member_a_bounded_number_of_times(world: World) -> None:
    """Each `/record list` or `get` reads the server's archive (a recursive S3 listing, one
    REST lookup per speaker not cached): past ARCHIVE_RATE in ARCHIVE_PER_S a member gets
    "try again" instead, and another member is not held back. Before: no bound."""
    dave = world.interaction(DAVE, "dave", [], "list")
    for _ in range(ARCHIVE_RATE // 2):
        assert (await world.cmds.recent(dave)).title == "Cannot do that"  # no archive here
        assert (await world.cmds.get(dave, "DaveSpokeHere001"))[0].title == "Cannot do that"
    refused = await world.cmds.recent(dave)
    assert refused.title is not None and refused.title.startswith("Try again in about ")
    assert f"{ARCHIVE_RATE} times per {int(ARCHIVE_PER_S)} s" in text(refused)
    assert (await world.cmds.get(dave, "DaveSpokeHere001"))[0].title == refused.title
    alice = world.interaction(ALICE, "alice", [MANAGER_ROLE], "list")
    assert (await world.cmds.recent(alice)).title == "Cannot do that"


async def test_display_names_cannot_put_markdown_or_mentions_in_the_bots_embeds() -> None:
    """A nickname is the member's own text: shown in `/record list` and the link answers,
    `[Download mp3](https://ev.il/x)` became a link in the bot's own embed (review of the
    web, bot and webhooks, fault 6), `@everyone` a mention."""
    nasty = "[Download mp3](https://ev.il/x) @everyone"
    guild = guild_create_payload()
    guild["members"].append(member_payload(DAVE, "dave", []) | {"nick": nasty})
    sessions = BotSessions(unreachable_api(), "voicetrack", settle_seconds=0)
    async for w in discord_world(RecordCommands(sessions, ControlPolicy()), guild):
        names = await display_names(w.guild, [str(DAVE)])
    # the escaped bracket breaks the masked link, a zero-width space after the scheme's
    # colon keeps Discord from linking the bare URL; no mention
    assert names[str(DAVE)] == "\\[Download mp3](https:\u200b//ev.il/x) @\u200beveryone"


async def test_a_bare_url_as_a_nickname_is_not_a_link_in_the_bots_embeds() -> None:
    """Discord links a bare `scheme://…` in an embed by itself: a nickname
    `https://ev.il/get-your-recording` showed as a clickable link beside the real download
    links (found after the review of the web, bot and webhooks)."""
    guild = guild_create_payload()
    guild["members"].append(member_payload(DAVE, "dave", [])
                            | {"nick": "https://ev.il/get-your-recording"})
    sessions = BotSessions(unreachable_api(), "voicetrack", settle_seconds=0)
    async for w in discord_world(RecordCommands(sessions, ControlPolicy()), guild):
        names = await display_names(w.guild, [str(DAVE)])
    assert "://" not in names[str(DAVE)]
    assert names[str(DAVE)].replace("\u200b", "") == "https://ev.il/get-your-recording"
