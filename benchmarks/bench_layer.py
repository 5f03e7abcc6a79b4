"""Layer-level benchmark: one adapted linear layer (frozen base + 16 meta-LoRAs of rank 8), every implementation side
by side, forward (inference) and forward+backward (training: input and adapter need gradients, base frozen).

    PYTHONPATH=. python benchmarks/bench_layer.py                  # --preset cpu: SmolLM2-135M q_proj / v_proj shapes
    PYTHONPATH=. python benchmarks/bench_layer.py --preset h100    # Llama-7B shape, bf16, T in {512, 4096, 32768}

T counts tokens: batches of ``seq_len``-token samples, one gate row per sample. ``overhead_pct`` is the time over the
base layer alone (same shape, same pass, same run); ``adapter_ms`` that difference in ms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common import (
    BASELINES,
    CRM_DIM,
    LORA_ALPHA,
    NUM_META_LORAS,
    PRESETS,
    RANK,
    default_output,
    dtype_name,
    environment,
    fmt_pct,
    measure,
    measure_interleaved,
    meta_lora_call,
    parse_args,
    print_table,
    start_notes,
    synchronize,
    wanted,
    write_results,
)


PASSES = ("fwd", "fwd+bwd")


def peft_lora_layer(weight: torch.Tensor, rank: int, adapter_dtype_default: bool) -> nn.Module:
    """A PEFT LoRA layer around a frozen linear layer, built by get_peft_model (``adapter_dtype_default``: PEFT's
    default ``autocast_adapter_dtype=True``, which keeps bf16/fp16 adapters in fp32)."""
    from peft import LoraConfig, get_peft_model

    class OneLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device,
                                    dtype=weight.dtype)
            self.q_proj.weight.data.copy_(weight)

        def forward(self, x):
            return self.q_proj(x)

    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj"], init_lora_weights=False)
    model = get_peft_model(OneLayer(), config, autocast_adapter_dtype=adapter_dtype_default)
    return model.base_model.model.q_proj


def variants(dtype: torch.dtype) -> list[str]:
    low = dtype_name(dtype)
    return [
        "base", "reclora-torch", "reclora-triton", "reclora-torch-posthoc", "reclora-triton-posthoc",
        "naive-expert-loop", "reference-loop", "merged-per-sample", "published-weight-mixing",
        "reclora-torch-weights-mixing", "reclora-triton-weights-mixing", "peft-lora-r8-defaults",
        f"peft-lora-r8-{low}-adapters", f"peft-lora-r128-{low}-adapters",
    ]


def build_call(variant, x, weight, lora_A, lora_B, gate):
    """(function computing the full layer output for ``variant``, base included; parameters it trains)."""
    if variant == "base":
        return (lambda: F.linear(x, weight)), []
    if variant.startswith("reclora-"):
        backend = "triton" if "-triton" in variant else "torch"
        mixing = "weights" if variant.endswith("weights-mixing") else "output"
        post_hoc = variant.endswith("posthoc")
        return (lambda: meta_lora_call(x, weight, None, lora_A, lora_B, gate, backend, mixing, post_hoc)), [
            lora_A, lora_B, gate]
    if variant == "reference-loop":  # the op's test oracle: a Python loop over samples and experts
        return (lambda: meta_lora_call(x, weight, None, lora_A, lora_B, gate, "reference")), [lora_A, lora_B, gate]
    if variant in BASELINES:
        implementation = BASELINES[variant]
        return (lambda: implementation(x, weight, None, lora_A, lora_B, gate, LORA_ALPHA / RANK, NUM_META_LORAS)), [
            lora_A, lora_B, gate]
    if variant.startswith("peft-lora-"):
        rank = int(variant.split("-r")[1].split("-")[0])
        layer = peft_lora_layer(weight, rank, adapter_dtype_default=variant.endswith("defaults"))
        return (lambda: layer(x)), [p for p in layer.parameters() if p.requires_grad]
    raise ValueError(variant)


def check_backends(args, d_in, d_out, tokens, seq_len, note_skip) -> list[dict]:
    """Accuracy of the fused backends on the benchmark's own shape and dtype: output and gradients of the first two
    samples against the float64 per-expert reference (max error relative to the reference's largest magnitude)."""
    from peft_reclora.ops import meta_lora_reference

    device, dtype = args.device, args.dtype
    batch = min(2, max(1, tokens // seq_len))
    generator = torch.Generator().manual_seed(7)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=generator)).to(device=device, dtype=dtype)

    inputs = dict(
        x=randn(batch, min(seq_len, tokens), d_in),
        lora_A=randn(NUM_META_LORAS * RANK, d_in, scale=d_in**-0.5),
        lora_B=randn(d_out, NUM_META_LORAS * RANK, scale=0.5),
        gate=torch.softmax(torch.randn(batch, NUM_META_LORAS, generator=generator), -1).to(device),
    )
    weight = randn(d_out, d_in, scale=d_in**-0.5)
    wide = {name: value.detach().double().requires_grad_() for name, value in inputs.items()}
    want = F.linear(wide["x"], weight.double()) + meta_lora_reference(
        wide["x"], wide["lora_A"], wide["lora_B"], wide["gate"], LORA_ALPHA / RANK, NUM_META_LORAS)
    grad_out = torch.randn(want.shape, generator=generator).to(device)
    want_grads = torch.autograd.grad(want, list(wide.values()), grad_out.double())
    checks = []
    for backend in ("torch", "triton"):
        if backend == "triton" and note_skip:
            continue
        leaves = {name: value.detach().clone().requires_grad_() for name, value in inputs.items()}
        got = meta_lora_call(leaves["x"], weight, None, leaves["lora_A"], leaves["lora_B"], leaves["gate"], backend)
        got_grads = torch.autograd.grad(got, list(leaves.values()), grad_out.to(got.dtype))
        errors = {"out": _relative_error(got, want)}
        errors.update({f"grad_{name}": _relative_error(g, w) for name, g, w in zip(leaves, got_grads, want_grads)})
        worst = max(errors.values())
        checks.append(dict(backend=backend, d_in=d_in, d_out=d_out, rows=int(inputs["x"].shape[1]), batch=batch,
                           dtype=dtype_name(dtype), max_relative_error=worst, passed=worst < CHECK_TOLERANCE[dtype],
                           **errors))
    return checks


CHECK_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def _no_grad(call):
    with torch.no_grad():
        return call()


def _backward(call, grad, leaves):
    for leaf in leaves:
        leaf.grad = None
    call().backward(grad)


def run_shape(args, d_in, d_out, tokens, seq_len, note_skip) -> list[dict]:
    device, dtype = args.device, args.dtype
    batch = max(1, tokens // seq_len)
    rows_per_sample = tokens // batch
    generator = torch.Generator().manual_seed(tokens + d_out)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=generator)).to(device=device, dtype=dtype)

    x = randn(batch, rows_per_sample, d_in)
    weight = randn(d_out, d_in, scale=d_in**-0.5)
    lora_A = randn(NUM_META_LORAS * RANK, d_in, scale=d_in**-0.5)
    lora_B = randn(d_out, NUM_META_LORAS * RANK, scale=0.01)
    gate = torch.softmax(torch.randn(batch, NUM_META_LORAS, generator=generator), dim=-1).to(device)
    shape = dict(tokens=batch * rows_per_sample, batch=batch, seq_len=rows_per_sample, d_in=d_in, d_out=d_out,
                 num_meta_loras=NUM_META_LORAS, r=RANK, dtype=dtype_name(dtype))
    names = [v for v in variants(dtype) if wanted(args, v) and not ("triton" in v and note_skip)]
    results = []
    for pass_name in args.passes:
        calls, leaves = {}, {x}
        for variant in names:
            call, trained = build_call(variant, x, weight, lora_A, lora_B, gate)
            calls[variant] = call
            if pass_name == "fwd+bwd":
                leaves.update(trained)
        steps = {}
        if pass_name == "fwd":
            for variant, call in calls.items():
                steps[variant] = lambda call=call: _no_grad(call)
        else:
            for leaf in leaves:
                leaf.requires_grad_(True)
            grad = torch.randn((batch, rows_per_sample, d_out), generator=generator).to(device, dtype)
            for variant, call in calls.items():
                steps[variant] = lambda call=call, grad=grad, leaves=leaves: _backward(call, grad, leaves)
        try:
            timings = measure_interleaved(steps, device, args.warmup, args.repeats)
        finally:
            for leaf in leaves:
                leaf.requires_grad_(False)
                leaf.grad = None
        results += [dict(variant=variant, **{"pass": pass_name}, **shape, **timings[variant]) for variant in names]
        calls = steps = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for row in results:
        base = next((r for r in results if r["variant"] == "base" and r["pass"] == row["pass"]), None)
        if base and base.get("ms") and row.get("ms"):
            row["adapter_ms"] = row["ms"] - base["ms"]
            row["overhead_pct"] = fmt_pct(100.0 * row["adapter_ms"] / base["ms"])
    return results


