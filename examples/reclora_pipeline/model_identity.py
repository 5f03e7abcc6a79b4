"""What a base LLM is, by content: the identity every stage key, the encoding cache and a recommender's lineage record.

    base_model_identity("embedded")           -> "sha256:…"  of the GGUF file the embedded model is converted from
    base_model_identity("/models/m.gguf")     -> "sha256:…"  of that file (the embedded GGUF by path is "embedded")
    base_model_identity("/models/my-llama")   -> "sha256:…"  of the folder's weight, tokenizer and config files
    base_model_identity("owner/name")         -> "hub:owner/name@<commit>"  (online: the Hub's current commit; offline:
                                                  the commit of the local snapshot)

A path is only where a model is: weights copied over the same folder are another model, and a folder moved elsewhere
is the same one. Hashing the files costs about a second per GB, so each file's sha256 is cached by its path, size and
modification time (``file_digests.json`` in the cache root) and a rerun on unchanged files reads no weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from .cache import file_sha256
from .llm import gguf_file


# The files of a model folder that decide what the model computes: weights, tokenizer and configs. A model card, a
# licence or a hidden cache folder beside them does not.
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model", ".txt", ".tiktoken")


class UnknownBaseModel(ValueError):
    """A base model name that is neither the embedded model, a local folder nor a resolvable Hub id."""


def base_model_identity(name_or_path: Optional[str]) -> str:
    """The content identity of a base model name as the pipeline loads it (see the module docstring)."""
    try:
        gguf = gguf_file(name_or_path)
    except FileNotFoundError as error:
        raise UnknownBaseModel(str(error)) from None
    if gguf is not None:
        return "sha256:" + file_sha256(gguf)
    path = Path(str(name_or_path)).expanduser()
    if path.is_dir():
        return "sha256:" + folder_sha256(path)
    if path.exists():
        raise UnknownBaseModel(f"llm.base_model: {path} is a file, but neither a model folder nor a .gguf file")
    return hub_identity(str(name_or_path))


def folder_sha256(folder: Path) -> str:
    """sha256 over the relative names and contents of the model files of ``folder`` (hidden entries left out)."""
    folder = Path(folder)
    files = [path for path in sorted(folder.rglob("*"))
             if path.is_file() and path.suffix in MODEL_FILE_SUFFIXES and path.name != "README.md"
             and not any(part.startswith(".") for part in path.relative_to(folder).parts)]
    if not files:
        raise UnknownBaseModel(f"llm.base_model: {folder} holds no model files ({', '.join(MODEL_FILE_SUFFIXES)})")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def hub_identity(repo_id: str) -> str:
    """``hub:<repo>@<commit>``: the Hub's current commit when it answers, else the commit of the local snapshot."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.utils import HFValidationError

    if repo_id.startswith((".", "/", "~")) or repo_id.count("/") > 1:
        raise UnknownBaseModel(f"llm.base_model: {repo_id} is not a folder (and not a Hub id of the form "
                               "'owner/name')")
    try:
        return f"hub:{repo_id}@{HfApi().model_info(repo_id).sha}"
    except HFValidationError as error:
        raise UnknownBaseModel(f"llm.base_model: {repo_id!r} is not a folder or a Hub id ({error})") from None
    except Exception:  # offline, or the Hub does not answer: the local snapshot is what would be loaded
        pass
    try:
        snapshot = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as error:
        raise UnknownBaseModel(f"llm.base_model: {repo_id!r} is not a local folder, and as a Hub id it can neither be "
                               f"resolved online nor found in the local Hub cache ({type(error).__name__})") from None
    return f"hub:{repo_id}@{snapshot.name}"
