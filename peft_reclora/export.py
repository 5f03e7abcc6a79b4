"""Fold one user's gate into a standard PEFT LoRA adapter, servable by any LoRA server without this package.

For a fixed CRM vector the gate is a constant alpha, and the RecLoRA update of each layer becomes an ordinary low-rank
update:

- ``mixing="output"``: s * sum_k alpha_k B_k A_k = B_cat diag(s * expand(alpha)) A_cat, a LoRA of rank N_m * r with
  lora_A = A_cat and lora_B = B_cat scaled column-wise by s * alpha of the column's meta-LoRA;
- ``mixing="weights"``: s * (sum_k alpha_k B_k)(sum_k alpha_k A_k), a LoRA of rank r.

The exported config uses lora_alpha = rank (scaling 1), since s is already folded into lora_B. Full copies the adapter
trains (``modules_to_save``, e.g. ``lm_head``) do not depend on the user: every exported LoRA carries them unchanged,
as its own ``modules_to_save`` copy (PEFT's LoRA keeps one per adapter).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional, Sequence

import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from peft.utils import ModulesToSaveWrapper
from safetensors.torch import save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from .base_weights import check_same_base
from .crm_context import validate_crm_embeds
from .sharding import gathered


if TYPE_CHECKING:
    from .model import RecLoraModel


@torch.no_grad()
def personalized_lora_weights(tuner: "RecLoraModel", crm_embeds: torch.Tensor, adapter_name: str = "default"):
    """Per adapted module (name relative to the wrapped model): (lora_A (rank, d_in), lora_B (d_out, rank)), fp32."""
    if adapter_name not in tuner.peft_config:
        raise ValueError(f"Adapter {adapter_name} does not exist")
    if isinstance(crm_embeds, torch.Tensor) and crm_embeds.dim() == 1:
        crm_embeds = crm_embeds.unsqueeze(0)
    crm_embeds = validate_crm_embeds(crm_embeds)
    if crm_embeds.shape[0] != 1:
        raise ValueError(
            f"`crm_embeds` must hold one user, shape (crm_dim,) or (1, crm_dim), got {tuple(crm_embeds.shape)}"
        )
    config = tuner.peft_config[adapter_name]
    if crm_embeds.shape[1] != config.crm_dim:
        raise ValueError(f"`crm_embeds` has width {crm_embeds.shape[1]}, expected crm_dim={config.crm_dim}")

    weights = {}
    for name, layer in tuner.reclora_layers(adapter_name).items():
        gate = layer.gate_module(adapter_name)
        bank = (layer.reclora_A[adapter_name], layer.reclora_B[adapter_name])
        with gathered([*bank, *gate.parameters()]):  # ZeRO-3 partitions them; the folded update needs them whole
            was_training = gate.training
            gate.eval()
            alpha = gate(crm_embeds)[0].float()
            gate.train(was_training)
            A, B = (tensor.detach().float().clone() for tensor in bank)
        num, rank = layer.num_meta_loras[adapter_name], layer.r[adapter_name]
        scaling = layer.scaling[adapter_name]
        if layer.mixing[adapter_name] == "output":
            column_scale = (scaling * alpha).repeat_interleave(rank)
            weights[name] = (A, B * column_scale.to(B.device)[None, :])
        else:
            alpha = alpha.to(A.device)
            mixed_A = (alpha[:, None, None] * A.view(num, rank, -1)).sum(0)
            mixed_B = scaling * (B.view(B.shape[0], num, rank) * alpha[None, :, None]).sum(1)
            weights[name] = (mixed_A, mixed_B)
    return weights


def personalized_modules_to_save(tuner: "RecLoraModel", adapter_name: str = "default") -> dict[str, nn.Module]:
    """The adapter's trained full copies (``modules_to_save``) by module name relative to the wrapped model."""
    return {
        name: module.modules_to_save[adapter_name]
        for name, module in tuner.model.named_modules()
        if isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save
    }


def personalized_lora_config(tuner: "RecLoraModel", weights: dict, adapter_name: str = "default"):
    """The ``LoraConfig`` of an exported user: rank of the folded update, scaling 1, the same target modules and
    ``modules_to_save``."""
    config = tuner.peft_config[adapter_name]
    rank = next(iter(weights.values()))[0].shape[0]
    # GPT-2-style Conv1D layers store their weight as (in, out); LoRA must be told so (it would warn and correct it).
    transposed = all(isinstance(tuner.model.get_submodule(name).get_base_layer(), Conv1D) for name in weights)
    return LoraConfig(
        r=rank,
        lora_alpha=rank,
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=transposed,
        target_modules=sorted(weights),
        modules_to_save=sorted(personalized_modules_to_save(tuner, adapter_name)) or None,
        task_type=config.task_type,
        base_model_name_or_path=config.base_model_name_or_path,
        revision=config.revision,
    )


