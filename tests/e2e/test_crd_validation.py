"""The API server refuses the specs that would wedge the operator (issue 11 item 6), naming
the field, and admits a good spec and the README's example. Real kube-apiserver v1.36 with
the CRDs from `voicetrack/crds/` (`voicetrack_local.stack.install_crds`); no operator runs:
this is the API server's own validation (OpenAPI schema and CEL rules)."""

from __future__ import annotations

import copy
import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.cluster import Kubectl
from voicetrack.chunkspec import ChunkSpec, ChunkStatus
from voicetrack.resources import (
    API_VERSION,
    CHUNK_KIND,
    SESSION_KIND,
    SessionSpec,
    check_session_name,
)
from voicetrack_local.cluster import LocalCluster
from voicetrack_local.stack import install_crds

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
GUILD, USER, MEETING = "123456789012345678", "223456789012345678", "AbCdEfGhIjKlMnOp"
SHA = "ab" * 32
GOOD_SESSION: dict[str, Any] = {"guildId": GUILD, "channelId": USER,
                                "storage": {"bucket": "vt-bucket.1", "prefix": ""}}
GOOD_CHUNK: dict[str, Any] = {
    "sessionName": "standup", "meetingId": MEETING, "guildId": GUILD, "index": 7,
    "startMs": 70_000, "endMs": 80_000,
    "gap": {"startMs": 60_000, "endMs": 70_000, "cause": "paused"},
    "tracks": [{"userId": USER, "key": f"rec/{GUILD}/{MEETING}/chunks/000007/{USER}.opus",
                "frames": 1, "firstMs": 70_000, "lastMs": 70_000, "bytes": 10,
                "sha256": SHA}]}
KEY = f"{GUILD}/{MEETING}/chunks/000007/{USER}.opus"
KEY_RULE = "spec.tracks: Invalid value: spec.tracks[].key must end with"


@pytest.fixture(scope="module")
def ns(cluster: LocalCluster, kubectl: Kubectl) -> Iterator[str]:
    """The CRDs installed, and one namespace for this module's objects."""
    install_crds(cluster.kubeconfig)
    name = f"t-crd-validation-{secrets.token_hex(3)}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def with_change(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `base` with `value` at the dotted `path` (list indexes as digits)."""
    doc = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node: Any = doc
    for p in parents:
        node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
    node[leaf] = value
    return doc


def create(kubectl: Kubectl, ns: str, kind: str, spec: dict[str, Any],
           name: str | None = None) -> tuple[bool, str]:
    """`kubectl create` one object; (admitted, stderr). Admitted objects are deleted."""
    name = name or f"x-{secrets.token_hex(4)}"
    obj = {"apiVersion": API_VERSION, "kind": kind,
           "metadata": {"name": name, "namespace": ns}, "spec": spec}
    proc = kubectl("create", "-f", "-", input=json.dumps(obj), check=False)
    if proc.returncode == 0:
        kubectl("delete", kind.lower(), name, "-n", ns, "--wait=false", check=False)
    return proc.returncode == 0, proc.stderr


SESSION_CASES: list[tuple[str, Any, str]] = [
    ("storage.prefix", "/abs", "spec.storage.prefix"),
    ("storage.prefix", "a/../b", "spec.storage.prefix"),
    ("storage.prefix", "..", "spec.storage.prefix"),
    ("storage.prefix", "a b", "spec.storage.prefix"),
    ("storage.prefix", "p" * 129, "spec.storage.prefix"),
    ("storage.bucket", "ab", "spec.storage.bucket"),
    ("storage.bucket", "Upper", "spec.storage.bucket"),
    ("storage.bucket", "-lead", "spec.storage.bucket"),
    ("storage.bucket", "under_score", "spec.storage.bucket"),
    ("storage.bucket", "two..dots", "spec.storage.bucket"),
    ("storage.bucket", "192.168.5.4", "spec.storage.bucket"),
    ("meetingId", "../../etc/passwd", "spec.meetingId"),
    ("limits.maxDurationSeconds", 0, "spec.limits.maxDurationSeconds"),
    ("limits.maxDurationSeconds", -1, "spec.limits.maxDurationSeconds"),
    ("limits.maxDurationSeconds", 604_801, "spec.limits.maxDurationSeconds"),
    ("limits.maxBytes", 0, "spec.limits.maxBytes"),
    ("output.formats", ["mp3", "mp3"], "spec.output.formats"),
    # third review, fault 4: a files session of one namespace naming another meeting's
    # recorded objects (same bucket) copied that audio into its own tracks
    *[("source", {"type": "files", "speakers": [{"userId": USER, "objectKey": key}]},
       "spec.source.speakers[0].objectKey") for key in (
        f"rec/{GUILD}/{MEETING}/final/{USER}.mp3", f"{GUILD}/{MEETING}/live/mix.mp3",
        f"a/b/{GUILD}/{MEETING}/chunks/000001/{USER}.opus",
        f"rec/{GUILD}/{MEETING}/outputs/000001/piece-mix.mp3")],
]

