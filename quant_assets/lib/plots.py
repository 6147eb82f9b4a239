"""PNG charts of backtests for asset metadata and MLflow runs: equity curves over drawdowns,
monthly returns, out-of-fold evidence. Drawn with `lib.raster` (Pillow), as every partition draws
several of them; `save_png` stores the matplotlib figures of one-off reports the same way
(`raster.save_image`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from quant_assets.lib import raster
from quant_assets.lib.backtest import BacktestResult
from quant_assets.lib.performance import drawdowns

if TYPE_CHECKING:  # Pillow and matplotlib are imported where an image is made (cheap start-up)
    from matplotlib.figure import Figure

_MONTHS = "JFMAMJJASOND"

#: a line is drawn through at most this many points (a 3-year 1h curve holds 26,000 bars; a
#: 1000-pixel-wide panel cannot show more, and every point drawn costs CPU in every run)
MAX_LINE_POINTS = 2000


def _thin(n: int, *keep: int) -> np.ndarray:
    """Indices of at most about MAX_LINE_POINTS evenly spread points of a series of n, always
    holding the first, the last and `keep` (e.g. the deepest drawdown, so the chart shows it)."""
    if n <= MAX_LINE_POINTS:
        return np.arange(n)
    even = np.linspace(0, n - 1, MAX_LINE_POINTS).astype(np.int64)
    return np.unique(np.r_[even, np.asarray(keep, dtype=np.int64)])


def stacked(
    left: float, right: float, bottom: float, top: float, ratios: Sequence[float], gap: float
) -> list[tuple[float, float, float, float]]:
    """Figure-fraction boxes (left, bottom, right, top) of panels stacked top to bottom with
    heights in `ratios`, `gap` apart as a fraction of the mean panel height (matplotlib's
    subplots_adjust with hspace)."""
    n = len(ratios)
    mean = (top - bottom) / (n + gap * (n - 1))
    scale = mean * n / sum(ratios)
    boxes, y = [], top
    for ratio in ratios:
        height = ratio * scale
        boxes.append((left, y - height, right, y))
        y -= height + gap * mean
    return boxes


def side_by_side(
    left: float, right: float, bottom: float, top: float, n: int, gap: float
) -> list[tuple[float, float, float, float]]:
    """Figure-fraction boxes of n equal panels in a row (subplots_adjust with wspace)."""
    width = (right - left) / (n + gap * (n - 1))
    return [
        (left + k * width * (1 + gap), bottom, left + k * width * (1 + gap) + width, top)
        for k in range(n)
    ]


def monthly_returns(per_bar: pl.DataFrame) -> pl.DataFrame:
    """Compounded net return per calendar month: year, month, return = prod(1 + net_ret) - 1.

    A bar belongs to the month of its timestamp (its open time) in the column's time zone (UTC
    for canonical bars). Only months holding bars appear, sorted.
    """
    missing = {"timestamp", "net_ret"} - set(per_bar.columns)
    if missing:
        raise ValueError(f"monthly_returns: per_bar lacks {sorted(missing)}; got {per_bar.columns}")
    ts = pl.col("timestamp")
    return (
        per_bar.group_by(year=ts.dt.year(), month=ts.dt.month())
        .agg(((1.0 + pl.col("net_ret")).product() - 1.0).alias("return"))
        .sort("year", "month")
    )


def equity_curve_png(
    curves: Mapping[str, pl.DataFrame], path: str | Path, title: str = "Equity"
) -> Path:
    """Several equity curves (frames with timestamp, equity) on one chart, e.g. challenger vs
    champion, above a panel of their drawdowns from each curve's own running peak."""
    if not curves:
        raise ValueError("equity_curve_png: no curves to draw")
    series = []
    for (name, frame), color in zip(curves.items(), raster.CYCLE * len(curves), strict=False):
        x, equity = _equity_xy(frame, name, "equity_curve_png")
        dd = drawdowns(equity)
        shown = _thin(x.size, int(np.argmax(dd)) if dd.size else 0)
        series.append((name, color, x[shown], equity[shown], -dd[shown]))
    chart = raster.Chart(10, 6, dpi=100)
    top, bottom = stacked(0.09, 0.98, 0.06, 0.94, (3, 1), 0.12)
    equity_panel, dd_panel = _equity_panels(chart, top, bottom, series)
    equity_panel.legend([(name, color, "line") for name, color, *_ in series])
    _label_equity_panels(equity_panel, dd_panel, title)
    return _save(chart, path)


