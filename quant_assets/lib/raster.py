"""A small chart renderer on Pillow for the charts drawn for every partition (equity curves,
backtest reports, fold evidence, reliability diagrams).

Why not matplotlib: those charts are drawn about five times per symbol x timeframe partition, in
every nightly rebuild (7,500 charts for 500 symbols x 3 timeframes), and matplotlib spent 0.12-0.31
CPU-s on each, 15-17 % of the pipeline's CPU: a Python object per tick, tick label and grid line
built at every draw, text laid out and measured several times (docs/field-notes.md). Here a chart
is a few dozen Pillow calls (C): lines, polygons, rectangles and FreeType text drawn at SCALE times
the size and reduced with a box filter (anti-aliasing), in 10-30 ms. What the charts need and no
more: panels with value, date and category axes, lines, fills, bars, points, cells, legends.
The font is matplotlib's DejaVu Sans (its package data, read without importing matplotlib), so the
charts look like the rest of the project's. One-off charts (model reports) stay on matplotlib.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

#: drawn at SCALE times the stored size, then reduced (a box filter over SCALE x SCALE pixels):
#: anti-aliased lines, edges and glyphs
SCALE = 2

#: matplotlib's default colour cycle ("tab10"), by name and in order
COLORS = {
    "tab:blue": "#1f77b4",
    "tab:orange": "#ff7f0e",
    "tab:green": "#2ca02c",
    "tab:red": "#d62728",
    "tab:purple": "#9467bd",
    "tab:brown": "#8c564b",
    "tab:pink": "#e377c2",
    "tab:gray": "#7f7f7f",
    "tab:olive": "#bcbd22",
    "tab:cyan": "#17becf",
}
CYCLE = tuple(COLORS.values())
#: ColorBrewer's RdYlGn (matplotlib's "RdYlGn" colormap is interpolated from these 11 colours)
RD_YL_GN = (
    "#a50026", "#d73027", "#f46d43", "#fdae61", "#fee08b", "#ffffbf",
    "#d9ef8b", "#a6d96a", "#66bd63", "#1a9850", "#006837",
)  # fmt: skip
#: matplotlib's grid colour (#b0b0b0) at alpha 0.3, on white: opaque, so crossing lines stay even
GRID_OPAQUE = (231, 231, 231, 255)
FONT_FILES = {False: "DejaVuSans.ttf", True: "DejaVuSans-Bold.ttf"}
MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

RGBA = tuple[int, int, int, int]


def rgba(color: str | Sequence[int], alpha: float = 1.0) -> RGBA:
    """(r, g, b, a) of a '#rrggbb' colour, a `COLORS` name, 'black', 'white', 'grey' or a tuple."""
    if isinstance(color, str):
        named = {"black": "#000000", "white": "#ffffff", "grey": "#808080", "gray": "#808080"}
        code = COLORS.get(color) or named.get(color) or color
        if not (code.startswith("#") and len(code) == 7):
            raise ValueError(f"unknown colour {color!r}: use '#rrggbb' or one of {sorted(COLORS)}")
        r, g, b = (int(code[i : i + 2], 16) for i in (1, 3, 5))
        return r, g, b, round(255 * alpha)
    values = tuple(int(v) for v in color)
    return (*values[:3], round(values[3] * alpha) if len(values) == 4 else round(255 * alpha))


def colormap(values: np.ndarray, vmin: float, vmax: float, stops: Sequence[str] = RD_YL_GN):
    """(n, 3) uint8 colours of `values` on the linear colour scale through `stops` over
    [vmin, vmax] (clipped at the ends); non-finite values are white."""
    values = np.asarray(values, dtype=np.float64)
    table = np.array([rgba(s)[:3] for s in stops], dtype=np.float64)
    span = (vmax - vmin) or 1.0
    t = np.clip((np.nan_to_num(values, nan=vmin) - vmin) / span, 0.0, 1.0) * (len(stops) - 1)
    low = np.minimum(np.floor(t).astype(np.int64), len(stops) - 2)
    frac = (t - low)[..., None]
    out = np.rint(table[low] * (1 - frac) + table[low + 1] * frac).astype(np.uint8)
    out[~np.isfinite(values)] = 255
    return out


@functools.cache
def _font_dir() -> Path | None:
    spec = importlib.util.find_spec("matplotlib")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "fonts" / "ttf"
    return folder if (folder / FONT_FILES[False]).is_file() else None


@functools.cache
def font(pixels: int, bold: bool = False):
    """DejaVu Sans at `pixels` (cached per process); Pillow's own scalable font without it."""
    from PIL import ImageFont

    folder = _font_dir()
    if folder is None:
        return ImageFont.load_default(pixels)
    return ImageFont.truetype(str(folder / FONT_FILES[bold]), pixels)


