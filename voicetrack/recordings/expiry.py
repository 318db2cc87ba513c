"""Link lifetimes as people type them: `900`, `900s`, `15m`, `2h`, `1d`, `1h30m`."""

from __future__ import annotations

import re

from voicetrack.errors import InvalidInputError
from voicetrack.objectstore import MAX_PRESIGN_S

MIN_EXPIRY_S = 1
"""The shortest link lifetime (s)."""
MAX_EXPIRY_S = MAX_PRESIGN_S
"""The longest link lifetime (s): 7 days, SigV4's limit."""

_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_PART = re.compile(r"(\d+)([smhd])")


def parse_expiry(text: str, name: str = "--expires") -> int:
    """Seconds in `text`: a bare number of seconds (`900`) or one or more number-unit
    parts, units s, m, h, d, largest first (`15m`, `2h`, `1h30m`, `7d`); case and
    surrounding spaces are ignored. Raises InvalidInputError naming `name` for anything
    else, or a lifetime outside 1 s .. 7 days (604800 s)."""
    raw = text.strip().lower()
    if raw.isdigit():
        seconds = int(raw)
    else:
        parts = _PART.findall(raw)
        units = [u for _, u in parts]
        order = list(_UNIT_S)[::-1]  # d, h, m, s
        if (not parts or "".join(n + u for n, u in parts) != raw
                or len(set(units)) != len(units)
                or units != sorted(units, key=order.index)):
            raise InvalidInputError(
                f"{name}: {text!r} is not a lifetime; use seconds (900) or units s, m, h, d "
                "largest first (900s, 15m, 2h, 1h30m, 7d)")
        seconds = sum(int(n) * _UNIT_S[u] for n, u in parts)
    if not MIN_EXPIRY_S <= seconds <= MAX_EXPIRY_S:
        raise InvalidInputError(
            f"{name}: {text!r} is {seconds} s; a link lives {MIN_EXPIRY_S} s to 7 days "
            f"({MAX_EXPIRY_S} s)")
    return seconds
