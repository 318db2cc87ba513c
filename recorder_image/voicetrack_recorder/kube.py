"""The recorder's Kubernetes adapter: read its session, list and create RecordingChunks,
watch `spec.paused`. Sync client calls; the recorder runs them in threads.

The recorder's ServiceAccount may get/watch its RecordingSession and create/list
RecordingChunks in its namespace, nothing more (the operator's RBAC for it).

Client errors are translated where they are raised, by `voicetrack.kubeclient.
translate_api_error` (404 NotFoundError, 409 ConflictError, 401/403/408/429/5xx and an
unreachable API server TemporaryFailure, other 4xx InvalidInputError), so the uploader's
retry loop sees a brief API outage as the TemporaryFailure it retries.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, cast

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from voicetrack.errors import ConflictError, NotFoundError
from voicetrack.kubeclient import NETWORK_ERRORS, translate_api_error
from voicetrack.resources import (
    API_VERSION,
    CHUNK_KIND,
    CHUNK_PLURAL,
    GROUP,
    LABEL_CHUNK_INDEX,
    LABEL_COMPONENT,
    LABEL_SESSION,
    MANAGED_BY,
    SESSION_PLURAL,
    VERSION,
    ChunkSpec,
    chunk_name,
    owner_reference,
)

log = logging.getLogger(__name__)

CLIENT_ERRORS: tuple[type[BaseException], ...] = (ApiException, *NETWORK_ERRORS)
"""What a Kubernetes client call raises on failure: an API answer or an unreachable
server; both go through `translate_api_error`."""


class RecorderKube:
    """The session `name` in `namespace`, seen from its recorder."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.objects = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.name = name
        self.paused: bool | None = None
        self.deleted = threading.Event()

    def get_session(self) -> dict[str, Any]:
        """The RecordingSession object. Raises NotFoundError, TemporaryFailure (API
        unreachable, 401/403/429/5xx), InvalidInputError (another 4xx)."""
        try:
            obj = self.objects.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, SESSION_PLURAL, self.name)
            return cast(dict[str, Any], obj)
        except CLIENT_ERRORS as err:
            raise translate_api_error(err, f"get RecordingSession {self.name}") from err

    def list_chunks(self) -> list[ChunkSpec]:
        """Every RecordingChunk of this session, by index. Raises TemporaryFailure,
        NotFoundError (no RecordingChunk CRD), InvalidInputError (another 4xx)."""
        try:
            res = cast(dict[str, Any], self.objects.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, CHUNK_PLURAL,
                label_selector=f"{LABEL_SESSION}={self.name}"))
            items = res["items"]
        except CLIENT_ERRORS as err:
            raise translate_api_error(err, f"list RecordingChunks of {self.name}") from err
        return sorted((ChunkSpec.model_validate(i["spec"]) for i in items),
                      key=lambda c: c.index)

    def create_chunk(self, spec: ChunkSpec, owner_uid: str) -> None:
        """Create the chunk's RecordingChunk, owned by the session (uid `owner_uid`); a 409
        (the deterministic name exists: an earlier try got through) counts as done.
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
                GROUP, VERSION, self.namespace, CHUNK_PLURAL, body)
        except CLIENT_ERRORS as err:
            translated = translate_api_error(err, f"create RecordingChunk {name}")
            if isinstance(translated, ConflictError):
                return
            raise translated from err

    def watch_paused(self, stop: threading.Event) -> None:
        """Keep `self.paused` equal to the session's `spec.paused` until `stop` (a thread
        body). Sets `self.deleted` when the session is being deleted."""
        while not stop.is_set():
            try:
                obj = self.get_session()
                self._observe(obj)
                w = watch.Watch()
                for event in w.stream(
                        self.objects.list_namespaced_custom_object, GROUP, VERSION,
                        self.namespace, SESSION_PLURAL,
                        field_selector=f"metadata.name={self.name}", timeout_seconds=30,
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
        paused = bool(obj.get("spec", {}).get("paused", False))
        if paused != self.paused:
            log.info("session %s: paused=%s", self.name, paused)
        self.paused = paused
        if obj["metadata"].get("deletionTimestamp"):
            self.deleted.set()
