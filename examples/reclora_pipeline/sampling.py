"""Seeded samples of a split (the few-shot training sample, the evaluation subsample) and their index files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .artifacts import read_json, write_json_atomically


def seeded_sample(candidate_ids: Sequence[int], size: Optional[int], seed: int, *, what: str = "sample") -> np.ndarray:
    """A uniform sample of ``size`` ids (all of them when ``size`` is None), sorted for stable storage."""
    candidate_ids = np.asarray(candidate_ids, dtype=np.int64)
    if size is None:
        return np.sort(candidate_ids)
    if size > len(candidate_ids):
        raise ValueError(f"{what} size {size} exceeds the {len(candidate_ids)} available samples")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidate_ids, size=size, replace=False))


def save_index_file(path: Path, sample_ids: Sequence[int], **metadata) -> Path:
    return write_json_atomically(path, {**metadata, "sample_ids": [int(i) for i in sample_ids]})


def load_index_file(path: Path) -> np.ndarray:
    data = read_json(path, "sample index file")
    if not isinstance(data, dict) or "sample_ids" not in data:
        raise ValueError(f"sample index file: {path} has no 'sample_ids'")
    return np.asarray(data["sample_ids"], dtype=np.int64)

