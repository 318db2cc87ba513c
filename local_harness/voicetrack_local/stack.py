"""The Voicetrack stack on a local cluster: CRDs, a namespace with its Secret, and the
operator as a local process. Shared by `voicetrack demo` and the e2e tests.

The operator runs outside the cluster with the admin kubeconfig (as `kopf run` would on a
developer machine); the recorder and transcoder run as pods through the node agent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from importlib.resources import files
from pathlib import Path

from voicetrack.objectstore import S3Settings
from voicetrack_local.kubectl import kubectl
from voicetrack_local.ports import free_port

CRD_DIR = Path(str(files("voicetrack") / "crds"))
"""The CRDs, shipped as package data of `voicetrack` (their one home; `crds/` at the top of
the checkout and the chart's `crds/` link to them)."""
CRD_NAMES = ("recordingsessions.voicetrack.dev", "recordingchunks.voicetrack.dev",
             "clusterkopfpeerings.kopf.dev")
POLICY_DIR = Path(str(files("voicetrack") / "policies"))
"""The ValidatingAdmissionPolicy that keeps each recorder to its own session's chunks (the
chart includes the same file)."""


class StackError(RuntimeError):
    """A part of the stack did not come up; the message says which and why."""


def install_crds(kubeconfig: Path, timeout_s: float = 60) -> None:
    """`kubectl apply` the CRDs in `crds/`, wait until they are Established, then apply
    the admission policy in `voicetrack/policies/`."""
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
    kubectl(kubeconfig, "wait", "--for=condition=Established", f"--timeout={int(timeout_s)}s",
            *(f"crd/{n}" for n in CRD_NAMES), timeout=timeout_s + 10)
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(POLICY_DIR))


def prepare_namespace(kubeconfig: Path, namespace: str, s3: S3Settings) -> None:
    """Create `namespace` (if missing) and its `voicetrack-s3` Secret (`accessKey`,
    `secretKey`) that recorder and transcoder pods read through secretKeyRef."""
    manifest = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {namespace}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: voicetrack-s3, namespace: {namespace}}}
type: Opaque
stringData: {{accessKey: "{s3.access_key}", secretKey: "{s3.secret_key}"}}
"""
    kubectl(kubeconfig, "apply", "-f", "-", input=manifest)


def discord_operator_env(info: dict[str, object]) -> dict[str, str]:
    """The operator's variables that send recorder pods to a local Discord, from its
    discord.json (`api_base`, `gateway_url`, `ca_bundle`, a path on this node)."""
    return {"VOICETRACK_POD_DISCORD_API_BASE": str(info["api_base"]),
            "VOICETRACK_POD_DISCORD_GATEWAY_URL": str(info["gateway_url"]),
            "VOICETRACK_POD_DISCORD_CA_BUNDLE": str(info["ca_bundle"])}


class OperatorProcess:
    """`voicetrack-operator` as a child process, with its log in `log_path`."""

    def __init__(self, kubeconfig: Path, s3: S3Settings, database_url: str, log_path: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.s3 = s3
        self.database_url = database_url
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.s3.env(),
            "KUBECONFIG": str(self.kubeconfig),
            "VOICETRACK_DATABASE_URL": self.database_url,
            "VOICETRACK_HEALTH_PORT": str(self.health_port),
            "VOICETRACK_METRICS_PORT": str(self.metrics_port),
            **self.extra_env,
        }

    def start(self, timeout_s: float = 60) -> None:
        """Start the operator and wait until its /healthz answers. Raises StackError
        with the log's tail when it exits or does not become healthy in time."""
        exe = Path(sys.executable).parent / "voicetrack-operator"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen([str(exe)], env=self.env(), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError(f"operator exited ({self.process.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise StackError(f"operator not healthy within {timeout_s:.0f} s:\n{self.tail()}")

    def metrics(self) -> str:
        """The operator's /metrics text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as r:
            return r.read().decode()

    def rss_mb(self) -> float:
        """The operator process's resident memory in MB (from /proc)."""
        if self.process is None:
            return 0.0
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 15) -> None:
        """SIGTERM, then SIGKILL after `grace_s`; waits so nothing is left running."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
