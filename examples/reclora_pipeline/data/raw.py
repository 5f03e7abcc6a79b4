"""What a reader hands to processing: the interactions, the user and item tables, the dataset's schema and the report.

Readers only parse and validate; filtering, labels, the split and histories are the same code for every dataset
(``processing.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from .validation import ReadReport


@dataclass(frozen=True)
class DatasetSpec:
    """The schema of one dataset.

    Attributes:
        name: dataset name ("ml-100k", "ml-1m", "ml-25m", "goodreads").
        item_noun: "movie" or "book" (used in item descriptions).
        user_fields: categorical columns of the users table fed to the CRM, ``user_id`` first.
        item_fields: categorical columns of the items table fed to the CRM, ``item_id`` first.
        profile_fields: user columns shown in prompts (never a pure ID field).
        item_text_fields: item columns used in item descriptions besides the title.
        id_fields: pure ID fields (Appendix C of the paper): kept for the CRM, never put into text.
        label_threshold, label_inclusive: a sample is positive when ``rating >= threshold`` (inclusive) or
            ``rating > threshold``.
        rating_min, rating_max, rating_step: the valid rating scale; other ratings are rejected.
    """

    name: str
    item_noun: str
    user_fields: tuple
    item_fields: tuple
    profile_fields: tuple
    item_text_fields: tuple
    id_fields: tuple
    label_threshold: float
    label_inclusive: bool
    rating_min: float
    rating_max: float
    rating_step: float

    def __post_init__(self):
        for name in ("user_fields", "item_fields", "profile_fields", "item_text_fields", "id_fields"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.user_fields[:1] != ("user_id",) or self.item_fields[:1] != ("item_id",):
            raise ValueError("user_fields must start with 'user_id' and item_fields with 'item_id'")
        leaked = set(self.profile_fields + self.item_text_fields) & set(self.id_fields)
        if leaked:
            raise ValueError(f"pure ID fields {sorted(leaked)} must not be text fields")

    def label(self, ratings: np.ndarray) -> np.ndarray:
        ratings = np.asarray(ratings)
        positive = ratings >= self.label_threshold if self.label_inclusive else ratings > self.label_threshold
        return positive.astype(np.int8)

    @property
    def label_rule(self) -> str:
        return f"rating {'>=' if self.label_inclusive else '>'} {self.label_threshold:g}"

    def with_label_rule(self, threshold: Optional[float], inclusive: Optional[bool]) -> "DatasetSpec":
        values = asdict(self)
        if threshold is not None:
            values["label_threshold"] = float(threshold)
        if inclusive is not None:
            values["label_inclusive"] = bool(inclusive)
        return DatasetSpec(**values)

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "DatasetSpec":
        return cls(**data)


@dataclass
class RawData:
    """One dataset as read, before filtering.

    Attributes:
        interactions: one row per rating with integer columns ``user`` and ``item`` (codes into ``user_ids`` and
            ``item_ids``), ``rating`` (float64), ``timestamp`` (int64 unix seconds) and ``line`` (its line in
            ``interactions_file``, for error messages).
        user_ids, item_ids: raw id strings of the codes.
        users, items: attribute tables with a ``user_id`` / ``item_id`` string column; every column is a string
            ("" where a value is unknown). A dataset without a user file has a users table with ``user_id`` only.
    """

    spec: DatasetSpec
    source: str
    interactions: pd.DataFrame
    user_ids: list
    item_ids: list
    users: pd.DataFrame
    items: pd.DataFrame
    interactions_file: Path
    report: ReadReport
    files: dict = field(default_factory=dict)


def rating_is_valid(ratings: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """True where a rating lies on the dataset's scale (range and step)."""
    ratings = np.asarray(ratings, dtype=np.float64)
    steps = (ratings - spec.rating_min) / spec.rating_step
    on_grid = np.abs(steps - np.round(steps)) < 1e-6
    return np.isfinite(ratings) & (ratings >= spec.rating_min) & (ratings <= spec.rating_max) & on_grid
