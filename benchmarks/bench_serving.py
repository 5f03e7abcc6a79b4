"""Serving many users in one batch: RecLoRA with per-row ``crm_embeds`` against exported personalized LoRAs served by
PEFT's mixed-batch inference (``adapter_names=``), as a function of the number of distinct users in the batch.

    PYTHONPATH=. python benchmarks/bench_serving.py                  # --preset cpu: SmolLM2-135M shape, fp32
    PYTHONPATH=. python benchmarks/bench_serving.py --preset h100    # Llama-7B shape, bf16

Both paths compute the same function (tests/test_personalized_serving.py checks they agree). RecLoRA runs one batched
computation whatever the users; PEFT's mixed batch runs one LoRA computation per distinct adapter in the batch, and
holds one adapter per user (with ``mixing="output"`` each of rank num_meta_loras * r, the size of the whole bank).
Reported per path and number of distinct users: ms per prefill batch (median, last-position logits), samples/s,
adapter parameter memory, and the time to export the users' LoRAs.
"""

from __future__ import annotations

import copy
import time

import torch
from peft import get_peft_model

import peft_reclora

from common import (
    CRM_DIM,
    PRESETS,
    build_causal_lm,
    default_output,
    dtype_name,
    environment,
    make_batch,
    measure_interleaved,
    parse_args,
    print_table,
    reclora_config,
    write_results,
)


SETTINGS = {
    "cpu": dict(batch=16, seq_len=64, users=[1, 2, 4, 8, 16]),
    "h100": dict(batch=32, seq_len=512, users=[1, 4, 16, 32]),
}


def adapter_mib(model, marker: str) -> float:
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if marker in n) / 2**20


def measure_users(base, reclora, inputs: dict, user_crm: torch.Tensor, shape: dict, args) -> list[dict]:
    """One row per path for a batch whose row i belongs to user i % users. The users' exported LoRAs live only in this
    call, so each number of users starts without the previous one's adapters in memory."""
    users = user_crm.shape[0]
    of_row = [i % users for i in range(shape["batch"])]
    names = [f"user{i}" for i in range(users)]
    started = time.perf_counter()
    lora = peft_reclora.personalized_lora_model(copy.deepcopy(base), reclora, user_crm, names)
    export_s = time.perf_counter() - started
    crm_rows = user_crm[of_row]
    adapter_names = [names[i] for i in of_row]
    with torch.inference_mode():
        diff = (reclora(**inputs, crm_embeds=crm_rows, logits_to_keep=1).logits.float()
                - lora(**inputs, adapter_names=adapter_names, logits_to_keep=1).logits.float()).abs().max().item()
        timings = measure_interleaved(
            {
                "reclora": lambda: reclora(**inputs, crm_embeds=crm_rows, logits_to_keep=1),
                "peft-mixed-batch-loras": lambda: lora(**inputs, adapter_names=adapter_names, logits_to_keep=1),
            },
            args.device, args.warmup, args.repeats, flush_l2=False,
        )
    memory = {"reclora": adapter_mib(reclora, "reclora_"), "peft-mixed-batch-loras": adapter_mib(lora, "lora_")}
    rows = []
    for variant, timing in timings.items():
        row = dict(variant=variant, users=users, batch=shape["batch"], seq_len=shape["seq_len"],
                   dtype=dtype_name(args.dtype), adapter_mib=round(memory[variant], 2), **timing)
        if row.get("ms"):
            row["samples_per_s"] = round(shape["batch"] / (row["ms"] / 1e3), 2)
        if variant != "reclora":
            row["export_s"] = round(export_s, 3)
            row["max_abs_diff_vs_reclora"] = diff
        rows.append(row)
    return rows


def main():
    args = parse_args("Many users in one batch: RecLoRA against personalized LoRAs in PEFT's mixed-batch inference")
    preset = PRESETS[args.preset]["e2e"]
    shape = SETTINGS[args.preset]
    env = environment(args.device)
    print(f"building a {preset['model_name']} model with random {dtype_name(args.dtype)} weights on {args.device}")
    base = build_causal_lm(preset["model"], args.dtype, args.device)
    backend = "triton" if args.device.type == "cuda" else "torch"
    reclora = get_peft_model(copy.deepcopy(base), reclora_config(backend)).eval()
    batch = make_batch(preset["model"]["vocab_size"], shape["batch"], shape["seq_len"], args.device)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    generator = torch.Generator().manual_seed(1)
    rows, notes = [], []
    for users in shape["users"]:
        if users > shape["batch"]:
            continue
        print(f"{users} distinct user(s) in a batch of {shape['batch']}", flush=True)
        user_crm = torch.randn(users, CRM_DIM, generator=generator).to(args.device)
        rows.extend(measure_users(base, reclora, inputs, user_crm, shape, args))
    for users in sorted({r["users"] for r in rows}):
        pair = {r["variant"]: r for r in rows if r["users"] == users}
        if pair["reclora"].get("ms") and pair["peft-mixed-batch-loras"].get("ms"):
            ratio = pair["peft-mixed-batch-loras"]["ms"] / pair["reclora"]["ms"]
            pair["peft-mixed-batch-loras"]["time_vs_reclora"] = round(ratio, 3)
            notes.append(f"{users} user(s): mixed-batch LoRAs take x{ratio:.2f} RecLoRA's time and "
                         f"{pair['peft-mixed-batch-loras']['adapter_mib']:.1f} MiB of adapters against "
                         f"{pair['reclora']['adapter_mib']:.1f} MiB")
    columns = ["variant", "users", "batch", "seq_len", "ms", "samples_per_s", "time_vs_reclora", "adapter_mib",
               "export_s", "max_abs_diff_vs_reclora"]
    print_table(rows, columns, title=f"bench_serving, preset {args.preset} ({preset['model_name']}), {env['device']}, "
                                     f"{env['date']}")
    for line in notes:
        print(line)
    settings = dict(model=preset["model_name"], model_config=preset["model"], dtype=dtype_name(args.dtype), **shape,
                    reclora_backend=backend, rows_to_users="row i belongs to user i % users", logits_to_keep=1,
                    warmup=args.warmup, repeats=args.repeats,
                    timing="median ms per prefill batch under torch.inference_mode, both paths round-robin",
                    adapter_mib="parameters of the adapters held (RecLoRA: banks and gate; LoRA: one per user)")
    path = write_results(args.output or default_output("bench_serving", args.preset, args.device), "bench_serving",
                         args, env, settings, rows, notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
