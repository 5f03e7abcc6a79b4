"""The identity of a base model by its weights: what a RecLoRA adapter was trained on, and what it is exported onto.

A RecLoRA model holds its base model's weights (PEFT wraps the adapted modules, whose original weights become
``base_layer``); an exported LoRA is only equal to it on a base with the same weights. ``base_weights_sha256`` hashes
the base's state dict with the names PEFT adds removed, so the same weights give the same digest inside and outside a
PEFT model, and any changed value, dtype or shape gives another.
"""

from __future__ import annotations

import hashlib
import warnings

import torch

from .sharding import gathered


ADAPTER_PREFIX = "reclora_"  # RecLoraModel.prefix: the adapter's own parameters are not the base's
# PEFT wrappers around a base module: the original weights live under these names.
WRAPPER_PARTS = (".base_layer.", ".original_module.")


def base_weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over the base model's tensors (name, dtype, shape and bytes), leaving out adapter parameters."""
    digest = hashlib.sha256()
    tensors = {}
    for key, tensor in module.state_dict(keep_vars=True).items():
        if ADAPTER_PREFIX in key or ".modules_to_save." in key:
            continue
        for part in WRAPPER_PARTS:
            key = key.replace(part, ".")
        tensors[key] = tensor
    for key in sorted(tensors):
        with gathered([tensors[key]]):  # one at a time: under ZeRO-3 the whole base would not fit on one device
            tensor = tensors[key].detach().cpu().contiguous().reshape(-1)
            digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensors[key].shape)}\0".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_same_base(base_model: torch.nn.Module, trained_on: torch.nn.Module, allow_other_base: bool = False) -> None:
    """Refuse ``base_model`` unless its weights are those of ``trained_on`` (the RecLoRA model's wrapped base); with
    ``allow_other_base`` warn instead, naming both digests."""
    given, trained = base_weights_sha256(base_model), base_weights_sha256(trained_on)
    if given == trained:
        return
    message = (f"base_model has weights sha256 {given[:16]}, but the RecLoRA model's base has {trained[:16]}: the "
               "personalized LoRAs would compute another function")
    if not allow_other_base:
        raise ValueError(f"{message}. Pass allow_other_base=True to export onto it anyway")
    warnings.warn(f"{message}; exported anyway (allow_other_base=True)", stacklevel=3)
