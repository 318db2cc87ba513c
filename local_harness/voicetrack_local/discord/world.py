"""The local Discord's world: one guild, its channels, users, tokens and voice states.

Object shapes follow the Discord developer docs (API v10): "User Object", "Guild Object",
"Channel Object" (type 0 GUILD_TEXT, 2 GUILD_VOICE), "Guild Member Object", "Role Object",
"Overwrite Object" (type 0 role, 1 member; `allow`/`deny` are permission bit sets as
decimal strings), "Voice State Object". Snowflakes follow "Reference › Snowflakes"
(milliseconds since the Discord epoch 2015-01-01 shifted left 22 bits, plus an increment).
"""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

DISCORD_EPOCH_MS = 1_420_070_400_000

# Permission bits ("Permissions › Bitwise Permission Flags").
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
READ_MESSAGE_HISTORY = 1 << 16
CONNECT = 1 << 20
SPEAK = 1 << 21
USE_VAD = 1 << 25
CHANGE_NICKNAME = 1 << 26
EVERYONE_DEFAULT = (VIEW_CHANNEL | SEND_MESSAGES | READ_MESSAGE_HISTORY | CONNECT | SPEAK
                    | USE_VAD | CHANGE_NICKNAME)

_counter = itertools.count()


def snowflake(now_ms: float | None = None) -> int:
    """A new snowflake id for `now_ms` (Unix ms; default now)."""
    ms = int(time.time() * 1000 if now_ms is None else now_ms)
    return ((ms - DISCORD_EPOCH_MS) << 22) | (next(_counter) & 0xFFF)


def iso_now() -> str:
    """An ISO 8601 UTC timestamp, the format of Discord's timestamps."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())


@dataclass
class User:
    """A Discord account: `token` authenticates REST (`Authorization: Bot <token>`) and
    gateway IDENTIFY; `bot` marks the application's bot user."""

    id: int
    name: str
    token: str
    bot: bool = False
    nick: str | None = None
    joined_at: str = field(default_factory=iso_now)
    roles: list[int] = field(default_factory=list)
    """The ids of the guild roles this member has (besides @everyone, which is implied)."""

    def json(self) -> dict[str, Any]:
        return {"id": str(self.id), "username": self.name, "discriminator": "0",
                "global_name": self.name, "avatar": None, "bot": self.bot,
                "system": False, "public_flags": 0, "flags": 0}

    def member(self) -> dict[str, Any]:
        return {"user": self.json(), "nick": self.nick,
                "roles": [str(r) for r in self.roles],
                "joined_at": self.joined_at, "deaf": False, "mute": False, "flags": 0,
                "avatar": None, "premium_since": None, "pending": False,
                "communication_disabled_until": None}


@dataclass
class Role:
    """A guild role without permissions of its own ("Role Object"); `position` orders it."""

    id: int
    name: str
    position: int

    def json(self) -> dict[str, Any]:
        return {"id": str(self.id), "name": self.name, "permissions": "0",
                "position": self.position, "color": 0, "hoist": False, "managed": False,
                "mentionable": False, "flags": 0, "icon": None, "unicode_emoji": None}


@dataclass
class Overwrite:
    """A channel permission overwrite for a role (`kind` 0) or a member (`kind` 1)."""

    id: int
    kind: int
    allow: int = 0
    deny: int = 0

    def json(self) -> dict[str, Any]:
        return {"id": str(self.id), "type": self.kind, "allow": str(self.allow),
                "deny": str(self.deny)}


@dataclass
class Channel:
    """A guild channel: `kind` 0 text, 2 voice."""

    id: int
    name: str
    kind: int
    position: int
    overwrites: list[Overwrite] = field(default_factory=list)

    def json(self, guild_id: int) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id), "type": self.kind, "guild_id": str(guild_id),
            "name": self.name, "position": self.position, "parent_id": None, "nsfw": False,
            "flags": 0, "permission_overwrites": [o.json() for o in self.overwrites]}
        if self.kind == 2:
            data.update(bitrate=64000, user_limit=0, rtc_region=None, last_message_id=None,
                        rate_limit_per_user=0)
        else:
            data.update(topic=None, last_message_id=None, rate_limit_per_user=0)
        return data


