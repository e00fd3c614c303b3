"""Counts the contract suites (schemathesis, the tenant walk, the hostile-input table)
report; ``tests/conftest.py`` prints them at the end of every pytest run, so CI logs
show how much was checked, not only that it passed."""

from __future__ import annotations

LINES: list[str] = []


def report(line: str) -> None:
    LINES.append(line)
