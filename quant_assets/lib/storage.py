"""Parquet files under the artifacts root, written atomically (temporary file, fsync, rename)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import polars as pl

from quant_assets.lib.errors import InvalidPartitionKeyError


def write_parquet_atomic(frame: pl.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write `frame` to `path` so a reader sees either the old file or the new one, never half."""
    return write_atomic(
        path, lambda handle: frame.write_parquet(handle, compression="zstd", statistics=True)
    )


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call `write` on a temporary file beside `path`, fsync it and rename it onto `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def safe_artifact_path(root: str | os.PathLike[str], *parts: str) -> Path:
    """`root/part/...`, resolved, or InvalidPartitionKeyError when it would land outside `root`
    (a `..`, an absolute part or a symlink leading elsewhere)."""
    base = Path(root).resolve()
    target = base.joinpath(*parts).resolve()
    if not target.is_relative_to(base) or target == base:
        raise InvalidPartitionKeyError(
            f"path {'/'.join(parts)!r} resolves to {target}, outside the artifacts root {base}"
        )
    return target


def read_parquet(path: str | os.PathLike[str]) -> pl.DataFrame:
    return pl.read_parquet(path)


def frame_fingerprint(frame: pl.DataFrame) -> str:
    """A short, stable content hash of a frame (schema and values), used as a data version."""
    digest = hashlib.sha256()
    digest.update(repr(list(frame.schema.items())).encode())
    for name in frame.columns:
        column = frame.get_column(name)
        digest.update(name.encode())
        if column.dtype.is_numeric() or column.dtype.is_temporal() or column.dtype == pl.Boolean:
            values = column.to_physical()
            digest.update(values.is_null().to_numpy().tobytes())
            digest.update(values.fill_null(0).to_numpy().tobytes())
        else:
            digest.update("\x1f".join(map(str, column.to_list())).encode())
    return digest.hexdigest()[:16]
