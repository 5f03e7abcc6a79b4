"""Dataset readers on small files in the official formats, bad rows, and the embedded MovieLens-100K's quirks."""

import gzip
import json

import numpy as np
import pytest

from reclora_pipeline.data import DataFormatError, load_dataset, read_raw

from support.synthetic_data import (
    make_world,
    write_goodreads,
    write_ml1m,
    write_ml25m,
    write_ml100k_grouplens,
    write_ml100k_recbole,
)
from support.text_views import text_record_of


RAW = dict(core=0, min_history=0)


@pytest.fixture(scope="module")
def world():
    return make_world(num_users=30, num_items=50, seed=3)


def _samples_match_world(dataset, world):
    """Every rating written is one interaction, with its rating and timestamp, bound to the right user and item."""
    written = {(str(u), str(i)): (r, t) for u, i, r, t in world.ratings.itertuples(index=False)}
    table = dataset.interactions
    assert len(table) == len(written)
    for user, item, rating, timestamp in zip(table["user_id"], table["item_id"], table["rating"], table["timestamp"]):
        assert written[(user, item)] == (rating, timestamp)


def test_ml1m_reader(tmp_path, world):
    write_ml1m(world, tmp_path)
    # A latin-1 title with a comma and an accent, as in the real movies.dat.
    lines = (tmp_path / "movies.dat").read_text(encoding="latin-1").splitlines()
    lines[0] = "1::Misérables, Les (1995)::Drama|Musical"
    (tmp_path / "movies.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    dataset = load_dataset("ml-1m", tmp_path, **RAW)
    _samples_match_world(dataset, world)
    item = dataset.items.set_index("item_id").loc["1"]
    assert (item["title"], item["year"], item["genres"], item["genre"]) == ("Misérables, Les (1995)", "1995",
                                                                            "Drama|Musical", "Drama")
    user = dataset.users.set_index("user_id").loc["1"]
    source = world.users.iloc[0]
    assert user["gender"] == source["gender"]
    assert user["age"] == {1: "under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55",
                           56: "above 56"}[source["age_code"]]
    assert user["zip_code"] == source["zip_code"]
    assert dataset.stats["rows_read"] == {"ratings.dat": len(world.ratings), "movies.dat": 50, "users.dat": 30}
    labels = dataset.samples["label"].to_numpy()
    assert np.array_equal(labels, (dataset.samples["rating"].to_numpy() >= 4).astype(np.int8))


def test_ml25m_reader_quoted_titles_half_stars_and_label_rule(tmp_path):
    world = make_world(num_users=20, num_items=30, half_stars=True, seed=4)
    write_ml25m(world, tmp_path)
    text = (tmp_path / "movies.csv").read_text().splitlines()
    text[1] = '1,"American President, The (1995)",Comedy|Drama|Romance'
    text[2] = "2,Untitled Short,(no genres listed)"
    (tmp_path / "movies.csv").write_text("\n".join(text) + "\n")
    dataset = load_dataset("ml-25m", tmp_path, **RAW)
    _samples_match_world(dataset, world)
    items = dataset.items.set_index("item_id")
    assert items.loc["1", "title"] == "American President, The (1995)"
    assert (items.loc["2", "genre"], items.loc["2", "year"]) == ("unknown", "")
    assert dataset.stats["values_unknown"] == {"year": 1, "genre": 1}
    ratings = dataset.samples["rating"].to_numpy()
    assert {3.0, 3.5} <= set(ratings.tolist())
    # ML-25M: positive iff rating > 3.0, so 3.0 is negative and 3.5 positive.
    assert np.array_equal(dataset.samples["label"].to_numpy(), (ratings > 3.0).astype(np.int8))
    assert list(dataset.users.columns) == ["user_id"]


def test_ml100k_grouplens_reader(tmp_path, world):
    write_ml100k_grouplens(world, tmp_path / "ml-100k")
    path = tmp_path / "ml-100k" / "u.item"
    lines = path.read_text(encoding="latin-1").splitlines()
    lines[1] = "2|unknown||||" + "|".join(["1"] + ["0"] * 18)
    lines[2] = "3|Misérables, Les (1995)|01-Jan-1995||http://x|" + "|".join(["0"] * 8 + ["1"] + ["0"] * 10)
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")
    dataset = load_dataset("ml-100k", tmp_path, **RAW)  # the parent folder of ml-100k/ works too
    _samples_match_world(dataset, world)
    items = dataset.items.set_index("item_id")
    assert (items.loc["2", "title"], items.loc["2", "genre"]) == ("unknown", "unknown")
    assert (items.loc["3", "title"], items.loc["3", "genres"]) == ("Misérables, Les (1995)", "Drama")
    assert dataset.stats["values_unknown"] == {"title": 1, "year": 1, "genre": 1}
    assert dataset.users.set_index("user_id").loc["1", "age"] in {"under 18", "18-24", "25-34", "35-44", "45-49",
                                                                  "50-55", "above 56"}


def test_recbole_reader_handles_the_embedded_quirks(tmp_path, world):
    write_ml100k_recbole(world, tmp_path)
    path = tmp_path / "ml-100k.item"
    lines = path.read_text().splitlines()
    lines[1] = "1\tunkonwn\tunkonwn\tunknown"  # item 267 of the embedded copy
    lines[2] = "2\tLand Before Time III: The Time of the Great Giving (1995)\tV\tAnimation Children's"  # item 1412
    path.write_text("\n".join(lines) + "\n")
    dataset = load_dataset("ml-100k", tmp_path, **RAW)
    items = dataset.items.set_index("item_id")
    assert items.loc["1", "title"] == "unknown"
    assert (items.loc["2", "title"], items.loc["2", "year"]) == \
        ("Land Before Time III: The Time of the Great Giving (1995)", "1995")
    assert (items.loc["2", "genres"], items.loc["3", "title"]) == ("Animation|Children's",
                                                                   f"Movie 3 ({world.items.year[2]})")
    stats = dataset.stats
    assert stats["values_repaired"] == {"year taken from the title": 1}
    assert stats["values_unknown"] == {"title": 1, "year": 1, "genre": 1}
    assert stats["examples"]["repaired:year taken from the title"][0]["line"] == 3
    assert stats["rows_rejected_total"] == 0


def test_goodreads_reader(tmp_path, world):
    write_goodreads(world, tmp_path, unrated_every=5)
    dataset = load_dataset("goodreads", tmp_path, **RAW)
    unrated = len(world.ratings) // 5
    assert dataset.stats["rows_filtered"] == {"unrated shelving (GoodReads rating 0)": unrated}
    assert len(dataset.interactions) == len(world.ratings) - unrated
    # Timestamps round-trip through GoodReads' date format (with its -0700 offset).
    by_pair = {(f"u{u:04x}", str(i)): t for u, i, _, t in world.ratings.itertuples(index=False)}
    table = dataset.interactions
    assert all(by_pair[(u, i)] == t for u, i, t in zip(table["user_id"], table["item_id"], table["timestamp"]))
    assert np.array_equal(dataset.samples["label"], (dataset.samples["rating"] >= 4).astype(np.int8))
    record = text_record_of(dataset, len(dataset) - 1)
    book = dataset.items.set_index("item_id").loc[str(dataset.samples["item_id"].iloc[-1])]
    assert record.target_attributes == {"author": book["author"], "year": book["year"], "publisher": book["publisher"]}
    assert book["isbn"] not in repr(record) and book["author_id"] not in repr(record.target_attributes)


def _write_ratings(path, rows):
    path.write_text("".join(row + "\n" for row in rows), encoding="latin-1")


def test_bad_rows_are_counted_with_reason_and_line(tmp_path):
    world = make_world(num_users=30, num_items=40, seed=5)
    write_ml1m(world, tmp_path)
    rows = (tmp_path / "ratings.dat").read_text(encoding="latin-1").splitlines()
    rows[3] = "1::2::5"  # a missing field
    rows[7] = "1::3::x::880000000"  # a rating that is not a number
    rows[9] = "2::4::7::880000000"  # off the 1..5 scale
    rows[11] = "999::1::4::880000000"  # a user missing from users.dat
    rows[13] = "3::5::4::1e30"  # a time int64 seconds cannot hold (it used to wrap around to a negative time)
    rows[15] = "3::6::4::9223372036854775808"  # 2**63: one second too far
    rows[17] = "3::7::4::-5"  # before 1970
    _write_ratings(tmp_path / "ratings.dat", rows)
    dataset = load_dataset("ml-1m", tmp_path, max_bad_fraction=0.05, **RAW)
    rejected = dataset.stats["rows_rejected"]["ratings.dat"]
    assert rejected == {
        "expected 4 fields separated by '::', got 3": 1,
        "rating 'x' is not a number": 1,
        "rating 7 is off the 1..5 scale (step 1)": 1,
        "user id not in the user file": 1,
        "timestamp '1e30' is beyond what int64 seconds can hold": 1,
        "timestamp '9223372036854775808' is beyond what int64 seconds can hold": 1,
        "timestamp '-5' is not a non-negative number": 1,
    }
    assert len(dataset.interactions) == len(rows) - 7
    assert dataset.interactions["timestamp"].min() >= 0
    lines = {example["line"] for bucket, examples in dataset.stats["examples"].items() if bucket.startswith("rejected")
             for example in examples}
    assert lines == {4, 8, 10, 12, 14, 16, 18}
    with pytest.raises(DataFormatError, match=r"ratings\.dat: 6 of \d+ rows .* line 4 \(expected 4 fields") as info:
        load_dataset("ml-1m", tmp_path, max_bad_fraction=0.001, **RAW)
    assert info.value.line == 4 and info.value.path.endswith("ratings.dat")


def test_repeated_ids_and_ratings(tmp_path):
    world = make_world(num_users=10, num_items=20, seed=6)
    write_ml1m(world, tmp_path)
    rows = (tmp_path / "ratings.dat").read_text(encoding="latin-1").splitlines()
    user, item, _, time = rows[0].split("::")
    rows.append(f"{user}::{item}::1::{int(time) + 10}")  # the same pair rated again, later
    _write_ratings(tmp_path / "ratings.dat", rows)
    users = (tmp_path / "users.dat").read_text(encoding="latin-1") + "3::F::25::1::12345\n"
    (tmp_path / "users.dat").write_text(users, encoding="latin-1")
    dataset = load_dataset("ml-1m", tmp_path, max_bad_fraction=0.2, **RAW)
    assert dataset.stats["rows_filtered"] == {"repeated rating of an item by a user (the latest kept)": 1}
    assert dataset.stats["rows_rejected"] == {"users.dat": {"repeated user id '3'": 1}}
    kept = dataset.interactions.query("user_id == @user and item_id == @item")
    assert kept["rating"].tolist() == [1.0]


def test_wrong_header_encoding_and_missing_files(tmp_path):
    world = make_world(num_users=10, num_items=20, seed=7)
    write_ml25m(world, tmp_path)
    text = (tmp_path / "ratings.csv").read_text().replace("userId,movieId", "user,movie", 1)
    (tmp_path / "ratings.csv").write_text(text)
    with pytest.raises(DataFormatError, match=r"ratings\.csv: line 1: expected the header"):
        read_raw("ml-25m", tmp_path)
    write_ml25m(world, tmp_path)
    data = (tmp_path / "ratings.csv").read_bytes().splitlines(keepends=True)
    data[5] = b"1,\xff\xfe,4.0,880000000\n"
    (tmp_path / "ratings.csv").write_bytes(b"".join(data))
    raw = read_raw("ml-25m", tmp_path, max_bad_fraction=0.5)
    assert raw.report.rejected["ratings.csv"] == {"not valid utf-8 text": 1}
    assert raw.report.first_bad["ratings.csv"].line == 6
    with pytest.raises(FileNotFoundError, match="missing ratings.dat"):
        read_raw("ml-1m", tmp_path)
    with pytest.raises(FileNotFoundError, match="no embedded copy"):
        read_raw("ml-1m")
    with pytest.raises(ValueError, match="unknown dataset"):
        read_raw("netflix", tmp_path)


def test_goodreads_bad_json_and_dates(tmp_path):
    world = make_world(num_users=10, num_items=20, seed=8)
    write_goodreads(world, tmp_path)
    path = tmp_path / "goodreads_interactions_poetry.json.gz"
    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()
    lines[2] = "{not json"
    record = json.loads(lines[4])
    record["date_updated"] = "yesterday"
    lines[4] = json.dumps(record)
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    raw = read_raw("goodreads", tmp_path, max_bad_fraction=0.5)
    assert raw.report.rejected[path.name] == {"not valid JSON (JSONDecodeError)": 1,
                                              "date_updated 'yesterday' is not a date": 1}
    with pytest.raises(DataFormatError, match=r"goodreads_interactions_poetry\.json\.gz: 2 of .* line 3"):
        read_raw("goodreads", tmp_path, max_bad_fraction=0.001)
    # Another time field is read when asked for.
    assert len(read_raw("goodreads", tmp_path, max_bad_fraction=0.5, time_field="date_added").interactions) == \
        len(lines) - 1


def test_embedded_ml100k():
    dataset = load_dataset("ml-100k")
    stats = dataset.stats
    assert stats["rows_read"] == {"ml-100k.inter": 100_000, "ml-100k.item": 1682, "ml-100k.user": 943}
    assert stats["rows_rejected_total"] == 0
    # Item 1412's year "V" is repaired from its title; item 267's "unkonwn" title and year are counted as unknown.
    assert stats["values_repaired"] == {"year taken from the title": 1}
    assert stats["values_unknown"]["title"] == 1 and stats["values_unknown"]["year"] == 1
    assert stats["examples"]["repaired:year taken from the title"][0]["text"].startswith("item 1412")
    assert stats["examples"]["unknown:title"][0]["text"].startswith("item 267")
    # The 5-core keeps every user (each rated >= 20 movies) and drops the items with fewer than 5 ratings.
    assert stats["users"] == 943 and stats["filtering"]["core"]["users_removed"] == 0
    assert stats["items"] + stats["filtering"]["core"]["items_removed"] == 1682
    assert stats["samples"]["total"] == sum(stats["samples"][s] for s in ("train", "valid", "test"))
    assert 0.79 < stats["samples"]["train"] / stats["samples"]["total"] < 0.81
    assert stats["interactions"] == stats["samples"]["total"] + stats["history_only_interactions"]
    titles = dataset.items.set_index("item_id")["title"]
    assert titles.loc["1"] == "Toy Story (1995)"
    assert titles.loc["1412"] == "Land Before Time III: The Time of the Great Giving (1995)"


def test_goodreads_rows_that_cannot_be_parsed_are_rejected_by_reason_never_coerced(tmp_path):
    world = make_world(num_users=10, num_items=20, seed=9)
    write_goodreads(world, tmp_path)
    path = tmp_path / "goodreads_interactions_poetry.json.gz"
    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()
    record = json.loads(lines[0])

    def edited(**changes):
        return json.dumps({**record, **changes})

    far_date = record["date_updated"][:-4] + "9999"
    lines[1] = "[" * 200_000 + "]" * 200_000  # a parser's recursion limit
    lines[2] = edited(rating=0).replace('"rating": 0', '"rating": ' + "4" * 5000)  # more digits than Python reads
    lines[3] = edited(date_updated=far_date)
    lines[4] = edited(user_id={"id": "u0001"})
    lines[5] = edited(book_id=5)
    lines[6] = edited(user_id=["u0001"])
    lines[7] = edited(rating=True)  # not one star
    lines[8] = edited(rating="5")
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    books = tmp_path / "goodreads_books_poetry.json.gz"
    with gzip.open(books, "rt") as f:
        book_lines = f.read().splitlines()
    book_lines[0] = json.dumps({**json.loads(book_lines[0]), "title": ["Book", "1"]})
    with gzip.open(books, "wt") as f:
        f.write("\n".join(book_lines) + "\n")
    raw = read_raw("goodreads", tmp_path, max_bad_fraction=0.5)
    assert raw.report.rejected[path.name] == {
        "JSON nested too deeply": 1,
        "JSON number too long to read": 1,
        f"date_updated {far_date!r} is outside the dates read (years 1677 to 2262)": 1,
        "user_id is a JSON dict, not a string": 1,
        "book_id is a JSON int, not a string": 1,
        "user_id is a JSON list, not a string": 1,
        "rating True is not on the 1..5 scale": 1,
        "rating '5' is not on the 1..5 scale": 1,
    }
    assert raw.report.rejected[books.name] == {"title is a JSON list, not a string": 1}
    assert len(raw.interactions) == len(lines) - 8
    assert not {"{'id': 'u0001'}", "['u0001']"} & set(raw.user_ids + raw.item_ids)


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_a_damaged_gzip_file_is_a_data_format_error_naming_it(tmp_path, damage):
    world = make_world(num_users=10, num_items=20, seed=10)
    write_goodreads(world, tmp_path)
    path = tmp_path / "goodreads_interactions_poetry.json.gz"
    data = bytearray(path.read_bytes())
    if damage == "truncated":  # an interrupted download
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match=r"goodreads_interactions_poetry\.json\.gz: the gzip file is damaged"):
        read_raw("goodreads", tmp_path, max_bad_fraction=0.5)


