"""Reading one key of a Secret (the completion webhook's signing key), at the moment it is
needed: the value is returned to the caller and never kept or logged.

Errors are the project's (`voicetrack.kubeclient.translate_api_error`): NotFoundError when
the Secret or the key is missing, TemporaryFailure for an outage or a 403 (RBAC is fixed by
an admin, after which a retry works).
"""

from __future__ import annotations

import asyncio
import base64
import binascii

from kubernetes.client.exceptions import ApiException

from voicetrack.errors import InvalidInputError, NotFoundError
from voicetrack.kubeclient import NETWORK_ERRORS, translate_api_error
from voicetrack_operator.adapters.kube import KubeAdapter


async def read_secret_key(kube: KubeAdapter, namespace: str, name: str, key: str) -> bytes:
    """The bytes of `data[key]` of Secret `namespace/name` (base64-decoded, as stored).
    Raises NotFoundError naming the Secret or the key when missing, InvalidInputError when
    the value is not base64, TemporaryFailure when the API cannot be reached."""
    what = f"read secret {namespace}/{name}"
    try:
        secret = await asyncio.to_thread(kube.core.read_namespaced_secret, name, namespace)
    except ApiException as err:
        raise translate_api_error(err, what) from err
    except NETWORK_ERRORS as err:
        raise translate_api_error(err, what) from err
    data = secret.data or {}
    if key not in data:
        raise NotFoundError(f"Secret {namespace}/{name} has no key {key!r}")
    try:
        return base64.b64decode(data[key], validate=True)
    except (binascii.Error, ValueError) as err:
        raise InvalidInputError(f"Secret {namespace}/{name} key {key!r} is not base64: {err}"
                                ) from err
