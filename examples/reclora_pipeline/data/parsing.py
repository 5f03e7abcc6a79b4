"""Line-accurate, chunked parsing of delimited text and JSON-lines files (optionally gzipped).

Each parsed row keeps its physical line number, so a rejected row can be reported as ``file:line``. Files are read in
chunks of rows (``chunk_rows``) and converted column-wise with pandas, so MovieLens-25M's 25M ratings never exist as
25M Python row objects at once.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .validation import DataFormatError, ReadReport


DEFAULT_CHUNK_ROWS = 1_000_000


@dataclass
class Chunk:
    """Rows of one chunk, column-wise: ``columns[j][i]`` is field j of row i, found at physical line ``lines[i]``."""

    columns: list
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.lines)


class _CountingReader(io.RawIOBase):
    """A raw file that advances a progress bar by the bytes read from disk (compressed bytes for a gzipped file)."""

    def __init__(self, raw, bar):
        self.raw, self.bar = raw, bar

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.raw.readinto(buffer)
        self.bar.update(count or 0)
        return count

    def close(self) -> None:
        self.raw.close()
        self.bar.close()
        super().close()


@contextmanager
def open_binary(path: Path, progress: bool = False) -> Iterator:
    """The file as a binary stream, gunzipped when it is gzip; ``progress`` shows a bar over the file's bytes."""
    path = Path(path)
    with open(path, "rb") as probe:
        magic = probe.read(2)
    raw = open(path, "rb", buffering=0)
    if progress:
        bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"reading {path.name}", leave=False)
        raw = _CountingReader(raw, bar)
    with io.BufferedReader(raw, buffer_size=1 << 20) as stream:
        if magic == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=stream, mode="rb") as unzipped:
                try:
                    yield unzipped
                except (EOFError, zlib.error, gzip.BadGzipFile) as error:  # raised while the caller reads
                    raise DataFormatError(f"{path}: the gzip file is damaged or truncated ({error}); an interrupted "
                                          "download? Download it again", path=path) from None
        else:
            yield stream


def _without_bom(raw: bytes, number: int) -> bytes:
    """The first line without a UTF-8 byte-order mark (an editor's, not data: it must not become part of an id)."""
    return raw[len(codecs.BOM_UTF8):] if number == 1 and raw.startswith(codecs.BOM_UTF8) else raw


def _decoded_lines(handle, encoding: str, bad_lines: set) -> Iterator[str]:
    for number, raw in enumerate(handle, start=1):
        raw = _without_bom(raw, number)
        try:
            yield raw.decode(encoding)
        except UnicodeDecodeError:
            bad_lines.add(number)
            yield raw.decode(encoding, errors="replace")


