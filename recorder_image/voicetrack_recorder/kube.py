"""The recorder's Kubernetes adapter: read its session, list and create RecordingChunks,
watch `spec.paused` and the consent lists (`spec.optOutUserIds`, `spec.optOutRoleIds`).
Sync client calls; the recorder runs them in threads.

Each session's recorder has its own ServiceAccount, which may get/watch that one
RecordingSession and create/get/list RecordingChunks in its namespace, nothing more (the
operator's `build_session_recorder_rbac`); the chart's ValidatingAdmissionPolicy admits only
chunks of its own session from it.

A session is its uid, not its name: the bot names every session of a guild `g-<guild>`,
and an earlier session's chunks outlive it until the garbage collector deletes them, so
`list_chunks` keeps only chunks owned by this session's uid, and a 409 against such a
leftover is retried (`check_existing`), not taken for another's object.

Every call is bounded (`ApiTimeouts`, the recorder's one home for them: `API_TIMEOUTS`):
a (connect, read) timeout on each request, on a client of its own that urllib3 does not
retry (`bounded_client`: its default retries a timed-out GET 3 times), so an API server
that accepts and never answers (a half-open flow behind a load balancer) holds an upload
one timeout at most, not past the stop deadline for good; the session watch asks the
server to end each stream after `watch_s` and reads with a longer timeout, so a dead
stream ends and is re-opened (pause, opt-outs and the deletion are seen again).

Client errors are translated where they are raised, by `voicetrack.kubeclient.
translate_api_error` (404 NotFoundError, 409 ConflictError, 401/403/408/429/5xx and an
unreachable or silent API server, a timeout included, TemporaryFailure, other 4xx
InvalidInputError), so the uploader's retry loop sees a brief API outage as the
TemporaryFailure it retries.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, cast

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from voicetrack.chunkspec import ChunkSpec
from voicetrack.errors import ConflictError, InvalidInputError, NotFoundError, TemporaryFailure
from voicetrack.kubeclient import NETWORK_ERRORS, translate_api_error
from voicetrack.names import chunk_name, controller_uid, owner_reference
from voicetrack.resources import (
    API_VERSION,
    CHUNK_KIND,
    CHUNK_PLURAL,
    GROUP,
    LABEL_CHUNK_INDEX,
    LABEL_COMPONENT,
    LABEL_SESSION,
    MANAGED_BY,
    SESSION_KIND,
    SESSION_PLURAL,
    VERSION,
)
from voicetrack_recorder.clock import server_offset_ms

log = logging.getLogger(__name__)

CLIENT_ERRORS: tuple[type[BaseException], ...] = (ApiException, *NETWORK_ERRORS)
"""What a Kubernetes client call raises on failure: an API answer or an unreachable
server; both go through `translate_api_error`."""


NAMESAKE_RETRY_S = 2.0
"""Suggested wait (s) before creating a chunk again whose name an earlier namesake's chunk
still holds (the garbage collector deletes those within seconds to minutes)."""


@dataclass(frozen=True)
class ApiTimeouts:
    """How long the recorder waits on the Kubernetes API server (s). One call ends within
    `connect_s + read_s` (a TemporaryFailure when it times out); the flush deadline is
    read between attempts, so an attempt under way at it overruns it by its calls' time
    (ending.FLUSH_GRACE_S). Raises ValueError when `watch_read_s` is not longer than
    `watch_s` (a quiet watch would then time out before the server ends it)."""

    connect_s: float = 3.0
    """TCP connect (one SYN retransmission)."""
    read_s: float = 15.0
    """Between bytes of one answer while recording (the API server's latency objective for
    one object is 1 s; a loaded one, queueing under API Priority and Fairness, can take
    several: a shorter bound failed every upload there and filled the spool)."""
    stop_read_s: float = 4.0
    """`read_s` once the flush deadline is armed (`stopping`): an attempt under way at the
    deadline must end inside the termination grace (ending.FLUSH_GRACE_S)."""
    list_read_s: float = 30.0
    """Between bytes of the one list call (`list_chunks`, at start): the API server
    gathers every chunk of a long session (thousands of objects) before it answers, so
    `read_s` would time it out for good under load and the recorder would never start."""
    watch_s: int = 30
    """The server ends each session watch after this long (`timeoutSeconds`)."""
    watch_read_s: float = 40.0
    """Between bytes of a watch stream: a quiet watch sends nothing until the server ends
    it, so only a stream dead for longer than `watch_s` hits this."""

    def __post_init__(self) -> None:
        if self.watch_read_s <= self.watch_s:
            raise ValueError(f"watch_read_s ({self.watch_read_s}) must exceed watch_s "
                             f"({self.watch_s})")

    def stopping(self) -> ApiTimeouts:
        """These timeouts with `read_s` cut to `stop_read_s` (for the flush at a stop)."""
        return replace(self, read_s=min(self.read_s, self.stop_read_s))

    @property
    def request(self) -> tuple[float, float]:
        """`_request_timeout` of one call: (connect, read) s."""
        return (self.connect_s, self.read_s)

    @property
    def list_request(self) -> tuple[float, float]:
        """`_request_timeout` of the list call: (connect, list read) s."""
        return (self.connect_s, self.list_read_s)

    @property
    def watch_request(self) -> tuple[float, float]:
        """`_request_timeout` of one watch stream: (connect, read) s."""
        return (self.connect_s, self.watch_read_s)


API_TIMEOUTS = ApiTimeouts()
"""The recorder's timeouts on the Kubernetes API (its Secret read too: `grant`)."""