def backtest_report_png(
    result: BacktestResult,
    path: str | Path,
    title: str = "Backtest",
    metrics: Mapping[str, float] | None = None,
    label: str | None = None,
    others: Mapping[str, pl.DataFrame] | None = None,
) -> Path:
    """Equity, drawdown (from the initial capital's peak on, as performance.max_drawdown) and a
    year x month heatmap of compounded monthly returns; `metrics` are printed under the title.

    `others`: more equity curves (frames with timestamp, equity; e.g. the champion's on the same
    bars) drawn on the equity panel beside this one, named `label`, for comparison (one chart
    where the evaluation drew two)."""
    per_bar = result.per_bar
    x = per_bar.get_column("timestamp").to_numpy()
    equity = per_bar.get_column("equity").to_numpy()
    dd = drawdowns(np.r_[1.0, equity])[1:]
    shown = _thin(x.size, int(np.argmax(dd)) if dd.size else 0)
    series = [(label or "strategy", "tab:blue", x[shown], equity[shown], -dd[shown])]
    extra = []
    for (name, frame), color in zip((others or {}).items(), raster.CYCLE[1:] * 9, strict=False):
        ox, oy = _equity_xy(frame, name, "backtest_report_png")
        kept = _thin(ox.size)
        extra.append((name, color, ox[kept], oy[kept]))

    chart = raster.Chart(11, 10, dpi=100)
    top, middle, low = stacked(0.09, 0.98, 0.04, 0.92, (3, 1, 2), 0.3)
    equity_panel, dd_panel = _equity_panels(chart, top, middle, series, extra=extra, baseline=1.0)
    if others:
        equity_panel.legend(
            [(series[0][0], "tab:blue", "line")] + [(n, c, "line") for n, c, *_ in extra]
        )
    subtitle = ""
    if metrics:
        subtitle = "\n" + "   ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    _label_equity_panels(
        equity_panel,
        dd_panel,
        f"{title} ({result.timeframe}, {result.trades.height} trades)" + subtitle,
    )
    _monthly_heatmap(chart, low, monthly_returns(per_bar))
    return _save(chart, path)


