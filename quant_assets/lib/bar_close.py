"""Serving at bar close: one call scores only the newly closed bar(s) of every symbol of a
timeframe with each agent's champion, applies the regime gate, and upserts `agent_preds` and
`agent_signals` in one write each. Everything is computed across symbols at once (one polars
pass for the features of every symbol's new bar), and what does not change between closes is
kept per process (`BarCloseServer`): the loaded models, the stored bars (re-read only when their
file changed), each coarser timeframe's features (recomputed only when a coarser bar was added)
and the regime's inputs at every stored bar.

Champions are read from the SQL version catalog (one query for every symbol), which follows the
registry on every promotion and rollback (lib/catalog.py): a manual promotion is served from the
next bar on. Each champion is loaded from MLflow (hash-verified) once and then from a local cache
of its servable parts (lib/serving_cache.py), so a run in a fresh process does not download every
model again. Features of a new bar are computed from the last `lookback` stored bars: EMA-type
features then equal the full-history values to ~1e-12 (tested); the multi-timeframe snapshot is
the `features` asset's, the cross-sectional ranks are taken across the symbols served. The
volatility forecast runs over all stored closes (a linear filter).

The regime gate is applied as the `signals` asset applies the `regime` asset's gate (the rules of
lib/regimes.py, RegimeConfig's defaults, on the coarsest snapshot timeframe stored; `signals`
gates only partitions whose `regime` is materialized, bar close always): its expanding quantiles
need the slope and volatility at every stored bar, kept per symbol and extended at each close (a
file whose past changed is read again and its inputs rebuilt); rows equal the asset's (tested).
k-means regimes are not served here. The ensemble is not applied at bar close: its side for a bar
needs the per-regime meta-learners (up to four more MLflow models per symbol), the primary
strategies and the meta features, which only the whole-history `ensemble_signals` asset computes;
`signals` applies it to the bars that asset has scored, and its upsert then replaces the row
served here (same key) for a partition whose ensemble is serving.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import sqlalchemy as sa

from quant_assets.lib.calendars import annualization_kind
from quant_assets.lib.execution import ExecutionRules
from quant_assets.lib.features import (
    MAX_WARMUP,
    MTF_FEATURES,
    compute_features,
    cross_sectional_ranks,
    mtf_column,
    multi_timeframe_snapshot,
)
from quant_assets.lib.performance import annualization
from quant_assets.lib.regimes import SLOPE_FEATURE, VOL_FEATURE, RegimeConfig, _rule_regime
from quant_assets.lib.serving import agent_rows
from quant_assets.lib.serving_cache import CatalogVersion, ServingCache
from quant_assets.lib.settings import DEFAULT_TIMEFRAMES
from quant_assets.lib.signals import resolve_long_threshold, resolve_short_threshold
from quant_assets.lib.sources.base import OHLCV_COLUMNS, OHLCV_SCHEMA
from quant_assets.lib.stores import TradingStore, agent_signals, agent_versions
from quant_assets.lib.timeframes import higher_timeframes, timeframe_delta
from quant_assets.lib.tracking import ALIAS_CHAMPION, ARTIFACT_HASH_TAG, registered_model_name
from quant_assets.lib.volatility import load_volatility_model, log_returns

#: stored bars the features of a new bar are computed from (EMA seeds decay to < 1e-12 by then)
DEFAULT_LOOKBACK = 400
TIMING_STEPS = ("load_models", "read_bars", "features", "regime", "score", "execute", "write")
#: the execution agent's input across symbols (lib/execution.py, lib/serving.py)
EXECUTION_SCHEMA = {
    "timestamp": pl.Datetime("us", "UTC"),
    "close": pl.Float64,
    "atr_14": pl.Float64,
    "prob_up": pl.Float64,
    "sigma": pl.Float64,
    "regime": pl.String,
    "gate": pl.Boolean,
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
#: the `signals` asset's default barriers and edge (SignalsConfig), for a model without threshold
TP_MULT, SL_MULT, EDGE = 1.75, 1.0, 0.05
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class BarCloseReport:
    """What one bar close served: rows written, symbols served and skipped (with the reason),
    the seconds spent in each step (TIMING_STEPS), and the scored bars' inputs (symbol,
    timestamp, features, snapshot, ranks, regime, gate)."""

    timeframe: str
    rows: int = 0
    served: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMING_STEPS, 0.0))
    inputs: pl.DataFrame | None = None


def champions_from_catalog(store: TradingStore, names: Iterable[str]) -> dict[str, CatalogVersion]:
    """registered name -> its champion version as the catalog names it, in one query."""
    names = list(names)
    with store.engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                agent_versions.c.registered_name,
                agent_versions.c.version,
                agent_versions.c.id,
                agent_versions.c.artifact_uri,
                agent_versions.c.registered_at,
                agent_versions.c.aliases,
            ).where(
                agent_versions.c.registered_name.in_(names),
                agent_versions.c.aliases.like(f"%{ALIAS_CHAMPION}%"),
            )
        ).all()
    return {
        name: CatalogVersion(
            name, str(version), int(id_), uri, registered.isoformat() if registered else ""
        )
        for name, version, id_, uri, registered, aliases in rows
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


def _epoch_us(stamp: datetime) -> int:
    return (stamp - _EPOCH) // timedelta(microseconds=1)


def bar_versions(bars: pl.DataFrame) -> list[str]:
    """A content hash of each stored bar (schema and OHLCV values), the data version of the row
    that scores it: a rewritten bar gets a new one."""
    header = repr([(name, bars.schema[name]) for name in OHLCV_COLUMNS]).encode()
    stamps = bars["timestamp"].dt.epoch("us").to_numpy().astype("<i8")
    values = bars.select(OHLCV_COLUMNS[1:]).to_numpy().astype("<f8")
    rows = np.column_stack([stamps.view("<f8"), values])
    return [hashlib.sha256(header + row.tobytes()).hexdigest()[:16] for row in rows]


def window_quantiles(
    values: np.ndarray, end: int, quantiles: tuple[float, ...], config: RegimeConfig
) -> list[float | None]:
    """The regime's rolling quantiles (polars' `rolling_quantile`, linear interpolation, as
    lib/regimes.py takes them) at row end - 1 of `values` (NaN = unknown): over every earlier row
    (config.quantile_window None) or the last quantile_window rows; None with fewer than
    config.min_history known values."""
    start = 0 if config.quantile_window is None else max(0, end - config.quantile_window)
    known = values[start:end]
    known = known[~np.isnan(known)]
    if known.size < config.min_history:
        return [None] * len(quantiles)
    positions = [(known.size - 1.0) * q for q in quantiles]
    kth = sorted({math.floor(p) for p in positions} | {math.ceil(p) for p in positions})
    ordered = np.partition(known, kth)
    out: list[float | None] = []
    for p in positions:
        lo, hi = math.floor(p), math.ceil(p)
        lower = float(ordered[lo])
        out.append(lower if lo == hi else (p - lo) * (float(ordered[hi]) - lower) + lower)
    return out


def rule_regimes(
    slope: np.ndarray,
    vol: np.ndarray,
    known: np.ndarray,
    scale: list[float | None],
    low: list[float | None],
    high: list[float | None],
    config: RegimeConfig,
) -> pl.DataFrame:
    """regime and gate of bars from their slope, volatility and whether they are known (finite,
    warm), and the rolling quantiles at them (`window_quantiles`): the rules of lib/regimes.py."""
    vol_s = pl.col("vol")
    bucket = (
        pl.when(vol_s.is_null() | pl.col("low").is_null())
        .then(None)
        .when(vol_s < pl.col("low"))
        .then(pl.lit("low"))
        .when(vol_s > pl.col("high"))
        .then(pl.lit("high"))
        .otherwise(pl.lit("mid"))
    )
    frame = pl.DataFrame(
        {
            "slope": slope,
            "vol": vol,
            "_known": known,
            "_scale": scale,
            "low": low,
            "high": high,
        },
        schema_overrides={"_scale": pl.Float64, "low": pl.Float64, "high": pl.Float64},
    ).with_columns(pl.col("slope", "vol").fill_nan(None))
    frame = frame.with_columns(bucket.alias("vol_bucket")).with_columns(
        (
            pl.col("_known") & pl.col("_scale").is_not_null() & pl.col("vol_bucket").is_not_null()
        ).alias("_warm")
    )
    regime = _rule_regime(config, "slope").alias("regime")
    return frame.with_columns(regime).select(
        pl.col("regime"),
        (
            pl.col("_warm") & ~((pl.col("regime") == "neutral") & (pl.col("vol_bucket") == "high"))
        ).alias("gate"),
    )


@dataclass
class _Stored:
    """A partition's bars as last read, with their open times (epoch us) and values as numpy, the
    file's (mtime_ns, size) when read from Parquet, and a generation that changes whenever more
    than the end of the history changed."""

    bars: pl.DataFrame
    opens: np.ndarray
    values: np.ndarray  # OHLCV_COLUMNS[1:]
    stamp: tuple[int, int] | None
    generation: int


@dataclass
class _History:
    """MTF_FEATURES at every stored bar of each symbol of a timeframe, stacked (each symbol's rows
    contiguous, in time order), with the stored generation each symbol's rows come from: the
    snapshot of a new bar and the regime's inputs read it."""

    frame: pl.DataFrame
    generation: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    def offsets(self) -> dict[str, int]:
        """symbol -> its first row in `frame`."""
        runs = self.frame.select(pl.col("symbol").rle()).unnest("symbol")
        starts = np.r_[0, np.cumsum(runs["len"].to_numpy())[:-1]]
        return dict(zip(runs["value"].to_list(), starts.tolist(), strict=True))


