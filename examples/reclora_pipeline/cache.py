"""The cache root of converted models, item encodings and file digests, and the digest cache itself.

Hashing a model's files costs about a second per GB, so each file's sha256 is kept by its path, size and modification
time (``file_digests.json`` in the cache root): a rerun on unchanged files reads no weights.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from .artifacts import sha256_of_file, write_json_atomically


DIGEST_CACHE_NAME = "file_digests.json"
_lock = threading.Lock()
_memory: dict = {}


def cache_root() -> Path:
    """Where converted models and other reusable artefacts live (``$PEFT_RECLORA_CACHE`` overrides)."""
    explicit = os.environ.get("PEFT_RECLORA_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "peft_reclora" if xdg else Path.home() / ".cache" / "peft_reclora"



def file_sha256(path: Path) -> str:
    """sha256 of a file's content, computed once per (real path, size, mtime) and kept in the cache root."""
    path = Path(path).resolve()
    stat = path.stat()
    stamp = [stat.st_size, stat.st_mtime_ns]
    key = str(path)
    with _lock:
        known = _memory.get(key)
        if known is None:
            known = _read_cache().get(key)
        if known is not None and known[:2] == stamp:
            _memory[key] = known
            return known[2]
    value = sha256_of_file(path)
    with _lock:
        _memory[key] = stamp + [value]
        _write_cache(key, stamp + [value])
    return value


def _cache_path() -> Path:
    return cache_root() / DIGEST_CACHE_NAME


def _read_cache() -> dict:
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, entry: list) -> None:
    """Add one entry (and drop those of files that are gone); the cache is only a shortcut, so a write that fails
    (read-only cache) is left out silently."""
    try:
        data = {path: known for path, known in _read_cache().items() if os.path.exists(path)}
        data[key] = entry
        write_json_atomically(_cache_path(), data)
    except OSError:
        pass
