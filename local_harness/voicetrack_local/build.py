"""Build the upstream Kubernetes control plane (and etcd) from Go modules.

The consumer Go module lives next to this file in ``k8s/`` (``go.mod`` + ``go.sum``, committed).
It requires ``k8s.io/kubernetes`` at :data:`K8S_VERSION` and, because kubernetes' own go.mod
points every staging module (``k8s.io/api``, ``k8s.io/client-go``, …) at ``./staging/...``,
which only exists inside the kubernetes repository, it carries one
``replace k8s.io/<m> => k8s.io/<m> v0.<minor>.<patch>`` line per staging module.  That list is
derived from kubernetes' go.mod (fetched with ``go mod download -json``), see
:func:`derive_staging_replaces` and ``voicetrack local build --regen-gomod``.

Binaries land in ``<cache>/k8s-v<version>/`` (``~/.cache/voicetrack/k8s-v1.36.3/`` by
default; ``$VOICETRACK_CACHE_DIR`` or ``$XDG_CACHE_HOME/voicetrack`` override the root) and
are reused when present.  Go's module and build caches live under ``<cache>/go/``.
Source of the build recipe: issue 3 (verified there: ~9 min cold on 2 cores, 1.3 GB module
cache, 3.3 GB build cache).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from voicetrack.errors import VoicetrackError

K8S_VERSION = "1.36.3"
"""The upstream Kubernetes release built (``k8s.io/kubernetes v1.36.3``)."""

ETCD_MODULE = "go.etcd.io/etcd/server/v3"
"""etcd's server module; its root package is the ``etcd`` main.  Version: whatever
kubernetes' go.mod pins (v3.6.8 for v1.36.3), chosen by Go's minimal version selection."""

GOMOD_DIR = Path(__file__).resolve().parent / "k8s"
"""Directory of the committed consumer Go module (``go.mod``, ``go.sum``)."""

CONSUMER_MODULE = "voicetrack.local/k8s"

#: binary name -> Go package path built into it.
BINARIES: dict[str, str] = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "etcd": ETCD_MODULE,
}


class BuildError(VoicetrackError):
    """The Go build of the control plane failed (message names the binary and Go's output)."""


def cache_root() -> Path:
    """Root of Voicetrack's user cache: ``$VOICETRACK_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/voicetrack``, else ``~/.cache/voicetrack``."""
    env = os.environ.get("VOICETRACK_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "voicetrack"


def bin_dir(version: str = K8S_VERSION) -> Path:
    """Directory holding the four binaries for ``version`` (``<cache>/k8s-v<version>``)."""
    return cache_root() / f"k8s-v{version}"


def binaries_present(version: str = K8S_VERSION) -> bool:
    """True when every binary of :data:`BINARIES` exists and is executable in :func:`bin_dir`."""
    d = bin_dir(version)
    return all(os.access(d / name, os.X_OK) for name in BINARIES)


def go_env() -> dict[str, str]:
    """Environment for ``go``: module/build caches under ``<cache>/go``, ``GOFLAGS=-mod=mod``,
    ``CGO_ENABLED=0`` (static binaries, no C toolchain needed).  ``GOTOOLCHAIN`` is left to
    the user: with Go's default (``auto``) an older local Go fetches go1.26 from the proxy."""
    root = cache_root() / "go"
    env = dict(os.environ)
    env.update(
        GOMODCACHE=str(root / "mod"),
        GOCACHE=str(root / "build"),
        GOFLAGS="-mod=mod",
        CGO_ENABLED="0",
    )
    return env


def find_go() -> str:
    """Path of the ``go`` command (PATH, then /usr/local/go/bin/go).

    Raises:
        BuildError: no Go toolchain found.
    """
    found = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if not found:
        raise BuildError(
            "no `go` command found on PATH or in /usr/local/go/bin; install Go >= 1.26"
        )
    return found


def ldflags(version: str = K8S_VERSION) -> str:
    """The ``-ldflags`` value: strip symbols and stamp the version the way upstream's
    ``hack/lib/version.sh`` does (gitVersion, gitMajor, gitMinor in component-base and
    client-go), so ``/version`` and kubectl's skew check see ``v<version>``."""
    major, minor, _ = version.split(".")
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion=v{version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def derive_staging_replaces(version: str = K8S_VERSION) -> list[str]:
    """Staging module paths that kubernetes' go.mod replaces with ``./staging/src/...``.

    Fetches ``k8s.io/kubernetes@v<version>``'s go.mod with ``go mod download -json`` and
    returns the module paths (e.g. ``["k8s.io/api", ...]``; 33 of them for v1.36.3).

    Raises:
        BuildError: ``go mod download`` failed or the go.mod has no staging replaces.
    """
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [find_go(), "mod", "download", "-json", f"k8s.io/kubernetes@v{version}"],
            cwd=tmp,
            env=go_env(),
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        raise BuildError(
            f"go mod download k8s.io/kubernetes@v{version} failed: {proc.stderr.strip()}"
        )
    gomod = Path(json.loads(proc.stdout)["GoMod"]).read_text()
    mods = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", gomod, flags=re.M)
    if not mods:
        raise BuildError(f"k8s.io/kubernetes@v{version} go.mod has no ./staging replaces")
    return sorted(set(mods))


def render_gomod(version: str, staging: list[str]) -> str:
    """Text of the consumer ``go.mod`` for ``version`` with one replace per staging module."""
    _, minor, patch = version.split(".")
    lines = [
        "// Consumer module that builds the upstream control plane; generated by",
        "// `voicetrack local build --regen-gomod` (voicetrack_local/build.py). Do not edit.",
        f"module {CONSUMER_MODULE}",
        "",
        "go 1.26.0",
        "",
        "godebug default=go1.26",
        "",
        f"require k8s.io/kubernetes v{version}",
        "",
        "tool (",
        *[f"\t{pkg}" for pkg in BINARIES.values()],
        ")",
        "",
        "replace (",
        *[f"\t{m} => {m} v0.{minor}.{patch}" for m in staging],
        ")",
        "",
    ]
    return "\n".join(lines)


def regen_gomod(version: str = K8S_VERSION, log: Callable[[str], None] = print) -> Path:
    """Rewrite ``k8s/go.mod`` for ``version`` from kubernetes' go.mod and run ``go mod tidy``
    (which fills ``go.sum``).  Returns the go.mod path.

    Raises:
        BuildError: download or tidy failed.
    """
    staging = derive_staging_replaces(version)
    log(f"build: {len(staging)} staging modules replaced with v0.{version.split('.', 1)[1]}")
    GOMOD_DIR.mkdir(parents=True, exist_ok=True)
    path = GOMOD_DIR / "go.mod"
    path.write_text(render_gomod(version, staging))
    _run_go(["mod", "tidy"], "go mod tidy", log)
    return path


@dataclass(frozen=True)
class BuildResult:
    """Outcome of :func:`build`: where the binaries are and how long it took (seconds)."""

    bin_dir: Path
    built: list[str]
    seconds: float


def _run_go(
    args: list[str],
    what: str,
    log: Callable[[str], None],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> None:
    proc = subprocess.Popen(
        [find_go(), *args],
        cwd=cwd or GOMOD_DIR,
        env=env or go_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    tail: list[str] = []
    started = time.monotonic()
    last = started
    for line in proc.stdout:
        tail = [*tail[-40:], line.rstrip()]
        now = time.monotonic()
        if now - last >= 15:  # progress for long, quiet steps; `go build -v` lines also shown
            log(f"build: {what}: {now - started:.0f} s, {line.strip()[:100]}")
            last = now
    if proc.wait() != 0:
        raise BuildError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail))


def build(
    version: str = K8S_VERSION,
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> BuildResult:
    """Build every binary of :data:`BINARIES` missing from :func:`bin_dir` (all with ``force``).

    Each is built with ``go build -v -trimpath -ldflags <ldflags()>`` in the consumer
    module, into a temporary name then renamed, so an interrupted build never leaves a
    half-written binary that would be reused.  Progress (package being compiled, elapsed
    seconds) goes to ``log`` at most every 15 s per binary.

    Raises:
        BuildError: Go missing, or a build failed (with Go's last output lines).
    """
    if version != K8S_VERSION and not (GOMOD_DIR / "go.mod").read_text().count(f"v{version}"):
        raise BuildError(
            f"k8s/go.mod is for v{K8S_VERSION}; run `voicetrack local build --regen-gomod`"
        )
    out = bin_dir(version)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    built: list[str] = []
    todo = [n for n in BINARIES if force or not os.access(out / n, os.X_OK)]
    if todo:
        log(
            f"build: Kubernetes v{version} from Go modules into {out} "
            f"(cold: ~9 min on 2 cores, ~5 GB of Go caches in {cache_root() / 'go'})"
        )
    for name in todo:
        t0 = time.monotonic()
        tmp = out / f".{name}.tmp{os.getpid()}"
        log(f"build: {name} ({BINARIES[name]}) ...")
        try:
            _run_go(
                [
                    "build",
                    "-v",
                    "-trimpath",
                    "-ldflags",
                    ldflags(version),
                    "-o",
                    str(tmp),
                    BINARIES[name],
                ],
                f"go build {name}",
                log,
            )
            tmp.replace(out / name)
        finally:
            tmp.unlink(missing_ok=True)
        built.append(name)
        log(f"build: {name} done in {time.monotonic() - t0:.0f} s")
    return BuildResult(bin_dir=out, built=built, seconds=time.monotonic() - started)


def ensure_built(version: str = K8S_VERSION, log: Callable[[str], None] | None = None) -> Path:
    """Return :func:`bin_dir` after building whatever is missing (progress to stderr)."""
    if binaries_present(version):
        return bin_dir(version)
    return build(version, log=log or (lambda m: print(m, file=sys.stderr, flush=True))).bin_dir


# ---------------------------------------------------------------------------- Helm

HELM_VERSION = "3.22.0"
"""The Helm release built (``helm.sh/helm/v3 v3.22.0``, the newest v3 on the Go module proxy
when chosen: ``go list -m -versions helm.sh/helm/v3``)."""

HELM_PACKAGE = "helm.sh/helm/v3/cmd/helm"
"""Go package of the ``helm`` command (Helm's own ``make build`` builds the same package)."""


def helm_path(version: str = HELM_VERSION) -> Path:
    """Where the ``helm`` binary for ``version`` lives: ``<cache>/helm-v<version>/helm``."""
    return cache_root() / f"helm-v{version}" / "helm"


def helm_present(version: str = HELM_VERSION) -> bool:
    """True when :func:`helm_path` exists and is executable."""
    return os.access(helm_path(version), os.X_OK)


def helm_ldflags(version: str = HELM_VERSION) -> str:
    """``-ldflags`` as Helm's Makefile sets them: stripped, and ``helm version`` reports
    ``v<version>`` (``helm.sh/helm/v3/internal/version.version``; upstream Makefile)."""
    return (
        f"-s -w -X helm.sh/helm/v3/internal/version.version=v{version} "
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    )


def build_helm(
    version: str = HELM_VERSION,
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Build ``helm`` v<version> from the Go module proxy into :func:`helm_path` (reused when
    present unless ``force``); returns that path.

    Runs ``go install -trimpath -ldflags <helm_ldflags()> helm.sh/helm/v3/cmd/helm@v<version>``
    outside any module (so Helm's own go.mod and go.sum decide every dependency), with the
    same module and build caches as the Kubernetes build (``<cache>/go``), into a temporary
    directory then renamed, so an interrupted build never leaves a half-written binary.
    Cold: about 3 min on 2 cores (mostly shared with the Kubernetes build's caches).

    Raises:
        BuildError: Go missing or the build failed (with Go's last output lines).
    """
    target = helm_path(version)
    if not force and helm_present(version):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    env = go_env()
    env.pop("GOFLAGS", None)  # `-mod=mod` is refused by `go install pkg@version`
    t0 = time.monotonic()
    log(f"build: helm v{version} ({HELM_PACKAGE}) into {target.parent} ...")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".gobin-") as gobin:
        env["GOBIN"] = gobin
        _run_go(
            [
                "install",
                "-v",
                "-trimpath",
                "-ldflags",
                helm_ldflags(version),
                f"{HELM_PACKAGE}@v{version}",
            ],
            "go install helm",
            log,
            cwd=Path(gobin),
            env=env,
        )
        (Path(gobin) / "helm").replace(target)
    log(f"build: helm done in {time.monotonic() - t0:.0f} s")
    return target


def ensure_helm(version: str = HELM_VERSION, log: Callable[[str], None] | None = None) -> Path:
    """Return :func:`helm_path` after building it if missing (progress to stderr)."""
    if helm_present(version):
        return helm_path(version)
    return build_helm(version, log=log or (lambda m: print(m, file=sys.stderr, flush=True)))
