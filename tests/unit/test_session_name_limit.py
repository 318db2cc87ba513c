"""`SESSION_NAME_MAX` (50) is the longest RecordingSession name whose every child name is
`<session>-<suffix>` within a DNS label (63), never cut and hashed: what lets the recorder
chunk admission policy compare a chunk's name with `<spec.sessionName>-chunk-<index:06d>`
exactly (`voicetrack/policies/recordingchunks-policy.yaml`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from voicetrack.names import (
    chunk_name,
    promote_job_name,
    recorder_pod_name,
    transcode_job_name,
)
from voicetrack.resources import DNS_LABEL_MAX, MAX_CHUNK_INDEX, SESSION_NAME_MAX
from voicetrack_operator.jobs import live_job_name

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def children(session: str) -> dict[str, tuple[str, str]]:
    """Each child name of `session` at its largest index, with the unhashed form."""
    n = MAX_CHUNK_INDEX
    return {"chunk": (chunk_name(session, n), f"{session}-chunk-{n:06d}"),
            "transcode": (transcode_job_name(session, n), f"{session}-tx-{n:06d}"),
            "live": (live_job_name(session, n), f"{session}-live-{n:06d}"),
            "recorder": (recorder_pod_name(session), f"{session}-rec"),
            "promote": (promote_job_name(session), f"{session}-promote")}


def test_every_child_of_the_longest_session_name_is_unhashed_and_fits_a_label() -> None:
    longest = "s" * SESSION_NAME_MAX
    for kind, (name, plain) in children(longest).items():
        assert name == plain and len(name) <= DNS_LABEL_MAX, kind
    assert len(chunk_name(longest, 0)) == DNS_LABEL_MAX  # the bound is tight: chunks


def test_one_more_character_would_hash_the_chunk_name() -> None:
    name, plain = children("s" * (SESSION_NAME_MAX + 1))["chunk"]
    assert name != plain


def test_the_crd_and_the_policy_state_the_same_limit() -> None:
    crd = yaml.safe_load((ROOT / "voicetrack/crds/recordingsessions.yaml").read_text())
    meta = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["metadata"]
    assert meta["properties"]["name"]["maxLength"] == SESSION_NAME_MAX
    policy = next(yaml.safe_load_all(
        (ROOT / "voicetrack/policies/recordingchunks-policy.yaml").read_text()))
    rules = " ".join(v["expression"] for v in policy["spec"]["validations"])
    assert "endsWith" not in rules and "> 50" not in rules  # no suffix-only branch


async def test_the_operator_refuses_a_long_name_the_crd_of_before_admitted() -> None:
    """Helm does not upgrade CRDs: until the new one is applied, the API server still
    admits a 51..63 character name, whose recorder would then have every chunk refused by
    the admission policy (all its audio lost). The operator refuses such a session before
    anything is made (second review); none of its API calls is made (NoApi)."""
    from tests.unit.test_operator_observe_indexed import FakeDb, make_ctx, session_view
    from voicetrack_operator.services.sessions import SessionService
    from voicetrack_operator.services.sessionview import SessionView

    ctx, kube = make_ctx(FakeDb())
    base = session_view()
    long = SessionView.parse({**base.body, "metadata": {
        **base.body["metadata"], "name": "n" * (SESSION_NAME_MAX + 1)}, "status": {}})
    status = await SessionService(ctx).ensure_session(long)
    assert status["state"] == "Refused" and kube.calls == [], (status, kube.calls)
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["reason"] == "NameTooLong" and "metadata.name" in ready["message"]
