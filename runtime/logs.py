"""Structured JSON logs for the worker and starter, with secret redaction.

Temporal's own loggers (activity.logger, workflow.logger) are stdlib loggers that
attach the workflow id, run id and activity type as `extra`; they are routed
through the same structlog processors so every line is one JSON object with those
fields flattened, and nothing secret-shaped gets through the redaction step.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping, Sequence
from typing import Any

import structlog
from temporalio import activity

SECRET_KEYS = frozenset(
    {"password", "secret", "secret_key", "token", "api_token", "plaintext", "data_key"}
)
REDACTED = "[redacted]"
# Base64 of 32 random bytes (our passwords and data keys) and long hex runs.
SECRET_SHAPES = re.compile(r"[A-Za-z0-9+/]{43}=|(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop values of secret-named keys and mask secret-shaped substrings anywhere."""
    for key, value in list(event_dict.items()):
        if key.lower() in SECRET_KEYS:
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            event_dict[key] = SECRET_SHAPES.sub(REDACTED, value)
    return event_dict


def flatten_temporal_context(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Lift the ids Temporal puts in `extra` to top-level keys every line carries."""
    for source in ("temporal_activity", "temporal_workflow"):
        context = event_dict.pop(source, None)
        if isinstance(context, dict):
            for their, ours in (
                ("workflow_id", "workflow_id"),
                ("workflow_run_id", "run_id"),
                ("run_id", "run_id"),
                ("activity_type", "activity"),
                ("workflow_type", "workflow_type"),
                ("attempt", "attempt"),
            ):
                if their in context:
                    event_dict.setdefault(ours, context[their])
    return event_dict


def tenant_of(args: Sequence[Any]) -> str | None:
    """The tenant an activity attempt works for: every activity argument of ours carries
    `tenant_id` (see workflows/contracts.py), so it is known before the activity runs."""
    return next((arg.tenant_id for arg in args if hasattr(arg, "tenant_id")), None)


def bind_activity_context(info: activity.Info, tenant: str | None) -> None:
    """Bind workflow id, run id, activity, attempt and tenant to every log line of an
    activity attempt (runtime/interceptor.py calls it before the activity's own code).

    Each activity runs in its own asyncio task, i.e. its own context copy, so the
    binding cannot leak into another activity; it is left in place on purpose so the
    SDK's own "completing activity as failed" line after the attempt carries it too.
    """
    structlog.contextvars.bind_contextvars(
        workflow_id=info.workflow_id,
        run_id=info.workflow_run_id,
        activity=info.activity_type,
        attempt=info.attempt,
        tenant_id=tenant,
    )


def configure_logging(level: int = logging.INFO, stream: Any = None) -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        flatten_temporal_context,
        redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
