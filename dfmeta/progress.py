"""Progress bars for long work: tqdm on a terminal; in a log file (stderr not a terminal) bars are kept when they
end, instead of being cleared to a blank line, and redrawn at most every 10 seconds."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

LOG_INTERVAL = 10.0
"""Seconds between redraws of a bar written to a log file."""


def bar(**kwargs: Any) -> tqdm:
    """``tqdm(**kwargs)``, adapted to a log file as the module says."""
    if not sys.stderr.isatty():
        kwargs["leave"] = True
        kwargs.setdefault("mininterval", LOG_INTERVAL)
    return tqdm(**kwargs)


__all__ = ["bar", "LOG_INTERVAL"]
