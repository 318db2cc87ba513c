"""The node agent's access to the API (plain JSON dicts over the ``kubernetes`` client's
connection pool) and Kubernetes time stamps."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config


def now_iso() -> str:
    """Current UTC time as RFC 3339 with seconds (Kubernetes ``Time``)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """Current UTC time as Kubernetes ``MicroTime`` (microseconds)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(s: str | None) -> float | None:
    """Kubernetes ``Time`` string → Unix seconds, or None."""
    if not s:
        return None
    return dt.datetime.strptime(s[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC).timestamp()


class Kube:
    """Minimal JSON-over-HTTP access to the API through the ``kubernetes`` client's
    ``ApiClient`` (its auth, TLS and connection pool), with plain dicts in and out."""

    def __init__(self, kubeconfig: Path, pool: int = 64) -> None:
        cfg = k8s_client.Configuration()
        k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        cfg.connection_pool_maxsize = pool
        self.api = k8s_client.ApiClient(cfg)
        self.core = k8s_client.CoreV1Api(self.api)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> tuple[int, Any]:
        """Send one request; returns (HTTP status, parsed JSON body or None).  Connection
        errors propagate as urllib3 exceptions."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        m, url, hdrs, b, post = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()) or None,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(m, url, hdrs, b, post, _request_timeout=timeout)
        data = resp.read()
        try:
            return int(resp.status), json.loads(data) if data else None
        except ValueError:
            return int(resp.status), {"message": data.decode(errors="replace")}

    def get(self, path: str, **q: Any) -> Any:
        """GET ``path``; returns the object, or None on 404.

        Raises:
            RuntimeError: any other non-2xx answer."""
        code, body = self.request("GET", path, query=q or None)
        if code == 404:
            return None
        if code >= 300:
            raise RuntimeError(f"GET {path}: HTTP {code}: {(body or {}).get('message')}")
        return body

    def patch_pod_status(
        self, ns: str, name: str, uid: str, status: dict[str, Any]
    ) -> tuple[int, Any]:
        """Merge-patch pod ``ns/name``'s ``status`` (only if its uid is still ``uid``);
        returns (HTTP status, body).  Connection errors propagate."""
        return self.request(
            "PATCH",
            f"/api/v1/namespaces/{ns}/pods/{name}/status",
            body={"metadata": {"uid": uid}, "status": status},
            content_type="application/merge-patch+json",
        )

    def delete_pod_now(self, ns: str, name: str, uid: str) -> tuple[int, Any]:
        """The kubelet's final delete of a terminated pod: ``gracePeriodSeconds=0`` with a
        uid precondition; returns (HTTP status, body).  Connection errors propagate."""
        return self.request(
            "DELETE",
            f"/api/v1/namespaces/{ns}/pods/{name}",
            body={
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": uid},
            },
        )
