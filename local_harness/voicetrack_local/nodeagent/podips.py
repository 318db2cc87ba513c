"""Pod IPs without collisions: :class:`PodIPs` gives each pod of a node a loopback address
in 127.64.0.0/10 that no other pod of the cluster's node agents holds.

The first choice is the address from the pod's uid (:func:`~.podspec.uid_ip`), so most pods
keep the address they always had; when another pod holds it, the next addresses are tried in
order (skipping .0 and .255) until a free one is found.  An address is held through a file
``<dir>/<ip>`` naming the pod's uid and node, created atomically (``link(2)`` fails when
the file exists), so the agents of one state directory (``up(nodes=N)``, one process each)
never hand out one address twice, even at the same moment.  The files outlive the agent: a
restarted agent reads its node's back and gives every pod the address it had; a pod the
agent has no file of (a cluster from before these files) first gets the ``status.podIP``
it reported, if free.  An address is released when its pod is gone (:meth:`PodIPs.release`)
or, for pods deleted while the agent was away, when a list of the node's pods no longer
holds it (:meth:`PodIPs.keep_only`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from voicetrack_local.nodeagent.podspec import NODE_IP, uid_ip

log = logging.getLogger("voicetrack.nodeagent")

#: the pod addresses: 2**22 loopback addresses, all routed to ``lo`` by Linux
POD_NET = ipaddress.ip_network("127.64.0.0/10")
_SIZE = POD_NET.num_addresses
_BASE = int(POD_NET.network_address)
#: seconds after which a claim's temporary file is surely left over (a claim takes ms)
_STALE_TMP = 60.0


def _usable(ip: str) -> bool:
    """``ip`` is a pod address: in :data:`POD_NET`, not ending in .0 or .255."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return addr in POD_NET and int(addr) & 0xFF not in (0, 255)


def candidates(first: str) -> Iterator[str]:
    """``first`` (a usable pod address), then every other usable one in order, wrapping
    around at the end of :data:`POD_NET`: the order in which a pod tries addresses."""
    start = int(ipaddress.ip_address(first)) - _BASE
    for step in range(_SIZE):
        n = (start + step) % _SIZE
        if n & 0xFF not in (0, 255):
            yield str(ipaddress.ip_address(_BASE + n))


def reported_first(pods: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``pods`` (API Pod dicts), those with a ``status.podIP`` first, else in their order:
    the order in which a (restarted) agent assigns addresses, so a running pod keeps the one
    it reported rather than losing it to a new pod whose first choice it is."""
    return sorted(pods, key=lambda p: not (p.get("status") or {}).get("podIP"))


class NoFreeIP(RuntimeError):
    """Every pod address is held (more than four million pods: never in practice)."""


class PodIPs:
    """The pod addresses of one node, held in ``directory`` (shared by the agents of one
    state directory).  Thread-safe.

    Args:
        directory: where every agent of the cluster keeps its files (created).
        node: this agent's Node name, written into its files.
        first_ip: a uid's first-choice address (tests give colliding ones).

    Raises:
        OSError: ``directory`` cannot be created or read."""

    def __init__(self, directory: Path, node: str,
                 first_ip: Callable[[str], str] = uid_ip) -> None:  # fmt: skip
        self.dir = directory
        self.node = node
        self.first_ip = first_ip
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        #: uid -> address, of this node's pods
        self._mine: dict[str, str] = {}
        for f in self.dir.iterdir():
            if f.name.startswith("."):  # a claim's temporary file a killed agent left
                with contextlib.suppress(OSError):
                    if time.time() - f.stat().st_mtime > _STALE_TMP:
                        f.unlink()
                continue
            owner = self._owner(f.name)
            if owner is not None and owner.get("node") == node:
                self._mine[str(owner.get("uid"))] = f.name

    def _owner(self, ip: str) -> dict[str, Any] | None:
        """Who holds ``ip`` (``{"uid", "node"}``), None when nobody does (or it is not a
        pod address's file)."""
        if not _usable(ip):
            return None
        try:
            owner = json.loads((self.dir / ip).read_text())
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _claim(self, ip: str, uid: str) -> bool:
        """Hold ``ip`` for pod ``uid``: True when it is now ``uid``'s (or already was)."""
        tmp = self.dir / f".{uid}.{os.getpid()}.{threading.get_ident()}"
        try:
            tmp.write_text(json.dumps({"uid": uid, "node": self.node}))
            os.link(tmp, self.dir / ip)
            return True
        except FileExistsError:
            owner = self._owner(ip)
            return owner is not None and owner.get("uid") == uid
        finally:
            tmp.unlink(missing_ok=True)

    def assign(self, pod: Mapping[str, Any]) -> str:
        """The address of ``pod`` (an API Pod dict) on this node, held from now on: the one
        it has (same answer on every call), else its reported ``status.podIP`` if free,
        else the first free one of :func:`candidates` of its uid's first choice;
        :data:`~.podspec.NODE_IP` for a ``hostNetwork`` pod (nothing held).

        Raises:
            NoFreeIP: every address is held.
            OSError: the directory cannot be written."""
        if (pod.get("spec") or {}).get("hostNetwork"):
            return NODE_IP
        uid = str(pod["metadata"].get("uid", ""))
        reported = str((pod.get("status") or {}).get("podIP") or "")
        with self._lock:
            if uid in self._mine:
                return self._mine[uid]
            if _usable(reported) and self._claim(reported, uid):
                self._mine[uid] = reported
                return reported
            for ip in candidates(self.first_ip(uid)):
                if self._claim(ip, uid):
                    self._mine[uid] = ip
                    return ip
        raise NoFreeIP(f"no free pod IP in {POD_NET} for pod {uid}")

    def release(self, uid: str) -> None:
        """Pod ``uid`` is gone: free its address (nothing when it holds none). A file that
        cannot be removed (EROFS, EIO) is logged and left: the address stays held until an
        agent of this node starts again and frees it. Never raises."""
        with self._lock:
            ip = self._mine.pop(uid, None)
            if ip is not None and (self._owner(ip) or {}).get("uid") == uid:
                try:
                    (self.dir / ip).unlink(missing_ok=True)
                except OSError as err:
                    log.warning("pod IP %s of gone pod %s not freed: %s", ip, uid, err)

    def keep_only(self, uids: Iterable[str]) -> None:
        """Free the addresses of this node's pods other than ``uids`` (the pods a list
        returned, and those still being run)."""
        keep = set(uids)
        with self._lock:
            stale = [u for u in self._mine if u not in keep]
        for uid in stale:
            self.release(uid)

    def held(self) -> dict[str, str]:
        """This node's pods and their addresses (uid -> address), a copy."""
        with self._lock:
            return dict(self._mine)
