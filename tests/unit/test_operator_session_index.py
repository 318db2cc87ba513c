"""Starting sessions and ensuring chunks on the session index (issue 16): `busy_guild` and
`meeting_owner` (`services.admission`) read the guild's and the meeting id's sessions from
kopf's `session_index` (`handlers/index.py`, `context.SessionIndex`) instead of listing
every session per create (O(N²) to start N sessions), with the same rules; a chunk's
session comes from the index instead of a GET (two per chunk). The index can lag the API by
an event: two sessions of one guild started at once end with one recording, the younger
stopped on its next tick."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import kopf
import pytest

from voicetrack.errors import NotFoundError
from voicetrack.names import meeting_id_for, recorder_pod_name
from voicetrack.objectstore import S3Settings
from voicetrack.resources import API_VERSION, SessionState
from voicetrack_operator.builders import PodSettings
from voicetrack_operator.context import Context, OperatorSettings, SessionIndex
from voicetrack_operator.handlers.index import session_index
from voicetrack_operator.services import sessions
from voicetrack_operator.services.admission import busy_guild, meeting_owner
from voicetrack_operator.services.sessions import SessionService
from voicetrack_operator.services.sessionview import Observed, SessionView

pytestmark = pytest.mark.unit

NS = "ns1"
GUILD = "100000000000000001"
MEETING = "meetingid0000001"


class Kube:
    """A KubeAdapter stand-in: listing sessions fails (the index path must not list),
    `get_session` answers from `sessions`, writes are recorded."""

    def __init__(self, sessions: dict[tuple[str, str], dict[str, Any]] | None = None
                 ) -> None:
        self.sessions = sessions or {}
        self.calls: list[str] = []
        self.deleted: list[str] = []

    async def list_sessions(self) -> list[dict[str, Any]]:
        raise AssertionError("list_sessions with a session index")

    async def get_session(self, ns: str, name: str) -> dict[str, Any] | None:
        self.calls.append(f"get_session {name}")
        return self.sessions.get((ns, name))

    async def get_pod(self, ns: str, name: str) -> dict[str, Any] | None:
        self.calls.append(f"get_pod {name}")
        return None

    async def get_secret(self, ns: str, name: str) -> dict[str, Any] | None:
        return None  # the upload grant Secret is made (`ensure`)

    async def ensure(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"ensure {manifest['kind']}")
        return manifest

    async def delete_pod(self, ns: str, name: str, grace: int | None = None) -> None:
        self.deleted.append(name)


@dataclass
class Db:
    meetings: dict[str, str] = field(default_factory=dict)
    """meeting id -> session uid"""

    async def create_meeting(self, meeting_id: str, *args: Any, **kw: Any) -> None:
        self.meetings.setdefault(meeting_id, args[3])

    async def get_meeting(self, meeting_id: str) -> Any:
        if meeting_id not in self.meetings:
            raise NotFoundError(meeting_id)
        return SimpleNamespace(id=meeting_id, session_uid=None)  # a row without an owner


def body(name: str, created: str = "2026-01-01T00:00:00Z", *, guild: str = GUILD,
         meeting: str | None = None, status: dict[str, Any] | None = None,
         deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "uid": f"uid-{name}",
                            "generation": 1, "creationTimestamp": created,
                            "managedFields": [{"manager": "kubectl"}]}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T01:00:00Z"
    spec: dict[str, Any] = {"guildId": guild, "channelId": "200000000000000001"}
    if meeting:
        spec["meetingId"] = meeting
    return {"apiVersion": API_VERSION, "kind": "RecordingSession", "metadata": meta,
            "spec": spec, "status": status or {}}


def started(name: str) -> dict[str, Any]:
    return {"state": "Recording", "startedAt": "2026-01-01T00:00:01Z",
            "recorderPod": recorder_pod_name(name),
            "meetingId": meeting_id_for(f"uid-{name}", None)}


def index_of(*bodies: dict[str, Any]) -> dict[Any, list[dict[str, Any]]]:
    """What kopf's `session_index` holds for these sessions."""
    out: dict[Any, list[dict[str, Any]]] = {}
    for b in bodies:
        for key, value in session_index(body=kopf.Body(b)).items():
            out.setdefault(key, []).append(value)
    return out


