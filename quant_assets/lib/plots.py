"""PNG charts of backtests for asset metadata and reports: equity curves over drawdowns, monthly
returns. Figures are drawn on matplotlib's Agg canvas without pyplot: no GUI, no global state."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from quant_assets.lib.backtest import BacktestResult
from quant_assets.lib.performance import drawdowns

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn (cheap start-up)
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_MONTHS = "JFMAMJJASOND"

#: every title at the top of its axes, as matplotlib places it when no tick label is above the
#: axes (ours are below): an explicit position skips matplotlib's search for one, which measures
#: every tick label of the axes and its siblings at each draw (7-21 % of a chart's CPU here, for
#: pixel-identical PNGs)
TITLE_AT_TOP = 1.0


def _figure(**kwargs: Any):
    """A bare matplotlib Figure (Agg canvas, no pyplot state)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


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


def _percent():
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0)


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

    fig = _figure(figsize=(10, 6), dpi=100)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.94, bottom=0.06, hspace=0.12)
    equity_ax, dd_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    for name, frame in curves.items():
        x, equity = _equity_xy(frame, name, "equity_curve_png")
        dd = drawdowns(equity)
        shown = _thin(x.size, int(np.argmax(dd)) if dd.size else 0)
        (line,) = equity_ax.plot(x[shown], equity[shown], lw=1.2, label=name)
        _drawdown_panel(dd_ax, x[shown], dd[shown], line.get_color())
    equity_ax.legend(loc="upper left")
    _finish(equity_ax, dd_ax, title)
    return _save(fig, path)


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
    where the evaluation drew two: a chart costs 0.1-0.2 CPU-s, in every run)."""
    per_bar = result.per_bar
    x = per_bar.get_column("timestamp").to_numpy()
    equity = per_bar.get_column("equity").to_numpy()

    fig = _figure(figsize=(11, 10), dpi=100)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.92, bottom=0.04, hspace=0.3)
    equity_ax, dd_ax, month_ax = fig.subplots(3, 1, height_ratios=[3, 1, 2])
    dd_ax.sharex(equity_ax)
    dd = drawdowns(np.r_[1.0, equity])[1:]
    shown = _thin(x.size, int(np.argmax(dd)) if dd.size else 0)
    equity_ax.plot(x[shown], equity[shown], lw=1.2, color="tab:blue", label=label)
    for name, frame in (others or {}).items():
        ox, oy = _equity_xy(frame, name, "backtest_report_png")
        kept = _thin(ox.size)
        equity_ax.plot(ox[kept], oy[kept], lw=1.0, alpha=0.8, label=name)
    if others:
        equity_ax.legend(loc="upper left")
    equity_ax.axhline(1.0, color="grey", lw=0.6)
    _drawdown_panel(dd_ax, x[shown], dd[shown], "tab:red")
    subtitle = ""
    if metrics:
        subtitle = "\n" + "   ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    _finish(
        equity_ax, dd_ax, f"{title} ({result.timeframe}, {result.trades.height} trades)" + subtitle
    )
    _monthly_heatmap(month_ax, monthly_returns(per_bar))
    return _save(fig, path)


def _equity_xy(frame: pl.DataFrame, name: str, caller: str) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps, equity) of a named curve frame; ValueError naming the curve when a column lacks."""
    missing = {"timestamp", "equity"} - set(frame.columns)
    if missing:
        raise ValueError(f"{caller}: curve {name!r} lacks {sorted(missing)}")
    return frame.get_column("timestamp").to_numpy(), frame.get_column("equity").to_numpy()


def _drawdown_panel(ax: Axes, x: np.ndarray, dd: np.ndarray, color: str) -> None:
    ax.fill_between(x, -dd, 0.0, color=color, alpha=0.3, lw=0)
    ax.plot(x, -dd, color=color, lw=0.8)


