"""The counts the reliability tests publish: collected in memory, written as JSON.

Tests call ``FIGURES.add(section, name, n)``; the folder's conftest writes the
whole collection at the end of the session (see ``config.FIGURES_VARIABLE``),
and ``report.py`` renders it into ``docs/reliability.md``. Nothing here is
typed in by hand.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any


class Figures:
    """Thread-safe counters grouped by section, plus free-form notes (seeds, stores)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = defaultdict(dict)
        self._notes: dict[str, dict[str, Any]] = defaultdict(dict)
        self._rows: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def add(self, section: str, name: str, n: int = 1) -> None:
        """Add ``n`` to a counter."""
        with self._lock:
            counts = self._counts[section]
            counts[name] = counts.get(name, 0) + n

    def maximum(self, section: str, name: str, value: int) -> None:
        """Keep the largest value seen for a counter."""
        with self._lock:
            counts = self._counts[section]
            counts[name] = max(counts.get(name, value), value)

    def note(self, section: str, name: str, value: Any) -> None:
        """Record a value as is (a seed, a store, a list of sizes)."""
        with self._lock:
            self._notes[section][name] = value

    def row(self, section: str, row: dict[str, Any]) -> None:
        """Add a row to the section's table (one explored scenario, one killed run)."""
        with self._lock:
            self._rows[section].append(dict(row))

    def get(self, section: str, name: str) -> int:
        with self._lock:
            return self._counts.get(section, {}).get(name, 0)

    def empty(self) -> bool:
        with self._lock:
            return not self._counts and not self._notes and not self._rows

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            sections = sorted(set(self._counts) | set(self._notes) | set(self._rows))
            return {
                s: {
                    "counts": dict(sorted(self._counts.get(s, {}).items())),
                    "notes": dict(sorted(self._notes.get(s, {}).items())),
                    "rows": list(self._rows.get(s, [])),
                }
                for s in sections
            }


FIGURES = Figures()


def write(path: Path, header: dict[str, Any]) -> None:
    """Write the header and every section to ``path`` as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**header, "sections": FIGURES.as_dict()}
    path.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
