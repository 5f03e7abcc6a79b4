"""Small synthetic datasets written in the official file formats, for tests, demos and benchmarks.

``make_world`` draws users, items and ratings with a learnable signal (users have genre tastes); the ``write_*``
functions write them exactly as GroupLens (ML-100K, ML-1M, ML-25M), RecBole (the embedded ML-100K) and the UCSD Book
Graph (GoodReads) publish them, so the real readers are exercised end to end.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reclora_pipeline.data.movielens import ML1M_OCCUPATIONS, ML100K_GENRES


GENRES = ML100K_GENRES[1:]
AGE_CODES = (1, 18, 25, 35, 45, 50, 56)


@dataclass
class SyntheticWorld:
    """``users`` (user_id, gender, age in years, age_code, occupation_code, zip_code), ``items`` (item_id, title,
    year, genres list) and ``ratings`` (user_id, item_id, rating, timestamp), ids as ints."""

    users: pd.DataFrame
    items: pd.DataFrame
    ratings: pd.DataFrame


def make_world(
    num_users: int = 40,
    num_items: int = 60,
    ratings_per_user: tuple = (8, 30),
    *,
    half_stars: bool = False,
    tie_probability: float = 0.1,
    seed: int = 0,
) -> SyntheticWorld:
    rng = np.random.default_rng(seed)
    genre_of = rng.integers(0, len(GENRES), size=num_items)
    taste = rng.normal(size=(num_users, len(GENRES)))
    ages = rng.integers(10, 70, size=num_users)
    users = pd.DataFrame({
        "user_id": np.arange(1, num_users + 1),
        "gender": rng.choice(["M", "F"], size=num_users),
        "age": ages,
        "age_code": [max(code for code in AGE_CODES if code <= max(age, 1)) for age in ages],
        "occupation_code": rng.integers(0, len(ML1M_OCCUPATIONS), size=num_users),
        "zip_code": [f"{z:05d}" for z in rng.integers(0, 99999, size=num_users)],
    })
    years = rng.integers(1930, 2000, size=num_items)
    items = pd.DataFrame({
        "item_id": np.arange(1, num_items + 1),
        "title": [f"Movie {i}" for i in range(1, num_items + 1)],
        "year": years,
        "genres": [[GENRES[g]] + ([GENRES[(g + 3) % len(GENRES)]] if i % 3 == 0 else [])
                   for i, g in enumerate(genre_of)],
    })
    rows = []
    clock = 880_000_000
    for user in range(num_users):
        count = int(rng.integers(ratings_per_user[0], ratings_per_user[1] + 1))
        chosen = rng.choice(num_items, size=min(count, num_items), replace=False)
        times = clock + np.cumsum(rng.integers(1, 5000, size=len(chosen)))
        ties = rng.random(len(chosen)) < tie_probability
        times[1:] = np.where(ties[1:], times[:-1], times[1:])  # some ratings in the same second
        times = np.maximum.accumulate(times)
        score = taste[user, genre_of[chosen]] + rng.normal(scale=0.5, size=len(chosen))
        stars = np.clip(np.round(3.0 + 1.2 * score), 1, 5)
        if half_stars:
            stars = np.clip(np.round((3.0 + 1.2 * score) * 2) / 2, 0.5, 5.0)
        for item, time, star in zip(chosen, times, stars):
            rows.append((user + 1, int(item) + 1, float(star), int(time)))
    ratings = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    # Interleave users in time, as real logs are.
    ratings = ratings.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return SyntheticWorld(users, items, ratings)


def _stars(value: float) -> str:
    return f"{int(value)}" if float(value).is_integer() else f"{value:g}"


def _write_lines(path: Path, lines, encoding: str) -> None:
    """One line per item of ``lines``, ``\n``-terminated, in the encoding the official files use."""
    with open(path, "w", encoding=encoding, newline="\n") as f:
        f.writelines(f"{line}\n" for line in lines)


def _occupation_name(code: int) -> str:
    return ML1M_OCCUPATIONS[code].split("/")[0]


def write_ml1m(world: SyntheticWorld, folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_lines(folder / "ratings.dat", (f"{r.user_id}::{r.item_id}::{_stars(r.rating)}::{r.timestamp}"
                                          for r in world.ratings.itertuples()), "latin-1")
    _write_lines(folder / "users.dat", (f"{u.user_id}::{u.gender}::{u.age_code}::{u.occupation_code}::{u.zip_code}"
                                        for u in world.users.itertuples()), "latin-1")
    _write_lines(folder / "movies.dat", (f"{m.item_id}::{m.title} ({m.year})::{'|'.join(m.genres)}"
                                         for m in world.items.itertuples()), "latin-1")
    return folder


def write_ml25m(world: SyntheticWorld, folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ratings = world.ratings.rename(columns={"user_id": "userId", "item_id": "movieId"})
    ratings["rating"] = ratings["rating"].map(lambda v: f"{v:.1f}")
    ratings.to_csv(folder / "ratings.csv", index=False)
    movies = pd.DataFrame({
        "movieId": world.items["item_id"],
        "title": [f"{t} ({y})" for t, y in zip(world.items["title"], world.items["year"])],
        "genres": ["|".join(g) for g in world.items["genres"]],
    })
    movies.to_csv(folder / "movies.csv", index=False)
    return folder


def write_ml100k_grouplens(world: SyntheticWorld, folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def item_line(m) -> str:
        flags = "|".join("1" if g in m.genres else "0" for g in ML100K_GENRES)
        return f"{m.item_id}|{m.title} ({m.year})|01-Jan-{m.year}||http://us.imdb.com/M/title-exact?{m.item_id}|{flags}"

    _write_lines(folder / "u.data", (f"{r.user_id}\t{r.item_id}\t{_stars(r.rating)}\t{r.timestamp}"
                                     for r in world.ratings.itertuples()), "latin-1")
    _write_lines(folder / "u.item", (item_line(m) for m in world.items.itertuples()), "latin-1")
    _write_lines(folder / "u.user", (f"{u.user_id}|{u.age}|{u.gender}|{_occupation_name(u.occupation_code)}|"
                                     f"{u.zip_code}" for u in world.users.itertuples()), "latin-1")
    return folder


def write_ml100k_recbole(world: SyntheticWorld, folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_lines(folder / "ml-100k.inter", [
        "user_id:token\titem_id:token\trating:float\ttimestamp:float",
        *(f"{r.user_id}\t{r.item_id}\t{_stars(r.rating)}\t{r.timestamp}" for r in world.ratings.itertuples()),
    ], "utf-8")
    _write_lines(folder / "ml-100k.item", [
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
        *(f"{m.item_id}\t{m.title}\t{m.year}\t{' '.join(m.genres)}" for m in world.items.itertuples()),
    ], "utf-8")
    _write_lines(folder / "ml-100k.user", [
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
        *(f"{u.user_id}\t{u.age}\t{u.gender}\t{_occupation_name(u.occupation_code)}\t{u.zip_code}"
          for u in world.users.itertuples()),
    ], "utf-8")
    return folder


def goodreads_date(timestamp: int) -> str:
    """A unix time in GoodReads' format, e.g. "Mon Aug 01 13:41:57 -0700 2011"."""
    moment = pd.Timestamp(int(timestamp), unit="s", tz="UTC").tz_convert("-07:00")
    return moment.strftime("%a %b %d %H:%M:%S %z %Y")


