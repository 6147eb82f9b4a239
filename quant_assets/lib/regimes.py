"""Market regime of each bar (bull / bear / range / neutral) and a trading gate, from information known
at the bar: transparent rules on a trend slope and a volatility, or k-means fitted on training rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import polars as pl

from quant_assets.lib.errors import DataValidationError, QuantAssetsError
from quant_assets.lib.features import _require_columns, _require_increasing, mtf_column
from quant_assets.lib.timeframes import TIMEFRAMES

REGIMES: tuple[str, ...] = ("bull", "bear", "range", "neutral")
REGIME_DTYPE = pl.Enum(REGIMES)
VOL_BUCKETS: tuple[str, ...] = ("low", "mid", "high")
VOL_BUCKET_DTYPE = pl.Enum(VOL_BUCKETS)
METHODS: tuple[str, ...] = ("rules", "kmeans")
RegimeMethod = Literal["rules", "kmeans"]
SLOPE_FEATURE, VOL_FEATURE = "ema_26_slope", "atr_14_frac"


class RegimeConfigError(QuantAssetsError, ValueError):
    """Regime parameters are inconsistent (thresholds out of order, k-means without a train_end)."""


@dataclass(frozen=True)
class RegimeConfig:
    """How `regimes` classifies bars; docs/meta_layer.md ("Regimes") states the rules exactly.

    Rules, with z = slope / (rolling median of |slope|) and the volatility bucket from rolling
    quantiles of the volatility column (both over the bar and the bars before it only):
    bull if z > trend_k (high_vol_trend_k when the bucket is "high"), bear if z < -that, range if
    |z| < range_k and the bucket is not "high", neutral otherwise. gate is off (False) for neutral
    bars in the "high" bucket (high-volatility chop) and for every bar before warm-up.
    """

    method: RegimeMethod = "rules"
    slope_column: str | None = None  # None: see regime_columns
    vol_column: str | None = None
    quantile_window: int | None = None  # trailing bars of the rolling quantiles; None = expanding
    min_history: int = 200  # non-null values a rolling quantile needs before it is defined
    vol_low_quantile: float = 1 / 3
    vol_high_quantile: float = 2 / 3
    trend_k: float = 1.0
    high_vol_trend_k: float = 2.0
    range_k: float = 0.5
    # k-means
    train_end: datetime | None = None  # last training bar (inclusive, bar open time)
    n_clusters: int = 4
    extra_features: tuple[str, ...] = ()  # clustered besides the slope and volatility columns
    seed: int = 0
    n_init: int = 10

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise RegimeConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.min_history < 1:
            raise RegimeConfigError(f"min_history must be >= 1, got {self.min_history}")
        if self.quantile_window is not None and self.quantile_window < self.min_history:
            raise RegimeConfigError(
                f"quantile_window ({self.quantile_window}) must be >= min_history ({self.min_history})"
            )
        if not 0.0 < self.vol_low_quantile < self.vol_high_quantile < 1.0:
            raise RegimeConfigError(
                "need 0 < vol_low_quantile < vol_high_quantile < 1, got "
                f"{self.vol_low_quantile} and {self.vol_high_quantile}"
            )
        if not 0.0 < self.range_k <= self.trend_k <= self.high_vol_trend_k:
            raise RegimeConfigError(
                "need 0 < range_k <= trend_k <= high_vol_trend_k, got "
                f"{self.range_k}, {self.trend_k}, {self.high_vol_trend_k}"
            )
        if self.n_clusters < 2 or self.n_init < 1:
            raise RegimeConfigError(
                f"need n_clusters >= 2 and n_init >= 1, got {self.n_clusters} and {self.n_init}"
            )
        if self.method == "kmeans" and self.train_end is None:
            raise RegimeConfigError("method 'kmeans' needs train_end (the last training bar)")


def regime_columns(frame: pl.DataFrame, config: RegimeConfig) -> tuple[str, str]:
    """The (slope, volatility) columns classified: the config's, else ema_26_slope and atr_14_frac of
    the coarsest higher timeframe whose snapshot columns (tf<H>_...) the frame has both of, else the
    bar's own ema_26_slope and atr_14_frac."""
    slope, vol = SLOPE_FEATURE, VOL_FEATURE
    for tf in TIMEFRAMES:
        pair = mtf_column(tf, SLOPE_FEATURE), mtf_column(tf, VOL_FEATURE)
        if pair[0] in frame.columns and pair[1] in frame.columns:
            slope, vol = pair
    return config.slope_column or slope, config.vol_column or vol


