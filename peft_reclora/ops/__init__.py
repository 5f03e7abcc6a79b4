"""The gate-weighted meta-LoRA computation: one entry point, several backends.

``meta_lora`` computes, for x of shape (batch, ..., d_in) and a per-sample gate of shape (batch, N),

    delta = s * sum_k gate[:, k] * (x A_k^T) B_k^T          (mixing="output", the paper)
    delta = s * x (sum_k gate[:, k] A_k)^T (sum_k gate[:, k] B_k)^T   (mixing="weights", the published code)

from the concatenated banks lora_A (N*r, d_in) and lora_B (d_out, N*r), optionally fused with the frozen base layer.

Backends:
- ``"reference"``: per-meta-LoRA Python loop, the test oracle (slow);
- ``"torch"``: fused PyTorch autograd Function (two GEMMs, any device);
- ``"triton"``: custom GPU kernels (CUDA, or CPU tensors under ``TRITON_INTERPRET=1`` for tests);
- ``"auto"`` (default): Triton for float16/bfloat16 tensors on CUDA when Triton is installed, else fused PyTorch
  (float32 products would run on Triton's FMA path unless TF32 is allowed, slower than cuBLAS; on CPU the
  interpreter is for tests only).
The ``PEFT_RECLORA_BACKEND`` environment variable overrides ``"auto"``.

Inside ``torch.autocast`` every backend computes in the autocast dtype, as ``nn.Linear`` does (see ``autocast``).
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .autocast import autocast_active, autocast_disabled, compute_dtype
from .reference import meta_lora_reference
from .shapes import MIXING_MODES, check_meta_lora_shapes
from .torch_fused import meta_lora_torch


BACKENDS = ("auto", "torch", "triton", "reference")  # RecLoraConfig.kernel_backend takes these
BACKEND_ENV_VAR = "PEFT_RECLORA_BACKEND"

__all__ = [
    "BACKENDS",
    "MIXING_MODES",
    "check_base_shapes",
    "compute_dtype",
    "meta_lora",
    "meta_lora_reference",
    "meta_lora_torch",
    "resolve_backend",
]


def triton_available() -> bool:
    # Local import: loading Triton takes a while, and only a run that may pick the Triton backend needs it.
    from . import triton_kernels

    return triton_kernels.is_available()


AUTO_TRITON_DTYPES = (torch.float16, torch.bfloat16)


def resolve_backend(
    backend: Optional[str],
    device: torch.device,
    dtype: Optional[torch.dtype] = None,
    *,
    use_environment: bool = True,
    source: str = "backend",
) -> str:
    """Turn ``None``/``"auto"`` (or, with ``use_environment``, the environment override) into a concrete backend for
    ``dtype`` tensors on ``device``. RecLoRA layers resolve once per model call and pass the result down."""
    requested = backend or "auto"
    if requested == "auto" and use_environment:
        override = os.environ.get(BACKEND_ENV_VAR) or "auto"
        if override != "auto":
            requested, source = override, f"the {BACKEND_ENV_VAR} environment variable"
    if requested not in BACKENDS:
        raise ValueError(f"Unknown meta-LoRA backend {requested!r} (from {source}); choose one of {BACKENDS}")
    if requested != "auto":
        return requested
    if device.type == "cuda" and (dtype is None or dtype in AUTO_TRITON_DTYPES) and triton_available():
        return "triton"
    return "torch"


def check_base_shapes(
    x: torch.Tensor,
    d_out: int,
    base_weight: Optional[torch.Tensor],
    base_bias: Optional[torch.Tensor],
    base_output: Optional[torch.Tensor],
) -> None:
    """Raise a ValueError naming the base tensor that does not fit x (..., d_in) and the adapter's d_out."""
    if base_weight is not None and base_output is not None:
        raise ValueError("Pass either base_weight (fused base) or base_output (post-hoc add), not both")
    if base_bias is not None and base_weight is None:
        raise ValueError("base_bias needs base_weight; with an opaque base, pass its full output as base_output")
    if base_weight is not None and tuple(base_weight.shape) != (d_out, x.shape[-1]):
        raise ValueError(f"base_weight must be (d_out, d_in) = {(d_out, x.shape[-1])}, got {tuple(base_weight.shape)}")
    if base_bias is not None and tuple(base_bias.shape) != (d_out,):
        raise ValueError(f"base_bias must be ({d_out},), got {tuple(base_bias.shape)}")
    if base_output is not None and tuple(base_output.shape) != (*x.shape[:-1], d_out):
        raise ValueError(
            f"base_output must have x's leading shape and d_out features, {(*x.shape[:-1], d_out)}, "
            f"got {tuple(base_output.shape)}"
        )