def make_ctx(kube: Kube, index: dict[Any, Any], recorders: dict[Any, Any] | None = None,
             db: Db | None = None) -> Context:
    settings = OperatorSettings(database_url="sqlite+aiosqlite://",
                                s3=S3Settings(endpoint="http://127.0.0.1:1", access_key="a",
                                              secret_key="b", bucket="voicetrack"),
                                pods=PodSettings(), live_interval_s=0)
    return Context(settings=settings, kube=kube, db=db or Db(),  # type: ignore[arg-type]
                   sessions=SessionIndex(index, recorders if recorders is not None else {}))


@pytest.fixture(autouse=True)
def _fresh_caches(monkeypatch: pytest.MonkeyPatch) -> None:

    async def no_access(*args: Any) -> str:  # the recorder's RBAC and upload grant
        return "recorder"

    monkeypatch.setattr(sessions, "ensure_recorder_access", no_access)


def test_the_index_files_a_session_by_name_guild_and_meeting_id_slim() -> None:
    b = body("a", meeting=MEETING)
    value = session_index(body=kopf.Body(b))
    assert set(value) == {("name", NS, "a"), ("guild", GUILD), ("meeting", MEETING)}
    one = value[("name", NS, "a")]
    assert all(v is one for v in value.values()) and "managedFields" not in one["metadata"]
    # the status's meeting id is the one it records into; none at all: not filed by meeting
    b2 = body("b", status={"meetingId": "fromstatus000001"})
    assert ("meeting", "fromstatus000001") in session_index(body=kopf.Body(b2))
    assert len(session_index(body=kopf.Body(body("c")))) == 2


async def test_busy_guild_reads_the_guilds_sessions_with_the_same_rules() -> None:
    me = body("m", "2026-01-01T00:00:05Z")
    others = [
        body("gone", "2026-01-01T00:00:00Z", status=started("gone"), deleting=True),
        body("stopped", "2026-01-01T00:00:00Z", status={"state": "Stopped"}),
        body("refused", "2026-01-01T00:00:00Z", status={"state": "Refused"}),
        body("younger", "2026-01-01T00:00:09Z", status=started("younger")),
        body("z-tie", "2026-01-01T00:00:05Z"),           # same second, larger name
        body("elsewhere", "2026-01-01T00:00:00Z", guild="100000000000000009"),
    ]
    kube = Kube()
    ctx = make_ctx(kube, index_of(me, *others))
    s = SessionView.parse(me)
    assert await busy_guild(ctx, s) is None
    assert kube.calls == []  # no list, and the recorder index answered for "gone"

    # a deleting session whose recorder still runs, and an older pending one, count
    ctx = make_ctx(kube, index_of(me, *others), {(NS, "gone"): [{"metadata": {}}]})
    assert await busy_guild(ctx, s) == f"{NS}/gone"
    tie = body("a-tie", "2026-01-01T00:00:05Z")      # same second, smaller name: older
    ctx = make_ctx(kube, index_of(me, *others, tie))
    assert await busy_guild(ctx, s) == f"{NS}/a-tie"
    assert kube.calls == []


async def test_meeting_owner_reads_the_meeting_ids_sessions_with_the_same_rules() -> None:
    me = body("m", "2026-01-01T00:00:05Z", meeting=MEETING, guild="100000000000000002")
    kube = Kube()

    async def owner(*others: dict[str, Any]) -> str | None:
        ctx = make_ctx(kube, index_of(me, *others))
        return await meeting_owner(ctx, SessionView.parse(me))

    assert await owner(body("r", "2026-01-01T00:00:00Z", meeting=MEETING,
                            status={"state": "Refused"})) is None
    assert await owner(body("young", "2026-01-01T00:00:09Z", meeting=MEETING)) is None
    assert await owner(body("young", "2026-01-01T00:00:09Z", meeting=MEETING,
                            status={**started("young"), "meetingId": MEETING})
                       ) == f"{NS}/young"
    assert await owner(body("old", "2026-01-01T00:00:00Z", meeting=MEETING)) == f"{NS}/old"
    assert await owner(body("other", "2026-01-01T00:00:00Z", meeting="meetingid0000002")
                       ) is None
    # a derived meeting id (no spec.meetingId) belongs to its own session only
    plain = body("p")
    ctx = make_ctx(kube, index_of(plain))
    assert await meeting_owner(ctx, SessionView.parse(plain)) is None
    assert kube.calls == []