def write_goodreads(world: SyntheticWorld, folder: Path, *, genre: str = "poetry", unrated_every: int = 0) -> Path:
    """``goodreads_interactions_{genre}.json.gz``, ``goodreads_books_{genre}.json.gz`` and the authors file.

    ``unrated_every``: every n-th interaction is written with rating 0 (shelved, not rated), as the real files have.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / f"goodreads_interactions_{genre}.json.gz", "wt", encoding="utf-8") as f:
        for position, r in enumerate(world.ratings.itertuples()):
            rating = 0 if unrated_every and position % unrated_every == unrated_every - 1 else int(round(r.rating))
            date = goodreads_date(r.timestamp)
            f.write(json.dumps({"user_id": f"u{r.user_id:04x}", "book_id": str(r.item_id), "review_id": f"r{position}",
                                "is_read": True, "rating": rating, "date_added": date, "date_updated": date,
                                "read_at": date, "started_at": ""}) + "\n")
    with gzip.open(folder / f"goodreads_books_{genre}.json.gz", "wt", encoding="utf-8") as f:
        for m in world.items.itertuples():
            f.write(json.dumps({"book_id": str(m.item_id), "title": f"Book {m.item_id}",
                                "isbn": f"{9780000000 + m.item_id}",
                                "authors": [{"author_id": str(100 + m.item_id % 7), "role": ""}],
                                "publisher": f"Press {m.item_id % 4}", "publication_year": str(m.year),
                                "language_code": "eng", "format": "Paperback", "is_ebook": "false"}) + "\n")
    _write_lines(folder / "goodreads_book_authors.json",
                 (json.dumps({"author_id": str(100 + author), "name": f"Author {author}"}) for author in range(7)),
                 "utf-8")
    return folder
