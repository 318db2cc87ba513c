"""Who may see a meeting and its audio (issue 14): the one rule the web page and the bot
apply.

In a guild the user is a member of, a manager (Manage Server, which the owner and
Administrator imply) sees every meeting of the guild; any other member sees the meetings
they spoke in. Every other meeting does not exist for them: the answer is the one for a
meeting that does not exist, so its existence is not revealed.

The web page applies it in SQL (`voicetrack_web.access.MeetingAccess`: speakers are the
`recordings` and `temp_recordings` rows' user ids); the bot with `may_see_meeting` on the
speakers it has (a saved meeting's manifest, a live session's `status.speakers`).
"""

from __future__ import annotations

from collections.abc import Iterable


def may_see_meeting(user_id: str, manages_guild: bool, speakers: Iterable[str]) -> bool:
    """True when user `user_id` (a snowflake string), a member of the meeting's guild who
    manages it (`manages_guild`) or not, may see a meeting whose speakers are `speakers`
    (user ids)."""
    return manages_guild or user_id in set(speakers)
