"""ID features for the CRM: one shared vocabulary with per-field offsets, and ``build_ctr_features``.

Every categorical value of the user and item fields (user id, profile attributes, item id, item attributes) gets a
token; the fields are laid out one after the other, starting at 1 (token 0 is padding), and the rating tokens come
last. The vocabulary is built from the whole processed dataset, so all splits share it. History items use the item id
field's tokens, so a behaviour and a target item share one embedding (the published code mixed raw and encoded ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .dataset import RecDataset
from .features import CTRFeatures
from .processing import natural_order

DEFAULT_K_LONG = 60


@dataclass
class FieldVocabulary:
    """Token layout: field ``f`` value ``values[f][j]`` is token ``offsets[f] + j``; rating ``r`` is
    ``rating_offset + rating_values.index(r)``."""

    field_names: list
    values: dict
    offsets: dict
    rating_values: list
    rating_offset: int

    @property
    def vocab_size(self) -> int:
        return self.rating_offset + len(self.rating_values)

    @classmethod
    def from_dataset(cls, dataset: RecDataset) -> "FieldVocabulary":
        spec = dataset.spec
        names, values, offsets = [], {}, {}
        cursor = 1
        for table, fields in ((dataset.users, spec.user_fields), (dataset.items, spec.item_fields)):
            for name in fields:
                if name not in table.columns:
                    raise ValueError(f"{dataset.name}: field {name!r} is missing from the {'users' if table is dataset.users else 'items'} table")
                unique = list(dict.fromkeys(table[name].tolist()))
                unique = [unique[i] for i in natural_order(unique)]
                names.append(name)
                values[name] = unique
                offsets[name] = cursor
                cursor += len(unique)
        ratings = sorted(float(r) for r in np.unique(dataset.rating))
        return cls(field_names=names, values=values, offsets=offsets, rating_values=ratings, rating_offset=cursor)

    def encode(self, name: str, column) -> np.ndarray:
        lookup = {value: self.offsets[name] + j for j, value in enumerate(self.values[name])}
        try:
            return np.fromiter((lookup[value] for value in column), dtype=np.int64, count=len(column))
        except KeyError as error:
            raise KeyError(f"value {error.args[0]!r} of field {name!r} is not in the vocabulary") from None

    def encode_ratings(self, ratings: np.ndarray) -> np.ndarray:
        values = np.asarray(self.rating_values, dtype=np.float32)
        positions = np.searchsorted(values, ratings)
        positions = np.clip(positions, 0, len(values) - 1)
        if not np.array_equal(values[positions], np.asarray(ratings, dtype=np.float32)):
            raise KeyError("a rating is not in the vocabulary's rating values")
        return self.rating_offset + positions.astype(np.int64)

    def to_dict(self) -> dict:
        return {
            "field_names": self.field_names,
            "field_offsets": self.offsets,
            "field_sizes": {name: len(self.values[name]) for name in self.field_names},
            "rating_values": self.rating_values,
            "rating_offset": self.rating_offset,
            "vocab_size": self.vocab_size,
        }

    def to_json(self) -> dict:
        """Every value of every field, the offsets and the rating values: what rebuilds this exact token layout
        without the dataset (``to_dict`` keeps only the sizes)."""
        return {
            "field_names": list(self.field_names),
            "values": {name: list(self.values[name]) for name in self.field_names},
            "field_offsets": {name: int(self.offsets[name]) for name in self.field_names},
            "rating_values": [float(value) for value in self.rating_values],
            "rating_offset": int(self.rating_offset),
            "vocab_size": int(self.vocab_size),
        }

    @classmethod
    def from_json(cls, data: dict) -> "FieldVocabulary":
        """The inverse of ``to_json``; a layout whose offsets, sizes or rating values do not add up raises a
        ``ValueError`` that names the vocabulary part."""
        for key in ("field_names", "values", "field_offsets", "rating_values", "rating_offset"):
            if key not in data:
                raise ValueError(f"vocabulary: '{key}' is missing")
        names = list(data["field_names"])
        values, offsets = {}, {}
        cursor = 1
        for name in names:
            if name not in data["values"] or name not in data["field_offsets"]:
                raise ValueError(f"vocabulary: field {name!r} has no values or no offset")
            values[name] = list(data["values"][name])
            offsets[name] = int(data["field_offsets"][name])
            if offsets[name] != cursor:
                raise ValueError(f"vocabulary: field {name!r} starts at token {offsets[name]}, but the fields before "
                                 f"it end at token {cursor}")
            if len(set(values[name])) != len(values[name]):
                raise ValueError(f"vocabulary: field {name!r} lists a value twice")
            cursor += len(values[name])
        if int(data["rating_offset"]) != cursor:
            raise ValueError(f"vocabulary: rating tokens start at {data['rating_offset']}, but the fields end at "
                             f"{cursor}")
        ratings = [float(value) for value in data["rating_values"]]
        if not ratings or ratings != sorted(set(ratings)):
            raise ValueError(f"vocabulary: rating_values must be distinct and ascending, got {ratings}")
        vocabulary = cls(field_names=names, values=values, offsets=offsets, rating_values=ratings, rating_offset=cursor)
        if "vocab_size" in data and int(data["vocab_size"]) != vocabulary.vocab_size:
            raise ValueError(f"vocabulary: vocab_size says {data['vocab_size']}, but the values give "
                             f"{vocabulary.vocab_size}")
        return vocabulary


def build_ctr_features(
    dataset: RecDataset,
    retrieval=None,
    split: Optional[str] = None,
    *,
    history_length: int = DEFAULT_K_LONG,
    vocabulary: Optional[FieldVocabulary] = None,
) -> CTRFeatures:
    """The CRM inputs of one split (``"train"``, ``"valid"``, ``"test"``, or ``None`` for all samples).

    Args:
        retrieval: a ``RetrievalResult``: its long lists (chronological) become ``hist_items``; ``None`` takes the
            ``history_length`` most recent earlier interactions instead.
        history_length: K of ``hist_items`` when ``retrieval`` is ``None`` (a retrieval brings its own K_long).
    """
    vocabulary = vocabulary or FieldVocabulary.from_dataset(dataset)
    spec = dataset.spec
    sample_ids = dataset.sample_ids(split)
    rows = dataset.rows_for(sample_ids)

    user_tokens = np.stack([vocabulary.encode(name, dataset.users[name].tolist()) for name in spec.user_fields], axis=1)
    item_tokens = np.stack([vocabulary.encode(name, dataset.items[name].tolist()) for name in spec.item_fields], axis=1)
    fields = np.concatenate([user_tokens[dataset.user_index[rows]], item_tokens[dataset.item_index[rows]]], axis=1)

    if retrieval is not None:
        history_rows = retrieval.long_rows(sample_ids, dataset=dataset)
        source = {"history": retrieval.mode, "k_long": int(retrieval.k_long)}
    else:
        history_rows = dataset.recent_history_rows(sample_ids, history_length)
        source = {"history": "recent", "k_long": int(history_length)}
    mask = history_rows >= 0
    safe = np.where(mask, history_rows, 0)
    item_id_tokens = item_tokens[:, 0]
    hist_items = np.where(mask, item_id_tokens[dataset.item_index[safe]], 0).astype(np.int64)
    rating_tokens = vocabulary.encode_ratings(dataset.rating[safe].ravel()).reshape(safe.shape)
    hist_ratings = np.where(mask, rating_tokens, 0).astype(np.int64)

    return CTRFeatures(
        sample_id=sample_ids,
        fields=fields.astype(np.int64),
        field_names=list(vocabulary.field_names),
        item_field=len(spec.user_fields),
        hist_items=hist_items,
        hist_ratings=hist_ratings,
        hist_mask=mask,
        labels=dataset.label[rows].astype(np.float32),
        vocab_size=vocabulary.vocab_size,
        metadata={"dataset": dataset.name, "split": split or "all", "dataset_fingerprint": dataset.fingerprint,
                  **source, "vocabulary": vocabulary.to_dict()},
    )
