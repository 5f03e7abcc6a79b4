"""Refuse to save RecLoRA tensors that are empty or not the shapes the adapter's config gives them.

A sharded trainer (DeepSpeed ZeRO-3, FSDP) holds each process's slice of a parameter; saved without gathering first,
the banks and gates come out with shape ``[0]`` or a slice's shape, and the adapter file is written without complaint.
PEFT made ``save_pretrained`` fail loudly for LoRA after exactly that (huggingface/peft#3251, trl#4416); this is the
same guard for RecLoRA's tensors. The expected shapes come from the config and the adapted modules' widths (plain
integers on each layer), never from the parameters themselves, which may be the very shards being saved.
"""

from __future__ import annotations

from torch import nn

from .config import RecLoraConfig
from .gate import RecLoraGate
from .layer import RecLoraLayer


# Wrapper names that FSDP and activation checkpointing insert into module paths but drop from a saved state dict.
WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _plain(key: str) -> str:
    for part in WRAPPER_PARTS:
        key = key.replace(part, "")
    return key


def gate_shapes(config: RecLoraConfig) -> dict[str, tuple]:
    """Shape of each gate parameter, by parameter name."""
    hidden, width, num_meta_loras = config.gate_hidden_dim, config.crm_dim, config.num_meta_loras
    return {"fc1_weight": (hidden, width), "fc1_bias": (hidden,), "norm_weight": (hidden,), "norm_bias": (hidden,),
            "fc2_weight": (num_meta_loras, hidden), "fc2_bias": (num_meta_loras,)}


def expected_tensor_shapes(model: nn.Module, config: RecLoraConfig, adapter_name: str) -> dict[str, tuple]:
    """Shape of every RecLoRA tensor of ``adapter_name`` in ``model``'s state dict (keys with the adapter name)."""
    shapes = {}
    rank = config.total_rank
    for name, module in model.named_modules():
        prefix = f"{_plain(name)}." if name else ""
        if isinstance(module, RecLoraLayer) and adapter_name in module.reclora_A:
            shapes[f"{prefix}reclora_A.{adapter_name}"] = (rank, module.in_features)
            shapes[f"{prefix}reclora_B.{adapter_name}"] = (module.out_features, rank)
        elif isinstance(module, RecLoraGate) and name.endswith(f"reclora_gate.{adapter_name}"):
            shapes.update({f"{prefix}{parameter}": shape for parameter, shape in gate_shapes(config).items()})
    return shapes


def check_tensors_to_save(model: nn.Module, config: RecLoraConfig, adapter_name: str, to_save: dict) -> None:
    """Raise ValueError naming the first RecLoRA tensor of ``to_save`` that is missing, empty or wrongly shaped."""
    provided = {_plain(key): value for key, value in to_save.items()}
    for key, shape in expected_tensor_shapes(model, config, adapter_name).items():
        if key not in provided:
            raise ValueError(f"Refusing to save RecLoRA adapter '{adapter_name}': the state dict has no {key}")
        found = tuple(provided[key].shape)
        if found != shape:
            state = "is empty" if provided[key].numel() == 0 else f"has shape {found}"
            raise ValueError(
                f"Refusing to save RecLoRA adapter '{adapter_name}': {key} {state}, but its config "
                f"(num_meta_loras={config.num_meta_loras}, r={config.r}, crm_dim={config.crm_dim}, "
                f"gate_hidden_dim={config.gate_hidden_dim}) and the adapted module give {shape}. A sharded trainer "
                "(DeepSpeed ZeRO-3, FSDP) writes this when the parameters were not gathered before saving: save "
                "through the trainer's own save (Trainer.save_model / accelerator.get_state_dict), which gathers them."
            )