def personalized_lora_state_dict(weights: dict, modules_to_save: Optional[dict[str, nn.Module]] = None) -> dict:
    """PEFT LoRA state-dict keys (as saved in ``adapter_model.safetensors``) for ``personalized_lora_weights`` and the
    ``personalized_modules_to_save`` copies."""
    tensors = {}
    for name, (lora_A, lora_B) in weights.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = lora_A.contiguous().cpu()
        tensors[f"base_model.model.{name}.lora_B.weight"] = lora_B.contiguous().cpu()
    for name, module in (modules_to_save or {}).items():
        for key, value in module.state_dict().items():
            tensors[f"base_model.model.{name}.{key}"] = value.detach().contiguous().cpu()
    return tensors


def export_personalized_lora(
    tuner: "RecLoraModel", crm_embeds: torch.Tensor, save_directory: str, adapter_name: str = "default"
) -> None:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` of a plain LoRA equal to this user's RecLoRA.

    The result loads with ``peft.PeftModel.from_pretrained(base_model, save_directory)`` alone and reproduces the
    RecLoRA model's outputs for that user.
    """
    weights = personalized_lora_weights(tuner, crm_embeds, adapter_name)
    if not weights:
        raise ValueError(f"Adapter '{adapter_name}' has no adapted modules to export")
    os.makedirs(save_directory, exist_ok=True)
    personalized_lora_config(tuner, weights, adapter_name).save_pretrained(save_directory)
    save_file(
        personalized_lora_state_dict(weights, personalized_modules_to_save(tuner, adapter_name)),
        os.path.join(save_directory, "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )


def personalized_lora_model(
    base_model: torch.nn.Module,
    reclora_model,
    crm_embeds: torch.Tensor,
    user_names: Sequence[str],
    adapter_name: str = "default",
    allow_other_base: bool = False,
):
    """A plain PEFT LoRA model on ``base_model`` holding one personalized LoRA per row of ``crm_embeds``.

    Serve it with PEFT's mixed-batch inference, ``model(input_ids, adapter_names=[user of each row])``: row b then
    equals the RecLoRA model's output for that row with its user's ``crm_embeds``. ``base_model`` must be a separate
    instance of the RecLoRA model's base (PEFT wraps the modules it adapts). With ``mixing="output"`` each user's LoRA
    has rank num_meta_loras * r, the size of the whole bank, so memory grows with the number of users held; a trained
    ``modules_to_save`` copy (e.g. ``lm_head``) is held once per user too. ``user_names`` become the adapter names:
    non-empty strings that PEFT can hold as one (see ``check_user_names``). ``base_model`` must hold the same weights
    as the RecLoRA model's base (``base_weights.check_same_base``), unless ``allow_other_base``.
    """
    tuner = getattr(reclora_model, "base_model", reclora_model)
    check_same_base(base_model, tuner.model, allow_other_base)
    if isinstance(crm_embeds, torch.Tensor) and crm_embeds.dim() == 1:
        crm_embeds = crm_embeds.unsqueeze(0)
    crm_embeds = validate_crm_embeds(crm_embeds)
    names = check_user_names(user_names)
    if len(names) != crm_embeds.shape[0]:
        raise ValueError(f"user_names has {len(names)} names for {crm_embeds.shape[0]} rows of `crm_embeds`")
    modules_to_save = personalized_modules_to_save(tuner, adapter_name)
    model = None
    for name, row in zip(names, crm_embeds):
        weights = personalized_lora_weights(tuner, row[None], adapter_name)
        config = personalized_lora_config(tuner, weights, adapter_name)
        if model is None:
            model = get_peft_model(base_model, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
        result = set_peft_model_state_dict(
            model, personalized_lora_state_dict(weights, modules_to_save), adapter_name=name
        )
        if result.unexpected_keys:
            raise ValueError(f"Personalized LoRA weights did not fit the base model: {result.unexpected_keys[:3]}")
    model.eval()
    return model


# PEFT's mixed-batch inference serves the rows of this adapter name with the bare base model.
BASE_MODEL_ADAPTER_NAME = "__base__"


def check_user_names(user_names: Sequence[str]) -> list[str]:
    """The names of ``personalized_lora_model``'s adapters, refused (naming the name) where PEFT treats one specially
    or cannot hold it as a LoRA adapter name; checked before any user's LoRA is built."""
    if isinstance(user_names, (str, bytes)):  # a string is a sequence too: of one-character names
        raise ValueError(
            f"user_names must be a list of names, one per row of `crm_embeds`, got the string {user_names!r}"
        )
    names = list(user_names)
    seen = set()
    for name in names:
        problem = _adapter_name_problem(name)
        if problem is not None:
            raise ValueError(f"user_names: {name!r} cannot be a LoRA adapter name: {problem}")
        if name in seen:
            raise ValueError(
                f"user_names: {name!r} appears more than once; names must be unique, each becomes one LoRA adapter"
            )
        seen.add(name)
    return names


def _adapter_name_problem(name) -> Optional[str]:
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not a string (pass str() of a user id)"
    if not name:
        return "it is empty"
    if name == BASE_MODEL_ADAPTER_NAME:
        return "PEFT's mixed-batch inference serves rows of that name with the bare base model"
    if "." in name:
        return "PEFT keeps adapters in module dictionaries, whose keys cannot contain '.'"
    if hasattr(nn.ModuleDict(), name):
        return "it is an attribute of torch's ModuleDict, which PEFT keeps adapters in"
    return None
