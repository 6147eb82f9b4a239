"""Leak-free validation splits of a time-ordered labelled dataset: a final hold-out, walk-forward folds
and purged k-fold with embargo, all purged on each row's label span [t0, t1]."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

from quant_assets.lib.errors import DataValidationError, SplitConfigError

Scheme = Literal["expanding", "rolling", "purged_kfold"]
SCHEMES: tuple[str, ...] = ("expanding", "rolling", "purged_kfold")

# Overlap rule, used everywhere below: row i's label span [t0_i, t1_i] and row j's span overlap when the
# CLOSED intervals intersect, t0_i <= t1_j and t0_j <= t1_i. A label that becomes known at the very
# timestamp a test label starts therefore counts as overlapping. Spans are timestamps (datetime64,
# compared in ns) or plain numbers such as bar indices; t0 must be non-decreasing (rows in time order).
#
# Because t0 is sorted, the overlap of a row with a contiguous test block a:b needs no pairwise matrix:
# a row before the block starts no later than every test span, so it overlaps one iff t1_i >= t0_a;
# a row after the block starts no earlier than every test span, so it overlaps one iff
# t0_i <= max(t1[a:b]). That makes each fold O(n).


@dataclass(frozen=True, eq=False)
class Fold:
    """One train/test split as row positions (increasing int64 arrays).

    n_purged: training candidates dropped because their label span overlaps a test span.
    n_embargoed: training candidates dropped by position alone and not already purged: the embargo
    rows after a k-fold test block, or the gap rows before a walk-forward test block.
    """

    fold: int
    train_idx: np.ndarray
    test_idx: np.ndarray
    n_purged: int = 0
    n_embargoed: int = 0


@dataclass(frozen=True, eq=False)
class SplitPlan:
    """Everything `make_splits` decided: the hold-out, the development rows and the folds over them.

    Fold indices are positions in the full dataset; they never contain a hold-out row nor a row purged
    against the hold-out (n_holdout_purged of them).
    """

    scheme: str
    dev_idx: np.ndarray
    holdout_idx: np.ndarray
    n_holdout_purged: int
    folds: list[Fold]


@dataclass(frozen=True)
class SplitConfig:
    """The validation scheme of a training run, as plain typed fields (defaults included).

    purged_kfold uses n_splits and embargo; expanding uses min_train, test_size, step and gap; rolling
    uses train_size, test_size, step and gap. Use it as
    `make_splits(c.scheme, n, t0, t1, holdout_fraction=c.holdout_fraction, **c.scheme_params())`.
    """

    scheme: Scheme = "purged_kfold"
    holdout_fraction: float = 0.2
    n_splits: int = 5
    embargo: int | float = 0
    min_train: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    step: int | None = None
    gap: int = 0

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise SplitConfigError(
                f"unknown split scheme {self.scheme!r}; expected one of {SCHEMES}"
            )

    def scheme_params(self) -> dict[str, Any]:
        """Keyword arguments of the scheme function, only the ones it takes."""
        if self.scheme == "purged_kfold":
            return {"n_splits": self.n_splits, "embargo": self.embargo}
        window = "min_train" if self.scheme == "expanding" else "train_size"
        missing = [name for name in (window, "test_size") if getattr(self, name) is None]
        if missing:
            raise SplitConfigError(f"split scheme {self.scheme!r} needs {' and '.join(missing)}")
        return {
            window: getattr(self, window),
            "test_size": self.test_size,
            "step": self.step,
            "gap": self.gap,
        }


# ---------------------------------------------------------------------------------------------------
# label spans


def _span_values(values: Any, name: str) -> tuple[np.ndarray, bool]:
    """(`values` as a 1-d numpy array, whether they were datetimes): datetimes as int64 ns, integers as
    int64, floats as float64."""
    dt = getattr(values, "dt", None)
    if dt is not None and getattr(dt, "tz", None) is not None:
        # pandas keeps tz-aware datetimes as objects in numpy; drop the zone after moving to UTC
        values = dt.tz_convert("UTC").dt.tz_localize(None)
    arr = values.to_numpy() if hasattr(values, "to_numpy") else np.asarray(values)
    if arr.ndim != 1:
        raise DataValidationError(
            "label spans", f"{name} must be one-dimensional, got shape {arr.shape}"
        )
    kind = arr.dtype.kind
    if kind == "M":
        missing = np.isnat(arr)
        if missing.any():
            raise DataValidationError(
                "label spans", f"{name} is missing", row=int(missing.argmax())
            )
        return arr.astype("datetime64[ns]").view(np.int64), True
    if kind in "iu":
        return arr.astype(np.int64, copy=False), False
    if kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            raise DataValidationError("label spans", f"{name} is not finite", row=int(bad.argmax()))
        return arr.astype(np.float64, copy=False), False
    raise DataValidationError(
        "label spans",
        f"{name} has dtype {arr.dtype}; expected datetimes, integer bar indices or floats",
    )


def _label_spans(n: int, t0: Any, t1: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated (t0, t1) of n rows; without spans every row's label is known at its own bar."""
    if t0 is None and t1 is None:
        positions = np.arange(n, dtype=np.int64)
        return positions, positions
    if t0 is None or t1 is None:
        raise SplitConfigError("give both label-span ends t0 and t1, or neither")
    (start, start_is_time), (end, end_is_time) = _span_values(t0, "t0"), _span_values(t1, "t1")
    if start_is_time != end_is_time:
        raise DataValidationError("label spans", "t0 and t1 must both be datetimes or both numbers")
    for name, arr in (("t0", start), ("t1", end)):
        if arr.shape[0] != n:
            raise DataValidationError(
                "label spans",
                f"{name} has {arr.shape[0]} values but the data being split has {n} rows",
            )

    def shown(value: Any) -> str:
        return str(np.datetime64(int(value), "ns")) if start_is_time else str(value)

    backwards = end < start
    if backwards.any():
        row = int(backwards.argmax())
        raise DataValidationError(
            "label spans",
            "t1 is before t0",
            row=row,
            detail=f"t0={shown(start[row])}, t1={shown(end[row])}",
        )
    unsorted = np.diff(start) < 0
    if unsorted.any():
        row = int(unsorted.argmax()) + 1
        raise DataValidationError(
            "label spans",
            "t0 is not in time order (rows must be sorted by t0)",
            row=row,
            detail=f"t0={shown(start[row])} after {shown(start[row - 1])}",
        )
    return start, end


