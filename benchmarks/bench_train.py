"""End-to-end training step: forward (last-position logits), cross-entropy on a next-token label, backward and an
AdamW step on the adapter parameters only (base frozen, gradient checkpointing off), for each adapter on q_proj and
v_proj.

    PYTHONPATH=. python benchmarks/bench_train.py                  # --preset cpu: SmolLM2-135M shape, fp32
    PYTHONPATH=. python benchmarks/bench_train.py --preset h100    # Llama-7B shape, bf16, B=8, L=512

"base" is the frozen model with the backward pass taken down to the input embeddings and no optimizer: the cost of
any adapter's step starts there. Reported: ms per step (median), peak GPU memory, trainable parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common import (
    NUM_META_LORAS,
    PRESETS,
    RANK,
    build_causal_lm,
    default_output,
    dtype_name,
    environment,
    make_batch,
    model_variants,
    parse_args,
    print_table,
    run_variants,
    start_notes,
    wanted,
    write_results,
)


def make_step_factory(batch: dict, labels: torch.Tensor):
    """The training step of one variant (its ``trainable_params`` attached to it)."""

    def make_step(runner):
        model = runner.model
        model.train()
        if runner.variant == "base":
            embed = model.get_input_embeddings()

            def base_step():
                embeds = embed(batch["input_ids"]).detach().requires_grad_()
                logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], logits_to_keep=1).logits
                F.cross_entropy(logits[:, -1].float(), labels).backward()

            base_step.trainable_params = 0
            return base_step

        params = [p for p in model.parameters() if p.requires_grad]
        if runner.gate is not None:
            params += list(runner.gate.parameters())
        optimizer = torch.optim.AdamW(params, lr=1e-4)

        def step():
            optimizer.zero_grad(set_to_none=True)
            logits = runner(batch, logits_to_keep=1).logits
            F.cross_entropy(logits[:, -1].float(), labels).backward()
            optimizer.step()

        step.trainable_params = sum(p.numel() for p in params)
        return step

    return make_step


def main():
    args = parse_args("End-to-end training-step time and peak memory of RecLoRA against PEFT LoRA and alternatives")
    preset = PRESETS[args.preset]["train"]
    env = environment(args.device)
    notes, skip = start_notes(args.device)
    print(f"building a {preset['model_name']} model with random {dtype_name(args.dtype)} weights on {args.device}")
    model = build_causal_lm(preset["model"], args.dtype, args.device)
    batch_size, seq_len = preset["batch_size"], preset["seq_len"]
    batch = make_batch(preset["model"]["vocab_size"], batch_size, seq_len, args.device)
    labels = torch.randint(3, preset["model"]["vocab_size"], (batch_size,), generator=torch.Generator().manual_seed(1))
    labels = labels.to(args.device)
    names = [v for v in model_variants(args.dtype) if wanted(args, v) and not ("triton" in v and skip)]
    results = run_variants(args, model, names, make_step_factory(batch, labels), inference=False)
    rows = [dict(variant=name, batch=batch_size, seq_len=seq_len, tokens=batch_size * seq_len,
                 dtype=dtype_name(args.dtype), **results[name]) for name in names]

    by_name = {r["variant"]: r for r in rows if r.get("ms")}
    low = f"peft-lora-r8-{dtype_name(args.dtype)}-adapters"
    for row in rows:
        if not row.get("ms"):
            continue
        if "peft-lora-r8-defaults" in by_name:
            row["time_vs_peft_r8_defaults"] = round(row["ms"] / by_name["peft-lora-r8-defaults"]["ms"], 3)
        if low in by_name:
            row[f"time_vs_peft_r8_{dtype_name(args.dtype)}"] = round(row["ms"] / by_name[low]["ms"], 3)
        r128 = by_name.get(f"peft-lora-r128-{dtype_name(args.dtype)}-adapters")
        if r128 and row.get("peak_mem_gb") and r128.get("peak_mem_gb"):
            row["mem_vs_peft_r128"] = round(row["peak_mem_gb"] / r128["peak_mem_gb"], 4)

    fused = "reclora-triton" if "reclora-triton" in by_name else "reclora-torch"
    is_goal = args.preset == "h100"  # the training goals are stated for this preset
    if fused in by_name:
        row = by_name[fused]
        for key, label in (("time_vs_peft_r8_defaults", "PEFT LoRA r=8 defaults"),
                           (f"time_vs_peft_r8_{dtype_name(args.dtype)}", f"PEFT LoRA r=8 {dtype_name(args.dtype)}")):
            if row.get(key) is not None:
                verdict = "met" if row[key] <= 1.0 else f"missed by {100 * (row[key] - 1):.1f}%"
                notes.append(f"{'goal: ' if is_goal else ''}{fused} step time x{row[key]} of {label}"
                             + (f" (no slower: {verdict})" if is_goal else ""))
        if row.get("mem_vs_peft_r128") is not None:
            ratio = row["mem_vs_peft_r128"]
            notes.append(f"{'goal: ' if is_goal else ''}{fused} peak memory x{ratio} of PEFT LoRA r=128"
                         + (f" (<= x1.05: {'met' if ratio <= 1.05 else 'missed'})" if is_goal else ""))
        elif args.device.type != "cuda":
            notes.append("peak memory is measured on CUDA only (torch.cuda.max_memory_allocated)")

    columns = ["variant", "batch", "seq_len", "adapter_dtype", "trainable_params", "ms", "time_vs_peft_r8_defaults",
               "peak_mem_gb", "mem_vs_peft_r128", "skipped"]
    print_table(rows, columns, title=f"bench_train, preset {args.preset} ({preset['model_name']}), {env['device']}, "
                                     f"{env['date']}")
    for line in notes:
        print(line)
    settings = dict(model=preset["model_name"], model_config=preset["model"], batch_size=batch_size, seq_len=seq_len,
                    dtype=dtype_name(args.dtype), num_meta_loras=NUM_META_LORAS, r=RANK,
                    target_modules=["q_proj", "v_proj"], optimizer="AdamW lr=1e-4 on trainable parameters",
                    loss="cross-entropy of the last position's logits (logits_to_keep=1)",
                    gradient_checkpointing=False, warmup=args.warmup, repeats=args.repeats,
                    timing="median ms per step; CUDA: CUDA events, variants one after the other; CPU: variants on "
                           "separate model copies, timed round-robin")
    path = write_results(args.output or default_output("bench_train", args.preset, args.device), "bench_train", args,
                         env, settings, rows, notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
