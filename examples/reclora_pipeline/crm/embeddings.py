"""R_c for stage 2: computed once per sample by the frozen CRM in eval mode, cached on disk, looked up by sample id.

During Few2Many tuning the CRM never changes, so running it inside the LLM training loop would only cost time, and
(as in the published code, which left the CRM in training mode) risks dropout noise in R_c. Here the CRM is frozen
and put in eval mode before anything is computed, and that is checked module by module.

The cache file (safetensors) holds ``sample_id`` and ``embeds`` plus, as metadata, a fingerprint of the CRM's
weights and config and the hidden layer used; a cache written by another CRM, or another R_c layer, is detected as
stale and recomputed instead of being silently reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from ..data.features import CTRFeatures
from .base import CrmModel
from .inputs import FeatureTensors, check_features


logger = logging.getLogger(__name__)


class StaleCrmCacheError(ValueError):
    """A cached R_c table was computed by a different CRM (weights, config or layer)."""


def freeze_crm(model: CrmModel) -> CrmModel:
    """Put the CRM in eval mode (no dropout, fixed batch-norm statistics) and stop its gradients; returns it."""
    model.eval()
    model.requires_grad_(False)
    return model


def assert_frozen_eval(model: CrmModel) -> None:
    training = [name or type(model).__name__ for name, module in model.named_modules() if module.training]
    if training:
        raise RuntimeError(
            f"the CRM is in training mode (dropout active) in: {', '.join(training[:5])}; call freeze_crm(model)"
        )
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    if trainable:
        raise RuntimeError(
            f"the CRM still has trainable parameters ({', '.join(trainable[:5])}); call freeze_crm(model)"
        )


def crm_fingerprint(model: CrmModel, layer: Optional[int] = None) -> str:
    """sha256 of the CRM's config, the R_c layer and every weight (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    layer = model.rc_layer if layer is None else layer
    digest.update(json.dumps({"config": model.config(), "layer": layer}, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        shape = tensor.shape
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class RcTable:
    """R_c (the paper's CRM representation, what RecLoRA's gate reads as ``crm_embeds``) keyed by sample id:
    ``table.get(sample_ids)`` -> float32 tensor (n, crm_dim)."""

    def __init__(
        self,
        sample_ids: Union[np.ndarray, Sequence[int]],
        embeds: np.ndarray,
        *,
        fingerprint: Optional[str] = None,
        layer: Optional[int] = None,
    ):
        sample_ids = np.asarray(sample_ids, dtype=np.int64)
        embeds = np.asarray(embeds, dtype=np.float32)
        if sample_ids.ndim != 1 or embeds.ndim != 2 or len(sample_ids) != len(embeds):
            raise ValueError(
                f"need (n,) sample ids and (n, crm_dim) embeddings, got {sample_ids.shape} and {embeds.shape}"
            )
        order = np.argsort(sample_ids, kind="stable")
        self._sorted_ids = sample_ids[order]
        duplicates = self._sorted_ids[1:] == self._sorted_ids[:-1]
        if duplicates.any():
            raise ValueError(f"sample_id {self._sorted_ids[1:][duplicates][0]} appears twice in the R_c table")
        self._embeds = torch.from_numpy(np.ascontiguousarray(embeds[order]))
        self.fingerprint = fingerprint
        self.layer = layer

    def __len__(self) -> int:
        return len(self._sorted_ids)

    @property
    def crm_dim(self) -> int:
        return self._embeds.shape[1]

    @property
    def sample_ids(self) -> np.ndarray:
        return self._sorted_ids.copy()

    def _positions(self, sample_ids) -> np.ndarray:
        if isinstance(sample_ids, torch.Tensor):
            sample_ids = sample_ids.detach().cpu().numpy()
        sample_ids = np.asarray(sample_ids, dtype=np.int64).reshape(-1)
        positions = np.searchsorted(self._sorted_ids, sample_ids)
        found = positions < len(self._sorted_ids)
        found[found] = self._sorted_ids[positions[found]] == sample_ids[found]
        if not found.all():
            raise KeyError(f"sample_id {sample_ids[~found][0]} has no precomputed R_c in this table")
        return positions

    def __contains__(self, sample_id: int) -> bool:
        try:
            self._positions([sample_id])
        except KeyError:
            return False
        return True

    def get(self, sample_ids) -> torch.Tensor:
        """R_c rows for the given sample ids, in that order; KeyError naming the first missing id."""
        return self._embeds[torch.from_numpy(self._positions(sample_ids))]

    def embeds_for(self, sample_ids) -> np.ndarray:
        return self.get(sample_ids).numpy()

    # ----------------------------------------------------------------------------------------------------------------
    # persistence

    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"crm_fingerprint": self.fingerprint or "", "layer": "" if self.layer is None else str(self.layer)}
        temporary = path.with_name(path.name + ".tmp")
        save_file({"sample_id": self._sorted_ids, "embeds": self._embeds.numpy()}, str(temporary), metadata=metadata)
        temporary.replace(path)  # never leave a half-written cache behind
        return path

    @classmethod
    def load(cls, path: Union[str, Path], *, expected_fingerprint: Optional[str] = None) -> "RcTable":
        """Load a saved table; with ``expected_fingerprint``, raise ``StaleCrmCacheError`` if another CRM wrote it."""
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
        fingerprint = metadata.get("crm_fingerprint") or None
        if expected_fingerprint is not None and fingerprint != expected_fingerprint:
            raise StaleCrmCacheError(
                f"{path} was computed by another CRM (fingerprint {str(fingerprint)[:12]}..., expected "
                f"{expected_fingerprint[:12]}...): its weights, config or R_c layer differ"
            )
        arrays = load_file(str(path))
        layer = metadata.get("layer")
        return cls(arrays["sample_id"], arrays["embeds"], fingerprint=fingerprint, layer=int(layer) if layer else None)

    @classmethod
    def merge(cls, tables: Iterable["RcTable"]) -> "RcTable":
        """One table from several splits' tables computed by the same CRM."""
        tables = list(tables)
        if not tables:
            raise ValueError("nothing to merge")
        fingerprints = {table.fingerprint for table in tables}
        if len(fingerprints) > 1:
            raise StaleCrmCacheError("the tables were computed by different CRMs (fingerprints differ)")
        return cls(
            np.concatenate([table._sorted_ids for table in tables]),
            np.concatenate([table._embeds.numpy() for table in tables]),
            fingerprint=tables[0].fingerprint,
            layer=tables[0].layer,
        )

    @classmethod
    def from_model(
        cls,
        model: CrmModel,
        features: CTRFeatures,
        batch_size: int = 4096,
        *,
        layer: Optional[int] = None,
        cache_path: Optional[Union[str, Path]] = None,
        progress: bool = True,
    ) -> "RcTable":
        sample_ids, embeds = precompute_crm_embeds(
            model, features, batch_size, layer=layer, cache_path=cache_path, progress=progress
        )
        return cls(sample_ids, embeds, fingerprint=crm_fingerprint(model, layer), layer=_layer(model, layer))


def _layer(model: CrmModel, layer: Optional[int]) -> int:
    return model.rc_layer if layer is None else layer


def precompute_crm_embeds(
    model: CrmModel,
    features: CTRFeatures,
    batch_size: int = 4096,
    *,
    layer: Optional[int] = None,
    cache_path: Optional[Union[str, Path]] = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(sample_ids, R_c) for every row of ``features``, in row order, as int64 and float32 arrays.

    Freezes the CRM and puts it in eval mode first (and checks that no module is left in training mode). With
    ``cache_path``, a valid cache (same CRM fingerprint and layer, all sample ids present) is read instead of
    recomputing; a stale or incomplete one is recomputed and overwritten.
    """
    freeze_crm(model)
    assert_frozen_eval(model)
    check_features(features, model.schema, split="features for R_c", need_labels=False)
    sample_ids = np.asarray(features.sample_id, dtype=np.int64)
    fingerprint = crm_fingerprint(model, layer)
    if cache_path is not None and Path(cache_path).is_file():
        try:
            table = RcTable.load(cache_path, expected_fingerprint=fingerprint)
            return sample_ids, table.embeds_for(sample_ids)
        except StaleCrmCacheError as error:
            logger.warning("recomputing R_c: %s", error)
        except KeyError as error:
            logger.warning("recomputing R_c: the cache %s lacks samples (%s)", cache_path, error)

    device = next(model.parameters()).device
    tensors = FeatureTensors(features, device=device)
    outputs = []
    with torch.no_grad():
        for batch in tqdm(
            tensors.batches(batch_size),
            total=tensors.num_batches(batch_size),
            desc=f"R_c ({model.name})",
            disable=not progress,
            leave=False,
        ):
            outputs.append(model.represent(batch, layer=layer).float().cpu())
    embeds = torch.cat(outputs).numpy()
    if cache_path is not None:
        RcTable(sample_ids, embeds, fingerprint=fingerprint, layer=_layer(model, layer)).save(cache_path)
    return sample_ids, embeds
