"""``SampleView``: what the CRM features and the prompts of a batch of samples are built from, whatever the samples
are: samples of a processed dataset (training and evaluation) or requests (serving).

Both paths end in the same arrays (the user and item tables, each sample's user and target item, its long and short
histories as item rows with ratings), so ``ctr_features`` and ``text_records`` are one code for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import numpy as np
import pandas as pd


if TYPE_CHECKING:
    from ..data.dataset import RecDataset
    from ..data.raw import DatasetSpec


@dataclass
class SampleView:
    """A batch of samples, by table rows.

    Attributes:
        spec: the dataset schema (fields, pure ID fields, profile and item text fields).
        users, items: the attribute tables; ``user[i]`` / ``item[i]`` are row positions in them.
        sample_id: (n,) the samples' keys.
        long_items, long_ratings: (n, K_long) the CRM's history, item rows oldest first (-1 padding) and ratings.
        short_items, short_ratings: (n, K_short) the prompt's history, the same way.
        label: (n,) 0/1, or None when unknown (serving).
        padded_user_fields: (len(users), number of user fields) True where the CRM reads the padding token instead
            of a user's value (a user outside the catalog has no id embedding); None: nothing is padded.
        metadata: where the view came from (dataset, split, history modes), copied into the CRM features.
    """

    spec: "DatasetSpec"
    users: pd.DataFrame
    items: pd.DataFrame
    sample_id: np.ndarray
    user: np.ndarray
    item: np.ndarray
    long_items: np.ndarray
    long_ratings: np.ndarray
    short_items: np.ndarray
    short_ratings: np.ndarray
    label: Optional[np.ndarray] = None
    padded_user_fields: Optional[np.ndarray] = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.sample_id)
        for name in ("user", "item", "long_items", "long_ratings", "short_items", "short_ratings"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"SampleView.{name} has {len(getattr(self, name))} rows for {n} samples")
        if self.label is not None and len(self.label) != n:
            raise ValueError(f"SampleView.label has {len(self.label)} rows for {n} samples")

    def __len__(self) -> int:
        return len(self.sample_id)

    def item_ids(self, rows: np.ndarray) -> list:
        """Catalog ids of item rows (padding skipped)."""
        rows = np.asarray(rows)
        return self.items["item_id"].to_numpy(dtype=object)[rows[rows >= 0]].tolist()

    def long_item_ids(self, position: int) -> list:
        return self.item_ids(self.long_items[position])

    def short_item_ids(self, position: int) -> list:
        return self.item_ids(self.short_items[position])

    @classmethod
    def from_dataset(cls, dataset: "RecDataset", sample_ids, *, long=None, short=None, k_long: Optional[int] = None,
                     k_short: Optional[int] = None, short_rows: Optional[np.ndarray] = None,
                     split: Optional[str] = None) -> "SampleView":
        """Samples of a processed dataset. ``long`` / ``short``: retrieval results whose long / short lists are the
        histories; without one, the ``k_long`` / ``k_short`` most recent earlier interactions (then required: the
        run config's ``retrieval`` section owns their values). ``short_rows`` gives the prompt's history as
        interaction rows instead."""
        ids = np.atleast_1d(np.asarray(sample_ids, dtype=np.int64))
        rows = dataset.rows_for(ids)
        long_rows = long.long_rows(ids, dataset) if long is not None else _recent_rows(dataset, ids, k_long, "k_long")
        if short_rows is None:
            short_rows = (short.short_rows(ids, dataset) if short is not None
                          else _recent_rows(dataset, ids, k_short, "k_short"))
        long_items, long_ratings = _items_and_ratings(dataset, long_rows)
        short_items, short_ratings = _items_and_ratings(dataset, short_rows)
        metadata = {"dataset": dataset.name, "split": split or "all", "dataset_fingerprint": dataset.fingerprint,
                    "history": long.mode if long is not None else "recent", "k_long": int(long_rows.shape[1])}
        return cls(spec=dataset.spec, users=dataset.users, items=dataset.items, sample_id=ids,
                   user=dataset.user_index[rows].astype(np.int64), item=dataset.item_index[rows].astype(np.int64),
                   long_items=long_items, long_ratings=long_ratings, short_items=short_items,
                   short_ratings=short_ratings, label=dataset.label[rows], metadata=metadata)


def _recent_rows(dataset: "RecDataset", ids: np.ndarray, k: Optional[int], name: str) -> np.ndarray:
    """Each sample's ``k`` most recent earlier interactions; ``name`` is the parameter that gave ``k``."""
    if k is None:
        raise ValueError(f"{name} is required without a retrieval result: how many recent interactions to take")
    return dataset.recent_history_rows(ids, k)


def _items_and_ratings(dataset: "RecDataset", rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.asarray(rows, dtype=np.int64)
    filled = rows >= 0
    safe = np.where(filled, rows, 0)
    items = np.where(filled, dataset.item_index[safe], -1).astype(np.int64)
    ratings = np.where(filled, dataset.rating[safe], 0.0).astype(np.float32)
    return items, ratings