def gate_rows(args) -> list[dict]:
    """The gate (CRM vector -> softmax weights) runs once per batch, shared by every adapted layer."""
    rows = []
    gate = peft_reclora_gate().to(args.device)
    for tokens in PRESETS[args.preset]["layer"]["tokens"]:
        batch = max(1, tokens // PRESETS[args.preset]["layer"]["seq_len"])
        crm = torch.randn(batch, CRM_DIM, device=args.device)
        with torch.no_grad():
            timing = measure(lambda crm=crm: gate(crm), args.device, args.warmup, args.repeats)
        rows.append(dict(variant="gate", **{"pass": "fwd"}, tokens=tokens, batch=batch, crm_dim=CRM_DIM,
                         num_meta_loras=NUM_META_LORAS, dtype="float32", **timing))
    return rows


def peft_reclora_gate():
    from peft_reclora import RecLoraGate

    return RecLoraGate(CRM_DIM, 60, NUM_META_LORAS)


def summarize(rows: list[dict], preset: str) -> list[str]:
    """Ratios against the fused path and the issue's goals, computed from the rows (printed and saved as notes).

    "total" compares whole-layer times (base included); "adapter" compares the time each adds over the base.
    """
    lines = []

    def find(variant, pass_name, tokens, d_out):
        return next((r for r in rows if r["variant"] == variant and r["pass"] == pass_name and r["tokens"] == tokens
                     and r.get("d_out") == d_out and r.get("ms")), None)

    fused = ("reclora-triton" if any(r["variant"] == "reclora-triton" and r.get("ms") for r in rows)
             else "reclora-torch")
    loop_ratios = []
    for row in rows:
        if row["variant"] != fused or not row.get("ms"):
            continue
        parts = [f"{fused} {row['pass']} T={row['tokens']} d_out={row['d_out']}: "
                 f"+{row.get('overhead_pct')}% over base"]
        for other in ("naive-expert-loop", "reference-loop", "merged-per-sample", "published-weight-mixing",
                      "peft-lora-r8-defaults", f"peft-lora-r128-{row['dtype']}-adapters"):
            ref = find(other, row["pass"], row["tokens"], row["d_out"])
            if ref and row.get("adapter_ms", 0) > 0:
                total, adapter = ref["ms"] / row["ms"], ref["adapter_ms"] / row["adapter_ms"]
                parts.append(f"{other} x{total:.2f} total / x{adapter:.1f} adapter")
                if other in ("naive-expert-loop", "reference-loop"):
                    loop_ratios.append((other, row["pass"], total, adapter))
        lines.append("; ".join(parts))
    for loop in ("naive-expert-loop", "reference-loop"):
        found = [(p, t, a) for name, p, t, a in loop_ratios if name == loop]
        if found:
            need = 5.0 if preset == "cpu" else 20.0
            worst_total = min(t for _, t, _ in found)
            worst_adapter = min(a for _, _, a in found)
            lines.append(
                f"goal: {fused} >= {need:g}x faster than {loop}: worst case x{worst_total:.2f} total "
                f"({'met' if worst_total >= need else 'missed'}), x{worst_adapter:.1f} adapter cost "
                f"({'met' if worst_adapter >= need else 'missed'})"
            )
    if preset == "h100":
        for pass_name, tokens, limit in [("fwd", 4096, 15.0), ("fwd", 32768, 13.0), ("fwd+bwd", 32768, 20.0)]:
            row = find(fused, pass_name, tokens, 4096)
            if row:
                gap = row["overhead_pct"] - limit
                status = "met" if gap <= 0 else f"missed by {gap:.1f} points"
                lines.append(f"goal: {pass_name} overhead at T={tokens} <= {limit:g}%: {row['overhead_pct']}% "
                             f"({status})")
    return lines


def add_arguments(parser):
    parser.add_argument("--passes", default=",".join(PASSES), help="comma-separated subset of: fwd, fwd+bwd")
    parser.add_argument("--triton-settings", default="",
                        help="override the Triton launch plan, e.g. 'block_m=128,split_k=1,fuse_grad_b=0'")


def parse_triton_settings(text: str) -> dict:
    """'block_m=128,fuse_grad_b=0' -> {'block_m': 128, 'fuse_grad_b': False} for ``kernel_settings``."""
    settings = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        settings[key] = bool(int(value)) if key == "fuse_grad_b" else int(value)
    return settings


def main():
    args = parse_args("Layer-level benchmark of the gate-weighted meta-LoRA against its alternatives", add_arguments)
    args.passes = [name.strip() for name in args.passes.split(",")]
    unknown = set(args.passes) - set(PASSES)
    if unknown:
        raise SystemExit(f"unknown --passes {sorted(unknown)}; choose from {PASSES}")
    preset = PRESETS[args.preset]["layer"]
    env = environment(args.device)
    notes, skip = start_notes(args.device)
    from peft_reclora.ops.triton_kernels import kernel_settings

    overrides = parse_triton_settings(args.triton_settings)
    with kernel_settings(**overrides):
        rows, checks = run_all(args, preset, skip)
    if wanted(args, "gate"):
        rows += gate_rows(args)
    for check in checks:
        line = (f"check {check['backend']} {check['dtype']} d_in={check['d_in']} d_out={check['d_out']}: max "
                f"relative error {check['max_relative_error']:.2e} vs float64 reference "
                f"({'ok' if check['passed'] else 'FAILED'})")
        notes.append(line)
    notes += summarize(rows, args.preset)
    columns = ["variant", "pass", "tokens", "d_in", "d_out", "ms", "adapter_ms", "overhead_pct", "skipped"]
    print_table(rows, columns, title=f"bench_layer, preset {args.preset}, {env['device']}, {env['date']}")
    for line in notes:
        print(line)
    settings = dict(preset=PRESETS[args.preset]["layer"], dtype=dtype_name(args.dtype), warmup=args.warmup,
                    repeats=args.repeats, num_meta_loras=NUM_META_LORAS, r=RANK, lora_alpha=LORA_ALPHA,
                    triton_settings=overrides,
                    timing="median of repeats, variants timed round-robin per shape and pass; CUDA events with an "
                           "L2 flush before each call on GPU")
    path = write_results(args.output or default_output("bench_layer", args.preset, args.device), "bench_layer", args,
                         env, settings, rows, notes, extra={"checks": checks})
    print(f"wrote {path}")


def run_all(args, preset, skip):
    rows, checks = [], []
    for d_in, d_out in preset["features"]:
        checks += check_backends(args, d_in, d_out, preset["tokens"][0], preset["seq_len"], skip)
        for tokens in preset["tokens"]:
            print(f"... d_in={d_in} d_out={d_out} T={tokens}", flush=True)
            rows += run_shape(args, d_in, d_out, tokens, preset["seq_len"], skip)
            synchronize(args.device)
    return rows, checks


if __name__ == "__main__":
    main()
