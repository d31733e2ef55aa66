"""Transfer progress for ``save(progress=...)`` and ``load(progress=...)``.

``progress=True`` draws a one-line bar on stderr, only when stderr is a
terminal (no dependency: tqdm is not needed). A callable receives
``(bytes_done, bytes_total)``; the native layer calls it with the GIL held, at
most every 100 ms plus once at the end (``bytes_done == bytes_total``).
``bytes_total`` of a save counts only the bytes the server is missing (0 when
it already has everything).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional, Union

Progress = Union[None, bool, Callable[[int, int], Any]]

# Width of the drawn bar, in characters.
_BAR_WIDTH = 24


def human_bytes(n: int) -> str:
    """``1.0 GiB``, ``512 B``: binary units, as the ``ckpt`` CLI prints them."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # not reached


class _TerminalBar:
    """Redraws ``label [####----]  40%  4.0 MiB / 10.0 MiB  12.3 MB/s`` with '\\r'."""

    def __init__(self, stream: Any, label: str, stored_bytes: Optional[int]) -> None:
        self._stream = stream
        self._label = label
        self._stored_bytes = stored_bytes
        self._start = time.monotonic()
        self._ended = False

    def __call__(self, done: int, total: int) -> None:
        if self._ended:
            return
        if total == 0 and self._stored_bytes is not None:
            # Nothing to upload: say so instead of a bar of "0 B / 0 B".
            self._stream.write(
                f"{self._label}: 0 B to send, {human_bytes(self._stored_bytes)} already stored\n"
            )
            self._stream.flush()
            self._ended = True
            return
        fraction = 1.0 if total == 0 else min(1.0, done / total)
        filled = int(fraction * _BAR_WIDTH)
        seconds = time.monotonic() - self._start
        rate = done / 1e6 / seconds if seconds > 0 else 0.0
        line = (
            f"\r{self._label} [{'#' * filled}{'-' * (_BAR_WIDTH - filled)}] {int(fraction * 100):3d}%  "
            f"{human_bytes(done)} / {human_bytes(total)}  {rate:.1f} MB/s\033[K"
        )
        if done >= total:
            line += "\n"
            self._ended = True
        self._stream.write(line)
        self._stream.flush()


def reporter(progress: Progress, label: str, stored_bytes: Optional[int] = None) -> Optional[Callable[[int, int], Any]]:
    """The callable to hand to the native layer for a ``progress=`` argument, or None.

    ``stored_bytes``: for a save, the state's tensor bytes (reported as
    already stored when the server needs none of them).
    """
    from .errors import InvalidArgumentError

    if progress is None or progress is False:
        return None
    if progress is True:
        stream = sys.stderr
        isatty = getattr(stream, "isatty", None)
        if stream is None or isatty is None or not isatty():
            return None
        return _TerminalBar(stream, label, stored_bytes)
    if callable(progress):
        return progress
    raise InvalidArgumentError(
        f"progress must be True, False, None or a callable (bytes_done, bytes_total), got {type(progress).__name__}"
    )
