"""Triton forward kernels of the gate-weighted meta-LoRA: ``shrink_gate`` (x A^T with the gate in its epilogue) and
``expand`` (S' B^T, optionally plus a bias or an existing base output).

The functions here are plain Python sources; ``triton_kernels`` turns them into GPU kernels (``triton.jit``) or into
interpreted kernels for CPU tensors (``TRITON_INTERPRET=1``) when they are first launched. They use only builtins of
``triton.language`` (``tl.full``, not the ``@jit`` library helpers ``tl.zeros``, ``tl.sum`` or ``tl.cdiv``), so the
interpreted form works whether or not ``TRITON_INTERPRET`` was set when triton was imported. The design is described
in ``triton_kernels``' module docstring.
"""

import triton.language as tl


def shrink_gate_kernel(
    x_ptr, a_ptr, gate_ptr, s_mixed_ptr, s_raw_ptr,
    num_rows, d_in, total_rank, num_meta_loras, rank, rows_per_sample, scaling, k_per_split,
    stride_xm, stride_xk, stride_ar, stride_ak,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_RANK: tl.constexpr,
    SPLIT_K: tl.constexpr, MIX_WEIGHTS: tl.constexpr, STORE_RAW: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """S'[t, :] = mix(gate[t // rows_per_sample], x[t, :] A^T) for one (row block, K split).

    A may be stored in another float dtype than x (e.g. fp32 adapter weights next to a bf16 model): its tiles are
    rounded to x's dtype as they are loaded, as a cast of the whole bank would, without writing that copy.

    ``s_mixed`` and ``s_raw`` are contiguous fp32 (num_rows, total_rank) buffers. With SPLIT_K > 1 every split adds
    its partial product into them atomically (they must be zeroed first); the gate is linear in S, so applying it to
    each partial before the reduction is exact.
    """
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    row_ok = offs_m < num_rows
    rank_ok = offs_r < total_rank

    acc = tl.full((BLOCK_M, BLOCK_R), 0.0, tl.float32)
    k_start = pid_k * k_per_split
    for k0 in range(0, k_per_split, BLOCK_K):
        offs_k = k_start + k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < d_in
        x_tile = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=row_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        a_tile = tl.load(  # A^T block, (BLOCK_K, BLOCK_R)
            a_ptr + offs_k[:, None] * stride_ak + offs_r[None, :] * stride_ar,
            mask=k_ok[:, None] & rank_ok[None, :],
            other=0.0,
        )
        acc = tl.dot(x_tile, a_tile.to(x_tile.dtype), acc, input_precision=DOT_PRECISION)

    # Epilogue: per-row gate of the row's sample, expanded to rank slots (slot j belongs to meta-LoRA j // rank).
    sample = offs_m // rows_per_sample
    tile_ok = row_ok[:, None] & rank_ok[None, :]
    gate = tl.load(gate_ptr + sample[:, None] * num_meta_loras + (offs_r // rank)[None, :], mask=tile_ok, other=0.0)
    if MIX_WEIGHTS:
        # (sum_k g_k A_k)(sum_l g_l B_l): slot j receives g_{j // rank} * sum_k g_k S[:, k * rank + j % rank].
        # The sum over meta-LoRAs and the broadcast back are two small products with the 0/1 matrix
        # fold[j, i] = [j % rank == i] (BLOCK_R x BLOCK_RANK), cheaper in shared memory than one R x R matrix.
        offs_i = tl.arange(0, BLOCK_RANK)
        fold = ((offs_r[:, None] % rank) == offs_i[None, :]) & rank_ok[:, None]
        unfold = (offs_i[:, None] == (offs_r[None, :] % rank)) & rank_ok[None, :]
        per_position = tl.dot(acc * gate, fold.to(tl.float32), input_precision="ieee")
        mixed = tl.dot(per_position, unfold.to(tl.float32), input_precision="ieee")
        s_mixed = mixed * gate * scaling
    else:
        s_mixed = acc * gate * scaling

    out_offsets = offs_m[:, None] * total_rank + offs_r[None, :]
    if SPLIT_K == 1:
        tl.store(s_mixed_ptr + out_offsets, s_mixed, mask=tile_ok)
        if STORE_RAW:
            tl.store(s_raw_ptr + out_offsets, acc, mask=tile_ok)
    else:
        tl.atomic_add(s_mixed_ptr + out_offsets, s_mixed, mask=tile_ok)
        if STORE_RAW:
            tl.atomic_add(s_raw_ptr + out_offsets, acc, mask=tile_ok)


def expand_kernel(
    s_ptr, b_ptr, bias_ptr, base_ptr, out_ptr,
    num_rows, d_out, total_rank,
    stride_bn, stride_br, stride_basem, stride_basen, stride_om, stride_on,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_RK: tl.constexpr,
    HAS_BIAS: tl.constexpr, ADD_BASE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """out[t, n] = sum_j S'[t, j] B[n, j] (+ bias[n]) (+ base[t, n]), fp32 accumulation, stored in out's dtype.

    S' is the contiguous fp32 (num_rows, total_rank) buffer of ``shrink_gate_kernel``; S' and B tiles are rounded to
    the output's (compute) dtype before the product, as a GEMM in that dtype would. The grid is 1-D with the N tiles of
    one row block adjacent, so consecutive programs re-read the same S' rows from L2. ``base`` may alias ``out``
    (in-place accumulation into an opaque base output): every element is read and written by the same program.
    """
    pid = tl.program_id(0)
    num_n_tiles = (d_out + BLOCK_N - 1) // BLOCK_N
    pid_m = pid // num_n_tiles
    pid_n = pid % num_n_tiles
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = offs_m < num_rows
    col_ok = offs_n < d_out

    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for r0 in range(0, total_rank, BLOCK_RK):
        offs_r = r0 + tl.arange(0, BLOCK_RK)
        rank_ok = offs_r < total_rank
        s_tile = tl.load(
            s_ptr + offs_m[:, None] * total_rank + offs_r[None, :], mask=row_ok[:, None] & rank_ok[None, :], other=0.0
        )
        b_tile = tl.load(  # B^T block, (BLOCK_RK, BLOCK_N)
            b_ptr + offs_r[:, None] * stride_br + offs_n[None, :] * stride_bn,
            mask=rank_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        compute = out_ptr.dtype.element_ty
        acc = tl.dot(s_tile.to(compute), b_tile.to(compute), acc, input_precision=DOT_PRECISION)

    tile_ok = row_ok[:, None] & col_ok[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if ADD_BASE:
        base = tl.load(base_ptr + offs_m[:, None] * stride_basem + offs_n[None, :] * stride_basen, mask=tile_ok)
        acc += base.to(tl.float32)
    tl.store(
        out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
        acc.to(out_ptr.dtype.element_ty),
        mask=tile_ok,
    )
