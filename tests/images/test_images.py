"""The images as built (`make images`, podman): each runs as its non-root numeric user on a
read-only root filesystem with only /tmp writable and no network, starts its entry point,
and carries neither the harness's tools (`weed`, `kubectl`) nor a compiler, nor another
image's Python packages."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from voicetrack.objectstore import ObjectStore, S3Settings
from voicetrack_local.ports import free_port

pytestmark = pytest.mark.images

ROOT = Path(__file__).resolve().parents[2]
TAG = os.environ.get("VOICETRACK_IMAGE_TAG", "0.1.0")
ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "images" / "containers.conf")}

# image → (entry point arguments that must succeed, modules it must import, modules it
# must not carry)
IMAGES = {
    "operator": (["--help"], ["voicetrack_operator.main", "kopf"],
                 ["discord", "davey", "numpy", "voicetrack_local"]),
    "recorder": (["--help"], ["voicetrack_recorder.main", "voicetrack_recorder.bot.app",
                              "davey"], ["kopf", "sqlalchemy", "numpy", "voicetrack_local"]),
    "transcoder": (["--help"], ["voicetrack_transcoder.main", "numpy"],
                   ["kopf", "discord", "kubernetes", "sqlalchemy", "voicetrack_local"]),
}
FORBIDDEN_TOOLS = ["weed", "kubectl", "gcc", "cc", "c++", "clang", "make", "pip", "pip3"]


@pytest.fixture(scope="module")
def built(images: str) -> None:
    """The images of this checkout (the tier's `images` fixture builds them once)."""
    print(images)


def podman_run(image: str, *args: str, entrypoint: str | None = None
               ) -> subprocess.CompletedProcess[str]:
    cmd = ["podman", "run", "--rm", "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp",
           "--network", "none",
           "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    cmd += [f"localhost/voicetrack/{image}:{TAG}", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_runs_restricted(built: None, image: str) -> None:
    args, must, must_not = IMAGES[image]
    user = subprocess.run(["podman", "image", "inspect", "--format", "{{.Config.User}}",
                           f"localhost/voicetrack/{image}:{TAG}"], env=ENV,
                          capture_output=True, text=True, check=True).stdout.strip()
    assert user == "10001:10001", f"{image} runs as {user!r}, not a numeric non-root user"

    proc = podman_run(image, *args)
    assert proc.returncode == 0, proc.stderr[-2000:]

    probe = (
        "import importlib, os, shutil\n"
        "def has(m):\n"
        "    try:\n        importlib.import_module(m)\n        return True\n"
        "    except ImportError:\n        return False\n"
        f"missing = [m for m in {must!r} if not has(m)]\n"
        f"extra = [m for m in {must_not!r} if has(m)]\n"
        f"tools = [t for t in {FORBIDDEN_TOOLS!r} if shutil.which(t)]\n"
        "writable = [d for d in ('/', '/opt/voicetrack', '/etc', '/home', '/var/tmp')\n"
        "            if os.access(d, os.W_OK)]\n"
        "try:\n    open('/opt/voicetrack/x', 'w')\n    wrote_outside = True\n"
        "except OSError:\n    wrote_outside = False\n"
        "open('/tmp/ok', 'w').write('tmp is writable')\n"
        "print(os.getuid(), missing, extra, tools, writable, wrote_outside)\n"
    )
    proc = podman_run(image, "-c", probe, entrypoint="python3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # uid, modules missing, modules carried, tools, writable dirs, wrote outside /tmp
    assert proc.stdout.strip() == "10001 [] [] [] [] False", f"{image}: {proc.stdout}"


def test_postgresql_image_runs_restricted_on_its_volumes(built: None) -> None:
    """The bundled PostgreSQL's image (images/postgresql): its numeric non-root user, a
    read-only root with only /tmp and the data volume writable, no network; it makes a
    cluster with the given role and database on an empty volume and accepts connections
    on its socket in /tmp; it carries no compiler nor the harness's tools."""
    image = f"localhost/voicetrack/postgresql:{TAG}"
    user = subprocess.run(["podman", "image", "inspect", "--format", "{{.Config.User}}", image],
                          env=ENV, capture_output=True, text=True, check=True).stdout.strip()
    assert user == "10001:10001"
    script = (
        "voicetrack-postgresql & pid=$!; "
        "for i in $(seq 100); do pg_isready -q -h /tmp && break; sleep 0.2; done; "
        "psql -h /tmp -U voicetrack -d voicetrack -tAc 'select current_user, current_database()'; "
        "touch /etc/x 2>/dev/null && echo wrote-outside; "
        f"for t in {' '.join(FORBIDDEN_TOOLS)}; do command -v $t; done; "
        "id -u; kill $pid; wait $pid"
    )
    proc = subprocess.run(
        ["podman", "run", "--rm", "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp",
         "--network", "none", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
         # an empty data volume: a directory it may create (the chart's is a claim)
         "-e", "PGDATA=/tmp/data/pgdata",
         "-e", "POSTGRES_PASSWORD=pw-test", "-e", "POSTGRES_LISTEN=",
         "--entrypoint", "sh", image, "-c", script],
        env=ENV, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if not ln.startswith("voicetrack-postgresql")]
    assert lines == ["voicetrack|voicetrack", "10001"], proc.stdout + proc.stderr[-2000:]



def test_seaweedfs_image_runs_restricted_and_serves_s3(built: None) -> None:
    """The bundled SeaweedFS's image (images/seaweedfs, issue 15): its numeric non-root
    user, a read-only root with only /tmp (its data directory under it) writable, no
    capabilities, no privilege escalation; `weed mini` starts from its entry point on the
    ports it is given, makes the bucket, refuses an anonymous request (403) and serves one
    signed with the given keys; it carries no compiler, pip or the harness's kubectl.
    (The host's network, so that the test reaches it: the image has no Python for a probe
    inside.)"""
    image = f"localhost/voicetrack/seaweedfs:{TAG}"
    user = subprocess.run(["podman", "image", "inspect", "--format", "{{.Config.User}}", image],
                          env=ENV, capture_output=True, text=True, check=True).stdout.strip()
    assert user == "10001:10001"
    names = ["MASTER", "VOLUME", "FILER", "S3", "ADMIN"]
    ports = {n: free_port() for n in names} | {f"{n}_GRPC": free_port() for n in names}
    settings = S3Settings(endpoint=f"http://127.0.0.1:{ports['S3']}", access_key="vt-key",
                          secret_key="vt-secret-0123456789", bucket="voicetrack")
    env = [a for n, p in ports.items() for a in ("-e", f"WEED_{n}_PORT={p}")]
    name = f"vt-weed-test-{os.getpid()}"
    subprocess.run(
        ["podman", "run", "-d", "--rm", "--name", name, "--read-only",
         "--read-only-tmpfs=false", "--tmpfs", "/tmp", "--network", "host",
         "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
         "-e", "WEED_DIR=/tmp/data", "-e", "WEED_BUCKET=voicetrack",
         "-e", f"AWS_ACCESS_KEY_ID={settings.access_key}",
         "-e", f"AWS_SECRET_ACCESS_KEY={settings.secret_key}", *env, image],
        env=ENV, capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    try:
        store = ObjectStore(settings)
        deadline = time.monotonic() + 90
        while True:
            try:
                store.put_bytes("probe/hello", b"served")
                break
            except Exception:  # not up yet, or the bucket not made yet
                if time.monotonic() > deadline:
                    logs = subprocess.run(["podman", "logs", name], env=ENV,
                                          capture_output=True, text=True).stderr
                    raise AssertionError(f"no S3 within 90 s: {logs[-3000:]}") from None
                time.sleep(0.5)
        assert store.get_bytes("probe/hello") == b"served"
        try:
            urllib.request.urlopen(f"{settings.endpoint}/voicetrack/probe/hello", timeout=5)
            anonymous = 200
        except urllib.error.HTTPError as err:
            anonymous = err.code
        assert anonymous == 403
        tools = " ".join(t for t in FORBIDDEN_TOOLS if t != "weed")
        inside = subprocess.run(
            ["podman", "exec", name, "sh", "-c",
             "touch /etc/x /usr/local/bin/x 2>/dev/null && echo wrote-outside; "
             f"for t in {tools}; do command -v $t; done; id -u"],
            env=ENV, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert inside.stdout.split() == ["10001"], inside.stdout + inside.stderr
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "5", name], env=ENV, capture_output=True,
                       timeout=60)
