"""``RecDataset``: one processed dataset (after filtering, labels and the split), the record every stage joins on.

Storage is column arrays over all interactions, sorted by (user, timestamp, file order), so that a user's history
is a contiguous block. Samples are the interactions with ``sample_id >= 0``; ``sample_id`` is the global time rank of
the sample and the only key other stages use (CRM features, retrieval results, text records, few-shot index files).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from .history import Histories, history_ends, recent_rows
from .raw import DatasetSpec


SPLITS = ("train", "valid", "test")
FORMAT_VERSION = 1
ARRAYS = ("user_index", "item_index", "rating", "timestamp", "sample_id", "split_code")


class RecDataset:
    """A processed recommendation dataset.

    Attributes:
        spec: the dataset's schema (:class:`DatasetSpec`): fields, pure ID fields, label rule.
        users, items: attribute tables (string columns), one row per user / item that has interactions; their row
            order is the ``user_index`` / ``item_index`` used in the arrays.
        options: the processing options (core, min_history, split_ratio, ...).
        stats: the stats dict written as ``stats.json``.
    """

    def __init__(
        self,
        *,
        spec: DatasetSpec,
        users: pd.DataFrame,
        items: pd.DataFrame,
        user_index: np.ndarray,
        item_index: np.ndarray,
        rating: np.ndarray,
        timestamp: np.ndarray,
        sample_id: np.ndarray,
        split_code: np.ndarray,
        options: dict,
        source: str,
        stats: Optional[dict] = None,
    ):
        self.spec = spec
        self.users = users.reset_index(drop=True)
        self.items = items.reset_index(drop=True)
        self.user_index = np.asarray(user_index, dtype=np.int32)
        self.item_index = np.asarray(item_index, dtype=np.int32)
        self.rating = np.asarray(rating, dtype=np.float32)
        self.timestamp = np.asarray(timestamp, dtype=np.int64)
        self.sample_id = np.asarray(sample_id, dtype=np.int64)
        self.split_code = np.asarray(split_code, dtype=np.int8)
        self.options = dict(options)
        self.source = source
        self.stats = stats or {}
        self._check()
        self.label = spec.label(self.rating)
        self.user_offsets = np.zeros(len(self.users) + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.user_index, minlength=len(self.users)), out=self.user_offsets[1:])
        self.history_end = history_ends(self.user_index, self.timestamp)
        is_sample = self.sample_id >= 0
        self.sample_rows = np.empty(int(is_sample.sum()), dtype=np.int64)
        self.sample_rows[self.sample_id[is_sample]] = np.flatnonzero(is_sample)
        self._samples: Optional[pd.DataFrame] = None
        self._fingerprint: Optional[str] = None

    def _check(self) -> None:
        n = len(self.user_index)
        for name in ARRAYS:
            if len(getattr(self, name)) != n:
                raise ValueError(f"RecDataset.{name} has {len(getattr(self, name))} rows, expected {n}")
        if n and (self.user_index.min() < 0 or self.user_index.max() >= len(self.users)):
            raise ValueError("user_index points outside the users table")
        if n and (self.item_index.min() < 0 or self.item_index.max() >= len(self.items)):
            raise ValueError("item_index points outside the items table")
        same_user = self.user_index[1:] == self.user_index[:-1]
        if (np.diff(self.user_index) < 0).any() or (same_user & (np.diff(self.timestamp) < 0)).any():
            raise ValueError("interactions must be sorted by user, then timestamp")
        samples = np.sort(self.sample_id[self.sample_id >= 0])
        if not np.array_equal(samples, np.arange(len(samples))):
            raise ValueError("sample ids must be unique and numbered 0..n-1")
        if ((self.sample_id >= 0) != (self.split_code >= 0)).any():
            raise ValueError("every sample needs a split, and only samples have one")

    # -- sizes and keys ----------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_samples(self) -> int:
        return len(self.sample_rows)

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}={len(self.sample_ids(name))}" for name in SPLITS)
        return (f"RecDataset({self.name!r}: {len(self.users)} users, {len(self.items)} items, "
                f"{len(self.user_index)} interactions, samples {counts})")

    def sample_ids(self, split: Optional[str] = None) -> np.ndarray:
        """Sample ids in time order, of one split (``"train"``, ``"valid"``, ``"test"``) or of all."""
        if split is None:
            return np.arange(self.num_samples, dtype=np.int64)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        codes = self.split_code[self.sample_rows]
        return np.flatnonzero(codes == SPLITS.index(split)).astype(np.int64)

    def rows_for(self, sample_ids) -> np.ndarray:
        """Interaction rows of the given sample ids; a ``KeyError`` names the first unknown id."""
        ids = np.atleast_1d(np.asarray(sample_ids))
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"sample ids must be integers, got {ids.dtype}")
        bad = (ids < 0) | (ids >= self.num_samples)
        if bad.any():
            raise KeyError(f"sample_id {int(ids[bad][0])} is not in dataset {self.name!r} "
                           f"({self.num_samples} samples)")
        return self.sample_rows[ids.astype(np.int64)]

    # -- tables ------------------------------------------------------------------------------------------------------
    def _user_ids(self, rows) -> pd.Categorical:
        return pd.Categorical.from_codes(self.user_index[rows],
                                         categories=pd.Index(self.users["user_id"], dtype=object))

    def _item_ids(self, rows) -> pd.Categorical:
        return pd.Categorical.from_codes(self.item_index[rows],
                                         categories=pd.Index(self.items["item_id"], dtype=object))

    @property
    def samples(self) -> pd.DataFrame:
        """One row per sample in ``sample_id`` order: sample_id, user_id, item_id (raw id strings, categorical),
        timestamp, rating, label, split."""
        if self._samples is None:
            rows = self.sample_rows
            self._samples = pd.DataFrame(
                {
                    "sample_id": np.arange(self.num_samples, dtype=np.int64),
                    "user_id": self._user_ids(rows),
                    "item_id": self._item_ids(rows),
                    "timestamp": self.timestamp[rows],
                    "rating": self.rating[rows],
                    "label": self.label[rows],
                    "split": pd.Categorical.from_codes(self.split_code[rows], categories=list(SPLITS)),
                }
            )
        return self._samples

    @property
    def interactions(self) -> pd.DataFrame:
        """Every kept interaction in storage order (user, time); ``sample_id`` is -1 for history-only ones."""
        rows = np.arange(len(self.user_index))
        split = pd.Categorical.from_codes(self.split_code, categories=list(SPLITS))  # -1 (history only): missing
        return pd.DataFrame(
            {
                "user_id": self._user_ids(rows),
                "item_id": self._item_ids(rows),
                "timestamp": self.timestamp,
                "rating": self.rating,
                "label": self.label,
                "sample_id": self.sample_id,
                "split": split,
            }
        )

    # -- histories ---------------------------------------------------------------------------------------------------
    def history_bounds(self, sample_ids) -> tuple[np.ndarray, np.ndarray]:
        """``[start, end)`` interaction rows of each sample's earlier interactions."""
        rows = self.rows_for(sample_ids)
        return self.user_offsets[self.user_index[rows]], self.history_end[rows]

    def history(self, sample_ids, max_len: Optional[int] = None) -> Histories:
        """Each sample's strictly earlier interactions of the same user, oldest first (the last ``max_len`` if set).

        Interactions with the sample's own timestamp are not included (see ``history.py``).
        """
        ids = np.atleast_1d(np.asarray(sample_ids, dtype=np.int64))
        start, end = self.history_bounds(ids)
        if max_len is not None:
            if max_len < 0:
                raise ValueError(f"max_len must be >= 0, got {max_len}")
            start = np.maximum(start, end - max_len)
        lengths = end - start
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        rows = np.repeat(start - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        items = self.item_index[rows]
        return Histories(
            sample_id=ids,
            offsets=offsets,
            rows=rows,
            item_index=items,
            item_id=self.items["item_id"].to_numpy(dtype=object)[items],
            rating=self.rating[rows],
            timestamp=self.timestamp[rows],
        )

    def recent_history_rows(self, sample_ids, k: int) -> np.ndarray:
        """(n, k) interaction rows of each sample's last ``k`` earlier interactions, oldest first, -1 padded."""
        start, end = self.history_bounds(sample_ids)
        return recent_rows(start, end, k)

    # -- identity, stats, files ---------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """sha256 of the interaction arrays and the id tables: results computed on one dataset check it on load."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self.name.encode())
            for name in ARRAYS:
                digest.update(np.ascontiguousarray(getattr(self, name)).tobytes())
            digest.update("\n".join(self.users["user_id"]).encode())
            digest.update("\n".join(self.items["item_id"]).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def compute_stats(self, **extra) -> dict:
        sample_rows = self.sample_rows
        split = self.split_code[sample_rows]
        labels = self.label[sample_rows]
        times = self.timestamp[sample_rows]
        hist_len = (self.history_end - self.user_offsets[self.user_index])[sample_rows]
        samples, positive, time_range = {}, {}, {}
        for code, name in enumerate(SPLITS):
            mask = split == code
            samples[name] = int(mask.sum())
            positive[name] = float(labels[mask].mean()) if mask.any() else None
            if mask.any():
                first, last = int(times[mask].min()), int(times[mask].max())
                time_range[name] = {"first": first, "last": last,
                                    "first_utc": _utc(first), "last_utc": _utc(last)}
        samples["total"] = int(len(sample_rows))
        positive["all"] = float(labels.mean()) if len(labels) else None
        stats = {
            "dataset": self.name,
            "source": self.source,
            "label_rule": self.spec.label_rule,
            "options": self.options,
            "users": int(len(self.users)),
            "items": int(len(self.items)),
            "interactions": int(len(self.user_index)),
            "samples": samples,
            "positive_rate": positive,
            "history_only_interactions": int(len(self.user_index) - len(sample_rows)),
            "history_length": {
                "min": int(hist_len.min()) if len(hist_len) else 0,
                "median": float(np.median(hist_len)) if len(hist_len) else 0.0,
                "mean": float(hist_len.mean()) if len(hist_len) else 0.0,
                "max": int(hist_len.max()) if len(hist_len) else 0,
            },
            "time_range": time_range,
        }
        read = extra.pop("read", None)
        if read is not None:
            stats.update(read)
        stats.update(extra)
        return stats

    def save(self, directory, *, split_csv: bool = True) -> Path:
        """Write the dataset into ``directory`` (no pickle anywhere).

        ``interactions.npz`` (the arrays), ``users.csv``, ``items.csv``, ``dataset.json`` (schema, options,
        fingerprint) and ``stats.json`` are what :meth:`load` reads. ``train.csv`` / ``valid.csv`` / ``test.csv`` (one
        row per sample: sample_id, user_id, item_id, timestamp, rating, label) are written for people and other tools.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / "interactions.npz", **{name: getattr(self, name) for name in ARRAYS})
        self.users.to_csv(directory / "users.csv", index=False)
        self.items.to_csv(directory / "items.csv", index=False)
        meta = {"format_version": FORMAT_VERSION, "spec": self.spec.to_dict(), "options": self.options,
                "source": self.source, "fingerprint": self.fingerprint}
        (directory / "dataset.json").write_text(json.dumps(meta, indent=2))
        (directory / "stats.json").write_text(json.dumps(self.stats, indent=2, default=str))
        if split_csv:
            samples = self.samples
            for name in SPLITS:
                part = samples[samples["split"] == name].drop(columns="split")
                part.to_csv(directory / f"{name}.csv", index=False)
        return directory

    @classmethod
    def load(cls, directory) -> "RecDataset":
        directory = Path(directory)
        meta_path = directory / "dataset.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory} holds no processed dataset (no dataset.json); "
                                    "run the data stage first")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}")
        read = dict(dtype=str, keep_default_na=False, na_filter=False)
        with np.load(directory / "interactions.npz", allow_pickle=False) as arrays:
            data = {name: arrays[name] for name in ARRAYS}
        stats_path = directory / "stats.json"
        dataset = cls(
            spec=DatasetSpec.from_dict(meta["spec"]),
            users=pd.read_csv(directory / "users.csv", **read),
            items=pd.read_csv(directory / "items.csv", **read),
            options=meta["options"],
            source=meta.get("source", ""),
            stats=json.loads(stats_path.read_text()) if stats_path.is_file() else {},
            **data,
        )
        if dataset.fingerprint != meta["fingerprint"]:
            raise ValueError(f"{directory}: the files do not match the fingerprint in dataset.json "
                             "(changed or mixed up)")
        return dataset


def _utc(seconds: int) -> str:
    """Unix seconds as UTC text; numpy's datetime64 covers every int64 second (pandas stops in the year 2262)."""
    return str(np.datetime64(int(seconds), "s")).replace("T", " ")
