"""Simulated nodes for scale runs: KWOK (``sigs.k8s.io/kwok``) built from the Go module proxy
and run against the local control plane, managing only the fake Nodes this module makes.

A fake Node carries the annotation :data:`FAKE_NODE_ANNOTATION` (what kwok manages), the
label and ``NoSchedule`` taint :data:`NODE_POOL_KEY` ``=`` :data:`NODE_POOL_VALUE`, so only
pods that both tolerate the taint and select the label land there: the recorder and
transcoder pods of a load run (the operator's ``VOICETRACK_POD_NODE_POOL=kwok``).  Nothing
runs in those pods: kwok's Stages move them Pending → Running → Succeeded (Job pods, after
:attr:`KwokTimings.job_pod_ms`) and remove them when deleted; the load generator
(``benchmarks/scale.py``) plays what the containers would write.

The Stages are upstream's (``kustomize/stage/`` of the kwok module: ``node/fast``
node-initialize, ``node/heartbeat-with-lease``, ``pod/fast`` pod-ready, pod-complete,
pod-delete) read from the Go module cache, with our delays set (:func:`stages`).

The binary lands in ``<cache>/kwok-v<version>/kwok`` (``~/.cache/voicetrack/kwok-v0.8.0``),
built with ``go install`` and the same Go caches as the control plane (:mod:`.build`).
Cold: about 80 s unloaded, several minutes on a busy 2-core machine.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from voicetrack_local import build as k8sbuild

KWOK_VERSION = "0.8.0"
"""The kwok release built (``sigs.k8s.io/kwok v0.8.0``)."""

KWOK_MODULE = "sigs.k8s.io/kwok"
KWOK_PACKAGE = f"{KWOK_MODULE}/cmd/kwok"

FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
"""Annotation (value ``fake``) on every Node kwok manages: ``--manage-nodes-with-annotation-
selector=kwok.x-k8s.io/node=fake``."""

NODE_POOL_KEY = "voicetrack.dev/node-pool"
"""Label and taint key of the fake Nodes."""

NODE_POOL_VALUE = "kwok"
"""Label and taint value of the fake Nodes (the operator's ``VOICETRACK_POD_NODE_POOL``)."""

FAKE_NODE_PREFIX = "kwok-node-"

#: stage name -> path under the module's ``kustomize/stage/``
STAGE_FILES: dict[str, str] = {
    "node-initialize": "node/fast/node-initialize.yaml",
    "node-heartbeat-with-lease": "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod-ready": "pod/fast/pod-ready.yaml",
    "pod-complete": "pod/fast/pod-complete.yaml",
    "pod-delete": "pod/fast/pod-delete.yaml",
}


class KwokError(k8sbuild.BuildError):
    """kwok could not be built, its Stages not found, or it did not start."""


@dataclass(frozen=True)
class KwokTimings:
    """How long simulated pods take (milliseconds): ``pod_start_ms`` from bound to Running
    (image pull and container start), ``job_pod_ms`` from Running to Succeeded for a Job's
    pod (the transcode itself), each plus up to ``jitter_ms`` at random."""

    pod_start_ms: int = 300
    job_pod_ms: int = 1000
    jitter_ms: int = 400


def kwok_path(version: str = KWOK_VERSION) -> Path:
    """Where the ``kwok`` binary for ``version`` lives: ``<cache>/kwok-v<version>/kwok``."""
    return k8sbuild.cache_root() / f"kwok-v{version}" / "kwok"


def kwok_present(version: str = KWOK_VERSION) -> bool:
    """True when :func:`kwok_path` exists and is executable."""
    return os.access(kwok_path(version), os.X_OK)


def build_kwok(
    version: str = KWOK_VERSION, *, force: bool = False, log: Callable[[str], None] = print
) -> Path:
    """Build ``kwok`` v<version> with ``go install sigs.k8s.io/kwok/cmd/kwok@v<version>`` into
    :func:`kwok_path` (reused when present unless ``force``); returns that path.

    Outside any module (kwok's own go.mod decides every dependency), the Go caches of the
    control plane build, into a temporary directory then renamed (never a half-written
    binary).

    Raises:
        voicetrack_local.build.BuildError: Go missing or the build failed.
    """
    target = kwok_path(version)
    if not force and kwok_present(version):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    env = k8sbuild.go_env()
    env.pop("GOFLAGS", None)  # `-mod=mod` is refused by `go install pkg@version`
    t0 = time.monotonic()
    log(f"build: kwok v{version} ({KWOK_PACKAGE}) into {target.parent} ...")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".gobin-") as gobin:
        env["GOBIN"] = gobin
        k8sbuild._run_go(
            ["install", "-v", "-trimpath", "-ldflags", "-s -w", f"{KWOK_PACKAGE}@v{version}"],
            "go install kwok", log, cwd=Path(gobin), env=env,
        )  # fmt: skip
        (Path(gobin) / "kwok").replace(target)
    log(f"build: kwok done in {time.monotonic() - t0:.0f} s")
    return target