def _empty_history() -> _History:
    return _History(
        pl.DataFrame(
            schema={
                "symbol": pl.String,
                "timestamp": OHLCV_SCHEMA["timestamp"],
                **dict.fromkeys(MTF_FEATURES, pl.Float64),
            }
        )
    )


@dataclass
class _RegimeInputs:
    """The regime's slope and volatility (NaN: unknown) at the first len(slope) stored bars of a
    symbol, from the `source` timeframe's features of the given generations (base, source) and
    its first `history_rows` bars."""

    source: str
    generations: tuple[int, int]
    history_rows: int
    slope: np.ndarray
    vol: np.ndarray


def _with_symbols(frames: list[pl.DataFrame], symbols: list[str]) -> pl.DataFrame:
    """`frames` stacked, a leading `symbol` column naming each one's rows (one polars call for
    every symbol rather than one each)."""
    stacked = pl.concat(frames)
    rows = np.repeat(np.arange(len(symbols)), [f.height for f in frames])
    return stacked.select(pl.Series("symbol", symbols, dtype=pl.String).gather(rows), pl.all())


class BarCloseServer:
    """Scores new bars for many symbols; keeps loaded models and stored history for the life of
    the process.

    `tracker`: a Tracker, or a function making one, called on the first champion not in the
    local model cache (importing MLflow alone takes seconds, which a fresh process serving from
    the cache does not pay). `model_cache`: that cache (lib/serving_cache.py); by default
    `<artifacts_root>/serving_cache`, none without `artifacts_root`.
    `read_bars(symbol, timeframe)` returns the stored OHLCV of a partition (None when missing);
    by default the ohlcv asset's Parquet files under `artifacts_root`, re-read only when a file's
    modification time or size changed. `regime`: the regime agent's rules (default RegimeConfig(),
    the `regime` asset's); `snapshot_timeframes`: the `features` asset's, whose coarsest stored one
    the regime reads."""

    def __init__(
        self,
        tracker: Any,
        store: TradingStore,
        artifacts_root: str | Path | None = None,
        *,
        model_cache: ServingCache | None = None,
        read_bars: Callable[[str, str], pl.DataFrame | None] | None = None,
        lookback: int = DEFAULT_LOOKBACK,
        horizon: int = 5,
        target_vol: float | None = 0.10,
        regime: RegimeConfig | None = None,
        use_regime_gate: bool = True,
        snapshot_timeframes: tuple[str, ...] = DEFAULT_TIMEFRAMES,
    ) -> None:
        if read_bars is None and artifacts_root is None:
            raise ValueError("BarCloseServer needs artifacts_root or read_bars")
        self.tracker = tracker
        self.store = store
        self.root = Path(artifacts_root) if artifacts_root is not None else None
        if model_cache is None and self.root is not None:
            model_cache = ServingCache.under(self.root)
        self.cache = model_cache
        self.read_bars = read_bars
        self.lookback = lookback
        self.horizon = horizon
        self.target_vol = target_vol
        self.regime = regime if regime is not None else RegimeConfig()
        if (
            self.regime.method != "rules"
            or self.regime.slope_column
            or self.regime.vol_column
            or self.regime.extra_features
        ):
            raise ValueError(
                "bar-close serving applies the rules regime on the snapshot's slope and "
                f"volatility only, got {self.regime}"
            )
        self.use_regime_gate = use_regime_gate
        self.snapshot_timeframes = tuple(snapshot_timeframes)
        self._models: dict[CatalogVersion, Any] = {}
        self._stored: dict[tuple[str, str], _Stored] = {}
        self._history: dict[str, _History] = {}
        self._regime_inputs: dict[tuple[str, str], _RegimeInputs] = {}
        self._ppy: dict[tuple[str, str], float] = {}
        self._generations = itertools.count()

    # stored bars -----------------------------------------------------------------------------

    def _remember(
        self,
        key: tuple[str, str],
        bars: pl.DataFrame,
        opens: np.ndarray,
        values: np.ndarray,
        stamp: tuple[int, int] | None,
    ) -> None:
        old = self._stored.get(key)
        n = old.opens.size if old is not None else 0
        appended = (
            old is not None
            and opens.size >= n
            and np.array_equal(opens[:n], old.opens)
            # NaN-aware only when needed: it costs a few array passes per symbol
            and (
                np.array_equal(values[:n], old.values)
                or np.array_equal(values[:n], old.values, equal_nan=True)
            )
        )
        # never reused, so nothing computed from a forgotten file passes for the new one
        generation = old.generation if appended else next(self._generations)
        self._stored[key] = _Stored(bars, opens, values, stamp, generation)

    def _forget(self, key: tuple[str, str]) -> None:
        self._stored.pop(key, None)
        history = self._history.get(key[1])
        if history is not None and key[0] in history.rows:
            del history.rows[key[0]], history.generation[key[0]]
            history.frame = history.frame.filter(pl.col("symbol") != key[0])

    def _read(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], _Stored]:
        """The stored bars of each (symbol, timeframe) that has some. Changed Parquet files are
        read in one multi-file scan."""
        keys = list(keys)
        if self.read_bars is not None:
            for key in keys:
                bars = self.read_bars(*key)
                if bars is None or bars.is_empty():
                    self._forget(key)
                else:
                    opens = bars["timestamp"].dt.epoch("us").to_numpy()
                    values = bars.select(OHLCV_COLUMNS[1:]).to_numpy()
                    self._remember(key, bars, opens, values, None)
            return {key: self._stored[key] for key in keys if key in self._stored}
        assert self.root is not None
        changed: dict[str, tuple[tuple[str, str], tuple[int, int]]] = {}
        for key in keys:
            path = f"{self.root}/ohlcv/{key[0]}/{key[1]}.parquet"
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                self._forget(key)
                continue
            stamp = (stat.st_mtime_ns, stat.st_size)
            old = self._stored.get(key)
            if old is None or old.stamp != stamp:
                changed[path] = (key, stamp)
        if changed:
            frame = pl.scan_parquet(
                list(changed),
                schema=OHLCV_SCHEMA,
                extra_columns="ignore",
                include_file_paths="_path",
                hive_partitioning=False,
                glob=False,
            ).collect()
            runs = frame.select(pl.col("_path").rle()).unnest("_path")
            bars = frame.drop("_path")
            opens = bars["timestamp"].dt.epoch("us").to_numpy()
            values = bars.select(OHLCV_COLUMNS[1:]).to_numpy()
            start = 0
            for path, length in zip(runs["value"], runs["len"], strict=True):
                end = start + length
                key, stamp = changed.pop(path)
                self._remember(
                    key, bars.slice(start, length), opens[start:end], values[start:end], stamp
                )
                start = end
            for key, _ in changed.values():  # files without rows
                self._forget(key)
        return {key: self._stored[key] for key in keys if key in self._stored}

    # feature histories -----------------------------------------------------------------------

    def _update_history(self, timeframe: str, symbols: Iterable[str]) -> _History:
        """The feature history of `timeframe`, brought up to each symbol's stored bars: bars
        added since are computed from the last `lookback` bars before them, a changed history
        whole; one polars pass over every symbol."""
        history = self._history.setdefault(timeframe, _empty_history())
        parts, names, new, recomputed = [], [], [], []
        for symbol in symbols:
            stored = self._stored.get((symbol, timeframe))
            if stored is None:
                continue
            rows = stored.opens.size
            have = history.rows.get(symbol, 0)
            if history.generation.get(symbol) != stored.generation:
                have = 0
                recomputed.append(symbol)
            elif have == rows:
                continue
            start = max(0, have - self.lookback)
            parts.append(stored.bars.slice(start))
            names.append(symbol)
            new.append(rows - have)
            history.generation[symbol], history.rows[symbol] = stored.generation, rows
        if not parts:
            return history
        keep = np.concatenate(
            [np.arange(p.height) >= p.height - n for p, n in zip(parts, new, strict=True)]
        )
        computed = (
            compute_features(_with_symbols(parts, names), timeframe, by="symbol")
            .filter(pl.Series(keep))
            .select("symbol", "timestamp", *MTF_FEATURES)
        )
        kept = history.frame
        if recomputed:
            kept = kept.filter(~pl.col("symbol").is_in(recomputed))
        # a stable sort keeps each symbol's earlier rows before the ones just added
        history.frame = pl.concat([kept, computed]).sort("symbol", maintain_order=True)
        return history

    # regime ----------------------------------------------------------------------------------

    def _regime_source(self, symbol: str, timeframe: str) -> str:
        """The timeframe whose slope and volatility the regime reads: the coarsest snapshot
        timeframe with stored bars (lib.regimes.regime_columns on the features asset), else the
        bar's own."""
        stored = [
            tf
            for tf in higher_timeframes(timeframe, self.snapshot_timeframes)
            if (symbol, tf) in self._stored
        ]
        return stored[-1] if stored else timeframe

    def _regime_inputs_of(self, symbols: list[str], timeframe: str, source: str) -> None:
        """The regime's inputs at every stored bar of each symbol, from `source`: bars not yet
        covered (all of them after a rewrite) get the source's values as of their close; bars
        closing at or after the close of a source bar added since are looked up again (it may
        have been stored after them)."""
        history = self._update_history(source, symbols)
        offsets = history.offsets()
        source_opens = history.frame["timestamp"].dt.epoch("us").to_numpy()
        step, source_step = (
            timeframe_delta(tf) // timedelta(microseconds=1) for tf in (timeframe, source)
        )
        pending: list[tuple[str, int]] = []
        for symbol in symbols:
            base = self._stored[(symbol, timeframe)]
            generations = (base.generation, history.generation[symbol])
            inputs = self._regime_inputs.get((symbol, timeframe))
            if inputs is None or inputs.source != source or inputs.generations != generations:
                inputs = _RegimeInputs(source, generations, 0, np.zeros(0), np.zeros(0))
            elif history.rows[symbol] > inputs.history_rows:
                first_new = source_opens[offsets[symbol] + inputs.history_rows] + source_step
                keep = int(np.searchsorted(base.opens + step, first_new, "left"))
                inputs.slope, inputs.vol = inputs.slope[:keep], inputs.vol[:keep]
            inputs.history_rows = history.rows[symbol]
            self._regime_inputs[(symbol, timeframe)] = inputs
            if inputs.slope.size < base.opens.size:
                pending.append((symbol, inputs.slope.size))
        if not pending:
            return
        if source == timeframe:  # the bar's own features: one history row per stored bar
            at = np.concatenate(
                [offsets[s] + np.arange(start, history.rows[s]) for s, start in pending]
            )
            columns = history.frame.select(SLOPE_FEATURE, VOL_FEATURE)[at]
        else:
            opens = [self._stored[(s, timeframe)].opens[start:] for s, start in pending]
            names = pl.Series([s for s, _ in pending], dtype=pl.String)
            rows = np.repeat(np.arange(len(opens)), [o.size for o in opens])
            base = pl.DataFrame(
                {
                    "symbol": names.gather(rows),
                    "timestamp": pl.Series(np.concatenate(opens)).cast(OHLCV_SCHEMA["timestamp"]),
                }
            )
            columns = multi_timeframe_snapshot(
                base, timeframe, {source: history.frame}, by="symbol"
            ).select(mtf_column(source, SLOPE_FEATURE), mtf_column(source, VOL_FEATURE))
        slope, vol = (
            columns.to_series(i).cast(pl.Float64).fill_null(np.nan).to_numpy() for i in (0, 1)
        )
        start_row = 0
        for symbol, start in pending:
            inputs = self._regime_inputs[(symbol, timeframe)]
            n = self._stored[(symbol, timeframe)].opens.size - start
            inputs.slope = np.concatenate([inputs.slope, slope[start_row : start_row + n]])
            inputs.vol = np.concatenate([inputs.vol, vol[start_row : start_row + n]])
            start_row += n

    def _regimes(self, rows: dict[str, int], timeframe: str) -> pl.DataFrame:
        """regime and gate of the last rows[symbol] stored bars of each symbol, in that order."""
        sources: dict[str, list[str]] = {}
        for symbol in rows:
            sources.setdefault(self._regime_source(symbol, timeframe), []).append(symbol)
        for source, symbols in sources.items():
            self._regime_inputs_of(symbols, timeframe, source)
        config = self.regime
        slope, vol, known, scale, low, high = [], [], [], [], [], []
        for symbol, count in rows.items():
            inputs = self._regime_inputs[(symbol, timeframe)]
            magnitude = np.abs(inputs.slope)
            n = inputs.slope.size
            for end in range(n - count + 1, n + 1):
                s, v = inputs.slope[end - 1], inputs.vol[end - 1]
                slope.append(s)
                vol.append(v)
                # the features asset's is_warm of row end - 1 (its history starts at row 0)
                known.append(bool(not np.isnan(s) and not np.isnan(v) and end >= MAX_WARMUP))
                scale.extend(window_quantiles(magnitude, end, (0.5,), config))
                lo, hi = window_quantiles(
                    inputs.vol, end, (config.vol_low_quantile, config.vol_high_quantile), config
                )
                low.append(lo)
                high.append(hi)
        return rule_regimes(
            np.asarray(slope, dtype=np.float64),
            np.asarray(vol, dtype=np.float64),
            np.asarray(known, dtype=bool),
            scale,
            low,
            high,
            config,
        )

    # models ----------------------------------------------------------------------------------

    def _periods_per_year(self, symbol: str, timeframe: str, bars: pl.DataFrame) -> float:
        key = (symbol, timeframe)
        if key not in self._ppy:  # the calendar of a symbol does not change between bars
            self._ppy[key] = annualization(timeframe, annualization_kind(bars, timeframe))
        return self._ppy[key]

    def _tracker(self) -> Any:
        if callable(self.tracker):  # made on the first model not in the cache
            self.tracker = self.tracker()
        return self.tracker

    def _model(self, champion: CatalogVersion, kind: str) -> Any:
        """The champion's model ("direction": a LoadedModel, "volatility": a GarchForecaster):
        kept in this process, else from the local cache when its entry is this version, else
        loaded and verified from MLflow (and written to the cache)."""
        if champion in self._models:
            return self._models[champion]
        model = self.cache.load(champion, kind) if self.cache is not None else None
        if model is None:
            tracker = self._tracker()
            if kind == "direction":
                model = tracker.load_model(champion.name, champion.version)
                recorded = model.tags.get(ARTIFACT_HASH_TAG, "")
            else:
                model = load_volatility_model(tracker, champion.name, champion.version)
                recorded = tracker.version_tags(champion.name, champion.version).get(
                    ARTIFACT_HASH_TAG, ""
                )
            if self.cache is not None:
                self.cache.store(champion, kind, model, recorded)
        self._models[champion] = model
        return model

    def _champions(
        self, timeframe: str, symbols: list[str], report: BarCloseReport
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, tuple[int, int | None]]]:
        """Each symbol's direction and volatility champions (`_model`) and their catalog ids."""
        direction = {s: registered_model_name(s, timeframe) for s in symbols}
        volatility = {s: registered_model_name(s, timeframe, "volatility") for s in symbols}
        champions = champions_from_catalog(self.store, [*direction.values(), *volatility.values()])
        models, vols, ids = {}, {}, {}
        for symbol in symbols:
            champion = champions.get(direction[symbol])
            if champion is None:
                report.skipped[symbol] = f"{direction[symbol]} has no champion"
                continue
            models[symbol] = self._model(champion, "direction")
            vol_champion = champions.get(volatility[symbol])
            if vol_champion is not None:
                vols[symbol] = self._model(vol_champion, "volatility")
            ids[symbol] = (champion.id, vol_champion.id if vol_champion is not None else None)
        return models, vols, ids

    # serving ---------------------------------------------------------------------------------

    def _identity(
        self,
        symbols: list[str],
        timeframe: str,
        models: dict[str, Any],
        ids: dict[str, tuple[int, int | None]],
        stored: dict[tuple[str, str], _Stored],
    ) -> pl.DataFrame:
        """Per symbol: the thresholds in force (as the `signals` asset resolves them with its
        defaults), bars a year and the versions that score it."""
        rows = []
        for symbol in symbols:
            model = models[symbol]
            threshold_long = resolve_long_threshold(
                None, model.decision_threshold, TP_MULT, SL_MULT, EDGE
            )
            rows.append(
                {
                    "symbol": symbol,
                    "threshold_long": threshold_long,
                    "threshold_short": resolve_short_threshold(
                        None, model.decision_threshold_short, threshold_long
                    ),
                    "periods_per_year": self._periods_per_year(
                        symbol, timeframe, stored[symbol, timeframe].bars
                    ),
                    "model_name": model.name,
                    "model_version": model.version,
                    "mlflow_run_id": model.run_id,
                    "agent_version_id": ids[symbol][0],
                    "vol_version_id": ids[symbol][1],
                }
            )
        return pl.DataFrame(rows, schema_overrides=EXECUTION_SCHEMA, strict=False)

    def _new_bar_inputs(
        self,
        timeframe: str,
        fresh: dict[str, int],
        models: dict[str, Any],
        stored: dict[tuple[str, str], _Stored],
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(the new bars, their model inputs), every symbol's in `fresh` order: features from the
        last `lookback` stored bars in one pass over the stacked tails, the snapshot of the
        coarser timeframes the models read, and the cross-sectional ranks."""
        tails = [stored[s, timeframe].bars.tail(self.lookback + n) for s, n in fresh.items()]
        stacked = _with_symbols(tails, list(fresh))
        is_new = pl.Series(
            np.concatenate(
                [
                    np.arange(t.height) >= t.height - n
                    for t, n in zip(tails, fresh.values(), strict=True)
                ]
            )
        )
        features = compute_features(stacked, timeframe, by="symbol").filter(is_new)
        snapshot_tfs = sorted(
            {
                tf
                for s in fresh
                for tf in _needed_snapshot_timeframes(models[s].feature_columns, timeframe)
            }
        )
        higher = {tf: self._update_history(tf, fresh).frame for tf in snapshot_tfs}
        if higher:
            snapshot = multi_timeframe_snapshot(
                features.select("symbol", "timestamp"), timeframe, higher, by="symbol"
            )
            features = features.hstack(snapshot.drop("symbol", "timestamp"))
        ranks = cross_sectional_ranks(features).drop("xs_n_symbols")
        inputs = features.join(ranks, on=["symbol", "timestamp"], how="left", maintain_order="left")
        return stacked.filter(is_new), inputs

    def serve(
        self, timeframe: str, symbols: Iterable[str], dagster_run_id: str = ""
    ) -> BarCloseReport:
        """Score every symbol's bars closed since its last served bar (only the latest bar when
        it was never served), write them in one upsert per table; returns the report."""
        report = BarCloseReport(timeframe)
        clock = time.perf_counter()

        def lap(step: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            report.timings[step] += now - clock
            clock = now

        models, vols, ids = self._champions(timeframe, sorted(set(symbols)), report)
        lap("load_models")

        served_until = last_served(self.store, timeframe)
        stored = self._read((s, timeframe) for s in models)
        fresh: dict[str, int] = {}  # symbol -> new bars to score (the last ones stored)
        for symbol in models:
            if (symbol, timeframe) not in stored:
                report.skipped[symbol] = f"no stored {timeframe} bars"
                continue
            opens = stored[symbol, timeframe].opens
            since = served_until.get(symbol)
            if since is None:
                fresh[symbol] = 1
                continue
            older = int(np.searchsorted(opens, _epoch_us(since), "right"))
            if older == opens.size:
                report.skipped[symbol] = "no new bar since the last one served"
            else:
                fresh[symbol] = opens.size - older
        self._read(
            (s, tf)
            for s in fresh
            for tf in sorted(
                set(_needed_snapshot_timeframes(models[s].feature_columns, timeframe))
                | set(higher_timeframes(timeframe, self.snapshot_timeframes))
            )
        )
        lap("read_bars")
        if not fresh:
            return report

        new_bars, inputs = self._new_bar_inputs(timeframe, fresh, models, stored)
        lap("features")
        regimes = self._regimes(fresh, timeframe)
        lap("regime")

        # scoring: each champion's calibrated probability, each volatility champion's sigma
        columns = sorted({c for s in fresh for c in models[s].feature_columns})
        where = {c: i for i, c in enumerate(columns)}
        matrix = inputs.select(pl.col(columns).cast(pl.Float64)).to_numpy()
        unknown = inputs.select(pl.col(columns).is_null()).to_numpy()
        prob = np.full(inputs.height, np.nan)
        sigma = np.full(inputs.height, np.nan)
        scored = np.zeros(inputs.height, dtype=bool)
        start = 0
        for symbol, count in fresh.items():
            rows, model = slice(start, start + count), models[symbol]
            start += count
            take = [where[c] for c in model.feature_columns]
            complete = ~unknown[rows][:, take].any(axis=1)
            if not complete.any():
                report.skipped[symbol] = (
                    "the new bar's features are incomplete (warm-up, or no coarser bars stored)"
                )
                continue
            at = rows.start + np.flatnonzero(complete)
            prob[at] = model.predict_matrix(matrix[at][:, take])
            scored[at] = True
            if symbol in vols:
                closes = stored[symbol, timeframe].values[:, 3]
                sigma[rows] = vols[symbol].horizon_sigma(log_returns(closes))[-count:]
            report.served.append(symbol)
        lap("score")
        report.inputs = inputs.hstack(regimes).filter(pl.Series(scored))
        if not report.served:
            return report

        # execution: one pass of the execution agent over every symbol's new bars
        frame = (
            pl.DataFrame(
                {
                    "symbol": new_bars["symbol"],
                    "timestamp": new_bars["timestamp"],
                    "close": new_bars["close"],
                    "atr_14": inputs["atr_14"],
                    "prob_up": prob,
                    "sigma": sigma,
                    "regime": regimes["regime"],
                    "gate": regimes["gate"],
                    "data_version": bar_versions(new_bars),
                }
            )
            .filter(pl.Series(scored))
            .join(
                self._identity(report.served, timeframe, models, ids, stored),
                on="symbol",
                how="left",
                maintain_order="left",
            )
            .with_columns(
                pl.lit(timeframe).alias("timeframe"),
                pl.lit(dagster_run_id).alias("dagster_run_id"),
                pl.lit(self.horizon).alias("horizon"),
            )
            .select(pl.col(name).cast(dtype) for name, dtype in EXECUTION_SCHEMA.items())
        )
        rules = ExecutionRules(
            threshold_long=0.5,  # per-row thresholds (each symbol's model) override it
            horizon=self.horizon,
            target_vol=self.target_vol,
            use_regime_gate=self.use_regime_gate,
        )
        preds, signals = agent_rows(frame, rules)
        lap("execute")
        self.store.write_predictions(preds)
        report.rows = self.store.write_signals(signals)
        lap("write")
        return report
