"""Progress display of a simulated job: one updating line on a terminal, plain lines otherwise.

On a TTY the line is redrawn in place (carriage return, erase line) at most every refresh; when the
output is a file or a pipe, a line is printed only when something a reader cares about changed
(a new model version, a new accuracy), so logs stay short.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from typing import TextIO

__all__ = ["Progress", "ProgressState", "format_table"]


@attrs.frozen
class ProgressState:
    """What the display shows.

    Args:
        version: the current global model version (0 before the first).
        max_version: the version at which the job ends.
        accepted: device updates accepted into the aggregation.
        discarded: device updates answered but not aggregated (stale, duplicate, late, ...).
        accuracy: the latest evaluated accuracy in percent, with the version it belongs to.
        training: devices holding a task right now.
        elapsed: seconds since the run started.
    """

    version: int = 0
    max_version: int = 0
    accepted: int = 0
    discarded: int = 0
    accuracy: tuple[int, float] | None = None
    training: int = 0
    elapsed: float = 0.0

    def line(self) -> str:
        acc = "accuracy -"
        if self.accuracy is not None:
            acc = f"accuracy {self.accuracy[1]:5.1f}% (v{self.accuracy[0]})"
        return (
            f"version {self.version}/{self.max_version}  updates accepted {self.accepted}"
            f"  discarded {self.discarded}  training {self.training}  {acc}"
            f"  {self.elapsed:5.1f}s"
        )


class Progress:
    """Writes :class:`ProgressState` snapshots to ``stream``.

    Args:
        stream: where to write (default ``sys.stdout``).
        tty: force the single-line mode on or off (default: ``stream.isatty()``).
        min_interval: on a TTY, redraw at most this often (seconds).
    """

    def __init__(
        self, stream: TextIO | None = None, *, tty: bool | None = None, min_interval: float = 0.2
    ) -> None:
        self._stream = stream if stream is not None else sys.stdout
        if tty is None:
            isatty = getattr(self._stream, "isatty", None)
            tty = bool(isatty()) if callable(isatty) else False
        self.tty = tty
        self._min_interval = min_interval
        self._last_draw = -math.inf
        self._last: ProgressState | None = None
        self._drawn = False

    def update(self, state: ProgressState, *, force: bool = False) -> None:
        """Show ``state`` (on a TTY, rate-limited unless ``force``)."""
        previous, self._last = self._last, state
        if self.tty:
            now = time.monotonic()
            if not force and now - self._last_draw < self._min_interval:
                return
            self._last_draw = now
            self._stream.write("\r\x1b[2K" + state.line())
            self._stream.flush()
            self._drawn = True
            return
        if (
            previous is None
            or state.version != previous.version
            or state.accuracy != previous.accuracy
            or force
        ):
            self._stream.write(state.line() + "\n")
            self._stream.flush()

    def close(self) -> None:
        """Finish the display (on a TTY: redraw the last state and end the line)."""
        if self.tty and self._last is not None:
            self._stream.write("\r\x1b[2K" + self._last.line() + "\n")
            self._stream.flush()
            self._drawn = False

    def message(self, text: str) -> None:
        """Print a line of text without corrupting the progress line."""
        if self.tty and self._drawn:
            self._stream.write("\r\x1b[2K")
        self._stream.write(text + "\n")
        if self.tty and self._last is not None:
            self._stream.write(self._last.line())
        self._stream.flush()


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table with right-aligned columns (numbers line up)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(lines)
