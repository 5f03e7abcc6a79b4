"""The contract every meta-LoRA backend shares: the mixing modes it computes and the shapes of its inputs."""

from __future__ import annotations

import torch


MIXING_MODES = ("output", "weights")  # RecLoraConfig.mixing takes these; see the ops package docstring


def check_meta_lora_shapes(
    x: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, gate: torch.Tensor, num_meta_loras: int
) -> None:
    """Raise a ValueError naming the offending tensor when the banks, the input and the gate do not fit together.

    Banks are concatenated along the rank axis: lora_A is (num_meta_loras * r, d_in) and lora_B is
    (d_out, num_meta_loras * r); rank slot j belongs to meta-LoRA j // r. The gate holds one row per sample of x.
    """
    if lora_A.dim() != 2 or lora_B.dim() != 2:
        raise ValueError(f"lora_A and lora_B must be 2-D, got {tuple(lora_A.shape)} and {tuple(lora_B.shape)}")
    total_rank = lora_A.shape[0]
    if total_rank % num_meta_loras != 0:
        raise ValueError(f"lora_A has {total_rank} rows, not a multiple of num_meta_loras={num_meta_loras}")
    if lora_B.shape[1] != total_rank:
        raise ValueError(f"lora_B must have {total_rank} columns to match lora_A, got {tuple(lora_B.shape)}")
    if x.shape[-1] != lora_A.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} features but lora_A expects d_in={lora_A.shape[1]}")
    if gate.dim() != 2 or gate.shape[1] != num_meta_loras:
        raise ValueError(f"gate must be (batch, {num_meta_loras}), got {tuple(gate.shape)}")
    if x.dim() < 2 or gate.shape[0] != x.shape[0]:
        raise ValueError(f"gate has {gate.shape[0]} rows but x has batch size {x.shape[0] if x.dim() else 0}")
