"""Shared pieces of the benchmarks: presets, environment capture, timing, the baseline implementations every benchmark
compares against, model construction, and output (a printed table plus a JSON file).

JSON layout (every benchmark): ``{"benchmark", "preset", "device", "versions", "date", "settings", "notes", "rows"}``;
each row is one measurement with at least ``variant``, the shape keys and ``ms`` (median).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn


REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/bench_x.py` from a checkout
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import peft_reclora  # noqa: E402  (registers RecLoRA with PEFT)
from peft_reclora.ops import meta_lora  # noqa: E402


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Model shapes. SmolLM2-135M: hidden 576, 9 heads / 3 KV heads of 64 (q_proj 576->576, v_proj 576->192).
SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True,
)
LLAMA_7B = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, max_position_embeddings=4096, tie_word_embeddings=False,
)

# Adapter settings shared by all presets: the paper's bank (16 meta-LoRAs of rank 8 on q_proj and v_proj).
NUM_META_LORAS, RANK, LORA_ALPHA, CRM_DIM = 16, 8, 16, 64

PRESETS = {
    "cpu": dict(
        dtype="float32",
        layer=dict(features=[(576, 576), (576, 192)], tokens=[128, 512, 2048], seq_len=128),
        e2e=dict(model=SMOLLM2_135M, model_name="SmolLM2-135M shape", seq_len=64, batch_sizes=[4, 16]),
        train=dict(model=SMOLLM2_135M, model_name="SmolLM2-135M shape", seq_len=64, batch_size=8),
        warmup=2, repeats=7,
    ),
    "h100": dict(
        dtype="bfloat16",
        layer=dict(features=[(4096, 4096)], tokens=[512, 4096, 32768], seq_len=512),
        e2e=dict(model=LLAMA_7B, model_name="Llama-7B shape", seq_len=512, batch_sizes=[8, 16, 32]),
        train=dict(model=LLAMA_7B, model_name="Llama-7B shape", seq_len=512, batch_size=8),
        warmup=3, repeats=10,
    ),
}


# ---------------------------------------------------------------------------------------------------------------------
# command line, environment, output


def parse_args(description: str, extra: Optional[Callable[[argparse.ArgumentParser], None]] = None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="shapes to run (default: cpu)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    parser.add_argument("--variants", default=None, help="comma-separated subset of variant names to run")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations per measurement")
    parser.add_argument("--repeats", type=int, default=None, help="timed iterations per measurement (median)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.dtype = DTYPES[preset["dtype"]]
    args.warmup = preset["warmup"] if args.warmup is None else args.warmup
    args.repeats = preset["repeats"] if args.repeats is None else args.repeats
    args.only = None if args.variants is None else {name.strip() for name in args.variants.split(",")}
    if args.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, as torch's default
    return args


def wanted(args, variant: str) -> bool:
    return args.only is None or variant in args.only


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"CPU: {model}, {torch.get_num_threads()} threads"


def versions() -> dict:
    found = {"python": platform.python_version(), "torch": torch.__version__, "peft_reclora": peft_reclora.__version__}
    for package in ("triton", "transformers", "peft", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    found["cuda"] = torch.version.cuda
    found["peft_reclora_git"] = git_revision()
    return found


def environment(device: torch.device) -> dict:
    env = {
        "device": device_name(device),
        "versions": versions(),
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "host": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
    }
    if hasattr(os, "getloadavg"):  # other work on a shared host skews CPU timings: record how busy it was
        env["host"]["load_average_at_start"] = [round(value, 2) for value in os.getloadavg()]
    return env


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def default_output(name: str, preset: str, device: torch.device) -> Path:
    kind = _slug(torch.cuda.get_device_name(device)) if device.type == "cuda" else "cpu"
    return RESULTS_DIR / f"{name}-{preset}-{kind}-{_dt.date.today().isoformat()}.json"


def write_results(path: Path, name: str, args, env: dict, settings: dict, rows: list[dict], notes: list[str],
                  extra: Optional[dict] = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"benchmark": name, "preset": args.preset, **env, "settings": settings, "notes": notes, **(extra or {}),
                "rows": rows}
    path.write_text(json.dumps(document, indent=1, default=str) + "\n")
    return path


def print_table(rows: list[dict], columns: list[str], title: str = "") -> None:
    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
        return str(value)

    table = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(r[i]) for r in table)) if table else len(column)
              for i, column in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("| " + " | ".join(column.ljust(w) for column, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in table:
        print("| " + " | ".join(value.ljust(w) for value, w in zip(r, widths)) + " |")


# ---------------------------------------------------------------------------------------------------------------------
# timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _L2Flush:
    """Overwrite a buffer larger than the GPU's L2 cache before each timed call, so that inputs of a few MB are read
    from memory as they would be inside a real model, not from the cache."""

    def __init__(self, device: torch.device):
        self.buffer = torch.empty(256 * 2**20, dtype=torch.int8, device=device) if device.type == "cuda" else None

    def __call__(self):
        if self.buffer is not None:
            self.buffer.zero_()


def _timed_call(fn: Callable[[], object], device: torch.device, flush: Callable[[], None]) -> float:
    flush()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    begin = time.perf_counter()
    fn()
    return (time.perf_counter() - begin) * 1e3


def _stats(times: list[float]) -> dict:
    times = sorted(times)
    return {"ms": statistics.median(times), "ms_min": times[0], "ms_max": times[-1], "repeats": len(times)}


def measure(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int, flush_l2: bool = True) -> dict:
    """Median wall time of ``fn`` in ms (CUDA events on GPU, perf_counter on CPU), plus its spread."""
    return measure_interleaved({"fn": fn}, device, warmup, repeats, flush_l2)["fn"]


def measure_interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int, flush_l2: bool = True
) -> dict[str, dict]:
    """Time several functions round-robin (each round in a rotated order) so that slow drifts of the machine (clock
    boost, neighbours on a shared host) spread over all of them instead of biasing whichever ran last.

    A function that runs out of memory is reported as ``{"ms": None, "skipped": "out of memory"}``.
    """
    flush = _L2Flush(device) if flush_l2 else (lambda: None)
    results, live = {}, []
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            synchronize(device)
            live.append(name)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            results[name] = {"ms": None, "skipped": "out of memory"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
    times = {name: [] for name in live}
    for round_index in range(repeats):
        shift = round_index % max(1, len(live))
        for name in live[shift:] + live[:shift]:
            times[name].append(_timed_call(fns[name], device, flush))
    results.update({name: _stats(values) for name, values in times.items()})
    return {name: results[name] for name in fns}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> Optional[float]:
    """Peak allocated GPU memory since the last reset; ``None`` on CPU (no per-variant allocator statistics)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def triton_skip_note(device: torch.device) -> Optional[str]:
    """Why the Triton variants cannot run here, or None when they can."""
    if device.type != "cuda":
        return "RecLoRA Triton variants skipped: they need a CUDA device (on CPU Triton only interprets, for tests)"
    from peft_reclora.ops import triton_kernels

    if triton_kernels.triton is None:
        return "RecLoRA Triton variants skipped: triton is not installed"
    return None


