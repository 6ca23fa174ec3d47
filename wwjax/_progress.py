"""A one-line progress bar on stderr for scans, drawn only once a scan has lasted longer than a moment."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """``[#####     ] 5/10 step 500  3s`` redrawn in place; nothing at all when disabled or when the scan is quick.

    Example:
      >>> import io
      >>> stream = io.StringIO()
      >>> bar = ProgressBar(2, enabled=True, stream=stream, delay=0.0)
      >>> bar.update(1, "step 10"); bar.close()
      >>> stream.getvalue().strip()
      'wwjax [##########          ] 1/2 step 10  0s'
    """

    def __init__(self, total: int, enabled: bool = True, stream=None, delay: float = 0.5, width: int = 20,
                 label: str = "wwjax"):
        self.total, self.enabled, self.delay, self.width, self.label = total, enabled, delay, width, label
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self.drawn = False
        self.last_length = 0

    def update(self, done: int, note: str = "") -> None:
        elapsed = time.perf_counter() - self.start
        if not self.enabled or elapsed < self.delay:
            return
        filled = int(self.width * done / max(self.total, 1))
        bar = "#" * filled + " " * (self.width - filled)
        line = f"{self.label} [{bar}] {done}/{self.total} {note}  {elapsed:.0f}s"
        self.stream.write("\r" + line.ljust(self.last_length))  # pad over a longer previous line
        self.stream.flush()
        self.last_length = len(line)
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
