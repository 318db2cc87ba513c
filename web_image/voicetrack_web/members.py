"""Speakers' guild display names for the pages, looked up with the bot token and cached.

`MemberNames.names(guild, user_ids) -> {user_id: name}` answers from a per-process cache
whose entries live `ttl_s` seconds; misses are looked up concurrently through
`DiscordOAuth.member_name` (`GET /guilds/{guild}/members/{user}`). A user without a name
(no bot token, not a member, Discord away) maps to their id, so the page always has a
label. Names are text: templates autoescape them and the scripts set `textContent`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from voicetrack_web.discord import DiscordOAuth

FAILED_TTL_S = 60.0
"""How long (s) a failed lookup is remembered before it is tried again."""


class MemberNames:
    """The cache over `discord` (its `member_name`); `clock` returns seconds (monotonic)."""

    def __init__(self, discord: DiscordOAuth, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.discord = discord
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[tuple[str, str], tuple[float, str | None]] = {}

    async def names(self, guild_id: str, user_ids: Iterable[str]) -> dict[str, str]:
        """`{user_id: display name or the id itself}` for every id of `user_ids`."""
        ids = list(dict.fromkeys(user_ids))
        now = self.clock()
        missing = [u for u in ids if (hit := self._cache.get((guild_id, u))) is None
                   or hit[0] <= now]
        if missing:
            found = await asyncio.gather(*(self.discord.member_name(guild_id, u)
                                           for u in missing))
            for user, name in zip(missing, found, strict=True):
                ttl = self.ttl_s if name is not None else min(self.ttl_s, FAILED_TTL_S)
                self._cache[(guild_id, user)] = (now + ttl, name)
        return {u: self._cache[(guild_id, u)][1] or u for u in ids}