# ------------------------------------------------------------------------------------ ticks


def nice_ticks(lo: float, hi: float, max_ticks: int = 6, integer: bool = False) -> np.ndarray:
    """At most `max_ticks` round values (1, 2, 2.5 or 5 times a power of ten apart; whole
    numbers only with `integer`) inside [lo, hi], as matplotlib's MaxNLocator places them."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return np.array([lo]) if math.isfinite(lo) else np.array([])
    raw = (hi - lo) / max(max_ticks - 1, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    steps = [m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0, 20.0, 50.0)]
    if integer:
        steps = [s for s in steps if s >= 1 and s == round(s)] or [1.0]
    for step in steps:
        first = math.ceil(lo / step - 1e-9)
        last = math.floor(hi / step + 1e-9)
        if last - first + 1 <= max_ticks:
            break
    # rounded below the step's last digit: 3 x 0.2 is 0.6, not 0.6000000000000001
    return (
        np.round(np.arange(first, last + 1) * step, max(0, 2 - math.floor(math.log10(step)))) + 0.0
    )


def _decimals(values: np.ndarray) -> int:
    """The fewest decimals that tell the values apart exactly (as tick labels round them)."""
    values = np.asarray(values, dtype=np.float64)
    tolerance = 1e-9 * max(1.0, float(np.abs(values).max())) if values.size else 1.0
    for places in range(7):
        if np.allclose(np.round(values, places), values, rtol=0.0, atol=tolerance):
            return places
    return 7


def number_labels(values: np.ndarray) -> list[str]:
    places = _decimals(values)
    if len(values) and max(abs(v) for v in values) >= 1e6:
        return [f"{v:.3g}" for v in values]
    return [f"{v:.{places}f}".replace("-", "\u2212") for v in values]


def percent_labels(values: np.ndarray) -> list[str]:
    """Fractions as percentages (0.05 -> '5%'), as matplotlib's PercentFormatter(1.0)."""
    scaled = np.asarray(values, dtype=np.float64) * 100.0
    return [f"{label}%" for label in number_labels(scaled)]


#: date tick intervals, finest first: (numpy unit, step)
_DATE_STEPS = (
    *(("s", n) for n in (1, 5, 10, 15, 30)),
    *(("m", n) for n in (1, 5, 10, 15, 30)),
    *(("h", n) for n in (1, 2, 3, 4, 6, 12)),
    *(("D", n) for n in (1, 2, 3, 7, 14)),
    *(("M", n) for n in (1, 2, 3, 4, 6)),
    *(("Y", n) for n in (1, 2, 5, 10, 20, 50, 100)),
)
_UNIT_MICROS = {"s": 1e6, "m": 6e7, "h": 3.6e9, "D": 8.64e10, "M": 2.63e12, "Y": 3.156e13}


