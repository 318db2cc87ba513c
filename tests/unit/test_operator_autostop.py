"""A session whose recorder ended by itself is deleted by the operator, so that it is
promoted (issue 12, `services.autostop`): the observe path decides, on the watches' view,
exactly for Stopped, once, with the session's uid as the deletion's precondition.

The Kubernetes adapter is a stand-in that records the calls (any other call fails the
test); the deletion itself on the real API server, the precondition refusing a namesake,
and the promotion that follows: tests/e2e/test_auto_promote.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.unit.test_operator_observe_indexed import (
    NAME,
    NS,
    RUNNING_POD,
    UID,
    FakeDb,
    chunk,
    fresh_grant,
    session_view,
)
from voicetrack.names import meeting_id_for, owner_reference
from voicetrack.objectstore import S3Settings
from voicetrack_operator.builders import PodSettings
from voicetrack_operator.context import Context, OperatorSettings
from voicetrack_operator.services import grants
from voicetrack_operator.services.autostop import end_reason
from voicetrack_operator.services.sessions import SessionService
from voicetrack_operator.services.sessionview import Observed, SessionView

pytestmark = pytest.mark.unit

SUMMARY = "acknowledged 0-1 (2 chunks, 2 by this run, 4096 bytes)"


class Kube:
    """A KubeAdapter stand-in: records `delete_session` and `delete_pod` calls; the
    session's deletion answers `accepted` (False: 404/409). Any other call fails."""

    def __init__(self, accepted: bool = True) -> None:
        self.accepted = accepted
        self.deleted: list[tuple[str, str, str]] = []
        self.pods_deleted: list[str] = []

    async def delete_session(self, ns: str, name: str, uid: str) -> bool:
        self.deleted.append((ns, name, uid))
        return self.accepted

    async def delete_pod(self, ns: str, name: str, grace_s: int | None = None) -> bool:
        self.pods_deleted.append(name)
        return True

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kw: Any) -> Any:
            raise AssertionError(f"API call {name} on the indexed observe path")
        return call


@pytest.fixture(autouse=True)
def _fresh_grant() -> None:  # the grant Secret is not read (test_operator_observe_indexed)
    grants._remember(UID, fresh_grant(), datetime.now(UTC), renewable=True)


def make_ctx(kube: Kube) -> Context:
    settings = OperatorSettings(database_url="sqlite+aiosqlite://",
                                s3=S3Settings(endpoint="http://127.0.0.1:1", access_key="a",
                                              secret_key="b", bucket="voicetrack"),
                                pods=PodSettings(), live_interval_s=0)
    ctx = Context(settings=settings, kube=kube,  # type: ignore[arg-type]
                  db=FakeDb({meeting_id_for(UID, None)}))  # type: ignore[arg-type]
    ctx.audited.add(UID)
    return ctx


def ended_pod(message: str = f"max-duration: {SUMMARY}", phase: str = "Succeeded",
              code: int = 0, owner: str = UID, deleting: bool = False) -> dict[str, Any]:
    """The recorder pod after its container exited `code` with termination `message`."""
    meta: dict[str, Any] = {"name": f"{NAME}-rec", "namespace": NS,
                            "ownerReferences": [owner_reference(NAME, owner)]}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    return {"metadata": meta, "spec": {}, "status": {"phase": phase, "containerStatuses": [
        {"name": "recorder", "restartCount": 0, "lastState": {},
         "state": {"terminated": {"exitCode": code, "message": message}}}]}}


async def observe(s: SessionView, pod: dict[str, Any], kube: Kube) -> dict[str, Any]:
    return await SessionService(make_ctx(kube)).observe_session(
        s, Observed(pod=pod, chunks=[chunk(0, "done", 30), chunk(1, "done", 30)]))


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


