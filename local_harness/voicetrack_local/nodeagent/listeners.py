"""Who listens at 127.0.0.1:<port>: the LISTEN socket a connection to the node's loopback
reaches, and whether it belongs to a given pod's processes (the probes' fallback to
127.0.0.1, :func:`voicetrack_local.nodeagent.probes.run_handler`, counts only then).

Sources, all as described in proc(5):

* ``/proc/net/tcp`` and ``/proc/net/tcp6``: one socket a line after a header line;
  ``local_address`` is ``ADDR:PORT`` in hex, the address in the kernel's byte order (on
  x86, little-endian: 127.0.0.1 is ``0100007F``; IPv6 as four such 32-bit words), the port
  in ordinary hex; ``st`` is the TCP state (``0A`` = LISTEN); the 10th column is the
  socket's inode;
* ``/proc/<pid>/fd/<n>``: symbolic links, a socket's reading ``socket:[<inode>]``;
* ``/proc/<pid>/stat``: ``pid (comm) state ppid pgrp session ...`` (``comm`` may itself
  hold spaces and parentheses: it ends at the last ``)``).

Which listener answers a connection to 127.0.0.1:<port> (Linux picks the most specific
bound address, IPv4 before IPv6): one bound to 127.0.0.1, else to ``::ffff:127.0.0.1``,
else a wildcard (0.0.0.0, else ``::``, which takes IPv4 unless ``IPV6_V6ONLY``, not shown in
``/proc/net/tcp6``). A wildcard listener also answers at every pod IP, so a probe that
falls back (its pod IP refused) normally meets a 127.0.0.1 one.

The parsers take text; the scanners take the ``/proc`` root, so tests can give fixtures.
"""

from __future__ import annotations

import ipaddress
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LISTEN = "0A"
PROC = Path("/proc")
_SOCKET = re.compile(r"socket:\[(\d+)\]")


@dataclass(frozen=True)
class Listener:
    """One LISTEN socket of ``/proc/net/tcp*``: its bound address, port and inode."""

    addr: str
    port: int
    inode: int


def _hex_addr(text: str) -> str:
    """``/proc/net/tcp*``'s hex address: 32-bit words in host byte order (proc(5))."""
    words = [int(text[i : i + 8], 16) for i in range(0, len(text), 8)]
    ip = ipaddress.ip_address(b"".join(struct.pack("=I", w) for w in words))
    mapped = getattr(ip, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped is not None else str(ip)


def parse_listeners(text: str) -> list[Listener]:
    """The LISTEN sockets (state ``0A``) of a ``/proc/net/tcp`` or ``/proc/net/tcp6`` text
    (proc(5): ``sl local_address rem_address st ... uid timeout inode``)."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10 or f[3] != LISTEN or ":" not in f[1]:
            continue
        addr, _, port = f[1].rpartition(":")
        try:
            out.append(Listener(_hex_addr(addr), int(port, 16), int(f[9])))
        except ValueError:
            continue
    return out


_LOOPBACK_ORDER = ("127.0.0.1", "::ffff:127.0.0.1", "0.0.0.0", "::")


def loopback_listener(listeners: Iterable[Listener], port: int) -> tuple[str, set[int]] | None:
    """The listener(s) a connection to 127.0.0.1:``port`` reaches: the bound address and
    the inodes (several with ``SO_REUSEPORT``), most specific first (module doc); None when
    nothing listens there."""
    by_addr: dict[str, set[int]] = {}
    for ln in listeners:
        if ln.port == port:
            by_addr.setdefault(ln.addr, set()).add(ln.inode)
    for addr in _LOOPBACK_ORDER:
        if addr in by_addr:
            return addr, by_addr[addr]
    return None


def parse_stat(text: str) -> tuple[str, int, int]:
    """``(comm, ppid, session)`` of a ``/proc/<pid>/stat`` text (proc(5))."""
    head, _, rest = text.rpartition(")")
    comm = head.partition("(")[2]
    f = rest.split()
    return comm, int(f[1]), int(f[3])


def socket_inodes(links: Iterable[str]) -> set[int]:
    """The socket inodes among ``/proc/<pid>/fd`` link targets (``socket:[N]``)."""
    return {int(m.group(1)) for t in links if (m := _SOCKET.fullmatch(t))}


def _pids(proc: Path) -> list[int]:
    try:
        return [int(n) for n in os.listdir(proc) if n.isdigit()]
    except OSError:
        return []


def _stat(proc: Path, pid: int) -> tuple[str, int, int] | None:
    try:
        return parse_stat((proc / str(pid) / "stat").read_text(errors="replace"))
    except (OSError, ValueError, IndexError):
        return None


def _fd_inodes(proc: Path, pid: int) -> set[int]:
    d = proc / str(pid) / "fd"
    links = []
    try:
        names = os.listdir(d)
    except OSError:  # gone, or not ours to read
        return set()
    for n in names:
        try:
            links.append(os.readlink(d / n))
        except OSError:
            continue
    return socket_inodes(links)


def pod_processes(main_pids: Iterable[int], proc: Path = PROC) -> set[int]:
    """The pod's processes: ``main_pids`` (each container's main process, host pids),
    their descendants, and the members of sessions they lead (a daemon that forked away
    from its parent stays in the container's session)."""
    mains = {p for p in main_pids if p > 0}
    children: dict[int, list[int]] = {}
    for pid in _pids(proc):
        st = _stat(proc, pid)
        if st is None:
            continue
        _, ppid, session = st
        children.setdefault(ppid, []).append(pid)
        if session in mains:
            children.setdefault(session, []).append(pid)
    seen: set[int] = set()
    todo = list(mains)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, ()))
    return seen


def loopback_owner_error(port: int, main_pids: Iterable[int], proc: Path = PROC) -> str | None:
    """None when the socket that answers at 127.0.0.1:``port`` belongs to a process of the
    pod whose main processes are ``main_pids`` (:func:`pod_processes`); otherwise why not
    (nothing listens; it is another process's, named by pid and ``comm`` where readable)."""
    found: list[Listener] = []
    for name in ("tcp", "tcp6"):
        try:
            found += parse_listeners((proc / "net" / name).read_text())
        except OSError:
            continue
    hit = loopback_listener(found, port)
    if hit is None:
        return f"nothing listens at 127.0.0.1:{port}"
    addr, inodes = hit
    ours = pod_processes(main_pids, proc)
    held: set[int] = set()
    for pid in ours:
        held |= _fd_inodes(proc, pid)
    if inodes <= held:
        return None
    others = []
    for pid in sorted(set(_pids(proc)) - ours):
        if _fd_inodes(proc, pid) & (inodes - held):
            st = _stat(proc, pid)
            others.append(f"pid {pid} ({st[0]})" if st else f"pid {pid}")
    where = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
    if addr != "127.0.0.1":
        where += " (answering 127.0.0.1)"
    who = ", ".join(others) if others else "a process whose descriptors are not readable"
    return f"{where} is held by {who}, not by a process of this pod"