def bounded_client(api: client.ApiClient) -> client.ApiClient:
    """A client on a copy of `api`'s configuration that urllib3 does not retry (its
    default retries a GET that timed out 3 times: four timeouts where one was meant); the
    caller retries TemporaryFailure itself."""
    config = copy.copy(api.configuration)
    config.retries = 0
    return client.ApiClient(config)


CLOCK_RTT_MAX_S = 2.0
"""A `get_session` answer slower than this (s) does not measure the clock offset: its
error is up to half the round trip (`clock.server_offset_ms`)."""


def controller_name(obj: dict[str, Any], kind: str = SESSION_KIND) -> str | None:
    """The name of `obj`'s controlling owner of `kind` (like `voicetrack.names.
    controller_uid`), None when it has none."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == kind and ref.get("controller"):
            return str(ref.get("name"))
    return None


class RecorderKube:
    """The session `name` in `namespace`, seen from its recorder."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str,
                 uid: str | None = None, timeouts: ApiTimeouts = API_TIMEOUTS) -> None:
        """`uid`: the session's `metadata.uid` when known; else the first `get_session`
        binds it (main.py reads the session before anything else). `timeouts` bound every
        call (tests shorten them); calls go through `bounded_client(api)`."""
        self.objects = client.CustomObjectsApi(bounded_client(api))
        self.timeouts = timeouts
        self.namespace = namespace
        self.name = name
        self.uid = uid
        """The uid of the session this recorder records. The bot names every session of a
        guild `g-<guild>`, so an earlier session of the same name (deleted, its chunks
        still waiting for the garbage collector) may share the name, never the uid."""
        self.paused: bool | None = None
        self.opt_out: tuple[frozenset[str], frozenset[str]] | None = None
        """(`spec.optOutUserIds`, `spec.optOutRoleIds`) as last seen; None before."""
        self.deleted = threading.Event()
        self.clock_offset_ms: int | None = None
        """This node's clock minus the API server's (ms), measured from the `Date` header
        of the last `get_session` answer (`clock.server_offset_ms`); None before one."""

    def get_session(self) -> dict[str, Any]:
        """The RecordingSession object (the first call binds `self.uid` when unset; each
        call measures `self.clock_offset_ms`).
        Raises NotFoundError, TemporaryFailure (API unreachable, 401/403/429/5xx),
        InvalidInputError (another 4xx)."""
        sent = time.time()
        try:
            data, _, headers = self.objects.get_namespaced_custom_object_with_http_info(
                GROUP, VERSION, self.namespace, SESSION_PLURAL, self.name,
                _request_timeout=self.timeouts.request)
        except CLIENT_ERRORS as err:
            raise translate_api_error(err, f"get RecordingSession {self.name}") from err
        obj = cast(dict[str, Any], data)
        self._observe_clock(sent, time.time(), headers)
        if self.uid is None:
            self.uid = str(obj["metadata"]["uid"])
        return obj

    def _observe_clock(self, sent_s: float, received_s: float, headers: Any) -> None:
        """Measure `clock_offset_ms` from one answer's `Date` header, unless the round trip
        took over CLOCK_RTT_MAX_S (the measure would be that loose) or it has none."""
        date = headers.get("Date") if hasattr(headers, "get") else None
        if not date or received_s - sent_s > CLOCK_RTT_MAX_S:
            return
        try:
            self.clock_offset_ms = server_offset_ms(sent_s, received_s, str(date))
        except (TypeError, ValueError) as err:
            log.warning("the API server's Date header %r does not parse: %s", date, err)

    def list_chunks(self) -> list[ChunkSpec]:
        """Every RecordingChunk of this session (controlling owner uid `self.uid`, read
        with `get_session` when unset), by index. The label selects by session name only,
        so an earlier namesake's chunks (another owner uid: deleted, awaiting the garbage
        collector) are left out, and a labelled object whose spec does not parse is
        skipped with a warning (before, the first made `prepare` raise at every start).
        Raises TemporaryFailure, NotFoundError (no RecordingChunk CRD, or no session),
        InvalidInputError (another 4xx)."""
        uid = self.uid if self.uid is not None else str(self.get_session()["metadata"]["uid"])
        try:
            res = cast(dict[str, Any], self.objects.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, CHUNK_PLURAL,
                label_selector=f"{LABEL_SESSION}={self.name}",
                _request_timeout=self.timeouts.list_request))
            items: list[dict[str, Any]] = res["items"]
        except CLIENT_ERRORS as err:
            raise translate_api_error(err, f"list RecordingChunks of {self.name}") from err
        chunks: list[ChunkSpec] = []
        others = 0
        for item in items:
            name = (item.get("metadata") or {}).get("name")
            if controller_uid(item) != uid:
                others += 1
                continue
            try:
                chunks.append(ChunkSpec.model_validate(item.get("spec") or {}))
            except ValueError as err:  # pydantic's ValidationError is one
                log.warning("RecordingChunk %s skipped: its spec does not parse: %s",
                            name, str(err).splitlines()[0])
        if others:
            log.warning("%d RecordingChunk(s) labelled for session %s belong to another "
                        "session of that name (owner uid not %s): left out", others,
                        self.name, uid)
        return sorted(chunks, key=lambda c: c.index)

    def create_chunk(self, spec: ChunkSpec, owner_uid: str) -> None:
        """Create the chunk's RecordingChunk, owned by the session (uid `owner_uid`); a 409
        (the deterministic name exists) counts as done only when the existing object is
        this one (`check_existing`: an earlier try got through).
        Raises TemporaryFailure (retry), InvalidInputError (the API refused the object,
        e.g. a CEL rule: the message is the API server's)."""
        name = chunk_name(self.name, spec.index)
        body = {
            "apiVersion": API_VERSION,
            "kind": CHUNK_KIND,
            "metadata": {
                "name": name,
                "labels": {LABEL_SESSION: self.name, LABEL_COMPONENT: "chunk",
                           LABEL_CHUNK_INDEX: str(spec.index), **MANAGED_BY},
                "ownerReferences": [owner_reference(self.name, owner_uid)],
            },
            "spec": spec.to_api(),
        }
        try:
            self.objects.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, CHUNK_PLURAL, body,
                _request_timeout=self.timeouts.request)
        except CLIENT_ERRORS as err:
            translated = translate_api_error(err, f"create RecordingChunk {name}")
            if isinstance(translated, ConflictError):
                self.check_existing(name, spec, owner_uid)
                return
            raise translated from err

    def check_existing(self, name: str, spec: ChunkSpec, owner_uid: str) -> None:
        """After a 409 on `name`: the existing RecordingChunk counts as this create only
        when it is ours (`judge_existing`). Raises TemporaryFailure when it cannot be read
        or is gone meanwhile, InvalidInputError when it is not this chunk."""
        existing = self._get_chunk(name)
        if existing is None:  # deleted meanwhile: try again
            raise TemporaryFailure(f"RecordingChunk {name} gone after its 409")
        self.judge_existing(existing, name, spec, owner_uid)

    def chunk_exists(self, spec: ChunkSpec, owner_uid: str) -> bool:
        """Whether the chunk's RecordingChunk exists already as this very chunk (an earlier
        try, or an earlier run, got through: its raw objects were written before it), read
        before the raw objects are written so that those of a chunk another writer holds
        are never overwritten. False when there is none. Raises what `judge_existing`
        raises for an object that is not this chunk (InvalidInputError, TemporaryFailure
        for an earlier namesake's), TemporaryFailure when it cannot be read."""
        name = chunk_name(self.name, spec.index)
        existing = self._get_chunk(name)
        if existing is None:
            return False
        self.judge_existing(existing, name, spec, owner_uid)
        return True

    def _get_chunk(self, name: str) -> dict[str, Any] | None:
        """The RecordingChunk `name`, None when there is none (404)."""
        try:
            return cast(dict[str, Any], self.objects.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, CHUNK_PLURAL, name,
                _request_timeout=self.timeouts.request))
        except CLIENT_ERRORS as err:
            translated = translate_api_error(err, f"get RecordingChunk {name}")
            if isinstance(translated, NotFoundError):
                return None
            raise translated from err

    def judge_existing(self, existing: dict[str, Any], name: str, spec: ChunkSpec,
                       owner_uid: str) -> None:
        """Return when `existing` (the object under our chunk name `name`) is this chunk:
        owned by our session (uid `owner_uid`) with the same spec. Another's object under
        our name (pre-created by a compromised recorder) raises InvalidInputError naming
        its owner: the chunk is not acknowledged, never "done"; so does our session's
        object with another spec (a second recorder of this session wrote it). An object
        whose controlling owner has our session's name but another uid is an earlier
        namesake's chunk awaiting the garbage collector: TemporaryFailure (delay
        NAMESAKE_RETRY_S), so the upload is retried until it is gone."""
        owner = controller_uid(existing)
        if owner != owner_uid and controller_name(existing) == self.name:
            # an earlier session of our name (the bot's `g-<guild>`), deleted: the garbage
            # collector deletes its chunks in the background, in any order; the spool
            # keeps this chunk's audio meanwhile
            raise TemporaryFailure(
                f"RecordingChunk {name} belongs to an earlier session named {self.name} "
                f"(owner uid {owner or 'missing'}, ours {owner_uid}): waiting for the "
                f"garbage collector to delete it", delay=NAMESAKE_RETRY_S)
        if owner != owner_uid:
            raise InvalidInputError(
                f"RecordingChunk {name} exists but is not this session's: its owner uid is "
                f"{owner or 'missing'}, not {owner_uid} (pre-created by someone else); "
                f"chunk {spec.index} not acknowledged")
        try:
            same = ChunkSpec.model_validate(existing.get("spec") or {}) == spec
        except ValueError:
            same = False
        if not same:
            raise InvalidInputError(
                f"RecordingChunk {name} exists with another spec than this chunk's (window "
                f"[{spec.start_ms}, {spec.end_ms}) ms); chunk {spec.index} not acknowledged")

    def watch_paused(self, stop: threading.Event) -> None:
        """Keep `self.paused` equal to the session's `spec.paused`, and `self.opt_out` to
        its opt-out lists, until `stop` (a thread body; each attribute is replaced whole,
        so the event loop reads a consistent value). Sets `self.deleted` when the session
        is being deleted, or is gone (404, or another uid now holds its name). A stream
        silent past `timeouts.watch_read_s` (the server ends a live one after `watch_s`)
        raises urllib3's ReadTimeoutError and is re-opened like any broken watch."""
        while not stop.is_set():
            try:
                obj = self.get_session()
                self._observe(obj)
                w = watch.Watch()
                for event in w.stream(
                        self.objects.list_namespaced_custom_object, GROUP, VERSION,
                        self.namespace, SESSION_PLURAL,
                        field_selector=f"metadata.name={self.name}",
                        timeout_seconds=self.timeouts.watch_s,
                        _request_timeout=self.timeouts.watch_request,
                        resource_version=obj["metadata"]["resourceVersion"]):
                    if stop.is_set():
                        w.stop()
                        break
                    if event["type"] == "DELETED":
                        self.deleted.set()
                    else:
                        self._observe(event["object"])
            except NotFoundError:
                self.deleted.set()
                stop.wait(2)
            except Exception as err:  # a broken watch is re-opened
                log.warning("session watch: %s", err)
                stop.wait(1)

    def _observe(self, obj: dict[str, Any]) -> None:
        uid = obj["metadata"].get("uid")
        if self.uid is not None and uid is not None and uid != self.uid:
            # a new session of our name: ours was deleted (a DELETED event missed while
            # the watch was re-opened); its spec is not ours to follow
            log.warning("session %s: uid %s is not ours (%s): ours was deleted", self.name,
                        uid, self.uid)
            self.deleted.set()
            return
        spec = obj.get("spec") or {}
        paused = bool(spec.get("paused", False))
        if paused != self.paused:
            log.info("session %s: paused=%s", self.name, paused)
        self.paused = paused
        opt_out = (frozenset(spec.get("optOutUserIds") or ()),
                   frozenset(spec.get("optOutRoleIds") or ()))
        if opt_out != self.opt_out:
            log.info("session %s: %d user(s), %d role(s) opted out", self.name,
                     len(opt_out[0]), len(opt_out[1]))
        self.opt_out = opt_out
        if obj["metadata"].get("deletionTimestamp"):
            self.deleted.set()
