"""Validation splits: hand-worked folds, a brute-force property test of purging and embargo, the
scikit-learn splitters and the fold table."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score, cross_validate

from quant_assets.lib.errors import DataValidationError, SplitConfigError
from quant_assets.lib.splits import (
    PurgedKFold,
    SplitConfig,
    WalkForwardCV,
    embargo_rows,
    expanding_walk_forward,
    fold_table,
    holdout_split,
    make_splits,
    purged_kfold,
    rolling_walk_forward,
)

# Ten bars whose labels resolve two bars later (the last ones at the last bar): row i spans
# [i, min(i + 2, 9)].
T0 = np.arange(10)
T1 = np.minimum(T0 + 2, 9)


# ---------------------------------------------------------------------------------------------------
# hand-worked examples


def test_purged_kfold_hand_worked_fold() -> None:
    # 5 folds of 2 rows; fold 2 tests rows 4, 5 with spans [4, 6] and [5, 7].
    # Before it: row 2 [2, 4] touches [4, 6] at 4 (closed intervals: purged), row 3 [3, 5] overlaps;
    # rows 0 [0, 2] and 1 [1, 3] end before 4 and stay.
    # After it: rows 6 [6, 8] and 7 [7, 9] start at or before 7 = max test t1 (purged); 8, 9 stay.
    folds = purged_kfold(10, n_splits=5, t0=T0, t1=T1, embargo=0)
    f = folds[2]
    assert f.test_idx.tolist() == [4, 5]
    assert f.train_idx.tolist() == [0, 1, 8, 9]
    assert (f.n_purged, f.n_embargoed) == (4, 0)
    # an embargo of 3 bars covers rows 6, 7, 8; 6 and 7 are already purged, so only 8 counts
    f = purged_kfold(10, n_splits=5, t0=T0, t1=T1, embargo=3)[2]
    assert f.train_idx.tolist() == [0, 1, 9]
    assert (f.n_purged, f.n_embargoed) == (4, 1)
    # the first block has nothing before it; the last has no room for an embargo
    # the first block (rows 0, 1) has nothing before it: rows 2, 3 purged (t0 <= 3), and of the
    # embargo rows 2, 3, 4 only 4 is left to embargo; the last (rows 8, 9): rows 6, 7 purged
    first, *_, last = purged_kfold(10, n_splits=5, t0=T0, t1=T1, embargo=3)
    assert first.train_idx.tolist() == [5, 6, 7, 8, 9]
    assert (first.n_purged, first.n_embargoed) == (2, 1)
    assert last.train_idx.tolist() == [0, 1, 2, 3, 4, 5]


def test_purged_kfold_blocks_cover_rows_in_order_first_blocks_larger() -> None:
    folds = purged_kfold(11, n_splits=3, t0=np.arange(11), t1=np.arange(11))
    assert [f.test_idx.tolist() for f in folds] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    # zero-length spans overlap only themselves: nothing is purged
    assert [f.n_purged for f in folds] == [0, 0, 0]


def test_holdout_purges_development_rows_labelled_with_holdout_prices() -> None:
    # hold-out = last 20% = rows 8, 9; row 6 [6, 8] and row 7 [7, 9] end at or after t0 = 8
    dev, hold = holdout_split(10, 0.2, T0, T1)
    assert hold.tolist() == [8, 9]
    assert dev.tolist() == [0, 1, 2, 3, 4, 5]
    dev, hold = holdout_split(10, 0.2)
    assert dev.tolist() == list(range(8))
    # 0.1 * 30 is 3.0000000000000004 in floating point: still 3 rows
    assert holdout_split(30, 0.1)[1].tolist() == [27, 28, 29]
    assert holdout_split(10, 0.0)[1].size == 0


def test_expanding_walk_forward_hand_worked() -> None:
    # room = 10 - 4 - 0 - 2 = 4 rows, step 2: 3 folds, test blocks at 4, 6, 8 (the last ends at row 9)
    folds = expanding_walk_forward(10, min_train=4, test_size=2)
    assert [f.test_idx.tolist() for f in folds] == [[4, 5], [6, 7], [8, 9]]
    assert [f.train_idx.tolist() for f in folds] == [[0, 1, 2, 3], list(range(6)), list(range(8))]
    # with spans, rows whose label ends at or after the test start are purged: t1 >= 4 -> rows 2, 3
    folds = expanding_walk_forward(10, min_train=4, test_size=2, t0=T0, t1=T1)
    assert [f.train_idx.tolist() for f in folds] == [[0, 1], [0, 1, 2, 3], list(range(6))]
    assert [f.n_purged for f in folds] == [2, 2, 2]


def test_rolling_walk_forward_hand_worked_with_gap() -> None:
    # room = 10 - 3 - 1 - 2 = 4: test blocks at 4, 6, 8; training is the 3 rows ending 1 row before
    folds = rolling_walk_forward(10, train_size=3, test_size=2, gap=1)
    assert [f.train_idx.tolist() for f in folds] == [[0, 1, 2], [2, 3, 4], [4, 5, 6]]
    assert [f.n_embargoed for f in folds] == [1, 1, 1]
    # step 3, test 2: room 4 -> 2 folds anchored at the end: tests at 5 and 8
    folds = rolling_walk_forward(10, train_size=3, test_size=2, step=3)
    assert [f.test_idx.tolist() for f in folds] == [[5, 6], [8, 9]]


def test_embargo_rows_counts_bars_or_fraction_of_rows() -> None:
    assert embargo_rows(7, 100) == 7
    assert embargo_rows(0.1, 30) == 3
    assert embargo_rows(0.01, 50) == 1  # rounded up: any positive fraction embargoes something
    assert embargo_rows(0.0, 50) == 0
    with pytest.raises(SplitConfigError, match="fraction"):
        embargo_rows(1.5, 50)
    with pytest.raises(SplitConfigError, match="embargo"):
        embargo_rows(-1, 50)


def test_datetime_spans_split_like_their_integer_minutes() -> None:
    rng = np.random.default_rng(3)
    minutes = np.cumsum(rng.integers(1, 4, 200))
    hold = rng.integers(0, 10, 200)
    t1_min = minutes[np.minimum(np.arange(200) + hold, 199)]
    base = np.datetime64("2024-01-01T00:00", "us")
    t0_np, t1_np = base + minutes * np.timedelta64(1, "m"), base + t1_min * np.timedelta64(1, "m")
    expected = purged_kfold(200, n_splits=4, t0=minutes, t1=t1_min, embargo=5)
    as_polars = (
        pl.Series(t0_np).dt.replace_time_zone("UTC"),
        pl.Series(t1_np).dt.replace_time_zone("UTC"),
    )
    as_pandas = (pd.Series(t0_np).dt.tz_localize("UTC"), pd.Series(t1_np).dt.tz_localize("UTC"))
    for t0, t1 in ((t0_np, t1_np), as_polars, as_pandas):
        got = purged_kfold(200, n_splits=4, t0=t0, t1=t1, embargo=5)
        for g, e in zip(got, expected, strict=True):
            assert np.array_equal(g.train_idx, e.train_idx)


@pytest.mark.parametrize(
    ("t0", "t1", "match"),
    [
        (np.arange(5), np.array([0, 1, 1, 3, 4]), "t1 is before t0 at row 2"),
        (np.array([0, 1, 3, 2, 4]), np.array([0, 1, 3, 3, 4]), "not in time order .*at row 3"),
        (np.arange(4), np.arange(4), "t0 has 4 values but the data being split has 5 rows"),
        (np.array([0.0, 1, np.nan, 3, 4]), np.arange(5.0), "t0 is not finite at row 2"),
    ],
)
def test_bad_label_spans_name_the_problem_and_row(t0, t1, match) -> None:
    with pytest.raises(DataValidationError, match=match):
        purged_kfold(5, n_splits=2, t0=t0, t1=t1)


def test_impossible_parameters_raise_split_config_error() -> None:
    with pytest.raises(SplitConfigError, match="n_splits=6 is more than the 5 rows"):
        purged_kfold(5, n_splits=6, t0=np.arange(5), t1=np.arange(5))
    with pytest.raises(SplitConfigError, match="needs the label spans"):
        purged_kfold(5, n_splits=2, t0=None, t1=None)
    with pytest.raises(SplitConfigError, match="cannot hold a training window of 8"):
        expanding_walk_forward(10, min_train=8, test_size=3)
    # every training row of the rolling window overlaps the test block's spans
    with pytest.raises(SplitConfigError, match="fold 0 .* no training rows left"):
        rolling_walk_forward(10, train_size=2, test_size=2, t0=T0, t1=T1)
    with pytest.raises(SplitConfigError, match="unknown split scheme"):
        make_splits("random", 10)  # type: ignore[arg-type]
    with pytest.raises(SplitConfigError, match="needs min_train and test_size"):
        SplitConfig(scheme="expanding").scheme_params()
    with pytest.raises(SplitConfigError, match="unknown split scheme 'walk'"):
        SplitConfig(scheme="walk")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# the property: folds equal a brute-force reading of the rules, on random spans and parameters


def _overlap_matrix(t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """O(n^2) closed-interval overlap of every pair of label spans."""
    return (t0[:, None] <= t1[None, :]) & (t0[None, :] <= t1[:, None])


def _reference_test_blocks(scheme: str, n_dev: int, p: dict) -> list[range] | None:
    """Test blocks in development positions, from the documented rules; None if none fit."""
    if scheme == "purged_kfold":
        if p["n_splits"] > n_dev:
            return None
        return [range(b[0], b[-1] + 1) for b in np.array_split(np.arange(n_dev), p["n_splits"])]
    window = p["min_train"] if scheme == "expanding" else p["train_size"]
    step = p["step"] or p["test_size"]
    starts, start = [], n_dev - p["test_size"]
    while start - p["gap"] >= window:
        starts.append(start)
        start -= step
    return [range(s, s + p["test_size"]) for s in reversed(starts)] or None


@st.composite
def split_problems(draw):
    n = draw(st.integers(20, 400))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    increments = {
        "regular": np.ones(n, dtype=np.int64),
        "gaps": rng.choice([1, 1, 1, 2, 7], n),
        "ties": rng.choice([0, 1, 1, 3], n),
    }[draw(st.sampled_from(["regular", "gaps", "ties"]))]
    t0 = np.cumsum(increments) - increments[0]
    hold = rng.integers(0, draw(st.integers(0, 15)) + 1, n)  # holding periods of 0..15 bars
    # outcome known `hold` bars later (capped at the last bar), or `hold` time units later
    in_bars = draw(st.booleans())
    t1 = t0[np.minimum(np.arange(n) + hold, n - 1)] if in_bars else t0 + hold
    scheme = draw(st.sampled_from(["expanding", "rolling", "purged_kfold"]))
    if scheme == "purged_kfold":
        params = {
            "n_splits": draw(st.integers(2, 8)),
            "embargo": draw(st.one_of(st.integers(0, 12), st.sampled_from([0.01, 0.05, 0.1]))),
        }
    else:
        test_size = draw(st.integers(max(1, n // 20), n // 4))
        params = {
            "min_train" if scheme == "expanding" else "train_size": draw(st.integers(1, n // 2)),
            "test_size": test_size,
            "step": draw(st.one_of(st.none(), st.integers(max(1, test_size // 2), 2 * test_size))),
            "gap": draw(st.integers(0, 5)),
        }
    holdout = draw(st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.3]))
    return n, t0, t1, scheme, params, holdout


@settings(max_examples=150, deadline=None, derandomize=True)
@given(split_problems())
def test_folds_equal_brute_force_purge_and_embargo(problem) -> None:
    n, t0, t1, scheme, params, holdout_fraction = problem
    overlap = _overlap_matrix(t0, t1)

    n_hold = math.ceil(Fraction(str(holdout_fraction)) * n)
    hold = np.arange(n - n_hold, n)
    dev = np.array([i for i in range(n - n_hold) if not overlap[i, hold].any()], dtype=np.int64)

    blocks = _reference_test_blocks(scheme, dev.size, params) if dev.size else None
    embargo = params.get("embargo", 0)
    n_embargo = (
        math.ceil(Fraction(str(embargo)) * dev.size) if isinstance(embargo, float) else embargo
    )
    expected = []
    for block in blocks or []:
        test = dev[list(block)]
        if scheme == "purged_kfold":
            candidates = [q for q in range(dev.size) if q not in block]
        else:
            end = block.start - params["gap"]
            begin = 0 if scheme == "expanding" else end - params["train_size"]
            candidates = list(range(begin, end))
        purged = {q for q in candidates if overlap[dev[q], test].any()}
        embargoed = {
            q for q in candidates if block.stop <= q < block.stop + n_embargo and q not in purged
        }
        train = [dev[q] for q in candidates if q not in purged and q not in embargoed]
        n_pos_dropped = len(embargoed) if scheme == "purged_kfold" else params["gap"]
        expected.append((train, test.tolist(), len(purged), n_pos_dropped))

    if not expected or any(not train for train, *_ in expected):
        with pytest.raises(SplitConfigError):
            make_splits(scheme, n, t0, t1, holdout_fraction=holdout_fraction, **params)
        return
    plan = make_splits(scheme, n, t0, t1, holdout_fraction=holdout_fraction, **params)

    assert plan.holdout_idx.tolist() == hold.tolist()
    assert plan.dev_idx.tolist() == dev.tolist()
    assert len(plan.folds) == len(expected)
    position_in_dev = np.full(n, -1)
    position_in_dev[dev] = np.arange(dev.size)
    for fold, (train, test, n_purged, n_pos_dropped) in zip(plan.folds, expected, strict=True):
        tr, te = fold.train_idx, fold.test_idx
        # purging is exact, not over-eager: the result IS the brute-force expectation
        assert tr.tolist() == train
        assert te.tolist() == test
        assert (fold.n_purged, fold.n_embargoed) == (n_purged, n_pos_dropped)
        # and the rules, checked directly on the output
        assert np.intersect1d(tr, te).size == 0
        assert not overlap[np.ix_(tr, te)].any()
        last_test = position_in_dev[te[-1]]
        train_pos = position_in_dev[tr]
        assert not ((train_pos > last_test) & (train_pos <= last_test + n_embargo)).any()
        assert np.array_equal(position_in_dev[te], np.arange(position_in_dev[te[0]], last_test + 1))
        assert np.all(np.diff(tr) > 0)
        assert np.isin(
            np.concatenate([tr, te]), dev
        ).all()  # never a hold-out or hold-out-purged row
        if scheme != "purged_kfold":
            assert tr.max() < te.min()


# ---------------------------------------------------------------------------------------------------
# config, fold table, scikit-learn


def test_split_config_drives_make_splits() -> None:
    config = SplitConfig(scheme="rolling", holdout_fraction=0.2, train_size=3, test_size=2, gap=1)
    assert config.scheme_params() == {"train_size": 3, "test_size": 2, "step": None, "gap": 1}
    plan = make_splits(
        config.scheme, 12, holdout_fraction=config.holdout_fraction, **config.scheme_params()
    )
    # hold-out = last 3 of 12 rows (ceil 2.4); development rows 0..8 split like a 9-row dataset
    assert plan.holdout_idx.tolist() == [9, 10, 11]
    assert [f.test_idx.tolist() for f in plan.folds] == [[5, 6], [7, 8]]
    assert SplitConfig().scheme_params() == {"n_splits": 5, "embargo": 0}


def test_fold_table_reports_each_fold() -> None:
    timestamps = pl.datetime_range(
        pl.datetime(2024, 1, 1, time_zone="UTC"),
        pl.datetime(2024, 1, 1, 9, time_zone="UTC"),
        "1h",
        eager=True,
    )
    folds = purged_kfold(10, n_splits=5, t0=T0, t1=T1, embargo=3)
    table = fold_table(folds, timestamps)
    assert table.columns == [
        "fold", "train_start", "train_end", "test_start", "test_end",
        "n_train", "n_test", "n_purged", "n_embargoed",
    ]  # fmt: skip
    assert table.schema["train_start"] == pl.Datetime("us", "UTC")
    row = table.row(2, named=True)  # train rows 0, 1, 9; test rows 4, 5 (hand-worked above)
    assert row["train_start"].hour == 0 and row["train_end"].hour == 9
    assert (row["test_start"].hour, row["test_end"].hour) == (4, 5)
    assert (row["n_train"], row["n_test"], row["n_purged"], row["n_embargoed"]) == (3, 2, 4, 1)


def _classification_data(n: int = 600):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(n, 3))
    y = (X[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    t0 = np.arange(n)
    t1 = np.minimum(t0 + rng.integers(0, 12, n), n - 1)
    return X, y, t0, t1


def test_purged_kfold_is_a_scikit_learn_splitter() -> None:
    X, y, t0, t1 = _classification_data()
    cv = PurgedKFold(n_splits=5, t0=pd.Series(t0), t1=pd.Series(t1), embargo=0.02)
    result = cross_validate(LogisticRegression(), X, y, cv=cv, return_indices=True)
    folds = purged_kfold(len(X), n_splits=5, t0=t0, t1=t1, embargo=0.02)
    for train, test, fold in zip(
        result["indices"]["train"], result["indices"]["test"], folds, strict=True
    ):
        assert np.array_equal(train, fold.train_idx) and np.array_equal(test, fold.test_idx)
    scores = cross_val_score(LogisticRegression(), X, y, cv=cv)
    assert (
        scores.shape == (5,) and (scores > 0.7).all()
    )  # the signal is strong; a leak-free CV still sees it
    assert cv.get_n_splits() == 5
    with pytest.raises(
        DataValidationError, match="has 600 values but the data being split has 500"
    ):
        next(cv.split(X[:500]))


def test_walk_forward_cv_is_a_scikit_learn_splitter() -> None:
    X, y, t0, t1 = _classification_data()
    cv = WalkForwardCV(min_train=200, test_size=100, t0=t0, t1=t1)
    assert cv.get_n_splits(X) == 4 and cv.get_n_splits() == 4
    result = cross_validate(LogisticRegression(), X, y, cv=cv, return_indices=True)
    tests = [t.tolist() for t in result["indices"]["test"]]
    assert tests == [list(range(s, s + 100)) for s in (200, 300, 400, 500)]
    assert all(
        tr.max() < te.min()
        for tr, te in zip(result["indices"]["train"], result["indices"]["test"], strict=True)
    )
    rolling = WalkForwardCV(train_size=150, test_size=100, step=200)
    assert [len(tr) for tr, _ in rolling.split(X)] == [150, 150]
    with pytest.raises(SplitConfigError, match="exactly one of min_train"):
        WalkForwardCV(test_size=10)


def test_split_plan_round_trips_through_its_frame() -> None:
    from quant_assets.lib.splits import HOLDOUT_FOLD, split_plan_frame, split_plan_from_frame

    n = 200
    t0 = np.arange(n)
    t1 = t0 + 4
    plan = make_splits("purged_kfold", n, t0, t1, holdout_fraction=0.2, n_splits=4, embargo=3)
    ts = pl.Series(
        "timestamp",
        (np.datetime64("2024-01-01T00:00") + np.arange(n) * np.timedelta64(1, "h")).astype(
            "datetime64[us]"
        ),
    )
    frame = split_plan_frame(plan, ts)
    assert frame["fold"].to_list() == [0, 1, 2, 3, HOLDOUT_FOLD]
    hold = frame.filter(pl.col("fold") == HOLDOUT_FOLD).row(0, named=True)
    assert hold["n_test"] == 40 and hold["test_start"] == ts[160]
    back = split_plan_from_frame(frame)
    np.testing.assert_array_equal(back.dev_idx, plan.dev_idx)
    np.testing.assert_array_equal(back.holdout_idx, plan.holdout_idx)
    assert back.n_holdout_purged == plan.n_holdout_purged == 4
    for a, b in zip(back.folds, plan.folds, strict=True):
        np.testing.assert_array_equal(a.train_idx, b.train_idx)
        np.testing.assert_array_equal(a.test_idx, b.test_idx)
        assert (a.fold, a.n_purged, a.n_embargoed) == (b.fold, b.n_purged, b.n_embargoed)


def test_a_plan_without_folds_round_trips_to_an_empty_plan() -> None:
    """Too few rows for any fold: walk_forward_splits stores an empty table; reading it back gives
    a plan with no development rows (training then skips), not a crash."""
    import polars as pl

    from quant_assets.lib.splits import split_plan_from_frame

    plan = split_plan_from_frame(pl.DataFrame())
    assert plan.dev_idx.size == 0 and plan.holdout_idx.size == 0 and plan.folds == []
