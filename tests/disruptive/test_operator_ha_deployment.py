"""Operator HA on the chart's own Deployment (issue 16): `helm install` with
`operator.replicas=2` and `operator.ha.enabled` on the local control plane, both replicas
Ready at once on the same ports, the active one SIGKILLed while a files session records:
the other acts within 15 s, the killed container restarts as the passive one, and the
session is promoted with every chunk done and no gap.

Two replicas of one Deployment on the local node share the host's network namespace, so
before each pod had an address of its own they clashed on the health and metrics ports.
The node agent now gives each pod a loopback address (`nodeagent.podspec.pod_ip`) and the
chart lets the operator bind it (`operator.listenAddress=$(POD_IP)`, from the downward
API), as pods with their own network namespaces would. The release serves only its own
namespace (`operator.watchNamespaces`), so the shared stack's operator and this one never
handle the same session.

Real everything: the local control plane, the node agent (operator, recorder and
transcoder pods as processes), PostgreSQL and SeaweedFS.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.disruptive.test_operator_ha import (
    TAKEOVER_S,
    JobWatch,
    Pair,
    finish_and_check_nothing_lost,
    start_session,
)
from tests.e2e.test_main_job import wait_for
from tests.fixtures.stack import Stack
from voicetrack.kubeclient import load_api_client
from voicetrack_local.build import ensure_helm
from voicetrack_local.ports import free_port
from voicetrack_local.postgres import PostgresServer
from voicetrack_operator.leadership import is_active

pytestmark = [pytest.mark.disruptive, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "voicetrack"
RELEASE = "vtha"


def _helm(stack: Stack, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(ensure_helm()), *args], capture_output=True, text=True,
                          timeout=240, check=False,
                          env={**os.environ, "KUBECONFIG": str(stack.kubeconfig)})
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def _operator_pods(stack: Stack, ns: str) -> list[dict[str, Any]]:
    out = stack.kubectl("-n", ns, "get", "pods", "-l", "app.kubernetes.io/component=operator",
                        "-o", "json").stdout
    return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _active(pair: Pair, names: list[str]) -> list[str]:
    """Which of the pods `names` kopf's rule lets act, from the peering object."""
    st, now = pair.status(), datetime.now(UTC)
    return [n for n in names if isinstance(st.get(n), dict)
            and is_active(st, n, int(st[n]["priority"]), now)]


def test_the_charts_two_replicas_take_over_from_each_other(
        stack: Stack, postgres_server: PostgresServer, tmp_path: Path) -> None:
    ns = f"ha-dep-{secrets.token_hex(3)}"
    api = load_api_client(str(stack.kubeconfig))
    db_url = postgres_server.create_database(f"vt_{ns.replace('-', '_')}")
    pair = Pair(stack, api, ns, db_url, ns, tmp_path)  # peering named after the namespace
    health, metrics = free_port(), free_port()
    stack.kubectl("create", "namespace", ns)
    names: list[str] = []
    jobs = JobWatch(api, ns)
    try:
        _helm(stack, "install", RELEASE, str(CHART), "--namespace", ns, "--wait",
              "--timeout", "180s",
              "--set", f"s3.endpoint={stack.s3.endpoint}",
              "--set", f"s3.accessKey={stack.s3.access_key}",
              "--set", f"s3.secretKey={stack.s3.secret_key}",
              "--set", f"s3.bucket={stack.s3.bucket}",
              "--set", f"database.url={db_url}",
              "--set", "operator.replicas=2", "--set", "operator.ha.enabled=true",
              "--set", f"operator.ha.peeringName={ns}",
              "--set", f"operator.watchNamespaces={{{ns}}}",
              "--set", f"operator.healthPort={health}",
              "--set", f"operator.metricsPort={metrics}",
              # each replica binds its own pod IP: the same ports, no clash
              "--set", "operator.listenAddress=$(POD_IP)")
        pods = wait_for("both replicas Ready", lambda: (
            p if len(p := _operator_pods(stack, ns)) == 2 and all(map(_ready, p)) else None),
            90)
        names = [p["metadata"]["name"] for p in pods]
        ips = {p["status"]["podIP"] for p in pods}
        assert len(ips) == 2 and "127.0.0.1" not in ips, ips
        try:
            wait_for("both replicas in the peering",
                     lambda: all(n in pair.status() for n in names), 30)
            (active,) = wait_for("one active replica", lambda: (
                a if len(a := _active(pair, names)) == 1 else None), 30)
        except AssertionError as err:  # say what the peering and the pods showed
            raise AssertionError(f"{err}: peering status {pair.status()}; pods " + str([
                (p["metadata"]["name"], p["status"].get("phase"), [
                    (c.get("restartCount"), c.get("ready"))
                    for c in p["status"].get("containerStatuses") or []])
                for p in _operator_pods(stack, ns)])) from None
        (passive,) = [n for n in names if n != active]

        audio_ms = 40_000
        start_session(pair, "deploy", audio_ms)
        wait_for("the first Job", lambda: jobs.first_seen, 90)
        pod = next(p for p in _operator_pods(stack, ns) if p["metadata"]["name"] == active)
        (status,) = pod["status"]["containerStatuses"]
        pid = int(status["containerID"].removeprefix("voicetrack://"))
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        first = wait_for("a Job after the kill", lambda: jobs.after(killed_at),
                         TAKEOVER_S + 5, every_s=0.2)[0]
        print(f"first Job {first - killed_at:.1f} s after the SIGKILL of {active}")
        assert first - killed_at <= TAKEOVER_S
        assert _active(pair, names) == [passive]

        def restarted() -> bool:
            p = next((p for p in _operator_pods(stack, ns)
                      if p["metadata"]["name"] == active), None)
            return bool(p and _ready(p) and p["status"]["containerStatuses"][0][
                "restartCount"] >= 1)

        # the killed container restarts in the same pod, under the same identity, and
        # comes back behind the replica that took over
        wait_for(f"{active} restarted and Ready", restarted, 90)
        wait_for(f"{active}'s keep-alive", lambda: active in pair.status(), 30)
        assert _active(pair, names) == [passive]
        jobs.close()
        counts = finish_and_check_nothing_lost(pair, "deploy", audio_ms)
        print(f"deployment takeover: {counts}, lost 0")
    finally:
        jobs.close()
        for n in names:
            print(f"--- {n}\n" + stack.kubectl("-n", ns, "logs", n, "--tail", "30",
                                             check=False).stdout)
        _helm(stack, "uninstall", RELEASE, "--namespace", ns, "--wait", "--timeout", "90s",
              check=False)
        stack.kubectl("delete", "namespace", ns, "--wait=false", check=False)
