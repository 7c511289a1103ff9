"""Output of the nodes a system test starts, kept out of pytest's progress line."""

from __future__ import annotations

import sys
import threading
from typing import TextIO


class GraphLog:
    """Collects node output (prefixed by the runner) and echoes it into pytest's capture.

    The echo stream is bound when the log is made, inside a test or fixture, where it is pytest's
    capture: the runner's reader threads keep writing between tests, when ``sys.stdout`` is the
    terminal again, and a late lookup would print node logs into the progress line. Captured
    output is shown with a failing test's report only.
    """

    def __init__(self, echo: TextIO | None = None) -> None:
        self.lines: list[str] = []
        self._echo = echo if echo is not None else sys.stdout
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            self.lines.append(text)
        self._echo.write(text)

    def flush(self) -> None:
        self._echo.flush()

    def text(self) -> str:
        with self._lock:
            return "".join(self.lines)
