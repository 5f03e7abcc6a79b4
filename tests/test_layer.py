"""RecLoRA layers against the float64 per-meta-LoRA reference, forward and backward, for each gate and mixing mode."""

import pytest
import torch
from peft import get_peft_model
from torch import nn

from peft_reclora import RecLoraLayer
from peft_reclora.ops import meta_lora_reference

from support.tiny_models import make_tiny_llama, reclora_config


def _first_layer(peft_model, name="q_proj"):
    return next(m for n, m in peft_model.named_modules() if n.endswith(name) and isinstance(m, RecLoraLayer))


@pytest.mark.parametrize("gate_sharing", ["shared", "per_module"])
@pytest.mark.parametrize("mixing", ["output", "weights"])
@pytest.mark.parametrize("module_name", ["q_proj", "v_proj"])
def test_layer_matches_reference_forward_and_backward(gate_sharing, mixing, module_name):
    model = get_peft_model(
        make_tiny_llama(dtype=torch.float64),
        reclora_config(gate_sharing=gate_sharing, mixing=mixing, num_meta_loras=5, r=3),
        autocast_adapter_dtype=False,
    )
    layer = _first_layer(model, module_name)
    assert layer.reclora_A["default"].dtype == torch.float64
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(4, 9, layer.in_features, dtype=torch.float64, generator=generator, requires_grad=True)
    crm = torch.randn(4, 6, dtype=torch.float64, generator=generator)
    with model.base_model.use_crm_embeds(crm):
        out = layer(x)
    gate_module = layer.gate_module("default")
    alpha = gate_module(crm)
    base = layer.get_base_layer()
    expected = nn.functional.linear(x, base.weight) + meta_lora_reference(
        x, layer.reclora_A["default"], layer.reclora_B["default"], alpha, layer.scaling["default"], 5, mixing
    )
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)

    grad = torch.randn_like(out)
    params = [x, layer.reclora_A["default"], layer.reclora_B["default"], gate_module.fc1_weight, gate_module.fc2_bias]
    got = torch.autograd.grad(out, params, grad)
    want = torch.autograd.grad(expected, params, grad)
    for g, w in zip(got, want):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)


def test_beam_expanded_batch_interleaves_gate_rows():
    model = get_peft_model(make_tiny_llama(dtype=torch.float64), reclora_config(), autocast_adapter_dtype=False)
    layer = _first_layer(model)
    crm = torch.randn(2, 6, dtype=torch.float64)
    x = torch.randn(2, 5, layer.in_features, dtype=torch.float64)
    context = model.base_model._crm_context
    call = context.open_call(model.base_model.model, "generate", crm, frozenset({1, 3}))  # as generate(num_beams=3)
    try:
        single = layer(x)
        doubled = layer(x.repeat_interleave(3, dim=0))  # what beam search feeds the layer
        with pytest.raises(ValueError, match="crm_embeds"):
            layer(x.repeat_interleave(2, dim=0))  # a factor generate did not ask for
    finally:
        context.release(call)
    torch.testing.assert_close(doubled, single.repeat_interleave(3, dim=0))


def test_layer_batch_that_does_not_fit_the_crm_raises():
    model = get_peft_model(make_tiny_llama(), reclora_config())
    layer = _first_layer(model)
    with model.base_model.use_crm_embeds(torch.randn(2, 6)):
        with pytest.raises(ValueError, match="crm_embeds"):
            layer(torch.randn(3, 4, layer.in_features))
        with pytest.raises(ValueError, match="crm_embeds"):
            layer(torch.randn(4, 4, layer.in_features))  # no silent repetition outside generate
    with pytest.raises(ValueError, match="outside a call"):
        layer(torch.randn(2, 4, layer.in_features))


def test_gate_is_a_distribution_and_temperature_smooths_it():
    sharp = get_peft_model(make_tiny_llama(), reclora_config(temperature=0.5))
    smooth = get_peft_model(make_tiny_llama(), reclora_config(temperature=50.0))
    smooth.base_model.reclora_gate["default"].load_state_dict(sharp.base_model.reclora_gate["default"].state_dict())
    crm = torch.randn(5, 6)
    alpha_sharp = sharp.base_model.compute_gate(crm)
    alpha_smooth = smooth.base_model.compute_gate(crm)
    assert alpha_sharp.shape == (5, 4)
    torch.testing.assert_close(alpha_sharp.sum(-1), torch.ones(5))
    assert (alpha_sharp > 0).all()
    assert alpha_smooth.std(dim=-1).mean() < alpha_sharp.std(dim=-1).mean()


def test_banks_init_kaiming_per_meta_lora_and_zero_b():
    model = get_peft_model(make_tiny_llama(), reclora_config(init_weights=True, num_meta_loras=16, r=8))
    layer = _first_layer(model)
    A = layer.reclora_A["default"]
    assert A.shape == (16 * 8, layer.in_features)
    bound = 1.0 / layer.in_features**0.5  # kaiming_uniform(a=sqrt(5)) on fan_in = d_in, per meta-LoRA
    assert A.abs().max() <= bound
    per_meta_lora_std = A.view(16, 8, -1).std(dim=(1, 2))
    assert torch.allclose(per_meta_lora_std, torch.full_like(per_meta_lora_std, bound / 3**0.5), rtol=0.25)
    assert torch.count_nonzero(layer.reclora_B["default"]) == 0
