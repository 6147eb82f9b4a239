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


class InvalidPartitionKeyError(InvalidSymbolError):
    """A partition key (registered from the UI, GraphQL or a sensor) is not `SYMBOL|timeframe` with a
    normalised symbol and a known timeframe, or would build a path outside the artifacts root."""


class HistoryConflictError(QuantAssetsError, ValueError):
    """A source's bars contradict the stored partition (shrunk, rewritten, or dated in the future);
    the stored partition is kept. The message names the symbol, the first differing timestamp and
    the stored and new values."""


class MarketDataUnavailableError(QuantAssetsError):
    """A market data source cannot be read: server unreachable, table or column missing. The message
    names the host or table, never a password."""


class PromotionConflictError(QuantAssetsError, ValueError):
    """A promotion or rollback was refused because it would not do what was asked (the version is
    already champion, a rollback of a rollback without asking for it explicitly)."""


class ModelIntegrityError(QuantAssetsError):
    """A registered model's artifact does not match the hash recorded when it was registered."""
