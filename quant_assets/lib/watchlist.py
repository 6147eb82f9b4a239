"""The watchlist file: one symbol per line (`#` starts a comment); the source of truth for symbols."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from quant_assets.lib.errors import InvalidSymbolError
from quant_assets.lib.symbols import normalize_symbol


@dataclass(frozen=True)
class Watchlist:
    symbols: tuple[str, ...]  # normalised, de-duplicated, in file order
    errors: tuple[str, ...]  # "<file>:<line>: <message>" for lines that are not valid symbols


def read_watchlist(path: str | os.PathLike[str]) -> Watchlist:
    symbols: dict[str, None] = {}
    errors: list[str] = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            symbols[normalize_symbol(text)] = None
        except InvalidSymbolError as exc:
            errors.append(f"{path}:{number}: {exc}")
    return Watchlist(tuple(symbols), tuple(errors))


def write_watchlist(path: str | os.PathLike[str], symbols: list[str] | tuple[str, ...]) -> Path:
    """Write the watchlist atomically, keeping a header comment."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    body = "# quant-assets watchlist: one symbol per line; the watchlist sensor keeps partitions in step\n"
    body += "".join(f"{s}\n" for s in dict.fromkeys(symbols))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(body)
    os.replace(tmp, target)
    return target