@pytest.mark.parametrize(("message", "reason", "words"), [
    (f"max-duration: {SUMMARY}", "max-duration", "limit: maxDurationSeconds (14400 s)"),
    (f"max-bytes: {SUMMARY}", "max-bytes", "limit: maxBytes (2000000000 bytes)"),
    (f"channel-empty (consent degraded: MembersIntentRefused): {SUMMARY}", "channel-empty",
     "limits.emptyChannelSeconds (300 s)"),
    ("", "unknown", "its pod Succeeded without a reason"),
])
async def test_a_recorder_that_ended_by_itself_gets_its_session_deleted_once(
        message: str, reason: str, words: str) -> None:
    """Before, the session stayed Stopped until someone deleted it: its audio was never
    promoted, and the bot's `g-<guild>` answered every later `/record start` "Already
    recording" (the Succeeded pod is never restarted)."""
    kube = Kube()
    s = session_view()
    s.status["state"] = "Recording"
    changed = await observe(s, ended_pod(message), kube)
    assert changed["state"] == "Stopped"
    assert kube.deleted == [(NS, NAME, UID)]  # this uid only: never a namesake
    auto = changed["autoStop"]
    assert auto["reason"] == reason and words in auto["message"]
    assert "promotes" in auto["message"] and auto["deletedAt"].endswith("Z")
    assert words in condition(changed, "Recording")["message"]
    # once: the next tick (the status patched, the watch not yet showing the deletion)
    s.status.update(changed)
    again = await observe(s, ended_pod(message), kube)
    assert kube.deleted == [(NS, NAME, UID)] and "autoStop" not in again


def paused(s: SessionView) -> SessionView:
    s.spec.paused = True
    return s


def opted_out(s: SessionView) -> SessionView:
    s.spec.limits.delete_when_stopped = False
    return s


def refused(s: SessionView) -> SessionView:
    s.status["state"] = "Refused"
    return s


def deleting(s: SessionView) -> SessionView:
    s.deletion = "2026-01-01T00:01:00Z"
    return s


def same(s: SessionView) -> SessionView:
    return s


@pytest.mark.parametrize(("case", "change", "pod", "state"), [
    ("opted out", opted_out, ended_pod(), "Stopped"),
    ("bad input: Failed", same,
     ended_pod("invalid input: storage: AccessDenied", phase="Running", code=2), "Failed"),
    ("pod Failed (evicted)", same, ended_pod("", phase="Failed", code=137), "Failed"),
    ("paused", paused, {**RUNNING_POD}, "Paused"),
    ("recording", same, {**RUNNING_POD}, "Recording"),
    ("an earlier namesake's pod", same, ended_pod(owner="another-uid"), "Stopped"),
    ("pod being deleted", same, ended_pod(deleting=True), "Stopped"),
    ("refused", refused, ended_pod(), None),
    ("being deleted", deleting, ended_pod(), None),
])
async def test_no_deletion_but_for_a_stopped_session(
        case: str, change: Any, pod: dict[str, Any], state: str | None) -> None:
    kube = Kube()
    changed = await observe(change(session_view()), pod, kube)
    assert changed.get("state") == state, case
    assert kube.deleted == [] and "autoStop" not in changed, case


async def test_a_session_gone_or_renamed_meanwhile_is_nothing_to_do() -> None:
    """404 (gone) or 409 (the uid precondition: the name is a namesake's now)."""
    kube = Kube(accepted=False)
    changed = await observe(session_view(), ended_pod(), kube)
    assert kube.deleted == [(NS, NAME, UID)]
    assert changed["state"] == "Stopped" and "autoStop" not in changed


async def test_the_api_path_decides_alike() -> None:
    """The create handler after an operator restart observes without the watches' view
    (`seen` None): the pod is read from the API."""
    pod = ended_pod(f"channel-empty: {SUMMARY}")
    pod["metadata"]["creationTimestamp"] = (datetime.now(UTC) - timedelta(minutes=5)
                                            ).strftime("%Y-%m-%dT%H:%M:%SZ")

    class Api(Kube):
        async def get_pod(self, ns: str, name: str) -> dict[str, Any]:
            return pod

        async def list_chunks(self, ns: str, session: str, uid: str | None = None
                              ) -> list[Any]:
            return []

    kube = Api()
    service = SessionService(make_ctx(kube))
    service.chunks.ensure_new = _none  # type: ignore[method-assign]
    service.chunks.catch_up = _none  # type: ignore[method-assign]
    changed = await service.observe_session(session_view())
    assert kube.deleted == [(NS, NAME, UID)] and changed["autoStop"]["reason"] == "channel-empty"


async def _none(*args: Any, **kw: Any) -> int:
    return 0


def test_end_reason_is_the_first_word_of_the_termination_message() -> None:
    assert end_reason(ended_pod(f"channel-empty: {SUMMARY}\n")) == "channel-empty"
    assert end_reason(ended_pod("max-duration")) == "max-duration"
    assert end_reason(ended_pod("Error: something odd")) == "unknown"
    assert end_reason(None) == "unknown"
