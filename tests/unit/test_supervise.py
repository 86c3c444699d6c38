"""`up`'s progress lines (credit_service/supervise.py) when the terminal they go to is gone."""

from __future__ import annotations

import errno
import io

import pytest

from credit_service.supervise import Progress


class HungUpTerminal(io.TextIOBase):
    """What a closed terminal window leaves: every write fails with EIO."""

    def write(self, text: str) -> int:
        raise OSError(errno.EIO, "Input/output error")


def test_a_progress_line_to_a_closed_terminal_neither_raises_nor_is_tried_again(monkeypatch: pytest.MonkeyPatch):
    """After SIGHUP the stop goes on (every child and PostgreSQL): a line it cannot write must not end it."""
    monkeypatch.setattr("sys.stdout", HungUpTerminal())
    progress = Progress(enabled=True)
    progress.line("✓ REST service stopped")
    assert not progress.enabled
    progress.line("✓ stopping PostgreSQL")
