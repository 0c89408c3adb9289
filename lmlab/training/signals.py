"""Signals: Ctrl-C and SIGTERM become a request to stop at the next step boundary, after saving.

Used by every loop (the trainer, and the RL loop to come), so that an interrupted run always leaves a
checkpoint it can resume from.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopRequest:
    """Ctrl-C or SIGTERM asks the loop to save and stop at the next step boundary; a second Ctrl-C forces."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