def _finite(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.Float64).fill_nan(None)


def _rolling_quantile(x: pl.Expr, q: float, config: RegimeConfig, n_rows: int) -> pl.Expr:
    # A window at least as long as the frame is an expanding window, and gives every row the same
    # value whatever the frame's length (the rows it covers are the same).
    window = config.quantile_window or max(n_rows, config.min_history)
    return x.rolling_quantile(
        q, interpolation="linear", window_size=window, min_samples=config.min_history
    )


def _inputs_known(frame: pl.DataFrame, columns: list[str]) -> pl.Expr:
    known = pl.all_horizontal(_finite(c).is_not_null() for c in columns)
    return known & pl.col("is_warm") if "is_warm" in frame.columns else known


def _vol_bucket(frame: pl.DataFrame, vol: str, config: RegimeConfig) -> pl.Expr:
    v = _finite(vol)
    low = _rolling_quantile(v, config.vol_low_quantile, config, frame.height)
    high = _rolling_quantile(v, config.vol_high_quantile, config, frame.height)
    return (
        pl.when(v.is_null() | low.is_null())
        .then(None)
        .when(v < low)
        .then(pl.lit("low"))
        .when(v > high)
        .then(pl.lit("high"))
        .otherwise(pl.lit("mid"))
        .cast(VOL_BUCKET_DTYPE)
    )


def _rule_regime(config: RegimeConfig, slope: str) -> pl.Expr:
    # 0/0 (a flat history) is no trend; x/0 is an infinitely strong one.
    z = (_finite(slope) / pl.col("_scale")).fill_nan(0.0)
    high_vol = pl.col("vol_bucket") == "high"
    threshold = pl.when(high_vol).then(config.high_vol_trend_k).otherwise(config.trend_k)
    return (
        pl.when(~pl.col("_warm"))
        .then(pl.lit("neutral"))
        .when(z > threshold)
        .then(pl.lit("bull"))
        .when(z < -threshold)
        .then(pl.lit("bear"))
        .when((z.abs() < config.range_k) & ~high_vol)
        .then(pl.lit("range"))
        .otherwise(pl.lit("neutral"))
    )


