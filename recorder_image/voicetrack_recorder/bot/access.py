"""Who may ask the bot for what: the control policy (who may start, stop, pause and
resume), the guild allow-list and the target channel's permissions.

Permissions are discord.py's own computation (`GuildChannel.permissions_for`), which
follows Discord's developer docs "Permissions › Permission Overwrites": the @everyone
role's base permissions, OR the member's roles, then the channel's overwrites for
@everyone, the member's roles (deny then allow) and the member; the guild owner and
members with Administrator have every permission. Joining a voice channel needs View
Channel (`1 << 10`) and Connect (`1 << 20`) ("Permissions › Bitwise Permission Flags").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import discord

from voicetrack.errors import InvalidInputError


class NotAllowedError(InvalidInputError):
    """The member (or this server) may not run this command."""


@dataclass(frozen=True)
class GuildAllowList:
    """Guild ids the bot serves (`VOICETRACK_BOT_GUILDS`); empty = every guild."""

    guild_ids: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, guilds: str = "") -> GuildAllowList:
        """From a comma-separated list of guild ids. Raises InvalidInputError naming the
        entry that is not a snowflake (15-20 digits)."""
        ids: set[int] = set()
        for part in (p.strip() for p in guilds.split(",")):
            if not part:
                continue
            if not part.isdigit() or not 15 <= len(part) <= 20:
                raise InvalidInputError(
                    f"VOICETRACK_BOT_GUILDS: {part!r} is not a guild id (15-20 digits)")
            ids.add(int(part))
        return cls(frozenset(ids))

    def check(self, guild_id: int) -> None:
        """Raise NotAllowedError unless the bot serves `guild_id`."""
        if self.guild_ids and guild_id not in self.guild_ids:
            raise NotAllowedError("Voicetrack is not enabled for this server")


def check_channel_access(channel: discord.VoiceChannel, member: discord.Member | discord.User
                         ) -> None:
    """Raise NotAllowedError unless both `member` and the bot itself (`channel.guild.me`)
    have View Channel and Connect on `channel` (roles and the channel's overwrites;
    owners and administrators pass). A `discord.User` (no guild membership) is refused."""
    if not isinstance(member, discord.Member):
        raise NotAllowedError("only members of this server can record its channels")
    perms = channel.permissions_for(member)
    missing = _missing(perms)
    if missing:
        raise NotAllowedError(f"you need {missing} on {channel.mention} to record it")
    me = channel.guild.me
    if me is None:
        raise NotAllowedError("the bot's own membership of this server is not known yet; "
                              "try again in a moment")
    missing = _missing(channel.permissions_for(me))
    if missing:
        raise NotAllowedError(f"the bot needs {missing} on {channel.mention}; ask an "
                              "admin to allow it there")


def _missing(perms: discord.Permissions) -> str:
    names = [name for name, ok in (("View Channel", perms.view_channel),
                                   ("Connect", perms.connect)) if not ok]
    return " and ".join(names)


@dataclass(frozen=True)
class ControlPolicy:
    """Who may start, stop, pause and resume: members with Manage Server, members with
    one of `role_ids`, or everyone when `everyone` is set. `status` is always open."""

    role_ids: frozenset[int] = field(default_factory=frozenset)
    everyone: bool = False

    @classmethod
    def parse(cls, roles: str = "", everyone: bool = False) -> ControlPolicy:
        """From a comma-separated list of role ids (`VOICETRACK_BOT_ROLES`).
        Raises InvalidInputError naming the entry that is not a snowflake."""
        ids: set[int] = set()
        for part in (p.strip() for p in roles.split(",")):
            if not part:
                continue
            if not part.isdigit() or not 15 <= len(part) <= 20:
                raise InvalidInputError(
                    f"VOICETRACK_BOT_ROLES: {part!r} is not a role id (15-20 digits)")
            ids.add(int(part))
        return cls(frozenset(ids), everyone)

    def check(self, member: discord.Member | discord.User) -> None:
        """Raise NotAllowedError unless `member` may control recordings."""
        if self.everyone:
            return
        if isinstance(member, discord.Member):
            if member.guild_permissions.manage_guild:
                return
            if any(r.id in self.role_ids for r in member.roles):
                return
        need = "the Manage Server permission"
        if self.role_ids:
            need += " or one of the roles " + ", ".join(f"<@&{r}>" for r in
                                                         sorted(self.role_ids))
        raise NotAllowedError(f"controlling recordings needs {need}")
