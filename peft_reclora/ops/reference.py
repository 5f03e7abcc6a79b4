"""Plain per-meta-LoRA loop: the test oracle for every fast backend.

It follows the paper's formula literally, one meta-LoRA pair at a time, so a fast path that reorders the math can be
checked against it (in float64) forward and backward. It is deliberately slow; never use it on a hot path.
"""

from __future__ import annotations

import torch

from .shapes import MIXING_MODES, check_meta_lora_shapes


def meta_lora_reference(
    x: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    gate: torch.Tensor,
    scaling: float,
    num_meta_loras: int,
    mixing: str = "output",
) -> torch.Tensor:
    """Adapter delta with an explicit loop over meta-LoRAs.

    ``mixing="output"`` (paper, Eq. 11):  delta_b = s * sum_k gate[b, k] * (x_b A_k^T) B_k^T
    ``mixing="weights"`` (published code): delta_b = s * x_b (sum_k gate[b, k] A_k)^T (sum_k gate[b, k] B_k)^T

    Shapes: x (batch, ..., d_in), lora_A (N*r, d_in), lora_B (d_out, N*r), gate (batch, N).
    """
    check_meta_lora_shapes(x, lora_A, lora_B, gate, num_meta_loras)
    if mixing not in MIXING_MODES:
        raise ValueError(f"mixing must be one of {MIXING_MODES}, got {mixing!r}")
    rank = lora_A.shape[0] // num_meta_loras
    batch = x.shape[0]
    if batch == 0:  # nothing to loop over; keep the output shape (and autograd graph) of a real batch
        return x.new_zeros(*x.shape[:-1], lora_B.shape[0]) + 0 * (lora_A.sum() + lora_B.sum() + gate.sum())
    x_rows = x.reshape(batch, -1, x.shape[-1])
    parts_A = [lora_A[k * rank : (k + 1) * rank] for k in range(num_meta_loras)]
    parts_B = [lora_B[:, k * rank : (k + 1) * rank] for k in range(num_meta_loras)]
    outputs = []
    for b in range(batch):
        if mixing == "output":
            delta = 0
            for k in range(num_meta_loras):
                delta = delta + gate[b, k] * ((x_rows[b] @ parts_A[k].T) @ parts_B[k].T)
        else:
            mixed_A = sum(gate[b, k] * parts_A[k] for k in range(num_meta_loras))
            mixed_B = sum(gate[b, k] * parts_B[k] for k in range(num_meta_loras))
            delta = (x_rows[b] @ mixed_A.T) @ mixed_B.T
        outputs.append(scaling * delta)
    return torch.stack(outputs).reshape(*x.shape[:-1], lora_B.shape[0])
