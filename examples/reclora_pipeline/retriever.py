"""The Long-Short Modality Retriever (paper, Section 3.4).

For every sample it picks, among the user's strictly earlier interactions, the ones most relevant to the target item:
K_long for the CRM's ID history and K_short for the prompt (the run config's ``retrieval.k_long`` / ``k_short``), both
listed oldest first.

``semantic`` mode (the paper's): each item's text description goes through the LLM once (one plain forward pass,
batched); its last-layer hidden states (after the final norm, i.e. what the LM head reads) are mean-pooled over the
tokens ("mean", default) or taken at the last token ("last"). PCA reduces them to 512 dimensions (or one fewer than
the number of items), L2 normalisation makes dot products cosines, and the top-k cosines between the target and each
earlier item pick the histories. ``recent`` mode takes the last K earlier interactions (the paper's ablations).

Encodings are cached on disk under a key of the model's content (``model_identity``) + dataset + pooling + a hash of
the item texts. Settings come from ``reclora_pipeline.config.RetrievalConfig`` (the run config's ``retrieval``
section); the encoder is the run's LLM. Under ``accelerate launch`` the item list is split across processes (GPUs)
and gathered; a plain run uses one device.

Retrieval is exact and vectorised: for each user, one matrix product scores all requested targets against all earlier
items at once (blocks of users of similar history length are batched, very long users are cut into row blocks), so
memory stays bounded by ``block_elements`` and MovieLens-25M's 25M samples run on one machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .artifacts import atomic_path
from .config import POOLINGS, RetrievalConfig
from .data.dataset import RecDataset
from .data.history import recent_rows
from .llm import cache_root, load_base_model, load_tokenizer
from .model_identity import base_model_identity
from .views.text import item_texts


ITEM_VECTORS_NAME = "item_vectors.safetensors"

logger = logging.getLogger(__name__)

DEFAULT_PCA_DIM = RetrievalConfig().pca_dim
DEFAULT_BLOCK_ELEMENTS = RetrievalConfig().block_elements
RESULT_FORMAT_VERSION = 1


# -- item encodings ---------------------------------------------------------------------------------------------------
def model_fingerprint(model, name: Optional[str] = None, quantization: Optional[str] = None) -> str:
    """A short id of what an encoder computes: for a model loaded by name, the content identity of its files, its
    dtype and its quantization (if any); for a model given as an object, every parameter and buffer (name, dtype,
    shape and values)."""
    if name is not None:
        digest = hashlib.sha256(base_model_identity(name).encode())
        digest.update(str(next(model.parameters()).dtype).encode())
        if quantization not in (None, "none"):
            digest.update(f"\0{quantization}".encode())
        return digest.hexdigest()[:16]
    return module_sha256(model)[:16]


def module_sha256(model) -> str:
    """sha256 over a module's state dict: every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode() if hasattr(model, "config") else b"")
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def encoding_cache_key(model_id: str, dataset_name: str, pooling: str, max_length: int, item_ids: Sequence[str],
                       texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"model": model_id, "dataset": dataset_name, "pooling": pooling,
                              "max_length": max_length}, sort_keys=True).encode())
    for item_id, text in zip(item_ids, texts):
        digest.update(f"{item_id}\t{text}\n".encode())
    return f"{dataset_name}-{pooling}-{digest.hexdigest()[:24]}"


def default_cache_dir() -> Path:
    return cache_root() / "item_encodings"


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
    # "last": the last attended position, whichever side the padding is on.
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), positions, torch.full_like(positions, -1)).amax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _process_state():
    """accelerate's view of the processes: one plain process, or one per GPU under ``accelerate launch``.

    Without CUDA (or with ``ACCELERATE_USE_CPU``) it is asked for CPU processes, so ``torchrun`` / ``accelerate launch
    --cpu`` on a CPU machine splits the work too (gloo).
    """
    from accelerate import PartialState

    use_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return PartialState(cpu=use_cpu)


