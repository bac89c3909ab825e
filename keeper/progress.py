"""The progress line of the long operator commands (`keeper backfill`, `keeper usage import`).

On a terminal one line is redrawn in place, at most every `tty_interval` seconds; elsewhere (a
log file, a pipe) a plain line is written every `interval` seconds. What the line says is the
command's: it asks `due()` whether a frame is wanted now, so that it composes the text only
then (`keeper usage import` asks for every row), and draws it with `draw()`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TextIO


def is_terminal(out: TextIO) -> bool:
    """Whether `out` is a terminal (False for a closed or file-less stream)."""
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressLine:
    """A progress line on `out`, redrawn in place on a terminal (`tty`), plain lines elsewhere.

    The first frame is due at once, or `delay` seconds after the line was made (so a quick
    command draws nothing but its final frame); a final frame is always due, and ends the line.
    """

    def __init__(
        self,
        out: TextIO,
        *,
        tty: bool,
        interval: float = 10.0,
        tty_interval: float = 0.2,
        delay: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.out = out
        self.tty = tty
        self.interval = tty_interval if tty else interval
        self._clock = clock
        self.started = clock()
        self._next = self.started + delay if delay else -math.inf
        self._width = 0
        self._open = False

    @classmethod
    def on(cls, out: TextIO, interval: float = 10.0) -> ProgressLine:
        """A progress line on `out`, a terminal or not."""
        return cls(out, tty=is_terminal(out), interval=interval)

    @property
    def elapsed(self) -> float:
        """Seconds since the line was made."""
        return self._clock() - self.started

    def due(self, *, final: bool = False) -> bool:
        """Whether a frame is to be drawn now (always for the final one); cheap enough to ask
        for every row."""
        now = self._clock()
        if not final and now < self._next:
            return False
        self._next = now + self.interval
        return True

    def draw(self, text: str, *, final: bool = False) -> None:
        """Draw `text`: over the last frame on a terminal, as a line of its own elsewhere;
        `final` ends the line."""
        if self.tty:
            self.out.write(f"\r{text.ljust(self._width)}")
            self._width = len(text)
            self._open = True
        else:
            self.out.write(text + "\n")
        self.out.flush()
        if final:
            self.close()

    def close(self) -> None:
        """End the redrawn line (before anything else is printed)."""
        if self._open:
            self.out.write("\n")
            self.out.flush()
            self._open = False
            self._width = 0
