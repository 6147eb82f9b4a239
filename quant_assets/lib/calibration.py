"""Probability calibration of a classifier from its out-of-fold predictions (isotonic or Platt), and
reliability-diagram plots for the Dagster UI."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # scikit-learn is imported where used (cheap start-up)
    from sklearn.isotonic import IsotonicRegression

from quant_assets.lib.metrics import calibration_curve_table, expected_calibration_error

CalibrationMethod = Literal["isotonic", "sigmoid"]

# Platt scaling works on logit(p); clipping keeps p = 0 or 1 finite there.
_LOGIT_EPS = 1e-12


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _LOGIT_EPS, 1 - _LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def _probabilities(prob: Any, name: str = "prob") -> np.ndarray:
    p = np.asarray(prob, dtype=np.float64)
    outside = ~((p >= 0) & (p <= 1))
    if p.ndim != 1 or outside.any():
        where = (
            f"row {int(outside.argmax())} is {p[outside.argmax()]}"
            if p.ndim == 1
            else f"shape {p.shape}"
        )
        raise ValueError(f"{name} must be a 1-d array of probabilities in [0, 1]; {where}")
    return p


class Calibrator:
    """A fitted monotone map from raw to calibrated probabilities; small and picklable.

    isotonic: a step function (scikit-learn IsotonicRegression, clipped outside the fitted range).
    sigmoid: Platt scaling, sigmoid(slope * logit(p) + intercept).
    """

    def __init__(
        self,
        method: CalibrationMethod,
        isotonic: IsotonicRegression | None = None,
        slope: float = 1.0,
        intercept: float = 0.0,
    ) -> None:
        self.method = method
        self.isotonic = isotonic
        self.slope = slope
        self.intercept = intercept

    def predict(self, prob: Any) -> np.ndarray:
        p = _probabilities(prob)
        if self.method == "isotonic":
            return self.isotonic.predict(p)
        return 1.0 / (1.0 + np.exp(-(self.slope * _logit(p) + self.intercept)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (no pickle): the isotonic steps, or the two Platt parameters."""
        if self.method == "isotonic":
            return {
                "method": "isotonic",
                "x": self.isotonic.X_thresholds_.tolist(),
                "y": self.isotonic.y_thresholds_.tolist(),
            }
        return {"method": "sigmoid", "slope": self.slope, "intercept": self.intercept}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        """Rebuild a calibrator written by `to_dict`; its predictions are identical."""
        if data["method"] == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            x = np.asarray(data["x"], dtype=np.float64)
            y = np.asarray(data["y"], dtype=np.float64)
            # refitting on the thresholds themselves reproduces the same step function exactly
            iso.fit(x, y)
            return cls("isotonic", isotonic=iso)
        if data["method"] == "sigmoid":
            return cls("sigmoid", slope=float(data["slope"]), intercept=float(data["intercept"]))
        raise ValueError(f"unknown calibration method {data['method']!r}")

    def __repr__(self) -> str:
        if self.method == "isotonic":
            return f"Calibrator(isotonic, {len(self.isotonic.X_thresholds_)} thresholds)"
        return f"Calibrator(sigmoid, slope={self.slope:.4g}, intercept={self.intercept:.4g})"


