"""Progress display: a tqdm bar on a terminal, a few plain lines otherwise, nothing if quiet."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class Progress:
    """Progress over ``total`` steps starting at ``initial``.

    * ``quiet``: nothing at all.
    * ``stream`` is a terminal: a tqdm bar with the postfix values and tqdm's ETA.
    * otherwise (logs, CI): nothing, unless ``plain`` is set: then about ``lines`` plain lines
      ``step k/n  loss ...  (elapsed, ETA)``.
    """

    def __init__(self, total: int, initial: int = 0, quiet: bool = False, desc: str = "train",
                 stream: TextIO | None = None, lines: int = 10, plain: bool = False) -> None:
        self.total, self.initial, self.desc = total, initial, desc
        self.stream = stream if stream is not None else sys.stderr
        self.n = initial
        self.postfix: dict[str, Any] = {}
        self._bar = None
        self._t0 = time.perf_counter()
        self._every = max(1, (total - initial) // max(lines, 1))
        isatty = getattr(self.stream, "isatty", lambda: False)
        try:
            tty = bool(isatty())
        except (ValueError, OSError):
            tty = False
        self.quiet = quiet or not (tty or plain)
        if not quiet and tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, file=self.stream,
                             dynamic_ncols=True, leave=True, unit="step")

    @property
    def uses_bar(self) -> bool:
        return self._bar is not None

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        if postfix:
            self.postfix.update(postfix)
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in self.postfix.items()}, refresh=False)
            self._bar.update(n)
        elif not self.quiet and n > 0 and ((self.n - self.initial) % self._every == 0 or self.n == self.total):
            elapsed = time.perf_counter() - self._t0
            done = self.n - self.initial
            eta = elapsed / done * (self.total - self.n) if done else 0.0
            vals = "  ".join(f"{k} {_fmt(v)}" for k, v in self.postfix.items())
            print(f"{self.desc} step {self.n}/{self.total}  {vals}  ({format_duration(elapsed)} "
                  f"elapsed, ETA {format_duration(eta)})", file=self.stream, flush=True)

    def write(self, msg: str) -> None:
        """Print a message without breaking the bar (shown even when quiet)."""
        if self._bar is not None:
            self._bar.write(msg, file=self.stream)
        else:
            print(msg, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