@torch.inference_mode()
def encode_texts(
    texts: Sequence[str],
    model,
    tokenizer,
    *,
    pooling: str = "mean",
    batch_size: int = 64,
    max_length: int = 128,
    device=None,
    progress: bool = True,
) -> np.ndarray:
    """Pooled last-layer hidden states (float32, one row per text) from one forward pass per batch.

    The backbone (``model.base_model``) is called, not the LM head: its output is the final-norm hidden state the LM
    head would read, without computing logits over the vocabulary. Texts are batched by length and right-padded; with
    causal attention the padding cannot change a text's states, so batched and one-by-one encodings agree.
    Under ``accelerate launch`` each process encodes its share of the texts and the results are gathered.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    state = _process_state()
    if device is None:
        device = state.device
    if not getattr(model, "hf_device_map", None):
        model = model.to(device)
    model.eval()
    backbone = getattr(model, "base_model", model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    if any(len(ids) == 0 for ids in encoded):
        empty = next(i for i, ids in enumerate(encoded) if len(ids) == 0)
        raise ValueError(f"text {empty} encodes to no tokens: {texts[empty]!r}")
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    mine = order
    if state.num_processes > 1:
        with state.split_between_processes(order.tolist()) as part:
            mine = np.asarray(part, dtype=np.int64)
    outputs = []
    batches = range(0, len(mine), batch_size)
    for start in tqdm(batches, desc="encoding items", unit="batch",
                      disable=not progress or not state.is_local_main_process):
        chosen = mine[start:start + batch_size]
        width = max(len(encoded[i]) for i in chosen)
        input_ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chosen), width), dtype=torch.long)
        for row, index in enumerate(chosen):
            ids = encoded[index]
            input_ids[row, : len(ids)] = torch.as_tensor(ids)
            mask[row, : len(ids)] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        hidden = backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state
        outputs.append(_pool(hidden.float(), mask, pooling).cpu().numpy())
    vectors = np.concatenate(outputs) if outputs else np.zeros((0, model.config.hidden_size), dtype=np.float32)
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        parts = gather_object([(mine, vectors)])
        mine = np.concatenate([indices for indices, _ in parts])
        vectors = np.concatenate([values for _, values in parts])
    result = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
    result[mine] = vectors
    return result


@dataclass
class ItemEncodings:
    """Raw (pre-PCA) item encodings in the order of the dataset's items table."""

    item_ids: np.ndarray
    vectors: np.ndarray
    key: str
    metadata: dict = field(default_factory=dict)


def encode_items(
    dataset: RecDataset,
    config: Optional[RetrievalConfig] = None,
    *,
    encoder: str = "embedded",
    dtype: Optional[str] = None,
    quantization: Optional[str] = None,
    device=None,
    progress: bool = True,
    model=None,
    tokenizer=None,
) -> ItemEncodings:
    """Encode the dataset's item descriptions with the LLM ``encoder`` (or the given ``model``/``tokenizer``), or load
    them from the cache (``config.cache_dir``). ``quantization`` ("8bit", "4bit") loads the encoder quantized, onto
    ``device``."""
    config = config or RetrievalConfig()
    texts = item_texts(dataset)
    item_ids = dataset.items["item_id"].tolist()
    loaded_by_name = model is None
    if model is None:
        model = load_base_model(encoder, dtype=getattr(torch, dtype) if dtype else None, quantization=quantization,
                                device=device)
    if tokenizer is None:
        tokenizer = load_tokenizer(encoder)
    model_id = model_fingerprint(model, encoder if loaded_by_name else None, quantization)
    key = encoding_cache_key(model_id, dataset.name, config.pooling, config.max_length, item_ids, texts)
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    path = cache_dir / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as cached:
                if cached["item_ids"].tolist() == item_ids:
                    logger.info("item encodings loaded from %s", path)
                    meta = json.loads(str(cached["meta"]))
                    return ItemEncodings(cached["item_ids"], cached["vectors"], key,
                                         {**meta, "cache": "hit", "path": str(path)})
        except Exception as error:  # a damaged cache file is encoded again and replaced
            logger.warning("item encodings: %s cannot be read (%s); encoding again", path, error)
    started = time.perf_counter()
    vectors = encode_texts(texts, model, tokenizer, pooling=config.pooling, batch_size=config.batch_size,
                           max_length=config.max_length, device=device, progress=progress)
    seconds = time.perf_counter() - started
    meta = {"model": encoder, "model_fingerprint": model_id, "dataset": dataset.name, "pooling": config.pooling,
            "max_length": config.max_length, "items": len(item_ids), "hidden_size": int(vectors.shape[1]),
            "encode_seconds": seconds}
    if _process_state().is_main_process:
        _write_atomically(path, item_ids=np.asarray(item_ids, dtype=str), vectors=vectors,
                          meta=np.asarray(json.dumps(meta)))
    return ItemEncodings(np.asarray(item_ids, dtype=str), vectors, key, {**meta, "cache": "miss", "path": str(path)})


