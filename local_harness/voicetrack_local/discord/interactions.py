"""Slash commands typed by a member: INTERACTION_CREATE payloads for the bot.

Discord developer docs, "Interactions › Receiving and Responding › Interaction Object":
`{id, application_id, type: 2 (APPLICATION_COMMAND), data: {id, name, type: 1, options,
guild_id}, guild_id, channel_id, channel, member (with `permissions`), token, version: 1,
app_permissions, locale, guild_locale, entitlements, authorizing_integration_owners,
context: 0 (GUILD), attachment_size_limit}`; options of a subcommand are `{name, type: 1,
options: [{name, type, value}]}` ("Application Command Object › Application Command
Interaction Data Option Structure"; option types 3 STRING, 4 INTEGER, 5 BOOLEAN). INTERACTION_CREATE
is not gated by an intent. The bot answers at `/interactions/{id}/{token}/callback` and
`/webhooks/{application_id}/{token}` (see `rest.py`), which record what it said.
"""

from __future__ import annotations

import secrets
from typing import Any

from voicetrack_local.discord.world import World, snowflake

OPTION_TYPES: dict[type, int] = {str: 3, int: 4, bool: 5}


def interaction(world: World, user_id: int, command: str, subcommand: str | None = None,
                options: dict[str, str | int | bool] | None = None,
                channel_id: int | None = None) -> dict[str, Any]:
    """The INTERACTION_CREATE payload of member `user_id` typing
    `/<command> [<subcommand>] [name:value ...]` in `channel_id` (default: the text
    channel). The command's id comes from the bot's last bulk overwrite when there is one."""
    user = world.by_id(user_id)
    if user is None:
        raise KeyError(f"no user {user_id}")
    channel = world.channel(channel_id or world.text.id)
    assert channel is not None
    values = [{"name": k, "type": OPTION_TYPES[type(v)], "value": v}
              for k, v in (options or {}).items()]
    opts = [{"name": subcommand, "type": 1, "options": values}] if subcommand else values
    synced = [c for cs in world.commands.values() for c in cs if c.get("name") == command]
    perms = str(world.permissions(user.id, channel))
    return {
        "id": str(snowflake()), "application_id": str(world.application_id), "type": 2,
        "data": {"id": synced[0]["id"] if synced else str(snowflake()), "name": command,
                 "type": 1, "options": opts, "guild_id": str(world.guild_id)},
        "guild_id": str(world.guild_id), "channel_id": str(channel.id),
        "channel": channel.json(world.guild_id),
        "member": {**user.member(), "permissions": perms},
        "token": secrets.token_urlsafe(48), "version": 1,
        "app_permissions": str(world.permissions(world.bot.id, channel)),
        "locale": "en-US", "guild_locale": "en-US", "entitlements": [],
        "authorizing_integration_owners": {"0": str(world.guild_id)}, "context": 0,
        "attachment_size_limit": 10 * 1024 * 1024}
