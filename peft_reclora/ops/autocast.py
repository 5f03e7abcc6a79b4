"""How meta-LoRA follows ``torch.autocast``: like ``nn.Linear``, it computes in the autocast dtype.

Autocast rewrites some of the fused backends' ops (``@``, ``addmm``) and not others (the in-place ``addmm_`` that
accumulates the base GEMM, the Triton launches), so letting it act inside a backend mixes dtypes. Instead the entry
point casts the input once to the dtype autocast would give a linear layer and runs the backend with autocast off; the
backends already compute in their input's dtype (banks and base weights are rounded to it). Backward passes run with
autocast off as well, whatever region ``backward()`` is called from, as ``torch.amp.custom_bwd`` would arrange.
"""

from __future__ import annotations

import contextlib
import functools

import torch


# The dtypes autocast lowers; it leaves float64 (and integer) tensors alone.
AUTOCAST_ELIGIBLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def autocast_active(device: torch.device) -> bool:
    """Whether a ``torch.autocast`` region is enabled for ``device``'s type in the current thread."""
    device_type = device.type
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype meta-LoRA computes in for input ``x``: the autocast dtype inside an autocast region for x's device
    (what ``nn.Linear`` computes in there), otherwise x's own dtype."""
    if x.dtype in AUTOCAST_ELIGIBLE_DTYPES and autocast_active(x.device):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """A region with autocast off for ``device``'s type (a no-op where autocast does not exist for it)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def backward_without_autocast(backward):
    """Decorate an autograd Function's ``backward`` so that it runs with autocast off for its gradients' device: the
    saved tensors already hold the forward's compute dtype, and autocast would recast some of the backward's ops."""

    @functools.wraps(backward)
    def run(ctx, *grads):
        device = next((grad.device for grad in grads if isinstance(grad, torch.Tensor)), None)
        with autocast_disabled(device) if device is not None else contextlib.nullcontext():
            return backward(ctx, *grads)

    return run
