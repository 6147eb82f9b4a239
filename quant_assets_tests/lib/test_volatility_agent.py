"""The volatility agent: GARCH(1,1) sigma over the label horizon, look-ahead free, better than a
naive rolling standard deviation out of fold, registered in MLflow with aliases and a hash."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from quant_assets.lib.errors import ModelIntegrityError
from quant_assets.lib.ohlcv import bars_for_timeframe
from quant_assets.lib.sources.synthetic import SyntheticSource
from quant_assets.lib.tracking import ALIAS_CHALLENGER, Tracker
from quant_assets.lib.volatility import (
    evaluate_out_of_fold,
    fit_garch,
    load_volatility_model,
    log_returns,
    realized_variance,
    register_volatility_model,
)
from quant_assets_tests.lib.bars_factory import make_bars


@pytest.fixture(scope="module")
def synthetic_close():
    source = SyntheticSource(
        seed=7, start=datetime(2023, 1, 1, tzinfo=UTC), end=datetime(2024, 3, 1, tzinfo=UTC)
    )
    return bars_for_timeframe(source, "BTCUSDT", "4h").frame["close"]


def test_forecast_uses_only_bars_up_to_t(synthetic_close) -> None:
    """Truncation test: sigma at every bar is identical when the history after it is cut off (or
    replaced by anything else)."""
    r = log_returns(synthetic_close.to_numpy())
    model = fit_garch(r[:1500], horizon=5)
    full = model.horizon_sigma(r)
    for cut in (200, 900, 1700, r.size - 1):
        assert np.array_equal(model.horizon_sigma(r[:cut]), full[:cut])
    shocked = r.copy()
    shocked[1200:] *= 10.0  # a different future changes nothing before it
    assert np.array_equal(model.horizon_sigma(shocked)[:1200], full[:1200])
    assert np.all(full > 0) and np.all(np.isfinite(full))


def test_realized_variance_is_the_next_horizon() -> None:
    r = np.array([0.0, 0.1, -0.2, 0.3, 0.0, 0.1])
    rv = realized_variance(r, 2)
    assert rv[0] == pytest.approx(0.01 + 0.04) and rv[3] == pytest.approx(0.0 + 0.01)
    assert np.isnan(rv[4]) and np.isnan(rv[5])


def test_garch_beats_the_naive_forecast_out_of_fold(synthetic_close) -> None:
    evaluation = evaluate_out_of_fold(synthetic_close, horizon=5)
    print(
        f"\nOOF QLIKE on synthetic BTCUSDT 4h ({evaluation.rows} rows, {evaluation.folds} folds): "
        f"GARCH(1,1) {evaluation.qlike_garch:.4f}, naive 20-bar std {evaluation.qlike_naive:.4f}; "
        f"MSE of variance {evaluation.mse_garch:.3e} vs {evaluation.mse_naive:.3e}; "
        f"90 % interval coverage {evaluation.coverage_90:.3f}"
    )
    assert evaluation.beats_naive
    assert evaluation.mse_garch < evaluation.mse_naive
    assert 0.8 < evaluation.coverage_90 < 0.97
    # on fat-tailed i.i.d. returns too (constant volatility: GARCH shrinks to the average)
    iid = evaluate_out_of_fold(make_bars(3000, seed=5)["close"], horizon=5)
    print(f"i.i.d. t(3) bars: GARCH {iid.qlike_garch:.4f}, naive {iid.qlike_naive:.4f}")
    assert iid.beats_naive


def test_registered_with_challenger_alias_and_verified_on_load(mlflow_uri, synthetic_close) -> None:
    tracker = Tracker(mlflow_uri)
    r = log_returns(synthetic_close.to_numpy())
    model = fit_garch(r, horizon=5)
    evaluation = evaluate_out_of_fold(synthetic_close, horizon=5)
    name = "volatility.BTCUSDT.4h"
    version, run_id = register_volatility_model(
        tracker, name, model, evaluation, {"data_version": "abc", "version_label": "v1.0"}
    )
    assert tracker.aliases(name) == {ALIAS_CHALLENGER: version}
    assert load_volatility_model(tracker, name, version) == model
    metrics = tracker.client.get_run(run_id).data.metrics
    assert metrics["oof_qlike"] < metrics["oof_qlike_naive"]
    # a changed artifact is refused
    tracker.set_version_tags(name, version, {"artifact_sha256": "0" * 64})
    with pytest.raises(ModelIntegrityError):
        load_volatility_model(tracker, name, version)
