"""A test run stopped with SIGTERM tears its fixtures down (tests/fixtures/interrupt.py).

Before, SIGTERM ended pytest at once: the local control plane, SeaweedFS and PostgreSQL
a killed run had started kept running. The inner run here loads the repository's root
conftest, as every run does, and holds a child process in a session fixture.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

INNER = textwrap.dedent('''
    import os, subprocess, time
    from pathlib import Path
    import pytest

    OUT = Path(os.environ["SIGTERM_TEST_OUT"])

    @pytest.fixture(scope="session")
    def server():
        child = subprocess.Popen(["sleep", "300"])
        (OUT / "child").write_text(str(child.pid))
        yield child
        child.kill()
        child.wait()
        (OUT / "torn-down").write_text("yes")

    def test_runs_long(server):
        (OUT / "running").write_text("yes")
        time.sleep(60)
''')


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie not yet reaped by init counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_sigterm_tears_the_session_fixtures_down(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {**os.environ, "SIGTERM_TEST_OUT": str(tmp_path)}
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:randomly", "-p",
         "no:cacheprovider", "-q", "-c", os.devnull, "--rootdir", str(tmp_path),
         str(tmp_path / "test_inner.py")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "running").exists():
            assert run.poll() is None, run.communicate()[0]
            assert time.monotonic() < deadline, "the inner test never started"
            time.sleep(0.1)
        child = int((tmp_path / "child").read_text())
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    assert (tmp_path / "torn-down").exists(), f"fixtures not torn down:\n{out}"
    assert not _alive(child)
    assert run.returncode == pytest.ExitCode.INTERRUPTED, out
