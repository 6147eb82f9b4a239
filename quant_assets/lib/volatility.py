"""The volatility agent: a GARCH(1,1) forecast of the standard deviation of log returns over the
label horizon, from the bar's close and earlier bars only, with its out-of-fold evaluation against
a naive rolling-standard-deviation forecast.

Why GARCH(1,1) (fitted with `arch`): three parameters, fitted once per training window, and the
forecast at every bar is a linear filter of past squared returns (vectorized with
`scipy.signal.lfilter`, no per-bar refit), so scoring a new bar costs microseconds and the forecast
at bar t provably uses returns up to t only. Its out-of-fold QLIKE is compared with the naive
forecast's (`evaluate_out_of_fold`); the agent is promoted only when it is lower.

Forecast: with sigma2_{t+1} = omega + alpha r_t^2 + beta sigma2_t (known at t's close) and
persistence phi = alpha + beta < 1, the variance of the h-bar log return is
h V + (sigma2_{t+1} - V)(1 - phi^h) / (1 - phi), V = omega / (1 - phi) (the unconditional variance).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

#: returns are scaled to percent for the optimizer (arch warns about badly scaled data otherwise)
SCALE = 100.0
#: window of the naive forecast: the standard deviation of the last N bar returns x sqrt(h)
NAIVE_WINDOW = 20
#: two-sided coverage of the predicted interval reported with the forecast (z of a normal)
COVERAGE_Z = 1.6448536269514722  # 90 %


class VolatilityFitError(ValueError):
    """The GARCH fit failed or has too little data; the message says which partition and why."""


def log_returns(close: pl.Series | np.ndarray) -> np.ndarray:
    """log(close_t / close_{t-1}); the first bar's is 0 (nothing earlier is known)."""
    c = np.asarray(close, dtype=np.float64)
    r = np.zeros(c.size)
    if c.size > 1:
        r[1:] = np.log(c[1:] / c[:-1])
    return np.where(np.isfinite(r), r, 0.0)


