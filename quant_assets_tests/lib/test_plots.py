"""Tests of the backtest charts: PNG files written, and monthly returns worked by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from quant_assets.lib.backtest import run_backtest
from quant_assets.lib.plots import backtest_report_png, equity_curve_png, monthly_returns
from quant_assets_tests.lib.bars_factory import make_bars

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_monthly_returns_compound_within_each_month():
    per_bar = pl.DataFrame(
        {
            "timestamp": [
                _utc(2024, 1, 30),
                _utc(2024, 1, 31, 23),  # the last hour of January is still January (UTC)
                _utc(2024, 2, 1),
                _utc(2024, 2, 29),
                _utc(2024, 3, 1),
            ],
            "net_ret": [0.01, 0.02, -0.01, 0.03, 0.05],
        }
    )
    out = monthly_returns(per_bar)
    assert out["year"].to_list() == [2024, 2024, 2024]
    assert out["month"].to_list() == [1, 2, 3]
    # January 1.01 x 1.02 - 1 = 0.0302; February 0.99 x 1.03 - 1 = 0.0197; March 0.05
    np.testing.assert_allclose(out["return"].to_numpy(), [0.0302, 0.0197, 0.05], rtol=1e-12)
    with pytest.raises(ValueError, match="lacks"):
        monthly_returns(per_bar.drop("net_ret"))


def _result(seed: int, n: int = 24 * 120):
    bars = make_bars(n, "1h", seed=seed)
    rng = np.random.default_rng(seed)
    at = np.sort(rng.choice(n, n // 24, replace=False))
    signals = pl.DataFrame(
        {"timestamp": bars["timestamp"].gather(at), "side": rng.choice([-1, 0, 1], at.size)}
    )
    return run_backtest(bars, signals, timeframe="1h")


def _assert_png(path, min_bytes: int = 5_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes


def test_equity_curve_png_draws_several_curves(tmp_path):
    challenger, champion = _result(1), _result(2)
    path = equity_curve_png(
        {"challenger": challenger.equity, "champion": champion.equity},
        tmp_path / "charts" / "equity.png",
        "challenger vs champion",
    )
    assert path == tmp_path / "charts" / "equity.png"
    _assert_png(path)
    with pytest.raises(ValueError, match="no curves"):
        equity_curve_png({}, tmp_path / "empty.png", "nothing")


@pytest.mark.parametrize(
    ("bars", "step"),
    [(1, "1h"), (2, "1h"), (10, "1m"), (48, "1h"), (30, "1d"), (26_000, "1h"), (10_950, "1d")],
)
def test_the_date_axis_draws_any_span_without_a_warning(tmp_path, bars, step):
    """A chart is drawn for every partition, whatever its bars: one bar, minutes, decades. The
    date axis (`raster.date_ticks`) finds calendar ticks for every span, without a warning."""
    import warnings

    seconds = {"1m": 60, "1h": 3600, "1d": 86400}[step]
    start = _utc(2023, 1, 1).timestamp()
    frame = pl.DataFrame(
        {
            "timestamp": [datetime.fromtimestamp(start + i * seconds, UTC) for i in range(bars)],
            "equity": np.linspace(1.0, 1.2, bars),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_png(equity_curve_png({"curve": frame}, tmp_path / "equity.png", "span"))


def test_backtest_report_png(tmp_path):
    result = _result(3)
    assert monthly_returns(result.per_bar).height == 4  # 120 days from Jan 1st to Apr 29th
    path = backtest_report_png(
        result, str(tmp_path / "report.png"), "toy", metrics={"sharpe": 0.5, "max_drawdown": 0.1}
    )
    _assert_png(path)
    # the champion's curve beside it (the evaluation's one chart)
    champion = _result(4)
    path = backtest_report_png(
        result, tmp_path / "both.png", "toy", label="challenger v2",
        others={"champion v1": champion.per_bar.select("timestamp", "equity")},
    )  # fmt: skip
    _assert_png(path)
    with pytest.raises(ValueError, match="lacks"):
        backtest_report_png(
            result, tmp_path / "x.png", others={"bad": champion.per_bar.select("timestamp")}
        )


def test_fold_evidence_png(tmp_path):
    from quant_assets.lib.plots import fold_evidence_png

    folds = pl.DataFrame(
        {
            "fold": [0, 1, 2],
            "total_return": [0.02, -0.01, float("nan")],
            "sharpe": [1.5, -0.4, None],
        }
    )
    trials = pl.DataFrame({"sharpe": [0.5, 1.5, -0.2], "selected": [False, True, False]})
    path = fold_evidence_png(folds, trials, tmp_path / "folds.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="trials lacks"):
        fold_evidence_png(folds, trials.drop("selected"), tmp_path / "x.png")


def test_charts_are_drawn_with_the_draw_settings_and_leave_rcparams_alone(tmp_path):
    """`save_png` draws under DRAW_RC (glyphs without FreeType's hinting, read when text is
    drawn) and restores matplotlib's settings afterwards: the process's other figures keep theirs."""
    import matplotlib
    from matplotlib.artist import Artist
    from matplotlib.figure import Figure

    from quant_assets.lib.plots import DRAW_RC, save_png

    seen: list[str] = []

    class Probe(Artist):
        def draw(self, renderer):
            seen.append(matplotlib.rcParams["text.hinting"])

    before = matplotlib.rcParams["text.hinting"]
    assert before != DRAW_RC["text.hinting"]  # matplotlib's default: the auto-hinter
    fig = Figure(figsize=(2, 2), dpi=50)
    fig.add_artist(Probe())
    save_png(fig, tmp_path / "probe.png")
    assert seen == [DRAW_RC["text.hinting"]]
    assert matplotlib.rcParams["text.hinting"] == before
    _assert_png(tmp_path / "probe.png", min_bytes=100)


def test_charts_are_stored_as_paletted_pngs_close_to_what_matplotlib_draws(tmp_path):
    """A chart is written with a palette of at most 256 colours: about a third of the bytes of
    matplotlib's RGBA file, every pixel within a few levels of what matplotlib drew (the flat
    colours of lines, fills and cells exactly; only anti-aliased edges move), at the figure's
    size and dpi; `dpi` draws it at another resolution and leaves the figure as it was."""
    import io

    from matplotlib.figure import Figure
    from PIL import Image

    from quant_assets.lib.plots import save_png

    def figure() -> Figure:
        fig = Figure(figsize=(8, 5), dpi=100)
        ax = fig.subplots()
        rng = np.random.default_rng(3)
        for k in range(3):
            ax.plot(np.cumsum(rng.normal(size=2000)), lw=1.2, label=f"curve {k}")
        ax.fill_between(np.arange(2000), -np.abs(rng.normal(size=2000)), 0.0, alpha=0.3)
        ax.legend()
        ax.set_title("three curves")
        return fig

    save_png(figure(), tmp_path / "chart.png")
    stored = Image.open(tmp_path / "chart.png")
    assert stored.format == "PNG" and stored.mode == "P" and stored.size == (800, 500)
    assert len(stored.getcolors(maxcolors=256) or []) >= 10  # a palette, not a few grey levels
    drawn = io.BytesIO()
    figure().savefig(drawn, format="png")  # matplotlib's own file: RGBA
    drawn.seek(0)
    reference = np.asarray(Image.open(drawn).convert("RGB"), dtype=np.int16)
    ours = np.asarray(stored.convert("RGB"), dtype=np.int16)
    error = np.abs(ours - reference).max(axis=2)
    assert error.mean() < 3.0
    assert (error > 16).mean() < 0.01
    assert (tmp_path / "chart.png").stat().st_size < 0.6 * len(drawn.getvalue())
    fig = figure()
    buffer = io.BytesIO()
    save_png(fig, buffer, dpi=50)
    assert Image.open(io.BytesIO(buffer.getvalue())).size == (400, 250)
    assert fig.dpi == 100
