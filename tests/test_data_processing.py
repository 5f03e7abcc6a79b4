"""Appendix A processing (k-core, labels, global-time split, histories), the sample-keyed views and save/load."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reclora_pipeline.crm.inputs import CrmSchema, check_features
from reclora_pipeline.data import ReadReport, RecDataset, load_dataset
from reclora_pipeline.data.movielens import ML_1M, ML_25M
from reclora_pipeline.data.processing import k_core, process
from reclora_pipeline.data.raw import RawData
from reclora_pipeline.views import FieldVocabulary, build_ctr_features, build_prompt

from support.synthetic_data import make_world, write_ml1m
from support.text_views import text_record_of, text_records_of


def raw_from(users, items, ratings, timestamps, spec=ML_25M) -> RawData:
    """RawData straight from arrays (ids are the ints as strings)."""
    users, items = np.asarray(users), np.asarray(items)
    user_ids = [str(u) for u in range(users.max() + 1)]
    item_ids = [str(i) for i in range(items.max() + 1)]
    frame = pd.DataFrame({"user": users, "item": items, "rating": np.asarray(ratings, dtype=float),
                          "timestamp": np.asarray(timestamps, dtype=np.int64), "line": np.arange(1, len(users) + 1)})
    item_table = pd.DataFrame({"item_id": item_ids, "title": [f"Item {i}" for i in item_ids], "year": "",
                               "genres": "Drama", "genre": "Drama"})
    return RawData(spec, "arrays", frame, user_ids, item_ids, pd.DataFrame({"user_id": user_ids}), item_table,
                   Path("ratings.csv"), ReadReport(), files={})


def random_raw(seed=0, n_users=40, n_items=60, n=1500, time_span=200):
    rng = np.random.default_rng(seed)
    pairs = rng.choice(n_users * n_items, size=n, replace=False)
    return raw_from(pairs // n_items, pairs % n_items, rng.integers(1, 11, n) / 2, rng.integers(0, time_span, n))


@pytest.fixture(scope="module")
def ml1m_dataset(tmp_path_factory):
    folder = write_ml1m(make_world(num_users=40, num_items=60, seed=11), tmp_path_factory.mktemp("ml1m"))
    return load_dataset("ml-1m", folder, core=5, min_history=3)


def brute_force_core(users, items, k):
    keep = set(range(len(users)))
    while True:
        user_count, item_count = {}, {}
        for i in keep:
            user_count[users[i]] = user_count.get(users[i], 0) + 1
            item_count[items[i]] = item_count.get(items[i], 0) + 1
        still = {i for i in keep if user_count[users[i]] >= k and item_count[items[i]] >= k}
        if still == keep:
            return keep
        keep = still


def test_k_core_reaches_the_fixed_point():
    # A chain: item 8 has 2 ratings and goes, so user 3 is left with 4 and goes, so item 5 is left with 4 and goes...
    users = np.array([0, 1, 2, 3, 4, 0, 1, 2, 4, 5, 6, 7, 5, 6, 7, 5, 6, 7, 5, 6, 7, 3, 3, 3, 3, 3])
    items = np.array([5, 5, 5, 5, 5, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 9, 9, 9, 9, 8, 8])
    rng = np.random.default_rng(0)
    for _ in range(5):
        u = rng.integers(0, 30, 400)
        i = rng.integers(0, 25, 400)
        keep, passes = k_core(u, i, 5)
        assert set(np.flatnonzero(keep)) == brute_force_core(u, i, 5)
        kept_users, kept_items = u[keep], i[keep]
        assert (np.bincount(kept_users)[np.unique(kept_users)] >= 5).all()
        assert (np.bincount(kept_items)[np.unique(kept_items)] >= 5).all()
    keep, passes = k_core(users, items, 5)
    assert set(np.flatnonzero(keep)) == brute_force_core(users, items, 5)
    assert passes >= 3


def test_split_is_by_global_time_and_never_cuts_a_second():
    # Many samples share timestamps, so naive 80/90 % cut points would fall inside a group of equal times.
    dataset = process(random_raw(seed=1, time_span=25), core=0, min_history=0)
    samples = dataset.samples
    times = {name: samples.loc[samples["split"] == name, "timestamp"] for name in ("train", "valid", "test")}
    assert times["train"].max() < times["valid"].min()
    assert times["valid"].max() < times["test"].min()
    counts = samples["split"].value_counts()
    assert abs(counts["train"] / len(samples) - 0.8) < 0.06
    assert (np.diff(samples["timestamp"].to_numpy()) >= 0).all()  # sample ids follow global time
    assert dataset.stats["samples"]["train"] == counts["train"]


def test_histories_hold_only_strictly_earlier_interactions():
    raw = random_raw(seed=2, time_span=60)
    dataset = process(raw, core=0, min_history=2)
    table = raw.interactions
    by_user = {u: table[table["user"] == u] for u in table["user"].unique()}
    ids = dataset.sample_ids()
    histories = dataset.history(ids)
    assert len(histories) == len(ids)
    for sample_id, item_ids, ratings, timestamps in histories:
        sample = dataset.samples.iloc[sample_id]
        own = by_user[int(sample["user_id"])]
        earlier = own[own["timestamp"] < sample["timestamp"]].sort_values(["timestamp", "line"])
        assert list(item_ids) == [str(i) for i in earlier["item"]]
        assert np.array_equal(ratings, earlier["rating"].to_numpy(dtype=np.float32))
        assert (np.asarray(timestamps) < sample["timestamp"]).all()
        assert len(item_ids) >= 2
    # max_len keeps the most recent ones.
    short = dataset.history(ids[-5:], max_len=3)
    full = dataset.history(ids[-5:])
    for (_, a, _, _), (_, b, _, _) in zip(short, full):
        assert list(a) == list(b[-3:])
    # min_history: interactions with fewer earlier ones are history only, and are counted.
    assert dataset.stats["history_only_interactions"] == len(dataset.interactions) - len(dataset)
    assert dataset.stats["history_length"]["min"] >= 2


def test_samples_are_keyed_and_labelled():
    dataset = process(random_raw(seed=3), core=0, min_history=0)
    samples = dataset.samples
    assert samples["sample_id"].is_unique and samples["sample_id"].dtype == np.int64
    assert samples["user_id"].dtype == "category" and isinstance(samples["user_id"].iloc[0], str)
    assert np.array_equal(samples["label"], (samples["rating"] > 3.0).astype(np.int8))
    with pytest.raises(KeyError, match=f"sample_id {len(dataset)} is not in dataset"):
        dataset.rows_for([0, len(dataset)])
    raw = random_raw(seed=3)
    raw.spec = ML_25M.with_label_rule(4.5, True)
    custom = process(raw, core=0, min_history=0)
    assert np.array_equal(custom.samples["label"], (custom.samples["rating"] >= 4.5).astype(np.int8))


def test_save_and_load_round_trip(tmp_path, ml1m_dataset):
    ml1m_dataset.save(tmp_path)
    assert {"interactions.npz", "users.csv", "items.csv", "dataset.json", "stats.json", "train.csv", "valid.csv",
            "test.csv"} <= {p.name for p in tmp_path.iterdir()}
    loaded = RecDataset.load(tmp_path)
    pd.testing.assert_frame_equal(loaded.samples, ml1m_dataset.samples)
    pd.testing.assert_frame_equal(loaded.users, ml1m_dataset.users)
    assert loaded.fingerprint == ml1m_dataset.fingerprint
    assert text_record_of(loaded, 7) == text_record_of(ml1m_dataset, 7)
    train = pd.read_csv(tmp_path / "train.csv", dtype={"user_id": str, "item_id": str})
    assert len(train) == len(ml1m_dataset.sample_ids("train"))
    # A changed file is caught.
    (tmp_path / "items.csv").write_text((tmp_path / "items.csv").read_text().replace("\n1,", "\n1000,", 1))
    with pytest.raises(ValueError, match="do not match the fingerprint"):
        RecDataset.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no dataset.json"):
        RecDataset.load(tmp_path / "missing")


def test_ctr_features(ml1m_dataset):
    dataset = ml1m_dataset
    vocabulary = FieldVocabulary.from_dataset(dataset)
    features = build_ctr_features(dataset, None, "train", history_length=8)
    check_features(features, CrmSchema.from_features(features), split="train")
    assert features.field_names == ["user_id", "gender", "age", "occupation", "zip_code", "item_id", "title", "genre"]
    assert features.item_field == 5
    assert np.array_equal(features.sample_id, dataset.sample_ids("train"))
    # Decode every field back to the tables, row by sample id (never by position).
    decode = {name: {vocabulary.offsets[name] + j: v for j, v in enumerate(vocabulary.values[name])}
              for name in vocabulary.field_names}
    samples = dataset.samples.set_index("sample_id")
    users, items = dataset.users.set_index("user_id"), dataset.items.set_index("item_id")
    for row in [0, 17, len(features) - 1]:
        sample = samples.loc[features.sample_id[row]]
        values = [decode[name][token] for name, token in zip(features.field_names, features.fields[row])]
        assert values[0] == sample["user_id"] and values[5] == sample["item_id"]
        assert values[1:5] == users.loc[sample["user_id"], ["gender", "age", "occupation", "zip_code"]].tolist()
        assert values[6:] == items.loc[sample["item_id"], ["title", "genre"]].tolist()
        assert features.labels[row] == sample["label"]
        # The history uses the item id field's tokens and the most recent 8 earlier interactions, oldest first.
        history = dataset.history([features.sample_id[row]], max_len=8)
        filled = features.hist_mask[row]
        assert [decode["item_id"][t] for t in features.hist_items[row][filled]] == list(history.item_id)
        ratings = [vocabulary.rating_values[t - vocabulary.rating_offset] for t in features.hist_ratings[row][filled]]
        assert ratings == list(history.rating)
    assert features.vocab_size == vocabulary.vocab_size == vocabulary.rating_offset + 5
    # Splits share the vocabulary.
    test = build_ctr_features(dataset, None, "test", history_length=8)
    assert test.vocab_size == features.vocab_size and set(test.sample_id).isdisjoint(features.sample_id)


def test_text_records_leave_pure_ids_out(ml1m_dataset):
    dataset = ml1m_dataset
    sample_id = int(dataset.sample_ids("test")[0])
    record = text_record_of(dataset, sample_id, k_short=4)
    sample = dataset.samples.iloc[sample_id]
    user = dataset.users.set_index("user_id").loc[sample["user_id"]]
    assert set(record.profile) == {"gender", "age", "occupation"}
    assert record.profile["gender"] == {"M": "male", "F": "female"}[user["gender"]]
    assert user["zip_code"] not in repr(record)
    history = dataset.history([sample_id], max_len=4)
    titles = dataset.items.set_index("item_id")["title"]
    assert record.history == [(titles[i], int(r)) for i, r in zip(history.item_id, history.rating)]
    assert record.target_title == titles[sample["item_id"]] and record.label == sample["label"]
    prompt = build_prompt(ML_1M, record)  # the prompt is written from the TextRecord and the dataset's schema
    assert record.target_title in prompt and user["zip_code"] not in prompt
    # An explicit short history: any order in, oldest first out; an item the user had not rated before fails.
    chosen = list(dataset.history([sample_id]).item_id[:3])
    assert [t for t, _ in text_record_of(dataset, sample_id, history_item_ids=chosen[::-1]).history] == \
        [titles[i] for i in chosen]
    with pytest.raises(KeyError, match="not among the earlier interactions"):
        text_record_of(dataset, sample_id, history_item_ids=[sample["item_id"]])
    records = text_records_of(dataset, dataset.sample_ids("valid")[:3], k_short=2)
    assert [r.sample_id for r in records] == list(dataset.sample_ids("valid")[:3])
