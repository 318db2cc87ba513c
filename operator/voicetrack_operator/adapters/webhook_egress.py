"""Where the completion webhook may connect (docs/webhooks.md, "Security"): a session author
chooses the URL, so without a check the operator would POST, from inside the cluster, to
the cloud metadata address, the API server, the database or its own loopback.

`EgressPolicy` says which addresses are refused (loopback, link-local and the metadata
address, private RFC 1918 and fc00::/7, CGNAT 100.64/10, unspecified, multicast, reserved,
the NAT64 local-use prefix, and whatever else Python's `ipaddress` does not call global: the
IANA special-purpose registries, e.g. Teredo, documentation, TEST-NETs) unless the
operator's allow-list (`VOICETRACK_WEBHOOK_ALLOW_CIDRS`,
`VOICETRACK_WEBHOOK_ALLOW_HOSTS`) names them. `GuardedResolver` is the aiohttp resolver of
the webhook client: it resolves a host name and hands the connector only the addresses the
policy allows, so the address checked is the address connected to (a DNS answer that
changes between a check and the connect, "DNS rebinding", cannot pass). aiohttp does not
ask the resolver about IP literals; `EgressPolicy.check_url_host` covers those.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass, field

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from voicetrack.errors import InvalidInputError

ALLOW_CIDRS_ENV = "VOICETRACK_WEBHOOK_ALLOW_CIDRS"
ALLOW_HOSTS_ENV = "VOICETRACK_WEBHOOK_ALLOW_HOSTS"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_REFUSED: tuple[tuple[str, IPNetwork], ...] = tuple(
    (what, ipaddress.ip_network(net)) for what, net in (
        ("the cloud metadata address", "169.254.169.254/32"),
        ("the cloud metadata address", "fd00:ec2::254/128"),
        ("unspecified", "0.0.0.0/8"),
        ("unspecified", "::/128"),
        ("loopback", "127.0.0.0/8"),
        ("loopback", "::1/128"),
        ("link-local", "169.254.0.0/16"),
        ("link-local", "fe80::/10"),
        ("private", "10.0.0.0/8"),
        ("private", "172.16.0.0/12"),
        ("private", "192.168.0.0/16"),
        ("private", "fc00::/7"),
        ("private", "fec0::/10"),  # IPv6 site-local (deprecated, still routed somewhere)
        ("CGNAT (shared address space)", "100.64.0.0/10"),
        ("IETF protocol assignment", "192.0.0.0/24"),
        ("benchmarking", "198.18.0.0/15"),
        ("multicast", "224.0.0.0/4"),
        ("multicast", "ff00::/8"),
        ("reserved", "240.0.0.0/4"),  # includes 255.255.255.255
        # RFC 8215: where the IPv4 address sits inside depends on the network's prefix length
        ("a NAT64 local-use prefix", "64:ff9b:1::/48"),
    ))
"""(what, network) pairs refused unless allow-listed; the first match names the refusal."""

_EMBEDDING_V4 = (ipaddress.ip_network("::ffff:0:0/96"),  # IPv4-mapped
                 ipaddress.ip_network("64:ff9b::/96"),  # NAT64 well-known prefix (RFC 6052)
                 ipaddress.ip_network("::/96"),  # IPv4-compatible (RFC 4291 2.5.5.1)
                 ipaddress.ip_network("::ffff:0:0:0/96"))  # IPv4-translated (RFC 2765 2.1)


class WebhookAddressRefused(InvalidInputError):
    """The webhook's host is (or resolves only to) an address the egress policy refuses;
    the message names the address, why, and the setting that would allow it."""


def _embedded_v4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address reaches: inside an IPv4-mapped, IPv4-translated
    (SIIT), NAT64 well-known, IPv4-compatible (`::a.b.c.d`, but `::` and `::1` are
    themselves) or 6to4 (`2002::/16`, RFC 3056 section 2) address; else `ip`."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.sixtofour is not None:
            return ip.sixtofour
        for net in _EMBEDDING_V4:
            if ip in net and int(ip) > 1:
                return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return ip


@dataclass(frozen=True)
class EgressPolicy:
    """Which addresses the webhook client may connect to: any public address, plus those
    inside `allow_cidrs` and whatever `allow_hosts` (lower-case names, no trailing dot)
    resolve to."""

    allow_cidrs: tuple[IPNetwork, ...] = ()
    allow_hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, cidrs: str | None, hosts: str | None) -> EgressPolicy:
        """From the two variables' values: comma- or space-separated CIDRs
        (`10.20.0.0/16, 127.0.0.1/32, fd12::/64`; a bare address is a /32 or /128) and host
        names (`hooks.team-a.svc.cluster.local`). Raises InvalidInputError naming the
        variable and the bad item."""
        nets = []
        for item in (cidrs or "").replace(",", " ").split():
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise InvalidInputError(f"{ALLOW_CIDRS_ENV}: not a CIDR: {item!r}") from None
        names = frozenset(h.lower().rstrip(".")
                          for h in (hosts or "").replace(",", " ").split())
        for name in names:
            if not name or "/" in name or ":" in name:
                raise InvalidInputError(f"{ALLOW_HOSTS_ENV}: not a host name: {name!r}")
        return cls(tuple(nets), names)

    def refusal(self, ip: IPAddress) -> str | None:
        """None when `ip` may be connected to; else why not, e.g. `address 10.0.0.5 is
        private: not allowed; see VOICETRACK_WEBHOOK_ALLOW_CIDRS`."""
        inner = _embedded_v4(ip)
        if any(a in net for net in self.allow_cidrs for a in {ip, inner}
               if a.version == net.version):
            return None
        shown = f"{ip} ({inner})" if inner != ip else str(ip)
        for what, net in _REFUSED:
            if inner.version == net.version and inner in net:
                return f"address {shown} is {what}: not allowed; see {ALLOW_CIDRS_ENV}"
        if not inner.is_global:
            return (f"address {shown} is not globally routable: not allowed; see "
                    f"{ALLOW_CIDRS_ENV}")
        return None

    def host_allowed(self, host: str) -> bool:
        """Whether host name `host` is allow-listed by name (its addresses are not checked)."""
        return host.lower().rstrip(".") in self.allow_hosts

    def check_url_host(self, host: str | None) -> None:
        """Check a URL's host when it is an IP literal (brackets allowed): aiohttp connects
        to those without asking the resolver. Host names pass here (`GuardedResolver`
        checks what they resolve to). Raises WebhookAddressRefused."""
        if not host:
            return
        try:
            ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
        except ValueError:
            return
        why = self.refusal(ip)
        if why is not None:
            raise WebhookAddressRefused(why)


async def url_refusal(policy: EgressPolicy, url: str, timeout_s: float = 5.0) -> str | None:
    """Why `policy` refuses the host of `url` as it resolves now, or None: allowed, or not
    decidable yet (no host, a lookup that fails or takes over `timeout_s` seconds): the
    delivery's attempt decides then. For an early warning; the attempt checks again."""
    try:
        host = URL(url).raw_host
        policy.check_url_host(host)
        if host and not _is_ip(host):
            await asyncio.wait_for(GuardedResolver(policy).resolve(host, 0, socket.AF_UNSPEC),
                                   timeout_s)
    except WebhookAddressRefused as err:
        return str(err)
    except (OSError, ValueError, TimeoutError):
        return None
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    return True


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that returns only the addresses `policy` allows; raises
    WebhookAddressRefused (naming the first refused address) when none is left, and lets
    the inner resolver's OSError through (aiohttp reports it as a DNS failure)."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if self.policy.host_allowed(host):
            return found
        kept: list[ResolveResult] = []
        refused: list[str] = []
        for info in found:
            why = self.policy.refusal(ipaddress.ip_address(info["host"].split("%")[0]))
            if why is None:
                kept.append(info)
            else:
                refused.append(why)
        if not kept:
            raise WebhookAddressRefused(
                f"{host}: {refused[0]}" if refused else f"{host}: no address")
        return kept

    async def close(self) -> None:
        await self._inner.close()


_PLAIN_SEGMENT = re.compile(r"[A-Za-z][A-Za-z._-]{0,31}")


def redacted_url(url: str) -> str:
    """`url` as the log may show it: scheme, host, port and the first path segment when it
    looks like a word (`https://hooks.slack.com/services/…`), never the query, fragment,
    user info or the rest of the path (Discord and Slack hook URLs carry their token
    there). A URL that does not parse gives `<unparsable URL>`."""
    try:
        u = URL(url)
        host = u.raw_host or ""
        port = f":{u.explicit_port}" if u.explicit_port is not None else ""
    except (ValueError, TypeError):
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    segments = [s for s in u.raw_path.split("/") if s]
    shown = ""
    if segments:
        first = segments[0]
        shown = (f"/{first}" if _PLAIN_SEGMENT.fullmatch(first) else "/…") + (
            "/…" if len(segments) > 1 and _PLAIN_SEGMENT.fullmatch(first) else "")
    if u.raw_query_string or u.raw_fragment:
        shown += "?…"
    return f"{u.scheme}://{host}{port}{shown}"
