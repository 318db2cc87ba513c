"""TCP ports for the local servers (control plane, PostgreSQL, SeaweedFS, the operator).

Ports are picked *below* the kernel's ephemeral range (``net.ipv4.ip_local_port_range``,
ip-sysctl.rst), never by binding port 0.  A server we restart on its old port (the
apiserver, PostgreSQL) is down for seconds while its clients retry ``connect`` to it; a
port inside the ephemeral range can then be handed to one of those clients as its own
local port — even the same port, a TCP self-connect (simultaneous open, RFC 793 §3.4) —
and the restarted server dies with EADDRINUSE.  Outside that range the kernel never hands
the port to an outgoing connection, so a restart always gets its port back.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10000  # below are well-known and registered services' habits
_MIN_SPAN = 2000  # fewer candidates than this: fall back to the kernel's pick
_given: set[int] = set()
_lock = threading.Lock()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range ``(low, high)``, inclusive (Linux default
    ``32768 60999``); ``(32768, 60999)`` when it cannot be read."""
    try:
        low, high = (int(x) for x in _RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port``.  TIME_WAIT leftovers do not count: our
    servers bind with SO_REUSEADDR, as Go and Python servers do."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _unused(port: int, host: str) -> bool:
    """True when no socket at all (listening, connected or TIME_WAIT) holds ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that no socket uses now, outside the ephemeral range, and not
    returned before by this process (so several picks in a row are distinct).

    Candidates are ``10000`` up to the ephemeral range's low end, then from its high end to
    65535; should both hold fewer than 2000 ports, the kernel picks (bind to port 0).

    Raises:
        OSError: no free port was found among 200 random candidates.
    """
    low, high = ephemeral_range()
    candidates = [*range(_LOWEST, low), *range(high + 1, 65536)]
    with _lock:
        if len(candidates) < _MIN_SPAN:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
            _given.add(port)
            return port
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.choice(candidates)
            if port not in _given and _unused(port, host):
                _given.add(port)
                return port
    raise OSError(f"no free TCP port on {host} outside the ephemeral range {low}-{high}")
