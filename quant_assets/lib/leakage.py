"""Look-ahead checks: recompute on truncated history (recursive analysis) and audit
multi-timeframe snapshots against the close times of the bars they were taken from."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from quant_assets.lib.errors import DataValidationError
from quant_assets.lib.features import MTF_FEATURES, mtf_column
from quant_assets.lib.timeframes import timeframe_delta

#: Default relative tolerance of recursive_analysis: room for float re-association only; a
#: real look-ahead changes values by far more. compute_features passes with 0 (bit-identical).
RECURSIVE_RTOL = 1e-12


@dataclass(frozen=True)
class LeakageReport:
    """Outcome of recursive_analysis: ok, the cuts checked, and the first mismatch if any."""

    ok: bool
    cuts: tuple[int, ...]
    cut: int | None = None  # history length (rows of input) of the first failing truncation
    row: int | None = None  # output row (0-based) where truncated and full outputs first differ
    column: str | None = None
    full_value: Any = None
    truncated_value: Any = None
    problem: str = ""  # set when the outputs differ in columns or length rather than values

    def describe(self) -> str:
        if self.ok:
            return f"no look-ahead: rows identical at cuts {list(self.cuts)}"
        if self.problem and self.cut is None:
            return f"row {self.row}: {self.problem} ({self.column} = {self.full_value!r})"
        if self.problem:
            return f"truncated at {self.cut} rows: {self.problem}"
        return (
            f"truncated at {self.cut} rows, row {self.row} column {self.column!r} is "
            f"{self.truncated_value!r} but {self.full_value!r} with the full history"
        )


def default_cut_points(n_rows: int, n_cuts: int = 5) -> list[int]:
    """`n_cuts` history lengths spread evenly strictly inside (0, n_rows)."""
    cuts = {round(n_rows * k / (n_cuts + 1)) for k in range(1, n_cuts + 1)}
    return sorted(c for c in cuts if 0 < c < n_rows)


def _mismatches(full: pl.Series, part: pl.Series, rtol: float) -> pl.Series:
    if full.dtype.is_float() and part.dtype.is_float():
        tol = rtol * pl.max_horizontal(pl.col("a").abs(), pl.col("b").abs())
        same = (pl.col("a") == pl.col("b")) | ((pl.col("a") - pl.col("b")).abs() <= tol)
        both_null = pl.col("a").is_null() & pl.col("b").is_null()
        expr = ~(both_null | same.fill_null(False))
    else:
        expr = pl.col("a").ne_missing(pl.col("b"))
    return pl.DataFrame({"a": full, "b": part}).select(expr).to_series()


def recursive_analysis(
    compute: Callable[[pl.DataFrame], pl.DataFrame],
    bars: pl.DataFrame,
    cut_points: Sequence[int] | None = None,
    n_cuts: int = 5,
    rtol: float = RECURSIVE_RTOL,
    full: pl.DataFrame | None = None,
) -> LeakageReport:
    """Check that `compute` on bars.head(cut) reproduces the first rows of compute(bars).

    A row that changes when later bars are removed used those bars. Values compare equal when
    both are null, both NaN, or |a - b| <= rtol * max(|a|, |b|). Outputs are compared row by
    row from the top, so `compute` may drop leading (warm-up) rows but must keep row order.
    `full`: compute(bars) when the caller has it already (an asset checking its own output),
    so it is not computed twice.
    """
    cuts = (
        tuple(sorted(set(cut_points)))
        if cut_points is not None
        else tuple(default_cut_points(bars.height, n_cuts))
    )
    if full is None:
        full = compute(bars)
    for cut in cuts:
        part = compute(bars.head(cut))
        if part.columns != full.columns:
            return LeakageReport(
                False, cuts, cut, problem=f"columns {part.columns} != {full.columns}"
            )
        if part.height > full.height:
            return LeakageReport(
                False, cuts, cut, problem=f"{part.height} output rows > {full.height} in full"
            )
        head = full.head(part.height)
        first: tuple[int, str] | None = None
        for name in full.columns:
            bad = _mismatches(head[name], part[name], rtol).arg_true()
            if len(bad) and (first is None or bad[0] < first[0]):
                first = (int(bad[0]), name)
        if first is not None:
            row, name = first
            return LeakageReport(False, cuts, cut, row, name, head[name][row], part[name][row])
    return LeakageReport(True, cuts)


def mtf_lookahead_violations(
    base: pl.DataFrame,
    base_timeframe: str,
    snapshot: pl.DataFrame,
    higher: dict[str, pl.DataFrame],
) -> int:
    """Base rows of `snapshot` holding a multi-timeframe value other than the one of the last
    higher bar closed by the base bar's close (a value from a bar still open counts).

    Independent of multi_timeframe_snapshot's join: positions come from numpy.searchsorted on
    integer close times. Nulls equal nulls; values are copied, so equality is exact.
    """
    if snapshot.height != base.height or not snapshot["timestamp"].equals(base["timestamp"]):
        raise DataValidationError(
            "mtf_lookahead_violations(snapshot)",
            "snapshot rows are not the base bars",
            detail=f"{snapshot.height} snapshot rows vs {base.height} base rows",
        )
    base_close = (base["timestamp"] + timeframe_delta(base_timeframe)).dt.epoch("us").to_numpy()
    bad = np.zeros(base.height, dtype=bool)
    for tf, frame in higher.items():
        closes = (frame["timestamp"] + timeframe_delta(tf)).dt.epoch("us").to_numpy()
        last_closed = np.searchsorted(closes, base_close, side="right") - 1
        # Rows before the first higher close point at an appended null row.
        take = pl.Series(np.where(last_closed >= 0, last_closed, frame.height))
        padded = pl.concat([frame.select(MTF_FEATURES), frame.select(MTF_FEATURES).clear(1)])
        for feature in MTF_FEATURES:
            column = mtf_column(tf, feature)
            if column not in snapshot.columns:
                raise DataValidationError(
                    "mtf_lookahead_violations(snapshot)", f"missing column {column}"
                )
            expected = padded[feature].gather(take)
            bad |= snapshot[column].ne_missing(expected).to_numpy()
    return int(bad.sum())


def label_lookahead_report(
    compute: Callable[[pl.DataFrame], pl.DataFrame],
    bars: pl.DataFrame,
    timeframe: str,
    n_cuts: int = 5,
    label_column: str = "label",
    t1_column: str = "t1",
    ignore: Sequence[str] = ("sample_weight",),
    full: pl.DataFrame | None = None,
) -> LeakageReport:
    """Labels are known only after their entry bar closed, never after the data ends, and never change.

    On the full history every labelled row needs close(entry) < t1 <= close(last bar). At each cut,
    every value computed from the truncated history must equal the full computation (values still
    null there, outcomes not known yet, are the expected difference). `ignore` lists columns that may
    legitimately depend on later labels (sample weights count concurrent labels). `full`:
    compute(bars), when the caller has it already.
    """
    if full is None:
        full = compute(bars)
    cuts = tuple(default_cut_points(bars.height, n_cuts))
    step = timeframe_delta(timeframe)
    last_close = bars["timestamp"][-1] + step
    labelled = full.filter(pl.col(label_column).is_not_null())
    early = labelled.filter(pl.col(t1_column) <= pl.col("timestamp") + step)
    late = labelled.filter(pl.col(t1_column) > last_close)
    for bad, what in (
        (early, "outcome known before the entry bar closed"),
        (late, "outcome after the data end"),
    ):
        if bad.height:
            row = int(full["timestamp"].search_sorted(bad["timestamp"][0]))
            return LeakageReport(
                False, cuts, None, row, t1_column, bad[t1_column][0], None, problem=what
            )
    compared = [c for c in full.columns if c not in ignore]
    for cut in cuts:
        part = compute(bars.head(cut)).select(compared)
        head = full.select(compared).head(part.height)
        for name in compared:
            # a value known from the truncated history must never change; a null there is an
            # outcome not known yet (e.g. a longer fixed horizon than the triple barrier's)
            known = part[name].is_not_null()
            bad = (_mismatches(head[name], part[name], RECURSIVE_RTOL) & known).arg_true()
            if len(bad):
                row = int(bad[0])
                return LeakageReport(False, cuts, cut, row, name, head[name][row], part[name][row])
    return LeakageReport(True, cuts)
