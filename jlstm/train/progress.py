"""How :func:`jlstm.train.fit` reports: a tqdm bar on a terminal, one plain line per epoch in a log, or nothing.

``progress=`` takes ``True`` or ``"bar"`` (a bar over each epoch's steps when stdout and stderr are
both terminals; otherwise the per-epoch lines, so that a log file or a notebook gets no
carriage-return fragments), ``"epoch"`` (one line per epoch, always) or ``False``/``"off"``.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, NamedTuple

from tqdm import tqdm

MODES = ("bar", "epoch", "off")


def interactive() -> bool:
    """Whether a bar can be drawn: stdout and stderr are both terminals."""
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):   # a replaced or closed stream
        return False


def resolve(progress: bool | str | None) -> str:
    """The mode ``progress=`` asks for here: ``"bar"``, ``"epoch"`` or ``"off"``."""
    if progress is True or progress == "bar":
        return "bar" if interactive() else "epoch"
    if progress is False or progress is None or progress == "off":
        return "off"
    if progress == "epoch":
        return "epoch"
    raise ValueError(f"fit: progress must be True/'bar' (a bar on a terminal, else one line per epoch), "
                     f"'epoch' (one line per epoch) or False/'off', got {progress!r}.")


class Reporter(NamedTuple):
    """Writes fit's lines and wraps each epoch's batches in a bar, as its ``mode`` says."""

    mode: str

    def write(self, line: str) -> None:
        """One line: above the bar in bar mode, a plain flushed print in epoch mode, nothing when off."""
        if self.mode == "bar":
            tqdm.write(line)
        elif self.mode == "epoch":
            print(line, flush=True)

    def steps(self, batches: Iterable[Any], total: int | None, desc: str) -> tqdm:
        """``batches`` inside a bar (a silent pass-through unless in bar mode); ``total`` may be ``None``."""
        return tqdm(batches, total=total, desc=desc, disable=self.mode != "bar", leave=True,
                    dynamic_ncols=True, mininterval=0.1)
