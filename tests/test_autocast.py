"""RecLoRA under ``torch.autocast``: every backend computes in the autocast dtype, as ``nn.Linear`` does there, and its
gradients match the float64 per-meta-LoRA reference within that dtype's tolerance.

The mixed-precision recipe is fp32 (or bf16) weights with a bf16/fp16 autocast region around the forward; the
backward runs outside it. Triton runs through its CPU interpreter here, which computes float16 but not bfloat16
products; the CUDA cases run where a GPU is present.
"""

import copy

import pytest
import torch
from peft import get_peft_model
from torch import nn

from peft_reclora.ops import BACKEND_ENV_VAR, meta_lora, meta_lora_reference, triton_kernels

from support.tiny_models import TokenSamples, make_tiny_llama, reclora_config


requires_triton = pytest.mark.skipif(triton_kernels.triton is None, reason="triton is not installed")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# (weights dtype, autocast dtype): the standard recipe on fp32 weights, and a 16-bit base under the other 16-bit type.
RECIPES = [
    (torch.float32, torch.bfloat16),
    (torch.float32, torch.float16),
    (torch.bfloat16, torch.float16),
    (torch.bfloat16, torch.bfloat16),
]
# Relative error (to the reference's largest magnitude) allowed when the products run in each dtype.
TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 4e-2}


def _recipe_id(recipe):
    weights, autocast = recipe
    return f"{str(weights).removeprefix('torch.')}-weights-{str(autocast).removeprefix('torch.')}-autocast"


def _cpu_cases():
    """Every recipe on every backend, except Triton under bfloat16: the interpreter multiplies bfloat16 bit
    patterns, not values (the CUDA test below covers it)."""
    cases = []
    for recipe in RECIPES:
        for backend in ("torch", "reference", "triton"):
            if backend == "triton" and recipe[1] == torch.bfloat16:
                continue
            marks = [requires_triton] if backend == "triton" else []
            cases.append(pytest.param(recipe, backend, marks=marks, id=f"{_recipe_id(recipe)}-{backend}"))
    return cases


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv(triton_kernels.INTERPRET_ENV_VAR, "1")


def _inputs(weights_dtype, base, device="cpu", seed=0):
    """Random (never zero) tensors: x and the frozen base in the weights dtype, the banks in fp32 (PEFT keeps adapter
    weights in fp32 next to a 16-bit model), and a softmax gate in fp32."""
    batch, rows, d_in, d_out, num_meta_loras, r = 2, 11, 40, 24, 4, 2
    generator = torch.Generator().manual_seed(seed)

    def randn(*size, scale=1.0, dtype=weights_dtype):
        return (scale * torch.randn(*size, generator=generator)).to(device=device, dtype=dtype)

    tensors = {
        "x": randn(batch, rows, d_in),
        "lora_A": randn(num_meta_loras * r, d_in, scale=d_in**-0.5, dtype=torch.float32),
        "lora_B": randn(d_out, num_meta_loras * r, scale=0.5, dtype=torch.float32),
        "gate": torch.softmax(torch.randn(batch, num_meta_loras, generator=generator), dim=-1).to(device),
    }
    if base == "linear":
        tensors["base_weight"] = randn(d_out, d_in, scale=d_in**-0.5)
        tensors["base_bias"] = randn(d_out)
    else:  # an opaque base's output, as the layer computes it under autocast
        tensors["base_output"] = randn(batch, rows, d_out)
    return tensors, num_meta_loras


def _assert_close(got, want, tol, what):
    assert got.shape == want.shape, what
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    error = ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()
    assert error < tol, f"{what}: relative error {error:.2e} >= {tol:.0e}"


def _check_under_autocast(backend, weights_dtype, autocast_dtype, base, mixing, device="cpu"):
    tensors, num_meta_loras = _inputs(weights_dtype, base, device)
    leaves = {name: value.detach().clone().requires_grad_() for name, value in tensors.items()}
    with triton_kernels.kernel_settings(poison_outputs=True):
        with torch.autocast(device, dtype=autocast_dtype):
            out = meta_lora(
                leaves["x"], leaves["lora_A"], leaves["lora_B"], leaves["gate"], 2.0, num_meta_loras, mixing=mixing,
                base_weight=leaves.get("base_weight"), base_bias=leaves.get("base_bias"),
                base_output=leaves.get("base_output"), backend=backend,
            )
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(99)).to(out)
        grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
    assert out.dtype == autocast_dtype  # as nn.Linear's output under autocast

    exact = {name: value.detach().double().requires_grad_() for name, value in tensors.items()}
    want = meta_lora_reference(exact["x"], exact["lora_A"], exact["lora_B"], exact["gate"], 2.0, num_meta_loras,
                               mixing)
    if "base_weight" in exact:
        want = want + nn.functional.linear(exact["x"], exact["base_weight"], exact["base_bias"])
    else:
        want = want + exact["base_output"]
    want_grads = torch.autograd.grad(want, list(exact.values()), grad_out.double())
    tol = TOLERANCE[autocast_dtype]
    _assert_close(out, want, tol, "output")
    for (name, got), expected in zip(zip(leaves, grads), want_grads):
        assert got.dtype == tensors[name].dtype, f"grad of {name} has dtype {got.dtype}"
        _assert_close(got, expected, tol, f"grad of {name}")


@pytest.mark.parametrize("recipe, backend", _cpu_cases())
@pytest.mark.parametrize("base", ["linear", "output"])
@pytest.mark.parametrize("mixing", ["output", "weights"])
def test_backends_under_autocast_match_the_float64_reference(recipe, backend, base, mixing, interpreter):
    _check_under_autocast(backend, *recipe, base, mixing)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=requires_triton)])