CHUNK_CASES: list[tuple[str, Any, str]] = [
    ("endMs", 70_000, "spec.endMs"),
    ("startMs", 70_010, "spec.startMs"),
    ("endMs", 80_010, "spec.endMs"),
    ("endMs", 604_800_020, "spec.endMs"),
    ("index", 1_000_000, "spec.index"),
    ("gap.endMs", 60_000, "spec.gap.endMs"),
    ("gap.startMs", 60_010, "spec.gap.startMs"),
    ("sessionName", "s" * 64, "spec.sessionName"),
    ("sessionName", "Bad_Name", "spec.sessionName"),
    ("meetingId", "../../etc/passwd", "spec.meetingId"),
    ("guildId", "../1", "spec.guildId"),
    ("tracks.0.userId", "../x", "spec.tracks[0].userId"),
    ("tracks.0.key", f"../{KEY}", "spec.tracks[0].key"),
    ("tracks.0.key", f"/r/{KEY}", "spec.tracks[0].key"),
    ("tracks.0.key", f"a/../{KEY}", "spec.tracks[0].key"),
    ("tracks.0.key", KEY.replace("000007", "000008"), KEY_RULE),
    ("tracks.0.key", KEY.replace(f"/{USER}.", f"/{GUILD}."), KEY_RULE),
    ("tracks.0.key", KEY.replace(".opus", ".pcm"), KEY_RULE),
    ("tracks.0.key", f"r/9{KEY}", KEY_RULE),
]


@pytest.mark.parametrize(("path", "value", "field"), SESSION_CASES)
def test_bad_session_spec_is_refused_naming_the_field(
        kubectl: Kubectl, ns: str, path: str, value: Any, field: str) -> None:
    spec = with_change(GOOD_SESSION, path, value)
    admitted, err = create(kubectl, ns, SESSION_KIND, spec)
    assert not admitted and field in err, err
    with pytest.raises(ValueError):  # the operator's model refuses it too
        SessionSpec.model_validate(spec)


@pytest.mark.parametrize(("path", "value", "field"), CHUNK_CASES)
def test_bad_chunk_spec_is_refused_naming_the_field(
        kubectl: Kubectl, ns: str, path: str, value: Any, field: str) -> None:
    spec = with_change(GOOD_CHUNK, path, value)
    admitted, err = create(kubectl, ns, CHUNK_KIND, spec)
    assert not admitted and field in err, err
    with pytest.raises(ValueError):
        ChunkSpec.model_validate(spec)


def test_long_session_name_is_refused(kubectl: Kubectl, ns: str) -> None:
    admitted, err = create(kubectl, ns, SESSION_KIND, GOOD_SESSION, name="s" * 51)
    assert not admitted and "metadata.name: Too long: may not be more than 50" in err, err
    with pytest.raises(ValueError, match=r"metadata\.name"):
        check_session_name("s" * 51)


def test_good_specs_are_admitted(kubectl: Kubectl, ns: str) -> None:
    assert create(kubectl, ns, SESSION_KIND, GOOD_SESSION, name="s" * 50) == (True, "")
    files = with_change(GOOD_SESSION, "source", {"type": "files", "speakers": [
        {"userId": USER, "objectKey": f"inputs/{GUILD}/{MEETING}/talk.wav"}]})
    SessionSpec.model_validate(files)
    assert create(kubectl, ns, SESSION_KIND, files)[0]
    assert create(kubectl, ns, CHUNK_KIND, GOOD_CHUNK)[0]
    pcm = with_change(with_change(GOOD_CHUNK, "rawFormat", "pcm-s16le"), "tracks.0.key",
                      KEY.replace(".opus", ".pcm"))
    many = with_change(GOOD_CHUNK, "tracks", [
        {**GOOD_CHUNK["tracks"][0], "userId": f"{10**17 + i}",
         "key": f"rec/{GUILD}/{MEETING}/chunks/000007/{10**17 + i}.opus"} for i in range(128)])
    for spec in (pcm, many):
        ChunkSpec.model_validate(spec)
        admitted, err = create(kubectl, ns, CHUNK_KIND, spec)
        assert admitted, err


