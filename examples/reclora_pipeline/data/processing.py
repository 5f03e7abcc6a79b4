"""From raw ratings to samples, per the paper's Appendix A, identically for every dataset.

1. References: a rating of a user or item missing from the user/item file is rejected (counted against
   ``max_bad_fraction`` of the ratings file, like a malformed row).
2. A user who rated the same item twice keeps the latest rating (counted under ``rows_filtered``).
3. k-core filtering (k=5 by default), iterated to a fixed point: removing an item can push a user below k and the
   other way round, so the filter repeats until every remaining user and item has at least k ratings.
4. Histories: a user's interactions in time order. The history of an interaction holds the user's interactions
   with a *strictly earlier* timestamp. Interactions in the same second cannot be ordered, so none of them is in
   another's history (MovieLens-1M has many same-second ratings). Among earlier interactions, equal timestamps are
   listed in file order.
5. Samples: every interaction with at least ``min_history`` earlier interactions (default 5, as ReLLa builds
   MovieLens-1M: the paper's 970,009 samples are its 1,000,209 ratings minus 5 per user). The others still serve as
   history of later samples and are counted in the stats. ``sample_id`` is the rank of the sample in global time
   order (timestamp, then user, then the user's order).
6. Labels from the dataset's rating rule (ML-100K/ML-1M/GoodReads: rating >= 4; ML-25M: rating > 3.0).
7. Split 8:1:1 by global timestamp: the first 80 % of samples in time order train, the next 10 % validate, the rest
   test. A cut never separates samples with the same timestamp: it moves forward to the end of that second, so every
   validation timestamp is later than every training one, and every test timestamp later than every validation one.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pandas as pd

from .dataset import RecDataset
from .history import history_ends
from .raw import RawData
from .validation import ReadReport


SPLITS = ("train", "valid", "test")
DEFAULT_CORE = 5
DEFAULT_MIN_HISTORY = 5
DEFAULT_SPLIT_RATIO = (0.8, 0.1, 0.1)


def natural_order(ids: Sequence[str]) -> np.ndarray:
    """Positions that sort ids numerically when they are all digits ("2" before "10"), else as strings."""
    ids = list(ids)
    if ids and all(value.isdigit() for value in ids):
        keys = [(len(value.lstrip("0")), value.lstrip("0"), value) for value in ids]
    else:
        keys = ids
    return np.asarray(sorted(range(len(ids)), key=keys.__getitem__), dtype=np.int64)


def _reject_unknown_references(raw: RawData, frame: pd.DataFrame, report: ReadReport) -> pd.DataFrame:
    keep = np.ones(len(frame), dtype=bool)
    for kind, ids, table, code_column, file_key in (
        ("user", raw.user_ids, raw.users, "user", "users"),
        ("item", raw.item_ids, raw.items, "item", "items"),
    ):
        if file_key not in raw.files:
            continue  # no attribute file for this side (e.g. ML-25M users): nothing to check against
        listed = set(table[f"{kind}_id"].tolist())
        known = np.fromiter((value in listed for value in ids), dtype=bool, count=len(ids))
        bad = ~known[frame[code_column].to_numpy()]
        if bad.any():
            rows = np.flatnonzero(bad)
            first = rows[np.argmin(frame["line"].to_numpy()[rows])]
            text = (f"user {raw.user_ids[frame['user'].iat[first]]}, item {raw.item_ids[frame['item'].iat[first]]}, "
                    f"rating {frame['rating'].iat[first]:g}, timestamp {frame['timestamp'].iat[first]}")
            report.reject(raw.interactions_file, int(frame["line"].iat[first]),
                          f"{kind} id not in the {kind} file", text, count=len(rows))
            keep &= ~bad
    report.check(raw.interactions_file)
    return frame[keep]


def _drop_repeated_ratings(frame: pd.DataFrame, report: ReadReport) -> pd.DataFrame:
    order = np.lexsort((frame["line"].to_numpy(), frame["timestamp"].to_numpy(), frame["item"].to_numpy(),
                        frame["user"].to_numpy()))
    frame = frame.iloc[order]
    later_same_pair = (frame["user"].to_numpy()[1:] == frame["user"].to_numpy()[:-1]) & (
        frame["item"].to_numpy()[1:] == frame["item"].to_numpy()[:-1]
    )
    repeated = np.append(later_same_pair, False)  # True for every row that has a later rating of the same pair
    report.filter("repeated rating of an item by a user (the latest kept)", int(repeated.sum()))
    return frame[~repeated]


def k_core(users: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Mask of the interactions in the k-core (every user and item with >= k of them) and the number of passes."""
    keep = np.ones(len(users), dtype=bool)
    if k <= 1:
        return keep, 0
    n_users = int(users.max()) + 1 if len(users) else 0
    n_items = int(items.max()) + 1 if len(items) else 0
    passes = 0
    while True:
        passes += 1
        user_counts = np.bincount(users[keep], minlength=n_users)
        item_counts = np.bincount(items[keep], minlength=n_items)
        still = keep & (user_counts[users] >= k) & (item_counts[items] >= k)
        if still.sum() == keep.sum():
            return keep, passes
        keep = still


def split_cuts(timestamps: np.ndarray, ratio: Sequence[float]) -> tuple[int, int]:
    """Cut points (end of train, end of valid) over time-sorted sample timestamps, moved past equal timestamps."""
    n = len(timestamps)

    def cut(fraction: float) -> int:
        position = int(round(fraction * n))
        position = min(max(position, 0), n)
        if 0 < position < n:
            position = int(np.searchsorted(timestamps, timestamps[position - 1], side="right"))
        return position

    first = cut(ratio[0])
    second = max(first, cut(ratio[0] + ratio[1]))
    return first, second