@dataclass(frozen=True)
class RegimeModel:
    """k-means regimes: standardization and centers fitted on training rows, one name per cluster.

    Clusters are stored in a canonical order with names derived from their centers only
    (`name_clusters`), so equal centers get equal names whatever the seed or row order of the fit.
    Centers are in standardized units; `features[0]` is the slope, `features[1]` the volatility.
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    centers: tuple[tuple[float, ...], ...]
    names: tuple[str, ...]  # bull, bear, range, neutral, neutral_2, ...
    n_train: int

    @property
    def regimes(self) -> tuple[str, ...]:
        """The REGIMES value of each cluster (neutral_2, neutral_3, ... are neutral)."""
        return tuple(name.split("_")[0] for name in self.names)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (no pickle); `from_dict` rebuilds an identical model."""
        return {
            "features": list(self.features),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "centers": [list(c) for c in self.centers],
            "names": list(self.names),
            "n_train": self.n_train,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegimeModel:
        return cls(
            features=tuple(str(f) for f in data["features"]),
            mean=tuple(float(x) for x in data["mean"]),
            scale=tuple(float(x) for x in data["scale"]),
            centers=tuple(tuple(float(x) for x in c) for c in data["centers"]),
            names=tuple(str(n) for n in data["names"]),
            n_train=int(data["n_train"]),
        )


def name_clusters(slope: np.ndarray, vol: np.ndarray) -> tuple[list[int], list[str]]:
    """Canonical order and names of clusters from their center slopes and volatilities.

    bull: highest slope; bear: lowest slope among the rest; range: lowest volatility among the
    rest; the others neutral, neutral_2, ... by increasing slope. Ties fall to the next key
    (volatility or |slope|), so the result depends on the centers only, not on their order.
    """
    rest = list(range(len(slope)))
    chosen: list[int] = []
    keys = (
        lambda j: (-slope[j], vol[j]),
        lambda j: (slope[j], vol[j]),
        lambda j: (vol[j], abs(slope[j]), slope[j]),
    )
    for key in keys[: len(rest)]:
        pick = min(rest, key=key)
        chosen.append(pick)
        rest.remove(pick)
    neutrals = sorted(rest, key=lambda j: (slope[j], vol[j]))
    names = list(REGIMES[: len(chosen)]) + [
        "neutral" if i == 0 else f"neutral_{i + 1}" for i in range(len(neutrals))
    ]
    return chosen + neutrals, names


def _feature_matrix(frame: pl.DataFrame, features: tuple[str, ...]) -> np.ndarray:
    return frame.select(_finite(f) for f in features).to_numpy().astype(np.float64, copy=False)


def fit_regime_model(
    frame: pl.DataFrame, train: datetime | pl.Series, config: RegimeConfig
) -> RegimeModel:
    """k-means (scikit-learn, config.seed, config.n_init) on the slope, volatility and extra feature
    columns of the training rows only: timestamp <= `train` (a datetime), or where the Boolean
    Series `train` is True. Rows with a null/NaN feature, or is_warm False, are left out. The
    standardization (mean, population std) is fitted on the same rows.

    Another seed may end in another local optimum with nearly the same inertia: centers then move
    a little, the names stay (they follow the centers' order, not the cluster numbers)."""
    where = "fit_regime_model(frame)"
    slope, vol = regime_columns(frame, config)
    features = (slope, vol, *config.extra_features)
    _require_columns(frame, ["timestamp", *features], where)
    if isinstance(train, pl.Series):
        if train.len() != frame.height or train.dtype != pl.Boolean:
            raise DataValidationError(
                where,
                "train mask must be a Boolean Series with one value per row",
                detail=f"got {train.dtype} of length {train.len()} for {frame.height} rows",
            )
        in_train = pl.lit(train).fill_null(False)
    else:
        in_train = pl.col("timestamp") <= train
    # In time order, so the fit depends on the set of training rows and not on how they were given.
    rows = frame.filter(in_train & _inputs_known(frame, list(features))).sort("timestamp")
    if rows.height < config.n_clusters:
        raise DataValidationError(
            where,
            f"{rows.height} training rows with every feature of {list(features)} known",
            detail=f"k-means with n_clusters={config.n_clusters} needs at least that many",
        )
    x = _feature_matrix(rows, features)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    scale = np.where(std > 0, std, 1.0)  # a constant feature stays 0 after centering
    from sklearn.cluster import KMeans

    from quant_assets.lib.training import single_threaded

    with single_threaded():
        km = KMeans(config.n_clusters, n_init=config.n_init, random_state=config.seed)
        km.fit((x - mean) / scale)
    centers = km.cluster_centers_
    original = centers * scale + mean
    order, names = name_clusters(original[:, 0], original[:, 1])
    return RegimeModel(
        features=features,
        mean=tuple(float(m) for m in mean),
        scale=tuple(float(s) for s in scale),
        centers=tuple(tuple(float(v) for v in centers[j]) for j in order),
        names=tuple(names),
        n_train=rows.height,
    )


def assign_regimes(model: RegimeModel, frame: pl.DataFrame) -> pl.Series:
    """Regime (REGIME_DTYPE) of each row: that of the nearest center in standardized units (the
    first in canonical order on a tie); "neutral" where a feature is null/NaN or is_warm is False."""
    _require_columns(frame, ["timestamp", *model.features], "assign_regimes(frame)")
    x = (_feature_matrix(frame, model.features) - np.asarray(model.mean)) / np.asarray(model.scale)
    centers = np.asarray(model.centers)
    best = np.zeros(frame.height, dtype=np.int64)
    best_d2 = np.full(frame.height, np.inf)
    for j in range(centers.shape[0]):  # a handful of clusters; avoids an n x k x d temporary
        d2 = ((x - centers[j]) ** 2).sum(axis=1)
        closer = d2 < best_d2
        best = np.where(closer, j, best)
        best_d2 = np.where(closer, d2, best_d2)
    known = frame.select(_inputs_known(frame, list(model.features))).to_series().to_numpy()
    names = np.asarray(model.regimes, dtype=object)[best]
    return pl.Series("regime", np.where(known, names, "neutral"), dtype=REGIME_DTYPE)


def regimes(frame: pl.DataFrame, config: RegimeConfig | None = None) -> pl.DataFrame:
    """Regime of each bar of a features frame (compute_features output, optionally joined with
    multi_timeframe_snapshot columns), from that bar and earlier bars only.

    Columns: timestamp, regime (REGIME_DTYPE), vol_bucket (VOL_BUCKET_DTYPE, null until the
    volatility quantiles exist), gate (Boolean), trend_slope and volatility (the classified
    columns, Float64), method. A bar is warm once its slope and volatility (and extra features)
    are known, both rolling quantiles exist and is_warm (if the frame has it) is True; earlier bars
    are neutral with gate False. With k-means, the model is fitted on rows up to config.train_end:
    labels of those rows are in-sample, rows after it are predictions.
    """
    config = config or RegimeConfig()
    where = "regimes(frame)"
    slope, vol = regime_columns(frame, config)
    inputs = [slope, vol, *(config.extra_features if config.method == "kmeans" else ())]
    _require_columns(frame, ["timestamp", *inputs], where)
    _require_increasing(frame["timestamp"], where)
    out = frame.with_columns(
        _vol_bucket(frame, vol, config).alias("vol_bucket"),
        _rolling_quantile(_finite(slope).abs(), 0.5, config, frame.height).alias("_scale"),
        _inputs_known(frame, inputs).alias("_known"),
    ).with_columns(
        (
            pl.col("_known") & pl.col("_scale").is_not_null() & pl.col("vol_bucket").is_not_null()
        ).alias("_warm")
    )
    if config.method == "rules":
        regime = _rule_regime(config, slope)
    else:
        assert config.train_end is not None  # RegimeConfig checks it
        model = fit_regime_model(frame, config.train_end, config)
        regime = (
            pl.when(pl.col("_warm"))
            .then(pl.lit(assign_regimes(model, frame)))
            .otherwise(pl.lit("neutral"))
        )
    return out.with_columns(regime.cast(REGIME_DTYPE).alias("regime")).select(
        "timestamp",
        "regime",
        "vol_bucket",
        (
            pl.col("_warm") & ~((pl.col("regime") == "neutral") & (pl.col("vol_bucket") == "high"))
        ).alias("gate"),
        _finite(slope).alias("trend_slope"),
        _finite(vol).alias("volatility"),
        pl.lit(config.method, dtype=pl.String).alias("method"),
    )


def regime_summary(frame: pl.DataFrame) -> dict[str, Any]:
    """Counts and run lengths of a `regimes` frame, for asset metadata (no returns: nothing here may
    look past the bars). Shares are of all rows, so vol_bucket shares sum to less than 1 when some
    rows are null (before warm-up)."""
    _require_columns(frame, ["regime", "vol_bucket", "gate", "method"], "regime_summary(frame)")
    rows = frame.height

    def share(count: int) -> float:
        return count / rows if rows else 0.0

    runs = (
        frame.select(pl.col("regime").rle())
        .unnest("regime")
        .group_by("value")
        .agg(
            pl.len().alias("runs"),
            pl.col("len").sum().alias("bars"),
            pl.col("len").mean().alias("mean_run_bars"),
            pl.col("len").max().alias("max_run_bars"),
        )
    )
    found = {str(r.pop("value")): r for r in runs.iter_rows(named=True)}
    per_regime = {}
    for name in REGIMES:
        r = found.get(name, {"bars": 0, "runs": 0, "mean_run_bars": 0.0, "max_run_bars": 0})
        per_regime[name] = {
            "bars": int(r["bars"]),
            "share": share(int(r["bars"])),
            "runs": int(r["runs"]),
            "mean_run_bars": float(r["mean_run_bars"]),
            "max_run_bars": int(r["max_run_bars"]),
        }
    return {
        "rows": rows,
        "method": frame["method"][0] if rows else None,
        "gate_on_share": share(int(frame["gate"].sum())),
        "regimes": per_regime,
        "vol_bucket_shares": {b: share(int((frame["vol_bucket"] == b).sum())) for b in VOL_BUCKETS},
    }
