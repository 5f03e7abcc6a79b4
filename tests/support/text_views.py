"""Text views of single samples of a ``RecDataset``, the short way tests ask for them (the pipeline builds text records
of whole batches through ``SampleView`` and ``text_records``)."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from reclora_pipeline.config import RetrievalConfig
from reclora_pipeline.data import RecDataset
from reclora_pipeline.views import SampleView, TextRecord, text_records


K_SHORT = RetrievalConfig().k_short  # the run config's default K_short


def text_record_of(
    dataset: RecDataset,
    sample_id: int,
    *,
    retrieval=None,
    history_item_ids: Optional[Sequence[str]] = None,
    k_short: int = K_SHORT,
) -> TextRecord:
    """The text view of one sample.

    The short history is, by priority: the given ``history_item_ids`` (each must be one of the sample's earlier
    items; listed oldest first whatever their order here), the short list of a retrieval result
    (``retrieval.short_rows``), or the ``k_short`` most recent earlier interactions.
    """
    rows = None if history_item_ids is None else _rows_of_items(dataset, int(sample_id), history_item_ids)[None, :]
    view = SampleView.from_dataset(dataset, [sample_id], short=retrieval, k_long=0, k_short=k_short, short_rows=rows)
    return text_records(view)[0]


def text_records_of(dataset: RecDataset, sample_ids: Iterable[int], *, retrieval=None, k_short: int = K_SHORT) -> list:
    """Text views of several samples (the retrieval's short lists, or the ``k_short`` most recent)."""
    ids = np.asarray(sample_ids if isinstance(sample_ids, np.ndarray) else list(sample_ids), dtype=np.int64).ravel()
    return text_records(SampleView.from_dataset(dataset, ids, short=retrieval, k_long=0, k_short=k_short))


def _rows_of_items(dataset: RecDataset, sample_id: int, item_ids: Sequence[str]) -> np.ndarray:
    """Interaction rows of the given items among the sample's earlier interactions, in time order."""
    start, end = dataset.history_bounds([sample_id])
    rows = np.arange(start[0], end[0])
    earlier = dict(zip(dataset.items["item_id"].to_numpy(dtype=object)[dataset.item_index[rows]], rows))
    chosen = []
    for item in item_ids:
        if str(item) not in earlier:
            raise KeyError(f"item {item!r} is not among the earlier interactions of sample_id {sample_id}")
        chosen.append(earlier[str(item)])
    return np.sort(np.asarray(chosen, dtype=np.int64))