def iter_delimited(
    path: Path,
    *,
    sep: str,
    n_fields: int,
    report: ReadReport,
    encoding: str = "utf-8",
    header: Optional[Sequence[str]] = None,
    quoted: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Iterator[Chunk]:
    """Yield chunks of rows with exactly ``n_fields`` fields; other rows are rejected into ``report``.

    Args:
        sep: the field separator; one character goes through the C ``csv`` reader, longer ones (``"::"``) are split.
        header: the expected header fields, or ``None`` when the file has no header. A different header raises
            :class:`DataFormatError` at once: the file is not in the announced format.
        quoted: honour CSV double quotes (MovieLens-25M's ``movies.csv``); otherwise quotes are ordinary characters.
    Blank lines carry no data and are skipped without being counted.
    """
    path = Path(path)
    bad_lines: set = set()
    rows_total = 0
    with open_binary(path, report.progress) as handle:
        lines = _decoded_lines(handle, encoding, bad_lines)
        if len(sep) == 1:
            reader = csv.reader(lines, delimiter=sep, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
                                strict=False)

            def rows():
                previous = 0
                while True:
                    try:
                        fields = next(reader)
                    except StopIteration:
                        return
                    except csv.Error as error:  # e.g. a field over csv's size limit: one bad row, the reader goes on
                        fields = error
                    current = reader.line_num
                    yield previous + 1, current, fields
                    previous = current
        else:

            def rows():
                for number, text in enumerate(lines, start=1):
                    text = text.rstrip("\r\n")
                    yield number, number, (text.split(sep) if text else [])

        columns: list = [[] for _ in range(n_fields)]
        numbers: list = []
        expect_header = header is not None
        for first, last, fields in rows():
            if isinstance(fields, csv.Error):
                rows_total += 1
                report.reject(path, first, f"not a {'quoted ' if quoted else ''}CSV row ({fields})")
                continue
            if not fields or (len(fields) == 1 and fields[0].strip() == ""):
                continue
            if expect_header:
                expect_header = False
                found = [value.strip().lstrip("\ufeff") for value in fields]
                if found != list(header):
                    raise DataFormatError(
                        f"{path}: line {first}: expected the header {sep.join(header)!r}, found {sep.join(found)!r}; "
                        "is this file in the announced format?",
                        path=path,
                        line=first,
                    )
                continue
            rows_total += 1
            if bad_lines and any(number in bad_lines for number in range(first, last + 1)):
                report.reject(path, first, f"not valid {encoding} text", sep.join(fields))
                continue
            if len(fields) != n_fields:
                report.reject(path, first, f"expected {n_fields} fields separated by {sep!r}, got {len(fields)}",
                              sep.join(fields))
                continue
            for column, value in zip(columns, fields):
                column.append(value)
            numbers.append(first)
            if len(numbers) >= chunk_rows:
                yield Chunk(columns, np.asarray(numbers, dtype=np.int64))
                columns = [[] for _ in range(n_fields)]
                numbers = []
        if expect_header:
            raise DataFormatError(f"{path}: the file is empty (expected the header {sep.join(header)!r})", path=path,
                                  line=1)
        if numbers:
            yield Chunk(columns, np.asarray(numbers, dtype=np.int64))
    report.count_rows(path, rows_total)


def iter_json_lines(
    path: Path, *, report: ReadReport, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[tuple[np.ndarray, list]]:
    """Yield ``(line numbers, records)`` chunks of a JSON-lines file; a line that is not a JSON object is rejected."""
    path = Path(path)
    rows_total = 0
    records: list = []
    numbers: list = []
    with open_binary(path, report.progress) as handle:
        for number, raw in enumerate(handle, start=1):
            raw = _without_bom(raw, number)
            if not raw.strip():
                continue
            rows_total += 1
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                report.reject(path, number, f"not valid JSON ({error.__class__.__name__})",
                              raw.decode("utf-8", "replace"))
                continue
            except RecursionError:
                report.reject(path, number, "JSON nested too deeply", raw[:200].decode("utf-8", "replace"))
                continue
            except ValueError:  # a number with more digits than Python converts
                report.reject(path, number, "JSON number too long to read", raw[:200].decode("utf-8", "replace"))
                continue
            if not isinstance(record, dict):
                report.reject(path, number, "not a JSON object", raw.decode("utf-8", "replace"))
                continue
            records.append(record)
            numbers.append(number)
            if len(records) >= chunk_rows:
                yield np.asarray(numbers, dtype=np.int64), records
                records, numbers = [], []
    if records:
        yield np.asarray(numbers, dtype=np.int64), records
    report.count_rows(path, rows_total)


def to_number(values: Sequence[str], *, integer: bool) -> tuple[np.ndarray, np.ndarray]:
    """Convert strings to float64 (or int64 when ``integer``); returns ``(values, ok)``, ``ok`` False where invalid."""
    series = pd.Series(values, dtype=object).astype(str).str.strip()
    numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    ok = np.isfinite(numbers)
    if integer:
        ok &= np.floor(np.where(ok, numbers, 0.0)) == np.where(ok, numbers, 0.0)
        return np.where(ok, numbers, 0).astype(np.int64), ok
    return np.where(ok, numbers, np.nan), ok


class IdEncoder:
    """Dense integer codes for raw id strings, stable across chunks (first-seen order)."""

    def __init__(self):
        self.index: dict = {}
        self.ids: list = []

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, values: Sequence[str]) -> np.ndarray:
        codes, uniques = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=False)
        mapping = np.empty(len(uniques), dtype=np.int64)
        for position, value in enumerate(uniques):
            code = self.index.get(value)
            if code is None:
                code = len(self.ids)
                self.index[value] = code
                self.ids.append(value)
            mapping[position] = code
        return mapping[codes]
