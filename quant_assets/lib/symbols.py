"""Symbols as partition keys: normalisation, validation and the market kind a symbol trades as."""

from __future__ import annotations

import re

from quant_assets.lib.errors import InvalidPartitionKeyError, InvalidSymbolError
from quant_assets.lib.timeframes import TIMEFRAMES

# Dagster drops multi-partition keys containing "|" silently and uses "," and "[" "]" in key ranges,
# so those (and whitespace) are rejected outright rather than mapped.
_FORBIDDEN = re.compile(r"[|,\[\]\s]")
_SEPARATORS = re.compile(r"[/:\-_.]")
_VALID = re.compile(r"^[A-Z0-9]{1,32}$")
_CRYPTO_QUOTES = ("USDT", "USDC", "BUSD", "USD", "BTC", "ETH", "EUR")


def normalize_symbol(raw: str) -> str:
    """Map a user's symbol to its partition key: `btc/usdt` -> `BTCUSDT`, `BRK.B` -> `BRKB`.

    Raises InvalidSymbolError naming the offending character for `|`, `,`, `[`, `]` or whitespace,
    and for anything else that is not letters and digits once separators are removed.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidSymbolError("empty symbol: give a ticker such as BTCUSDT or SPY")
    bad = _FORBIDDEN.search(raw)
    if bad:
        raise InvalidSymbolError(
            f"symbol {raw!r} contains {bad.group()!r} at position {bad.start()}: "
            "'|', ',', '[', ']' and whitespace cannot be used in partition keys"
        )
    key = _SEPARATORS.sub("", raw).upper()
    if not _VALID.match(key):
        raise InvalidSymbolError(
            f"symbol {raw!r} normalises to {key!r}, which is not 1-32 letters and digits"
        )
    return key


def is_crypto_symbol(symbol: str) -> bool:
    """Crypto-style symbols (quoted in a coin or fiat pair, e.g. BTCUSDT) trade 24/7."""
    key = normalize_symbol(symbol)
    return any(key.endswith(q) and len(key) > len(q) for q in _CRYPTO_QUOTES)


def validate_partition_key(key: object) -> tuple[str, str | None]:
    """(symbol, timeframe) of a `SYMBOL|timeframe` key, or (key, None) of a one-dimension key (a
    symbol or a timeframe), after checking it with the rule of `normalize_symbol`.

    Keys reach steps from the UI, GraphQL and sensors without passing the CLI, so every place that
    builds a path or a query from one checks it: the symbol must already be normalised (`BTCUSDT`,
    never `btc/usdt` or `../x`), the timeframe one of TIMEFRAMES. Raises InvalidPartitionKeyError.
    """
    text = str(key)
    symbol, sep, timeframe = text.partition("|")
    if not sep:
        if text in TIMEFRAMES:
            return text, None
        return _normalised_symbol(text, text), None
    if timeframe not in TIMEFRAMES:
        raise InvalidPartitionKeyError(
            f"partition key {text!r}: unknown timeframe {timeframe!r}; expected one of "
            f"{', '.join(TIMEFRAMES)}"
        )
    return _normalised_symbol(symbol, text), timeframe


def _normalised_symbol(symbol: str, key: str) -> str:
    try:
        normal = normalize_symbol(symbol)
    except InvalidSymbolError as exc:
        raise InvalidPartitionKeyError(f"partition key {key!r}: {exc}") from None
    if normal != symbol:
        raise InvalidPartitionKeyError(
            f"partition key {key!r}: symbol {symbol!r} is not a normalised partition key "
            f"({normal!r}); register symbols with `quant-assets symbols add`"
        )
    return symbol