def start_notes(device: torch.device) -> tuple[list, Optional[str]]:
    """The run's notes, opened with (and printing) why Triton variants are skipped; and that reason, or None."""
    skip = triton_skip_note(device)
    if skip:
        print(skip)
    return ([skip] if skip else []), skip


# ---------------------------------------------------------------------------------------------------------------------
# adapter implementations compared against (same math as RecLoRA's mixing="output" unless named "published")


def meta_lora_views(lora_A: torch.Tensor, lora_B: torch.Tensor, num_meta_loras: int):
    """Per-meta-LoRA views of the concatenated banks: A (N, r, d_in), B (d_out, N, r)."""
    rank = lora_A.shape[0] // num_meta_loras
    return lora_A.view(num_meta_loras, rank, -1), lora_B.view(lora_B.shape[0], num_meta_loras, rank)


def rows_gate(gate: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The gate row of every input row, (T, N) (rows of sample b use gate[b])."""
    rows = x.numel() // (x.shape[0] * x.shape[-1])
    return gate.repeat_interleave(rows, dim=0)


def naive_expert_loop(x, weight, bias, lora_A, lora_B, gate, scaling, num_meta_loras):
    """Base plus one (shrink, expand) pair per meta-LoRA, each over all rows and weighted by the row's gate."""
    A, B = meta_lora_views(lora_A.to(x.dtype), lora_B.to(x.dtype), num_meta_loras)
    x2 = x.reshape(-1, x.shape[-1])
    g = rows_gate(gate.to(x.dtype), x) * scaling
    out = F.linear(x2, weight, bias)
    for k in range(num_meta_loras):
        out = out + g[:, k : k + 1] * ((x2 @ A[k].t()) @ B[:, k].t())
    return out.view(*x.shape[:-1], -1)


def merged_per_sample(x, weight, bias, lora_A, lora_B, gate, scaling, num_meta_loras):
    """Per-sample weight W_b = W + s sum_k g_bk B_k A_k (batch x d_out x d_in), then one batched GEMM."""
    A, B = meta_lora_views(lora_A.to(x.dtype), lora_B.to(x.dtype), num_meta_loras)
    delta = torch.einsum("bk,okr,kri->boi", gate.to(x.dtype) * scaling, B, A)
    merged = weight.unsqueeze(0) + delta
    x3 = x.reshape(x.shape[0], -1, x.shape[-1])
    out = torch.bmm(x3, merged.transpose(1, 2))
    if bias is not None:
        out = out + bias
    return out.view(*x.shape[:-1], -1)


def published_weight_mixing(x, weight, bias, lora_A, lora_B, gate, scaling, num_meta_loras):
    """The published RecLoRA code: per-sample A_p = sum_k g_k A_k and B_p = sum_k g_k B_k, then two bmm
    (mixing="weights" math)."""
    A, B = meta_lora_views(lora_A.to(x.dtype), lora_B.to(x.dtype), num_meta_loras)
    g = gate.to(x.dtype)
    A_p = torch.einsum("bk,kri->bir", g, A)  # (batch, d_in, r)
    B_p = torch.einsum("bk,okr->bro", g, B)  # (batch, r, d_out)
    x3 = x.reshape(x.shape[0], -1, x.shape[-1])
    out = F.linear(x3, weight, bias) + scaling * torch.bmm(torch.bmm(x3, A_p), B_p)
    return out.view(*x.shape[:-1], -1)


BASELINES = {
    "naive-expert-loop": naive_expert_loop,
    "merged-per-sample": merged_per_sample,
    "published-weight-mixing": published_weight_mixing,
}


class GateHolder:
    """The current batch's gate (batch, N) for the baseline layers of a whole model, set once per forward."""

    def __init__(self):
        self.gate: Optional[torch.Tensor] = None


class BaselineAdapterLinear(nn.Module):
    """A frozen linear layer plus a meta-LoRA bank computed by one of ``BASELINES`` (for end-to-end runs)."""

    def __init__(self, base: nn.Linear, kind: str, holder: GateHolder, num_meta_loras: int, rank: int, scaling: float,
                 dtype: torch.dtype):
        super().__init__()
        self.base, self.kind, self.holder = base, kind, holder
        self.num_meta_loras, self.scaling = num_meta_loras, scaling
        device = base.weight.device
        total = num_meta_loras * rank
        self.lora_A = nn.Parameter(torch.randn(total, base.in_features, device=device, dtype=dtype)
                                   / base.in_features**0.5)
        self.lora_B = nn.Parameter(0.01 * torch.randn(base.out_features, total, device=device, dtype=dtype))

    def forward(self, x):
        return BASELINES[self.kind](
            x, self.base.weight, self.base.bias, self.lora_A, self.lora_B, self.holder.gate, self.scaling,
            self.num_meta_loras,
        )


@contextmanager
def swapped_modules(model: nn.Module, suffixes: Iterable[str], factory: Callable[[nn.Module], nn.Module]):
    """Replace every submodule whose name ends with one of ``suffixes`` by ``factory(module)``; restore on exit."""
    suffixes = tuple(suffixes)
    replaced = []
    for name, module in list(model.named_modules()):
        if name.split(".")[-1] in suffixes:
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            child = name.rsplit(".", 1)[-1]
            setattr(parent, child, factory(module))
            replaced.append((parent, child, module))
    try:
        yield replaced
    finally:
        for parent, child, module in replaced:
            setattr(parent, child, module)


# ---------------------------------------------------------------------------------------------------------------------
# models


def build_causal_lm(shape: dict, dtype: torch.dtype, device: torch.device, seed: int = 0) -> nn.Module:
    """A Llama-architecture causal LM with the given shape and random weights, in eval mode, all frozen."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**shape, attn_implementation="sdpa", pad_token_id=0, bos_token_id=1, eos_token_id=2)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.eval().requires_grad_(False)
    return model


def make_batch(vocab_size: int, batch: int, seq_len: int, device: torch.device, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab_size, (batch, seq_len), generator=generator)
    crm = torch.randn(batch, CRM_DIM, generator=generator)
    return {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids).to(device),
            "crm_embeds": crm.to(device)}


def reclora_config(backend: str, mixing: str = "output"):
    return peft_reclora.RecLoraConfig(
        crm_dim=CRM_DIM, r=RANK, lora_alpha=LORA_ALPHA, num_meta_loras=NUM_META_LORAS,
        target_modules=["q_proj", "v_proj"], mixing=mixing, kernel_backend=backend, init_weights=False,
    )


def lora_config(rank: int):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False)


MODEL_VARIANTS = (
    "base", "reclora-torch", "reclora-triton", "reclora-reference-loop", "naive-expert-loop", "merged-per-sample",
    "published-weight-mixing", "peft-lora-r8-defaults", "peft-lora-r8-{dtype}-adapters",
    "peft-lora-r128-{dtype}-adapters",
)


def model_variants(dtype: torch.dtype) -> list[str]:
    return [name.format(dtype=dtype_name(dtype)) for name in MODEL_VARIANTS]


class AdaptedModel:
    """What a benchmark calls for one variant: its name, ``model``, whether it takes ``crm_embeds``, and, for the
    baseline layers, the gate network and holder to refresh before each forward."""

    def __init__(self, variant, model, takes_crm=False, gate=None, holder=None):
        self.variant, self.model, self.takes_crm, self.gate, self.holder = variant, model, takes_crm, gate, holder

    def __call__(self, batch: dict, **kwargs):
        inputs = {k: v for k, v in batch.items() if k != "crm_embeds"}
        if self.takes_crm:
            inputs["crm_embeds"] = batch["crm_embeds"]
        if self.holder is not None:
            self.holder.gate = self.gate(batch["crm_embeds"])
        return self.model(**inputs, **kwargs)

    def adapter_dtype(self) -> Optional[str]:
        trainable = [p for n, p in self.model.named_parameters() if "lora_A" in n]
        return dtype_name(trainable[0].dtype) if trainable else None


@contextmanager
def adapted(variant: str, model: nn.Module, dtype: torch.dtype):
    """Apply ``variant`` (one of ``model_variants``) to ``model`` on q_proj and v_proj, and undo it on exit."""
    from peft import get_peft_model

    if variant == "base":
        yield AdaptedModel(variant, model)
    elif variant.startswith("reclora-"):
        backend = {"reclora-torch": "torch", "reclora-triton": "triton",
                   "reclora-reference-loop": "reference"}[variant]
        peft_model = get_peft_model(model, reclora_config(backend))
        try:
            yield AdaptedModel(variant, peft_model, takes_crm=True)
        finally:
            peft_model.unload()
    elif variant in BASELINES:
        holder = GateHolder()
        gate = peft_reclora.RecLoraGate(CRM_DIM, 60, NUM_META_LORAS).to(model.device)

        def factory(base):
            return BaselineAdapterLinear(base, variant, holder, NUM_META_LORAS, RANK, LORA_ALPHA / RANK, dtype)

        with swapped_modules(model, ("q_proj", "v_proj"), factory):
            yield AdaptedModel(variant, model, gate=gate, holder=holder)
    elif variant.startswith("peft-lora-"):
        rank = int(variant.split("-r")[1].split("-")[0])
        peft_model = get_peft_model(model, lora_config(rank), autocast_adapter_dtype=variant.endswith("defaults"))
        try:
            yield AdaptedModel(variant, peft_model)
        finally:
            peft_model.unload()
    else:
        raise ValueError(f"unknown variant {variant!r}")
    leftovers = [n for n, m in model.named_modules() if n.endswith(("q_proj", "v_proj")) and type(m) is not nn.Linear]
    if leftovers:
        raise RuntimeError(f"variant {variant} left adapted modules behind: {leftovers[:2]}")


def run_variants(args, model: nn.Module, names: list[str], make_step: Callable[[AdaptedModel], Callable[[], object]],
                 inference: bool) -> dict[str, dict]:
    """Apply each variant to ``model`` and time the step ``make_step(runner)`` builds for it.

    On CUDA the variants run one after the other on the one model (a second copy of a 7B model does not fit), with
    the peak memory of each. On CPU each variant gets its own copy of the model and all are timed round-robin
    (``measure_interleaved``), which keeps the drift of a shared CPU out of the comparison.
    """
    device = args.device
    grad_mode = torch.inference_mode if inference else torch.enable_grad
    results = {}
    if device.type == "cuda":
        for name in names:
            print(f"... {name}", flush=True)
            try:
                with adapted(name, model, args.dtype) as runner:
                    step = make_step(runner)
                    reset_peak_memory(device)
                    with grad_mode():
                        timing = measure(step, device, args.warmup, args.repeats, flush_l2=False)
                    results[name] = dict(timing, peak_mem_gb=peak_memory_gb(device),
                                         adapter_dtype=runner.adapter_dtype(), **_step_info(step))
                    step = None
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                results[name] = {"ms": None, "skipped": "out of memory"}
            torch.cuda.empty_cache()
        return results
    import copy
    from contextlib import ExitStack

    with ExitStack() as stack:
        steps, dtypes = {}, {}
        for name in names:
            runner = stack.enter_context(adapted(name, copy.deepcopy(model), args.dtype))
            steps[name], dtypes[name] = make_step(runner), runner.adapter_dtype()
        print(f"... timing {len(steps)} variants round-robin", flush=True)
        with grad_mode():
            timings = measure_interleaved(steps, device, args.warmup, args.repeats, flush_l2=False)
        info = {name: _step_info(step) for name, step in steps.items()}
    return {name: dict(timings[name], peak_mem_gb=None, adapter_dtype=dtypes[name], **info[name]) for name in names}


def _step_info(step) -> dict:
    """Facts a step function carries about itself (e.g. ``trainable_params``)."""
    return {"trainable_params": step.trainable_params} if hasattr(step, "trainable_params") else {}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def fmt_pct(value: Optional[float]) -> Optional[float]:
    return None if value is None or math.isnan(value) else round(value, 1)


def meta_lora_call(x, weight, bias, lora_A, lora_B, gate, backend, mixing="output", post_hoc=False):
    """RecLoRA's op on a plain linear base: adapter first with the base accumulated (default) or, with
    ``post_hoc``, the base output computed first and the adapter added to it (the opaque/quantized-base path)."""
    if post_hoc:
        return meta_lora(x, lora_A, lora_B, gate, LORA_ALPHA / RANK, NUM_META_LORAS, mixing=mixing,
                         base_output=F.linear(x, weight, bias), backend=backend)
    return meta_lora(x, lora_A, lora_B, gate, LORA_ALPHA / RANK, NUM_META_LORAS, mixing=mixing, base_weight=weight,
                     base_bias=bias, backend=backend)


def git_revision() -> Optional[str]:
    head = REPO_ROOT / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref:"):
            return (REPO_ROOT / ".git" / ref.split(" ", 1)[1]).read_text().strip()[:12]
        return ref[:12]
    except OSError:
        return None



# ---------------------------------------------------------------------------------------------------------------------
# markdown summaries of saved results (for the README's Performance section)


def _fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def render_markdown(document: dict) -> str:
    """A compact markdown table of one results file, with its device, versions and date."""
    versions = document["versions"]
    header = (f"{document['benchmark']}, preset `{document['preset']}`: {document['device']}; "
              f"torch {versions['torch']}, triton {versions.get('triton')}, "
              f"transformers {versions.get('transformers')}, peft {versions.get('peft')}; {document['date']}")
    rows = document["rows"]
    lines = [header, ""]
    if document["benchmark"] == "bench_layer":
        for d_out in sorted({r["d_out"] for r in rows if r.get("d_out")}, reverse=True):
            keys = sorted({(r["tokens"], r["pass"]) for r in rows if r.get("d_out") == d_out},
                          key=lambda k: (k[1] != "fwd", k[0]))
            lines.append("| variant (d_in {} -> d_out {}) | ".format(rows[0]["d_in"], d_out)
                         + " | ".join(f"{p} T={t}" for t, p in keys) + " |")
            lines.append("|---|" + "---|" * len(keys))
            for variant in dict.fromkeys(r["variant"] for r in rows if r.get("d_out") == d_out):
                cells = []
                for tokens, pass_name in keys:
                    row = next((r for r in rows if r["variant"] == variant and r.get("d_out") == d_out
                                and r["tokens"] == tokens and r["pass"] == pass_name), None)
                    if row is None or row.get("ms") is None:
                        cells.append(row.get("skipped", "-") if row else "-")
                    elif variant == "base":
                        cells.append(f"{_fmt(row['ms'])} ms")
                    else:
                        cells.append(f"{_fmt(row['ms'])} ms (+{row.get('overhead_pct')}%)")
                lines.append(f"| {variant} | " + " | ".join(cells) + " |")
            lines.append("")
        gates = [r for r in rows if r["variant"] == "gate"]
        if gates:
            lines.append("Gate, once per batch: " + ", ".join(f"B={g['batch']} {_fmt(g['ms'])} ms" for g in gates))
    elif document["benchmark"] == "bench_e2e":
        batches = sorted({r["batch"] for r in rows if r["variant"] != "gate"})
        lines.append("| variant | " + " | ".join(f"B={b} samples/s (% of base)" for b in batches) + " | peak GB |")
        lines.append("|---|" + "---|" * (len(batches) + 1))
        for variant in dict.fromkeys(r["variant"] for r in rows if r["variant"] != "gate"):
            cells, peaks = [], []
            for batch in batches:
                row = next((r for r in rows if r["variant"] == variant and r["batch"] == batch), None)
                if row is None or not row.get("samples_per_s"):
                    cells.append(row.get("skipped", "-") if row else "-")
                    continue
                cells.append(f"{_fmt(row['samples_per_s'])} ({row.get('pct_of_base')}%)")
                if row.get("peak_mem_gb"):
                    peaks.append(row["peak_mem_gb"])
            lines.append(f"| {variant} | " + " | ".join(cells) + f" | {_fmt(max(peaks)) if peaks else '-'} |")
        gates = [r for r in rows if r["variant"] == "gate"]
        if gates:
            lines.append("")
            lines.append("Gate, once per batch: " + ", ".join(f"B={g['batch']} {_fmt(g['ms'])} ms" for g in gates))
    else:
        lines.append("| variant | ms / step | x PEFT r=8 defaults | peak GB "
                     "| x PEFT r=128 memory | trainable params |")
        lines.append("|---|---|---|---|---|---|")
        for row in rows:
            lines.append(f"| {row['variant']} | {_fmt(row.get('ms'))} | {_fmt(row.get('time_vs_peft_r8_defaults'))} | "
                         f"{_fmt(row.get('peak_mem_gb'))} | {_fmt(row.get('mem_vs_peft_r128'))} | "
                         f"{row.get('trainable_params', '-')} |")
    notes = [n for n in document.get("notes", []) if " over base; " not in n and "skipped" not in n]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    summary = argparse.ArgumentParser(description="Print saved benchmark results as markdown tables")
    summary.add_argument("files", nargs="+", type=Path)
    for file in summary.parse_args().files:
        print(render_markdown(json.loads(file.read_text())))
