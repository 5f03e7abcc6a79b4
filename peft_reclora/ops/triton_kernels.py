"""Triton backend of the gate-weighted meta-LoRA: three kernels around cuBLAS, as one autograd Function.

With the banks concatenated (A: (R, d_in), B: (d_out, R), R = num_meta_loras * r; rank slot j belongs to meta-LoRA
j // r, and the kernels' ``E`` axis (``BLOCK_E``, ``offs_e``) runs over the meta-LoRAs) and T = batch * rows_per_sample
input rows, the layer is y = x W^T + b + S' B^T with S = x A^T and S' = mix(gate, S) the gate applied per (sample,
meta-LoRA) to the narrow intermediate (see ``torch_fused._mix``). S is T x R (T=32768, R=128: 16 MB in fp32), so what
costs time is the number of passes over the T x d tensors; the design keeps cuBLAS for the frozen base GEMM and adds as
few passes as the adapter allows.

Forward
  K1 ``shrink_gate`` (triton_forward): S' = mix(gate, x A^T). Grid (row blocks, SPLIT_K); each program owns all R
     rank slots of its rows (BLOCK_R = next power of two >= R, so one program covers every meta-LoRA and the gate can
     be applied in its epilogue), reads its slice of x once and accumulates in fp32. When there are too few row blocks
     to fill the GPU (small T) the d_in reduction is split over SPLIT_K programs that add into a zeroed fp32
     workspace with atomics; the gate is linear in S, so it is applied to each partial before the add. For training
     it also keeps the pre-gate S (fp32) for the backward.
  K2 ``expand``: Z = S' B^T (+ bias), written once in the compute dtype. Plain ``nn.Linear`` base: then cuBLAS
     ``Z.addmm_(x, W^T)`` with beta=1 accumulates the base GEMM into Z (reading C overlaps with the compute-bound
     GEMM), so the adapter adds no pass over the output. Opaque base (quantized, hooked): K2 adds S' B^T into the
     given base output (in place when no gradient is recorded).
Backward
  K3 ``grad_intermediate`` (triton_backward): one pass over dY per row block computes dS' = dY B entirely in
     registers (the row block loops over all of d_out, so no atomics), recomputes S' from the saved S and the gate,
     and in its epilogue produces dS = d mix / dS (both mixing modes) and the per-row, per-meta-LoRA gate-gradient
     partials (summed per sample by one small reduction). dB = dY^T S' either rides along in the same pass
     (per-tile partials added with fp32 atomics) or runs as one cuBLAS GEMM: the fused form issues
     R / BLOCK_M atomic adds per element of dY, which only pays while R is small next to BLOCK_M (R <= BLOCK_M / 4 by
     default, e.g. R=16 with 64-row blocks); for R=128 a second streaming read of dY by cuBLAS is cheaper than two
     fp32 atomic adds per dY element. Then dA = dS^T x (cuBLAS) and dX = dS A with cuBLAS ``addmm_`` (beta=1) adding
     dY W for a plain base. The base weight and bias get gradients when they require them.

Numerics: inputs in fp16, bf16 or fp32 (the compute dtype is x's; banks and base weights are cast to it, like the
PyTorch backend); every product accumulates in fp32; S, S' and the gate stay fp32 between kernels, S' is rounded to
the compute dtype only as an operand of the expand (as a GEMM in that dtype would). fp32 products use TF32 exactly
when ``torch.backends.cuda.matmul.allow_tf32`` allows it for torch's own matmuls. bfloat16 needs a GPU: Triton's CPU
interpreter does not compute bfloat16 products.

Tile sizes and SPLIT_K come from simple shape rules (``_plan``), no autotuning, so correctness never depends on a
tuning run; the tests compile every launch of the benchmark shapes for sm_90 and check shared memory, tensor-core use
and register spills. ``kernel_settings`` overrides the rules (tests use it to cover every code path, benchmarks to
compare tilings) and can poison every buffer a kernel must fully write with NaN, so that an element a kernel fails
to write shows up in the result.

The kernels are compiled with ``triton.jit`` on first use for CUDA tensors; CPU tensors run them through Triton's
interpreter, which is how the test suite checks them on machines without a GPU (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Callable, Iterator, Optional

import torch

from .autocast import backward_without_autocast
from .torch_fused import input_and_base_grads, meta_lora_torch


try:
    import triton

    from .triton_backward import grad_intermediate_kernel
    from .triton_forward import expand_kernel, shrink_gate_kernel

    _IMPORT_ERROR: Optional[BaseException] = None
except ImportError as error:  # triton is an optional dependency (extra "triton")
    triton = None
    _IMPORT_ERROR = error

INTERPRET_ENV_VAR = "TRITON_INTERPRET"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

__all__ = ["INTERPRET_ENV_VAR", "SUPPORTED_DTYPES", "is_available", "kernel_settings", "meta_lora_triton"]


def _interpreter_enabled() -> bool:
    return os.environ.get(INTERPRET_ENV_VAR, "0").strip().lower() in ("1", "true", "yes", "on")


def is_available() -> bool:
    """Triton imports and can run here: a CUDA device, or CPU tensors through the interpreter
    (``TRITON_INTERPRET=1``)."""
    return triton is not None and (torch.cuda.is_available() or _interpreter_enabled())


# ---------------------------------------------------------------------------------------------------------------------
# settings and launch plans


@dataclasses.dataclass(frozen=True)
class KernelSettings:
    """Overrides of the automatic launch plan; ``None`` keeps the automatic choice."""

    split_k: Optional[int] = None  # K1's split of the d_in reduction
    block_m: Optional[int] = None  # rows per program in all three kernels
    fuse_grad_b: Optional[bool] = None  # dB inside K3's pass over dY (atomics) instead of a cuBLAS GEMM
    poison_outputs: bool = False  # fill every buffer a kernel must fully write with NaN first


_settings = KernelSettings()


@contextlib.contextmanager
def kernel_settings(**overrides) -> Iterator[KernelSettings]:
    """Temporarily override the launch plan, e.g. ``with kernel_settings(split_k=4, poison_outputs=True): ...``."""
    global _settings
    previous = _settings
    _settings = dataclasses.replace(previous, **overrides)
    try:
        yield _settings
    finally:
        _settings = previous


@dataclasses.dataclass(frozen=True)
class _Tiles:
    block_m: int  # rows per program
    block_n: int  # shrink: BLOCK_K of the d_in loop; expand: output columns; grad: d_out columns per loop step
    num_warps: int


@dataclasses.dataclass(frozen=True)
class _Plan:
    shrink: _Tiles
    expand: _Tiles
    grad: _Tiles
    block_r: int  # next power of two >= R (>= 16, the smallest tl.dot size): one program holds every rank slot
    block_e: int  # next power of two >= num_meta_loras (>= 16)
    block_rank: int  # next power of two >= r (>= 16), for the weights-mode mixing
    split_k: int
    k_per_split: int
    fuse_grad_b: bool
    dot_precision: str


def _next_power_of_2(value: int, minimum: int = 16) -> int:
    return max(minimum, 1 << (max(value, 1) - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _gpu_sms(device: torch.device) -> Optional[int]:
    """Streaming multiprocessors of a CUDA device; ``None`` for the interpreter."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None