def _few_ticks(*axes: Axes, dates: Axes | None = None, counts: Axes | None = None) -> None:
    """At most 5 value ticks per axis, 7 date ticks on the x axis of `dates` and 6 integer ticks on
    the x axis of `counts`: every tick is two lines, a label and a grid line, drawn and laid out in
    every run."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.yaxis.set_major_locator(MaxNLocator(5))
    if dates is not None:
        locator = AutoDateLocator(minticks=3, maxticks=7)
        dates.xaxis.set_major_locator(locator)
        dates.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    if counts is not None:
        counts.xaxis.set_major_locator(MaxNLocator(6, integer=True))


def _finish(equity_ax: Axes, dd_ax: Axes, title: str) -> None:
    _few_ticks(equity_ax, dd_ax, dates=dd_ax)
    equity_ax.set_title(title, y=TITLE_AT_TOP)
    equity_ax.set_ylabel("equity")
    equity_ax.grid(alpha=0.3)
    equity_ax.tick_params(labelbottom=False)  # the drawdown panel below shares and labels x
    dd_ax.set_ylabel("drawdown")
    dd_ax.yaxis.set_major_formatter(_percent())
    dd_ax.grid(alpha=0.3)


def _monthly_heatmap(ax: Axes, monthly: pl.DataFrame) -> None:
    years = list(range(int(monthly["year"].min()), int(monthly["year"].max()) + 1))
    grid = np.full((len(years), 12), np.nan)
    rows = monthly["year"].to_numpy() - years[0]
    grid[rows, monthly["month"].to_numpy() - 1] = monthly["return"].to_numpy()
    bound = float(np.nanmax(np.abs(grid))) or 1e-9
    image = ax.imshow(grid, cmap="RdYlGn", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(12), list(_MONTHS))
    ax.set_yticks(range(len(years)), [str(y) for y in years])
    ax.set_title("monthly returns", y=TITLE_AT_TOP)
    if grid.size <= 240:  # labels stay legible up to 20 years; each cell says its return
        for (i, j), value in np.ndenumerate(grid):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.1%}", ha="center", va="center", fontsize=7)
    else:  # a colour scale instead (a colour bar is an axes of its own: 12 % of the chart)
        ax.figure.colorbar(image, ax=ax, format=_percent())


#: how a chart's PNG is stored: matplotlib's RGBA pixels reduced to a palette of at most
#: PNG_COLORS colours (Pillow's fast octree), then deflated at PNG_COMPRESS_LEVEL. A chart holds a
#: few thousand distinct colours, nearly all of them anti-aliased edges of lines and glyphs; the
#: palette keeps every flat colour (lines, fills, heatmap cells) and moves an edge pixel by about
#: one level of 255 on average. An 11 x 10 inch report: 14 ms instead of 23 ms to encode, 61 KB
#: instead of 182 KB (RGBA at zlib level 1, as matplotlib writes it). Every chart is stored three
#: times per run (MLflow artifact, and inline in the event log's run and index shards), and the
#: event log serializes each materialization twice, so the bytes cost CPU too.
PNG_COLORS = 256
PNG_COMPRESS_LEVEL = 3

#: matplotlib settings while a chart is drawn: glyphs rasterized without FreeType's hinting
#: (matplotlib's default forces the auto-hinter on every glyph of every label). At our font sizes
#: and 100 dpi the charts look the same; the evaluation's two charts drew in 284 instead of 335 ms
#: of CPU (medians of 5, interleaved), and text is about half of a chart's drawing.
DRAW_RC = {"text.hinting": "no_hinting"}


def save_png(fig: Figure, target: Any, dpi: float | None = None) -> None:
    """Draw `fig` on an Agg canvas with DRAW_RC (at `dpi` instead of its own, if given) and write
    it to `target` (a path or a binary file) as a paletted PNG (PNG_COLORS)."""
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    own_dpi = fig.dpi
    try:
        if dpi is not None:
            fig.set_dpi(dpi)
        with rc_context(DRAW_RC):
            canvas = FigureCanvasAgg(fig)
            canvas.draw()
        size = canvas.get_width_height(physical=True)
        # the canvas is opaque (the figure's face): its RGBA buffer read as RGB, alpha skipped
        pixels = Image.frombytes("RGB", size, canvas.buffer_rgba(), "raw", "RGBX")
        shown_dpi = fig.dpi
    finally:
        fig.set_dpi(own_dpi)
    paletted = pixels.quantize(PNG_COLORS, method=Image.Quantize.FASTOCTREE)
    paletted.save(
        target, format="png", compress_level=PNG_COMPRESS_LEVEL, dpi=(shown_dpi, shown_dpi)
    )


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path)
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

    fig = _figure(figsize=(10, 3.6), dpi=100)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.8, bottom=0.14, wspace=0.28)
    ret_ax, sharpe_ax, trial_ax = fig.subplots(1, 3)
    labels = [str(f) for f in folds["fold"].to_list()]
    returns = folds["total_return"].fill_nan(0.0).fill_null(0.0).to_numpy()
    colors = np.where(returns > 0, "tab:green", "tab:red")
    ret_ax.bar(labels, returns, color=colors)
    ret_ax.yaxis.set_major_formatter(_percent())
    ret_ax.set_title("total return per fold", y=TITLE_AT_TOP)
    sharpe_ax.bar(labels, folds["sharpe"].fill_nan(0.0).fill_null(0.0).to_numpy(), color=colors)
    sharpe_ax.set_title("annualized Sharpe per fold", y=TITLE_AT_TOP)
    for ax in (ret_ax, sharpe_ax):
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xlabel("fold")
    sharpe = trials["sharpe"].to_numpy()
    selected = trials["selected"].to_numpy()
    trial_ax.scatter(np.arange(sharpe.size), sharpe, s=14, color="tab:gray", label="trials")
    trial_ax.scatter(
        np.flatnonzero(selected), sharpe[selected], s=40, color="tab:blue", label="selected"
    )
    trial_ax.axhline(0.0, color="black", lw=0.8)
    _few_ticks(ret_ax, sharpe_ax, trial_ax, counts=trial_ax)  # trials are numbered
    trial_ax.set_title(f"Sharpe of the {sharpe.size} trials (OOF)", y=TITLE_AT_TOP)
    trial_ax.set_xlabel("trial")
    trial_ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
