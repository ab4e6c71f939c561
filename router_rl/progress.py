"""Progress that fits where it runs: a tqdm bar in a terminal, a few plain lines in a log.

A bar redraws itself in place, which a terminal shows as one line and a log file (a CI job, ``nohup``, a
Hydra multirun's captured output) stores as thousands of ``\\r`` updates. :func:`progress` gives a bar when
stderr is a terminal and otherwise a :class:`LogProgress` that prints a handful of lines (the start, every
quarter, the end) with the rate. ``ROUTER_RL_PROGRESS=bar | log | off`` overrides the choice.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

MODES = ("bar", "log", "off")


def mode(stream: IO[str] | None = None) -> str:
    """``ROUTER_RL_PROGRESS`` when set, else ``bar`` on a terminal and ``log`` elsewhere."""
    chosen = os.environ.get("ROUTER_RL_PROGRESS", "").strip().lower()
    if chosen:
        if chosen not in MODES:
            raise ValueError(f"ROUTER_RL_PROGRESS must be one of {list(MODES)}, got {chosen!r}")
        return chosen
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "log"


def interactive() -> bool:
    """Whether progress bars (ours and libraries') belong on this stderr."""
    return mode() == "bar"


class LogProgress:
    """tqdm's ``update``/``close`` interface, printing ``marks`` evenly spaced lines and a final one.

    Args:
        total: units of work expected.
        desc: what is progressing (``train``, ``eval``).
        unit: the unit's name (``step``).
        marks: lines between the start and the end (4: at 25, 50, 75 and 100%).
        stream: where lines go (default: stderr); None with ``quiet`` prints nothing.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        *,
        marks: int = 4,
        stream: IO[str] | None = None,
        quiet: bool = False,
    ) -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = 0
        self._stream = stream or sys.stderr
        self._quiet = quiet
        self._next = 1
        self._marks = max(1, int(marks))
        self._t0 = time.perf_counter()
        self._closed = False
        self._say(f"{self.total} {unit}s to go")

    def _say(self, text: str) -> None:
        if not self._quiet:
            print(f"[router-rl] {self.desc}: {text}", file=self._stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        while (
            self.total > 0 and self._next <= self._marks and self.n >= self._next * self.total / self._marks
        ):
            elapsed = time.perf_counter() - self._t0
            rate = self.n / elapsed if elapsed > 0 else float("inf")
            self._say(
                f"{self.n}/{self.total} {self.unit}s ({self.n / self.total:.0%}), {elapsed:.1f} s, {rate:,.0f} {self.unit}s/s"
            )
            self._next += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.total > 0 and self._next <= self._marks:  # stopped early: say where
            self._say(
                f"stopped at {self.n}/{self.total} {self.unit}s after {time.perf_counter() - self._t0:.1f} s"
            )

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(total: int, desc: str, unit: str = "it", **tqdm_kwargs: Any) -> Any:
    """A progress bar for ``total`` units of work: tqdm in a terminal, :class:`LogProgress` otherwise."""
    chosen = mode()
    if chosen == "bar":
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, **tqdm_kwargs)
    return LogProgress(total, desc, unit, quiet=chosen == "off")


def quiet_library_bars() -> None:
    """Silence the bars libraries draw on their own (Hugging Face's downloads, transformers' "Loading weights")
    and, off a terminal, every tqdm bar left at its default; set before those libraries are imported."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not interactive():
        os.environ.setdefault("TQDM_DISABLE", "1")