def test_a_byte_order_mark_costs_no_row(tmp_path):
    world = make_world(num_users=10, num_items=20, seed=11)
    write_ml1m(world, tmp_path)
    for name in ("users.dat", "ratings.dat", "movies.dat"):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + (tmp_path / name).read_bytes())
    dataset = load_dataset("ml-1m", tmp_path, **RAW)
    assert dataset.stats["rows_rejected_total"] == 0
    _samples_match_world(dataset, world)
    assert "1" in set(dataset.users["user_id"]) and "1" in set(dataset.items["item_id"])
    write_goodreads(world, tmp_path / "goodreads")
    authors = tmp_path / "goodreads" / "goodreads_book_authors.json"
    authors.write_bytes(b"\xef\xbb\xbf" + authors.read_bytes())
    assert read_raw("goodreads", tmp_path / "goodreads").report.rejected == {}


def test_a_csv_row_the_csv_reader_cannot_read_is_one_rejected_row(tmp_path):
    world = make_world(num_users=10, num_items=20, seed=12)
    write_ml25m(world, tmp_path)
    rows = (tmp_path / "ratings.csv").read_text().splitlines()
    rows[3] = "1,2," + "4" * 200_000 + ",880000000"  # a field over csv's size limit (and a 200,000-digit rating)
    (tmp_path / "ratings.csv").write_text("\n".join(rows) + "\n")
    raw = read_raw("ml-25m", tmp_path, max_bad_fraction=0.5)
    assert raw.report.rejected["ratings.csv"] == {"not a CSV row (field larger than field limit (131072))": 1}
    assert raw.report.first_bad["ratings.csv"].line == 4
    assert len(raw.interactions) == len(rows) - 2
