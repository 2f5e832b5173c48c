"""The benchmark's report: one table row per measurement, printed as it is measured.

Rows are printed the moment they are added, so a run of several minutes shows
progress, and the same rows make the JSON file at the end. A row may carry a
target; whether it was met is reported, never enforced here (the benchmark is a
report; the few hard checks live in `bench.__main__`).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

Number = float | int | str | None

_COLUMNS = (("measurement", 38), ("value", 10), ("unit", 7), ("target", 10), ("met", 5))


@dataclass(frozen=True)
class Row:
    key: str  # stable name in the JSON file, e.g. "creates.1000.rate"
    label: str
    value: float | None
    unit: str
    detail: str = ""
    target: str = ""  # as printed, e.g. "≥ 500"; empty when the issue sets none
    met: bool | None = None  # None: no target, or it could not be measured
    data: dict[str, Number] = field(default_factory=dict)  # more numbers for the JSON file


def _value(row: Row) -> str:
    if row.value is None:
        return "n/a"
    if abs(row.value) >= 100:
        return f"{row.value:,.0f}"
    return f"{row.value:.2f}" if abs(row.value) < 10 else f"{row.value:.1f}"


def _met(row: Row) -> str:
    return "" if row.met is None else ("yes" if row.met else "NO")


class Report:
    def __init__(self, heading: str, options: dict[str, Any]) -> None:
        self.heading = heading
        self.options = options
        self.rows: list[Row] = []
        self.started = datetime.now(UTC)
        self._load_before = os.getloadavg()

    def header(self) -> None:
        print(self.heading)
        print("  " + " ".join(f"{name:<{width}}" for name, width in _COLUMNS) + "details")
        print("  " + " ".join("-" * width for _, width in _COLUMNS) + "-" * 40)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        cells = (row.label, _value(row), row.unit, row.target, _met(row))
        line = " ".join(
            f"{cell:<{width}}" for cell, (_, width) in zip(cells, _COLUMNS, strict=True)
        )
        print(f"  {line}{row.detail}", flush=True)
        return row

    def note(self, text: str) -> None:
        """A line that is not a measurement (what a phase is doing, a warning)."""
        print(f"  · {text}", flush=True)

    def summary(self) -> str:
        judged = [row for row in self.rows if row.target]
        met = sum(row.met is True for row in judged)
        missed = [row.label for row in judged if row.met is not True]
        tail = f"; not met: {', '.join(missed)}" if missed else ""
        return f"targets met: {met} of {len(judged)}{tail}"

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "heading": self.heading,
            "started": self.started.isoformat(),
            "finished": datetime.now(UTC).isoformat(),
            "machine": {
                "cpus": os.cpu_count(),
                "load_average_before": self._load_before[0],
                "load_average_after": os.getloadavg()[0],
                "platform": platform.platform(),
                "python": sys.version.split()[0],
            },
            "options": self.options,
            "summary": self.summary(),
            "rows": [asdict(row) for row in self.rows],
        }
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
