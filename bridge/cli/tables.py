"""Plain-text tables for the commands' output: one header row, columns padded to fit."""
from __future__ import annotations


def format_table(rows: list) -> str:
    """``rows[0]`` is the header; every cell is shown with ``str``; trailing spaces trimmed."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)
