"""The completion webhook's worker (services/webhooks.py): started with the operator, after
the context (handlers/lifecycle.py) is in memo, and stopped at clean-up. Deliveries live in
SQL, so stopping loses nothing: the next operator delivers what is due. It runs only while
this replica is the active one (`voicetrack_operator.leadership`)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import kopf

from voicetrack_operator.errors import kopf_errors
from voicetrack_operator.handlers.lifecycle import leadership
from voicetrack_operator.services.webhook_settings import WebhookSettings
from voicetrack_operator.services.webhooks import WebhookService


@kopf.on.startup(id="webhook-worker")
async def on_webhook_worker_startup(memo: kopf.Memo, **_: Any) -> None:
    ctx = getattr(memo, "ctx", None)
    if ctx is None:  # the context start-up handler has not run yet
        raise kopf.TemporaryError("waiting for the operator context", delay=1)
    with kopf_errors():  # a bad VOICETRACK_WEBHOOK_* variable stops the start-up
        service = WebhookService(ctx, WebhookSettings.from_env())
    memo.webhooks = service
    memo.webhook_task = asyncio.create_task(
        leadership(memo).while_active("webhook worker", service.run))


@kopf.on.cleanup(id="webhook-worker")
async def on_webhook_worker_cleanup(memo: kopf.Memo, **_: Any) -> None:
    task = getattr(memo, "webhook_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    service: WebhookService | None = getattr(memo, "webhooks", None)
    if service is not None:
        await service.close()

