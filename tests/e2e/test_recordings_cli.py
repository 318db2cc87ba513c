"""`voicetrack recordings` after real sessions on the local stack: a two-speaker `files`
session is listed with its chunk progress while it records, then, promoted, its links
work and expire, its download verifies (and refuses a damaged object), its Audacity zip
holds equal-length FLAC of the session's length; a session whose recorder failed is
listed `failed` with the recorder's reason after it is deleted.

The CLI runs as the installed `voicetrack` command against the stack's PostgreSQL and
SeaweedFS, configured only through the environment, as an admin would run it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.audio_helpers import Speaker
from tests.e2e.test_main_job import get, wait_for, wav_bytes
from tests.fixtures.stack import Stack

pytestmark = pytest.mark.e2e

GUILD = "310000000000000001"
CHANNEL = "310000000000000002"
USERS = ["410000000000000011", "410000000000000012"]
AUDIO_MS = 9_000
VOICETRACK = str(Path(sys.executable).parent / "voicetrack")


def cli(stack: Stack, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.s3.env(), "VOICETRACK_DATABASE_URL": stack.database_url}
    proc = subprocess.run([VOICETRACK, "recordings", *args], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def listed(stack: Stack, meeting: str) -> dict[str, Any] | None:
    rows = json.loads(cli(stack, "list", "--guild", GUILD, "--json").stdout)
    return next((r for r in rows if r["meeting_id"] == meeting), None)


def session(ns: str, name: str, source: dict[str, Any], guild: str = GUILD) -> str:
    return json.dumps({
        "apiVersion": "voicetrack.dev/v1alpha1", "kind": "RecordingSession",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"guildId": guild, "channelId": CHANNEL, "chunkSeconds": 5, "source": source}})


def samples(path: Path) -> int:
    """Samples per channel of an audio file, decoded by ffmpeg (stream facts by ffprobe)."""
    probe = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,sample_rate,channels",
         "-of", "json", str(path)], capture_output=True, text=True, check=True).stdout)
    stream = probe["streams"][0]
    assert (stream["codec_name"], stream["sample_rate"]) == ("flac", "48000"), stream
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-"],
                         capture_output=True, check=True).stdout
    return len(pcm) // (2 * int(stream["channels"]))


def test_recordings_cli_after_a_recorded_session(stack: Stack, e2e_namespace: str,
                                                 tmp_path: Path) -> None:
    ns = e2e_namespace
    speakers = [Speaker(USERS[0], 160.0, talks=[(300, 3000)], markers=[5000]),
                Speaker(USERS[1], 250.0, talks=[(3500, 7000)], markers=[1500])]
    keys = []
    for s in speakers:
        key = f"e2e-input/{ns}/{s.user_id}.wav"
        stack.store.put_bytes(key, wav_bytes(s.pcm(AUDIO_MS)), "audio/wav")
        keys.append(key)
    files = {"type": "files", "speakers": [
        {"userId": u, "objectKey": k} for u, k in zip(USERS, keys, strict=True)]}
    stack.kubectl("apply", "-f", "-", input=session(ns, "cli", files))
    obj = wait_for("first chunk", lambda: (lambda o: o if o and o.get("status", {}).get(
        "chunks", {}).get("total", 0) >= 1 else None)(get(stack, ns, "recsess", "cli")), 60)
    meeting = obj["status"]["meetingId"]

    # live: listed with its session and chunk progress from temp_recordings
    live = wait_for("the live meeting with chunk rows", lambda: (lambda r: r if r and r[
        "chunks"] else None)(listed(stack, meeting)), 30)
    assert (live["status"], live["namespace"], live["session_name"]) == ("recording", ns, "cli")
    assert live["chunks"]["total"] >= 1 and live["ended_at"] is None
    table = cli(stack, "list", "--guild", GUILD).stdout
    assert meeting in table and f"{ns}/cli" in table and "recording" in table

    wait_for("the audio recorded", lambda: (get(stack, ns, "recsess", "cli") or {}).get(
        "status", {}).get("recordedSeconds", 0) * 1000 >= AUDIO_MS + 1000, 90)
    stack.kubectl("-n", ns, "delete", "recsess", "cli", "--wait=false")
    wait_for("promotion", lambda: get(stack, ns, "recsess", "cli") is None, 180, every_s=1)

    done = listed(stack, meeting)
    assert done is not None and done["status"] == "completed" and done["failure_reason"] is None
    assert done["speakers"] == sorted(USERS) and done["ended_at"]
    assert (done["namespace"], done["session_name"]) == (ns, "cli")

    detail = json.loads(cli(stack, "show", f"{ns}/cli", "--json").stdout)
    assert detail["meeting_id"] == meeting
    tracks = {t["track"]: t for t in detail["tracks"]}
    assert set(tracks) == {*USERS, "mix"} and {t["format"] for t in tracks.values()} == {"mp3"}
    length_ms = detail["output_ms"]
    assert length_ms >= AUDIO_MS

    # links: minted now, they fetch the very bytes; a 1 s one is refused after it expires
    links = json.loads(cli(stack, "url", meeting).stdout)
    for name, link in links.items():
        assert link["expires_in_seconds"] == 900 and link["format"] == "mp3"
        data = urllib.request.urlopen(link["url"], timeout=30).read()
        assert hashlib.sha256(data).hexdigest() == tracks[name]["sha256"]
    # (the CLI's own start may take over a second on a loaded machine, so the short link is
    # only fetched once expired; S3 names the cause, so it is not a signature problem)
    short = json.loads(cli(stack, "url", meeting, "mix", "--expires", "1s").stdout)
    assert short["expires_in_seconds"] == 1 and short["format"] == "mp3"
    time.sleep(2.5)
    with pytest.raises(urllib.error.HTTPError) as expired:
        urllib.request.urlopen(short["url"], timeout=30)
    assert expired.value.code == 403 and b"Request has expired" in expired.value.read()

    # zip: the .lof names every FLAC; each decodes to the session's length
    bundle = tmp_path / "cli.zip"
    cli(stack, "zip", meeting, "--out", str(bundle))
    with zipfile.ZipFile(bundle) as zf:
        zf.extractall(tmp_path / "x")
    root = tmp_path / "x" / f"voicetrack-{meeting}"
    lof = (root / f"{meeting}.lof").read_text().splitlines()
    flacs = sorted(p.name for p in root.glob("*.flac"))
    assert sorted(line.split('"')[1] for line in lof) == flacs == sorted(
        [f"{u}.flac" for u in USERS] + ["mix.flac"])
    assert all(line.endswith(" offset 0") for line in lof)
    lengths = {name: samples(root / name) for name in flacs}
    assert set(lengths.values()) == {length_ms * 48}, lengths

    # download: verified; a damaged object is an error naming it, and it is not kept
    cli(stack, "download", meeting, str(tmp_path / "dl"))
    for t in tracks.values():
        assert hashlib.sha256((tmp_path / "dl" / t["filename"]).read_bytes()).hexdigest() \
            == t["sha256"]
    victim = tracks[USERS[1]]
    stack.store.put_bytes(victim["key"], b"\xff\xfb" + bytes(victim["bytes"] - 2))
    res = cli(stack, "download", meeting, str(tmp_path / "dl2"), ok=False)
    assert res.returncode == 1 and f"{victim['filename']}: sha256" in res.stderr, res.stderr
    assert not (tmp_path / "dl2" / victim["filename"]).exists()
    assert (tmp_path / "dl2" / tracks["mix"]["filename"]).exists()


def test_a_failed_session_is_listed_failed_with_its_reason(stack: Stack,
                                                           e2e_namespace: str) -> None:
    """The recorder cannot use S3 (a wrong key in the namespace's Secret): it exits 2 with
    its reason, the session is Failed; deleted, its meeting is `failed` with that reason."""
    ns = e2e_namespace
    guild = "310000000000000099"
    stack.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "voicetrack-s3", "namespace": ns},
        "stringData": {"accessKey": stack.s3.access_key, "secretKey": "not-the-secret"}}))
    files = {"type": "files", "speakers": [{"userId": USERS[0], "objectKey": "none.wav"}]}
    stack.kubectl("apply", "-f", "-", input=session(ns, "doomed", files, guild))
    st = wait_for("the session Failed", lambda: (lambda s: s if s.get("state") == "Failed"
                                                  else None)(
        (get(stack, ns, "recsess", "doomed") or {}).get("status") or {}), 60)
    meeting = st["meetingId"]
    stack.kubectl("-n", ns, "delete", "recsess", "doomed", "--wait=false")
    wait_for("the session deleted", lambda: get(stack, ns, "recsess", "doomed") is None, 60)

    rows = json.loads(cli(stack, "list", "--guild", guild, "--json").stdout)
    row = next(r for r in rows if r["meeting_id"] == meeting)
    assert (row["status"], row["namespace"], row["session_name"]) == ("failed", ns, "doomed")
    assert row["failure_reason"].startswith("RecorderFailed: ") and "storage: " in row[
        "failure_reason"], row
    assert row["ended_at"] and row["tracks"] == 0
    table = cli(stack, "list", "--guild", guild).stdout
    assert "failed" in table and "RecorderFailed" in table