def _equity_xy(frame: pl.DataFrame, name: str, caller: str) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps, equity) of a named curve frame; ValueError naming the curve when a column lacks."""
    missing = {"timestamp", "equity"} - set(frame.columns)
    if missing:
        raise ValueError(f"{caller}: curve {name!r} lacks {sorted(missing)}")
    return frame.get_column("timestamp").to_numpy(), frame.get_column("equity").to_numpy()


def _equity_panels(chart, top_box, bottom_box, series, extra=(), baseline: float | None = None):
    """An equity panel over a drawdown panel sharing a date axis: series are (name, colour, x,
    equity, -drawdown); `extra` (name, colour, x, equity) curves on the equity panel only."""
    xs = [raster.as_micros(x) for _, _, x, _, _ in series] + [
        raster.as_micros(x) for *_, x, _ in extra
    ]
    xlim = raster.limits(*xs, single=raster.ONE_DAY_US)
    ylim = raster.limits(
        *(s[3] for s in series),
        *(e[3] for e in extra),
        include=[baseline] if baseline is not None else [],
    )
    ddlim = raster.limits(*(s[4] for s in series), include=[0.0])
    equity_panel = chart.panel(*top_box, xlim=xlim, ylim=ylim, x_dates=True, grid=True)
    dd_panel = chart.panel(*bottom_box, xlim=xlim, ylim=ddlim, x_dates=True, grid=True)
    if baseline is not None:
        equity_panel.hline(baseline, "grey", 0.6)
    for (_, color, _, equity, dd), x in zip(series, xs, strict=False):
        equity_panel.line(x, equity, color, 1.2)
        dd_panel.fill_between(x, 0.0, dd, color, alpha=0.3)
        dd_panel.line(x, dd, color, 0.8)
    for (_, color, _, equity), x in zip(extra, xs[len(series) :], strict=True):
        equity_panel.line(x, equity, color, 1.0, alpha=0.8)
    return equity_panel, dd_panel


def _label_equity_panels(equity_panel, dd_panel, title: str) -> None:
    """At most 6 value ticks, 7 date ticks on the drawdown panel (which labels the shared x
    axis), grids, axis labels and the title."""
    equity_panel.axes(title=title, ylabel="equity", show_xlabels=False)
    dd_panel.axes(ylabel="drawdown", ylabels=raster.percent_labels)


def _monthly_heatmap(chart, box, monthly: pl.DataFrame) -> None:
    years = list(range(int(monthly["year"].min()), int(monthly["year"].max()) + 1))
    grid = np.full((len(years), 12), np.nan)
    rows = monthly["year"].to_numpy() - years[0]
    grid[rows, monthly["month"].to_numpy() - 1] = monthly["return"].to_numpy()
    bound = float(np.nanmax(np.abs(grid))) or 1e-9
    labelled = grid.size <= 240  # labels stay legible up to 20 years; each cell says its return
    left, bottom, right, top = box
    if not labelled:  # a colour scale at the right instead
        right -= 0.09
    # every year named while the rows are at least a line of text high, else every k-th
    row_height = (top - bottom) * chart.image.height / len(years)
    every = max(1, math.ceil(chart.px(10) * 1.2 / row_height))
    named = np.arange(0, len(years), every)
    panel = chart.panel(
        left,
        bottom,
        right,
        top,
        xlim=(-0.5, 11.5),
        ylim=(len(years) - 0.5, -0.5),
        xticks=np.arange(12.0),
        yticks=named.astype(np.float64),
    )
    panel.cells(raster.colormap(grid, -bound, bound))
    panel.axes(
        title="monthly returns", xlabels=list(_MONTHS), ylabels=[str(years[k]) for k in named]
    )
    if labelled:
        for (i, j), value in np.ndenumerate(grid):
            if np.isfinite(value):
                at = (float(panel.px(j)), float(panel.py(i)))
                chart.text(at, f"{value:.1%}", 7, anchor="mm")
    else:
        scale = chart.panel(
            right + 0.015,
            bottom,
            right + 0.035,
            top,
            ylim=(-bound, bound),
            xticks=[],
            yticks=raster.nice_ticks(-bound, bound, 5),
        )
        scale.cells(raster.colormap(np.linspace(bound, -bound, 64)[:, None], -bound, bound))
        scale.axes(ylabels=raster.percent_labels, yticks_right=True)


#: matplotlib settings while a figure is drawn (`save_png`): glyphs rasterized without FreeType's
#: hinting (matplotlib's default forces the auto-hinter on every glyph of every label). At our
#: font sizes and 100 dpi the charts look the same, for about 15 % less CPU.
DRAW_RC = {"text.hinting": "no_hinting"}


def save_png(fig: Figure, target: Any, dpi: float | None = None) -> None:
    """Draw a matplotlib `fig` on an Agg canvas with DRAW_RC (at `dpi` instead of its own, if
    given) and write it to `target` as `raster.save_image` does."""
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image as PILImage

    own_dpi = fig.dpi
    try:
        if dpi is not None:
            fig.set_dpi(dpi)
        with rc_context(DRAW_RC):
            canvas = FigureCanvasAgg(fig)
            canvas.draw()
        size = canvas.get_width_height(physical=True)
        # the canvas is opaque (the figure's face): its RGBA buffer read as RGB, alpha skipped
        pixels = PILImage.frombytes("RGB", size, canvas.buffer_rgba(), "raw", "RGBX")
        shown_dpi = fig.dpi
    finally:
        fig.set_dpi(own_dpi)
    raster.save_image(pixels, target, shown_dpi)


def _save(chart: raster.Chart, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chart.save(path)
    return path


def fold_evidence_png(
    folds: pl.DataFrame,
    trials: pl.DataFrame,
    path: str | Path,
    title: str = "Out-of-fold evidence",
) -> Path:
    """Per-fold total return and Sharpe of the selected trial's out-of-fold backtest (bars, green
    when the fold made money), beside the Sharpe ratios of every trial (the selected one marked).

    folds: fold, total_return, sharpe (trials.fold_metrics_table); trials: sharpe, selected
    (trials.SelectionEvidence.trials)."""
    for name, frame, columns in (
        ("folds", folds, {"fold", "total_return", "sharpe"}),
        ("trials", trials, {"sharpe", "selected"}),
    ):
        missing = columns - set(frame.columns)
        if missing:
            raise ValueError(f"fold_evidence_png: {name} lacks {sorted(missing)}")

    chart = raster.Chart(10, 3.6, dpi=100)
    boxes = side_by_side(0.06, 0.99, 0.14, 0.8, 3, 0.28)
    labels = [str(f) for f in folds["fold"].to_list()]
    at = np.arange(float(len(labels)))
    returns = folds["total_return"].fill_nan(0.0).fill_null(0.0).to_numpy()
    colors = ["tab:green" if r > 0 else "tab:red" for r in returns]
    sharpes = folds["sharpe"].fill_nan(0.0).fill_null(0.0).to_numpy()
    for box, values, panel_title, formatter in (
        (boxes[0], returns, "total return per fold", raster.percent_labels),
        (boxes[1], sharpes, "annualized Sharpe per fold", raster.number_labels),
    ):
        panel = chart.panel(
            *box,
            xlim=(-0.6, len(labels) - 0.4),
            xticks=at,
            ylim=raster.limits(values, include=[0.0]),
        )
        panel.bars(at, values, colors)
        panel.hline(0.0, "black", 0.8)
        panel.axes(title=panel_title, xlabel="fold", xlabels=labels, ylabels=formatter)
    sharpe = trials["sharpe"].cast(pl.Float64).to_numpy()
    selected = trials["selected"].to_numpy().astype(bool)
    order = np.arange(float(sharpe.size))
    panel = chart.panel(
        *boxes[2],
        xlim=raster.limits(order),
        x_integer=True,
        max_xticks=6,
        ylim=raster.limits(sharpe, include=[0.0]),
    )
    panel.hline(0.0, "black", 0.8)
    panel.points(order, sharpe, "tab:gray", 3.7)
    panel.points(order[selected], sharpe[selected], "tab:blue", 6.3)
    panel.axes(title=f"Sharpe of the {sharpe.size} trials (OOF)", xlabel="trial")
    panel.legend(
        [("trials", "tab:gray", "point"), ("selected", "tab:blue", "point")],
        where="lower right",
        size=8,
    )
    chart.title(title)
    return _save(chart, path)