def platt_parameters(x: np.ndarray, y: np.ndarray, max_iter: int = 100) -> tuple[float, float]:
    """(slope, intercept) maximizing the likelihood of 0/1 labels `y` under
    sigmoid(slope * x + intercept): Platt scaling, unpenalised (the two parameters are fitted on
    many rows, no shrinkage wanted).

    Newton's method with step halving, from the constant model: the log-likelihood is concave, so
    each accepted step improves it and the iteration ends at the maximum (a step below 1e-10, or
    max_iter steps when the classes are separable by x and no finite maximum exists). It agrees
    with scikit-learn's `LogisticRegression(C=inf)` (quant_assets_tests/lib/test_calibration.py)
    in a third to a sixth of the time (benchmarks/bench_meta.py): a pipeline fits hundreds of
    these per partition (every fold of every meta-learner is calibrated on the other folds), and
    scikit-learn's validation and L-BFGS set-up cost more than the two-parameter problem itself."""
    mean = float(y.mean())
    theta = np.array([0.0, np.log(mean) - np.log1p(-mean)])

    def loss(z: np.ndarray) -> float:
        return float(np.sum(np.logaddexp(0.0, z) - y * z))

    z = theta[0] * x + theta[1]
    current = loss(z)
    for _ in range(max_iter):
        s = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid(z) without overflow
        r = s - y
        w = s * (1.0 - s)
        gradient = np.array([np.dot(r, x), r.sum()])
        wx = w * x
        hessian = np.array([[np.dot(wx, x), wx.sum()], [wx.sum(), w.sum()]])
        try:
            step = np.linalg.solve(hessian + 1e-12 * np.eye(2), gradient)
        except np.linalg.LinAlgError:
            break
        scale = 1.0
        while scale > 1e-8:
            candidate = theta - scale * step
            candidate_z = candidate[0] * x + candidate[1]
            value = loss(candidate_z)
            if value <= current:
                break
            scale *= 0.5
        else:
            break
        theta, z, current = candidate, candidate_z, value
        if np.max(np.abs(scale * step)) < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def fit_calibrator(oof_prob: Any, y: Any, method: CalibrationMethod) -> Calibrator:
    """Calibrator fitted on out-of-fold probabilities and their 0/1 labels.

    Fit it on predictions the model made for rows it was not trained on (CV test folds): in-sample
    predictions are over-confident in a way the calibrator would learn and then misapply.
    """
    p = _probabilities(oof_prob, "oof_prob")
    labels = np.asarray(y)
    if labels.shape != p.shape:
        raise ValueError(f"oof_prob has shape {p.shape} but y has {labels.shape}")
    if not np.isin(labels, (0, 1)).all() or np.unique(labels).size < 2:
        raise ValueError("y must hold 0/1 labels of both classes to fit a calibrator")
    if method == "isotonic":
        # bounded away from 0 and 1 (add-one smoothing at the ends): an isotonic step of exactly 0
        # or 1 would give an infinite log loss to the first contrary row it meets
        bound = 1.0 / (p.size + 1)
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=bound, y_max=1 - bound, out_of_bounds="clip").fit(p, labels)
        return Calibrator("isotonic", isotonic=iso)
    if method == "sigmoid":
        slope, intercept = platt_parameters(_logit(p), labels.astype(np.float64))
        return Calibrator("sigmoid", slope=slope, intercept=intercept)
    raise ValueError(f"unknown calibration method {method!r}; expected 'isotonic' or 'sigmoid'")


def calibration_plot_png(
    curves: dict[str, tuple[Any, Any]],
    path: str | Path,
    n_bins: int = 10,
    title: str = "Reliability diagram",
) -> Path:
    """Write a reliability diagram of each named (y, prob) pair to the PNG `path` and return it.

    Top panel: fraction of positives against mean prediction per bin (ECE in the legend) and the
    diagonal of perfect calibration; bottom panel: histogram of the predictions on the same bins.
    """
    if not curves:
        raise ValueError("calibration_plot_png needs at least one (y, prob) curve")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from quant_assets.lib import raster
    from quant_assets.lib.plots import stacked

    edges = np.arange(n_bins + 1) / n_bins
    drawn = []
    for (name, (y, prob)), color in zip(curves.items(), raster.CYCLE * len(curves), strict=False):
        table = calibration_curve_table(y, prob, n_bins).drop_nulls("mean_pred")
        ece = expected_calibration_error(y, prob, n_bins)
        counts, _ = np.histogram(np.asarray(prob, dtype=np.float64), bins=edges)
        drawn.append((name, color, table, ece, counts))
    chart = raster.Chart(6.4, 7.2, dpi=110)
    top_box, bottom_box = stacked(0.12, 0.97, 0.08, 0.95, (3, 1), 0.08)
    top = chart.panel(*top_box, xlim=(0.0, 1.0), ylim=(0.0, 1.0), grid=True)
    highest = raster.limits([0.0, max(float(c.max()) for *_, c in drawn)])[1]
    bottom = chart.panel(
        *bottom_box,
        xlim=(0.0, 1.0),
        ylim=(0.0, highest),
        grid=True,
        yticks=raster.nice_ticks(0.0, highest, 4),
    )  # a histogram stands on 0
    top.line([0, 1], [0, 1], "grey", 1.0, dashed=True)
    for _, color, table, _, counts in drawn:
        top.line(table["mean_pred"].to_numpy(), table["frac_pos"].to_numpy(), color)
        top.points(table["mean_pred"].to_numpy(), table["frac_pos"].to_numpy(), color, 6.0)
        # the histogram's outline (histtype="step")
        bottom.line(np.repeat(edges, 2), np.r_[0.0, np.repeat(counts, 2), 0.0], color, 1.5)
    top.axes(title=title, ylabel="fraction of positives", show_xlabels=False)
    top.legend(
        [("perfectly calibrated", "grey", "dashed")]
        + [(f"{name} (ECE {ece:.4f})", color, "line") for name, color, _, ece, _ in drawn],
        size=8.3,
    )
    bottom.axes(xlabel="predicted probability", ylabel="rows")
    chart.save(path)
    return path
