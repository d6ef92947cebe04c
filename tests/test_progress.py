"""Progress bars in a log file: kept when they end (no line of blanks where a bar was cleared), redrawn sparingly."""

from __future__ import annotations

import io
import sys

from dfmeta.progress import LOG_INTERVAL, bar


def test_a_bar_in_a_log_file_is_kept_and_throttled(monkeypatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)  # not a terminal
    b = bar(total=3, desc="meta-test 1-shot", leave=False, file=log)
    assert b.leave and b.mininterval == LOG_INTERVAL
    b.update(3)
    b.close()
    lines = log.getvalue().replace("\r", "\n").splitlines()
    assert not [x for x in lines if x and not x.strip()], lines  # no line of blanks left by clearing the bar
    assert "3/3" in lines[-1]


def test_a_bar_on_a_terminal_is_as_asked(monkeypatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    b = bar(total=3, leave=False, file=term)
    assert not b.leave and b.mininterval == 0.1
    b.close()
