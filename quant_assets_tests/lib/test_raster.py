"""Tests of the Pillow chart renderer (lib/raster.py): tick placement and labels, the colour scale
against matplotlib's, and pixels where the data says they are."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from PIL import Image

from quant_assets.lib import raster


def _us(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp() * 1e6


@pytest.mark.parametrize("max_ticks", [4, 6, 7])
def test_nice_ticks_are_round_evenly_spaced_and_inside_the_range(max_ticks):
    rng = np.random.default_rng(0)
    for _ in range(500):
        span = float(rng.uniform(0.01, 10) * 10.0 ** rng.integers(-4, 6))
        lo = float(rng.normal() * span * 10.0 ** rng.uniform(-2, 2))  # offsets up to 100 spans
        hi = lo + span
        ticks = raster.nice_ticks(lo, hi, max_ticks)
        assert 2 <= ticks.size <= max_ticks, (lo, hi, ticks)
        slack = 1e-8 * (hi - lo)  # far less than a pixel
        assert ticks.min() >= lo - slack and ticks.max() <= hi + slack
        steps = np.diff(ticks)
        np.testing.assert_allclose(steps, steps[0], atol=1e-9 * np.abs(ticks).max())
        step = float(f"{steps[0]:.9g}")
        mantissa = step / 10.0 ** np.floor(np.log10(step))
        assert min(abs(mantissa - m) for m in (1, 2, 2.5, 5)) < 1e-6, (lo, hi, step)
        np.testing.assert_allclose(ticks / step, np.round(ticks / step), atol=1e-6)
    assert raster.nice_ticks(0.0, 1.0, 6).tolist() == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert raster.nice_ticks(-0.55, 11.55, 6, integer=True).tolist() == [0, 2, 4, 6, 8, 10]
    assert raster.nice_ticks(-0.1, 2.1, 6, integer=True).tolist() == [0, 1, 2]
    assert raster.nice_ticks(3.0, 3.0).tolist() == [3.0]  # a single value: one tick


def test_tick_labels_tell_the_values_apart_with_the_fewest_decimals():
    assert raster.number_labels(np.array([0.0, 0.5, 1.0])) == ["0.0", "0.5", "1.0"]
    assert raster.number_labels(np.array([0.0, 2.0, 4.0])) == ["0", "2", "4"]
    assert raster.number_labels(np.array([-0.25, 0.0, 0.25])) == ["\u22120.25", "0.00", "0.25"]
    assert raster.percent_labels(np.array([-0.1, 0.0, 0.1])) == ["\u221210%", "0%", "10%"]
    assert raster.percent_labels(np.array([0.025, 0.05])) == ["2.5%", "5.0%"]
    assert raster.number_labels(np.array([])) == []


@pytest.mark.parametrize(
    ("start", "seconds"),
    [
        ((2024, 5, 3, 10, 7), 45),  # seconds
        ((2024, 5, 3, 10, 7), 50 * 60),  # minutes
        ((2024, 5, 3, 10, 7), 2 * 86400),  # hours
        ((2024, 5, 3), 40 * 86400),  # days
        ((2024, 1, 1), 120 * 86400),  # months
        ((2023, 3, 15), 3 * 365 * 86400),  # months, years at January
        ((1995, 1, 1), 30 * 365 * 86400),  # years
    ],
)
def test_date_ticks_fall_on_calendar_boundaries_inside_any_span(start, seconds):
    lo = _us(*start)
    hi = lo + seconds * 1e6
    ticks, labels = raster.date_ticks(lo, hi, 7)
    assert 2 <= ticks.size <= 7 and len(labels) == ticks.size
    assert ticks.min() >= lo and ticks.max() <= hi
    moments = [datetime.fromtimestamp(t / 1e6, UTC) for t in ticks]
    assert all(m.microsecond == 0 for m in moments)
    steps = np.diff(ticks)
    if seconds <= 2 * 86400:  # hours and finer: equally spaced
        np.testing.assert_allclose(steps, steps[0])
    else:  # days and coarser: at midnight, and months and years on their first day
        assert all((m.hour, m.minute, m.second) == (0, 0, 0) for m in moments)
    if seconds >= 120 * 86400:
        assert all(m.day == 1 for m in moments)
    for m, label in zip(moments, labels, strict=True):  # a year is named where it starts
        if (m.month, m.day, m.hour) == (1, 1, 0) and seconds >= 120 * 86400:
            assert label == str(m.year)


def test_date_labels_in_the_concise_style():
    ticks, labels = raster.date_ticks(_us(2024, 1, 1), _us(2026, 12, 31), 7)
    assert labels == ["2024", "Jul", "2025", "Jul", "2026", "Jul"]
    _, labels = raster.date_ticks(_us(2024, 3, 4, 6), _us(2024, 3, 6, 6), 7)
    assert labels[0] == "Mar 04 12:00" and "Mar 05" in labels and "12:00" in labels
    _, labels = raster.date_ticks(_us(2024, 3, 4), _us(2024, 4, 10), 7)
    assert labels[0].endswith(" 2024") and labels[1].startswith("Mar ")


def test_the_colour_scale_is_matplotlibs_rdylgn():
    from matplotlib import colormaps

    values = np.linspace(-1.0, 1.0, 101)
    ours = raster.colormap(values, -1.0, 1.0).astype(np.int16)
    theirs = np.rint(colormaps["RdYlGn"]((values + 1.0) / 2.0)[:, :3] * 255).astype(np.int16)
    assert np.abs(ours - theirs).max() <= 4  # matplotlib's 256-entry lookup table
    assert raster.colormap(np.array([np.nan]), -1.0, 1.0).tolist() == [[255, 255, 255]]
    assert raster.colormap(np.array([-5.0, 5.0]), -1.0, 1.0).tolist() == [
        list(raster.rgba(raster.RD_YL_GN[0])[:3]),
        list(raster.rgba(raster.RD_YL_GN[-1])[:3]),
    ]
    with pytest.raises(ValueError, match="unknown colour"):
        raster.rgba("chartreuse")


def test_panels_draw_the_data_where_the_limits_put_it(tmp_path):
    """A 200 x 200 pixel chart, a panel from 20 to 180 pixels each way over 0..10 x 0..10: a
    red line at y = 5, a green bar at x = 2 up to 4, points, a legend and labels; every mark at
    the pixels the limits map it to, white outside the frame."""
    chart = raster.Chart(2, 2, dpi=100)
    panel = chart.panel(0.1, 0.1, 0.9, 0.9, xlim=(0.0, 10.0), ylim=(0.0, 10.0), grid=True)
    panel.line([0.0, 10.0], [5.0, 5.0], "tab:red", width=3.0)
    panel.bars([2.0], [4.0], ["tab:green"], width=1.0)
    panel.points([8.0], [8.0], "tab:blue", size=8.0)
    panel.line([0.0, 1.0, np.nan, 3.0], [9.0, 9.0, np.nan, 9.0], "black", width=1.0)  # a gap
    panel.axes(title="t", xlabel="x", ylabel="y")
    chart.save(tmp_path / "probe.png")
    stored = Image.open(tmp_path / "probe.png")
    assert stored.size == (200, 200) and stored.mode == "P"
    assert stored.info["dpi"] == pytest.approx((100, 100), abs=0.01)
    pixels = np.asarray(stored.convert("RGB"), dtype=np.int16)

    def near(at: tuple[int, int], colour: str, tolerance: int = 40) -> bool:
        x, y = at
        return bool(np.abs(pixels[y, x] - raster.rgba(colour)[:3]).max() <= tolerance)

    assert near((100, 100), "tab:red")  # y = 5 is the panel's middle row
    assert near((52, 150), "tab:green")  # x = 2 -> pixel 52, y in 0..4 -> rows 116..180
    assert not near((52, 110), "tab:green")  # above the bar's top (4 -> row 116)
    assert near((148, 52), "tab:blue")  # x = 8, y = 8 -> pixel (148, 52)
    assert near((24, 36), "black", 60)  # the first stretch of the broken line at y = 9
    assert not near((36, 36), "black", 120)  # the gap at x = 2
    assert near((20, 60), "black", 60) and near((180, 60), "black", 60)  # the frame
    assert np.all(pixels[:, 195:] >= 250)  # white right of the frame (the palette's white)
    # tick labels and axis labels are text below and left of the frame
    assert (pixels[183:200, 20:180] < 128).any() and (pixels[20:180, 0:18] < 128).any()


def test_rotated_labels_and_legends_stay_inside_the_figure(tmp_path):
    chart = raster.Chart(3, 2, dpi=100)
    panel = chart.panel(0.2, 0.2, 0.95, 0.85, xlim=(0.0, 1.0), ylim=(0.0, 1.0))
    panel.legend([("a line", "tab:blue", "line"), ("points", "tab:gray", "point"),
                  ("dashed", "grey", "dashed"), ("patch", "tab:red", "patch")])  # fmt: skip
    panel.axes(ylabel="a long axis label", title="title\nsubtitle")
    chart.save(tmp_path / "legend.png")
    pixels = np.asarray(Image.open(tmp_path / "legend.png").convert("RGB"), dtype=np.int16)
    ink = pixels.min(axis=2) < 128
    assert ink[:, :15].any()  # the rotated label, left of the tick labels
    assert ink[:25].any()  # two title lines above the frame


def test_every_chart_kind_is_drawn_from_pipeline_shaped_frames(tmp_path):
    """The four chart kinds the pipeline draws, at the sizes stored (pixels = inches x dpi)."""
    from quant_assets.lib.calibration import calibration_plot_png
    from quant_assets.lib.plots import equity_curve_png, fold_evidence_png

    stamps = pl.datetime_range(
        datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC), "1h", eager=True
    )
    curve = pl.DataFrame({"timestamp": stamps, "equity": np.linspace(1.0, 1.3, stamps.len())})
    path = equity_curve_png({"a": curve}, tmp_path / "equity.png", "equity")
    assert Image.open(path).size == (1000, 600)
    folds = pl.DataFrame({"fold": [0, 1], "total_return": [0.1, -0.1], "sharpe": [1.0, -1.0]})
    trials = pl.DataFrame({"sharpe": [0.3], "selected": [True]})
    assert Image.open(fold_evidence_png(folds, trials, tmp_path / "f.png")).size == (1000, 360)
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 2, 300), rng.random(300)
    path = calibration_plot_png({"raw": (y, p)}, tmp_path / "c.png")
    assert Image.open(path).size == (704, 792)
    assert Image.open(path).info["dpi"] == pytest.approx((110, 110), abs=0.01)