def date_ticks(lo_us: float, hi_us: float, max_ticks: int = 7) -> tuple[np.ndarray, list[str]]:
    """Tick positions (microseconds since the epoch, UTC) and labels for a date axis over
    [lo_us, hi_us]: the finest calendar interval (seconds to centuries, aligned on round
    boundaries) with at most `max_ticks` ticks; labels in the concise style (a year where a
    year starts, a month where a month starts, else the finer unit)."""
    if not (math.isfinite(lo_us) and math.isfinite(hi_us)) or hi_us < lo_us:
        return np.array([]), []
    for unit, step in _DATE_STEPS:
        if (hi_us - lo_us) / (_UNIT_MICROS[unit] * step) > max_ticks + 1:
            continue
        lo = np.datetime64(int(math.floor(lo_us)), "us").astype(f"datetime64[{unit}]")
        hi = np.datetime64(int(math.ceil(hi_us)), "us").astype(f"datetime64[{unit}]")
        first = lo.astype(np.int64)
        first += -first % step
        units = np.arange(first, hi.astype(np.int64) + 1, step)
        ticks = units.astype(f"datetime64[{unit}]").astype("datetime64[us]").astype(np.int64)
        ticks = ticks[(ticks >= lo_us) & (ticks <= hi_us)]
        if 0 < ticks.size <= max_ticks and (ticks.size >= 2 or unit == "Y"):
            return ticks.astype(np.float64), _date_labels(ticks, unit)
    return np.array([lo_us]), _date_labels(np.array([int(lo_us)]), "s")


def _date_labels(ticks: np.ndarray, unit: str) -> list[str]:
    moments = [datetime.fromtimestamp(int(t) / 1e6, UTC) for t in ticks]
    out = []
    for k, m in enumerate(moments):
        if unit == "Y" or (unit == "M" and m.month == 1):
            out.append(f"{m.year}")
        elif unit == "M":
            out.append(MONTH_NAMES[m.month - 1] if k else f"{MONTH_NAMES[m.month - 1]} {m.year}")
        elif unit == "D":
            out.append(f"{MONTH_NAMES[m.month - 1]} {m.day:02d}" + ("" if k else f" {m.year}"))
        elif k == 0 or (m.hour == 0 and m.minute == 0 and m.second == 0):
            out.append(
                f"{MONTH_NAMES[m.month - 1]} {m.day:02d}" + (f" {m:%H:%M}" if k == 0 else "")
            )
        else:
            out.append(f"{m:%H:%M}" if unit != "s" else f"{m:%H:%M:%S}")
    return out


def as_micros(x: Any) -> np.ndarray:
    """Timestamps (numpy datetime64 of any unit, or a polars/pandas column's values) as float
    microseconds since the epoch."""
    values = np.asarray(x)
    if np.issubdtype(values.dtype, np.datetime64):
        return values.astype("datetime64[us]").astype(np.int64).astype(np.float64)
    return values.astype(np.float64)


def limits(
    *arrays: np.ndarray,
    margin: float = 0.05,
    include: Sequence[float] = (),
    single: float | None = None,
) -> tuple[float, float]:
    """(lo, hi) of the finite values of `arrays` (and `include`), widened by `margin` of the span
    on each side, as matplotlib's autoscale does; a single value gets +-`single` (default 5 % of
    it, or 1 at zero)."""
    finite = [a[np.isfinite(a)] for a in (np.asarray(a, dtype=np.float64) for a in arrays)]
    values = np.concatenate([*finite, np.asarray(include, dtype=np.float64)])
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 1e-12 * max(1.0, abs(lo)):
        pad = single if single is not None else (abs(lo) * 0.05 or 1.0)
        return lo - pad, hi + pad
    pad = (hi - lo) * margin
    return lo - pad, hi + pad


#: a date axis over a single timestamp spans a day each side
ONE_DAY_US = 86_400e6


#: how a chart's PNG is stored: its RGB pixels reduced to a palette of at most PNG_COLORS colours
#: (Pillow's fast octree), then deflated at PNG_COMPRESS_LEVEL. A chart holds a few thousand
#: distinct colours, nearly all of them anti-aliased edges of lines and glyphs; the palette keeps
#: every flat colour (lines, fills, heatmap cells) and moves an edge pixel by about one level of
#: 255 on average. An 11 x 10 inch report: 61 KB instead of 182 KB (RGBA at zlib level 1, as
#: matplotlib writes it). Every chart is stored three times per run (MLflow artifact, and inline
#: in the event log's run and index shards), and the event log serializes each materialization
#: twice, so the bytes cost CPU too.
PNG_COLORS = 256
PNG_COMPRESS_LEVEL = 3


