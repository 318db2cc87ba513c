"""`make bench` runs every `benchmarks/*.py` as a script (`python benchmarks/X.py`), with no
PYTHONPATH and from the repository root: each must at least start there (its `--help`
answers), or the target stops at the first one that cannot import its helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py")
                 if "argparse" in p.read_text() and p.name != "__init__.py")

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_each_benchmark_starts_as_make_bench_runs_it(script: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(script.relative_to(ROOT)), "--help"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()


def test_the_scripts_are_found() -> None:
    assert len(SCRIPTS) >= 5
