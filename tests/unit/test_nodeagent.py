"""Unit tests of the node agent's pure parts and of the local cluster's helpers."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from voicetrack_local.build import GOMOD_DIR, K8S_VERSION, ldflags, render_gomod
from voicetrack_local.nodeagent.logs import head_of_log
from voicetrack_local.nodeagent.podspec import ConfigError, expand, field_value, quantity
from voicetrack_local.pki import ensure_pki
from voicetrack_local.ports import ephemeral_range, free_port, port_free
from voicetrack_local.procs import ProcRecord, spawn, terminate

pytestmark = pytest.mark.unit

POD = {
    "metadata": {
        "name": "p",
        "namespace": "ns",
        "uid": "u-1",
        "labels": {"app": "rec"},
        "annotations": {"a/b": "c"},
    },
    "spec": {"nodeName": "n1", "serviceAccountName": "sa"},
}


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$(MISSING)", env) == "$(MISSING)"  # undefined references stay as written
    assert expand("$$(A) costs $$5", env) == "$(A) costs $5"  # $$ escapes


def test_quantity_parses_binary_and_decimal_suffixes() -> None:
    assert quantity("500m") == 0.5
    assert quantity("1Gi") == 1024**3
    assert quantity("2k") == 2000
    assert quantity(3) == 3
    with pytest.raises(ConfigError, match="invalid resource quantity '12xyz'"):
        quantity("12xyz")


def test_field_refs() -> None:
    assert field_value(POD, "metadata.name") == "p"
    assert field_value(POD, "metadata.namespace") == "ns"
    assert field_value(POD, "metadata.uid") == "u-1"
    assert field_value(POD, "spec.nodeName") == "n1"
    assert field_value(POD, "metadata.labels['app']") == "rec"
    assert field_value(POD, "metadata.annotations['a/b']") == "c"
    with pytest.raises(ConfigError, match=r"spec\.bogus"):
        field_value(POD, "spec.bogus")


def test_pki_chain_and_identities(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path)
    ca = x509.load_pem_x509_certificate(pki.ca.crt.read_bytes())
    admin = x509.load_pem_x509_certificate(pki.admin.crt.read_bytes())
    admin.verify_directly_issued_by(ca)
    assert (
        admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    )
    server = x509.load_pem_x509_certificate(pki.apiserver.crt.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    before = pki.admin.crt.read_bytes()
    assert ensure_pki(tmp_path).admin.crt.read_bytes() == before  # reused, not regenerated


def test_gomod_has_a_replace_per_staging_module_and_version_stamps() -> None:
    text = render_gomod("1.36.3", ["k8s.io/api", "k8s.io/client-go"])
    assert "require k8s.io/kubernetes v1.36.3" in text
    assert "\tk8s.io/api => k8s.io/api v0.36.3" in text
    assert "\tk8s.io/client-go => k8s.io/client-go v0.36.3" in text
    flags = ldflags(K8S_VERSION)
    assert f"-X k8s.io/component-base/version.gitVersion=v{K8S_VERSION}" in flags
    assert f"-X k8s.io/client-go/pkg/version.gitVersion=v{K8S_VERSION}" in flags
    committed = (GOMOD_DIR / "go.mod").read_text()
    assert committed.count("=> k8s.io/") == 33


def test_terminate_escalates_and_spares_reused_pids(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    proc, rec = spawn("stubborn", [sys.executable, "-c", code], tmp_path / "log")
    deadline = time.monotonic() + 10
    while "up" not in (tmp_path / "log").read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rec.alive()
    stranger = ProcRecord("stranger", proc.pid, rec.start_ticks + 1, [])  # same pid, other start
    assert not stranger.alive()
    stranger.signal_group(9)  # must not touch our process
    assert rec.alive()
    t0 = time.monotonic()
    terminate([rec], grace=0.5)
    assert not rec.alive() and time.monotonic() - t0 >= 0.5
    assert proc.wait(timeout=5) == -9


LINGERING = """
import ctypes, socket, sys, threading, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
threading.Thread(target=lambda: time.sleep(60)).start()
ctypes.CDLL(None).pthread_exit(None)  # the main thread (group leader) exits alone
"""


def test_a_process_is_alive_until_its_last_thread_is_gone(tmp_path: Path) -> None:
    """A zombie group leader whose other threads still run (as while a SIGKILLed Go server
    tears down) still holds its files: terminate() must wait for it, or a restart on the
    same port fails with EADDRINUSE."""
    port = free_port()
    proc, rec = spawn("lingering", [sys.executable, "-c", LINGERING, str(port)], tmp_path / "log")
    stat = Path(f"/proc/{proc.pid}/stat")
    deadline = time.monotonic() + 10
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, (tmp_path / "log").read_text()
        time.sleep(0.02)
    assert not port_free(port)  # the leader is a zombie, its thread still listens
    assert rec.alive()
    terminate([rec], grace=0)
    assert not rec.alive()
    assert port_free(port)
    assert proc.wait(timeout=5) < 0  # ended by our signal


def test_free_ports_lie_outside_the_ephemeral_range_and_are_distinct() -> None:
    low, high = ephemeral_range()
    picks = [free_port() for _ in range(50)]
    assert len(set(picks)) == 50
    for port in picks:
        assert not low <= port <= high, (port, low, high)
        assert port_free(port)


def test_port_free_is_false_while_something_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))
        s.listen()
        assert not port_free(s.getsockname()[1])


def test_head_of_log_honours_tail_lines_and_limit_bytes() -> None:
    data = b"a\nbb\nccc\n"
    assert head_of_log(data, None, None) == data
    assert head_of_log(data, 2, None) == b"bb\nccc\n"
    assert head_of_log(data, 0, None) == b""
    assert head_of_log(data, 2, 4) == b"bb\nc"
    assert head_of_log(data, None, 1) == b"a"
