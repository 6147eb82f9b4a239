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
TIMING_STEPS = ("load_models", "features", "score", "execute", "write")
#: the execution agent's input across symbols (lib/execution.py, lib/serving.py)
EXECUTION_SCHEMA = {
    "timestamp": pl.Datetime("us", "UTC"),
    "close": pl.Float64,
    "atr_14": pl.Float64,
    "prob_up": pl.Float64,
    "sigma": pl.Float64,
    "threshold_long": pl.Float64,
    "threshold_short": pl.Float64,
    "periods_per_year": pl.Float64,
    "symbol": pl.String,
    "timeframe": pl.String,
    "model_name": pl.String,
    "model_version": pl.String,
    "mlflow_run_id": pl.String,
    "agent_version_id": pl.Int64,
    "vol_version_id": pl.Int64,
    "dagster_run_id": pl.String,
    "data_version": pl.String,
    "horizon": pl.Int64,
}
EXECUTION_INPUTS = tuple(EXECUTION_SCHEMA)


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
        inputs: dict[str, pl.DataFrame] = {}
        if new_rows:
            # model inputs of every symbol in one frame: features, snapshot and the new bars'
            # cross-sectional ranks, joined once, then split by symbol
            ranks = cross_sectional_ranks(new_rows).drop("xs_n_symbols")
            stacked = pl.concat(
                [f.with_columns(pl.lit(s).alias("symbol")) for s, f in new_rows.items()],
                how="diagonal_relaxed",
            ).join(ranks, on=["symbol", "timestamp"], how="left")
            inputs = {k[0]: v for k, v in stacked.partition_by("symbol", as_dict=True).items()}
        report.timings["features"] = time.perf_counter() - clock
        clock = time.perf_counter()

        # scoring: each champion's calibrated probability, each volatility champion's sigma
        scored: dict[str, tuple[pl.DataFrame, np.ndarray, np.ndarray]] = {}
        for symbol, frame in inputs.items():
            model = models[symbol]
            frame = frame.drop_nulls(model.feature_columns)
            if frame.is_empty():
                report.skipped[symbol] = "the new bar's features are incomplete (warm-up)"
                continue
            sigma = np.full(frame.height, np.nan)
            if symbol in vols:
                bars = bars_of[symbol]
                forecast = vols[symbol].horizon_sigma(log_returns(bars["close"].to_numpy()))
                # the forecasts at the scored bars (timestamps are sorted and unique)
                at = np.searchsorted(bars["timestamp"].to_numpy(), frame["timestamp"].to_numpy())
                sigma = forecast[at]
            scored[symbol] = (frame, model.predict_proba(frame), sigma)
        report.timings["score"] = time.perf_counter() - clock
        clock = time.perf_counter()

        # execution: one pass of the execution agent over every symbol's new bars
        columns: dict[str, list] = {name: [] for name in EXECUTION_INPUTS}
        for symbol, (frame, prob, sigma) in scored.items():
            model, bars, n = models[symbol], bars_of[symbol], frame.height
            long_t = model.decision_threshold or long_threshold(1.75, 1.0)
            at = np.searchsorted(bars["timestamp"].to_numpy(), frame["timestamp"].to_numpy())
            values = {
                "threshold_long": long_t,
                "threshold_short": resolve_short_threshold(
                    None, model.decision_threshold_short, long_t
                ),
                "periods_per_year": self._periods_per_year(symbol, timeframe, bars),
                "symbol": symbol,
                "timeframe": timeframe,
                "model_name": model.name,
                "model_version": model.version,
                "mlflow_run_id": model.run_id,
                "agent_version_id": champions[direction[symbol]][1],
                "vol_version_id": champions[volatility[symbol]][1] if symbol in vols else None,
                "dagster_run_id": dagster_run_id,
                # the stored bars scored (a rewritten bar gets a new data version)
                "data_version": frame_fingerprint(bars[at]),
                "horizon": self.horizon,
            }
            columns["timestamp"].extend(frame["timestamp"].to_list())
            columns["close"].extend(bars["close"].to_numpy()[at].tolist())
            columns["atr_14"].extend(frame["atr_14"].to_list())
            columns["prob_up"].extend(prob.tolist())
            columns["sigma"].extend(sigma.tolist())
            for name, value in values.items():
                columns[name].extend([value] * n)
            report.served.append(symbol)
        preds = signals = None
        if scored:
            frame = pl.DataFrame(columns, schema_overrides=EXECUTION_SCHEMA, strict=False)
            rules = ExecutionRules(
                threshold_long=0.5, horizon=self.horizon, target_vol=self.target_vol
            )
            preds, signals = agent_rows(frame, rules)
        report.timings["execute"] = time.perf_counter() - clock
        clock = time.perf_counter()
        if signals is not None:
            self.store.write_predictions(preds)
            report.rows = self.store.write_signals(signals)
        report.timings["write"] = time.perf_counter() - clock
        return report