def test_backward_called_inside_the_autocast_region(backend, interpreter):
    """Some loops call backward() inside the autocast block: the gradients are those of a backward outside it."""
    tensors, num_meta_loras = _inputs(torch.float32, "linear", seed=2)
    grads = []
    for backward_inside in (False, True):
        leaves = {name: value.detach().clone().requires_grad_() for name, value in tensors.items()}
        with torch.autocast("cpu", dtype=torch.float16):
            out = meta_lora(
                leaves["x"], leaves["lora_A"], leaves["lora_B"], leaves["gate"], 2.0, num_meta_loras,
                base_weight=leaves["base_weight"], base_bias=leaves["base_bias"], backend=backend,
            )
            if backward_inside:
                out.float().square().sum().backward()
        if not backward_inside:
            out.float().square().sum().backward()
        grads.append({name: leaf.grad for name, leaf in leaves.items()})
    for name, grad in grads[0].items():
        assert grads[1][name].dtype == grad.dtype, name
        torch.testing.assert_close(grads[1][name], grad, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_autocast_leaves_float64_inputs_alone(backend):
    """Autocast never lowers float64; the float64 oracle stays exact inside an autocast region."""
    tensors, num_meta_loras = _inputs(torch.float64, "linear", seed=1)
    tensors = {name: value.double() for name, value in tensors.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = meta_lora(
            tensors["x"], tensors["lora_A"], tensors["lora_B"], tensors["gate"], 2.0, num_meta_loras,
            base_weight=tensors["base_weight"], base_bias=tensors["base_bias"], backend=backend,
        )
    want = meta_lora_reference(tensors["x"], tensors["lora_A"], tensors["lora_B"], tensors["gate"], 2.0,
                               num_meta_loras)
    want = want + nn.functional.linear(tensors["x"], tensors["base_weight"], tensors["base_bias"])
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


@requires_cuda
@pytest.mark.parametrize("backend", ["torch", "reference", pytest.param("triton", marks=requires_triton)])
@pytest.mark.parametrize("recipe", RECIPES, ids=_recipe_id)
@pytest.mark.parametrize("base", ["linear", "output"])
def test_cuda_backends_under_autocast_match_the_float64_reference(backend, recipe, base, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    for mixing in ("output", "weights"):
        _check_under_autocast(backend, *recipe, base, mixing, device="cuda")


# ---------------------------------------------------------------------------------------------------------------------
# through the PEFT model


def _adapter_gradients(model, batch, autocast_dtype):
    model.zero_grad(set_to_none=True)
    if autocast_dtype is None:
        logits = model(**batch).logits
    else:
        with torch.autocast("cpu", dtype=autocast_dtype):
            logits = model(**batch).logits
    logits.float().square().sum().backward()  # a sum, not a mean: float16 gradients would underflow (no loss scaler)
    return {name: p.grad.double() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "recipe, backend",
    [pytest.param(recipe, "torch", id=f"{_recipe_id(recipe)}-torch") for recipe in RECIPES]
    + [
        pytest.param(recipe, "triton", marks=requires_triton, id=f"{_recipe_id(recipe)}-triton")
        for recipe in RECIPES
        if recipe[1] == torch.float16
    ],
)
def test_model_trains_under_autocast_with_the_reference_gradients(recipe, backend, batch, interpreter, monkeypatch):
    """One model, one batch: the adapter gradients of an autocast training step equal the reference backend's under
    the same autocast, and those of the same model's float64 step within the autocast dtype's tolerance."""
    weights_dtype, autocast_dtype = recipe
    model = get_peft_model(make_tiny_llama(dtype=weights_dtype), reclora_config()).train()
    exact = copy.deepcopy(model).double()
    monkeypatch.setenv(BACKEND_ENV_VAR, backend)
    got = _adapter_gradients(model, batch, autocast_dtype)
    monkeypatch.setenv(BACKEND_ENV_VAR, "reference")
    reference = _adapter_gradients(model, batch, autocast_dtype)
    full_precision = _adapter_gradients(exact, batch, None)
    assert got.keys() == reference.keys() == full_precision.keys()
    assert any("reclora_B" in name for name in got) and any("reclora_gate" in name for name in got)
    tol = TOLERANCE[autocast_dtype]
    for name, grad in got.items():
        _assert_close(grad, reference[name], tol, f"{name} against the reference backend")
        _assert_close(grad, full_precision[name], 2 * tol, f"{name} against the float64 step")


def test_trainer_bf16_mixed_precision_on_an_fp32_model(tmp_path):
    """The HF Trainer recipe: TrainingArguments(bf16=True) on fp32 weights runs the forward under bf16 autocast."""
    from transformers import Trainer, TrainingArguments

    model = get_peft_model(make_tiny_llama(), reclora_config(init_weights=True))

    adapted_output_dtypes = set()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    hook = layer.register_forward_hook(lambda module, args, output: adapted_output_dtypes.add(output.dtype))
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, bf16=True,
        report_to=[], save_strategy="no", use_cpu=True, logging_strategy="no", remove_unused_columns=False,
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    Trainer(
        model=model, args=args, train_dataset=TokenSamples(),
        data_collator=lambda rows: {key: torch.stack([row[key] for row in rows]) for key in rows[0]},
    ).train()
    hook.remove()
    assert adapted_output_dtypes == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(before[n], p.detach())]
    assert any("reclora_B" in n for n in changed) and any("reclora_gate" in n for n in changed)
    assert all(torch.isfinite(p).all() for p in model.parameters())