def process(
    raw: RawData,
    *,
    core: int = DEFAULT_CORE,
    min_history: int = DEFAULT_MIN_HISTORY,
    split_ratio: Sequence[float] = DEFAULT_SPLIT_RATIO,
):
    """Filter, label, order and split a :class:`RawData`; returns a :class:`RecDataset`."""
    started = time.perf_counter()
    if core < 0 or min_history < 0:
        raise ValueError(f"core and min_history must be >= 0, got core={core}, min_history={min_history}")
    ratio = np.asarray(split_ratio, dtype=np.float64)
    if ratio.shape != (3,) or (ratio < 0).any() or ratio.sum() <= 0:
        raise ValueError(f"split_ratio must be three non-negative numbers (train, valid, test), got {split_ratio}")
    ratio = ratio / ratio.sum()
    report = raw.report
    spec = raw.spec

    frame = raw.interactions
    read_count = len(frame)
    frame = _reject_unknown_references(raw, frame, report)
    frame = _drop_repeated_ratings(frame, report)
    before_core = len(frame)
    users_before, items_before = frame["user"].nunique(), frame["item"].nunique()
    keep, passes = k_core(frame["user"].to_numpy(), frame["item"].to_numpy(), core)
    frame = frame[keep]
    core_stats = {
        "k": core,
        "passes": passes,
        "interactions_removed": int(before_core - len(frame)),
        "users_removed": int(users_before - frame["user"].nunique()),
        "items_removed": int(items_before - frame["item"].nunique()),
    }
    if frame.empty:
        raise ValueError(f"no interactions are left after {core}-core filtering of {raw.source}")

    # Dense indices into the users/items tables, which keep only users and items that have interactions.
    user_codes = np.unique(frame["user"].to_numpy())
    item_codes = np.unique(frame["item"].to_numpy())
    user_codes = user_codes[natural_order([raw.user_ids[c] for c in user_codes])]
    item_codes = item_codes[natural_order([raw.item_ids[c] for c in item_codes])]
    user_lookup = np.full(len(raw.user_ids), -1, dtype=np.int64)
    user_lookup[user_codes] = np.arange(len(user_codes))
    item_lookup = np.full(len(raw.item_ids), -1, dtype=np.int64)
    item_lookup[item_codes] = np.arange(len(item_codes))
    users = _ordered_table(raw.users, "user_id", [raw.user_ids[c] for c in user_codes])
    items = _ordered_table(raw.items, "item_id", [raw.item_ids[c] for c in item_codes])
    rated = set(raw.item_ids)
    unused_items = int(sum(item not in rated for item in raw.items["item_id"])) if "items" in raw.files else 0

    user_index = user_lookup[frame["user"].to_numpy()]
    item_index = item_lookup[frame["item"].to_numpy()]
    timestamp = frame["timestamp"].to_numpy(dtype=np.int64)
    order = np.lexsort((frame["line"].to_numpy(), timestamp, user_index))
    user_index, item_index, timestamp = user_index[order], item_index[order], timestamp[order]
    rating = frame["rating"].to_numpy(dtype=np.float32)[order]

    n = len(user_index)
    user_offsets = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_index, minlength=len(users)), out=user_offsets[1:])
    history_end = history_ends(user_index, timestamp)
    history_length = history_end - user_offsets[user_index]
    is_sample = history_length >= min_history
    sample_rows = np.flatnonzero(is_sample)
    sample_order = np.lexsort((sample_rows, user_index[sample_rows], timestamp[sample_rows]))
    sample_rows = sample_rows[sample_order]
    sample_id = np.full(n, -1, dtype=np.int64)
    sample_id[sample_rows] = np.arange(len(sample_rows), dtype=np.int64)

    split = np.full(n, -1, dtype=np.int8)
    first, second = split_cuts(timestamp[sample_rows], ratio)
    for code, (start, stop) in enumerate(((0, first), (first, second), (second, len(sample_rows)))):
        split[sample_rows[start:stop]] = code
    empty = [name for code, name in enumerate(SPLITS) if ratio[code] > 0 and not (split == code).any()]
    if empty:
        raise ValueError(
            f"the {', '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty: {len(sample_rows)} samples "
            f"over {len(np.unique(timestamp[sample_rows]))} distinct timestamps cannot be cut {list(split_ratio)} "
            "without separating equal timestamps"
        )

    options = {"core": core, "min_history": min_history, "split_ratio": [float(r) for r in ratio],
               "max_bad_fraction": report.max_bad_fraction, "label_rule": spec.label_rule}
    dataset = RecDataset(
        spec=spec,
        users=users,
        items=items,
        user_index=user_index.astype(np.int32),
        item_index=item_index.astype(np.int32),
        rating=rating,
        timestamp=timestamp,
        sample_id=sample_id,
        split_code=split,
        options=options,
        source=raw.source,
        stats={},
    )
    dataset.stats = dataset.compute_stats(
        read=report.to_dict(),
        filtering={"ratings_read": int(read_count), "core": core_stats, "items_without_ratings": unused_items},
        processing_seconds=time.perf_counter() - started,
    )
    return dataset


def _ordered_table(table: pd.DataFrame, key: str, ids: list) -> pd.DataFrame:
    """Rows of ``table`` for ``ids`` in that order; ids absent from the table get "unknown" attributes."""
    indexed = table.set_index(key)
    out = indexed.reindex(pd.Index(ids, dtype=object, name=key))
    out = out.fillna("unknown") if len(out.columns) else out
    return out.reset_index().astype(str)
