"""Every meta-LoRA backend against the float64 per-meta-LoRA reference, forward and backward.

The Triton kernels run through Triton's CPU interpreter here (``TRITON_INTERPRET=1`` is set per test; the backend
builds interpreted kernels for CPU tensors whatever was imported first), and compiled on CUDA when a GPU is present.
Every buffer a Triton kernel must fully write is filled with NaN first, so an element it skips fails the comparison.
"""

import re

import pytest
import torch
from torch import nn

from peft_reclora.ops import BACKEND_ENV_VAR, meta_lora, meta_lora_reference, resolve_backend, triton_kernels


requires_triton = pytest.mark.skipif(triton_kernels.triton is None, reason="triton is not installed")
requires_cuda = pytest.mark.skipif(
    triton_kernels.triton is None or not torch.cuda.is_available(), reason="needs triton and a CUDA device"
)

BACKENDS = ["torch", pytest.param("triton", marks=requires_triton)]

# (batch, rows per sample (None: 2-D x), d_in, d_out, num_meta_loras, r): rows T = batch * rows are never a multiple of
# a block size, d is never a multiple of 64, and num_meta_loras * r covers 8, 64, 128, 256 and a non-power-of-two.
SHAPES = [
    (3, 13, 72, 40, 4, 2),  # T=39, N*r=8
    (2, 37, 100, 65, 16, 4),  # T=74, N*r=64
    (2, 9, 33, 20, 16, 8),  # T=18, N*r=128 (the paper's 16 x 8)
    (1, 21, 48, 70, 32, 8),  # T=21, N*r=256
    (5, None, 24, 30, 5, 3),  # 2-D x (one row per sample), N*r=15
]
BASES = ["none", "linear", "linear_bias", "output"]


@pytest.fixture
def interpreter(monkeypatch):
    """Let the Triton backend run on CPU tensors through the interpreter for the duration of a test."""
    monkeypatch.setenv(triton_kernels.INTERPRET_ENV_VAR, "1")


def _make_inputs(shape, base, dtype=torch.float32, device="cpu", seed=0):
    batch, rows, d_in, d_out, num_meta_loras, r = shape
    generator = torch.Generator().manual_seed(seed)

    def randn(*size, scale=1.0):
        return (scale * torch.randn(*size, generator=generator)).to(device=device, dtype=dtype)

    leading = (batch,) if rows is None else (batch, rows)
    tensors = {
        "x": randn(*leading, d_in),
        "lora_A": randn(num_meta_loras * r, d_in, scale=d_in**-0.5),
        "lora_B": randn(d_out, num_meta_loras * r, scale=0.5),
        # a softmax gate, as the model produces, kept in fp32 like the model's gate
        "gate": torch.softmax(torch.randn(batch, num_meta_loras, generator=generator), dim=-1).to(device),
    }
    if base in ("linear", "linear_bias"):
        tensors["base_weight"] = randn(d_out, d_in, scale=d_in**-0.5)
    if base == "linear_bias":
        tensors["base_bias"] = randn(d_out)
    if base == "output":
        tensors["base_output"] = randn(*leading, d_out)
    return tensors, num_meta_loras


def _reference(tensors, num_meta_loras, scaling, mixing):
    """Float64 per-meta-LoRA loop plus the base, with autograd on every input."""
    t = {name: value.detach().double().requires_grad_() for name, value in tensors.items()}
    out = meta_lora_reference(t["x"], t["lora_A"], t["lora_B"], t["gate"], scaling, num_meta_loras, mixing)
    if "base_weight" in t:
        out = out + nn.functional.linear(t["x"], t["base_weight"], t.get("base_bias"))
    if "base_output" in t:
        out = out + t["base_output"]
    return out, t


