"""Fixtures of the images tier: the images of this checkout in local podman storage
(built by scripts/images.sh once per session) and a local cluster whose node runs pods in them
(`voicetrack local up --runtime podman`): its own, in a temporary state directory, or the
one named by ``VOICETRACK_TEST_PODMAN_KUBECONFIG`` (left running)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from voicetrack_local.cluster import LocalCluster, up
from voicetrack_local.kubectl import kubectl as run_kubectl

ROOT = Path(__file__).resolve().parents[2]
TAG = os.environ.get("VOICETRACK_IMAGE_TAG", "0.1.0")
ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "images" / "containers.conf")}

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def images() -> str:
    """The images of this checkout, built once per test session by scripts/images.sh
    (podman's layer cache makes a rebuild of unchanged sources quick). Always built, never
    taken as found: images left from an older checkout ran old code against the new chart
    (an operator that made no per-session recorder identity, refused by the admission
    policy). Returns the build's output (sizes and times)."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "images.sh")], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=3600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="session")
def pcluster(images: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A local cluster whose node runs pods with podman."""
    given = os.environ.get("VOICETRACK_TEST_PODMAN_KUBECONFIG")
    if given:
        kc = Path(given).expanduser().resolve()
        server = yaml.safe_load(kc.read_text())["clusters"][0]["cluster"]["server"]
        yield LocalCluster(kc.parent, kc, server, owned=False)
        return
    c = up(tmp_path_factory.mktemp("k8s-podman"), timeout=180, log=lambda m: None,
           runtime="podman")  # fmt: skip
    try:
        yield c
    finally:
        c.stop(force=True)


@pytest.fixture(scope="session")
def pk(pcluster: LocalCluster) -> Kubectl:
    """kubectl on the podman cluster."""

    def run(*args: str, input: str | None = None, check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return run_kubectl(pcluster.kubeconfig, *args, input=input, check=check, timeout=timeout)

    return run


@pytest.fixture
def ns(pk: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace whose ``default`` ServiceAccount exists."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:30].strip("-")
    name = f"p-{base}-{secrets.token_hex(3)}"
    pk("create", "namespace", name)
    deadline = time.monotonic() + 30
    while pk("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        assert time.monotonic() < deadline, "ServiceAccount default never appeared"
        time.sleep(0.2)
    try:
        yield name
    finally:
        pk("delete", "namespace", name, "--wait=false", check=False)