def _write_atomically(path: Path, **arrays) -> None:
    with atomic_path(path) as staging:
        with open(staging, "wb") as handle:
            np.savez(handle, **arrays)


def reduce_and_normalize(vectors: np.ndarray, dim: int = DEFAULT_PCA_DIM) -> tuple[np.ndarray, dict]:
    """PCA to ``min(dim, n_items - 1, width)`` dimensions, then L2 normalisation (dot product = cosine).

    PCA centres the encodings; LLM hidden states share a large common direction, which would otherwise make every
    pair of items look alike.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    n, width = vectors.shape
    target = min(int(dim), n - 1, width)
    info = {"pca_dim": int(target), "input_dim": int(width)}
    if target >= 1:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=target, svd_solver="full")  # exact, so no random state is involved
        reduced = pca.fit_transform(vectors)
        info["explained_variance"] = float(pca.explained_variance_ratio_.sum())
    else:
        reduced = vectors - vectors.mean(axis=0, keepdims=True)
        info["pca_dim"] = int(width)
    norms = np.linalg.norm(reduced, axis=1, keepdims=True)
    reduced = np.where(norms > 0, reduced / np.where(norms > 0, norms, 1.0), 0.0)
    return reduced.astype(np.float32), info


# -- top-k over earlier items -----------------------------------------------------------------------------------------
CHUNK_ROWS = 1 << 20


def row_dtype(num_rows: int):
    """int32 row references while they fit (halves the memory of 25M x 60 lists), int64 beyond."""
    return np.int32 if num_rows < np.iinfo(np.int32).max else np.int64


def chronological(rows: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Sort each row of selected interaction rows ascending (= oldest first), keeping -1 padding at the end.

    Works in chunks of rows; ``out`` may be ``rows`` itself (sorted in place).
    """
    out = np.empty_like(rows) if out is None else out
    sentinel = np.iinfo(rows.dtype).max
    for begin in range(0, len(rows), CHUNK_ROWS):
        part = rows[begin:begin + CHUNK_ROWS]
        key = np.where(part >= 0, part, sentinel)
        key.sort(axis=1)
        key[key == sentinel] = -1
        out[begin:begin + CHUNK_ROWS] = key
    return out


