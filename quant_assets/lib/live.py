"""Signal quality measured the same way at training (out-of-fold predictions) and live (the
champion's signals against realized labels), so the retrain rules can compare the two."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from numbers import Real
from typing import Any

import numpy as np
import polars as pl

from quant_assets.lib.errors import DataValidationError
from quant_assets.lib.performance import sharpe_ratio, win_rate


def _floats(values: Any, name: str, where: str) -> np.ndarray:
    if isinstance(values, pl.Series):
        values = values.cast(pl.Float64).fill_null(np.nan).to_numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise DataValidationError(where, f"{name} must be 1-d, got shape {array.shape}")
    return array


def signal_quality(side: Any, realized_ret: Any, periods_per_year: float) -> dict[str, float]:
    """hit_rate, sharpe and n_trades of the bars with side != 0, each bar's result being
    side * realized_ret (ret is the long-side price return of the label, so a short earns -ret).

    hit_rate: share of signalled bars with side * ret > 0. sharpe: mean / std (ddof=1) of side * ret
    over the signalled bars x sqrt(periods_per_year), NaN with fewer than 2 of them or no spread.
    Every signalled bar counts, overlapping ones included, the same at training and live. Both
    metrics are NaN without signalled bars.
    """
    where = "signal_quality"
    if isinstance(periods_per_year, bool) or not isinstance(periods_per_year, Real):
        raise ValueError(
            "periods_per_year must be the number of bars a year, e.g. "
            f"performance.annualization(timeframe, calendar_kind), got {periods_per_year!r}"
        )
    s = _floats(side, "side", where)
    r = _floats(realized_ret, "realized_ret", where)
    if s.shape != r.shape:
        raise DataValidationError(where, f"side has {s.size} values but realized_ret {r.size}")
    bad_side = ~np.isin(s, (-1.0, 0.0, 1.0))
    if bad_side.any():
        row = int(bad_side.argmax())
        raise DataValidationError(where, "side must be -1, 0 or +1", row=row, detail=f"{s[row]}")
    traded = s != 0
    pnl = s[traded] * r[traded]
    bad_ret = ~np.isfinite(pnl)
    if bad_ret.any():
        row = int(np.flatnonzero(traded)[bad_ret.argmax()])
        raise DataValidationError(
            where, "realized_ret must be finite on signalled bars", row=row, detail=f"{r[row]}"
        )
    sharpe = sharpe_ratio(pnl, periods_per_year)
    return {
        "hit_rate": win_rate(pnl),
        # zero spread gives +-inf in sharpe_ratio; a flat record is no evidence either way
        "sharpe": sharpe if math.isfinite(sharpe) else math.nan,
        "n_trades": int(pnl.size),
    }


def training_signal_quality(
    oof_prob: Any, oof_ret: Any, threshold: float, periods_per_year: float
) -> dict[str, float]:
    """`signal_quality` of going long on every out-of-fold row with prob >= threshold (the rule of
    make_signals without shorts). oof_ret: each row's label ret, e.g. dataset.frame["ret"] gathered
    at TrainingResult.oof["row"]. A threshold chosen on the same OOF rows (choose_long_threshold)
    makes these numbers somewhat optimistic."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    prob = _floats(oof_prob, "oof_prob", "training_signal_quality")
    if np.isnan(prob).any():
        row = int(np.isnan(prob).argmax())
        raise DataValidationError("training_signal_quality", "oof_prob is NaN", row=row)
    return signal_quality((prob >= threshold).astype(np.float64), oof_ret, periods_per_year)


def _utc_frame(
    frame: pl.DataFrame, columns: tuple[str, ...], times: tuple[str, ...], where: str
) -> pl.DataFrame:
    """`columns` of `frame`, its time columns in UTC microseconds, after checking they exist, that
    the time columns carry a time zone and that timestamps are unique."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataValidationError(
            where, f"missing column(s) {', '.join(missing)}", detail=f"has {frame.columns}"
        )
    for name in times:
        dtype = frame.schema[name]
        if not isinstance(dtype, pl.Datetime) or dtype.time_zone is None:
            raise DataValidationError(
                where, f"column {name} must be a time-zone aware Datetime, not {dtype}"
            )
    repeated = frame.get_column("timestamp").is_duplicated()
    if repeated.any():
        raise DataValidationError(
            where,
            "timestamps must be unique (one symbol and timeframe, one model)",
            row=int(repeated.arg_true()[0]),
        )
    return frame.select(
        *(pl.col(name).dt.convert_time_zone("UTC").dt.cast_time_unit("us") for name in times),
        *(c for c in columns if c not in times),
    )


def live_signal_quality(
    predictions: pl.DataFrame, labels: pl.DataFrame, now: datetime, periods_per_year: float
) -> dict[str, float]:
    """`signal_quality` of the champion's live signals against the labels realized by `now`.

    predictions: timestamp, side (the agent_signals rows of one symbol and timeframe, filtered on
    the champion's model_name and model_version; side as make_signals makes it). labels: timestamp, ret, t1 (the labels asset: ret the
    long-side return, t1 the close time of the exit bar). A label counts only once realized, t1 <=
    now; a later t1 (or none yet) was not knowable at `now`. Adds n_realized, the predictions with a
    realized label, flat ones included; n_trades counts the signalled ones among them.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"live_signal_quality: now must be timezone-aware, got {now!r}")
    preds = _utc_frame(
        predictions, ("timestamp", "side"), ("timestamp",), "live_signal_quality(predictions)"
    )
    realized = _utc_frame(
        labels, ("timestamp", "ret", "t1"), ("timestamp", "t1"), "live_signal_quality(labels)"
    ).filter(pl.col("t1") <= now.astimezone(UTC), pl.col("ret").is_not_null())
    joined = preds.join(realized, on="timestamp", how="inner")
    quality = signal_quality(joined.get_column("side"), joined.get_column("ret"), periods_per_year)
    return quality | {"n_realized": joined.height}
