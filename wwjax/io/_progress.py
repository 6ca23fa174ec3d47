"""Progress on stderr for scans and long analyses, drawn with ``rich`` (which comes with Flax) once a task has lasted
longer than a moment, so that quick runs print nothing."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """A ``rich`` progress bar with a label, a count and a note, shown only after ``delay`` seconds.

    Example:
      >>> import io
      >>> stream = io.StringIO()
      >>> bar = ProgressBar(2, enabled=True, stream=stream, delay=0.0)
      >>> bar.update(1, "step 10"); bar.close()
      >>> "wwjax" in stream.getvalue() and "1/2" in stream.getvalue()
      True
    """

    def __init__(self, total: int, enabled: bool = True, stream=None, delay: float = 0.5, label: str = "wwjax"):
        self.total, self.enabled, self.delay, self.label = total, enabled, delay, label
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self._progress = None
        self._task = None

    def _begin(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(file=self.stream, stderr=self.stream is sys.stderr)
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console,
                                  transient=False)
        self._task = self._progress.add_task(self.label, total=self.total, note="")
        self._progress.start()

    def update(self, done: int, note: str = "") -> None:
        if not self.enabled or time.perf_counter() - self.start < self.delay:
            return
        if self._progress is None:
            self._begin()
        self._progress.update(self._task, completed=done, note=note)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
