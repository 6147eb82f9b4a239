"""Champions for bar-close serving tests and its benchmark: one small LightGBM direction model
(1h features, a coarser snapshot, cross-sectional rank columns) and one GARCH(1,1), registered
under every symbol's names with the champion alias and synced into the SQL catalog."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl

from quant_assets.lib.timeframes import timeframe_seconds
from quant_assets_tests.lib.bars_factory import resample_bars


def train_direction(bars: pl.DataFrame, timeframe: str, higher: str):
    import lightgbm as lgb

    from quant_assets.lib.datasets import EXCLUDED_FEATURES
    from quant_assets.lib.features import compute_features, multi_timeframe_snapshot

    features = compute_features(bars, timeframe)
    coarse = resample_bars(bars, higher).head(-1)
    snapshot = multi_timeframe_snapshot(
        features.select("timestamp"), timeframe, {higher: compute_features(coarse, higher)}
    )
    frame = features.join(snapshot, on="timestamp").drop(EXCLUDED_FEATURES, strict=False)
    ranks = ["xs_rank_momentum", "xs_rank_volume", "xs_rank_volatility"]
    rng = np.random.default_rng(0)
    frame = frame.with_columns(*(pl.lit(rng.random()).alias(r) for r in ranks))
    columns = [c for c in frame.columns if c not in ("timestamp", "is_warm")]
    future = (bars["close"].shift(-5) / bars["close"] - 1).to_numpy()
    usable = (
        frame.with_columns(pl.Series("y", (future > 0).astype(int)))
        .filter(pl.col("is_warm") & pl.Series(np.isfinite(future)))
        .drop_nulls(columns)
    )
    model = lgb.LGBMClassifier(n_estimators=50, num_leaves=15, verbose=-1, n_jobs=1)
    model.fit(usable.select(columns).to_numpy(), usable["y"].to_numpy())
    return model, columns, usable.select(pl.col(columns).cast(pl.Float64)).head(5).to_pandas()


def register_champions(
    tracker, store, symbols: list[str], bars0: pl.DataFrame, timeframe: str, higher: str
) -> None:
    """One trained version per agent kind, registered under every symbol's name (versions of the
    same artifact: each name loads and verifies its own copy), champion alias, catalog rows."""
    from quant_assets.lib.catalog import sync_catalog
    from quant_assets.lib.tracking import ALIAS_CHAMPION, registered_model_name
    from quant_assets.lib.volatility import (
        VolatilityEvaluation,
        fit_garch,
        log_returns,
        register_volatility_model,
    )

    model, columns, example = train_direction(bars0, timeframe, higher)
    first = registered_model_name(symbols[0], timeframe)
    tags = {
        "model_type": "lightgbm",
        "decision_threshold": "0.55",
        "decision_threshold_short": "0.45",
    }
    with tracker.run("direction_model", first, tags) as run_id:
        tracker.log_dict(run_id, {"features": columns}, "feature_list.json")
        direction = tracker.log_model(model, "lightgbm", example, first, tags)
    garch = fit_garch(log_returns(bars0["close"].to_numpy()), 5)
    vol_first = registered_model_name(symbols[0], timeframe, "volatility")
    vol_version, _ = register_volatility_model(
        tracker, vol_first, garch, VolatilityEvaluation(0, 0, 0, 0, 0.9, 0, 0), {}
    )
    sources = {
        "direction": (first, direction.version),
        "volatility": (vol_first, vol_version),
    }
    client = tracker.client
    for kind, (name0, version0) in sources.items():
        mv = client.get_model_version(name0, version0)
        for symbol in symbols:
            name = registered_model_name(symbol, timeframe, kind)
            version = version0
            if name != name0:
                client.create_registered_model(name)
                version = str(
                    client.create_model_version(name, mv.source, run_id=mv.run_id).version
                )
                tracker.set_version_tags(name, version, dict(mv.tags))
            tracker.set_alias(name, ALIAS_CHAMPION, version)
            sync_catalog(tracker, store, name)


def closed_coarse_bars(base: pl.DataFrame, timeframe: str, higher: str) -> pl.DataFrame:
    """The `higher` bars resampled from `base` that had closed by the close of its last bar."""
    last_close = base["timestamp"][-1] + timedelta(seconds=timeframe_seconds(timeframe))
    return resample_bars(base, higher).filter(
        pl.col("timestamp") + timedelta(seconds=timeframe_seconds(higher)) <= last_close
    )


def store_bars(
    root: Path,
    bars: dict[str, pl.DataFrame],
    upto: int | dict[str, int],
    timeframe: str,
    higher: str | tuple[str, ...],
) -> None:
    """Write every symbol's first `upto` bars (a count, or one per symbol) and the coarser bars
    closed by then, where the ohlcv asset stores them."""
    for symbol, frame in bars.items():
        base = frame.head(upto if isinstance(upto, int) else upto[symbol])
        folder = root / "ohlcv" / symbol
        folder.mkdir(parents=True, exist_ok=True)
        base.write_parquet(folder / f"{timeframe}.parquet")
        for tf in (higher,) if isinstance(higher, str) else higher:
            closed_coarse_bars(base, timeframe, tf).write_parquet(folder / f"{tf}.parquet")
