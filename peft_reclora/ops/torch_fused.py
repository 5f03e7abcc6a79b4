"""Fused, batched, gate-weighted meta-LoRA in plain PyTorch: two GEMMs around a per-sample scaling of the narrow
intermediate, as a custom autograd Function.

With the banks concatenated (A: (N*r, d_in), B: (d_out, N*r)) the adapter is one rank-N*r LoRA whose intermediate
S = x A^T (T x N*r) is rescaled per (sample, meta-LoRA) by the gate. Nothing loops over meta-LoRAs and no per-sample
weight matrix is built. The Function saves only x, S (pre-gate, T x N*r: small), the gate and the weights, and computes
every gradient (x, banks, gate, and the base weight/bias if they train) in one backward with cuBLAS GEMMs.

Orderings (the measured cost unit is a pass over a T x d tensor, see the kernel notes):
- ``base_weight`` given (plain Linear base): adapter first, Z = S' B^T (+ bias), then Z += x W^T via ``addmm_`` with
  beta=1, so the base GEMM accumulates into the adapter output and no extra pass over the output is needed;
- ``base_output`` given (quantized or opaque base): the delta is accumulated into a copy-free view of the base output;
- neither: the delta alone.
"""

from __future__ import annotations

from typing import Optional

import torch

from .autocast import backward_without_autocast


def _mix(S4: torch.Tensor, gate4: torch.Tensor, scaling: float, mixing: str) -> torch.Tensor:
    """Apply the gate to the intermediate S viewed as (batch, rows, N, r); gate4 is (batch, 1, N, 1)."""
    if mixing == "output":
        return S4 * (gate4 * scaling)
    # weights: (sum_k g_k A_k) then (sum_l g_l B_l) == expand(g) * sum_k g_k S_k
    mixed = (S4 * gate4).sum(dim=2, keepdim=True)
    return (gate4 * scaling) * mixed


def _fused_forward(
    x, lora_A, lora_B, gate, base_weight, base_bias, base_output, scaling, num_meta_loras, mixing, inplace
):
    """Shared forward; returns the output (shaped like x with d_out features) and the pre-gate intermediate S."""
    compute_dtype = x.dtype
    batch, d_in = x.shape[0], x.shape[-1]
    x2 = x.reshape(-1, d_in)
    A = lora_A.to(compute_dtype)
    B = lora_B.to(compute_dtype)
    rank = A.shape[0] // num_meta_loras
    gate4 = gate.to(compute_dtype).view(batch, 1, num_meta_loras, 1)

    S = x2 @ A.t()  # (T, N*r)
    rows = x2.shape[0] // batch if batch else 0  # explicit, so that an empty batch reshapes too
    S_mixed = _mix(S.view(batch, rows, num_meta_loras, rank), gate4, scaling, mixing).reshape(S.shape)
    d_out = B.shape[0]
    if base_weight is not None:
        if base_bias is not None:
            out = torch.addmm(base_bias.to(compute_dtype), S_mixed, B.t())
        else:
            out = S_mixed @ B.t()
        out.addmm_(x2, base_weight.to(compute_dtype).t())
    elif base_output is not None:
        out = base_output.reshape(-1, d_out)
        if inplace and out.dtype == compute_dtype and out.is_contiguous():
            out.addmm_(S_mixed, B.t())
        else:
            out = torch.addmm(out.to(compute_dtype), S_mixed, B.t())
    else:
        out = S_mixed @ B.t()
    return out.view(*x.shape[:-1], d_out), S


class MetaLoraFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        lora_A: torch.Tensor,
        lora_B: torch.Tensor,
        gate: torch.Tensor,
        base_weight: Optional[torch.Tensor],
        base_bias: Optional[torch.Tensor],
        base_output: Optional[torch.Tensor],
        scaling: float,
        num_meta_loras: int,
        mixing: str,
    ) -> torch.Tensor:
        out, S = _fused_forward(
            x, lora_A, lora_B, gate, base_weight, base_bias, base_output, scaling, num_meta_loras, mixing, False
        )
        ctx.save_for_backward(x, S, gate, lora_A, lora_B, base_weight)
        ctx.scaling, ctx.num_meta_loras, ctx.mixing = scaling, num_meta_loras, mixing
        ctx.has_bias = base_bias is not None
        ctx.bias_dtype = base_bias.dtype if base_bias is not None else None
        ctx.base_output_dtype = base_output.dtype if base_output is not None else None
        return out

    @staticmethod
    @backward_without_autocast
    def backward(ctx, grad_out: torch.Tensor):
        x, S, gate, lora_A, lora_B, base_weight = ctx.saved_tensors
        scaling, num_meta_loras, mixing = ctx.scaling, ctx.num_meta_loras, ctx.mixing
        compute_dtype = x.dtype
        batch, d_in = x.shape[0], x.shape[-1]
        x2 = x.reshape(-1, d_in)
        A = lora_A.to(compute_dtype)
        B = lora_B.to(compute_dtype)
        rank = A.shape[0] // num_meta_loras
        dY = grad_out.reshape(-1, B.shape[0]).to(compute_dtype)
        gate4 = gate.to(compute_dtype).view(batch, 1, num_meta_loras, 1)
        S4 = S.view(batch, x2.shape[0] // batch if batch else 0, num_meta_loras, rank)

        needs = ctx.needs_input_grad
        grad_B = grad_gate = None

        dS_mixed = dY @ B  # (T, N*r)
        dS_mixed4 = dS_mixed.view_as(S4)
        if needs[2]:
            S_mixed = _mix(S4, gate4, scaling, mixing).reshape(S.shape)
            grad_B = (dY.t() @ S_mixed).to(lora_B.dtype)

        # Gate gradients are reduced in at least fp32: they sum T*r products per (sample, meta-LoRA).
        acc = torch.promote_types(compute_dtype, torch.float32)
        if mixing == "output":
            dS = dS_mixed4 * (gate4 * scaling)
            if needs[3]:
                grad_gate = scaling * (dS_mixed4.to(acc) * S4.to(acc)).sum(dim=(1, 3))
        else:
            mixed = (S4 * gate4).sum(dim=2, keepdim=True)
            d_mixed = scaling * (dS_mixed4 * gate4).sum(dim=2, keepdim=True)
            dS = gate4 * d_mixed
            if needs[3]:
                grad_gate = (
                    scaling * (dS_mixed4.to(acc) * mixed.to(acc)).sum(dim=(1, 3))
                    + (d_mixed.to(acc) * S4.to(acc)).sum(dim=(1, 3))
                )
        if grad_gate is not None:
            grad_gate = grad_gate.to(gate.dtype)
        dS = dS.reshape(S.shape)

        grad_x, grad_A, grad_W, grad_bias, grad_base_out = input_and_base_grads(
            ctx, x, x2, dS, A, lora_A.dtype, dY, grad_out, base_weight
        )
        return grad_x, grad_A, grad_B, grad_gate, grad_W, grad_bias, grad_base_out, None, None, None


def input_and_base_grads(ctx, x, x2, dS, A, lora_A_dtype, dY, grad_out, base_weight):
    """The gradients every backend computes alike from dS = dL/d(x A^T) (None when neither x nor A needs one):
    x's (the base's dX accumulated into the adapter's, beta=1), A's, and the base weight's, bias' and output's."""
    needs = ctx.needs_input_grad
    grad_x = grad_A = grad_W = grad_bias = grad_base_out = None
    if needs[1]:
        grad_A = (dS.t() @ x2).to(lora_A_dtype)
    if needs[0]:
        dx = dS @ A
        if base_weight is not None:
            dx.addmm_(dY, base_weight.to(x.dtype))
        grad_x = dx.view(x.shape)
    if base_weight is not None and needs[4]:
        grad_W = (dY.t() @ x2).to(base_weight.dtype)
    if ctx.has_bias and needs[5]:
        grad_bias = dY.sum(0).to(ctx.bias_dtype)
    if needs[6]:
        grad_base_out = grad_out.to(ctx.base_output_dtype)
    return grad_x, grad_A, grad_W, grad_bias, grad_base_out


def meta_lora_torch(
    x: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    gate: torch.Tensor,
    scaling: float,
    num_meta_loras: int,
    mixing: str = "output",
    base_weight: Optional[torch.Tensor] = None,
    base_bias: Optional[torch.Tensor] = None,
    base_output: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Fused meta-LoRA; see the module docstring. Without autograd it skips the Function and, in the post-hoc
    ordering, accumulates into ``base_output`` in place."""
    tensors = (x, lora_A, lora_B, gate, base_weight, base_bias, base_output)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return MetaLoraFunction.apply(*tensors, float(scaling), int(num_meta_loras), mixing)
    out, _ = _fused_forward(*tensors, float(scaling), int(num_meta_loras), mixing, True)
    return out
