"""Reading and processing a dataset by name: the readers of the datasets ``reclora_pipeline.data.DATASETS`` lists."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from . import DATASET_READERS, DATASETS
from .dataset import RecDataset
from .processing import DEFAULT_CORE, DEFAULT_MIN_HISTORY, DEFAULT_SPLIT_RATIO, process
from .raw import DatasetSpec, RawData
from .validation import DEFAULT_MAX_BAD_FRACTION, ReadReport


def _resolve(name: str) -> tuple[Callable, DatasetSpec]:
    module, reader, spec = DATASET_READERS[name]
    loaded = importlib.import_module(module, __package__)
    return getattr(loaded, reader), getattr(loaded, spec)


READERS = {name: _resolve(name)[0] for name in DATASETS}
SPECS = {name: _resolve(name)[1] for name in DATASETS}


def read_raw(
    name: str,
    source: Optional[Union[str, Path]] = None,
    *,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    progress: bool = False,
    **reader_options,
) -> RawData:
    """Parse and validate a dataset's files without processing them (see :func:`load_dataset`)."""
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    report = ReadReport(max_bad_fraction=max_bad_fraction, progress=progress)
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
    progress: bool = False,
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
        progress: a progress bar over each file's bytes.
        reader_options: ``chunk_rows`` (rows parsed at a time); GoodReads: ``time_field``.
    """
    raw = read_raw(name, source, max_bad_fraction=max_bad_fraction, progress=progress, **reader_options)
    raw.spec = raw.spec.with_label_rule(label_threshold, label_inclusive)
    return process(raw, core=core, min_history=min_history, split_ratio=split_ratio)