def semantic_top_k(
    vectors,
    *,
    item_index: np.ndarray,
    user_offsets: np.ndarray,
    history_end: np.ndarray,
    rows: np.ndarray,
    k_long: int,
    k_short: int,
    device=None,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """For each interaction row in ``rows``, the earlier rows of the same user whose items are most similar to its
    item: (n, k_long) and (n, k_short) interaction rows, oldest first, -1 padded.

    Args:
        vectors: (n_items, d) unit vectors (numpy or torch; float32, or float64 for exact reference checks).
        item_index: (N,) item of each interaction row; rows are sorted by (user, timestamp).
        user_offsets: (n_users + 1,) the rows of user u are ``user_offsets[u]:user_offsets[u + 1]``.
        history_end: (N,) end (exclusive) of each row's strictly earlier rows.
        block_elements: bound on the similarity block (and on the gathered vectors) computed at once.

    A sample with at most ``min(k_long, k_short)`` earlier items takes them all, without scoring. The others are
    scored by blocks: a block is one user's requested rows (or a slice of them) against the user's earlier items.
    Blocks of similar width are batched into one batched matrix product, masked to each row's earlier items, and
    reduced by top-k.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    table = torch.as_tensor(np.asarray(vectors) if not isinstance(vectors, torch.Tensor) else vectors).to(device)
    rows = np.asarray(rows, dtype=np.int64)
    k_max, k_min = max(k_long, k_short), min(k_long, k_short)
    n = len(rows)
    user = np.searchsorted(user_offsets, rows, side="right") - 1
    start = user_offsets[user]
    end = history_end[rows]
    length = end - start
    best = np.full((n, k_max), -1, dtype=row_dtype(len(item_index)))  # by descending similarity

    trivial = np.flatnonzero(length <= k_min)
    if len(trivial):
        best[trivial, :k_min] = recent_rows(start[trivial], end[trivial], k_min)

    scored = np.flatnonzero(length > k_min)
    # Requests grouped by user, in time order within a user (history_end is then non-decreasing).
    scored = scored[np.lexsort((rows[scored], user[scored]))]
    blocks = _blocks(scored, user, start, end, block_elements)
    # Batch blocks of similar width: sort by columns, then pack greedily under the element budget.
    blocks = blocks[np.lexsort((blocks[:, 1] - blocks[:, 0], blocks[:, 2]))]
    width = table.shape[1]
    bar = tqdm(total=n, desc="retrieving", unit="sample", disable=not progress)
    bar.update(len(trivial))
    index = 0
    while index < len(blocks):
        stop, max_r, max_c = index, 0, 0
        while stop < len(blocks):
            r = max(max_r, int(blocks[stop, 1] - blocks[stop, 0]))
            c = max(max_c, int(blocks[stop, 2]))
            count = stop - index + 1
            if stop > index and (count * r * c > block_elements or count * (r + c) * width > block_elements):
                break
            max_r, max_c, stop = r, c, stop + 1
        batch = blocks[index:stop]
        _score_batch(table, batch, scored, rows, start, end, item_index, k_max, max_r, max_c, best, device)
        bar.update(int((batch[:, 1] - batch[:, 0]).sum()))
        index = stop
    bar.close()
    # The short list is the head of the similarity order: take it before sorting the long list in place.
    short = chronological(best[:, :k_short])
    if k_long == k_max:
        return chronological(best, out=best), short
    return chronological(best[:, :k_long]), short


def _blocks(scored, user, start, end, block_elements) -> np.ndarray:
    """(a, b, columns) per block: requests ``scored[a:b]`` of one user against its first ``columns`` rows."""
    if len(scored) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    users = user[scored]
    boundaries = np.flatnonzero(np.diff(users)) + 1
    firsts = np.concatenate([[0], boundaries])
    lasts = np.concatenate([boundaries, [len(scored)]])
    columns = end[scored[lasts - 1]] - start[scored[lasts - 1]]
    sizes = (lasts - firsts) * columns
    small = sizes <= block_elements
    out = [np.stack([firsts[small], lasts[small], columns[small]], axis=1)]
    for a, b in zip(firsts[~small], lasts[~small]):
        # A long user: slices of its requests, each against the columns its last request needs, as many requests
        # per slice as the budget allows (the columns grow with the requests' time).
        user_start = start[scored[a]]
        needed = end[scored[a:b]] - user_start
        position = a
        while position < b:
            count = np.arange(1, b - position + 1)
            fits = count * needed[position - a:] <= block_elements
            stop = position + (int(np.flatnonzero(fits)[-1]) + 1 if fits[0] else 1)
            out.append(np.asarray([[position, stop, needed[stop - 1 - a]]], dtype=np.int64))
            position = stop
    return np.concatenate(out).astype(np.int64)


def _score_batch(table, batch, scored, rows, start, end, item_index, k_max, max_r, max_c, best, device) -> None:
    a, b, c = batch[:, 0], batch[:, 1], batch[:, 2]
    r_positions = a[:, None] + np.arange(max_r)[None, :]
    r_valid = r_positions < b[:, None]
    requests = scored[np.where(r_valid, r_positions, a[:, None])]  # (B, max_r) indices into rows/best
    block_start = start[requests[:, 0]]
    c_positions = np.arange(max_c)[None, :]
    c_valid = c_positions < c[:, None]
    column_rows = np.where(c_valid, block_start[:, None] + c_positions, block_start[:, None])
    history_length = np.where(r_valid, end[requests] - block_start[:, None], 0)

    targets = table[torch.as_tensor(item_index[rows[requests]].astype(np.int64), device=device)]  # (B, r, d)
    candidates = table[torch.as_tensor(item_index[column_rows].astype(np.int64), device=device)]  # (B, c, d)
    scores = torch.bmm(targets, candidates.transpose(1, 2))  # (B, r, c)
    lengths = torch.as_tensor(history_length, device=device)
    earlier = torch.arange(max_c, device=device)[None, None, :] < lengths[:, :, None]
    scores.masked_fill_(~earlier, float("-inf"))
    k = min(k_max, max_c)
    values, positions = torch.topk(scores, k, dim=-1)
    positions = positions.cpu().numpy()
    found = torch.isfinite(values).cpu().numpy()
    selected = np.where(found, block_start[:, None, None] + positions, -1)
    flat_requests = requests[r_valid]
    best[flat_requests, :k] = selected[r_valid]


def recent_k(user_offsets, history_end, rows, k_long, k_short) -> tuple[np.ndarray, np.ndarray]:
    """The last K earlier interactions (oldest first), for the ablations without retrieval."""
    rows = np.asarray(rows, dtype=np.int64)
    dtype = row_dtype(len(history_end))
    long = np.empty((len(rows), k_long), dtype=dtype)
    short = np.empty((len(rows), k_short), dtype=dtype)
    for begin in range(0, len(rows), CHUNK_ROWS):
        part = rows[begin:begin + CHUNK_ROWS]
        user = np.searchsorted(user_offsets, part, side="right") - 1
        start, end = user_offsets[user], history_end[part]
        long[begin:begin + CHUNK_ROWS] = recent_rows(start, end, k_long)
        short[begin:begin + CHUNK_ROWS] = recent_rows(start, end, k_short)
    return long, short


# -- results ----------------------------------------------------------------------------------------------------------
@dataclass
class RetrievalResult:
    """Long and short histories per sample, keyed by ``sample_id``.

    ``long`` (n, K_long) and ``short`` (n, K_short) hold rows of the dataset's interaction table (its storage order,
    saved in ``interactions.npz``), oldest first, -1 padded. They are bound to one dataset by its fingerprint; use
    :meth:`long_rows` / :meth:`short_rows` with the dataset, or :meth:`long_item_ids` / :meth:`short_item_ids`.
    """

    sample_id: np.ndarray
    long: np.ndarray
    short: np.ndarray
    mode: str
    dataset_fingerprint: str
    metadata: dict = field(default_factory=dict)
    item_vectors: Optional[np.ndarray] = None  # semantic mode: the (n_items, d) unit vectors that were compared

    def __post_init__(self):
        self.sample_id = np.asarray(self.sample_id, dtype=np.int64)
        if len(self.long) != len(self.sample_id) or len(self.short) != len(self.sample_id):
            raise ValueError("long and short need one row per sample_id")
        if len(self.sample_id) > 1 and (np.diff(self.sample_id) <= 0).any():
            raise ValueError("sample ids of a retrieval result must be unique and ascending")

    def __len__(self) -> int:
        return len(self.sample_id)

    @property
    def k_long(self) -> int:
        return int(self.long.shape[1])

    @property
    def k_short(self) -> int:
        return int(self.short.shape[1])

    def positions(self, sample_ids) -> np.ndarray:
        ids = np.atleast_1d(np.asarray(sample_ids, dtype=np.int64))
        if len(self.sample_id) == 0:
            if len(ids):
                raise KeyError(f"sample_id {int(ids[0])} has no retrieval result (the result is empty)")
            return np.zeros(0, dtype=np.int64)
        found = np.clip(np.searchsorted(self.sample_id, ids), 0, len(self.sample_id) - 1)
        ok = self.sample_id[found] == ids
        if not np.all(ok):
            raise KeyError(f"sample_id {int(ids[~ok][0])} has no retrieval result ({self.mode}, {len(self)} samples)")
        return found

    def _check(self, dataset: Optional[RecDataset]) -> None:
        if dataset is not None and dataset.fingerprint != self.dataset_fingerprint:
            raise ValueError(
                f"this retrieval result was computed on another dataset (fingerprint {self.dataset_fingerprint[:12]}, "
                f"dataset {dataset.name!r} has {dataset.fingerprint[:12]}); run retrieval again"
            )

    def long_rows(self, sample_ids, dataset: Optional[RecDataset] = None) -> np.ndarray:
        self._check(dataset)
        return self.long[self.positions(sample_ids)].astype(np.int64)

    def short_rows(self, sample_ids, dataset: Optional[RecDataset] = None) -> np.ndarray:
        self._check(dataset)
        return self.short[self.positions(sample_ids)].astype(np.int64)

    def long_item_ids(self, dataset: RecDataset, sample_id: int) -> list:
        return _item_ids(dataset, self.long_rows([sample_id], dataset)[0])

    def short_item_ids(self, dataset: RecDataset, sample_id: int) -> list:
        return _item_ids(dataset, self.short_rows([sample_id], dataset)[0])

    def save(self, directory) -> Path:
        """``retrieval.npz`` (+ ``item_vectors.safetensors``) and, last, ``retrieval.json``; each file is replaced in
        one rename, so a reader never sees a half-written file."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": RESULT_FORMAT_VERSION, "mode": self.mode, "k_long": self.k_long,
                "k_short": self.k_short, "samples": len(self), "dataset_fingerprint": self.dataset_fingerprint,
                "metadata": self.metadata}
        with atomic_path(directory / "retrieval.npz") as staging:
            with open(staging, "wb") as handle:
                np.savez(handle, sample_id=self.sample_id, long=self.long, short=self.short)
        if self.item_vectors is not None:
            with atomic_path(directory / ITEM_VECTORS_NAME) as staging:
                save_file({"item_vectors": torch.as_tensor(np.ascontiguousarray(self.item_vectors))}, str(staging))
        with atomic_path(directory / "retrieval.json") as staging:
            staging.write_text(json.dumps(meta, indent=2, default=str))
        return directory

    @classmethod
    def load(cls, directory, dataset: Optional[RecDataset] = None) -> "RetrievalResult":
        """Read a saved result; a missing, damaged or mismatched file raises an error naming it."""
        directory = Path(directory)
        meta_path = directory / "retrieval.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory} holds no retrieval result (no retrieval.json)")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{meta_path} is not valid JSON ({error}); run the retrieval again") from None
        if meta.get("format_version") != RESULT_FORMAT_VERSION:
            raise ValueError(f"{meta_path}: format_version {meta.get('format_version')} is not "
                             f"{RESULT_FORMAT_VERSION}")
        arrays_path = directory / "retrieval.npz"
        try:
            with np.load(arrays_path, allow_pickle=False) as arrays:
                result = cls(arrays["sample_id"], arrays["long"], arrays["short"], meta["mode"],
                             meta["dataset_fingerprint"], meta.get("metadata", {}))
        except (OSError, ValueError, KeyError, EOFError) as error:
            raise ValueError(f"{arrays_path} cannot be read ({type(error).__name__}: {error}); run the retrieval "
                             "again") from None
        if len(result) != meta.get("samples", len(result)):
            raise ValueError(f"{arrays_path} holds {len(result)} samples, {meta_path} says {meta['samples']}")
        if (directory / ITEM_VECTORS_NAME).is_file():
            result.item_vectors = load_file(str(directory / ITEM_VECTORS_NAME))["item_vectors"].numpy()
        result._check(dataset)
        return result


