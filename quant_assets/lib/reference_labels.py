"""REFERENCE ONLY, not for production: a slow per-event pandas triple-barrier labeller that tests and
benchmarks check `quant_assets.lib.labels.triple_barrier_labels` against."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from quant_assets.lib.timeframes import timeframe_delta


def reference_triple_barrier_labels(
    timestamps: np.ndarray,
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    atr: np.ndarray,
    *,
    timeframe: str,
    horizon: int = 5,
    tp_mult: float = 1.75,
    sl_mult: float = 1.0,
    side: np.ndarray | None = None,
    events: Iterable[int] | None = None,
) -> pd.DataFrame:
    """Reference implementation (one Python iteration per event, López de Prado style): the same
    conventions as `triple_barrier_labels`, written the obvious way so it is easy to trust.

    Labels the row positions in `events` (all rows by default); returns a pandas frame with one row
    per event and the columns timestamp, label, t1, barrier, exit_price, ret, holding_bars (None or
    NaN/NaT where unlabelled). Too slow for real use: ~10^4 events per second at best.
    """
    bars = pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "atr": atr},
        index=pd.DatetimeIndex(np.asarray(timestamps).astype("datetime64[us]"), tz="UTC"),
    )
    sides = np.ones(len(bars)) if side is None else np.nan_to_num(np.asarray(side, float))
    step = timeframe_delta(timeframe)
    rows = []
    for i in range(len(bars)) if events is None else events:
        out = {"timestamp": bars.index[i], "label": None, "t1": pd.NaT, "barrier": None}
        out |= {"exit_price": np.nan, "ret": np.nan, "holding_bars": None}
        entry, width = bars["close"].iloc[i], bars["atr"].iloc[i]
        if i + horizon >= len(bars) or sides[i] == 0 or np.isnan(entry) or np.isnan(width):
            rows.append(out)
            continue
        path = bars.iloc[i + 1 : i + horizon + 1]
        if sides[i] > 0:
            tp_level, sl_level = entry + tp_mult * width, entry - sl_mult * width
            tp_hit, sl_hit = path["high"] >= tp_level, path["low"] <= sl_level
        else:
            tp_level, sl_level = entry - tp_mult * width, entry + sl_mult * width
            tp_hit, sl_hit = path["low"] <= tp_level, path["high"] >= sl_level
        first_tp = int(np.argmax(tp_hit.to_numpy())) if tp_hit.any() else horizon
        first_sl = int(np.argmax(sl_hit.to_numpy())) if sl_hit.any() else horizon
        if first_sl < horizon and first_sl <= first_tp:
            # stop-loss first, or in the same bar as the take-profit (order inside a bar unknown)
            barrier, label, exit_bar, level = "sl", -1, first_sl, sl_level
        elif first_tp < horizon:
            barrier, label, exit_bar, level = "tp", 1, first_tp, tp_level
        else:
            barrier, label, exit_bar, level = "vertical", 0, horizon - 1, None
        bar = path.iloc[exit_bar]
        if level is None:
            exit_price = bar["close"]
        else:
            # a bar that opened beyond the barrier fills at its open
            moved_up = (barrier == "tp") == (sides[i] > 0)
            gapped = bar["open"] >= level if moved_up else bar["open"] <= level
            exit_price = bar["open"] if gapped else level
        out |= {
            "label": label,
            "t1": path.index[exit_bar] + step,
            "barrier": barrier,
            "exit_price": exit_price,
            "ret": exit_price / entry - 1.0,
            "holding_bars": exit_bar + 1,
        }
        rows.append(out)
    columns = ["timestamp", "label", "t1", "barrier", "exit_price", "ret", "holding_bars"]
    return pd.DataFrame(rows, columns=columns).astype({"label": "Int8", "holding_bars": "Int32"})
