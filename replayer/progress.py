"""A progress line with rate and ETA on stderr, only when stderr is a terminal."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int | None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self._shown = 0.0
        self.enabled = sys.stderr.isatty()

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and now - self._shown >= 0.2:
            self._shown = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        line = f"{self.label}: {self.done:,}"
        if self.total:
            left = (self.total - self.done) / rate if rate else 0
            line += f"/{self.total:,} ({100 * self.done / self.total:.0f}%)  ETA {left:.0f} s"
        line += f"  {rate:,.0f}/s"
        sys.stderr.write("\r" + line.ljust(78))
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()
