"""Where the completion webhook may connect (`adapters.webhook_egress`), without servers:
the refused address ranges and their allow-list, the resolver that hands the connector only
checked addresses, the redacted URL of the log, and what is kept of a refusing answer."""

from __future__ import annotations

import ipaddress
import re
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from voicetrack.errors import InvalidInputError
from voicetrack_operator.adapters.webhook_egress import (
    EgressPolicy,
    GuardedResolver,
    WebhookAddressRefused,
    redacted_url,
)
from voicetrack_operator.services.webhooks import WebhookSettings, answer_summary

pytestmark = pytest.mark.unit

DEFAULT = EgressPolicy()


@pytest.mark.parametrize(("address", "what"), [
    ("169.254.169.254", "the cloud metadata address"),
    ("fd00:ec2::254", "the cloud metadata address"),
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"), ("64:ff9b::a00:5", "private"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("10.0.0.5", "private"), ("172.16.0.1", "private"), ("172.31.255.254", "private"),
    ("192.168.1.1", "private"), ("fd12:3456::1", "private"),
    ("100.64.0.1", "CGNAT"), ("100.100.100.200", "CGNAT"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("255.255.255.255", "reserved"),
])
def test_internal_addresses_are_refused_by_name(address: str, what: str) -> None:
    why = DEFAULT.refusal(ipaddress.ip_address(address))
    assert why is not None and f"is {what}" in why
    assert why.endswith("not allowed; see VOICETRACK_WEBHOOK_ALLOW_CIDRS")
    with pytest.raises(WebhookAddressRefused,
                       match=re.escape(f"address {ipaddress.ip_address(address)}")):
        DEFAULT.check_url_host(f"[{address}]" if ":" in address else address)


@pytest.mark.parametrize(("address", "what"), [
    ("::127.0.0.1", "loopback"),  # IPv4-compatible (RFC 4291 2.5.5.1, deprecated)
    ("::10.1.2.3", "private"),
    ("::ffff:0:a00:1", "private"),  # IPv4-translated (RFC 2765, SIIT): 10.0.0.1 inside
    ("2002:7f00:1::", "loopback"),  # 6to4 (RFC 3056): 127.0.0.1 inside
    ("2002:a9fe:a9fe::1", "the cloud metadata address"),  # 169.254.169.254 inside
    ("2002:c0a8:101::", "private"),  # 192.168.1.1 inside
    ("64:ff9b:1::a00:5", "a NAT64 local-use prefix"),  # RFC 8215
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "not globally routable"),  # Teredo (RFC 4380)
    ("2001:db8::1", "not globally routable"),  # documentation (RFC 3849)
    ("100::1", "not globally routable"),  # discard-only (RFC 6666)
    ("192.0.2.10", "not globally routable"),  # TEST-NET-1 (RFC 5737)
])
def test_internal_addresses_in_other_forms_are_refused(address: str, what: str) -> None:
    """An IPv4 address reached through an IPv6 form (IPv4-compatible, 6to4, NAT64) is
    checked as that IPv4 address, and a special-purpose address the list does not name
    is refused as not globally routable (IANA special-purpose registries)."""
    why = DEFAULT.refusal(ipaddress.ip_address(address))
    assert why is not None and f"is {what}" in why, why
    with pytest.raises(WebhookAddressRefused):
        DEFAULT.check_url_host(f"[{address}]" if ":" in address else address)


