"""Tell the customer's back end that the mail server is ready (an HTTP webhook).

Sent with an Idempotency-Key (the workflow id), so a retried POST is recognised
by the receiver and the customer hears "ready" once.
"""

from __future__ import annotations

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from workflows.contracts import Notification

# Statuses another attempt may fix; every other 4xx means the request itself is wrong.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


class NotifyActivities:
    def __init__(self, timeout: float = 15.0) -> None:
        self._timeout = timeout

    @activity.defn(name="notify_customer")
    async def notify_customer(self, notification: Notification) -> None:
        headers = {
            "Idempotency-Key": notification.idempotency_key,
            "User-Agent": "mail-provisioning",
        }
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as http:
                response = await http.post(
                    notification.url, json=notification.payload, headers=headers
                )
        except httpx.HTTPError as err:
            raise ApplicationError(
                f"notify {notification.url}: {type(err).__name__}", type="NotifyUnreachable"
            ) from None
        if response.is_success:
            return
        retryable = response.status_code >= 500 or response.status_code in RETRYABLE_STATUSES
        raise ApplicationError(
            f"notify {notification.url}: HTTP {response.status_code}",
            type="NotifyRejected",
            non_retryable=not retryable,
        )
