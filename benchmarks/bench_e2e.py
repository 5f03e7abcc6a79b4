"""End-to-end prefill scoring: a whole causal LM (random weights) scores batches of prompts, keeping only the
last position's logits (``logits_to_keep=1``, as P(Yes) scoring does), with each adapter on q_proj and v_proj.

    PYTHONPATH=. python benchmarks/bench_e2e.py                  # --preset cpu: SmolLM2-135M shape, fp32
    PYTHONPATH=. python benchmarks/bench_e2e.py --preset h100    # Llama-7B shape, bf16, L=512, B in {8, 16, 32}

Reported per variant and batch size: ms per batch (median), samples/s, % of the base model's samples/s, the ratio to
PEFT LoRA r=8 with PEFT defaults, and peak GPU memory. RecLoRA and PEFT are applied with ``get_peft_model`` and their
defaults; the baselines replace q_proj / v_proj by layers computing the same gated bank another way.
"""

from __future__ import annotations

import torch

from common import (
    CRM_DIM,
    NUM_META_LORAS,
    PRESETS,
    RANK,
    build_causal_lm,
    default_output,
    dtype_name,
    environment,
    fmt_pct,
    make_batch,
    measure,
    model_variants,
    parse_args,
    print_table,
    run_variants,
    start_notes,
    wanted,
    write_results,
)


def gate_row(args, batch_size) -> dict:
    from peft_reclora import RecLoraGate

    gate = RecLoraGate(CRM_DIM, 60, NUM_META_LORAS).to(args.device)
    crm = torch.randn(batch_size, CRM_DIM, device=args.device)
    with torch.inference_mode():
        timing = measure(lambda: gate(crm), args.device, args.warmup, max(args.repeats, 20), flush_l2=False)
    return dict(variant="gate", batch=batch_size, crm_dim=CRM_DIM, **timing)


def main():
    args = parse_args("End-to-end prefill scoring throughput of RecLoRA against PEFT LoRA and the alternatives")
    preset = PRESETS[args.preset]["e2e"]
    env = environment(args.device)
    notes, skip = start_notes(args.device)
    print(f"building a {preset['model_name']} model with random {dtype_name(args.dtype)} weights on {args.device}")
    model = build_causal_lm(preset["model"], args.dtype, args.device)
    model_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    rows = []
    names = [v for v in model_variants(args.dtype) if wanted(args, v) and not ("triton" in v and skip)]
    for batch_size in preset["batch_sizes"]:
        print(f"batch size {batch_size}", flush=True)
        batch = make_batch(preset["model"]["vocab_size"], batch_size, preset["seq_len"], args.device)
        def make_step(runner, batch=batch):
            return lambda: runner(batch, logits_to_keep=1)

        results = run_variants(args, model, names, make_step, inference=True)
        for name in names:
            row = dict(variant=name, batch=batch_size, seq_len=preset["seq_len"],
                       tokens=batch_size * preset["seq_len"], dtype=dtype_name(args.dtype), **results[name])
            row["samples_per_s"] = batch_size / (row["ms"] / 1e3) if row.get("ms") else None
            rows.append(row)
        if wanted(args, "gate"):
            rows.append(gate_row(args, batch_size))

    for row in rows:
        if not row.get("samples_per_s"):
            continue
        same = {r["variant"]: r for r in rows if r["batch"] == row["batch"] and r.get("samples_per_s")}
        if "base" in same:
            row["pct_of_base"] = fmt_pct(100.0 * row["samples_per_s"] / same["base"]["samples_per_s"])
        if "peft-lora-r8-defaults" in same:
            row["vs_peft_r8_defaults"] = round(
                row["samples_per_s"] / same["peft-lora-r8-defaults"]["samples_per_s"], 3
            )
        low = f"peft-lora-r8-{dtype_name(args.dtype)}-adapters"
        if low in same:
            row[f"vs_peft_r8_{dtype_name(args.dtype)}"] = round(row["samples_per_s"] / same[low]["samples_per_s"], 3)

    fused = ("reclora-triton" if any(r["variant"] == "reclora-triton" and r.get("ms") for r in rows)
             else "reclora-torch")
    for row in rows:
        if row["variant"] != fused or row.get("pct_of_base") is None:
            continue
        peft_ratio = row.get("vs_peft_r8_defaults")
        line = (f"B={row['batch']}: {fused} at {row['pct_of_base']}% of the base model's samples/s, x{peft_ratio} the "
                "samples/s of PEFT LoRA r=8 with PEFT defaults")
        if args.preset == "h100":  # the end-to-end goals are stated for this preset
            line = (f"goal {line} (>= 98%: {'met' if row['pct_of_base'] >= 98.0 else 'missed'}; >= x1.10: "
                    f"{'met' if peft_ratio and peft_ratio >= 1.10 else 'missed'})")
        notes.append(line)
    gate_rows = [r for r in rows if r["variant"] == "gate"]
    for gate in gate_rows:
        base = next((r for r in rows if r["variant"] == "base" and r["batch"] == gate["batch"] and r.get("ms")), None)
        if base:
            gate["pct_of_base_forward"] = round(100.0 * gate["ms"] / base["ms"], 3)

    columns = ["variant", "batch", "seq_len", "adapter_dtype", "ms", "samples_per_s", "pct_of_base",
               "vs_peft_r8_defaults", "peak_mem_gb", "skipped"]
    print_table([r for r in rows if r["variant"] != "gate"], columns,
                title=f"bench_e2e, preset {args.preset} ({preset['model_name']}), {env['device']}, {env['date']}")
    print_table(gate_rows, ["variant", "batch", "crm_dim", "ms", "pct_of_base_forward"], title="gate (once per batch)")
    for line in notes:
        print(line)
    settings = dict(model=preset["model_name"], model_config=preset["model"], model_gb=round(model_gb, 3),
                    seq_len=preset["seq_len"], batch_sizes=preset["batch_sizes"], dtype=dtype_name(args.dtype),
                    num_meta_loras=NUM_META_LORAS, r=RANK, target_modules=["q_proj", "v_proj"], logits_to_keep=1,
                    warmup=args.warmup, repeats=args.repeats,
                    timing="median ms per batch under torch.inference_mode; CUDA: CUDA events, variants one after "
                           "the other; CPU: variants on separate model copies, timed round-robin",
                    peak_mem="torch.cuda.max_memory_allocated over warm-up and timed calls (None on CPU)")
    path = write_results(args.output or default_output("bench_e2e", args.preset, args.device), "bench_e2e", args,
                         env, settings, rows, notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
