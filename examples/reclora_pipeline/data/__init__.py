"""The data stage: readers for MovieLens-100K/1M/25M and GoodReads, Appendix A processing, and the views every later
stage reads (CRM features, text records, histories), all keyed by ``sample_id``.

    from reclora_pipeline.data import load_dataset, build_ctr_features

    dataset = load_dataset("ml-100k")                 # the embedded copy from the recbole wheel
    dataset.save("out/ml-100k")                       # interactions.npz, users.csv, items.csv, stats.json, ...
    train = build_ctr_features(dataset, retrieval=None, split="train")
    record = dataset.text_record(int(train.sample_id[0]))
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from .ctr import DEFAULT_K_LONG, FieldVocabulary, build_ctr_features
from .dataset import DEFAULT_K_SHORT, SPLITS, RecDataset
from .features import CTRFeatures
from .goodreads import GOODREADS, read_goodreads
from .history import Histories
from .movielens import ML_1M, ML_25M, ML_100K, embedded_ml100k_dir, read_ml1m, read_ml25m, read_ml100k
from .processing import DEFAULT_CORE, DEFAULT_MIN_HISTORY, DEFAULT_SPLIT_RATIO, process
from .raw import DatasetSpec, RawData
from .text import TextRecord
from .validation import DEFAULT_MAX_BAD_FRACTION, DataFormatError, ReadReport

READERS = {"ml-100k": read_ml100k, "ml-1m": read_ml1m, "ml-25m": read_ml25m, "goodreads": read_goodreads}
SPECS = {"ml-100k": ML_100K, "ml-1m": ML_1M, "ml-25m": ML_25M, "goodreads": GOODREADS}
DATASETS = tuple(READERS)


def read_raw(
    name: str,
    source: Optional[Union[str, Path]] = None,
    *,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    **reader_options,
) -> RawData:
    """Parse and validate a dataset's files without processing them (see :func:`load_dataset`)."""
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    report = ReadReport(max_bad_fraction=max_bad_fraction)
    return READERS[name](None if source is None else Path(source), report, **reader_options)


def load_dataset(
    name: str,
    source: Optional[Union[str, Path]] = None,
    *,
    core: int = DEFAULT_CORE,
    min_history: int = DEFAULT_MIN_HISTORY,
    split_ratio: Sequence[float] = DEFAULT_SPLIT_RATIO,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    label_threshold: Optional[float] = None,
    label_inclusive: Optional[bool] = None,
    **reader_options,
) -> RecDataset:
    """Read and process a dataset per the paper's Appendix A.

    Args:
        name: "ml-100k", "ml-1m", "ml-25m" or "goodreads".
        source: the folder of the official files; ``None`` for ml-100k means the embedded copy (recbole wheel).
        core: k of the k-core filter (users and items with >= k ratings, iterated to a fixed point); 0 disables it.
        min_history: a sample needs this many strictly earlier interactions of its user.
        split_ratio: train/valid/test fractions by global time (8:1:1).
        max_bad_fraction: the share of rejected rows per file above which reading stops with a
            :class:`DataFormatError` naming the file and the first bad line.
        label_threshold, label_inclusive: override the dataset's label rule (positive if ``rating >= threshold``
            when inclusive, else ``rating > threshold``).
        reader_options: ``chunk_rows`` (rows parsed at a time); GoodReads: ``time_field``.
    """
    raw = read_raw(name, source, max_bad_fraction=max_bad_fraction, **reader_options)
    raw.spec = raw.spec.with_label_rule(label_threshold, label_inclusive)
    return process(raw, core=core, min_history=min_history, split_ratio=split_ratio)


__all__ = [
    "CTRFeatures", "DATASETS", "DEFAULT_CORE", "DEFAULT_K_LONG", "DEFAULT_K_SHORT", "DEFAULT_MAX_BAD_FRACTION",
    "DEFAULT_MIN_HISTORY", "DEFAULT_SPLIT_RATIO", "DataFormatError", "DatasetSpec", "FieldVocabulary", "Histories",
    "RawData", "ReadReport", "RecDataset", "SPECS", "SPLITS", "TextRecord", "build_ctr_features",
    "embedded_ml100k_dir", "load_dataset", "read_raw",
]
