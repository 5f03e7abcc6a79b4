"""The data stage: read a dataset's files and process them (paper, Appendix A) into a ``RecDataset``.

Its key covers ``data.*`` and the size and modification time of every file of the source folder, so a replaced file
is read again. The artifact is the dataset as ``RecDataset.save`` writes it (plus the split CSVs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..artifacts import RunFolder, StageInputs, StageNode, cached
from ..config import DataConfig
from ..data import RecDataset, embedded_ml100k_dir, load_dataset
from . import Runtime


VERSION = 1


def source_folder(data: DataConfig) -> Path:
    if data.source is not None:
        return Path(data.source).expanduser()
    if data.dataset == "ml-100k":
        return embedded_ml100k_dir()
    raise ValueError(f"data.source: {data.dataset} has no embedded copy; give the folder of its official files")


def source_stamp(data: DataConfig) -> list:
    """(name, size, mtime_ns) of every file under the source folder: what the data stage reads besides its settings."""
    folder = source_folder(data)
    if not folder.is_dir():
        raise FileNotFoundError(f"data.source: {folder} is not a folder")
    return [[path.relative_to(folder).as_posix(), path.stat().st_size, path.stat().st_mtime_ns]
            for path in sorted(folder.rglob("*")) if path.is_file()]


@dataclass(frozen=True)
class DataInputs(StageInputs):
    """What the data stage reads: the ``data`` settings and the stamp of the source files (``source_stamp``)."""

    data: DataConfig
    source_files: tuple  # (name, size, mtime_ns) of each file


def node(data: DataConfig) -> StageNode:
    return StageNode("data", data.dataset, DataInputs(data, tuple(map(tuple, source_stamp(data)))), version=VERSION)


def run(folder: RunFolder, node: StageNode, runtime: Runtime) -> RecDataset:
    data = node.inputs.data

    def build(staging: Path) -> dict:
        dataset = load_dataset(data.dataset, data.source, progress=runtime.show_progress, **data.reader_options())
        dataset.save(staging)
        return {"users": len(dataset.users), "items": len(dataset.items), "samples": dataset.stats["samples"],
                "fingerprint": dataset.fingerprint}

    dataset, _ = cached(folder, node, build, lambda artifact: RecDataset.load(artifact.path))
    folder.log(str(dataset))
    return dataset
