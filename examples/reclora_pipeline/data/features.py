"""ID-modality features for the conventional recommender (CRM): the contract between the data stage and the CRMs.

One ``CTRFeatures`` holds one split, aligned by ``sample_id`` (the key every stage joins on, never the row position).
All categorical values live in one shared vocabulary with per-field offsets, so a CRM needs a single embedding table;
index 0 is reserved for padding everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CTRFeatures:
    """Arrays of one split, all with ``len(sample_id)`` rows.

    Attributes:
        sample_id: (n,) int64, the sample keys (unique, shared with the text records and the retrieval results).
        fields: (n, F) int64, the categorical features (user id, item id, profile and item attributes), already
            offset into the shared vocabulary.
        field_names: the F field names, in column order.
        item_field: column of ``fields`` that holds the target item (its value is the target's item token).
        hist_items: (n, K) int64, history item tokens in the same vocabulary as the target item (0 = padding).
        hist_ratings: (n, K) int64, rating tokens (0 = padding), offset into the shared vocabulary as well.
        hist_mask: (n, K) bool, True where a history slot is filled.
        labels: (n,) float32 in {0, 1}.
        vocab_size: size of the shared vocabulary (max token + 1).
    """

    sample_id: np.ndarray
    fields: np.ndarray
    field_names: list[str]
    item_field: int
    hist_items: np.ndarray
    hist_ratings: np.ndarray
    hist_mask: np.ndarray
    labels: np.ndarray
    vocab_size: int
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.sample_id)
        for name in ("fields", "hist_items", "hist_ratings", "hist_mask", "labels"):
            array = getattr(self, name)
            if len(array) != n:
                raise ValueError(f"CTRFeatures.{name} has {len(array)} rows, expected {n} (one per sample_id)")
        if self.fields.shape[1] != len(self.field_names):
            raise ValueError(f"fields has {self.fields.shape[1]} columns but {len(self.field_names)} field_names")
        if not 0 <= self.item_field < len(self.field_names):
            raise ValueError(f"item_field={self.item_field} is not a column of fields")

    def __len__(self) -> int:
        return len(self.sample_id)

    @property
    def history_length(self) -> int:
        return self.hist_items.shape[1]

    def subset(self, rows: np.ndarray) -> "CTRFeatures":
        return CTRFeatures(
            sample_id=self.sample_id[rows],
            fields=self.fields[rows],
            field_names=list(self.field_names),
            item_field=self.item_field,
            hist_items=self.hist_items[rows],
            hist_ratings=self.hist_ratings[rows],
            hist_mask=self.hist_mask[rows],
            labels=self.labels[rows],
            vocab_size=self.vocab_size,
            metadata=dict(self.metadata),
        )

    def rows_for(self, sample_ids: np.ndarray) -> np.ndarray:
        """Row positions of the given sample keys; raises KeyError naming the first missing key."""
        order = np.argsort(self.sample_id, kind="stable")
        sorted_ids = self.sample_id[order]
        pos = np.searchsorted(sorted_ids, sample_ids)
        pos = np.clip(pos, 0, len(sorted_ids) - 1)
        found = sorted_ids[pos] == sample_ids
        if not np.all(found):
            missing = np.asarray(sample_ids)[~found][0]
            raise KeyError(f"sample_id {missing} is not in these CTR features")
        return order[pos]
