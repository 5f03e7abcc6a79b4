"""The CRM's view of a sample: ID features in one shared vocabulary with per-field offsets.

Every categorical value of the user and item fields (user id, profile attributes, item id, item attributes) gets a
token; the fields are laid out one after the other, starting at 1 (token 0 is padding), and the rating tokens come
last. The vocabulary is built from the whole processed dataset, so all splits share it, and a published recommender
stores it. History items use the item id field's tokens, so a behaviour and a target item share one embedding (the
published code mixed raw and encoded ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..data.features import CTRFeatures
from ..data.processing import natural_order
from .samples import SampleView


if TYPE_CHECKING:
    from ..data.dataset import RecDataset


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
    def from_dataset(cls, dataset: "RecDataset") -> "FieldVocabulary":
        spec = dataset.spec
        names, values, offsets = [], {}, {}
        cursor = 1
        for table, fields in ((dataset.users, spec.user_fields), (dataset.items, spec.item_fields)):
            for name in fields:
                if name not in table.columns:
                    raise ValueError(f"{dataset.name}: field {name!r} is missing from the "
                                     f"{'users' if table is dataset.users else 'items'} table")
                unique = list(dict.fromkeys(table[name].tolist()))
                unique = [unique[i] for i in natural_order(unique)]
                names.append(name)
                values[name] = unique
                offsets[name] = cursor
                cursor += len(unique)
        ratings = sorted(float(r) for r in np.unique(dataset.rating))
        return cls(field_names=names, values=values, offsets=offsets, rating_values=ratings, rating_offset=cursor)

    def encode(self, name: str, column, padded: Optional[np.ndarray] = None) -> np.ndarray:
        """Tokens of a column's values; where ``padded`` is True the token is 0 (padding) whatever the value."""
        lookup = {value: self.offsets[name] + j for j, value in enumerate(self.values[name])}
        column = list(column)
        skip = np.zeros(len(column), dtype=bool) if padded is None else np.asarray(padded, dtype=bool)
        try:
            return np.fromiter((0 if pad else lookup[value] for value, pad in zip(column, skip)), dtype=np.int64,
                               count=len(column))
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
        vocabulary = cls(field_names=names, values=values, offsets=offsets, rating_values=ratings,
                         rating_offset=cursor)
        if "vocab_size" in data and int(data["vocab_size"]) != vocabulary.vocab_size:
            raise ValueError(f"vocabulary: vocab_size says {data['vocab_size']}, but the values give "
                             f"{vocabulary.vocab_size}")
        return vocabulary


def ctr_features(view: SampleView, vocabulary: FieldVocabulary) -> CTRFeatures:
    """The CRM inputs of the samples of ``view``: fields (user fields, then item fields), the long history as item
    and rating tokens with its mask, and the labels (0 where unknown)."""
    spec = view.spec
    padded = view.padded_user_fields
    user_tokens = np.stack([vocabulary.encode(name, view.users[name], None if padded is None else padded[:, column])
                            for column, name in enumerate(spec.user_fields)], axis=1)
    item_tokens = np.stack([vocabulary.encode(name, view.items[name]) for name in spec.item_fields], axis=1)
    fields = np.concatenate([user_tokens[view.user], item_tokens[view.item]], axis=1)
    mask = view.long_items >= 0
    hist_items = np.where(mask, item_tokens[np.where(mask, view.long_items, 0), 0], 0).astype(np.int64)
    hist_ratings = np.zeros(mask.shape, dtype=np.int64)
    hist_ratings[mask] = vocabulary.encode_ratings(view.long_ratings[mask])
    labels = np.zeros(len(view), dtype=np.float32) if view.label is None else view.label.astype(np.float32)
    return CTRFeatures(
        sample_id=np.asarray(view.sample_id, dtype=np.int64),
        fields=fields.astype(np.int64),
        field_names=list(vocabulary.field_names),
        item_field=len(spec.user_fields),
        hist_items=hist_items,
        hist_ratings=hist_ratings,
        hist_mask=mask,
        labels=labels,
        vocab_size=vocabulary.vocab_size,
        metadata={**view.metadata, "vocabulary": vocabulary.to_dict()},
    )


def build_ctr_features(
    dataset: "RecDataset",
    retrieval=None,
    split: Optional[str] = None,
    *,
    history_length: Optional[int] = None,
    vocabulary: Optional[FieldVocabulary] = None,
) -> CTRFeatures:
    """The CRM inputs of one split of a dataset (``"train"``, ``"valid"``, ``"test"``, or ``None`` for all samples).

    Args:
        retrieval: a ``RetrievalResult``: its long lists (chronological) become ``hist_items``; ``None`` takes the
            ``history_length`` most recent earlier interactions instead.
        history_length: K of ``hist_items``, required when ``retrieval`` is ``None`` (a retrieval brings its own
            K_long).
    """
    if retrieval is None and history_length is None:
        raise ValueError("history_length is required without a retrieval result: how many recent interactions to take")
    view = SampleView.from_dataset(dataset, dataset.sample_ids(split), long=retrieval, k_long=history_length,
                                   k_short=0, split=split)
    return ctr_features(view, vocabulary or FieldVocabulary.from_dataset(dataset))
