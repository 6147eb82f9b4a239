"""Calibrators fitted on one sample fix a miscalibrated predictor on another; the plot is a real PNG."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from quant_assets.lib.calibration import calibration_plot_png, fit_calibrator
from quant_assets.lib.metrics import expected_calibration_error


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _overconfident_sample(seed: int, n: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """(y, p) where p = sigmoid(2 * logit(true_p)): right ranking, twice too confident."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0.0, 1.5, n)
    y = (rng.random(n) < _sigmoid(true_logit)).astype(int)
    return y, _sigmoid(2.0 * true_logit)


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_calibration_reduces_ece_on_a_separate_sample(method: str) -> None:
    y_fit, p_fit = _overconfident_sample(seed=1)
    y_eval, p_eval = _overconfident_sample(seed=2)
    calibrator = fit_calibrator(p_fit, y_fit, method)  # type: ignore[arg-type]
    before = expected_calibration_error(y_eval, p_eval)
    after = expected_calibration_error(y_eval, calibrator.predict(p_eval))
    assert before > 0.08  # measured 0.106; after: isotonic 0.014, sigmoid 0.007
    assert after < 0.02 and after < before / 4


def test_platt_scaling_recovers_the_distortion() -> None:
    # logit(p) = 2 * true logit, so the exact fix is slope 1/2, intercept 0
    y, p = _overconfident_sample(seed=3, n=50_000)
    calibrator = fit_calibrator(p, y, "sigmoid")
    assert calibrator.slope == pytest.approx(0.5, abs=0.03)
    assert calibrator.intercept == pytest.approx(0.0, abs=0.03)


def test_calibrators_are_monotone_picklable_and_bounded() -> None:
    y, p = _overconfident_sample(seed=4, n=5_000)
    grid = np.linspace(0.0, 1.0, 501)
    for method in ("isotonic", "sigmoid"):
        calibrator = fit_calibrator(p, y, method)  # type: ignore[arg-type]
        out = calibrator.predict(grid)
        assert np.all(np.diff(out) >= 0)
        assert out.min() >= 0.0 and out.max() <= 1.0
        restored = pickle.loads(pickle.dumps(calibrator))
        assert np.array_equal(restored.predict(grid), out)


def test_fit_calibrator_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="both classes"):
        fit_calibrator([0.2, 0.4], [1, 1], "isotonic")
    with pytest.raises(ValueError, match="row 1 is 1.5"):
        fit_calibrator([0.2, 1.5], [0, 1], "sigmoid")
    with pytest.raises(ValueError, match="unknown calibration method"):
        fit_calibrator([0.2, 0.4], [0, 1], "beta")  # type: ignore[arg-type]


def test_calibration_plot_png_writes_a_real_image(tmp_path: Path) -> None:
    y_fit, p_fit = _overconfident_sample(seed=5, n=5_000)
    y, p = _overconfident_sample(seed=6, n=5_000)
    calibrated = fit_calibrator(p_fit, y_fit, "isotonic").predict(p)
    path = calibration_plot_png(
        {"raw": (y, p), "isotonic": (y, calibrated)}, tmp_path / "plots" / "reliability.png"
    )
    assert path == tmp_path / "plots" / "reliability.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000
    with pytest.raises(ValueError, match="at least one"):
        calibration_plot_png({}, tmp_path / "empty.png")


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_calibrator_json_round_trip_predicts_identically(method: str) -> None:
    import json

    from quant_assets.lib.calibration import Calibrator, fit_calibrator

    rng = np.random.default_rng(5)
    p = rng.uniform(0, 1, 3000)
    y = (rng.uniform(0, 1, 3000) < p**2).astype(int)
    fitted = fit_calibrator(p, y, method)
    restored = Calibrator.from_dict(json.loads(json.dumps(fitted.to_dict())))
    grid = np.concatenate([np.linspace(0, 1, 1001), rng.uniform(0, 1, 500)])
    np.testing.assert_array_equal(restored.predict(grid), fitted.predict(grid))


@pytest.mark.parametrize(
    ("seed", "n", "distortion", "base_rate"),
    [(0, 20_000, 2.0, 0.5), (1, 300, 0.5, 0.5), (2, 5_000, 1.0, 0.1), (3, 60, 3.0, 0.8)],
)
def test_platt_parameters_match_scikit_learns_unpenalised_logistic_regression(
    seed: int, n: int, distortion: float, base_rate: float
) -> None:
    """Our Newton fit finds scikit-learn's LogisticRegression(C=inf) parameters on logit(p) (to its
    own L-BFGS tolerance) and a log-likelihood at least as high: small and large samples,
    over- and under-confident predictions, rare and common positives."""
    from sklearn.linear_model import LogisticRegression

    from quant_assets.lib.calibration import _logit, platt_parameters

    rng = np.random.default_rng(seed)
    true_logit = rng.normal(np.log(base_rate / (1 - base_rate)), 1.2, n)
    y = (rng.random(n) < _sigmoid(true_logit)).astype(int)
    x = _logit(_sigmoid(distortion * true_logit))
    slope, intercept = platt_parameters(x, y.astype(float))
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(x[:, None], y)
    assert slope == pytest.approx(float(ref.coef_[0, 0]), rel=1e-5, abs=1e-7)
    assert intercept == pytest.approx(float(ref.intercept_[0]), rel=1e-5, abs=1e-7)

    def log_likelihood(a: float, b: float) -> float:
        z = a * x + b
        return float(np.sum(y * z - np.logaddexp(0.0, z)))

    default = LogisticRegression(C=np.inf).fit(x[:, None], y)  # what fit_calibrator used before
    assert (
        log_likelihood(slope, intercept)
        >= log_likelihood(float(default.coef_[0, 0]), float(default.intercept_[0])) - 1e-9
    )
    calibrator = fit_calibrator(_sigmoid(x), y, "sigmoid")
    assert (calibrator.slope, calibrator.intercept) == pytest.approx((slope, intercept), rel=1e-6)


def test_platt_parameters_stop_on_separable_classes() -> None:
    """Perfectly separated classes have no finite maximum: the fit still ends (at max_iter steps
    or when the steps vanish) with a steep, increasing, finite map that ranks as the data does."""
    from quant_assets.lib.calibration import platt_parameters

    x = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
    y = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    slope, intercept = platt_parameters(x, y)
    assert np.isfinite(slope) and np.isfinite(intercept)
    assert slope > 5
    assert abs(intercept) < 1e-3 * slope  # the data are symmetric about 0
