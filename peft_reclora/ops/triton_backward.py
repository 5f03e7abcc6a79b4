"""Triton backward kernel of the gate-weighted meta-LoRA: one pass over the output gradient dY gives dS (the gradient
of the pre-gate intermediate), the per-row gate-gradient partials and, optionally, dB.

Like ``triton_forward``, this holds plain Python sources compiled or interpreted by ``triton_kernels``.
"""

import triton.language as tl


def grad_intermediate_kernel(
    dy_ptr, b_ptr, s_raw_ptr, gate_ptr,
    ds_ptr, gate_rows_ptr, s_mixed_ptr, grad_b_ptr,
    num_rows, d_out, total_rank, num_meta_loras, rank, rows_per_sample, scaling,
    stride_dym, stride_dyn, stride_bn, stride_br,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_RANK: tl.constexpr, MIX_WEIGHTS: tl.constexpr, GATE_GRAD: tl.constexpr, STORE_MIXED: tl.constexpr,
    FUSE_GRAD_B: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """For one block of BLOCK_M rows, loop over all of d_out:

        dS'[t, :] = dY[t, :] B                     (fp32 registers, complete at the end of the loop: no atomics)
        dB       += dY[t, :]^T S'[t, :]             (FUSE_GRAD_B: fp32 atomics into grad_b, zeroed by the caller)

    then, in the epilogue, with g the row's gate expanded to rank slots and s the scaling:

        output mixing:  dS = s g dS',  per-row gate partial P = s dS' S
        weights mixing: M = (S g) F F^T, dM = s (dS' g) F F^T, dS = g dM,  P = s dS' M + dM S
                        (F[j, i] = [j % rank == i]: F sums the slots that share position i within a meta-LoRA,
                        F^T broadcasts the sum back to every meta-LoRA)

    and stores dS (dS's dtype), the per-row, per-meta-LoRA sums of P into gate_rows (fp32, (num_rows, num_meta_loras);
    the caller sums rows per sample) and, with STORE_MIXED, S' itself for a cuBLAS dB.
    """
    pid_m = tl.program_id(0)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    row_ok = offs_m < num_rows
    rank_ok = offs_r < total_rank
    tile_ok = row_ok[:, None] & rank_ok[None, :]
    rank_offsets = offs_m[:, None] * total_rank + offs_r[None, :]

    gate_offsets = (offs_m // rows_per_sample)[:, None] * num_meta_loras + (offs_r // rank)[None, :]
    if MIX_WEIGHTS:
        offs_i = tl.arange(0, BLOCK_RANK)
        fold = (((offs_r[:, None] % rank) == offs_i[None, :]) & rank_ok[:, None]).to(tl.float32)
        unfold = ((offs_i[:, None] == (offs_r[None, :] % rank)) & rank_ok[None, :]).to(tl.float32)

    # The gated intermediate S', recomputed from the saved pre-gate S (fp32) and the gate: stored for a cuBLAS dB,
    # or kept for the fused one (otherwise unused, and dropped by the compiler).
    s_raw = tl.load(s_raw_ptr + rank_offsets, mask=tile_ok, other=0.0)
    gate = tl.load(gate_ptr + gate_offsets, mask=tile_ok, other=0.0)
    if MIX_WEIGHTS:
        per_position = tl.dot(s_raw * gate, fold, input_precision="ieee")
        mixed = tl.dot(per_position, unfold, input_precision="ieee")
        s_mixed = mixed * gate * scaling
    else:
        s_mixed = s_raw * gate * scaling
    if STORE_MIXED:
        tl.store(s_mixed_ptr + rank_offsets, s_mixed.to(s_mixed_ptr.dtype.element_ty), mask=tile_ok)
    s_mixed_lowp = s_mixed.to(dy_ptr.dtype.element_ty)

    grad_mixed = tl.full((BLOCK_M, BLOCK_R), 0.0, tl.float32)
    for n0 in range(0, d_out, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        col_ok = offs_n < d_out
        dy = tl.load(
            dy_ptr + offs_m[:, None] * stride_dym + offs_n[None, :] * stride_dyn,
            mask=row_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        b_tile = tl.load(
            b_ptr + offs_n[:, None] * stride_bn + offs_r[None, :] * stride_br,
            mask=col_ok[:, None] & rank_ok[None, :],
            other=0.0,
        )
        grad_mixed = tl.dot(dy, b_tile.to(dy.dtype), grad_mixed, input_precision=DOT_PRECISION)
        if FUSE_GRAD_B:
            partial = tl.dot(tl.trans(dy), s_mixed_lowp, input_precision=DOT_PRECISION)
            tl.atomic_add(
                grad_b_ptr + offs_n[:, None] * total_rank + offs_r[None, :],
                partial,
                mask=col_ok[:, None] & rank_ok[None, :],
            )

    # Epilogue. S and the gate are loaded again (from L2) rather than held in registers across the loop.
    s_raw = tl.load(s_raw_ptr + rank_offsets, mask=tile_ok, other=0.0)
    gate = tl.load(gate_ptr + gate_offsets, mask=tile_ok, other=0.0)
    if MIX_WEIGHTS:
        mixed = tl.dot(tl.dot(s_raw * gate, fold, input_precision="ieee"), unfold, input_precision="ieee")
        grad_per_position = tl.dot(grad_mixed * gate, fold, input_precision="ieee")
        grad_shared = tl.dot(grad_per_position, unfold, input_precision="ieee") * scaling
        grad_s = gate * grad_shared
        gate_terms = scaling * grad_mixed * mixed + grad_shared * s_raw
    else:
        grad_s = grad_mixed * gate * scaling
        gate_terms = scaling * grad_mixed * s_raw
    tl.store(ds_ptr + rank_offsets, grad_s.to(ds_ptr.dtype.element_ty), mask=tile_ok)

    if GATE_GRAD:
        offs_e = tl.arange(0, BLOCK_E)
        meta_lora_ok = offs_e < num_meta_loras
        # (BLOCK_R, BLOCK_E) 0/1 matrix: slot j belongs to meta-LoRA j // rank.
        slot_of_meta_lora = ((offs_r[:, None] // rank) == offs_e[None, :]) & rank_ok[:, None] & meta_lora_ok[None, :]
        per_meta_lora = tl.dot(gate_terms, slot_of_meta_lora.to(tl.float32), input_precision="ieee")
        tl.store(
            gate_rows_ptr + offs_m[:, None] * num_meta_loras + offs_e[None, :],
            per_meta_lora,
            mask=row_ok[:, None] & meta_lora_ok[None, :],
        )
