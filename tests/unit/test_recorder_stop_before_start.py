"""A recorder pod deleted before it started recording (SIGTERM while it prepares) stops
cleanly: exit 0, a termination message saying it stopped before start. Before, a SIGTERM
while `Recorder.prepare` retried listing the session's chunks (the API server answering
503) left `retry_async`'s TemporaryFailure to the entry point: exit 1, `failed:
TemporaryFailure: …` (a failed container, a restart and an alert for a pod that recorded
nothing and lost nothing).

The recorder runs as its container does (`voicetrack-recorder run` in a subprocess, the
environment the pod manifest sets, a real SIGTERM); the API server is a loopback HTTP
server that serves the RecordingSession and answers 503 to everything else; uploads go
through an upload grant, so no S3 is touched before recording starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.unit.loopback_api import loopback_api, status_doc
from voicetrack.resources import API_VERSION, GROUP, SESSION_KIND, SESSION_PLURAL, VERSION

pytestmark = pytest.mark.unit

GUILD = "300000000000000001"
SESSION_PATH = f"/apis/{GROUP}/{VERSION}/namespaces/rec/{SESSION_PLURAL}/standup"


@pytest.fixture
def api() -> Iterator[tuple[list[str], str]]:
    """A loopback API server (`loopback_api`): 200 with the session for its GET, 503 for
    every other request (the chunk list, the session watch). Yields (the requests it saw,
    its URL)."""
    session = {"apiVersion": API_VERSION, "kind": SESSION_KIND,
               "metadata": {"name": "standup", "namespace": "rec",
                            "uid": "5e551011-0000-4000-8000-000000000001",
                            "creationTimestamp": datetime.now(UTC).strftime(
                                "%Y-%m-%dT%H:%M:%SZ")},
               "spec": {"guildId": GUILD, "channelId": GUILD}}
    with loopback_api(lambda method, path: (200, session) if (method, path) == (
            "GET", SESSION_PATH) else (503, status_doc(503))) as served:
        yield served


def recorder_env(tmp_path: Path, url: str) -> dict[str, str]:
    """The pod's environment for session `rec/standup` against the API server at `url`,
    uploading through an upload grant to an S3 endpoint nothing listens on."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": url}}],
        "users": [{"name": "t", "user": {}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}]}))
    now = datetime.now(UTC)
    grant = {"bucket": "voicetrack", "prefix": f"recordings/{GUILD}/m/chunks/",
             "expiresAt": (now + timedelta(hours=1)).isoformat(),
             "fields": {"x-amz-date": now.strftime("%Y%m%dT%H%M%SZ"), "policy": "p",
                        "x-amz-credential": "AKID/20261203/us-east-1/s3/aws4_request"}}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VOICETRACK_", "KUBERNETES_"))}
    env.update({
        "KUBECONFIG": str(kubeconfig), "VOICETRACK_NAMESPACE": "rec",
        "VOICETRACK_SESSION_NAME": "standup",
        "VOICETRACK_SESSION_STARTED_AT_MS": str(int(now.timestamp() * 1000)),
        "VOICETRACK_S3_UPLOAD_GRANT": json.dumps(grant),
        "VOICETRACK_S3_ENDPOINT": "http://127.0.0.1:9",
        "VOICETRACK_SPOOL_DIR": str(tmp_path / "spool"),
        "VOICETRACK_ACK_FILE": str(tmp_path / "acks.json"),
        "VOICETRACK_TERMINATION_LOG": str(tmp_path / "termination-log")})
    return env


def test_sigterm_while_preparing_is_a_clean_stop(tmp_path: Path,
                                                 api: tuple[list[str], str]) -> None:
    seen, url = api
    proc = subprocess.Popen(
        [sys.executable, "-c", "from voicetrack_recorder.main import app; app()", "run"],
        env=recorder_env(tmp_path, url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        deadline = time.monotonic() + 30
        while not any("recordingchunks" in p for p in seen):  # prepare is retrying
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    message = (tmp_path / "termination-log").read_text()
    assert proc.returncode == 0, output
    assert message.startswith("stopped before start: acknowledged - (0 by this run"), message
    assert "nothing recorded" in output, output
