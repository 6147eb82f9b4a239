"""Exception types of quant-assets: each names what is wrong and where, so a user can act on it."""

from __future__ import annotations


class QuantAssetsError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidSymbolError(QuantAssetsError, ValueError):
    """A symbol cannot be used as a partition key."""


class InvalidTimeframeError(QuantAssetsError, ValueError):
    """A timeframe is unknown, or finer than the data a source can provide."""


class DataValidationError(QuantAssetsError, ValueError):
    """Market data failed validation; the message names the source, the field and the first bad row."""

    def __init__(self, where: str, problem: str, row: int | None = None, detail: str = "") -> None:
        self.where = where
        self.problem = problem
        self.row = row
        self.detail = detail
        at = f" at row {row}" if row is not None else ""
        extra = f": {detail}" if detail else ""
        super().__init__(f"{where}: {problem}{at}{extra}")


class UnknownSymbolError(QuantAssetsError, KeyError):
    """A source holds no data for the symbol asked for."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "unknown symbol"


class SplitConfigError(QuantAssetsError, ValueError):
    """Validation-split parameters do not fit the data (too few rows for the folds, windows or hold-out asked for)."""


class InvalidSourceSpecError(QuantAssetsError, ValueError):
    """A market data source spec string (`synthetic`, `files:<dir>`, `postgres:<url>`) is malformed."""