def save_image(image: Any, target: Any, dpi: float) -> None:
    """Write an RGB image to `target` (a path or a binary file) as a paletted PNG (PNG_COLORS)
    recording `dpi`."""
    from PIL import Image as PILImage

    paletted = image.quantize(PNG_COLORS, method=PILImage.Quantize.FASTOCTREE)
    paletted.save(target, format="png", compress_level=PNG_COMPRESS_LEVEL, dpi=(dpi, dpi))


# ------------------------------------------------------------------------------------ canvas


class Chart:
    """A white figure of `width` x `height` inches at `dpi`, drawn at SCALE times its pixels.

    Sizes of text, lines and markers are in points (1/72 inch), as in matplotlib."""

    def __init__(self, width: float, height: float, dpi: float = 100.0):
        from PIL import Image, ImageDraw

        self.dpi = float(dpi)
        self.size = (round(width * dpi), round(height * dpi))
        self.image = Image.new("RGB", (self.size[0] * SCALE, self.size[1] * SCALE), "white")
        self.draw = ImageDraw.Draw(self.image, "RGBA")  # RGBA fills blend onto the RGB image

    def px(self, points: float) -> float:
        """Points as drawing pixels."""
        return points * self.dpi / 72.0 * SCALE

    def font(self, size: float, bold: bool = False):
        return font(max(1, round(self.px(size))), bold)

    def rule(self, x0: float, y0: float, x1: float, y1: float, width: float, fill: RGBA) -> None:
        """A horizontal (y0 == y1) or vertical line of `width` points snapped to whole stored
        pixels, as matplotlib snaps axis-aligned lines: crisp after the reduction, where a
        line between two pixels would come out as two faint ones."""
        w = max(1, round(width * self.dpi / 72.0)) * SCALE

        def snap(v: float) -> float:
            return math.floor(v / SCALE - (w / SCALE - 1) / 2) * SCALE

        if y0 == y1:
            top = snap(y0)
            self.draw.rectangle([min(x0, x1), top, max(x0, x1), top + w - 1], fill=fill)
        else:
            left = snap(x0)
            self.draw.rectangle([left, min(y0, y1), left + w - 1, max(y0, y1)], fill=fill)

    def text(
        self,
        xy: tuple[float, float],
        text: str,
        size: float = 10.0,
        anchor: str = "la",
        color: str | Sequence[int] = "black",
        bold: bool = False,
        rotate: bool = False,
    ) -> None:
        """Text at drawing pixels `xy` with Pillow's two-letter `anchor`; several lines stack
        downwards from `xy` (top anchors) or upwards (others); `rotate`: reads bottom to top."""
        face = self.font(size, bold)
        fill = rgba(color)
        if rotate:
            self._rotated(xy, text, face, fill, anchor)
            return
        lines = text.split("\n")
        height = self.px(size) * 1.2
        if anchor[1] not in "ta":
            lines.reverse()
        for k, line in enumerate(lines):
            dy = k * height if anchor[1] in "ta" else -k * height
            self.draw.text((xy[0], xy[1] + dy), line, font=face, fill=fill, anchor=anchor)

    def _rotated(self, xy, text, face, fill, anchor) -> None:
        from PIL import Image, ImageDraw

        left, top, right, bottom = face.getbbox(text, anchor="ls")
        w, h = int(right - left) + 4, int(bottom - top) + 4
        label = Image.new("L", (w, h), 0)
        ImageDraw.Draw(label).text((2 - left, 2 - top), text, font=face, fill=255, anchor="ls")
        label = label.rotate(90, expand=True)
        # anchor[0]: horizontal position of the rotated label's centre line; centred vertically
        x = xy[0] - (
            label.width if anchor[0] == "r" else label.width / 2 if anchor[0] == "m" else 0
        )
        y = xy[1] - label.height / 2
        ink = Image.new("RGBA", label.size, fill)
        ink.putalpha(label.point(lambda v: v * fill[3] // 255))
        self.image.paste(ink, (round(x), round(y)), ink)

    def panel(self, left: float, bottom: float, right: float, top: float, **kwargs: Any) -> Panel:
        """A panel whose frame spans these figure fractions (0..1 from the bottom left, as
        matplotlib's subplots_adjust)."""
        w, h = self.image.size
        return Panel(self, (left * w, (1 - top) * h, right * w, (1 - bottom) * h), **kwargs)

    def title(self, text: str, size: float = 12.0, y: float = 0.98) -> None:
        """A figure title centred at the top (as matplotlib's suptitle)."""
        self.text((self.image.width / 2, (1 - y) * self.image.height), text, size, anchor="mt")

    def save(self, target: Any) -> None:
        """Reduce to the stored size and write `target` (a path or a binary file) as a paletted
        PNG with the figure's dpi (`save_image`)."""
        save_image(self.image.reduce(SCALE), target, self.dpi)


class Panel:
    """Axes: a frame at drawing-pixel box (x0, y0, x1, y1) mapping data limits xlim x ylim.

    Ticks are placed when the panel is made: `xticks`/`yticks` as given, else round values
    (`nice_ticks`; whole numbers with `x_integer`), or calendar dates with `x_dates` (x values
    in microseconds, `as_micros`). `grid`: grid lines at the ticks, drawn first, under the data.
    Draw the data, then `axes` (frame, ticks, labels, title)."""

    def __init__(
        self,
        chart: Chart,
        box: tuple[float, float, float, float],
        xlim: tuple[float, float] = (0.0, 1.0),
        ylim: tuple[float, float] = (0.0, 1.0),
        x_dates: bool = False,
        xticks: Any = None,
        yticks: Any = None,
        x_integer: bool = False,
        max_xticks: int = 7,
        max_yticks: int = 6,
        grid: bool = False,
    ):
        self.chart, self.draw = chart, chart.draw
        self.x0, self.y0, self.x1, self.y1 = box
        self.xlim, self.ylim = xlim, ylim
        self.date_labels: list[str] | None = None
        if xticks is None and x_dates:
            xticks, self.date_labels = date_ticks(*xlim, max_xticks)
        elif xticks is None:
            xticks = nice_ticks(*sorted(xlim), max_xticks, integer=x_integer)
        self.xticks = np.asarray(xticks, dtype=np.float64)
        self.yticks = np.asarray(
            nice_ticks(*sorted(ylim), max_yticks) if yticks is None else yticks, dtype=np.float64
        )
        if grid:
            for y in self.py(self.yticks):
                chart.rule(self.x0, y, self.x1, y, 0.8, GRID_OPAQUE)
            for x in self.px(self.xticks):
                chart.rule(x, self.y0, x, self.y1, 0.8, GRID_OPAQUE)

    # -------------------------------------------------------------- data to pixels

    def px(self, x: Any) -> np.ndarray:
        lo, hi = self.xlim
        return self.x0 + (np.asarray(x, dtype=np.float64) - lo) / ((hi - lo) or 1.0) * (
            self.x1 - self.x0
        )

    def py(self, y: Any) -> np.ndarray:
        lo, hi = self.ylim
        return self.y1 - (np.asarray(y, dtype=np.float64) - lo) / ((hi - lo) or 1.0) * (
            self.y1 - self.y0
        )

    def _runs(self, *series: np.ndarray) -> list[slice]:
        """Slices of the stretches where every series is finite (a gap breaks a line)."""
        finite = np.logical_and.reduce([np.isfinite(s) for s in series])
        if finite.all():
            return [slice(0, finite.size)]
        edges = np.flatnonzero(np.diff(np.r_[0, finite.astype(np.int8), 0]))
        return [slice(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True)]

    # -------------------------------------------------------------- data

    def line(
        self, x, y, color, width: float = 1.5, alpha: float = 1.0, dashed: bool = False
    ) -> None:
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        fill, w = rgba(color, alpha), max(1, round(self.chart.px(width)))
        points = np.column_stack([self.px(x), self.py(y)])
        for run in self._runs(x, y):
            stretch = points[run]
            if dashed:
                self._dashes(stretch, fill, w)
            elif len(stretch) > 1:
                self.draw.line(stretch.ravel().tolist(), fill=fill, width=w, joint="curve")
            else:  # a lone point: a dot a little wider than the line
                self._dot(stretch[0], w * 1.5, fill)

    def _dashes(self, run: np.ndarray, fill: RGBA, width: int) -> None:
        """A dashed polyline (dashes of 3.7 and gaps of 1.6 line widths, matplotlib's '--')."""
        on, off = 3.7 * width, 1.6 * width
        for (ax, ay), (bx, by) in zip(run[:-1], run[1:], strict=True):
            length = math.hypot(bx - ax, by - ay)
            for start in np.arange(0.0, length, on + off):
                end = min(start + on, length)
                f0, f1 = start / length, end / length
                self.draw.line(
                    [
                        ax + (bx - ax) * f0,
                        ay + (by - ay) * f0,
                        ax + (bx - ax) * f1,
                        ay + (by - ay) * f1,
                    ],
                    fill=fill,
                    width=width,
                )

    def _dot(self, at, radius: float, fill: RGBA) -> None:
        x, y = at
        self.draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)

    def fill_between(self, x, y0, y1, color, alpha: float = 0.3) -> None:
        """The area between y0 (a value or a series) and y1 over x."""
        x, y1 = np.asarray(x, np.float64), np.asarray(y1, np.float64)
        y0 = np.broadcast_to(np.asarray(y0, np.float64), x.shape)
        top = np.column_stack([self.px(x), self.py(y1)])
        base = np.column_stack([top[:, 0], self.py(y0)])
        for run in self._runs(x, y0, y1):
            if run.stop - run.start > 1:
                polygon = np.vstack([top[run], base[run][::-1]])
                self.draw.polygon(polygon.ravel().tolist(), fill=rgba(color, alpha))

    def hline(self, y: float, color="black", width: float = 0.8) -> None:
        """A horizontal line across the panel at value y (snapped to whole pixels)."""
        self.chart.rule(self.x0, float(self.py(y)), self.x1, float(self.py(y)), width, rgba(color))

    def bars(self, x, heights, colors: Sequence[str], width: float = 0.8) -> None:
        base = self.py(0.0)
        for xi, hi, color in zip(
            np.asarray(x, np.float64), np.asarray(heights, np.float64), colors, strict=True
        ):
            if not np.isfinite(hi):
                continue
            left, right = self.px(xi - width / 2), self.px(xi + width / 2)
            top = self.py(hi)
            self.draw.rectangle([left, min(top, base), right, max(top, base)], fill=rgba(color))

    def points(self, x, y, color, size: float = 3.0) -> None:
        """Filled circles of diameter `size` points."""
        radius, fill = self.chart.px(size) / 2, rgba(color)
        for at in np.column_stack([self.px(x), self.py(y)]):
            if np.isfinite(at).all():
                self._dot(at, radius, fill)

    def cells(self, colors: np.ndarray) -> None:
        """A (rows, cols, 3) uint8 grid of colours over the whole panel, row 0 at the top
        (as imshow; make the panel with xlim (-0.5, cols - 0.5) and ylim (rows - 0.5, -0.5) to
        put ticks on the cells)."""
        from PIL import Image

        rows, cols = colors.shape[:2]
        box = (round(self.x0), round(self.y0), round(self.x1), round(self.y1))
        tile = Image.fromarray(np.ascontiguousarray(colors), "RGB").resize(
            (box[2] - box[0], box[3] - box[1]), Image.Resampling.NEAREST
        )
        self.chart.image.paste(tile, box[:2])

    # -------------------------------------------------------------- axes

    def axes(
        self,
        *,
        title: str = "",
        xlabel: str = "",
        ylabel: str = "",
        ylabels: Sequence[str] | Callable[[np.ndarray], list[str]] | None = None,
        xlabels: Sequence[str] | Callable[[np.ndarray], list[str]] | None = None,
        show_xlabels: bool = True,
        yticks_right: bool = False,
    ) -> None:
        """The frame, tick marks with labels on the left (right with `yticks_right`, as a colour
        bar's) and bottom (numbers, dates, or `xlabels`/`ylabels`: a list or a formatter of the
        tick values), axis labels and a title above the frame."""
        chart = self.chart
        xticks, yticks = self.xticks, self.yticks
        ylabels = ylabels(yticks) if callable(ylabels) else (ylabels or number_labels(yticks))
        if callable(xlabels):
            xlabels = xlabels(xticks)
        xlabels = xlabels or self.date_labels or number_labels(xticks)
        tick, pad = chart.px(3.5), chart.px(3.5)
        black = rgba("black")
        for y in (self.y0, self.y1):
            chart.rule(self.x0, y, self.x1, y, 0.8, black)
        for x in (self.x0, self.x1):
            chart.rule(x, self.y0, x, self.y1, 0.8, black)
        for y, label in zip(self.py(yticks), ylabels, strict=True):
            if yticks_right:
                chart.rule(self.x1, y, self.x1 + tick, y, 0.8, black)
                chart.text((self.x1 + tick + pad, y), label, anchor="lm")
            else:
                chart.rule(self.x0 - tick, y, self.x0, y, 0.8, black)
                chart.text((self.x0 - tick - pad, y), label, anchor="rm")
        for x, label in zip(self.px(xticks), xlabels, strict=True):
            chart.rule(x, self.y1, x, self.y1 + tick, 0.8, black)
            if show_xlabels:
                chart.text((x, self.y1 + tick + pad), label, anchor="mt")
        if title:
            chart.text(((self.x0 + self.x1) / 2, self.y0 - chart.px(6)), title, 12, anchor="md")
        if xlabel:
            below = (
                self.y1 + tick + pad + (chart.px(10) * 1.25 + chart.px(3) if show_xlabels else 0)
            )
            chart.text(((self.x0 + self.x1) / 2, below), xlabel, anchor="mt")
        if ylabel:
            widest = max((chart.font(10).getlength(s) for s in ylabels), default=0.0)
            chart.text(
                (self.x0 - tick - pad - widest - chart.px(4), (self.y0 + self.y1) / 2),
                ylabel,
                rotate=True,
                anchor="rm",
            )

    def legend(
        self, entries: Sequence[tuple[str, str, str]], where: str = "upper left", size: float = 10.0
    ) -> None:
        """A framed legend in a corner: (label, colour, kind) with kind 'line', 'point',
        'dashed' or 'patch'."""
        chart = self.chart
        face = chart.font(size)
        row = chart.px(size) * 1.4
        sample = chart.px(20)
        width = (
            sample
            + chart.px(8)
            + max(face.getlength(label) for label, _, _ in entries)
            + chart.px(8)
        )
        height = row * len(entries) + chart.px(6)
        margin = chart.px(6)
        left = self.x0 + margin if "left" in where else self.x1 - margin - width
        top = self.y0 + margin if "upper" in where else self.y1 - margin - height
        self.draw.rounded_rectangle(
            [left, top, left + width, top + height],
            radius=chart.px(2),
            fill=(255, 255, 255, 204),
            outline=(204, 204, 204, 255),
            width=max(1, round(chart.px(0.8))),
        )
        for k, (label, color, kind) in enumerate(entries):
            y = top + chart.px(3) + row * (k + 0.5)
            a, b = left + chart.px(4), left + chart.px(4) + sample
            fill = rgba(color)
            if kind == "point":
                self._dot(((a + b) / 2, y), chart.px(4) / 2 * 1.3, fill)
            elif kind == "patch":
                self.draw.rectangle([a, y - chart.px(4), b, y + chart.px(4)], fill=fill)
            elif kind == "dashed":
                self._dashes(np.array([[a, y], [b, y]]), fill, max(1, round(chart.px(1))))
            else:
                self.draw.line([a, y, b, y], fill=fill, width=max(1, round(chart.px(1.5))))
            chart.text((b + chart.px(6), y), label, size, anchor="lm")
