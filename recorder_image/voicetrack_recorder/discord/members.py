"""Guild members' roles for consent, from discord.py's member cache (issue 12).

Members in voice channels arrive with GUILD_CREATE and VOICE_STATE_UPDATE (its `member`
object, with `roles`), so the recorder does not chunk the guild at start
(`chunk_guilds_at_startup=False`). Role changes after that arrive as GUILD_MEMBER_UPDATE
(Discord developer docs, "Gateway Events › Guild Member Update"), which needs the
GUILD_MEMBERS intent (privileged: "Server Members Intent" in the developer portal). The
recorder asks for it only when its session has `optOutRoleIds` at start (`login.py`), so
a deployment that does not use role opt-outs needs no privileged intent; without it (not
asked, or refused with 4014) a member's roles are those Discord sent with their latest
voice state.
"""

from __future__ import annotations

import discord

from voicetrack_recorder.consent import RolesOf


def member_roles(client: discord.Client, guild_id: int) -> RolesOf:
    """`RolesOf` over the member cache of guild `guild_id`: a member's role ids (with
    @everyone, whose id is the guild's), or None for a member not cached."""
    def roles_of(user_id: str) -> list[str] | None:
        guild = client.get_guild(guild_id)
        member = guild.get_member(int(user_id)) if guild is not None else None
        return None if member is None else [str(r.id) for r in member.roles]
    return roles_of
