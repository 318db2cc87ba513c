"""The operator's Kubernetes adapter: the calls its services make, idempotent.

Wraps the official client (sync) off the event loop. A 409 on create counts as success (the
names are deterministic); a 404 on get or delete counts as absent or done. Every other API
and network error goes through `voicetrack.kubeclient.translate_api_error`, the one mapping
(404 NotFoundError, 409 ConflictError, 401/403/408/429/5xx/network TemporaryFailure, other
4xx InvalidInputError with the API server's message).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

from kubernetes import client
from kubernetes.client import rest
from kubernetes.client.exceptions import ApiException

from voicetrack.errors import TemporaryFailure
from voicetrack.kubeclient import NETWORK_ERRORS, translate_api_error
from voicetrack.names import controller_uid
from voicetrack.resources import (
    CHUNK_PLURAL,
    GROUP,
    LABEL_COMPONENT,
    LABEL_SESSION,
    SESSION_PLURAL,
    VERSION,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

API_THREADS = 32
"""Threads (and pooled HTTPS connections) for the client's blocking calls. They ran on the
event loop's default executor before (min(32, cores + 4): 6 on a 2-core node) with the
client's pool of cores x 5 connections, which capped the operator at a few dozen API calls
per second however idle its CPU was (issue 16: chunk latency 110 s at 50 sessions)."""


class KubeAdapter:
    """Async facade over the Kubernetes API for the operator's services."""

    def __init__(self, api: client.ApiClient, threads: int = API_THREADS) -> None:
        if (api.configuration.connection_pool_maxsize or 0) < threads:
            api.configuration.connection_pool_maxsize = threads
            api.rest_client = rest.RESTClientObject(api.configuration)
        self.api = api
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="kube-api")
        """Runs the client's blocking calls (`_request`), apart from other blocking work."""
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.objects = client.CustomObjectsApi(api)
        self.writes = 0
        """API writes made (creates, patches, deletes), for the figures."""

    async def _request(self, what: str, fn: Callable[..., Any], *args: Any,
                       absent: tuple[int, ...] = (), **kw: Any) -> tuple[bool, Any]:
        """Run one client call off the event loop: (True, result), or (False, None) when
        the API answers with a status in `absent` (409 on create, 404 on get/delete…).
        Other API errors and network errors are translated (see the module docstring)."""
        try:
            return True, await asyncio.get_running_loop().run_in_executor(
                self.executor, functools.partial(fn, *args, **kw))
        except ApiException as err:
            if err.status in absent:
                return False, None
            raise translate_api_error(err, what) from err
        except NETWORK_ERRORS as err:
            raise translate_api_error(err, what) from err

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        _, result = await self._request(what, fn, *args, **kw)
        return cast(T, result)

    def _dict(self, obj: Any) -> dict[str, Any]:
        return cast(dict[str, Any], self.api.sanitize_for_serialization(obj))

    async def _create(self, what: str, fn: Callable[..., Any], *args: Any) -> bool:
        """True when created, False when it already existed (409)."""
        self.writes += 1
        created, _ = await self._request(f"create {what}", fn, *args, absent=(409,))
        return created

    async def _delete(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> bool:
        """True when deleted (or deleting), False when it was already gone (404)."""
        self.writes += 1
        deleted, _ = await self._request(f"delete {what}", fn, *args, absent=(404,), **kw)
        return deleted

    async def _get(self, what: str, fn: Callable[..., Any], *args: Any) -> dict[str, Any] | None:
        found, result = await self._request(f"get {what}", fn, *args, absent=(404,))
        return self._dict(result) if found else None

    # ------------------------------------------------------------ generic children

    async def ensure(self, manifest: dict[str, Any]) -> bool:
        """Create `manifest` (Pod, Job, ServiceAccount, Role, RoleBinding, Secret). True when
        created, False when it existed (409) with the same controlling owner.

        A Pod or Job of that name owned by another session (an earlier session of the same
        name, not yet collected by the garbage collector) raises TemporaryFailure: it will
        be gone soon, and counting it would hand this session another one's work."""
        kind, ns, name = (manifest["kind"], manifest["metadata"]["namespace"],
                          manifest["metadata"]["name"])
        what = f"{kind} {ns}/{name}"
        creators: dict[str, Callable[..., Any]] = {
            "Pod": self.core.create_namespaced_pod,
            "Job": self.batch.create_namespaced_job,
            "ServiceAccount": self.core.create_namespaced_service_account,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
            "Secret": self.core.create_namespaced_secret,
        }
        if await self._create(what, creators[kind], ns, manifest):
            return True
        owner = controller_uid(manifest)
        if owner is not None and kind in ("Pod", "Job"):
            existing = await (self.get_pod(ns, name) if kind == "Pod"
                              else self.get_job(ns, name))
            if existing is not None and controller_uid(existing) != owner:
                raise TemporaryFailure(f"{what} exists, owned by another session: waiting "
                                       "for the garbage collector to remove it", delay=2)
        return False

    async def get_secret(self, ns: str, name: str) -> dict[str, Any] | None:
        """The Secret as a dict (`data` base64 as stored), None when absent."""
        return await self._get(f"Secret {ns}/{name}", self.core.read_namespaced_secret,
                               name, ns)

    async def replace_secret(self, manifest: dict[str, Any]) -> None:
        """Replace the Secret `manifest` names with `manifest` (an unconditional update: its
        one writer is the operator). Raises NotFoundError when it is gone, TemporaryFailure
        and InvalidInputError as the other calls."""
        ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        self.writes += 1
        await self._call(f"replace Secret {ns}/{name}", self.core.replace_namespaced_secret,
                         name, ns, manifest)

    async def namespace_terminating(self, ns: str) -> bool:
        """True when namespace `ns` is being deleted (its `deletionTimestamp` is set, phase
        Terminating) or is gone: the API server refuses every create in it (403, "unable to
        create new content in namespace … because it is being terminated")."""
        found = await self._get(f"namespace {ns}", self.core.read_namespace, ns)
        if found is None:
            return True
        return bool(found["metadata"].get("deletionTimestamp")) \
            or (found.get("status") or {}).get("phase") == "Terminating"

    async def get_node(self, name: str) -> dict[str, Any] | None:
        """The Node `name` as a dict, None when it does not exist."""
        return await self._get(f"node {name}", self.core.read_node, name)

    async def get_pod(self, ns: str, name: str) -> dict[str, Any] | None:
        return await self._get(f"pod {ns}/{name}", self.core.read_namespaced_pod, name, ns)

    async def delete_pod(self, ns: str, name: str, grace_s: int | None = None) -> bool:
        body = client.V1DeleteOptions(grace_period_seconds=grace_s)
        return await self._delete(f"pod {ns}/{name}", self.core.delete_namespaced_pod, name,
                                  ns, body=body)

    async def pod_log_tail(self, ns: str, name: str, lines: int = 20) -> str:
        """The last `lines` lines of a pod's log, or '' if it cannot be read."""
        try:
            text = await asyncio.get_running_loop().run_in_executor(
                self.executor, functools.partial(self.core.read_namespaced_pod_log, name, ns,
                                                 tail_lines=lines))
            # the client parses a body sent without a content type as JSON when it can
            # (None for `null`, a number…): a log is text whatever it holds
            return "" if text is None else str(text)
        except ApiException as err:
            log.info("log of %s/%s unavailable: %s", ns, name, err)
            return ""
        except NETWORK_ERRORS as err:
            log.info("log of %s/%s unavailable: %s", ns, name, err)
            return ""

    async def list_pods(self, ns: str, selector: str) -> list[dict[str, Any]]:
        res = await self._call(f"list pods {ns}", self.core.list_namespaced_pod, ns,
                               label_selector=selector)
        return list(self._dict(res)["items"])

    async def get_job(self, ns: str, name: str) -> dict[str, Any] | None:
        return await self._get(f"job {ns}/{name}", self.batch.read_namespaced_job, name, ns)

    async def delete_job(self, ns: str, name: str, uid: str | None = None) -> bool:
        """Delete Job `name` (its pods in the background). With `uid`, only that Job, not a
        namesake made since: False when it is gone (404) or another one has the name
        (409, the precondition failed)."""
        self.writes += 1
        body = client.V1DeleteOptions(
            propagation_policy="Background",
            preconditions=client.V1Preconditions(uid=uid) if uid else None)
        deleted, _ = await self._request(f"delete job {ns}/{name}",
                                         self.batch.delete_namespaced_job, name, ns,
                                         body=body, absent=(404, 409) if uid else (404,))
        return deleted

    async def list_jobs(self, ns: str, session: str, uid: str | None = None
                        ) -> list[dict[str, Any]]:
        """The Jobs labelled for session `session`; with `uid`, only those this session
        (that uid) controls, not an earlier namesake's the garbage collector has yet to
        remove."""
        res = await self._call(f"list jobs {ns}", self.batch.list_namespaced_job, ns,
                               label_selector=f"{LABEL_SESSION}={session}")
        return [j for j in self._dict(res)["items"]
                if uid is None or controller_uid(j) == uid]

    # ------------------------------------------------------------ custom resources

    async def get_session(self, ns: str, name: str) -> dict[str, Any] | None:
        return await self._get(f"session {ns}/{name}",
                               self.objects.get_namespaced_custom_object,
                               GROUP, VERSION, ns, SESSION_PLURAL, name)

    async def delete_session(self, ns: str, name: str, uid: str) -> bool:
        """Delete the RecordingSession `ns/name` only if it is still the one with `uid`
        (`preconditions.uid`): a namesake made meanwhile is never deleted. True when the API
        server accepted the deletion (its finalizer then runs the deletion path); False when
        the session is gone (404) or the name now belongs to another (409)."""
        self.writes += 1
        body = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
        deleted, _ = await self._request(
            f"delete session {ns}/{name}", self.objects.delete_namespaced_custom_object,
            GROUP, VERSION, ns, SESSION_PLURAL, name, absent=(404, 409), body=body)
        return bool(deleted)

    async def list_sessions(self) -> list[dict[str, Any]]:
        """Every RecordingSession in the cluster."""
        res = cast(dict[str, Any], await self._call(
            "list sessions", self.objects.list_cluster_custom_object,
            GROUP, VERSION, SESSION_PLURAL))
        return list(res["items"])

    async def list_chunks(self, ns: str, session: str, uid: str | None = None
                          ) -> list[dict[str, Any]]:
        """The session's RecordingChunks, by spec.index; with `uid`, only those owned by
        that session (see `list_jobs`)."""
        res = cast(dict[str, Any], await self._call(
            f"list chunks {ns}/{session}", self.objects.list_namespaced_custom_object,
            GROUP, VERSION, ns, CHUNK_PLURAL, label_selector=f"{LABEL_SESSION}={session}"))
        return sorted((o for o in res["items"] if uid is None or controller_uid(o) == uid),
                      key=lambda o: int(o["spec"]["index"]))

    async def get_chunk(self, ns: str, name: str) -> dict[str, Any] | None:
        return await self._get(f"chunk {ns}/{name}", self.objects.get_namespaced_custom_object,
                               GROUP, VERSION, ns, CHUNK_PLURAL, name)

    async def patch_chunk_status(self, ns: str, name: str, status: dict[str, Any],
                                 resource_version: str | None = None) -> bool:
        """Merge `status` into the chunk's status. With `resource_version`, only if the
        chunk has not changed since it was read (optimistic concurrency): False on a
        conflict, and for a chunk that is gone."""
        self.writes += 1
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        patched, _ = await self._request(
            f"patch chunk {ns}/{name}", self.objects.patch_namespaced_custom_object_status,
            GROUP, VERSION, ns, CHUNK_PLURAL, name, body, absent=(404, 409))
        return bool(patched)

    async def annotate_chunk(self, ns: str, name: str, annotations: dict[str, str]) -> bool:
        """Merge `annotations` into the chunk's metadata. False for a chunk that is gone."""
        self.writes += 1
        patched, _ = await self._request(
            f"annotate chunk {ns}/{name}", self.objects.patch_namespaced_custom_object,
            GROUP, VERSION, ns, CHUNK_PLURAL, name, {"metadata": {"annotations": annotations}},
            absent=(404,))
        return bool(patched)

    async def delete_chunk(self, ns: str, name: str) -> bool:
        return await self._delete(f"chunk {ns}/{name}",
                                  self.objects.delete_namespaced_custom_object,
                                  GROUP, VERSION, ns, CHUNK_PLURAL, name)

    async def job_pods(self, ns: str, job: str) -> list[dict[str, Any]]:
        return await self.list_pods(ns, f"job-name={job}")

    @staticmethod
    def component_selector(session: str, component: str) -> str:
        return f"{LABEL_SESSION}={session},{LABEL_COMPONENT}={component}"