def test_readme_example_is_admitted(kubectl: Kubectl, ns: str) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
    example = next(yaml.safe_load(b) for b in blocks if f"kind: {SESSION_KIND}" in b)
    SessionSpec.model_validate(example["spec"])
    admitted, err = create(kubectl, ns, SESSION_KIND, example["spec"],
                           name=example["metadata"]["name"])
    assert admitted, err


def test_operator_status_is_kept_whole(kubectl: Kubectl, ns: str) -> None:
    """The chunk's status schema is structural (ChunkStatus): what the operator writes is
    stored unpruned, and a status outside the schema is refused."""
    name = f"c-{secrets.token_hex(4)}"
    obj = {"apiVersion": API_VERSION, "kind": CHUNK_KIND,
           "metadata": {"name": name, "namespace": ns}, "spec": GOOD_CHUNK}
    kubectl("create", "-f", "-", input=json.dumps(obj))
    status = ChunkStatus.model_validate({
        "transcodeStatus": "failed", "trackCount": 1, "jobName": "standup-tx-000007",
        "error": "BackoffLimitExceeded: x", "tracks": [{
            "userId": USER, "format": "mp3", "key": KEY.replace(".opus", ".mp3"),
            "bytes": 5, "sha256": SHA, "durationMs": 10_000}]}).to_api()
    kubectl("patch", "recordingchunk", name, "-n", ns, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": status}))
    got = json.loads(kubectl("get", "recordingchunk", name, "-n", ns, "-o", "json").stdout)
    assert got["status"] == status
    bad = kubectl("patch", "recordingchunk", name, "-n", ns, "--subresource=status",
                  "--type=merge", "-p", json.dumps({"status": {"transcodeStatus": "lost"}}),
                  check=False)
    assert bad.returncode != 0 and "status.transcodeStatus" in bad.stderr, bad.stderr


@pytest.mark.parametrize("patch", [
    {"meetingId": "ffffffffffffffff"},
    {"index": 8},
    {"tracks": [{**GOOD_CHUNK["tracks"][0], "userId": "400000000000000099"}]},
    {"gap": None},
])
def test_a_chunk_spec_cannot_be_edited(kubectl: Kubectl, ns: str,
                                       patch: dict[str, Any]) -> None:
    """Reviewer's fault: a namespace editor could patch a queued chunk to point the operator
    at another meeting's result and rows, or change a done chunk's speaker so the mirror
    raised on every pass; the spec is now immutable (its metadata and status are not)."""
    name = f"c-{secrets.token_hex(4)}"
    obj = {"apiVersion": API_VERSION, "kind": CHUNK_KIND,
           "metadata": {"name": name, "namespace": ns}, "spec": GOOD_CHUNK}
    kubectl("create", "-f", "-", input=json.dumps(obj))
    edit = kubectl("patch", "recordingchunk", name, "-n", ns, "--type=merge",
                   "-p", json.dumps({"spec": patch}), check=False)
    assert edit.returncode != 0 and "spec is immutable" in edit.stderr, edit.stderr
    kubectl("label", "recordingchunk", name, "-n", ns, "voicetrack.dev/checked=yes")
    kubectl("patch", "recordingchunk", name, "-n", ns, "--subresource=status",
            "--type=merge", "-p", json.dumps({"status": {"transcodeStatus": "queued"}}))
    got = json.loads(kubectl("get", "recordingchunk", name, "-n", ns, "-o", "json").stdout)
    assert {k: got["spec"][k] for k in GOOD_CHUNK if k != "tracks"} == {
        k: v for k, v in GOOD_CHUNK.items() if k != "tracks"}
    assert got["spec"]["tracks"][0]["userId"] == USER
    assert got["status"] == {"transcodeStatus": "queued"}
