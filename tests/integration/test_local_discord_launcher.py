"""`voicetrack local discord up|down`: the local Discord as a background process, served
with a certificate from the harness CA's public issuer (`pki.issue_server_cert`)."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from voicetrack_local import procs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CLI = str(Path(sys.executable).parent / "voicetrack")


def cli(*args: str) -> str:
    return subprocess.run([CLI, "local", "discord", *args], capture_output=True, text=True,
                          check=True, timeout=40).stdout.strip()


def test_up_reuse_down(tmp_path: Path) -> None:
    state = tmp_path / "discord"
    path = Path(cli("up", "--state-dir", str(state), "--users", "alice,bob"))
    record = procs.ProcRecord.load(state / "discord.pid")
    try:
        assert path == state / "discord.json"
        info = json.loads(path.read_text())
        assert [u["name"] for u in info["users"]] == ["alice", "bob"]
        assert record is not None and record.alive()
        ctx = ssl.create_default_context(cafile=info["ca_bundle"])  # verifies 127.0.0.1
        req = urllib.request.Request(f"{info['api_base']}/users/@me",
                                     headers={"Authorization": f"Bot {info['bot_token']}"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            assert json.loads(r.read())["id"] == info["application_id"]
        assert cli("up", "--state-dir", str(state)) == str(path)  # reused, same process
        assert procs.ProcRecord.load(state / "discord.pid") == record
    finally:
        out = cli("down", "--state-dir", str(state))
    assert out == "stopped: local-discord"
    assert not record.alive() and not path.exists()
    assert cli("down", "--state-dir", str(state)) == "nothing was running"
