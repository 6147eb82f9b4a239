"""Small renderers for human-facing summaries (Dagster metadata, CLI output)."""

from __future__ import annotations

from datetime import datetime

import polars as pl


def _cell(value: object, float_digits: int, markdown: bool = True) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{float_digits}g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value).replace("|", "\\|") if markdown else str(value)


def markdown_table(frame: pl.DataFrame, max_rows: int = 10, float_digits: int = 6) -> str:
    """A GitHub-flavoured markdown table of the first `max_rows` rows."""
    head = frame.head(max_rows)
    lines = [
        "| " + " | ".join(head.columns) + " |",
        "|" + "---|" * len(head.columns),
    ]
    for row in head.iter_rows():
        lines.append("| " + " | ".join(_cell(v, float_digits) for v in row) + " |")
    if frame.height > max_rows:
        lines.append(f"\n… {frame.height - max_rows} more rows")
    return "\n".join(lines)


def text_table(rows: list[dict[str, object]], columns: list[str] | None = None) -> str:
    """A plain aligned text table for terminals."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])
    cells = [[_cell(r.get(c), 4, markdown=False) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    out = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out.extend("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells)
    return "\n".join(out)