def _run(backend, tensors, num_meta_loras, scaling, mixing, **settings):
    leaves = {name: value.detach().clone().requires_grad_() for name, value in tensors.items()}
    with triton_kernels.kernel_settings(poison_outputs=True, **settings):
        out = meta_lora(
            leaves["x"], leaves["lora_A"], leaves["lora_B"], leaves["gate"], scaling, num_meta_loras,
            mixing=mixing, base_weight=leaves.get("base_weight"), base_bias=leaves.get("base_bias"),
            base_output=leaves.get("base_output"), backend=backend,
        )
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(99)).to(out)
        grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
    return out, dict(zip(leaves, grads)), grad_out


def _assert_close(got, want, tol, what):
    """Max error relative to the reference's largest magnitude: fails on NaN (unwritten) and on wrong values."""
    assert got.shape == want.shape, what
    assert torch.isfinite(got).all(), f"{what}: non-finite values (an element was not written)"
    scale = want.abs().max().clamp_min(1e-12)
    error = ((got.double() - want).abs().max() / scale).item()
    assert error < tol, f"{what}: relative error {error:.2e} >= {tol:.0e}"


def _check_against_reference(backend, shape, mixing, base, dtype=torch.float32, device="cpu", tol=2e-5, **settings):
    tensors, num_meta_loras = _make_inputs(shape, base, dtype=dtype, device=device)
    scaling = 2.0
    out, grads, grad_out = _run(backend, tensors, num_meta_loras, scaling, mixing, **settings)
    want, leaves = _reference(tensors, num_meta_loras, scaling, mixing)
    assert out.dtype == dtype
    _assert_close(out, want, tol, "output")
    want_grads = torch.autograd.grad(want, list(leaves.values()), grad_out.double())
    for (name, got), expected in zip(grads.items(), want_grads):
        assert got.dtype == tensors[name].dtype, name
        _assert_close(got, expected, tol, f"grad of {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mixing", ["output", "weights"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("base", BASES)
def test_backend_matches_reference_forward_and_backward(backend, mixing, shape, base, interpreter):
    _check_against_reference(backend, shape, mixing, base)


@requires_triton
@pytest.mark.parametrize("mixing", ["output", "weights"])
@pytest.mark.parametrize(
    "settings",
    [
        dict(split_k=1, fuse_grad_b=False, block_m=16),
        dict(split_k=3, fuse_grad_b=True, block_m=16),
        dict(split_k=2, fuse_grad_b=False, block_m=32),
        dict(split_k=1, fuse_grad_b=True, block_m=64),
    ],
    ids=str,
)
def test_triton_launch_plans_match_reference(mixing, settings, interpreter):
    """Split-K shrink with atomics, fused and cuBLAS dB, and several row-block sizes across ragged T."""
    _check_against_reference("triton", (3, 23, 150, 45, 16, 4), mixing, "linear_bias", **settings)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mixing", ["output", "weights"])
def test_half_precision_matches_reference(backend, mixing, interpreter):
    """float16 inputs, fp32 accumulation: within 1e-2 of the float64 result (bfloat16 is checked on CUDA below:
    Triton's interpreter does not compute bfloat16 products)."""
    _check_against_reference(backend, (2, 37, 100, 65, 16, 4), mixing, "linear_bias", dtype=torch.float16, tol=1e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_banks_with_half_precision_inputs(backend, interpreter):
    """PEFT keeps adapter weights in fp32 next to a 16-bit model by default: the banks are rounded to x's dtype."""
    tensors, num_meta_loras = _make_inputs((2, 37, 100, 65, 16, 4), "linear_bias", dtype=torch.float16)
    tensors["lora_A"], tensors["lora_B"] = tensors["lora_A"].float(), tensors["lora_B"].float()
    out, grads, grad_out = _run(backend, tensors, num_meta_loras, 2.0, "output")
    want, leaves = _reference(tensors, num_meta_loras, 2.0, "output")
    assert out.dtype == torch.float16
    _assert_close(out, want, 1e-2, "output")
    for (name, got), expected in zip(grads.items(),
                                     torch.autograd.grad(want, list(leaves.values()), grad_out.double())):
        assert got.dtype == tensors[name].dtype, name
        _assert_close(got, expected, 1e-2, f"grad of {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mixing", ["output", "weights"])
def test_padded_batch_rows_use_their_own_sample_gate(backend, mixing, interpreter):
    """Samples of different lengths, left-padded to one length: each sample's real rows equal that sample run alone,
    so rows map to their sample's gate (row t -> sample t // rows) and padding rows do not leak into them."""
    generator = torch.Generator().manual_seed(5)
    lengths, d_in, d_out, num_meta_loras, r = [11, 4, 7], 40, 36, 8, 4
    padded = max(lengths)
    pad_row = torch.randn(d_in, generator=generator)  # the pad token's embedding: a real, non-zero vector
    samples = [torch.randn(n, d_in, generator=generator) for n in lengths]
    x = torch.stack([torch.cat([pad_row.expand(padded - len(s), d_in), s]) for s in samples])
    lora_A = torch.randn(num_meta_loras * r, d_in, generator=generator) / d_in**0.5
    lora_B = torch.randn(d_out, num_meta_loras * r, generator=generator)
    gate = torch.softmax(3 * torch.randn(len(lengths), num_meta_loras, generator=generator), dim=-1)
    weight = torch.randn(d_out, d_in, generator=generator) / d_in**0.5
    with triton_kernels.kernel_settings(poison_outputs=True, block_m=16):
        out = meta_lora(x, lora_A, lora_B, gate, 2.0, num_meta_loras, mixing=mixing, base_weight=weight,
                        backend=backend)
        for b, sample in enumerate(samples):
            alone = meta_lora(
                sample[None], lora_A, lora_B, gate[b : b + 1], 2.0, num_meta_loras, mixing=mixing, base_weight=weight,
                backend=backend,
            )
            torch.testing.assert_close(out[b, padded - lengths[b] :], alone[0], rtol=1e-5, atol=1e-5)
    want = meta_lora_reference(x.double(), lora_A.double(), lora_B.double(), gate.double(), 2.0, num_meta_loras,
                               mixing)
    _assert_close(out - nn.functional.linear(x, weight), want, 2e-5, "padded batch delta")


@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_accumulates_into_base_output_in_place(backend, interpreter):
    tensors, num_meta_loras = _make_inputs((2, 19, 40, 33, 4, 2), "output", seed=3)
    want, _ = _reference(tensors, num_meta_loras, 2.0, "output")
    base_output = tensors["base_output"].clone()
    with torch.no_grad():
        out = meta_lora(
            tensors["x"], tensors["lora_A"], tensors["lora_B"], tensors["gate"], 2.0, num_meta_loras,
            base_output=base_output, backend=backend,
        )
    assert out.data_ptr() == base_output.data_ptr()
    _assert_close(out, want.detach(), 2e-5, "in-place output")


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_requested_gradients_are_computed(backend, interpreter):
    """A frozen bank (requires_grad False) with a trainable gate and input: the rest still matches the reference."""
    tensors, num_meta_loras = _make_inputs((2, 10, 40, 24, 4, 4), "linear", seed=4)
    x = tensors["x"].clone().requires_grad_()
    gate = tensors["gate"].clone().requires_grad_()
    with triton_kernels.kernel_settings(poison_outputs=True):
        out = meta_lora(
            x, tensors["lora_A"], tensors["lora_B"], gate, 2.0, num_meta_loras, base_weight=tensors["base_weight"],
            backend=backend,
        )
        grad_x, grad_gate = torch.autograd.grad(out.square().sum(), [x, gate])
    want, leaves = _reference(tensors, num_meta_loras, 2.0, "output")
    want_x, want_gate = torch.autograd.grad(want.square().sum(), [leaves["x"], leaves["gate"]])
    _assert_close(grad_x, want_x, 2e-5, "grad of x")
    _assert_close(grad_gate, want_gate, 2e-5, "grad of gate")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("leading", [(0,), (0, 5), (2, 0)], ids=str)
def test_empty_inputs_give_empty_outputs_and_gradients(backend, leading, interpreter):
    x = torch.randn(*leading, 12, requires_grad=True)
    lora_A = torch.randn(8, 12, requires_grad=True)
    gate = torch.rand(leading[0], 4, requires_grad=True)
    out = meta_lora(x, lora_A, torch.randn(6, 8), gate, 2.0, 4, base_weight=torch.randn(6, 12), backend=backend)
    assert out.shape == (*leading, 6)
    grad_x, grad_A, grad_gate = torch.autograd.grad(out.sum(), [x, lora_A, gate])
    assert grad_x.shape == x.shape and grad_gate.shape == gate.shape
    assert torch.count_nonzero(grad_A) == 0  # no rows, nothing to learn


@requires_triton
@pytest.mark.parametrize("mixing", ["output", "weights"])
def test_model_with_triton_backend_matches_torch_backend(mixing, interpreter):
    """kernel_backend="triton" reaches the kernels through the PEFT model: logits and adapter gradients equal the
    PyTorch backend's."""
    from peft import get_peft_model

    from support.tiny_models import make_tiny_llama, reclora_config

    generator = torch.Generator().manual_seed(11)
    input_ids = torch.randint(3, 64, (3, 9), generator=generator)
    crm = torch.randn(3, 6, generator=generator)
    results = {}
    for backend in ("torch", "triton"):
        model = get_peft_model(make_tiny_llama(), reclora_config(kernel_backend=backend, mixing=mixing))
        logits = model(input_ids=input_ids, crm_embeds=crm).logits
        logits.square().mean().backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
        results[backend] = (logits, grads)
    torch.testing.assert_close(results["triton"][0], results["torch"][0], rtol=1e-5, atol=1e-5)
    assert results["triton"][1].keys() == results["torch"][1].keys()
    for name, grad in results["torch"][1].items():
        torch.testing.assert_close(results["triton"][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------------------------------
# CUDA (compiled kernels); skipped without a GPU


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("mixing", ["output", "weights"])
@pytest.mark.parametrize("shape", [(3, 333, 1000, 520, 16, 8), (2, 700, 4096, 4096, 16, 8), (1, 77, 576, 192, 1, 8),
                                   (5, 300, 264, 130, 32, 8)], ids=lambda s: "x".join(map(str, s)))
def test_cuda_triton_matches_reference(dtype, mixing, shape, monkeypatch):
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    for base in BASES:
        _check_against_reference("triton", shape, mixing, base, dtype=dtype, device="cuda", tol=tol)


@requires_cuda
def test_cuda_auto_backend_is_triton_for_half_precision():
    assert resolve_backend("auto", torch.device("cuda"), torch.bfloat16) == "triton"
    assert resolve_backend("auto", torch.device("cuda"), torch.float32) == "torch"


# ---------------------------------------------------------------------------------------------------------------------
# ahead-of-time compilation for an H100 (no GPU needed: Triton's bundled ptxas)

H100_SMEM_BYTES = 232448  # 227 KiB of shared memory per block on sm_90
POINTER_TYPES = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}


def _record_launches(monkeypatch, shape, mixing, base, bank_dtype=torch.bfloat16, gpu_sms=132):
    """The kernel launches (source, args, constexprs) one forward+backward makes on a GPU with ``gpu_sms`` SMs, found
    by running the real code on meta tensors with the launcher replaced by a recorder."""
    batch, rows, d_in, d_out, num_meta_loras, r = shape
    launches = []

    class Recorder:
        def __init__(self, source):
            self.source = source

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.source, args, kwargs))

    monkeypatch.setattr(triton_kernels, "_kernel", lambda source, device: Recorder(source))
    monkeypatch.setattr(triton_kernels, "_gpu_sms", lambda device: gpu_sms)
    monkeypatch.setattr(triton_kernels, "_launch_options", lambda tiles, device: {"num_warps": tiles.num_warps})
    meta = dict(device="meta", dtype=torch.bfloat16)
    x = torch.empty(batch, rows, d_in, **meta, requires_grad=True)
    lora_A = torch.empty(num_meta_loras * r, d_in, device="meta", dtype=bank_dtype, requires_grad=True)
    lora_B = torch.empty(d_out, num_meta_loras * r, device="meta", dtype=bank_dtype, requires_grad=True)
    gate = torch.empty(batch, num_meta_loras, device="meta", requires_grad=True)
    weight = torch.empty(d_out, d_in, **meta) if base == "linear" else None
    base_output = torch.empty(batch, rows, d_out, **meta) if base == "output" else None
    out = triton_kernels.meta_lora_triton(x, lora_A, lora_B, gate, 2.0, num_meta_loras, mixing, weight, None,
                                          base_output)
    torch.autograd.grad(out, [x, lora_A, lora_B, gate], torch.empty_like(out))
    return launches


def _compile_for_h100(source, args, constexprs):
    """Compile one recorded launch for sm_90 with the specialisation Triton's JIT would apply at run time (integer
    arguments equal to 1 become constants, those divisible by 16 and all pointers carry a divisibility hint)."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs = dict(constexprs)
    options = {"num_warps": constexprs.pop("num_warps")}
    names = list(inspect.signature(source).parameters)
    values = {**dict(zip(names, args)), **constexprs}
    signature, constants, attrs = {}, {}, {}
    for index, name in enumerate(names):
        value = values[name]
        if name in constexprs or (isinstance(value, int) and value == 1):
            signature[name], constants[(index,)] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name], attrs[(index,)] = POINTER_TYPES[value.dtype], [["tt.divisibility", 16]]
        elif isinstance(value, int):
            signature[name] = "i32" if abs(value) < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32"
    ast = ASTSource(triton.jit(source), signature, constexprs=constants, attrs=attrs)
    return triton.compile(ast, target=GPUTarget("cuda", 90, 32), options=options)


def _local_memory_bytes(compiled):
    """Spilled bytes per thread (ptxas' stack frame) read from the cubin with the cuobjdump that ships with Triton,
    or None when it is not there."""
    import os
    import subprocess
    import tempfile

    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(cuobjdump):
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as cubin:
            cubin.write(compiled.asm["cubin"])
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    found = re.search(r"STACK:(\d+)", usage)
    return int(found.group(1)) if found else None


@requires_triton
@pytest.mark.slow
@pytest.mark.parametrize(
    "tokens, num_meta_loras, mixing, bank_dtype",
    [(512, 16, "output", torch.bfloat16), (4096, 16, "output", torch.bfloat16), (32768, 16, "output", torch.bfloat16),
     (4096, 16, "output", torch.float32), (4096, 1, "output", torch.bfloat16), (4096, 32, "output", torch.bfloat16),
     (4096, 16, "weights", torch.bfloat16), (32768, 16, "weights", torch.bfloat16)],
    ids=str,
)
def test_kernels_compile_for_h100(tokens, num_meta_loras, mixing, bank_dtype, monkeypatch):
    """What only the compiler checks (layouts, shared memory, registers): every launch of a forward+backward at the
    benchmark's Llama-7B shapes (bf16 activations, d=4096, 512-token samples, r=8; banks in bf16 or, as PEFT keeps
    them by default, fp32) compiles for sm_90, fits in shared memory and runs its products on tensor cores; the
    paper's mixing also stays within registers (no spills)."""
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        pytest.skip("this triton build has no NVIDIA backend")
    seen = set()
    for base in ("linear", "output"):
        shape = (tokens // 512, 512, 4096, 4096, num_meta_loras, 8)
        for source, args, constexprs in _record_launches(monkeypatch, shape, mixing, base, bank_dtype):
            key = (source.__name__, tuple(sorted(constexprs.items())))
            if key in seen:
                continue
            seen.add(key)
            compiled = _compile_for_h100(source, args, constexprs)
            what = f"{source.__name__} {constexprs}"
            assert compiled.metadata.shared <= H100_SMEM_BYTES, what
            # an MMA layout (version 3: wgmma; 2: mma.sync for blocks under 64 rows) means tensor cores
            assert re.search(r"nvidia_mma<\{versionMajor = [23]", compiled.asm["ttgir"]), f"no MMA in {what}"
            spilled = _local_memory_bytes(compiled)
            if mixing == "output" and spilled is not None:
                assert spilled == 0, f"{what} spills {spilled} bytes per thread"
    assert {name for name, _ in seen} == {"shrink_gate_kernel", "expand_kernel", "grad_intermediate_kernel"}


# ---------------------------------------------------------------------------------------------------------------------
# backend selection and bad input


def test_auto_backend_is_torch_on_cpu_and_env_var_overrides(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    assert resolve_backend(None, torch.device("cpu"), torch.float32) == "torch"
    monkeypatch.setenv(BACKEND_ENV_VAR, "reference")
    assert resolve_backend("auto", torch.device("cpu")) == "reference"
    assert resolve_backend("torch", torch.device("cpu")) == "torch"  # an explicit choice wins over the variable
    monkeypatch.setenv(BACKEND_ENV_VAR, "cuda-magic")
    with pytest.raises(ValueError, match=BACKEND_ENV_VAR):
        resolve_backend(None, torch.device("cpu"))
    with pytest.raises(ValueError, match="Unknown meta-LoRA backend 'fast'"):
        resolve_backend("fast", torch.device("cpu"))


@requires_triton
def test_triton_on_cpu_without_interpreter_says_how_to_enable_it(monkeypatch):
    monkeypatch.delenv(triton_kernels.INTERPRET_ENV_VAR, raising=False)
    tensors, num_meta_loras = _make_inputs(SHAPES[0], "none")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        meta_lora(*tensors.values(), 2.0, num_meta_loras, backend="triton")


@requires_triton
def test_triton_rejects_unsupported_dtypes(interpreter):
    tensors, num_meta_loras = _make_inputs(SHAPES[0], "none", dtype=torch.float64)
    with pytest.raises(ValueError, match="float64"):
        meta_lora(*tensors.values(), 2.0, num_meta_loras, backend="triton")
    tensors, num_meta_loras = _make_inputs(SHAPES[0], "none", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16"):
        meta_lora(*tensors.values(), 2.0, num_meta_loras, backend="triton")


def _bad_inputs():
    good, n = _make_inputs((2, 5, 12, 10, 4, 2), "none")
    x, A, B, gate = good["x"], good["lora_A"], good["lora_B"], good["gate"]
    return [
        ("lora_A", dict(lora_A=torch.randn(7, 12))),  # 7 rows: not a multiple of 4 meta-LoRAs
        ("lora_B", dict(lora_B=torch.randn(10, 6))),
        ("lora_A and lora_B must be 2-D", dict(lora_A=A[None])),
        ("x has 11 features", dict(x=torch.randn(2, 5, 11))),
        ("gate must be", dict(gate=torch.randn(2, 3))),
        ("gate has 3 rows", dict(gate=torch.randn(3, 4))),
        ("base_weight", dict(base_weight=torch.randn(10, 13))),
        ("base_bias", dict(base_weight=torch.randn(10, 12), base_bias=torch.randn(9))),
        ("base_bias needs base_weight", dict(base_bias=torch.randn(10))),
        ("base_output", dict(base_output=torch.randn(2, 6, 10))),
        ("not both", dict(base_weight=torch.randn(10, 12), base_output=torch.randn(2, 5, 10))),
        ("mixing", dict(mixing="experts")),
    ], dict(x=x, lora_A=A, lora_B=B, gate=gate, num_meta_loras=n)


@pytest.mark.parametrize("backend", ["torch", "reference", pytest.param("triton", marks=requires_triton)])
@pytest.mark.parametrize("case", range(len(_bad_inputs()[0])), ids=lambda i: _bad_inputs()[0][i][0])
def test_bad_inputs_raise_value_error_naming_the_tensor(backend, case, interpreter):
    cases, good = _bad_inputs()
    message, overrides = cases[case]
    args = {**good, **overrides}
    mixing = args.pop("mixing", "output")
    with pytest.raises(ValueError, match=message):
        meta_lora(
            args.pop("x"), args.pop("lora_A"), args.pop("lora_B"), args.pop("gate"), 2.0, args.pop("num_meta_loras"),
            mixing=mixing, backend=backend, **args,
        )