def _item_ids(dataset: RecDataset, rows: np.ndarray) -> list:
    rows = rows[rows >= 0]
    return dataset.items["item_id"].to_numpy(dtype=object)[dataset.item_index[rows]].tolist()


# -- the whole stage --------------------------------------------------------------------------------------------------
def retrieve(
    dataset: RecDataset,
    config: Optional[RetrievalConfig] = None,
    *,
    encoder: str = "embedded",
    dtype: Optional[str] = None,
    quantization: Optional[str] = None,
    device=None,
    progress: bool = True,
    model=None,
    tokenizer=None,
    vectors: Optional[np.ndarray] = None,
    sample_ids=None,
) -> RetrievalResult:
    """Long and short histories for ``sample_ids`` (default: every sample of the dataset).

    ``vectors`` (n_items, d) skips encoding and PCA (they must be unit vectors in the items table's order); otherwise
    semantic mode encodes the items with ``model``/``tokenizer`` or loads ``encoder`` (a model name, in ``dtype``,
    quantized when ``quantization`` says so).
    """
    config = config or RetrievalConfig()
    ids = dataset.sample_ids() if sample_ids is None else np.unique(np.asarray(sample_ids, dtype=np.int64))
    rows = dataset.rows_for(ids)
    metadata = {"config": config.to_dict(), "encoder": encoder if config.mode == "semantic" else None,
                "dtype": dtype, "dataset": dataset.name, "samples": int(len(ids))}
    if quantization not in (None, "none"):
        metadata["quantization"] = quantization
    if config.mode == "recent":
        started = time.perf_counter()
        long, short = recent_k(dataset.user_offsets, dataset.history_end, rows, config.k_long, config.k_short)
        metadata["retrieval_seconds"] = time.perf_counter() - started
    else:
        if vectors is None:
            encodings = encode_items(dataset, config, encoder=encoder, dtype=dtype, quantization=quantization,
                                     device=device, progress=progress,
                                     model=model, tokenizer=tokenizer)
            vectors, pca = reduce_and_normalize(encodings.vectors, config.pca_dim)
            metadata.update({"encoding": {key: value for key, value in encodings.metadata.items()},
                             "encoding_key": encodings.key, "pca": pca})
        elif len(vectors) != len(dataset.items):
            raise ValueError(f"vectors has {len(vectors)} rows but the dataset has {len(dataset.items)} items")
        started = time.perf_counter()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        long, short = semantic_top_k(
            vectors, item_index=dataset.item_index, user_offsets=dataset.user_offsets,
            history_end=dataset.history_end, rows=rows, k_long=config.k_long, k_short=config.k_short,
            device=device, block_elements=config.block_elements, progress=progress,
        )
        metadata["retrieval_seconds"] = time.perf_counter() - started
    item_vectors = None if config.mode == "recent" else np.asarray(vectors)
    return RetrievalResult(ids, long, short, config.mode, dataset.fingerprint, metadata, item_vectors)
