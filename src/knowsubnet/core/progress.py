"""Progress: a live tqdm bar on a terminal, a few plain log lines in a log file.

    for batch in progress_bar(batches, desc="verbalize"):
        ...
    bar = progress_bar(total=steps, desc="mask")
    bar.update(1); bar.set_postfix(loss="0.31"); bar.close()

When stderr is not a terminal (a Snakemake / DVC / SLURM log file) there is no bar, whose
carriage-return frames would fill the file, but one log line every `every_frac` of the work and
at most one every `every_s` seconds, plus one at the end.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger("knowsubnet.core.progress")


class LogProgress:
    """The part of tqdm's interface the library uses, writing log lines instead of a bar."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        total: int | None = None,
        desc: str = "",
        initial: int = 0,
        unit: str = "it",
        every_frac: float = 0.1,
        every_s: float = 30.0,
        min_interval_s: float = 5.0,
    ):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit = total, desc or "progress", unit
        self.n = self.last_n = int(initial)
        self.every_frac, self.every_s, self.min_interval_s = every_frac, every_s, min_interval_s
        self.start = self.last_t = time.monotonic()
        self.postfix = ""
        self.closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or self.desc

    def refresh(self) -> None:
        pass

    def _line(self) -> None:
        elapsed = time.monotonic() - self.start
        done = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        post = f", {self.postfix}" if self.postfix else ""
        log.info("%s: %s%s in %.1f s%s", self.desc, done, pct, elapsed, post)
        self.last_n, self.last_t = self.n, time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last_t < self.min_interval_s and not (self.total and self.n >= self.total):
            return
        step = self.every_frac * self.total if self.total else None
        if (step and self.n - self.last_n >= step) or now - self.last_t >= self.every_s:
            self._line()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n != self.last_n or self.n == 0:
                self._line()


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    initial: int = 0,
    unit: str = "it",
    disable: bool = False,
    leave: bool = True,
    **_ignored: Any,
):
    """A tqdm bar when stderr is a terminal, else a LogProgress; `disable` turns both off."""
    if disable:
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, initial=initial, unit=unit, leave=leave, dynamic_ncols=True)
    return LogProgress(iterable, total=total, desc=desc, initial=initial, unit=unit)


def quiet_library_bars() -> None:
    """Outside a terminal, no third-party bars either (Hugging Face's "Loading weights", downloads)."""
    if sys.stderr.isatty():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when huggingface_hub is imported
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
