"""What a run was built from, for ``results.json``, ``recommender.json`` and the model card: the content (sha256) of
every dataset file the data stage reads, and the versions of Python and of the packages that change results.

Results that do not reproduce because a data file or a dependency changed under them are the most common complaint
against LLM-for-recommendation repositories. The data stage notices a replaced file by its size and modification
time; the record names each file by its content, so that two results can be compared without the files at hand.
Versions are read from the installed packages' metadata, so an optional package (bitsandbytes) is not imported just
to be named; one that is not installed is left out.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Optional

from .artifacts import sha256_of_file
from .stages.data import source_folder, source_stamp


# Distributions whose versions a run records (by their PyPI names), besides Python and peft-reclora.
RECORDED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "torch-rechub", "bitsandbytes")


def package_versions() -> dict:
    """{"python": ..., "peft_reclora": ..., <distribution>: version} for each installed recorded package."""
    import peft_reclora

    versions = {"python": platform.python_version(), "peft_reclora": peft_reclora.__version__}
    for distribution in RECORDED_PACKAGES:
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return versions


def dataset_files(folder: Path, stamp: list) -> list:
    """[{"path", "bytes", "sha256"}] of the files of ``stamp`` (the data stage's ``source_stamp``: relative path, size,
    mtime), hashed once each."""
    return [{"path": name, "bytes": int(size), "sha256": sha256_of_file(Path(folder) / name)}
            for name, size, _ in stamp]


def run_provenance(data_config) -> dict:
    """``{"versions": ..., "dataset_files": ...}`` of a run whose data settings are ``data_config``."""
    return {"versions": package_versions(),
            "dataset_files": dataset_files(source_folder(data_config), source_stamp(data_config))}


def recorded_provenance(results: dict) -> dict:
    """The provenance entries of a run's ``results.json`` (empty for a run written before they were recorded)."""
    return {key: results[key] for key in ("versions", "dataset_files") if key in results}


def provenance_lines(provenance: Optional[dict]) -> list:
    """Markdown for a model card: the versions and the dataset files' digests (nothing when none were recorded)."""
    if not provenance:
        return []
    lines = ["## Reproducibility", "", "Built with:", ""]
    versions = provenance.get("versions") or {}
    lines += [f"- {name} {version}" for name, version in versions.items()]
    files = provenance.get("dataset_files") or []
    if files:
        lines += ["", "From the dataset files (sha256):", "", "| file | bytes | sha256 |", "|---|---|---|"]
        lines += [f"| `{item['path']}` | {item['bytes']} | `{item['sha256']}` |" for item in files]
    return lines + [""]