@dataclass(frozen=True)
class GarchForecaster:
    """A fitted GARCH(1,1) (returns in percent) and the horizon it forecasts over."""

    omega: float
    alpha: float
    beta: float
    initial_variance: float
    horizon: int
    trained_from: str = ""
    trained_through: str = ""

    @property
    def persistence(self) -> float:
        return self.alpha + self.beta

    def next_bar_variance(self, returns: np.ndarray) -> np.ndarray:
        """sigma2_{t+1} (percent^2) at each bar t: the variance of the next bar's return, known at
        t's close. A linear recursion in r_t^2, run as one `lfilter` call."""
        from scipy.signal import lfilter

        drive = self.omega + self.alpha * (np.asarray(returns, dtype=np.float64) * SCALE) ** 2
        # y_t = beta y_{t-1} + drive_t, started from the training window's variance
        out, _ = lfilter([1.0], [1.0, -self.beta], drive, zi=[self.beta * self.initial_variance])
        return out

    def horizon_sigma(self, returns: np.ndarray) -> np.ndarray:
        """Forecast standard deviation (a fraction, not percent) of the log return over the next
        `horizon` bars, at every bar of `returns`."""
        s2 = self.next_bar_variance(returns)
        h, phi = self.horizon, self.persistence
        if phi < 1.0:
            v = self.omega / (1.0 - phi)
            total = h * v + (s2 - v) * (1.0 - phi**h) / (1.0 - phi)
        else:  # integrated: the next bar's variance persists
            total = h * s2
        return np.sqrt(np.maximum(total, 0.0)) / SCALE

    def to_dict(self) -> dict:
        return {"kind": "garch11", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> GarchForecaster:
        fields = {k: v for k, v in data.items() if k != "kind"}
        return cls(**fields)


def fit_garch(returns: np.ndarray, horizon: int, where: str = "") -> GarchForecaster:
    """GARCH(1,1), zero mean, normal innovations, fitted by `arch` on `returns` (bar log returns of
    the training window only)."""
    from arch import arch_model

    r = np.asarray(returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size < 100:
        raise VolatilityFitError(f"{where}: {r.size} returns; GARCH(1,1) needs at least 100")
    if float(np.std(r)) == 0.0:
        raise VolatilityFitError(f"{where}: every return is 0; no volatility to model")
    fitted = arch_model(r * SCALE, mean="Zero", vol="GARCH", p=1, q=1, dist="normal").fit(
        disp="off", show_warning=False
    )
    params = fitted.params
    return GarchForecaster(
        omega=float(params["omega"]),
        alpha=float(params["alpha[1]"]),
        beta=float(params["beta[1]"]),
        initial_variance=float(np.var(r * SCALE)),
        horizon=int(horizon),
    )


def naive_sigma(returns: np.ndarray, horizon: int, window: int = NAIVE_WINDOW) -> np.ndarray:
    """The naive forecast: the standard deviation of the last `window` bar returns (up to and
    including bar t) x sqrt(horizon); NaN during the first window."""
    std = pl.Series(returns).rolling_std(window).to_numpy()
    return std * math.sqrt(horizon)


def realized_variance(returns: np.ndarray, horizon: int) -> np.ndarray:
    """What the forecast at bar t is judged against: the sum of squared log returns of bars t+1 ..
    t+horizon; NaN where the horizon runs past the data."""
    r2 = np.asarray(returns, dtype=np.float64) ** 2
    csum = np.concatenate([[0.0], np.cumsum(r2)])
    n = r2.size
    out = np.full(n, np.nan)
    t = np.arange(n - horizon)
    out[t] = csum[t + 1 + horizon] - csum[t + 1]
    return out


def qlike(forecast_sigma: np.ndarray, realized_var: np.ndarray) -> float:
    """Mean QLIKE loss log(f) + rv / f of variance forecasts f = sigma^2 (lower is better; robust
    to noise in the realized proxy, Patton 2011), over rows where both are finite and f > 0."""
    f = np.asarray(forecast_sigma, dtype=np.float64) ** 2
    rv = np.asarray(realized_var, dtype=np.float64)
    ok = np.isfinite(f) & np.isfinite(rv) & (f > 0)
    return float(np.mean(np.log(f[ok]) + rv[ok] / f[ok])) if ok.any() else math.nan


@dataclass(frozen=True)
class VolatilityEvaluation:
    """Out-of-fold losses of the agent and the naive forecast on the same rows, and coverage."""

    qlike_garch: float
    qlike_naive: float
    mse_garch: float
    mse_naive: float
    coverage_90: float
    rows: int
    folds: int

    @property
    def beats_naive(self) -> bool:
        return self.qlike_garch < self.qlike_naive

    def as_metrics(self) -> dict[str, float]:
        return {
            "oof_qlike": self.qlike_garch,
            "oof_qlike_naive": self.qlike_naive,
            "oof_mse_var": self.mse_garch,
            "oof_mse_var_naive": self.mse_naive,
            "oof_coverage_90": self.coverage_90,
            "oof_rows": float(self.rows),
        }


def evaluate_out_of_fold(
    close: pl.Series | np.ndarray, horizon: int, folds: int = 4, min_train: int = 300
) -> VolatilityEvaluation:
    """Expanding walk-forward: the bars after `min_train` are cut into `folds` blocks; each block is
    forecast by a GARCH fitted only on the bars ending `horizon` bars before it (so no realized
    window of a training row reaches the block), and by the naive forecast. Losses on the
    variance of the h-bar return: QLIKE and MSE; coverage: share of h-bar returns inside the
    forecast's 90 % interval."""
    r = log_returns(close)
    n = r.size
    if n < min_train + folds * 2 * horizon:
        raise VolatilityFitError(f"{n} bars are too few for {folds} folds after {min_train}")
    rv = realized_variance(r, horizon)
    # the h-bar log return after each bar, for the coverage of the forecast interval
    cum = np.full(n, np.nan)
    csum = np.concatenate([[0.0], np.cumsum(r)])
    t = np.arange(n - horizon)
    cum[t] = csum[t + 1 + horizon] - csum[t + 1]
    edges = np.linspace(min_train, n, folds + 1).astype(int)
    garch = np.full(n, np.nan)
    for start, end in zip(edges[:-1], edges[1:], strict=True):  # a handful of folds
        model = fit_garch(r[: start - horizon], horizon, where=f"fold at bar {start}")
        garch[start:end] = model.horizon_sigma(r)[start:end]
    naive = naive_sigma(r, horizon)
    rows = np.zeros(n, dtype=bool)
    rows[min_train:] = True
    rows &= np.isfinite(rv) & np.isfinite(garch) & np.isfinite(naive) & (naive > 0)
    g, nv, real = garch[rows], naive[rows], rv[rows]
    return VolatilityEvaluation(
        qlike_garch=qlike(g, real),
        qlike_naive=qlike(nv, real),
        mse_garch=float(np.mean((g**2 - real) ** 2)),
        mse_naive=float(np.mean((nv**2 - real) ** 2)),
        coverage_90=float(np.mean(np.abs(cum[rows]) <= COVERAGE_Z * g)),
        rows=int(rows.sum()),
        folds=folds,
    )


def volatility_frame(
    timestamps: pl.Series, close: pl.Series, model: GarchForecaster
) -> pl.DataFrame:
    """timestamp, sigma (forecast std of the h-bar log return, from bars up to t) per bar."""
    return pl.DataFrame(
        {"timestamp": timestamps, "sigma": model.horizon_sigma(log_returns(close.to_numpy()))}
    )


#: the model file inside a volatility version's artifact directory
MODEL_FILE = "volatility_model.json"


def register_volatility_model(
    tracker: Any,
    name: str,
    model: GarchForecaster,
    evaluation: VolatilityEvaluation,
    tags: dict[str, str],
    experiment: str = "volatility_model",
) -> tuple[str, str]:
    """One MLflow run (params, out-of-fold metrics, the model as JSON) and a new registered
    version of `name` (`volatility.<SYMBOL>.<tf>`) pointing at it, aliased `challenger` and tagged
    with the SHA-256 of its artifact (verified by `load_volatility_model`). Returns (version,
    run id). The model is 5 numbers, so it is stored as JSON, not through a model flavour."""
    import tempfile
    from pathlib import Path

    from mlflow.exceptions import MlflowException

    from quant_assets.lib.tracking import ALIAS_CHALLENGER, ARTIFACT_HASH_TAG, directory_digest

    client = tracker.client
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        (folder / MODEL_FILE).write_text(json.dumps(model.to_dict(), sort_keys=True))
        digest = directory_digest(folder)
        with tracker.run(experiment, name, tags) as run_id:
            tracker.log_params(run_id, {f"garch.{k}": v for k, v in model.to_dict().items()})
            tracker.log_metrics(run_id, evaluation.as_metrics())
            client.log_artifacts(run_id, str(folder), "model")
    with contextlib.suppress(MlflowException):  # registered before (or by a parallel step)
        client.create_registered_model(name)
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    # identity and hash written with the version (one registry write: see Tracker.log_model)
    version_tags = {key: str(value) for key, value in {**tags, ARTIFACT_HASH_TAG: digest}.items()}
    version = str(
        client.create_model_version(name, source, run_id=run_id, tags=version_tags).version
    )
    tracker.set_alias(name, ALIAS_CHALLENGER, version)
    return version, run_id


def load_volatility_model(tracker: Any, name: str, version: str) -> GarchForecaster:
    """A registered volatility version, after checking its artifact against the recorded hash."""
    import tempfile
    from pathlib import Path

    import mlflow

    from quant_assets.lib.tracking import ARTIFACT_HASH_TAG, verify_model_artifact

    tags = tracker.version_tags(name, version)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}",
            dst_path=tmp,
            tracking_uri=tracker.tracking_uri,
        )
        verify_model_artifact(name, str(version), tags.get(ARTIFACT_HASH_TAG), local)
        return GarchForecaster.from_dict(json.loads((Path(local) / MODEL_FILE).read_text()))
