"""The recorder's main gateway connection: log in, connect, wait for READY (issue 12).

The recorder asks for GUILDS and GUILD_VOICE_STATES, and for GUILD_MEMBERS when its
session has role opt-outs (`spec.optOutRoleIds`), so that role changes during the call
arrive as GUILD_MEMBER_UPDATE (`members.py`). GUILD_MEMBERS is privileged: an application
without the **Server Members Intent** (developer portal → Bot) is refused at IDENTIFY with
gateway close code 4014 "Disallowed intent(s)" (Discord developer docs, "Gateway › Gateway
Close Event Codes" and "Privileged Intents"), which discord.py 2.7.1 raises as
`PrivilegedIntentsRequired` and never reconnects.

That refusal must not lose the recording (role opt-outs can be added to a live session,
and the restarted recorder then asks for the intent): `open_gateway` connects again
without GUILD_MEMBERS and says so (`GatewaySession.members_intent` False, a warning in the
log). Roles are then those Discord sends with the members in voice (GUILD_CREATE) and
with a member who joins (VOICE_STATE_UPDATE's `member`, which discord.py 2.7 reads only
for a member it has not cached): a role given or taken during the call is not seen until
the member joins again, and a member whose roles cannot be read is not recorded
(`Consent`, fail-closed `UNKNOWN`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import discord

from voicetrack.errors import InvalidInputError, TemporaryFailure
from voicetrack_recorder.discord.endpoint import DiscordEndpoint

log = logging.getLogger(__name__)

MEMBERS_REFUSED = ("GUILD_MEMBERS intent refused by Discord (4014: the application lacks "
                   "the Server Members Intent): role changes during the call are not "
                   "followed; roles are read when members join")
"""What the recorder says (log, termination message, each chunk's `consentDegraded`
message) when it records without the intent."""
MEMBERS_NOT_ASKED = ("GUILD_MEMBERS intent not asked for (the session started without role "
                     "opt-outs): role changes during the call are not followed; roles are "
                     "read when members join")
"""The `consentDegraded` message once role opt-outs are added to a session whose recorder
connected without the intent (it asks for it when it starts again)."""
MEMBERS_NOT_ASKED_REASON = "MembersIntentNotRequested"
"""The `consentDegraded` reason that goes with MEMBERS_NOT_ASKED."""
MEMBERS_REFUSED_REASON = "MembersIntentRefused"
"""The `consentDegraded` reason of a chunk recorded without the intent (the session's
`ConsentDegraded` condition reason)."""


@dataclass
class GatewaySession:
    """A connected, READY discord.py client: `runner` is its `connect` task;
    `members_intent` whether GUILD_MEMBERS was granted (False: not asked, or refused)."""

    client: discord.Client
    runner: asyncio.Task[None]
    members_intent: bool

    async def close(self) -> None:
        """Log out and end the connect task (idempotent; never raises)."""
        with contextlib.suppress(Exception):
            await self.client.close()
        self.runner.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.runner


class _MembersRefused(Exception):
    """Close 4014 after asking for GUILD_MEMBERS."""


async def open_gateway(token: str, endpoint: DiscordEndpoint | None,
                       members: bool) -> GatewaySession:
    """Log in with bot `token` and connect to the gateway (at `endpoint`; None: Discord
    itself) until READY, asking for GUILD_MEMBERS when `members`; when Discord refuses
    that intent (4014), connect again without it (see the module docstring).
    Raises InvalidInputError for a refused token (or a 4014 without GUILD_MEMBERS asked),
    TemporaryFailure when Discord cannot be reached or closes before READY."""
    if endpoint is not None:
        endpoint.apply()
    try:
        return await _open(token, endpoint, members)
    except _MembersRefused:
        log.warning("%s", MEMBERS_REFUSED)
        return await _open(token, endpoint, False)


async def _open(token: str, endpoint: DiscordEndpoint | None, members: bool
                ) -> GatewaySession:
    intents = discord.Intents.none()
    intents.guilds = True
    intents.voice_states = True
    intents.members = members
    client = discord.Client(intents=intents, chunk_guilds_at_startup=False,
                            connector=endpoint.connector() if endpoint is not None else None)
    try:
        await client.login(token)
    except discord.LoginFailure as exc:
        await client.close()
        raise InvalidInputError(f"token: Discord refused the bot token ({exc})") from exc
    except (discord.HTTPException, OSError) as exc:
        await client.close()
        raise TemporaryFailure(f"cannot reach Discord: {exc}") from exc
    session = GatewaySession(client, asyncio.create_task(client.connect(reconnect=True)),
                             members)
    ready = asyncio.create_task(client.wait_until_ready())
    done, _ = await asyncio.wait({ready, session.runner},
                                 return_when=asyncio.FIRST_COMPLETED)
    if session.runner not in done:
        return session
    ready.cancel()
    closed = session.runner.exception()
    await session.close()
    if isinstance(closed, discord.PrivilegedIntentsRequired):
        if members:
            raise _MembersRefused() from closed
        raise InvalidInputError(f"intents: {closed}") from closed
    raise TemporaryFailure(f"Discord gateway closed before ready: {closed}")
