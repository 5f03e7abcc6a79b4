"""The data stage: readers for MovieLens-100K/1M/25M and GoodReads and the Appendix A processing into a
``RecDataset``, keyed by ``sample_id`` (what the later stages read of it is in ``reclora_pipeline.views``).

    from reclora_pipeline.data import load_dataset

    dataset = load_dataset("ml-100k")                 # the embedded copy from the recbole wheel
    dataset.save("out/ml-100k")                       # interactions.npz, users.csv, items.csv, stats.json, ...
    dataset.history(dataset.sample_ids("train")[:4], max_len=10)   # each sample's earlier interactions
"""

from ..lazy import lazy_exports


# name -> (reader module, reader function, schema): the one list of datasets (readers are imported when used)
DATASET_READERS = {
    "ml-100k": (".movielens", "read_ml100k", "ML_100K"),
    "ml-1m": (".movielens", "read_ml1m", "ML_1M"),
    "ml-25m": (".movielens", "read_ml25m", "ML_25M"),
    "goodreads": (".goodreads", "read_goodreads", "GOODREADS"),
}
DATASETS = tuple(DATASET_READERS)

_EXPORTS = {
    "RecDataset": ".dataset", "SPLITS": ".dataset",
    "CTRFeatures": ".features",
    "Histories": ".history",
    "embedded_ml100k_dir": ".movielens",
    "DEFAULT_CORE": ".processing", "DEFAULT_MIN_HISTORY": ".processing", "DEFAULT_SPLIT_RATIO": ".processing",
    "DatasetSpec": ".raw", "RawData": ".raw",
    "DEFAULT_MAX_BAD_FRACTION": ".validation", "DataFormatError": ".validation", "ReadReport": ".validation",
    "READERS": ".loading", "SPECS": ".loading", "load_dataset": ".loading", "read_raw": ".loading",
}
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
__all__ = sorted([*_EXPORTS, "DATASETS", "DATASET_READERS"])
