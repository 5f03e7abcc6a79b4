"""Greedy decoding with a whole causal LM (random weights): prompts of ``prompt_len`` tokens, exactly ``new_tokens``
generated tokens each (``min_new_tokens`` = ``max_new_tokens``, KV cache on), adapters on q_proj and v_proj.

    PYTHONPATH=. python benchmarks/bench_generate.py                  # --preset cpu: SmolLM2-135M shape, fp32
    PYTHONPATH=. python benchmarks/bench_generate.py --preset h100    # Llama-7B shape, bf16

Decoding is where per-step costs show: every step is a forward pass over one token per sequence, so anything the
adapter does per call or per layer (checks, host synchronisation, backend selection) is paid ``new_tokens`` times.
Reported per variant and batch size: ms per ``generate`` call (median), generated tokens/s, % of the base model.
"""

from __future__ import annotations

from common import (
    PRESETS,
    build_causal_lm,
    default_output,
    dtype_name,
    environment,
    fmt_pct,
    make_batch,
    parse_args,
    print_table,
    run_variants,
    start_notes,
    wanted,
    write_results,
)


VARIANTS = ("base", "reclora-torch", "reclora-triton", "peft-lora-r8-defaults")
SETTINGS = {
    "cpu": dict(prompt_len=32, new_tokens=16, batch_sizes=[1, 8]),
    "h100": dict(prompt_len=128, new_tokens=64, batch_sizes=[1, 16]),
}


def main():
    args = parse_args("Greedy decoding throughput of RecLoRA against the base model and PEFT LoRA")
    preset = PRESETS[args.preset]["e2e"]
    shape = SETTINGS[args.preset]
    env = environment(args.device)
    notes, skip = start_notes(args.device)
    print(f"building a {preset['model_name']} model with random {dtype_name(args.dtype)} weights on {args.device}")
    model = build_causal_lm(preset["model"], args.dtype, args.device)
    names = [v for v in VARIANTS if wanted(args, v) and not ("triton" in v and skip)]
    rows = []
    for batch_size in shape["batch_sizes"]:
        print(f"batch size {batch_size}", flush=True)
        batch = make_batch(preset["model"]["vocab_size"], batch_size, shape["prompt_len"], args.device)

        def make_step(runner, batch=batch):
            inputs = {k: v for k, v in batch.items() if k != "crm_embeds" or runner.takes_crm}
            return lambda: runner.model.generate(
                **inputs, max_new_tokens=shape["new_tokens"], min_new_tokens=shape["new_tokens"], do_sample=False,
                pad_token_id=0,
            )

        results = run_variants(args, model, names, make_step, inference=True)
        for name in names:
            row = dict(variant=name, batch=batch_size, prompt_len=shape["prompt_len"], new_tokens=shape["new_tokens"],
                       dtype=dtype_name(args.dtype), **results[name])
            if row.get("ms"):
                row["tokens_per_s"] = round(batch_size * shape["new_tokens"] / (row["ms"] / 1e3), 1)
            rows.append(row)
    for row in rows:
        base = next((r for r in rows if r["variant"] == "base" and r["batch"] == row["batch"] and r.get("ms")), None)
        if base and row.get("ms"):
            row["pct_of_base"] = fmt_pct(100.0 * base["ms"] / row["ms"])
    columns = ["variant", "batch", "prompt_len", "new_tokens", "adapter_dtype", "ms", "tokens_per_s", "pct_of_base",
               "peak_mem_gb", "skipped"]
    print_table(rows, columns, title=f"bench_generate, preset {args.preset} ({preset['model_name']}), "
                                     f"{env['device']}, {env['date']}")
    for line in notes:
        print(line)
    settings = dict(model=preset["model_name"], model_config=preset["model"], dtype=dtype_name(args.dtype), **shape,
                    decoding="greedy, KV cache, min_new_tokens = max_new_tokens", warmup=args.warmup,
                    repeats=args.repeats, timing="median ms per generate call under torch.inference_mode")
    path = write_results(args.output or default_output("bench_generate", args.preset, args.device), "bench_generate",
                         args, env, settings, rows, notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
