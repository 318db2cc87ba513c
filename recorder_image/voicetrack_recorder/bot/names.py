"""Members' display names for the bot's answers: a name is the member's own text, so it is
escaped before it goes into an embed, and looking names up over REST is bounded per
answer."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import discord

log = logging.getLogger(__name__)

NAME_LOOKUPS_MAX = 25
"""Members looked up over REST (Get Guild Member) for one answer's display names, at most:
the rest show as `user <id>` (the cache holds few members without the members intent)."""


async def display_names(guild: discord.Guild, user_ids: Iterable[str]) -> dict[str, str]:
    """user id → display name as `shown_name` makes it (a name is the member's own text,
    shown inside the bot's embeds: `[Download mp3](https://…)` or a bare URL as a nickname
    must not become a link there): from the cache, else Get Guild Member (REST; no privileged
    intent needed) for at most NAME_LOOKUPS_MAX ids; ids that are not members any more,
    or past that bound, are left out (shown as `user <id>`)."""
    names: dict[str, str] = {}
    lookups = 0
    for uid in user_ids:
        if not uid.isdigit():
            continue
        member = guild.get_member(int(uid))
        if member is None and lookups < NAME_LOOKUPS_MAX:
            lookups += 1
            try:
                member = await guild.fetch_member(int(uid))
            except Exception as err:  # a name is cosmetic: `user <id>` is shown instead
                log.debug("no display name for %s: %s", uid, err)
        if member is not None:
            names[uid] = shown_name(member.display_name)
    return names


def shown_name(name: str) -> str:
    """`name` as the bot's embeds may show it: markdown escaped (inside URLs too), mentions
    broken, and a zero-width space after each `:` of `://`, since Discord links a bare
    `scheme://…` by itself (a nickname `https://ev.il/…` would be a link beside the real
    download links). Read back, the name looks the same."""
    escaped = discord.utils.escape_markdown(name, ignore_links=False)
    return discord.utils.escape_mentions(escaped).replace("://", ":\u200b//")
