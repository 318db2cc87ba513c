"""One way every Voicetrack process gets its Kubernetes API client (the official client),
and one translation of its errors into Voicetrack's error family."""

from __future__ import annotations

import json

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from voicetrack.errors import (
    ApiAccessDenied,
    ConflictError,
    InvalidInputError,
    NamespaceTerminating,
    NotFoundError,
    TemporaryFailure,
    VoicetrackError,
)


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An API client from `kubeconfig`, else the in-cluster ServiceAccount, else
    KUBECONFIG / ~/.kube/config (what the local node agent gives its pods).

    Raises InvalidInputError when none of them is usable."""
    try:
        if kubeconfig:
            return config.new_client_from_config(config_file=kubeconfig)
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            return config.new_client_from_config()
    except (config.ConfigException, OSError) as err:
        raise InvalidInputError(f"no usable Kubernetes configuration (not in a cluster, "
                                f"and KUBECONFIG / ~/.kube/config: {err})") from err


NETWORK_ERRORS: tuple[type[BaseException], ...] = (OSError, urllib3.exceptions.HTTPError)
"""What the client raises when the API server cannot be reached or does not answer:
connection refused and socket timeouts (OSError) and urllib3's MaxRetryError,
ProtocolError, ConnectTimeoutError and ReadTimeoutError (a `_request_timeout` that ran
out; HTTPErrors, not OSErrors). Always temporary: the API server comes back."""


def api_message(err: ApiException) -> str:
    """The API server's own message from an ApiException's `Status` body (e.g. a CRD
    validation rule's text), else `<status> <reason>`."""
    try:
        body = json.loads(err.body or "")
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except (ValueError, TypeError):
        pass
    return f"{err.status} {err.reason}"


NAMESPACE_TERMINATING_CAUSE = "NamespaceTerminating"
"""The cause of a create refused in a namespace being deleted: k8s.io/api core/v1
`NamespaceTerminatingCause`, a `StatusCause.Type`, which the `Status` body's JSON carries
as `details.causes[].reason`."""


def _terminating_cause(err: ApiException) -> bool:
    """Whether a 403's `Status` body names the NamespaceTerminating cause."""
    try:
        body = json.loads(err.body or "")
        causes = (body.get("details") or {}).get("causes") or []
        return any(isinstance(c, dict) and c.get("reason") == NAMESPACE_TERMINATING_CAUSE
                   for c in causes)
    except (ValueError, TypeError, AttributeError):
        return False


def translate_api_error(err: BaseException, what: str) -> VoicetrackError:
    """The one mapping of Kubernetes client errors onto Voicetrack's error family, for every
    component (operator, recorder, bot). `what` names the call (`create pod ns/name`).

    - 404 → NotFoundError (callers that treat absence as success check for it first);
    - 409 → ConflictError (exists already, or a stale resourceVersion);
    - 408, 429, 5xx, no status, and network errors (`NETWORK_ERRORS`) → TemporaryFailure;
    - 403 with the NamespaceTerminating cause → NamespaceTerminating (a TemporaryFailure:
      a create in a namespace being deleted);
    - 401 and other 403 → ApiAccessDenied (a TemporaryFailure too): credentials and RBAC are
      fixed by an admin or propagate late (a fresh RoleBinding, a rotated token), and
      retrying loses nothing;
    - other 4xx (400, 422: a manifest or patch the API refuses) → InvalidInputError with
      the API server's message.
    Any other exception is a bug and is not passed here."""
    if isinstance(err, ApiException):
        status = int(err.status or 0)
        message = f"{what}: {api_message(err)}"
        if status == 403 and _terminating_cause(err):
            return NamespaceTerminating(message, delay=5)
        if status == 404:
            return NotFoundError(message)
        if status == 409:
            return ConflictError(message)
        if status in (401, 403):
            return ApiAccessDenied(message, delay=5)
        if status in (0, 408, 429) or status >= 500:
            return TemporaryFailure(message, delay=5)
        return InvalidInputError(message)
    if isinstance(err, NETWORK_ERRORS):
        return TemporaryFailure(f"{what}: API server unreachable: {err}", delay=5)
    raise TypeError(f"translate_api_error got {type(err).__name__}: {err}")
