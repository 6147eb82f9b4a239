"""Serving at bar close: one call scores only the newly closed bar(s) of every symbol of a
timeframe with each agent's champion and upserts `agent_preds` and `agent_signals` in one write
each. Models are loaded once per process (`BarCloseServer` keeps them, keyed by name and version).

Champions are read from the SQL version catalog (one query for every symbol), which follows the
registry on every promotion and rollback (lib/catalog.py): a manual promotion is served from the
next bar on. Features of the new bar are computed from the last `lookback` stored bars (and the
coarser timeframes' bars for the multi-timeframe snapshot): EMA-type features then equal the
full-history values to ~1e-12 (tested), cross-sectional ranks are taken across the symbols served.
The volatility forecast runs over the full stored closes (a linear filter: microseconds).
Not applied here: the regime gate and the ensemble (computed by their assets on whole histories);
the `signals` asset applies them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import sqlalchemy as sa

from quant_assets.lib.calendars import annualization_kind
from quant_assets.lib.datasets import EXCLUDED_FEATURES
from quant_assets.lib.execution import ExecutionRules
from quant_assets.lib.features import (
    compute_features,
    cross_sectional_ranks,
    multi_timeframe_snapshot,
)
from quant_assets.lib.performance import annualization
from quant_assets.lib.serving import agent_rows
from quant_assets.lib.signals import long_threshold, resolve_short_threshold
from quant_assets.lib.storage import frame_fingerprint
from quant_assets.lib.stores import TradingStore, agent_signals, agent_versions
from quant_assets.lib.timeframes import higher_timeframes
from quant_assets.lib.tracking import ALIAS_CHAMPION, registered_model_name
from quant_assets.lib.volatility import load_volatility_model, log_returns

#: stored bars the features of a new bar are computed from (EMA seeds decay to < 1e-12 by then)
DEFAULT_LOOKBACK = 400
TIMING_STEPS = ("load_models", "features", "score", "write")


@dataclass
class BarCloseReport:
    """What one bar close served: rows written, symbols served and skipped (with the reason),
    and the seconds spent in each step (TIMING_STEPS)."""

    timeframe: str
    rows: int = 0
    served: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMING_STEPS, 0.0))


def champions_from_catalog(store: TradingStore, names: Iterable[str]) -> dict[str, tuple[str, int]]:
    """registered name -> (champion version, agent_versions.id), from the catalog in one query."""
    names = list(names)
    with store.engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                agent_versions.c.registered_name,
                agent_versions.c.version,
                agent_versions.c.id,
                agent_versions.c.aliases,
            ).where(
                agent_versions.c.registered_name.in_(names),
                agent_versions.c.aliases.like(f"%{ALIAS_CHAMPION}%"),
            )
        ).all()
    return {
        name: (str(version), int(id_))
        for name, version, id_, aliases in rows
        if ALIAS_CHAMPION in aliases.split(",")
    }


def last_served(store: TradingStore, timeframe: str) -> dict[str, Any]:
    """symbol -> timestamp of its latest agent_signals row at `timeframe`."""
    with store.engine.connect() as connection:
        rows = connection.execute(
            sa.select(agent_signals.c.symbol, sa.func.max(agent_signals.c.timestamp))
            .where(agent_signals.c.timeframe == timeframe)
            .group_by(agent_signals.c.symbol)
        ).all()
    return {symbol: stamp for symbol, stamp in rows}


def _needed_snapshot_timeframes(feature_columns: list[str], timeframe: str) -> list[str]:
    return [
        tf
        for tf in higher_timeframes(timeframe)
        if any(c.startswith(f"tf{tf}_") for c in feature_columns)
    ]


class BarCloseServer:
    """Scores new bars for many symbols; keeps loaded models for the life of the process.

    `read_bars(symbol, timeframe)` returns the stored OHLCV of a partition (None when missing);
    by default the ohlcv asset's Parquet files under `artifacts_root`."""

    def __init__(
        self,
        tracker: Any,
        store: TradingStore,
        artifacts_root: str | Path | None = None,
        *,
        read_bars: Callable[[str, str], pl.DataFrame | None] | None = None,
        lookback: int = DEFAULT_LOOKBACK,
        horizon: int = 5,
        target_vol: float | None = 0.10,
    ) -> None:
        if read_bars is None and artifacts_root is None:
            raise ValueError("BarCloseServer needs artifacts_root or read_bars")
        self.tracker = tracker
        self.store = store
        self.root = Path(artifacts_root) if artifacts_root is not None else None
        self.read_bars = read_bars or self._read_stored_bars
        self.lookback = lookback
        self.horizon = horizon
        self.target_vol = target_vol
        self._models: dict[tuple[str, str], Any] = {}
        self._coarse: dict[tuple[str, str], tuple[Any, pl.DataFrame]] = {}
        self._ppy: dict[tuple[str, str], float] = {}

    def _read_stored_bars(self, symbol: str, timeframe: str) -> pl.DataFrame | None:
        assert self.root is not None
        path = self.root / "ohlcv" / symbol / f"{timeframe}.parquet"
        return pl.read_parquet(path) if path.exists() else None

    def _coarse_features(self, symbol: str, timeframe: str, bars: pl.DataFrame) -> pl.DataFrame:
        """Features of a coarser timeframe, recomputed only when a coarser bar was added (a 4h
        bar closes every fourth 1h close): kept per process like the models."""
        key = (symbol, timeframe, bars["timestamp"][-1], bars.height)
        cached = self._coarse.get((symbol, timeframe))
        if cached is None or cached[0] != key:
            cached = (key, compute_features(bars.tail(self.lookback), timeframe))
            self._coarse[(symbol, timeframe)] = cached
        return cached[1]

    def _periods_per_year(self, symbol: str, timeframe: str, bars: pl.DataFrame) -> float:
        key = (symbol, timeframe)
        if key not in self._ppy:  # the calendar of a symbol does not change between bars
            self._ppy[key] = annualization(timeframe, annualization_kind(bars, timeframe))
        return self._ppy[key]

    def _model(self, name: str, version: str, loader: Callable[[], Any]) -> Any:
        key = (name, version)
        if key not in self._models:
            self._models[key] = loader()
        return self._models[key]

    def serve(
        self, timeframe: str, symbols: Iterable[str], dagster_run_id: str = ""
    ) -> BarCloseReport:
        """Score every symbol's bars closed since its last served bar (only the latest bar when
        it was never served), write them in one upsert per table; returns the report."""
        report = BarCloseReport(timeframe)
        symbols = sorted(set(symbols))
        clock = time.perf_counter()

        direction = {s: registered_model_name(s, timeframe) for s in symbols}
        volatility = {s: registered_model_name(s, timeframe, "volatility") for s in symbols}
        champions = champions_from_catalog(self.store, [*direction.values(), *volatility.values()])
        models, vols = {}, {}
        for symbol in symbols:
            if direction[symbol] not in champions:
                report.skipped[symbol] = f"{direction[symbol]} has no champion"
                continue
            version, _ = champions[direction[symbol]]
            models[symbol] = self._model(
                direction[symbol],
                version,
                lambda n=direction[symbol], v=version: self.tracker.load_model(n, v),
            )
            if volatility[symbol] in champions:
                vversion, _ = champions[volatility[symbol]]
                vols[symbol] = self._model(
                    volatility[symbol],
                    vversion,
                    lambda n=volatility[symbol], v=vversion: load_volatility_model(
                        self.tracker, n, v
                    ),
                )
        report.timings["load_models"] = time.perf_counter() - clock
        clock = time.perf_counter()

        served_until = last_served(self.store, timeframe)
        new_rows: dict[str, pl.DataFrame] = {}
        bars_of: dict[str, pl.DataFrame] = {}
        for symbol, model in models.items():
            bars = self.read_bars(symbol, timeframe)
            if bars is None or bars.is_empty():
                report.skipped[symbol] = f"no stored {timeframe} bars"
                continue
            since = served_until.get(symbol)
            fresh = bars.filter(pl.col("timestamp") > since) if since is not None else bars.tail(1)
            if fresh.is_empty():
                report.skipped[symbol] = "no new bar since the last one served"
                continue
            tail = bars.tail(self.lookback + fresh.height)
            features = compute_features(tail, timeframe)
            higher = {}
            for tf in _needed_snapshot_timeframes(model.feature_columns, timeframe):
                coarse = self.read_bars(symbol, tf)
                if coarse is not None and not coarse.is_empty():
                    higher[tf] = self._coarse_features(symbol, tf, coarse)
            if higher:
                snapshot = multi_timeframe_snapshot(features.select("timestamp"), timeframe, higher)
                features = features.join(snapshot, on="timestamp", how="left")
            new_rows[symbol] = features.filter(
                pl.col("timestamp").is_in(fresh["timestamp"].implode())
            )
            bars_of[symbol] = bars
        ranks = cross_sectional_ranks(new_rows).drop("xs_n_symbols") if new_rows else pl.DataFrame()
        report.timings["features"] = time.perf_counter() - clock
        clock = time.perf_counter()

        scored_frames = []
        for symbol, rows in new_rows.items():
            model = models[symbol]
            bars = bars_of[symbol]
            frame = (
                rows.drop(EXCLUDED_FEATURES, strict=False)
                .join(ranks.filter(pl.col("symbol") == symbol).drop("symbol"), on="timestamp")
                .join(bars.select("timestamp", "close"), on="timestamp")
                .join(rows.select("timestamp", "atr_14"), on="timestamp")
                .drop_nulls(model.feature_columns)
            )
            if frame.is_empty():
                report.skipped[symbol] = "the new bar's features are incomplete (warm-up)"
                continue
            long_t = model.decision_threshold or long_threshold(1.75, 1.0)
            vol_id, sigma = None, np.full(frame.height, np.nan)
            if symbol in vols:
                forecast = vols[symbol].horizon_sigma(log_returns(bars["close"].to_numpy()))
                # the forecasts at the scored bars (timestamps are sorted and unique)
                at = np.searchsorted(bars["timestamp"].to_numpy(), frame["timestamp"].to_numpy())
                sigma = forecast[at]
                vol_id = champions[volatility[symbol]][1]
            scored_frames.append(
                frame.select("timestamp", "close", "atr_14").with_columns(
                    pl.Series("prob_up", model.predict_proba(frame)),
                    pl.Series("sigma", sigma, dtype=pl.Float64),
                    pl.lit(long_t).alias("threshold_long"),
                    pl.lit(
                        resolve_short_threshold(None, model.decision_threshold_short, long_t),
                        pl.Float64,
                    ).alias("threshold_short"),
                    pl.lit(self._periods_per_year(symbol, timeframe, bars)).alias(
                        "periods_per_year"
                    ),
                    pl.lit(symbol).alias("symbol"),
                    pl.lit(timeframe).alias("timeframe"),
                    pl.lit(model.name).alias("model_name"),
                    pl.lit(model.version).alias("model_version"),
                    pl.lit(model.run_id).alias("mlflow_run_id"),
                    pl.lit(champions[direction[symbol]][1]).alias("agent_version_id"),
                    pl.lit(vol_id, pl.Int64).alias("vol_version_id"),
                    pl.lit(dagster_run_id).alias("dagster_run_id"),
                    # the stored bar scored (a rewritten bar gets a new data version)
                    pl.lit(frame_fingerprint(bars.tail(frame.height))).alias("data_version"),
                    pl.lit(self.horizon).alias("horizon"),
                )
            )
            report.served.append(symbol)
        preds = signals = None
        if scored_frames:
            # one execution pass over every symbol's new bars (per-row thresholds)
            rules = ExecutionRules(
                threshold_long=0.5, horizon=self.horizon, target_vol=self.target_vol
            )
            preds, signals = agent_rows(pl.concat(scored_frames, how="diagonal_relaxed"), rules)
        report.timings["score"] = time.perf_counter() - clock
        clock = time.perf_counter()
        if signals is not None:
            self.store.write_predictions(preds)
            report.rows = self.store.write_signals(signals)
        report.timings["write"] = time.perf_counter() - clock
        return report