async def test_two_sessions_of_one_guild_started_at_once_end_with_one_recording() -> None:
    """The index lags the API: each create handler saw only its own session and both
    started. On its next tick the younger one (creation time, then name) sees the older
    one recording, stops its recorder and fails with the reason; the older one records on
    and the younger one, now inactive, no longer counts against the guild."""
    old, young = body("b-old", "2026-01-01T00:00:00Z"), body("a-young", "2026-01-01T00:00:01Z")
    kube, db = Kube(), Db()
    for b in (old, young):  # each create handler sees only itself in the index
        status = await SessionService(make_ctx(kube, index_of(b), db=db)).ensure_session(
            SessionView.parse(b))
        assert status["recorderPod"] == recorder_pod_name(b["metadata"]["name"])
        b["status"] = {**status, "state": "Recording"}
    pods = {(NS, n): [{"metadata": {"name": recorder_pod_name(n), "namespace": NS},
                       "status": {"phase": "Running"}}] for n in ("b-old", "a-young")}
    ctx = make_ctx(kube, index_of(old, young), pods, db)

    def seen(name: str) -> Observed:
        return Observed(pod=pods[(NS, name)][0])

    first = await SessionService(ctx).observe_session(SessionView.parse(old), seen("b-old"))
    assert "recorderFailure" not in first
    old["status"].update(first)
    changed = await SessionService(ctx).observe_session(SessionView.parse(young),
                                                        seen("a-young"))
    assert changed["state"] == SessionState.FAILED
    assert f"{NS}/b-old" in changed["recorderFailure"]
    assert kube.deleted == [recorder_pod_name("a-young")]
    young["status"].update(changed)
    ctx = make_ctx(kube, index_of(old, young), pods, db)
    assert await busy_guild(ctx, SessionView.parse(old)) is None
    assert "recorderFailure" not in await SessionService(ctx).observe_session(
        SessionView.parse(old), seen("b-old"))
    assert kube.deleted == [recorder_pod_name("a-young")]


async def test_a_sessions_create_sees_an_older_one_the_index_shows() -> None:
    old, young = body("old", "2026-01-01T00:00:00Z", status=started("old")), body("young")
    young["metadata"]["creationTimestamp"] = "2026-01-01T00:00:01Z"
    kube = Kube()
    ctx = make_ctx(kube, index_of(old, young))
    refused = await SessionService(ctx).ensure_session(SessionView.parse(young))
    assert refused["state"] == SessionState.REFUSED and f"{NS}/old" in str(refused)
    assert kube.calls == []  # no pod, no list


async def test_a_chunks_session_comes_from_the_index_else_the_api() -> None:
    s = body("s", status=started("s"))
    again = body("s")                      # a namesake made again, not in the index yet
    again["metadata"]["uid"] = "uid-new"
    kube = Kube({(NS, "s"): again})
    chunks = SessionService(make_ctx(kube, index_of(s))).chunks
    obj, spec = await chunks._session(NS, "s", "uid-s")
    assert obj["metadata"]["uid"] == "uid-s" and spec.guild_id == GUILD
    assert kube.calls == []
    obj, _ = await chunks._session(NS, "s", "uid-new")
    assert obj["metadata"]["uid"] == "uid-new" and kube.calls == ["get_session s"]
    with pytest.raises(NotFoundError):
        await chunks._session(NS, "absent", None)
