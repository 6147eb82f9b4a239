"""Classification metrics: ECE by hand, bin boundaries, and agreement with scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score

from quant_assets.lib.metrics import (
    calibration_curve_table,
    classification_metrics,
    expected_calibration_error,
    roc_auc,
)

# Ten predictions over 3 bins [0, 1/3), [1/3, 2/3), [2/3, 1]:
#   bin 0: p = .1 .2 .3     y = 0 0 1    mean p = .2,  frac = 1/3, |1/3 - .2|  = 2/15, weight 3/10 -> .04
#   bin 1: p = .4 .5 .6     y = 0 1 1    mean p = .5,  frac = 2/3, |2/3 - .5|  = 1/6,  weight 3/10 -> .05
#   bin 2: p = .7 .8 .9 1.  y = 1 1 0 1  mean p = .85, frac = 3/4, |.75 - .85| = .1,   weight 4/10 -> .04
#   ECE = .04 + .05 + .04 = .13
HAND_P = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
HAND_Y = np.array([0, 0, 1, 0, 1, 1, 1, 1, 0, 1])


def test_ece_matches_hand_computation() -> None:
    assert expected_calibration_error(HAND_Y, HAND_P, n_bins=3) == pytest.approx(0.13, abs=1e-15)


def test_calibration_table_matches_hand_computation_and_sklearn() -> None:
    table = calibration_curve_table(HAND_Y, HAND_P, n_bins=3)
    assert table["count"].to_list() == [3, 3, 4]
    assert table["mean_pred"].to_list() == pytest.approx([0.2, 0.5, 0.85], abs=1e-15)
    assert table["frac_pos"].to_list() == pytest.approx([1 / 3, 2 / 3, 0.75], abs=1e-15)
    assert table["lower"].to_list() == pytest.approx([0, 1 / 3, 2 / 3])
    # no prediction sits on an interior edge, so sklearn's right-closed bins agree
    frac, mean = calibration_curve(HAND_Y, HAND_P, n_bins=3)
    assert table["frac_pos"].to_list() == pytest.approx(frac, abs=1e-15)
    assert table["mean_pred"].to_list() == pytest.approx(mean, abs=1e-15)


def test_calibration_table_agrees_with_sklearn_on_continuous_predictions() -> None:
    rng = np.random.default_rng(11)
    p = rng.beta(2, 3, 5000)
    y = (rng.random(5000) < p**1.3).astype(int)
    table = calibration_curve_table(y, p, n_bins=10).drop_nulls("mean_pred")
    frac, mean = calibration_curve(y, p, n_bins=10)
    np.testing.assert_allclose(table["frac_pos"].to_numpy(), frac, rtol=0, atol=1e-12)
    np.testing.assert_allclose(table["mean_pred"].to_numpy(), mean, rtol=0, atol=1e-12)
    # ECE is the count-weighted gap of that same table
    weights = table["count"].to_numpy() / 5000
    assert expected_calibration_error(y, p) == pytest.approx(
        float(np.sum(weights * np.abs(frac - mean))), abs=1e-12
    )


def test_bin_boundaries_belong_to_the_bin_above_and_one_to_the_last() -> None:
    # bins are [k/10, (k+1)/10): p = 0 is in bin 0, p = 0.1 in bin 1, p = 0.3 in bin 3, and p = 1
    # in bin 9, the one closed on the right
    table = calibration_curve_table([0, 1, 1, 0, 1], [0.0, 0.1, 0.1, 0.3, 1.0], n_bins=10)
    assert table["count"].to_list() == [1, 2, 0, 1, 0, 0, 0, 0, 0, 1]
    assert table["mean_pred"].to_list()[:4] == [0.0, 0.1, None, 0.3]
    literals = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert calibration_curve_table(np.zeros(10), literals)["count"].to_list() == [1] * 10
    # every float k/n lands in bin k, also where k/n is inexact and k/n * n rounds below k (1/49)
    for n_bins in (3, 7, 49):
        edges = np.arange(n_bins) / n_bins
        counts = calibration_curve_table(np.zeros(n_bins), edges, n_bins)["count"].to_list()
        assert counts == [1] * n_bins
    # sklearn closes its bins on the right instead: 0.1 sits in its first bin, with 0.0
    _, sk_mean = calibration_curve([0, 1, 1], [0.0, 0.1, 0.1], n_bins=10)
    assert sk_mean.tolist() == pytest.approx([0.2 / 3])


def test_ece_extremes() -> None:
    assert expected_calibration_error([0, 1, 0, 1], [0.0, 1.0, 0.0, 1.0]) == 0.0
    assert expected_calibration_error([0, 0, 0], [1.0, 1.0, 1.0]) == 1.0
    # one bin: |mean(y) - mean(p)| = |0.5 - 0.5|; ECE measures calibration, not discrimination
    assert expected_calibration_error([0, 1], [0.45, 0.55], n_bins=1) == pytest.approx(0.0)


def test_classification_metrics_agree_with_sklearn() -> None:
    rng = np.random.default_rng(5)
    p = np.round(rng.beta(2, 2, 4000), 2)  # rounded: many ties for the AUC rank sum
    p[:3] = [0.0, 1.0, 0.5]  # log-loss clipping and the threshold edge
    y = (rng.random(4000) < p).astype(int)
    y[:2] = [1, 0]  # confidently wrong at the extremes
    m = classification_metrics(y, p)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert m["log_loss"] == pytest.approx(log_loss(y, y_proba=p), abs=1e-12)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5), abs=1e-12)
    assert m["ece"] == expected_calibration_error(y, p)
    assert m["n"] == 4000
    assert m["positive_rate"] == pytest.approx(y.mean())
    assert m["log_loss"] > 36 / 4000  # two rows at -log(eps) = 36.04 each


def test_roc_auc_hand_cases() -> None:
    # positives .8, .4; negatives .4, .1: pairs (.8>.4) (.8>.1) (.4=.4 -> 1/2) (.4>.1) -> 3.5 / 4
    assert roc_auc([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]) == 0.875
    assert math.isnan(roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))  # a single class has no ROC curve
    assert math.isnan(classification_metrics([0, 0], [0.2, 0.5])["roc_auc"])


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "row 2 is"),
        ([0, 1, 1], [0.1, 1.2, 0.3], "row 1 is 1.2"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "row 1 is nan"),
        ([0, 1], [0.1, 0.2, 0.3], "equal length"),
        ([], [], "empty"),
    ],
)
def test_bad_inputs_are_rejected(y, p, match) -> None:
    with pytest.raises(ValueError, match=match):
        classification_metrics(y, p)