def _warps(block_m: int, block_cols: int, threshold: int = 64 * 128) -> int:
    """Eight warps once a program's fp32 accumulator reaches ``threshold`` elements, so it stays within registers."""
    return 8 if block_m * block_cols >= threshold else 4


def _plan(
    num_rows: int, d_in: int, d_out: int, total_rank: int, num_meta_loras: int, mixing: str, dtype: torch.dtype,
    gpu_sms: Optional[int],
) -> _Plan:
    """Tile sizes and split for one call. ``gpu_sms`` is the SM count of the CUDA device (``None``: interpreter).

    Rules of thumb, not autotuned (checked on sm_90 for spills by the tests): about two programs per SM for the
    streaming kernels; the rank axis is never split (the gate needs every slot of a row); larger row blocks once
    there are enough of them, so the narrow operands (A, B, S') are re-read from L2 fewer times; smaller ones at
    small T to fill the GPU; split-K only while the row blocks alone cannot fill it.
    """
    settings = _settings
    on_gpu = gpu_sms is not None
    block_r = _next_power_of_2(total_rank)
    narrow = block_r <= 128  # (BLOCK_M, BLOCK_R) fp32 accumulators: halve the rows for R > 128
    target = 2 * gpu_sms if on_gpu else 4
    block_k = 64 if dtype != torch.float32 else 32

    if on_gpu:
        shrink_m = 128 if _cdiv(num_rows, 128) >= gpu_sms else 64
        grad_m = 64 if _cdiv(num_rows, 64) >= gpu_sms else 32
        big_expand = _cdiv(num_rows, 128) * _cdiv(d_out, 256) >= target
        expand_m, expand_n = (128, 256) if big_expand else (64, 128)
        grad_n = 64
    else:  # the interpreter: small tiles keep its per-program numpy work small
        shrink_m, grad_m, expand_m, expand_n, grad_n = 64, 64, 64, 64, 32
    if not narrow:
        shrink_m, grad_m = max(16, shrink_m // 2), max(16, grad_m // 2)
    if mixing == "weights":  # its epilogues hold several more (BLOCK_M, BLOCK_R) fp32 tiles
        shrink_m, grad_m = min(shrink_m, 64), min(grad_m, 32)
    if settings.block_m is not None:
        shrink_m = grad_m = expand_m = settings.block_m

    row_blocks = _cdiv(num_rows, shrink_m)
    if settings.split_k is not None:
        split_k = settings.split_k
    elif on_gpu and row_blocks >= gpu_sms:
        split_k = 1
    else:
        split_k = max(1, min(_cdiv(target, row_blocks), _cdiv(d_in, 4 * block_k), 32))
    k_per_split = _cdiv(_cdiv(d_in, split_k), block_k) * block_k
    split_k = _cdiv(d_in, k_per_split)  # no empty splits
    # dB inside K3's pass over dY costs R / BLOCK_M fp32 atomics per dY element: only worth it for small R.
    fuse_grad_b = settings.fuse_grad_b if settings.fuse_grad_b is not None else 4 * block_r <= grad_m
    if dtype == torch.float32:
        dot_precision = "tf32" if on_gpu and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    else:
        dot_precision = "tf32"  # the default; it only concerns fp32 operands
    return _Plan(
        shrink=_Tiles(shrink_m, block_k, _warps(shrink_m, block_r)),
        expand=_Tiles(expand_m, expand_n, _warps(expand_m, expand_n)),
        grad=_Tiles(grad_m, grad_n, _warps(grad_m, block_r, threshold=32 * 128)),
        block_r=block_r,
        block_e=_next_power_of_2(num_meta_loras),
        block_rank=_next_power_of_2(total_rank // num_meta_loras),
        split_k=split_k,
        k_per_split=k_per_split,
        fuse_grad_b=fuse_grad_b,
        dot_precision=dot_precision,
    )


def _empty(shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A buffer the next kernel writes completely (NaN-filled under ``poison_outputs``)."""
    if _settings.poison_outputs:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


_compiled: dict[tuple[Callable, bool], Callable] = {}


def _kernel(source: Callable, device: torch.device) -> Callable:
    """The launchable kernel for tensors on ``device``: compiled for CUDA, interpreted for CPU tensors."""
    interpret = device.type != "cuda"
    if interpret and not _interpreter_enabled():
        raise RuntimeError(
            f"The Triton meta-LoRA kernels need CUDA tensors, got tensors on {device}; set {INTERPRET_ENV_VAR}=1 to "
            "run them through Triton's interpreter on CPU (slow, for tests), or use backend='torch'."
        )
    key = (source, interpret)
    if key not in _compiled:
        if interpret:
            # Local import: Triton's CPU interpreter is for tests; GPU runs never load it.
            from triton.runtime.interpreter import InterpretedFunction

            _compiled[key] = InterpretedFunction(source)
        else:
            _compiled[key] = triton.jit(source)
    return _compiled[key]


def _launch_options(tiles: _Tiles, device: torch.device) -> dict:
    return {"num_warps": tiles.num_warps} if device.type == "cuda" else {}


# ---------------------------------------------------------------------------------------------------------------------
# kernel wrappers


def _shrink_gate(x2, A, gate, scaling, num_meta_loras, rows_per_sample, mixing, store_raw, plan):
    num_rows, d_in = x2.shape
    total_rank = A.shape[0]
    device = x2.device
    if plan.split_k == 1:
        s_mixed = _empty((num_rows, total_rank), torch.float32, device)
        s_raw = _empty((num_rows, total_rank), torch.float32, device) if store_raw else s_mixed
    else:  # partial sums are added atomically
        s_mixed = torch.zeros((num_rows, total_rank), dtype=torch.float32, device=device)
        s_raw = torch.zeros_like(s_mixed) if store_raw else s_mixed
    tiles = plan.shrink
    grid = (_cdiv(num_rows, tiles.block_m), plan.split_k)
    _kernel(shrink_gate_kernel, device)[grid](
        x2, A, gate, s_mixed, s_raw,
        num_rows, d_in, total_rank, num_meta_loras, total_rank // num_meta_loras, rows_per_sample, float(scaling),
        plan.k_per_split,
        x2.stride(0), x2.stride(1), A.stride(0), A.stride(1),
        BLOCK_M=tiles.block_m, BLOCK_K=tiles.block_n, BLOCK_R=plan.block_r, BLOCK_RANK=plan.block_rank,
        SPLIT_K=plan.split_k, MIX_WEIGHTS=mixing == "weights", STORE_RAW=store_raw, DOT_PRECISION=plan.dot_precision,
        **_launch_options(tiles, device),
    )
    return s_mixed, (s_raw if store_raw else None)


def _expand(s_mixed, B, bias, base, out, plan):
    """out = s_mixed B^T (+ bias) (+ base); ``base`` may be ``out`` itself."""
    num_rows, total_rank = s_mixed.shape
    d_out = B.shape[0]
    device = s_mixed.device
    tiles = plan.expand
    grid = (_cdiv(num_rows, tiles.block_m) * _cdiv(d_out, tiles.block_n),)
    base_arg = base if base is not None else out
    _kernel(expand_kernel, device)[grid](
        s_mixed, B, bias if bias is not None else B, base_arg, out,
        num_rows, d_out, total_rank,
        B.stride(0), B.stride(1), base_arg.stride(0), base_arg.stride(1), out.stride(0), out.stride(1),
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
        BLOCK_RK=min(plan.block_r, 64 if B.element_size() <= 2 else 32),  # fp32 banks: smaller tiles, no spills
        HAS_BIAS=bias is not None, ADD_BASE=base is not None, DOT_PRECISION=plan.dot_precision,
        **_launch_options(tiles, device),
    )
    return out


def _grad_intermediate(dY, B, s_raw, gate, scaling, num_meta_loras, rows_per_sample, mixing, gate_grad, grad_b, plan):
    """Returns dS (compute dtype), per-row gate partials (fp32 or None), and dB (fp32 or None)."""
    num_rows, d_out = dY.shape
    total_rank = B.shape[1]
    device = dY.device
    fuse_grad_b = grad_b and plan.fuse_grad_b
    grad_s = _empty((num_rows, total_rank), dY.dtype, device)
    gate_rows = _empty((num_rows, num_meta_loras), torch.float32, device) if gate_grad else grad_s
    s_mixed = _empty((num_rows, total_rank), dY.dtype, device) if grad_b and not fuse_grad_b else grad_s
    grad_B = torch.zeros((d_out, total_rank), dtype=torch.float32, device=device) if fuse_grad_b else grad_s
    tiles = plan.grad
    grid = (_cdiv(num_rows, tiles.block_m),)
    _kernel(grad_intermediate_kernel, device)[grid](
        dY, B, s_raw, gate,
        grad_s, gate_rows, s_mixed, grad_B,
        num_rows, d_out, total_rank, num_meta_loras, total_rank // num_meta_loras, rows_per_sample, float(scaling),
        dY.stride(0), dY.stride(1), B.stride(0), B.stride(1),
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_R=plan.block_r, BLOCK_E=plan.block_e,
        BLOCK_RANK=plan.block_rank,
        MIX_WEIGHTS=mixing == "weights", GATE_GRAD=gate_grad, STORE_MIXED=grad_b and not fuse_grad_b,
        FUSE_GRAD_B=fuse_grad_b, DOT_PRECISION=plan.dot_precision,
        **_launch_options(tiles, device),
    )
    if grad_b and not fuse_grad_b:
        grad_B = dY.t() @ s_mixed
    return grad_s, (gate_rows if gate_grad else None), (grad_B if grad_b else None)


# ---------------------------------------------------------------------------------------------------------------------
# forward / backward


def _forward(
    x, lora_A, lora_B, gate, base_weight, base_bias, base_output, scaling, num_meta_loras, mixing, store_raw, inplace
):
    compute_dtype = x.dtype
    batch, d_in = x.shape[0], x.shape[-1]
    x2 = x.reshape(-1, d_in)
    num_rows = x2.shape[0]
    A, B = lora_A, lora_B  # read in their own dtype: the kernels round tiles to the compute dtype
    d_out = B.shape[0]
    gate32 = gate.to(torch.float32).contiguous()
    plan = _plan(num_rows, d_in, d_out, A.shape[0], num_meta_loras, mixing, compute_dtype, _gpu_sms(x.device))
    rows_per_sample = num_rows // batch
    s_mixed, s_raw = _shrink_gate(x2, A, gate32, scaling, num_meta_loras, rows_per_sample, mixing, store_raw, plan)

    if base_output is not None:
        base2 = base_output.reshape(-1, d_out)
        if inplace and base_output.dtype == compute_dtype and base_output.is_contiguous():
            out = _expand(s_mixed, B, None, base2, base2, plan)
        else:
            out = _expand(s_mixed, B, None, base2, _empty((num_rows, d_out), compute_dtype, x.device), plan)
    else:
        bias = base_bias.to(compute_dtype) if (base_weight is not None and base_bias is not None) else None
        out = _expand(s_mixed, B, bias, None, _empty((num_rows, d_out), compute_dtype, x.device), plan)
        if base_weight is not None:
            out.addmm_(x2, base_weight.to(compute_dtype).t())
    return out.view(*x.shape[:-1], d_out), s_raw, plan


class MetaLoraTritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lora_A, lora_B, gate, base_weight, base_bias, base_output, scaling, num_meta_loras, mixing):
        out, s_raw, plan = _forward(
            x, lora_A, lora_B, gate, base_weight, base_bias, base_output, scaling, num_meta_loras, mixing, True, False
        )
        ctx.save_for_backward(x, s_raw, gate, lora_A, lora_B, base_weight)
        ctx.scaling, ctx.num_meta_loras, ctx.mixing, ctx.plan = scaling, num_meta_loras, mixing, plan
        ctx.has_bias = base_bias is not None
        ctx.bias_dtype = base_bias.dtype if base_bias is not None else None
        ctx.base_output_dtype = base_output.dtype if base_output is not None else None
        return out

    @staticmethod
    @backward_without_autocast
    def backward(ctx, grad_out):
        x, s_raw, gate, lora_A, lora_B, base_weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        compute_dtype = x.dtype
        batch, d_in = x.shape[0], x.shape[-1]
        x2 = x.reshape(-1, d_in)
        num_rows = x2.shape[0]
        A = lora_A.to(compute_dtype)  # an operand of cuBLAS below
        B = lora_B  # K3 rounds its tiles to the compute dtype
        dY = grad_out.reshape(num_rows, B.shape[0]).to(compute_dtype)
        gate32 = gate.to(torch.float32).contiguous()

        grad_s = grad_B = grad_gate = None
        if needs[0] or needs[1] or needs[2] or needs[3]:
            grad_s, gate_rows, grad_B32 = _grad_intermediate(
                dY, B, s_raw, gate32, ctx.scaling, ctx.num_meta_loras, num_rows // batch, ctx.mixing,
                gate_grad=needs[3], grad_b=needs[2], plan=ctx.plan,
            )
            if needs[2]:
                grad_B = grad_B32.to(lora_B.dtype)
            if needs[3]:
                grad_gate = gate_rows.view(batch, -1, ctx.num_meta_loras).sum(dim=1).to(gate.dtype)
        grad_x, grad_A, grad_W, grad_bias, grad_base_out = input_and_base_grads(
            ctx, x, x2, grad_s, A, lora_A.dtype, dY, grad_out, base_weight
        )
        return grad_x, grad_A, grad_B, grad_gate, grad_W, grad_bias, grad_base_out, None, None, None


def meta_lora_triton(
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
    """Same contract as ``peft_reclora.ops.meta_lora`` (shapes checked there), computed by the Triton kernels.

    Without autograd, ``base_output`` of the compute dtype is accumulated into in place. An empty input (no rows)
    goes through the PyTorch backend, which handles it without launching kernels.
    """
    if triton is None:
        raise RuntimeError(f"The Triton meta-LoRA backend needs the `triton` package: {_IMPORT_ERROR}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"The Triton meta-LoRA backend supports x of dtype float16, bfloat16 or float32, got {x.dtype}; "
            "use backend='torch' for other dtypes"
        )
    if x.dtype == torch.bfloat16 and x.device.type == "cpu":
        raise ValueError(
            "Triton's CPU interpreter does not compute bfloat16 products (it multiplies the raw bit patterns, "
            "triton-lang/triton#11584); run bfloat16 on a CUDA device, or use float16/float32 or backend='torch' on "
            "CPU"
        )
    tensors = (x, lora_A, lora_B, gate, base_weight, base_bias, base_output)
    if x.numel() == 0:
        return meta_lora_torch(*tensors[:4], scaling, num_meta_loras, mixing, *tensors[4:])
    for name, tensor in zip(("x", "lora_A", "lora_B", "gate", "base_weight", "base_bias", "base_output"), tensors):
        if tensor is not None and tensor.device != x.device:
            raise ValueError(f"{name} is on {tensor.device} but x is on {x.device}; move them to one device")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return MetaLoraTritonFunction.apply(*tensors, float(scaling), int(num_meta_loras), mixing)
    out, _, _ = _forward(*tensors, float(scaling), int(num_meta_loras), mixing, False, True)
    return out
