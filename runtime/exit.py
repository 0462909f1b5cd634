"""How our short-lived programs end: the exit code, without interpreter teardown.

The Temporal client's Rust threads can abort a process while the interpreter
finalizes (temporalio/sdk-python#300: "Fatal Python error: PyGILState_Release"),
turning a clean exit code into SIGABRT. A program that has finished its work flushes
its output and leaves at once instead; nothing else needs tearing down by then.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def exit_without_teardown(code: int) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