def meta_lora(
    x: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    gate: torch.Tensor,
    scaling: float,
    num_meta_loras: int,
    *,
    mixing: str = "output",
    base_weight: Optional[torch.Tensor] = None,
    base_bias: Optional[torch.Tensor] = None,
    base_output: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Gate-weighted meta-LoRA.

    Args:
        x: input, (batch, ..., d_in); every row of sample b uses gate[b].
        lora_A: concatenated down-projections, (num_meta_loras * r, d_in).
        lora_B: concatenated up-projections, (d_out, num_meta_loras * r).
        gate: per-sample mixing weights, (batch, num_meta_loras).
        scaling: lora_alpha / r.
        mixing: ``"output"`` or ``"weights"`` (see the module docstring).
        base_weight, base_bias: the frozen ``nn.Linear`` weight (d_out, d_in) and bias; when given, the result is the
            full layer output x W^T + b + delta (adapter first, base accumulated into it).
        base_output: an already computed base output (quantized or opaque base); the result is base_output + delta and
            may reuse its storage when no gradient is recorded.
        backend: see the module docstring.

    Returns:
        The delta, or the full layer output when a base is given, with x's leading shape and x's dtype (inside
        ``torch.autocast``, the autocast dtype, as ``nn.Linear`` returns there).
    """
    check_meta_lora_shapes(x, lora_A, lora_B, gate, num_meta_loras)
    if mixing not in MIXING_MODES:
        raise ValueError(f"mixing must be one of {MIXING_MODES}, got {mixing!r}")
    check_base_shapes(x, lora_B.shape[0], base_weight, base_bias, base_output)
    if not autocast_active(x.device):
        return _dispatch(x, lora_A, lora_B, gate, scaling, num_meta_loras, mixing, base_weight, base_bias,
                         base_output, backend)
    # Cast once to the dtype autocast gives a linear layer, then keep autocast out of the backend's own ops.
    x = x.to(compute_dtype(x))
    with autocast_disabled(x.device):
        return _dispatch(x, lora_A, lora_B, gate, scaling, num_meta_loras, mixing, base_weight, base_bias,
                         base_output, backend)


def _dispatch(x, lora_A, lora_B, gate, scaling, num_meta_loras, mixing, base_weight, base_bias, base_output, backend):
    """Run the chosen backend on checked inputs; it computes in x's dtype."""
    chosen = resolve_backend(backend, x.device, x.dtype)
    if chosen == "triton":
        # Local import: loading Triton takes a while, and only the Triton backend needs it.
        from .triton_kernels import meta_lora_triton

        return meta_lora_triton(
            x, lora_A, lora_B, gate, scaling, num_meta_loras, mixing, base_weight, base_bias, base_output
        )
    if chosen == "reference":
        delta = meta_lora_reference(
            x, lora_A.to(x.dtype), lora_B.to(x.dtype), gate.to(x.dtype), scaling, num_meta_loras, mixing
        )
        if base_weight is not None:
            return (
                torch.nn.functional.linear(
                    x, base_weight.to(x.dtype), None if base_bias is None else base_bias.to(x.dtype)
                )
                + delta
            )
        if base_output is not None:
            return base_output.to(x.dtype) + delta
        return delta
    return meta_lora_torch(
        x, lora_A, lora_B, gate, scaling, num_meta_loras, mixing, base_weight, base_bias, base_output
    )
