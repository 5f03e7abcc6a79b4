"""GoodReads from the UCSD Book Graph files: ``goodreads_interactions*.json[.gz]`` and ``goodreads_books*.json[.gz]``.

Both are JSON lines; per-genre files (``goodreads_interactions_poetry.json.gz`` ...) and the full dump
(``goodreads_interactions_dedup.json.gz``) are read alike, several files of a kind are concatenated. An optional
``goodreads_book_authors.json[.gz]`` gives author names for the text view; without it a book's author is known only by
id (a CRM field, never text).

A rating of 0 means "shelved, not rated": such rows are legitimate data without a rating, so they are filtered (and
counted), not rejected. The interaction time is ``date_updated`` by default (the last change of the shelving, which
is when a rating was set); ``time_field`` selects ``date_added``, ``read_at`` or ``started_at`` instead.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from .parsing import DEFAULT_CHUNK_ROWS, IdEncoder, iter_json_lines
from .raw import DatasetSpec, RawData, rating_is_valid
from .validation import DataFormatError, ReadReport


UNKNOWN = "unknown"
# The fields of a book record read as ids or text: each is a string (or null) in the dump.
BOOK_TEXT_FIELDS = ("book_id", "title", "title_without_series", "publication_year", "publisher", "language_code",
                    "format", "isbn")
TIME_FIELDS = ("date_updated", "date_added", "read_at", "started_at")
_DATE_FORMAT = "%a %b %d %H:%M:%S %z %Y"  # "Mon Aug 01 13:41:57 -0700 2011"
_FIRST_SECOND, _LAST_SECOND = pd.Timestamp.min.value // 10**9 + 1, pd.Timestamp.max.value // 10**9

GOODREADS = DatasetSpec(
    name="goodreads", item_noun="book", user_fields=("user_id",),
    item_fields=("item_id", "author_id", "publisher", "year", "language", "format"),
    profile_fields=(), item_text_fields=("author", "year", "publisher"),
    id_fields=("user_id", "item_id", "isbn", "author_id"), label_threshold=4.0, label_inclusive=True,
    rating_min=1.0, rating_max=5.0, rating_step=1.0,
)


def _files(folder: Path, prefix: str) -> list:
    return sorted(
        path for path in folder.glob(f"{prefix}*")
        if path.is_file() and (path.name.endswith(".json") or path.name.endswith(".json.gz"))
    )


def parse_dates(values: list) -> np.ndarray:
    """Unix seconds of GoodReads date strings; -1 where a value is missing, not a string, not a date, or a date
    outside the years pandas timestamps hold (1677 to 2262; a year-9999 date is a broken row, not a time)."""
    series = pd.Series([value if isinstance(value, str) else None for value in values], dtype=object)
    try:
        parsed = pd.to_datetime(series, format=_DATE_FORMAT, errors="coerce", utc=True)
    except (pd.errors.OutOfBoundsDatetime, OverflowError, ValueError):  # pandas < 3 parses to nanoseconds
        parsed = pd.Series([_one_date(value) for value in series], dtype="datetime64[ns, UTC]")
    seconds = parsed.dt.tz_localize(None).to_numpy().astype("datetime64[s]").astype(np.int64)
    ok = parsed.notna().to_numpy() & (seconds >= _FIRST_SECOND) & (seconds <= _LAST_SECOND)
    return np.where(ok, seconds, -1)


def _one_date(value: Optional[str]):
    try:
        return pd.to_datetime(value, format=_DATE_FORMAT, utc=True) if value is not None else pd.NaT
    except (pd.errors.OutOfBoundsDatetime, OverflowError, ValueError):
        return pd.NaT


def _is_date(value) -> bool:
    try:
        datetime.strptime(value, _DATE_FORMAT)
    except (TypeError, ValueError):
        return False
    return True


def _id(value) -> str:
    """An id of the dump: a non-empty string ('' for anything else, which rejects the row: never coerced)."""
    return value.strip() if isinstance(value, str) else ""


def _type_problem(record: dict, names: tuple) -> str:
    """The first of ``names`` whose value is of a type the dump never writes there (ids and text are strings or
    null), or ''."""
    for name in names:
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            return f"{name} is a JSON {type(value).__name__}, not a string"
    return ""


def read_goodreads(
    source: Path, report: ReadReport, chunk_rows: int = DEFAULT_CHUNK_ROWS, time_field: str = "date_updated"
) -> RawData:
    if source is None:
        raise FileNotFoundError("goodreads has no embedded copy: "
                                "pass the folder of the UCSD Book Graph files as source")
    if time_field not in TIME_FIELDS:
        raise ValueError(f"time_field must be one of {TIME_FIELDS}, got {time_field!r}")
    folder = Path(source)
    interaction_files = _files(folder, "goodreads_interactions")
    book_files = _files(folder, "goodreads_books")
    if not interaction_files or not book_files:
        raise FileNotFoundError(
            f"{folder} must hold goodreads_interactions*.json[.gz] and goodreads_books*.json[.gz] "
            f"(found {len(interaction_files)} interaction and {len(book_files)} book files)"
        )
    users_enc, items_enc = IdEncoder(), IdEncoder()
    parts = []
    for path in interaction_files:
        for lines, records in iter_json_lines(path, report=report, chunk_rows=chunk_rows):
            parts.append(_interaction_chunk(path, lines, records, report, users_enc, items_enc, time_field))
        report.check(path)
    interactions = pd.concat(parts, ignore_index=True) if parts else None
    if interactions is None or interactions.empty:
        raise DataFormatError(f"{interaction_files[0]}: no rated interactions", path=interaction_files[0])
    # Several files of a kind would need a file column to locate a rejected row; keep the first file's name.
    interactions_file = interaction_files[0]

    authors = _read_authors(folder, report)
    items = _read_books(book_files, report, authors)
    users = pd.DataFrame({"user_id": pd.Series(users_enc.ids, dtype=object)})
    return RawData(
        GOODREADS, str(folder), interactions, users_enc.ids, items_enc.ids, users, items, interactions_file, report,
        files={"interactions": [str(p) for p in interaction_files], "items": [str(p) for p in book_files],
               "time_field": time_field},
    )


def _interaction_chunk(path, lines, records, report, users_enc, items_enc, time_field) -> pd.DataFrame:
    user = [_id(record.get("user_id")) for record in records]
    item = [_id(record.get("book_id")) for record in records]
    raw_rating = [record.get("rating") for record in records]
    # A rating is a JSON number: true, "5" or [5] are not ratings, whatever pandas would make of them.
    rating = np.array([float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else np.nan
                       for value in raw_rating], dtype=np.float64)
    timestamp = parse_dates([record.get(time_field) or None for record in records])
    types = [_type_problem(record, ("user_id", "book_id", time_field)) for record in records]
    ids_ok = np.array([bool(u) and bool(i) and not problem for u, i, problem in zip(user, item, types)], dtype=bool)
    unrated = rating == 0
    rating_ok = rating_is_valid(np.where(np.isfinite(rating), rating, 1.0), GOODREADS) & np.isfinite(rating)
    time_ok = timestamp >= 0
    ok = ids_ok & rating_ok & time_ok
    for row in np.flatnonzero(~ok & ~(unrated & ids_ok)):
        if types[row]:
            reason = types[row]
        elif not ids_ok[row]:
            reason = "missing user_id or book_id"
        elif not rating_ok[row]:
            reason = f"rating {raw_rating[row]!r} is not on the 1..5 scale"
        else:
            value = records[row].get(time_field)
            reason = (f"{time_field} {value!r} is outside the dates read (years 1677 to 2262)" if _is_date(value)
                      else f"{time_field} {value!r} is not a date")
        report.reject(path, int(lines[row]), reason, str(records[row]))
    skipped = np.flatnonzero(unrated & ids_ok)
    if len(skipped):
        report.filter("unrated shelving (GoodReads rating 0)", len(skipped), path, int(lines[skipped[0]]),
                      str(records[skipped[0]]))
    keep = np.flatnonzero(ok)
    return pd.DataFrame(
        {
            "user": users_enc.encode([user[i] for i in keep]),
            "item": items_enc.encode([item[i] for i in keep]),
            "rating": rating[keep],
            "timestamp": timestamp[keep],
            "line": lines[keep],
        }
    )


def _read_authors(folder: Path, report: ReadReport) -> dict:
    names = {}
    for path in _files(folder, "goodreads_book_authors"):
        for lines, records in iter_json_lines(path, report=report):
            for line, record in zip(lines, records):
                author_id = _id(record.get("author_id"))
                problem = _type_problem(record, ("author_id", "name"))
                if problem or not author_id:
                    report.reject(path, int(line), problem or "missing author_id", str(record)[:200])
                    continue
                names[author_id] = (record.get("name") or "").strip()
        report.check(path)
    return names


def _first_author(record: dict) -> str:
    authors = record.get("authors") or []
    if isinstance(authors, list):
        for author in authors:
            if isinstance(author, dict) and _id(author.get("author_id")):
                return _id(author["author_id"])
    return ""


def _read_books(paths: list, report: ReadReport, author_names: dict) -> pd.DataFrame:
    columns = {name: [] for name in ("item_id", "title", "year", "author", "author_id", "publisher", "language",
                                     "format", "isbn")}
    seen = set()
    for path in paths:
        for lines, records in iter_json_lines(path, report=report):
            for line, record in zip(lines, records):
                book_id = _id(record.get("book_id"))
                problem = _type_problem(record, BOOK_TEXT_FIELDS)
                if problem or not book_id:
                    report.reject(path, int(line), problem or "missing book_id", str(record)[:200])
                    continue
                if book_id in seen:
                    # The per-genre book files overlap; a book listed twice is the same record.
                    report.filter("book listed in several files", 1, path, int(line), book_id)
                    continue
                seen.add(book_id)
                title = str(record.get("title") or record.get("title_without_series") or "").strip()
                if not title:
                    report.mark_unknown("title", path, int(line), str(record)[:200])
                    title = UNKNOWN
                year = str(record.get("publication_year") or "").strip()
                if not year.isdigit():
                    report.mark_unknown("year", path, int(line), f"book {book_id}: {year!r}")
                    year = UNKNOWN
                author_id = _first_author(record)
                author = author_names.get(author_id, "") if author_id else ""
                if not author_id:
                    report.mark_unknown("author", path, int(line), f"book {book_id}")
                columns["item_id"].append(book_id)
                columns["title"].append(title)
                columns["year"].append(year)
                columns["author"].append(author or UNKNOWN)
                columns["author_id"].append(author_id or UNKNOWN)
                columns["publisher"].append(str(record.get("publisher") or "").strip() or UNKNOWN)
                columns["language"].append(str(record.get("language_code") or "").strip() or UNKNOWN)
                columns["format"].append(str(record.get("format") or "").strip() or UNKNOWN)
                columns["isbn"].append(str(record.get("isbn") or "").strip())
        report.check(path)
    return pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})
