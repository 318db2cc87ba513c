"""The recorder's Kubernetes adapter: read its session, list and create RecordingChunks,
watch `spec.paused`. Sync client calls; the recorder runs them in threads.

The recorder's ServiceAccount may get/watch its RecordingSession and create/list
RecordingChunks in its namespace, nothing more (the operator's RBAC for it).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, cast

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from voicetrack.errors import NotFoundError, TemporaryFailure
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
    ChunkSpec,
    chunk_name,
)

log = logging.getLogger(__name__)


class RecorderKube:
    """The session `name` in `namespace`, seen from its recorder."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.objects = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.name = name
        self.paused: bool | None = None
        self.deleted = threading.Event()

    def get_session(self) -> dict[str, Any]:
        """The RecordingSession object. Raises NotFoundError or TemporaryFailure."""
        try:
            obj = self.objects.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, SESSION_PLURAL, self.name)
            return cast(dict[str, Any], obj)
        except ApiException as err:
            if err.status == 404:
                raise NotFoundError(f"RecordingSession {self.name} not found") from err
            raise TemporaryFailure(f"get session: {err.status} {err.reason}") from err

    def list_chunks(self) -> list[ChunkSpec]:
        """Every RecordingChunk of this session, by index."""
        try:
            res = cast(dict[str, Any], self.objects.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, CHUNK_PLURAL,
                label_selector=f"{LABEL_SESSION}={self.name}"))
            items = res["items"]
        except ApiException as err:
            raise TemporaryFailure(f"list chunks: {err.status} {err.reason}") from err
        return sorted((ChunkSpec.model_validate(i["spec"]) for i in items),
                      key=lambda c: c.index)

    def create_chunk(self, spec: ChunkSpec, owner_uid: str) -> None:
        """Create the chunk's RecordingChunk, owned by the session; 409 counts as done."""
        body = {
            "apiVersion": API_VERSION,
            "kind": CHUNK_KIND,
            "metadata": {
                "name": chunk_name(self.name, spec.index),
                "labels": {LABEL_SESSION: self.name, LABEL_COMPONENT: "chunk",
                           LABEL_CHUNK_INDEX: str(spec.index), **MANAGED_BY},
                "ownerReferences": [{
                    "apiVersion": API_VERSION, "kind": SESSION_KIND, "name": self.name,
                    "uid": owner_uid, "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": spec.to_api(),
        }
        try:
            self.objects.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, CHUNK_PLURAL, body)
        except ApiException as err:
            if err.status == 409:
                return
            if err.status in (400, 422):
                raise ValueError(f"chunk {spec.index} refused: {err.body}") from err
            raise TemporaryFailure(f"create chunk {spec.index}: {err.status} {err.reason}"
                                   ) from err

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
