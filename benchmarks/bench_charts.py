"""CPU cost of the charts every partition draws (equity curves, backtest report, out-of-fold
evidence, reliability diagram): `lib.raster` (Pillow) against the same charts drawn with
matplotlib (the reference: the project's earlier matplotlib code, with its fixed margins, few
ticks, thinned lines and unhinted text, stored through the same paletted PNG writer).

    python benchmarks/bench_charts.py [--rounds 9]

Prints per chart the median CPU milliseconds of both (rounds interleaved), their ratio and the
stored PNG sizes, then the total for one partition's charts (two equity charts, one of each other
kind). Inputs: a 3-year hourly backtest (26,280 bars) and its champion's curve, 5 folds, 12
trials, 5,000 predictions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

#: how many of each chart one partition draws (challenger: reliability diagram; evaluation:
#: backtest report and fold evidence; meta_filter and ensemble_signals: an equity chart each)
PER_PARTITION = {"equity curves": 2, "backtest report": 1, "fold evidence": 1, "reliability": 1}


def _backtest(seed: int):
    from datetime import UTC, datetime

    from quant_assets.lib.backtest import run_backtest
    from quant_assets.lib.sources.synthetic import synthetic_bars

    start, end = datetime(2023, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)
    bars = synthetic_bars(f"BENCH{seed}USDT", seed, start, end, "1h")
    n = bars.height
    rng = np.random.default_rng(seed)
    at = np.sort(rng.choice(n, n // 24, replace=False))
    signals = pl.DataFrame(
        {"timestamp": bars["timestamp"].gather(at), "side": rng.choice([-1, 0, 1], at.size)}
    )
    return run_backtest(bars, signals, timeframe="1h")


# ---------------------------------------------------------------- the matplotlib reference


def _mpl_axes_dates(equity_ax, dd_ax, title: str) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    for ax in (equity_ax, dd_ax):
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.grid(alpha=0.3)
    locator = AutoDateLocator(minticks=3, maxticks=7)
    dd_ax.xaxis.set_major_locator(locator)
    dd_ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    equity_ax.set_title(title, y=1.0)
    equity_ax.set_ylabel("equity")
    equity_ax.tick_params(labelbottom=False)
    dd_ax.set_ylabel("drawdown")
    dd_ax.yaxis.set_major_formatter(PercentFormatter(1.0))


def _mpl_equity(curves, target) -> None:
    from matplotlib.figure import Figure

    from quant_assets.lib.performance import drawdowns
    from quant_assets.lib.plots import _thin, save_png

    fig = Figure(figsize=(10, 6), dpi=100)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.94, bottom=0.06, hspace=0.12)
    equity_ax, dd_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    for name, frame in curves.items():
        x, equity = frame["timestamp"].to_numpy(), frame["equity"].to_numpy()
        dd = drawdowns(equity)
        shown = _thin(x.size, int(np.argmax(dd)))
        (line,) = equity_ax.plot(x[shown], equity[shown], lw=1.2, label=name)
        dd_ax.fill_between(x[shown], -dd[shown], 0.0, color=line.get_color(), alpha=0.3, lw=0)
        dd_ax.plot(x[shown], -dd[shown], color=line.get_color(), lw=0.8)
    equity_ax.legend(loc="upper left")
    _mpl_axes_dates(equity_ax, dd_ax, "equity")
    save_png(fig, target)


def _mpl_report(result, champion, target) -> None:
    from matplotlib.figure import Figure

    from quant_assets.lib.performance import drawdowns
    from quant_assets.lib.plots import _thin, monthly_returns, save_png

    per_bar = result.per_bar
    x, equity = per_bar["timestamp"].to_numpy(), per_bar["equity"].to_numpy()
    fig = Figure(figsize=(11, 10), dpi=100)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.92, bottom=0.04, hspace=0.3)
    equity_ax, dd_ax, month_ax = fig.subplots(3, 1, height_ratios=[3, 1, 2])
    dd_ax.sharex(equity_ax)
    dd = drawdowns(np.r_[1.0, equity])[1:]
    shown = _thin(x.size, int(np.argmax(dd)))
    equity_ax.plot(x[shown], equity[shown], lw=1.2, color="tab:blue", label="challenger")
    ox, oy = champion["timestamp"].to_numpy(), champion["equity"].to_numpy()
    kept = _thin(ox.size)
    equity_ax.plot(ox[kept], oy[kept], lw=1.0, alpha=0.8, label="champion")
    equity_ax.legend(loc="upper left")
    equity_ax.axhline(1.0, color="grey", lw=0.6)
    dd_ax.fill_between(x[shown], -dd[shown], 0.0, color="tab:red", alpha=0.3, lw=0)
    dd_ax.plot(x[shown], -dd[shown], color="tab:red", lw=0.8)
    _mpl_axes_dates(equity_ax, dd_ax, "report (1h)\nsharpe 1.2   sortino 1.5")
    monthly = monthly_returns(per_bar)
    years = list(range(int(monthly["year"].min()), int(monthly["year"].max()) + 1))
    grid = np.full((len(years), 12), np.nan)
    grid[monthly["year"].to_numpy() - years[0], monthly["month"].to_numpy() - 1] = monthly[
        "return"
    ].to_numpy()
    bound = float(np.nanmax(np.abs(grid)))
    month_ax.imshow(grid, cmap="RdYlGn", vmin=-bound, vmax=bound, aspect="auto")
    month_ax.set_xticks(range(12), list("JFMAMJJASOND"))
    month_ax.set_yticks(range(len(years)), [str(y) for y in years])
    month_ax.set_title("monthly returns", y=1.0)
    for (i, j), value in np.ndenumerate(grid):
        if np.isfinite(value):
            month_ax.text(j, i, f"{value:.1%}", ha="center", va="center", fontsize=7)
    save_png(fig, target)


def _mpl_folds(folds, trials, target) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    from quant_assets.lib.plots import save_png

    fig = Figure(figsize=(10, 3.6), dpi=100)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.8, bottom=0.14, wspace=0.28)
    ret_ax, sharpe_ax, trial_ax = fig.subplots(1, 3)
    labels = [str(f) for f in folds["fold"].to_list()]
    returns = folds["total_return"].to_numpy()
    colors = np.where(returns > 0, "tab:green", "tab:red")
    ret_ax.bar(labels, returns, color=colors)
    ret_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ret_ax.set_title("total return per fold", y=1.0)
    sharpe_ax.bar(labels, folds["sharpe"].to_numpy(), color=colors)
    sharpe_ax.set_title("annualized Sharpe per fold", y=1.0)
    for ax in (ret_ax, sharpe_ax):
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xlabel("fold")
    sharpe, selected = trials["sharpe"].to_numpy(), trials["selected"].to_numpy()
    trial_ax.scatter(np.arange(sharpe.size), sharpe, s=14, color="tab:gray", label="trials")
    trial_ax.scatter(np.flatnonzero(selected), sharpe[selected], s=40, label="selected")
    trial_ax.axhline(0.0, color="black", lw=0.8)
    for ax in (ret_ax, sharpe_ax, trial_ax):
        ax.yaxis.set_major_locator(MaxNLocator(5))
    trial_ax.xaxis.set_major_locator(MaxNLocator(6, integer=True))
    trial_ax.set_title(f"Sharpe of the {sharpe.size} trials (OOF)", y=1.0)
    trial_ax.set_xlabel("trial")
    trial_ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("out-of-fold evidence")
    save_png(fig, target)


def _mpl_reliability(curves, target) -> None:
    from matplotlib.figure import Figure

    from quant_assets.lib.metrics import calibration_curve_table, expected_calibration_error
    from quant_assets.lib.plots import save_png

    fig = Figure(figsize=(6.4, 7.2), dpi=110)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.95, bottom=0.08, hspace=0.08)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot(
        [0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated"
    )
    edges = np.arange(11) / 10
    for name, (y, prob) in curves.items():
        table = calibration_curve_table(y, prob, 10).drop_nulls("mean_pred")
        ece = expected_calibration_error(y, prob, 10)
        top.plot(table["mean_pred"], table["frac_pos"], marker="o", label=f"{name} (ECE {ece:.4f})")
        bottom.hist(prob, bins=edges, histtype="step", label=name)
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="fraction of positives")
    top.set_title("reliability", y=1.0)
    top.legend(loc="upper left", fontsize="small")
    top.grid(alpha=0.3)
    bottom.set(xlabel="predicted probability", ylabel="rows")
    bottom.grid(alpha=0.3)
    save_png(fig, target)


# ---------------------------------------------------------------- timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds per chart and path")
    args = parser.parse_args()

    from quant_assets.lib.calibration import calibration_plot_png
    from quant_assets.lib.plots import backtest_report_png, equity_curve_png, fold_evidence_png

    challenger, champion = _backtest(1), _backtest(2)
    curves = {
        "filtered": challenger.per_bar.select("timestamp", "equity"),
        "unfiltered": champion.per_bar.select("timestamp", "equity"),
    }
    rng = np.random.default_rng(0)
    folds = pl.DataFrame(
        {
            "fold": list(range(5)),
            "total_return": rng.normal(0, 0.1, 5),
            "sharpe": rng.normal(0, 1, 5),
        }
    )
    trials = pl.DataFrame({"sharpe": rng.normal(0, 1, 12), "selected": [i == 3 for i in range(12)]})
    y = rng.integers(0, 2, 5000)
    p = np.clip(y * 0.3 + rng.random(5000) * 0.7, 0, 1)
    reliability = {"raw": (y, p), "calibrated": (y, p**1.2)}
    champion_curve = champion.per_bar.select("timestamp", "equity")

    charts = {
        "equity curves": (
            lambda b: equity_curve_png(curves, b, "equity"),
            lambda b: _mpl_equity(curves, b),
        ),
        "backtest report": (
            lambda b: backtest_report_png(
                challenger,
                b,
                "report",
                metrics={"sharpe": 1.2, "sortino": 1.5},
                label="challenger",
                others={"champion": champion_curve},
            ),
            lambda b: _mpl_report(challenger, champion_curve, b),
        ),  # fmt: skip
        "fold evidence": (
            lambda b: fold_evidence_png(folds, trials, b, "out-of-fold evidence"),
            lambda b: _mpl_folds(folds, trials, b),
        ),
        "reliability": (
            lambda b: calibration_plot_png(reliability, b, title="reliability"),
            lambda b: _mpl_reliability(reliability, b),
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)

        print(f"{'chart':16s} {'raster ms':>10s} {'matplotlib ms':>14s} {'ratio':>6s} {'KB':>12s}")
        totals = [0.0, 0.0]
        for name, (ours, reference) in charts.items():
            times: dict[str, list[float]] = {"ours": [], "ref": []}
            sizes = {}
            for draw, key in ((ours, "ours"), (reference, "ref")):  # warm: imports, fonts
                path = out / f"{key}.png"
                draw(path)
            for _ in range(args.rounds):
                for draw, key in ((ours, "ours"), (reference, "ref")):
                    path = out / f"{key}.png"
                    started = time.process_time()
                    draw(path)
                    times[key].append((time.process_time() - started) * 1000.0)
                    sizes[key] = path.stat().st_size / 1024
            a, b = float(np.median(times["ours"])), float(np.median(times["ref"]))
            totals[0] += a * PER_PARTITION[name]
            totals[1] += b * PER_PARTITION[name]
            print(
                f"{name:16s} {a:10.1f} {b:14.1f} {a / b:6.2f} "
                f"{sizes['ours']:5.0f} /{sizes['ref']:5.0f}"
            )
        print(
            f"one partition's charts: {totals[0]:.0f} ms against {totals[1]:.0f} ms of CPU "
            f"(ratio {totals[0] / totals[1]:.2f}; 1,500 partitions: "
            f"{totals[0] * 1.5:.0f} s against {totals[1] * 1.5:.0f} s)"
        )


if __name__ == "__main__":
    main()
