"""Log lines are JSON with Temporal ids, and secret-shaped values never get through."""

from __future__ import annotations

import io
import json
import logging

from activities.crypto import generate_password
from runtime.logs import configure_logging, get_logger


def test_secret_named_fields_and_secret_shaped_strings_are_redacted() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    password = generate_password()
    get_logger("t").info("set admin", password=password, note=f"failed with {password} inside")
    logging.getLogger("temporalio.activity").info(
        "stdlib line %s",
        password,
        extra={
            "temporal_activity": {
                "workflow_id": "purchase-1",
                "workflow_run_id": "r1",
                "activity_type": "create_admin_credentials",
            }
        },
    )
    output = stream.getvalue()
    assert password not in output
    lines = [json.loads(line) for line in output.splitlines()]
    assert lines[0]["password"] == "[redacted]"
    assert lines[1]["workflow_id"] == "purchase-1"
    assert lines[1]["run_id"] == "r1"
    assert lines[1]["activity"] == "create_admin_credentials"