def _overlaps_block(t0: np.ndarray, t1: np.ndarray, rows: np.ndarray, a: int, b: int) -> np.ndarray:
    """True where `rows` (none inside a:b) have a label span overlapping a span of test rows a:b."""
    return np.where(rows < a, t1[rows] >= t0[a], t0[rows] <= t1[a:b].max())


# ---------------------------------------------------------------------------------------------------
# parameters


def _int_param(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise SplitConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _rows_for_fraction(fraction: float, n: int) -> int:
    # round first so 0.1 * 30 (= 3.0000000000000004) is 3 rows, not 4
    return math.ceil(round(fraction * n, 9))


def embargo_rows(embargo: int | float, n: int) -> int:
    """Embargo length in rows: an int is a number of bars, a float in [0, 1) that fraction of n (rounded up)."""
    if isinstance(embargo, float | np.floating):
        if not 0 <= embargo < 1:
            raise SplitConfigError(
                f"embargo {embargo!r}: a float embargo is a fraction of the rows and must be in [0, 1); "
                "pass an int for a number of bars"
            )
        return _rows_for_fraction(float(embargo), n)
    return _int_param(embargo, "embargo", 0)


# ---------------------------------------------------------------------------------------------------
# hold-out


def holdout_split(
    n_rows: int, holdout_fraction: float = 0.2, t0: Any = None, t1: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """(development rows, hold-out rows): the hold-out is the last ceil(holdout_fraction * n_rows) rows.

    Cross-validation only ever sees the development rows. With label spans, development rows whose
    label span overlaps a hold-out span (equivalently t1 >= t0 of the first hold-out row) are purged
    from the development set as well, since their labels are made of hold-out prices.
    """
    n_rows = _int_param(n_rows, "n_rows", 1)
    if not 0 <= holdout_fraction < 1:
        raise SplitConfigError(f"holdout_fraction must be in [0, 1), got {holdout_fraction!r}")
    start, end = _label_spans(n_rows, t0, t1)
    n_hold = _rows_for_fraction(holdout_fraction, n_rows)
    first = n_rows - n_hold
    if first < 1:
        raise SplitConfigError(
            f"a hold-out of {holdout_fraction:.0%} of {n_rows} rows leaves no development rows"
        )
    dev = np.arange(first, dtype=np.int64)
    hold = np.arange(first, n_rows, dtype=np.int64)
    if n_hold:
        dev = dev[~_overlaps_block(start, end, dev, first, n_rows)]
        if dev.size == 0:
            raise SplitConfigError(
                f"every development row's label span reaches into the hold-out (first hold-out row "
                f"{first}); use a smaller holdout_fraction or more rows"
            )
    return dev, hold


# ---------------------------------------------------------------------------------------------------
# schemes


def _checked_fold(
    k: int, train: np.ndarray, test: np.ndarray, n_purged: int, n_embargoed: int
) -> Fold:
    if train.size == 0:
        raise SplitConfigError(
            f"fold {k} (test rows {test[0]}..{test[-1]}) has no training rows left after purging "
            f"{n_purged} and embargoing {n_embargoed}; use fewer folds, a smaller embargo or more rows"
        )
    return Fold(k, train, test, n_purged, n_embargoed)


def purged_kfold(
    n: int, *, n_splits: int = 5, t0: Any, t1: Any, embargo: int | float = 0
) -> list[Fold]:
    """K contiguous test blocks in row order (sizes differ by at most one, first blocks larger); each
    fold trains on all other rows except those whose label span overlaps a test span (purged) and the
    `embargo` rows right after the test block (embargoed; int = bars, float in (0, 1) = fraction of n).
    """
    n = _int_param(n, "n", 1)
    n_splits = _int_param(n_splits, "n_splits", 2)
    if t0 is None or t1 is None:
        raise SplitConfigError("purged_kfold needs the label spans t0 and t1 of every row")
    if n_splits > n:
        raise SplitConfigError(f"purged_kfold: n_splits={n_splits} is more than the {n} rows")
    start, end = _label_spans(n, t0, t1)
    n_embargo = embargo_rows(embargo, n)
    sizes = np.full(n_splits, n // n_splits)
    sizes[: n % n_splits] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    rows = np.arange(n, dtype=np.int64)
    folds = []
    for k in range(n_splits):
        a, b = int(bounds[k]), int(bounds[k + 1])
        candidates = np.concatenate([rows[:a], rows[b:]])
        purged = _overlaps_block(start, end, candidates, a, b)
        embargoed = (candidates >= b) & (candidates < b + n_embargo) & ~purged
        train = candidates[~(purged | embargoed)]
        folds.append(_checked_fold(k, train, rows[a:b], int(purged.sum()), int(embargoed.sum())))
    return folds


def _walk_forward(
    n: int,
    t0: Any,
    t1: Any,
    *,
    train_size: int,
    test_size: int,
    step: int | None,
    gap: int,
    expanding: bool,
) -> list[Fold]:
    name = "expanding_walk_forward" if expanding else "rolling_walk_forward"
    n = _int_param(n, "n", 1)
    train_size = _int_param(train_size, "min_train" if expanding else "train_size", 1)
    test_size = _int_param(test_size, "test_size", 1)
    step = test_size if step is None else _int_param(step, "step", 1)
    gap = _int_param(gap, "gap", 0)
    start, end = _label_spans(n, t0, t1)
    room = n - train_size - gap - test_size
    if room < 0:
        raise SplitConfigError(
            f"{name}: {n} rows cannot hold a training window of {train_size}, a gap of {gap} and a "
            f"test block of {test_size} rows"
        )
    # anchored at the end so the most recent rows are always tested
    n_folds = room // step + 1
    test_starts = n - test_size - step * np.arange(n_folds - 1, -1, -1)
    folds = []
    for k, a in enumerate(test_starts.tolist()):
        train_end = a - gap
        candidates = np.arange(
            0 if expanding else train_end - train_size, train_end, dtype=np.int64
        )
        purged = _overlaps_block(start, end, candidates, a, a + test_size)
        test = np.arange(a, a + test_size, dtype=np.int64)
        folds.append(_checked_fold(k, candidates[~purged], test, int(purged.sum()), gap))
    return folds


def expanding_walk_forward(
    n: int,
    *,
    min_train: int,
    test_size: int,
    step: int | None = None,
    t0: Any = None,
    t1: Any = None,
    gap: int = 0,
) -> list[Fold]:
    """Walk-forward folds whose training window grows from the first row.

    Test blocks of `test_size` rows start every `step` rows (default test_size), placed so the last
    block ends at the last row and the first leaves at least `min_train` + `gap` rows before it.
    Training is every row before the block except the `gap` rows right before it and those whose
    label span overlaps a test span. Without t0/t1 nothing is purged: set `gap` to the label horizon.
    """
    return _walk_forward(
        n, t0, t1, train_size=min_train, test_size=test_size, step=step, gap=gap, expanding=True
    )


def rolling_walk_forward(
    n: int,
    *,
    train_size: int,
    test_size: int,
    step: int | None = None,
    t0: Any = None,
    t1: Any = None,
    gap: int = 0,
) -> list[Fold]:
    """Walk-forward folds training on the `train_size` rows that end `gap` rows before each test block
    (before purging, which can only shrink the window); test blocks as in expanding_walk_forward."""
    return _walk_forward(
        n, t0, t1, train_size=train_size, test_size=test_size, step=step, gap=gap, expanding=False
    )


_SCHEME_FUNCTIONS = {
    "expanding": expanding_walk_forward,
    "rolling": rolling_walk_forward,
    "purged_kfold": purged_kfold,
}


def make_splits(
    scheme: Scheme,
    n: int,
    t0: Any = None,
    t1: Any = None,
    *,
    holdout_fraction: float = 0.2,
    **params: Any,
) -> SplitPlan:
    """Hold out the latest rows, then split the development rows with `scheme` and `params`.

    The scheme runs on the development rows in order (positions, embargo and fractions count those
    rows), and its folds are mapped back to positions in the full dataset.
    """
    if scheme not in _SCHEME_FUNCTIONS:
        raise SplitConfigError(f"unknown split scheme {scheme!r}; expected one of {SCHEMES}")
    has_spans = t0 is not None or t1 is not None
    if has_spans:
        t0, t1 = _label_spans(n, t0, t1)
    dev, hold = holdout_split(n, holdout_fraction, t0, t1)
    spans = {"t0": t0[dev], "t1": t1[dev]} if has_spans else {"t0": None, "t1": None}
    folds = _SCHEME_FUNCTIONS[scheme](dev.size, **spans, **params)
    return SplitPlan(
        scheme=scheme,
        dev_idx=dev,
        holdout_idx=hold,
        n_holdout_purged=n - hold.size - dev.size,
        folds=[
            Fold(f.fold, dev[f.train_idx], dev[f.test_idx], f.n_purged, f.n_embargoed)
            for f in folds
        ],
    )


def fold_table(folds: Sequence[Fold], timestamps: Any) -> pl.DataFrame:
    """One row per fold: first/last timestamp of its training and test rows, and its row counts.

    `timestamps` holds one value per row of the dataset (e.g. the bar-open `timestamp` column); the
    start/end columns keep its dtype. A purged k-fold training set has a hole where its test block is.
    """
    ts = timestamps if isinstance(timestamps, pl.Series) else pl.Series("timestamp", timestamps)
    return pl.DataFrame(
        {
            "fold": pl.Series([f.fold for f in folds], dtype=pl.Int64),
            "train_start": ts.gather([int(f.train_idx[0]) for f in folds]),
            "train_end": ts.gather([int(f.train_idx[-1]) for f in folds]),
            "test_start": ts.gather([int(f.test_idx[0]) for f in folds]),
            "test_end": ts.gather([int(f.test_idx[-1]) for f in folds]),
            "n_train": pl.Series([f.train_idx.size for f in folds], dtype=pl.Int64),
            "n_test": pl.Series([f.test_idx.size for f in folds], dtype=pl.Int64),
            "n_purged": pl.Series([f.n_purged for f in folds], dtype=pl.Int64),
            "n_embargoed": pl.Series([f.n_embargoed for f in folds], dtype=pl.Int64),
        }
    )


HOLDOUT_FOLD = -1


def split_plan_frame(plan: SplitPlan, timestamps: Any) -> pl.DataFrame:
    """The plan as data: `fold_table` columns plus the exact row lists, one row per fold and a last
    row `fold = -1` for the hold-out (its `test_rows`; `train_rows` = every development row).

    This is what the `walk_forward_splits` asset stores: analysts read the table, training reads the
    rows back with `split_plan_from_frame`, so both always describe the same split.
    """
    ts = timestamps if isinstance(timestamps, pl.Series) else pl.Series("timestamp", timestamps)
    holdout = Fold(HOLDOUT_FOLD, plan.dev_idx, plan.holdout_idx, plan.n_holdout_purged, 0)
    folds = (
        [*plan.folds, holdout] if plan.holdout_idx.size and plan.dev_idx.size else list(plan.folds)
    )
    table = fold_table(folds, ts)
    return table.with_columns(
        pl.lit(plan.scheme).alias("scheme"),
        pl.Series(
            "train_rows", [f.train_idx.astype(np.int64) for f in folds], dtype=pl.List(pl.Int64)
        ),
        pl.Series(
            "test_rows", [f.test_idx.astype(np.int64) for f in folds], dtype=pl.List(pl.Int64)
        ),
    )


def split_plan_from_frame(frame: pl.DataFrame) -> SplitPlan:
    """Rebuild the SplitPlan stored by `split_plan_frame`."""
    rows = frame.to_dicts()
    folds = [
        Fold(
            r["fold"],
            np.asarray(r["train_rows"], dtype=np.int64),
            np.asarray(r["test_rows"], dtype=np.int64),
            r["n_purged"],
            r["n_embargoed"],
        )
        for r in rows
        if r["fold"] != HOLDOUT_FOLD
    ]
    hold = [r for r in rows if r["fold"] == HOLDOUT_FOLD]
    if hold:
        dev = np.asarray(hold[0]["train_rows"], dtype=np.int64)
    elif folds:
        dev = np.unique(np.concatenate([np.concatenate([f.train_idx, f.test_idx]) for f in folds]))
    else:  # too few rows for any fold (recorded by walk_forward_splits; training skips)
        dev = np.empty(0, dtype=np.int64)
    holdout = (
        np.asarray(hold[0]["test_rows"], dtype=np.int64) if hold else np.empty(0, dtype=np.int64)
    )
    return SplitPlan(
        scheme=str(rows[0]["scheme"]) if rows else "none",
        dev_idx=dev,
        holdout_idx=holdout,
        n_holdout_purged=int(hold[0]["n_purged"]) if hold else 0,
        folds=folds,
    )


# ---------------------------------------------------------------------------------------------------
# scikit-learn splitters


def _n_rows(X: Any) -> int:
    shape = getattr(X, "shape", None)
    return int(shape[0]) if shape is not None else len(X)


class PurgedKFold:
    """scikit-learn CV splitter running `purged_kfold`; t0/t1 are the label spans of X's rows in order."""

    def __init__(self, n_splits: int = 5, *, t0: Any, t1: Any, embargo: int | float = 0) -> None:
        self.n_splits = n_splits
        self.t0 = t0
        self.t1 = t1
        self.embargo = embargo

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        return self.n_splits

    def split(
        self, X: Any, y: Any = None, groups: Any = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        folds = purged_kfold(
            _n_rows(X), n_splits=self.n_splits, t0=self.t0, t1=self.t1, embargo=self.embargo
        )
        for f in folds:
            yield f.train_idx, f.test_idx

    def __repr__(self) -> str:
        return f"PurgedKFold(n_splits={self.n_splits}, embargo={self.embargo!r})"


class WalkForwardCV:
    """scikit-learn CV splitter over walk-forward folds: expanding when given `min_train`, rolling when
    given `train_size` (exactly one of them). t0/t1, if given, are the label spans of X's rows."""

    def __init__(
        self,
        *,
        test_size: int,
        min_train: int | None = None,
        train_size: int | None = None,
        step: int | None = None,
        gap: int = 0,
        t0: Any = None,
        t1: Any = None,
    ) -> None:
        if (min_train is None) == (train_size is None):
            raise SplitConfigError(
                "WalkForwardCV needs exactly one of min_train (expanding) or train_size (rolling)"
            )
        self.test_size = test_size
        self.min_train = min_train
        self.train_size = train_size
        self.step = step
        self.gap = gap
        self.t0 = t0
        self.t1 = t1

    def _folds(self, n: int) -> list[Fold]:
        common = {"test_size": self.test_size, "step": self.step, "gap": self.gap}
        if self.min_train is not None:
            return expanding_walk_forward(
                n, min_train=self.min_train, t0=self.t0, t1=self.t1, **common
            )
        return rolling_walk_forward(n, train_size=self.train_size, t0=self.t0, t1=self.t1, **common)

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        if X is None and self.t0 is None:
            raise SplitConfigError(
                "WalkForwardCV.get_n_splits needs X (or label spans) to count folds"
            )
        return len(
            self._folds(_n_rows(X) if X is not None else len(_span_values(self.t0, "t0")[0]))
        )

    def split(
        self, X: Any, y: Any = None, groups: Any = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for f in self._folds(_n_rows(X)):
            yield f.train_idx, f.test_idx

    def __repr__(self) -> str:
        window = (
            f"min_train={self.min_train}"
            if self.min_train is not None
            else f"train_size={self.train_size}"
        )
        return (
            f"WalkForwardCV({window}, test_size={self.test_size}, step={self.step}, gap={self.gap})"
        )
