"""What a CRM sees: the input schema, checks on features and batches, and mini-batches built from ``CTRFeatures``.

A batch is a dict of tensors with the ``CTRFeatures`` names:

    fields (B, F) long, hist_items (B, K) long, hist_ratings (B, K) long, hist_mask (B, K) bool,
    labels (B,) float (training and evaluation only), sample_id (B,) long (bookkeeping only)

Bad input is rejected with an error that names the field and the offending value, because a token outside the
vocabulary would otherwise crash deep inside an embedding lookup (CPU) or corrupt memory silently (some GPU paths).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch

from ..data.features import CTRFeatures


BATCH_KEYS = ("fields", "hist_items", "hist_ratings", "hist_mask")


@dataclass(frozen=True)
class CrmSchema:
    """The shape of the ID inputs a CRM is built for; stored with every checkpoint so a mismatch is caught on load."""

    vocab_size: int
    field_names: tuple[str, ...]
    item_field: int
    history_length: int

    def __post_init__(self):
        object.__setattr__(self, "field_names", tuple(self.field_names))
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2 (token 0 is padding), got {self.vocab_size}")
        if not self.field_names:
            raise ValueError("a CRM needs at least one field")
        if not 0 <= self.item_field < len(self.field_names):
            raise ValueError(f"item_field={self.item_field} is not a column of the {len(self.field_names)} fields")
        if self.history_length < 1:
            raise ValueError(f"history_length must be positive, got {self.history_length}")

    @property
    def num_fields(self) -> int:
        return len(self.field_names)

    @classmethod
    def from_features(cls, features: CTRFeatures) -> "CrmSchema":
        return cls(
            vocab_size=int(features.vocab_size),
            field_names=tuple(features.field_names),
            item_field=int(features.item_field),
            history_length=int(features.history_length),
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["field_names"] = list(self.field_names)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "CrmSchema":
        return cls(**{key: data[key] for key in ("vocab_size", "field_names", "item_field", "history_length")})

    def differences(self, other: "CrmSchema") -> list[str]:
        """Human-readable list of the parts where ``other`` differs from this schema (empty when compatible)."""
        problems = []
        if self.vocab_size != other.vocab_size:
            problems.append(f"vocab_size: {self.vocab_size} vs {other.vocab_size}")
        if self.field_names != other.field_names:
            problems.append(f"field_names: {list(self.field_names)} vs {list(other.field_names)}")
        if self.item_field != other.item_field:
            problems.append(f"item_field: {self.item_field} vs {other.item_field}")
        if self.history_length != other.history_length:
            problems.append(f"history_length: {self.history_length} vs {other.history_length}")
        return problems


SchemaLike = Union[CrmSchema, CTRFeatures]


def as_schema(schema: SchemaLike) -> CrmSchema:
    if isinstance(schema, CrmSchema):
        return schema
    if isinstance(schema, CTRFeatures):
        return CrmSchema.from_features(schema)
    raise TypeError(f"expected a CrmSchema or CTRFeatures, got {type(schema).__name__}")


def check_features(
    features: CTRFeatures, schema: CrmSchema, *, split: str = "features", need_labels: bool = True
) -> None:
    """Check a whole split against a CRM schema once, before any batch is built (numpy, so it is cheap)."""
    problems = schema.differences(CrmSchema.from_features(features))
    if problems:
        raise ValueError(f"{split} do not match the CRM's schema (CRM vs {split}): " + "; ".join(problems))
    if len(features) == 0:
        raise ValueError(f"{split} are empty")
    if len(np.unique(features.sample_id)) != len(features):
        values, counts = np.unique(features.sample_id, return_counts=True)
        raise ValueError(f"{split} repeat sample_id {values[counts > 1][0]}; sample ids must be unique")
    _check_tokens_np(features.fields, schema, split)
    for name in ("hist_items", "hist_ratings"):
        _check_token_array_np(getattr(features, name), name, schema.vocab_size, split, features.sample_id)
    mask = np.asarray(features.hist_mask, dtype=bool)
    for name in ("hist_items", "hist_ratings"):
        array = getattr(features, name)
        padded_but_filled = (array != 0) & ~mask
        if padded_but_filled.any():
            row = int(np.argwhere(padded_but_filled)[0][0])
            raise ValueError(
                f"{split}: sample_id {features.sample_id[row]} has a non-padding {name} token where hist_mask is "
                "False; it would be ignored. Set the token to 0 or the mask to True."
            )
    filled_but_padding = (features.hist_items == 0) & mask
    if filled_but_padding.any():
        row = int(np.argwhere(filled_but_padding)[0][0])
        raise ValueError(
            f"{split}: sample_id {features.sample_id[row]} has hist_mask True on a padding item token (0)"
        )
    if need_labels:
        labels = np.asarray(features.labels)
        bad = ~np.isin(labels, (0.0, 1.0))
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(f"{split}: label {labels[row]} of sample_id {features.sample_id[row]} is not 0 or 1")


def _check_tokens_np(fields: np.ndarray, schema: CrmSchema, split: str) -> None:
    for column, name in enumerate(schema.field_names):
        values = fields[:, column]
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= schema.vocab_size:
            token = low if low < 0 else high
            raise ValueError(
                f"{split}: field '{name}' (column {column}) has token {token} outside the vocabulary "
                f"[0, {schema.vocab_size})"
            )


def _check_token_array_np(array: np.ndarray, name: str, vocab_size: int, split: str, sample_id: np.ndarray) -> None:
    if array.size == 0:
        return
    bad = (array < 0) | (array >= vocab_size)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise ValueError(
            f"{split}: {name} of sample_id {sample_id[row]} has token {array[row, column]} outside the vocabulary "
            f"[0, {vocab_size})"
        )


def check_batch(batch: dict, schema: CrmSchema) -> None:
    """Check one batch of tensors; raises naming the key, field or token that is wrong."""
    for key in BATCH_KEYS:
        if key not in batch:
            raise KeyError(f"CRM batch is missing '{key}' (expected keys: {', '.join(BATCH_KEYS)})")
    fields = batch["fields"]
    if fields.dim() != 2:
        raise ValueError(f"batch['fields'] must be (batch, num_fields), got shape {tuple(fields.shape)}")
    size = fields.shape[0]
    if fields.shape[1] != schema.num_fields:
        raise ValueError(
            f"batch['fields'] has {fields.shape[1]} fields but the CRM was built for {schema.num_fields} "
            f"({', '.join(schema.field_names)})"
        )
    for key in ("hist_items", "hist_ratings", "hist_mask"):
        value = batch[key]
        if tuple(value.shape) != (size, schema.history_length):
            raise ValueError(
                f"batch['{key}'] has shape {tuple(value.shape)}, expected ({size}, {schema.history_length}) "
                f"(batch size, history_length)"
            )
    for key in ("fields", "hist_items", "hist_ratings"):
        if batch[key].dtype not in (torch.int64, torch.int32):
            raise TypeError(f"batch['{key}'] must hold integer tokens, got {batch[key].dtype}")
    if batch["hist_mask"].dtype != torch.bool:
        raise TypeError(f"batch['hist_mask'] must be a bool tensor, got {batch['hist_mask'].dtype}")
    if size == 0:
        return
    low = fields.amin(dim=0)
    high = fields.amax(dim=0)
    bad = (low < 0) | (high >= schema.vocab_size)
    if bool(bad.any()):
        column = int(torch.nonzero(bad)[0])
        token = int(low[column]) if int(low[column]) < 0 else int(high[column])
        raise ValueError(
            f"field '{schema.field_names[column]}' (column {column}) has token {token} outside the vocabulary "
            f"[0, {schema.vocab_size})"
        )
    for key in ("hist_items", "hist_ratings"):
        value = batch[key]
        low_value, high_value = int(value.min()), int(value.max())
        if low_value < 0 or high_value >= schema.vocab_size:
            token = low_value if low_value < 0 else high_value
            raise ValueError(f"batch['{key}'] has token {token} outside the vocabulary [0, {schema.vocab_size})")


class FeatureTensors:
    """A split converted to tensors once, from which batches are sliced (no per-batch numpy conversion)."""

    def __init__(self, features: CTRFeatures, device: Union[str, torch.device] = "cpu"):
        self.features = features
        self.device = torch.device(device)
        self.tensors = {
            "fields": torch.as_tensor(np.asarray(features.fields, dtype=np.int64)),
            "hist_items": torch.as_tensor(np.asarray(features.hist_items, dtype=np.int64)),
            "hist_ratings": torch.as_tensor(np.asarray(features.hist_ratings, dtype=np.int64)),
            "hist_mask": torch.as_tensor(np.asarray(features.hist_mask, dtype=bool)),
            "labels": torch.as_tensor(np.asarray(features.labels, dtype=np.float32)),
            "sample_id": torch.as_tensor(np.asarray(features.sample_id, dtype=np.int64)),
        }

    def __len__(self) -> int:
        return len(self.features)

    def batch(self, rows: Union[torch.Tensor, slice]) -> dict:
        return {key: value[rows].to(self.device, non_blocking=True) for key, value in self.tensors.items()}

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: Optional[torch.Generator] = None
    ) -> Iterator[dict]:
        """Mini-batches covering every row exactly once.

        A trailing batch of one row is merged into the previous one: batch-norm layers (used by some library models)
        cannot train on a single row, and dropping it would lose data.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        starts = list(range(0, n, batch_size))
        if len(starts) > 1 and n - starts[-1] == 1:
            starts.pop()
        for index, start in enumerate(starts):
            stop = starts[index + 1] if index + 1 < len(starts) else n
            rows = order[start:stop] if order is not None else slice(start, stop)
            yield self.batch(rows)

    def num_batches(self, batch_size: int) -> int:
        n = len(self)
        count = (n + batch_size - 1) // batch_size
        if count > 1 and n % batch_size == 1:
            count -= 1
        return count


def features_to_batch(features: CTRFeatures, rows: Optional[Sequence[int]] = None, device="cpu") -> dict:
    """One batch (dict of tensors) from the given rows of a split (all rows by default)."""
    tensors = FeatureTensors(features if rows is None else features.subset(np.asarray(rows)), device=device)
    return tensors.batch(slice(None))
