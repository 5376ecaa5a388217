"""A metric's declaration: its key in a results row, its label, its direction, its digits, the table it belongs to
and what it means.

Each module that computes metrics declares its columns next to the code (a `COLUMNS` list); the leaderboard loops
over the declarations, and a plugin's `RowMetric` becomes a column through the same type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    direction: str = ""  # "↑" higher is better, "↓" lower is better, "" neither
    digits: int = 3
    #: Meaningless when the re-ID model did not learn (marked "unreliable" in tables).
    needs_reid: bool = False
    #: How the value is read from a results row (default: `row[key]`), and the row field it comes from.
    read: Callable[[dict[str, Any]], Any] | None = None
    derived_from: str | None = None
    #: The row also holds `<key>_low` and `<key>_high`, the value's interval (or `read_bounds` reads it).
    interval: bool = False
    read_bounds: Callable[[dict[str, Any]], tuple[Any, Any]] | None = None
    #: The leaderboard table it is shown in (`harness.leaderboard.GROUPS`; "" for the row's name, shown in all).
    group: str = ""
    #: One sentence under its table (and the tooltip of its header on the page).
    definition: str = ""

    @property
    def header(self) -> str:
        return f"{self.label} {self.direction}".strip()

    @property
    def source(self) -> str:
        return self.derived_from or self.key

    def value(self, row: dict[str, Any]) -> Any:
        return self.read(row) if self.read is not None else row.get(self.key)

    def bounds(self, row: dict[str, Any]) -> tuple[Any, Any]:
        """The interval's ends (None when the row has none)."""
        if not self.interval:
            return None, None
        if self.read_bounds is not None:
            return self.read_bounds(row)
        return row.get(f"{self.key}_low"), row.get(f"{self.key}_high")


def interval_text(value: float, low: float | None, high: float | None, digits: int = 3) -> str:
    """`value [low, high]` (three decimals by default), as the re-ID and utility tables show a number with its
    interval; the value alone when it has none."""
    if low is None or high is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def plugin_table(metric: dict[str, Any]) -> str:
    """The table (`Column.group`) of a plugin metric's column, from its declaration in results.json: the table it
    declares, in its feature space."""
    group, space = metric.get("group", "plugin"), metric.get("space", "reid")
    if group == "fidelity":
        return "fidelity_reid" if space == "reid" else "fidelity"
    return group if space == "reid" else f"{group}_{space}"