@dataclass
class VoiceState:
    """A user's voice state: where it is, under which gateway session."""

    user_id: int
    channel_id: int
    session_id: str
    self_mute: bool = False
    self_deaf: bool = False

    def json(self, guild_id: int | None = None, member: dict[str, Any] | None = None
             ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "user_id": str(self.user_id), "channel_id": str(self.channel_id),
            "session_id": self.session_id, "deaf": False, "mute": False,
            "self_deaf": self.self_deaf, "self_mute": self.self_mute, "self_video": False,
            "self_stream": False, "suppress": False, "request_to_speak_timestamp": None}
        if guild_id is not None:
            data["guild_id"] = str(guild_id)
        if member is not None:
            data["member"] = member
        return data


INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | 1 << 15
"""GUILD_MEMBERS, GUILD_PRESENCES and MESSAGE_CONTENT: the privileged gateway intents
(Discord developer docs, "Gateway › Privileged Intents")."""


def new_token(user_id: int) -> str:
    """A bot-token-shaped secret: `<base64 user id>.<random>.<random>`."""
    import base64
    head = base64.urlsafe_b64encode(str(user_id).encode()).decode().rstrip("=")
    return f"{head}.{secrets.token_urlsafe(6)}.{secrets.token_urlsafe(27)}"


@dataclass
class World:
    """Everything the REST API and the gateway read and change: one guild, a voice and a
    text channel, the bot and `len(user_names)` member users, and what happened (`log`)."""

    guild_id: int
    application_id: int
    bot: User
    users: list[User]
    voice: Channel
    text: Channel
    everyone_permissions: int = EVERYONE_DEFAULT
    voice_states: dict[int, VoiceState] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    commands: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    interaction_responses: list[dict[str, Any]] = field(default_factory=list)
    log: list[tuple[str, str]] = field(default_factory=list)
    """`(method, path)` of every REST request served."""
    removed: set[int] = field(default_factory=set)
    """Ids of users removed from the guild ("Remove Guild Member"): no longer members."""
    roles: list[Role] = field(default_factory=list)
    """The guild's roles besides @everyone (in GUILD_CREATE and Get Guild)."""
    privileged_intents: int = PRIVILEGED_INTENTS
    """The privileged intents the application may ask for (the developer portal's Bot
    page toggles: Server Members, Presence, Message Content); all by default. An IDENTIFY
    asking for one not in here is closed with 4014 "Disallowed intent(s)." (`gateway.py`)."""

    @classmethod
    def create(cls, user_names: list[str]) -> World:
        app = snowflake()
        bot = User(app, "voicetrack", new_token(app), bot=True)
        users = [User(uid, name, new_token(uid))
                 for uid, name in ((snowflake(), n) for n in user_names)]
        return cls(guild_id=snowflake(), application_id=app, bot=bot, users=users,
                   voice=Channel(snowflake(), "General", 2, 1),
                   text=Channel(snowflake(), "general", 0, 0))

    def add_role(self, name: str) -> int:
        """A new guild role named `name` (no permissions); returns its id. Add roles before
        clients connect: no GUILD_ROLE_CREATE is sent."""
        role = Role(snowflake(), name, len(self.roles) + 1)
        self.roles.append(role)
        return role.id

    # -- lookups -------------------------------------------------------------------------

    def everyone(self) -> list[User]:
        return [self.bot, *self.users]

    def by_token(self, token: str) -> User | None:
        token = token.removeprefix("Bot ").removeprefix("Bearer ").strip()
        return next((u for u in self.everyone() if secrets.compare_digest(u.token, token)),
                    None)

    def by_id(self, user_id: int) -> User | None:
        return next((u for u in self.everyone() if u.id == user_id), None)

    def is_member(self, user_id: int) -> bool:
        """Whether `user_id` is a member of the guild (the bot and users not removed)."""
        return self.by_id(user_id) is not None and user_id not in self.removed

    def channel(self, channel_id: int) -> Channel | None:
        return next((c for c in (self.voice, self.text) if c.id == channel_id), None)

    def permissions(self, user_id: int, channel: Channel) -> int:
        """Effective permissions ("Permissions › Permission Overwrites" algorithm, without
        roles other than @everyone)."""
        perms = self.everyone_permissions
        for o in channel.overwrites:
            if o.kind == 0 and o.id == self.guild_id:
                perms = (perms & ~o.deny) | o.allow
        for o in channel.overwrites:
            if o.kind == 1 and o.id == user_id:
                perms = (perms & ~o.deny) | o.allow
        return perms

    # -- objects -------------------------------------------------------------------------

    def role_everyone(self) -> dict[str, Any]:
        return {"id": str(self.guild_id), "name": "@everyone",
                "permissions": str(self.everyone_permissions), "position": 0, "color": 0,
                "hoist": False, "managed": False, "mentionable": False, "flags": 0,
                "icon": None, "unicode_emoji": None}

    def guild_json(self) -> dict[str, Any]:
        return {
            "id": str(self.guild_id), "name": "Voicetrack Local", "icon": None,
            "splash": None, "discovery_splash": None, "owner_id": str(self.users[0].id
                                                                      if self.users else 1),
            "afk_channel_id": None, "afk_timeout": 300, "verification_level": 0,
            "default_message_notifications": 0, "explicit_content_filter": 0,
            "roles": [self.role_everyone(), *(r.json() for r in self.roles)],
            "emojis": [], "stickers": [], "features": [],
            "mfa_level": 0, "application_id": None, "system_channel_id": None,
            "system_channel_flags": 0, "rules_channel_id": None, "max_members": 500000,
            "vanity_url_code": None, "description": None, "banner": None, "premium_tier": 0,
            "premium_subscription_count": 0, "preferred_locale": "en-US",
            "public_updates_channel_id": None, "nsfw_level": 0,
            "premium_progress_bar_enabled": False, "safety_alerts_channel_id": None}

    def channels_json(self) -> list[dict[str, Any]]:
        return [c.json(self.guild_id) for c in (self.text, self.voice)]

    def guild_create(self, intents: int = INTENT_GUILD_PRESENCES) -> dict[str, Any]:
        """The GUILD_CREATE payload ("Gateway Events › Guild Create": the guild object plus
        joined_at, large, unavailable, member_count, voice_states, members, channels…) for
        a session identified with `intents`. `members` is every member only with the
        GUILD_PRESENCES intent; without it, as Discord documents for that event, only the
        bot itself and the members in a voice channel."""
        voice = {v.user_id for v in self.voice_states.values()}
        members = [u for u in self.everyone() if intents & INTENT_GUILD_PRESENCES
                   or u is self.bot or u.id in voice]
        return {**self.guild_json(), "joined_at": iso_now(), "large": False,
                "unavailable": False, "member_count": len(self.everyone()),
                "voice_states": [v.json() for v in self.voice_states.values()],
                "members": [u.member() for u in members],
                "channels": self.channels_json(), "threads": [], "presences": [],
                "stage_instances": [], "guild_scheduled_events": [],
                "soundboard_sounds": []}

    def message(self, channel_id: int, author: User, content: str,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """A new Message object, kept in `messages`."""
        msg: dict[str, Any] = {
            "id": str(snowflake()), "channel_id": str(channel_id),
            "guild_id": str(self.guild_id), "author": author.json(), "content": content,
            "timestamp": iso_now(), "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": [], "mention_roles": [],
            "attachments": [], "embeds": [], "pinned": False, "type": 0, "flags": 0,
            "components": []}
        msg.update(extra or {})
        self.messages.append(msg)
        return msg

    def summary(self) -> dict[str, Any]:
        """The parts of `discord.json` that describe the world."""
        return {"bot_token": self.bot.token, "application_id": str(self.application_id),
                "guild_id": str(self.guild_id), "voice_channel_id": str(self.voice.id),
                "text_channel_id": str(self.text.id),
                "users": [{"id": str(u.id), "token": u.token, "name": u.name}
                          for u in self.users]}