@pytest.mark.parametrize("address", ["2002:808:808::1", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_in_other_forms_pass(address: str) -> None:
    assert DEFAULT.refusal(ipaddress.ip_address(address)) is None


def test_loopback_is_named_loopback_not_by_its_ipv4_reading() -> None:
    assert "is loopback" in (DEFAULT.refusal(ipaddress.ip_address("::1")) or "")


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "172.32.0.1", "100.128.0.1",
                                     "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert DEFAULT.refusal(ipaddress.ip_address(address)) is None


def test_the_message_is_the_one_the_operator_reads() -> None:
    assert DEFAULT.refusal(ipaddress.ip_address("10.0.0.5")) == (
        "address 10.0.0.5 is private: not allowed; see VOICETRACK_WEBHOOK_ALLOW_CIDRS")


def test_the_allow_list_admits_cidrs_and_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICETRACK_WEBHOOK_ALLOW_CIDRS", "10.20.0.0/16, 127.0.0.1 fd12::/64")
    monkeypatch.setenv("VOICETRACK_WEBHOOK_ALLOW_HOSTS", "Hooks.Team-A.svc.cluster.local.")
    policy = WebhookSettings.from_env().egress
    for ok in ("10.20.3.4", "127.0.0.1", "::ffff:127.0.0.1", "fd12::9"):
        assert policy.refusal(ipaddress.ip_address(ok)) is None, ok
    for refused in ("10.21.0.1", "127.0.0.2", "fd13::1", "169.254.169.254"):
        assert policy.refusal(ipaddress.ip_address(refused)) is not None, refused
    assert policy.host_allowed("hooks.team-a.svc.cluster.local")
    assert not policy.host_allowed("other.team-a.svc.cluster.local")
    assert WebhookSettings().egress == EgressPolicy()  # nothing allowed unless asked


@pytest.mark.parametrize(("cidrs", "hosts", "name"), [
    ("10.0.0.0/33", None, "VOICETRACK_WEBHOOK_ALLOW_CIDRS"),
    ("hooks.example.com", None, "VOICETRACK_WEBHOOK_ALLOW_CIDRS"),
    (None, "http://hooks.example.com/", "VOICETRACK_WEBHOOK_ALLOW_HOSTS"),
])
def test_a_bad_allow_list_names_its_variable(cidrs: str | None, hosts: str | None,
                                             name: str) -> None:
    with pytest.raises(InvalidInputError, match=name):
        EgressPolicy.parse(cidrs, hosts)


class Answers(AbstractResolver):
    """A DNS whose answers the test chooses (a rebinding name answers what it likes)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": a, "port": port,
                 "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                 "proto": 0, "flags": 0} for a in self.addresses]

    async def close(self) -> None:
        return None


async def test_the_resolver_hands_over_only_checked_addresses() -> None:
    mixed = GuardedResolver(DEFAULT, Answers("127.0.0.1", "93.184.216.34", "10.1.1.1"))
    assert [r["host"] for r in await mixed.resolve("rebind.example", 443)] == ["93.184.216.34"]
    internal = GuardedResolver(DEFAULT, Answers("169.254.169.254"))
    with pytest.raises(WebhookAddressRefused,
                       match=re.escape("rebind.example: address 169.254.169.254 is the cloud")):
        await internal.resolve("rebind.example", 80)
    named = GuardedResolver(EgressPolicy.parse(None, "hooks.local"), Answers("10.1.1.1"))
    assert [r["host"] for r in await named.resolve("hooks.local", 80)] == ["10.1.1.1"]


@pytest.mark.parametrize(("url", "shown"), [
    ("https://discord.com/api/webhooks/1234567/tok-SECRET", "https://discord.com/api/…"),
    ("https://hooks.slack.com/services/T0/B0/SECRET", "https://hooks.slack.com/services/…"),
    ("https://hooks.example.com/SECRET123", "https://hooks.example.com/…"),
    ("https://hooks.example.com/voicetrack?token=SECRET", "https://hooks.example.com/voicetrack?…"),
    ("http://10.0.0.5:8080/hook", "http://10.0.0.5:8080/hook"),
    ("http://[::1]:8080/", "http://[::1]:8080"),
])
def test_the_log_shows_no_query_or_token_path(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


def test_a_refusing_answer_keeps_its_status_line_only() -> None:
    assert answer_summary(403, None) == "HTTP 403 Forbidden"
    assert answer_summary(599, None) == "HTTP 599"
    assert answer_summary(302, "http://169.254.169.254/latest/meta-data/iam/role?x=SECRET") == (
        "HTTP 302 Found (redirect to http://169.254.169.254/latest/…?…, not followed)")