def ensure_kwok(version: str = KWOK_VERSION, log: Callable[[str], None] = print) -> Path:
    """Return :func:`kwok_path` after building it if missing."""
    return kwok_path(version) if kwok_present(version) else build_kwok(version, log=log)


def stage_dir(version: str = KWOK_VERSION) -> Path:
    """The module's ``kustomize/stage`` directory in the Go module cache (downloaded with
    ``go mod download`` when missing).

    Raises:
        KwokError: the download failed.
    """
    cached = Path(k8sbuild.go_env()["GOMODCACHE"]) / f"{KWOK_MODULE}@v{version}"
    if not (cached / "kustomize" / "stage").is_dir():
        env = k8sbuild.go_env()
        env.pop("GOFLAGS", None)
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                [k8sbuild.find_go(), "mod", "download", "-json", f"{KWOK_MODULE}@v{version}"],
                cwd=tmp, env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
        if proc.returncode != 0:
            raise KwokError(f"go mod download {KWOK_MODULE}@v{version}: {proc.stderr.strip()}")
        cached = Path(json.loads(proc.stdout)["Dir"])
    return cached / "kustomize" / "stage"


def _delay(ms: int, jitter_ms: int) -> dict[str, int]:
    # kwok: a random delay in [durationMilliseconds, jitterDurationMilliseconds]
    return {"durationMilliseconds": ms, "jitterDurationMilliseconds": ms + jitter_ms}


def stages(upstream: dict[str, dict[str, Any]], timings: KwokTimings) -> list[dict[str, Any]]:
    """The Stage objects kwok runs: ``upstream`` (stage name -> upstream Stage, see
    :data:`STAGE_FILES`) with pod-ready delayed by ``pod_start_ms`` and a Job pod's
    completion by ``job_pod_ms`` (each plus up to ``jitter_ms``).  Pure."""
    out = []
    for name in STAGE_FILES:
        stage = copy.deepcopy(upstream[name])
        if name == "pod-ready":
            stage["spec"]["delay"] = _delay(timings.pod_start_ms, timings.jitter_ms)
        elif name == "pod-complete":
            stage["spec"]["delay"] = _delay(timings.job_pod_ms, timings.jitter_ms)
        out.append(stage)
    return out


def load_upstream_stages(version: str = KWOK_VERSION) -> dict[str, dict[str, Any]]:
    """The upstream Stages of :data:`STAGE_FILES`, by name, from :func:`stage_dir`."""
    root = stage_dir(version)
    return {n: dict(yaml.safe_load((root / p).read_text())) for n, p in STAGE_FILES.items()}


def write_config(path: Path, timings: KwokTimings, version: str = KWOK_VERSION) -> Path:
    """Write kwok's ``--config`` file (the Stages of :func:`stages`) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    docs = stages(load_upstream_stages(version), timings)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def kwok_command(binary: Path, kubeconfig: Path, config: Path) -> list[str]:
    """kwok managing only the Nodes annotated :data:`FAKE_NODE_ANNOTATION` ``=fake``, its
    Stages from ``config``, pod IPs from 10.0.0.0/16, no serving port of its own."""
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--config={config}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
        "--node-lease-duration-seconds=40",
        "--node-ip=10.0.0.1",
        "--cidr=10.0.0.0/16",
        "--node-port=0",
    ]


def fake_node(index: int, *, cpu: str = "256", memory: str = "1Ti", pods: str = "1000"
              ) -> dict[str, Any]:
    """The fake Node ``kwok-node-<index>``: annotated for kwok, labelled and tainted
    ``voicetrack.dev/node-pool=kwok:NoSchedule``, with a large capacity.  Pure."""
    name = f"{FAKE_NODE_PREFIX}{index}"
    capacity = {"cpu": cpu, "memory": memory, "pods": pods}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "type": "kwok",
                       NODE_POOL_KEY: NODE_POOL_VALUE},
        },
        "spec": {"taints": [{"key": NODE_POOL_KEY, "value": NODE_POOL_VALUE,
                             "effect": "NoSchedule"}]},
        "status": {"allocatable": capacity, "capacity": capacity},
    }  # fmt: skip
