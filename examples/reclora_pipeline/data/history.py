"""Users' chronological histories: which interactions count as "earlier" than a sample, and a ragged result type.

Interactions are stored sorted by (user, timestamp, file order). The history of the interaction at row ``p`` is the
block of the same user's rows ``[user_start, history_end[p])``, where ``history_end[p]`` is the first row of the
user's interactions with the same timestamp as ``p``: only *strictly earlier* interactions are history; interactions
in the same second are never in each other's history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


def history_ends(user_index: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """For rows sorted by (user, timestamp): the first row of each row's (user, timestamp) group."""
    n = len(user_index)
    new_group = np.ones(n, dtype=bool)
    if n > 1:
        new_group[1:] = (user_index[1:] != user_index[:-1]) | (timestamp[1:] != timestamp[:-1])
    return np.maximum.accumulate(np.where(new_group, np.arange(n), 0))


def recent_rows(start: np.ndarray, end: np.ndarray, k: int) -> np.ndarray:
    """(n, k) rows of the last ``k`` rows of each ``[start, end)`` block, oldest first, right-padded with -1."""
    start = np.asarray(start, dtype=np.int64)
    end = np.asarray(end, dtype=np.int64)
    first = np.maximum(start, end - k)
    rows = first[:, None] + np.arange(k, dtype=np.int64)[None, :]
    return np.where(rows < end[:, None], rows, -1)


@dataclass
class Histories:
    """Earlier interactions of several samples, as flat arrays cut by ``offsets`` (oldest first within a sample).

    Sample ``sample_id[i]`` owns entries ``offsets[i]:offsets[i + 1]`` of ``item_id``, ``rating``, ``timestamp``
    (``item_index`` indexes the dataset's items table; ``rows`` the dataset's interaction table).
    """

    sample_id: np.ndarray
    offsets: np.ndarray
    rows: np.ndarray
    item_index: np.ndarray
    item_id: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray

    def __len__(self) -> int:
        return len(self.sample_id)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def _slice(self, position: int) -> slice:
        return slice(int(self.offsets[position]), int(self.offsets[position + 1]))

    def of(self, sample_id: int) -> pd.DataFrame:
        """One sample's history as a table (item_id, rating, timestamp), oldest first."""
        matches = np.flatnonzero(self.sample_id == sample_id)
        if len(matches) == 0:
            raise KeyError(f"sample_id {sample_id} is not in these histories")
        part = self._slice(int(matches[0]))
        return pd.DataFrame(
            {"item_id": self.item_id[part], "rating": self.rating[part], "timestamp": self.timestamp[part]}
        )

    def __iter__(self):
        for position, sample in enumerate(self.sample_id):
            part = self._slice(position)
            yield int(sample), self.item_id[part], self.rating[part], self.timestamp[part]
