"""Training windows in days: the rolling lookback a model trains on (the latest N days of a
dataset), walk-forward folds whose train/test/step windows are calendar days rather than row counts,
and a SplitPlan made on a window and mapped back to the full dataset's rows."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import numpy as np
import polars as pl

from quant_assets.lib.errors import SplitConfigError
from quant_assets.lib.splits import Fold, SplitPlan, _label_spans, _overlaps_block, holdout_split
from quant_assets.lib.timeframes import timeframe_seconds

#: Default rolling lookback of timeframes of one hour and finer; coarser ones train on everything.
INTRADAY_LOOKBACK_DAYS = 180


def default_lookback_days(timeframe: str) -> int | None:
    """180 days for 1h and finer timeframes (the desk's intraday lookbacks were 90-180 days), None
    (the full history) for coarser ones: a 1d model has ~250 rows a year and needs all of them."""
    return INTRADAY_LOOKBACK_DAYS if timeframe_seconds(timeframe) <= 3600 else None


def lookback_start_row(timestamps: pl.Series, days: float | None) -> int:
    """The first row inside the rolling window: the rows whose bar opened less than `days` days
    before the latest bar's open (the latest `days` days, the latest bar included). None or 0: 0."""
    if not days or timestamps.is_empty():
        return 0
    if days < 0:
        raise SplitConfigError(
            f"lookback days must be positive (0 or None: full history), got {days}"
        )
    start = timestamps[-1] - timedelta(days=days)
    return int(timestamps.search_sorted(start, side="right"))


def shifted_plan(plan: SplitPlan, offset: int) -> SplitPlan:
    """`plan`, made on rows offset.. of a dataset, with every row index in the full dataset's terms."""
    if offset == 0:
        return plan
    return replace(
        plan,
        dev_idx=plan.dev_idx + offset,
        holdout_idx=plan.holdout_idx + offset,
        folds=[
            Fold(f.fold, f.train_idx + offset, f.test_idx + offset, f.n_purged, f.n_embargoed)
            for f in plan.folds
        ],
    )


def _epoch_us(values: Any) -> np.ndarray:
    series = values if isinstance(values, pl.Series) else pl.Series(values)
    return series.dt.epoch("us").to_numpy().astype(np.int64)


def day_walk_forward(
    timestamps: Any,
    t0: Any,
    t1: Any,
    *,
    train_days: float | None,
    test_days: float,
    step_days: float | None = None,
) -> list[Fold]:
    """Walk-forward folds whose windows are calendar days of the rows' timestamps (sorted).

    Test windows of `test_days` start every `step_days` (default test_days), anchored so the last
    one ends with the last row: the test rows of a window [a, a + test_days) are those whose
    timestamp falls in it. Training rows are those in [a - train_days, a) (rolling), or every row
    before a when train_days is None (expanding), minus rows whose label span [t0, t1] overlaps a
    test row's span (purged). A window before the first row, or without training or test rows, is
    not a fold. Equity sessions, weekends and dropped rows make the row counts vary; the day
    bounds do not.
    """
    if test_days <= 0 or (step_days is not None and step_days <= 0):
        raise SplitConfigError(
            f"test_days and step_days must be positive, got {test_days}, {step_days}"
        )
    if train_days is not None and train_days <= 0:
        raise SplitConfigError(f"train_days must be positive (None: expanding), got {train_days}")
    ts = _epoch_us(timestamps)
    n = ts.size
    start, end = _label_spans(n, t0, t1)
    if n == 0:
        return []
    day = 86_400_000_000
    test_us, step_us = int(test_days * day), int((step_days or test_days) * day)
    last_end = int(ts[-1]) + 1  # the last window ends just after the last row
    folds: list[Fold] = []
    k = 0
    while True:
        b_time = last_end - k * step_us
        a_time = b_time - test_us
        train_from = ts[0] if train_days is None else a_time - int(train_days * day)
        if train_from < ts[0] or a_time <= ts[0]:
            break
        a, b = np.searchsorted(ts, [a_time, b_time], side="left")
        lo = int(np.searchsorted(ts, train_from, side="left"))
        candidates = np.arange(lo, a, dtype=np.int64)
        if b > a and candidates.size:
            purged = _overlaps_block(start, end, candidates, int(a), int(b))
            if (~purged).any():
                folds.append(
                    Fold(
                        k,
                        candidates[~purged],
                        np.arange(a, b, dtype=np.int64),
                        int(purged.sum()),
                        0,
                    )
                )
        k += 1
    folds.reverse()
    return [replace(f, fold=i) for i, f in enumerate(folds)]


def day_walk_forward_plan(
    timestamps: pl.Series,
    t0: Any,
    t1: Any,
    *,
    holdout_fraction: float,
    train_days: float | None,
    test_days: float,
    step_days: float | None = None,
) -> SplitPlan:
    """The latest rows held out (as make_splits holds them out), then `day_walk_forward` on the
    development rows."""
    n = timestamps.len()
    t0a, t1a = _label_spans(n, t0, t1)
    dev, hold = holdout_split(n, holdout_fraction, t0a, t1a)
    folds = day_walk_forward(
        timestamps.gather(dev),
        t0a[dev],
        t1a[dev],
        train_days=train_days,
        test_days=test_days,
        step_days=step_days,
    )
    if not folds:
        raise SplitConfigError(
            f"no walk-forward fold of {train_days or 'expanding'} training and {test_days} test days "
            f"fits the {dev.size} development rows"
        )
    return SplitPlan(
        scheme="rolling_days" if train_days is not None else "expanding_days",
        dev_idx=dev,
        holdout_idx=hold,
        n_holdout_purged=n - hold.size - dev.size,
        folds=[
            Fold(f.fold, dev[f.train_idx], dev[f.test_idx], f.n_purged, f.n_embargoed)
            for f in folds
        ],
    )


def training_window_label(days: float | None, timestamps: pl.Series, first: int) -> str:
    """How a partition's rows were windowed, in words: "rolling 180 days: <first> .. <last>" or
    "full history: <first> .. <last>"."""
    if timestamps.is_empty():
        return "no rows"
    span = f"{timestamps[first] if first < timestamps.len() else 'none'} .. {timestamps[-1]}"
    return f"rolling {days:g} days: {span}" if days else f"full history: {span}"
