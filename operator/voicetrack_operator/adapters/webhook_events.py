"""A Warning Event on a RecordingSession about its completion webhook (a URL the egress
policy refuses), so `kubectl describe recordingsession` shows it next to kopf's own events.

Errors are the project's (`voicetrack.kubeclient.translate_api_error`): TemporaryFailure for
an outage or a 403, InvalidInputError for an Event the API server refuses.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import datetime
from typing import Any, cast

from kubernetes.client.exceptions import ApiException

from voicetrack.kubeclient import NETWORK_ERRORS, translate_api_error
from voicetrack.resources import GROUP, SESSION_KIND, VERSION
from voicetrack_operator.adapters.kube import KubeAdapter
from voicetrack_operator.builders import SessionRef

COMPONENT = "voicetrack-operator"
MAX_MESSAGE = 1024
"""The longest Event message posted (characters); the API server refuses much longer."""


def session_event(session: SessionRef, reason: str, message: str,
                  now: datetime) -> dict[str, Any]:
    """The core/v1 Event (a Warning, count 1, at `now` UTC) about RecordingSession
    `session`; the message is cut to MAX_MESSAGE characters."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{session.name}.", "namespace": session.namespace},
        "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": SESSION_KIND,
                           "name": session.name, "namespace": session.namespace,
                           "uid": session.uid},
        "reason": reason, "message": message[:MAX_MESSAGE], "type": "Warning",
        "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
    }


async def warn_session(kube: KubeAdapter, session: SessionRef, reason: str,
                       message: str, now: datetime) -> None:
    """Post `session_event(...)`. Raises TemporaryFailure or InvalidInputError (above)."""
    event = session_event(session, reason, message, now)
    what = f"create event on {SESSION_KIND} {session.namespace}/{session.name}"
    try:
        await asyncio.get_running_loop().run_in_executor(kube.executor, functools.partial(
            kube.core.create_namespaced_event, session.namespace, cast(Any, event)))
    except ApiException as err:
        raise translate_api_error(err, what) from err
    except NETWORK_ERRORS as err:
        raise translate_api_error(err, what) from err
