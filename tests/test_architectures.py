"""``target_modules=None`` adapts every causal LM architecture PEFT's LoRA maps, including fused and Conv1D
projections."""

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers.pytorch_utils import Conv1D

from peft_reclora.layer import RecLoraLayer
from peft_reclora.model import default_target_modules

from support.tiny_models import TINY_VOCAB, reclora_config


COMMON = dict(vocab_size=TINY_VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
DECODER = dict(COMMON, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1, max_position_embeddings=64)

# model_type -> (config class, model class, config arguments, the module suffixes target_modules=None must adapt)
ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", DECODER, {"q_proj", "v_proj"}),
    "mistral": ("MistralConfig", "MistralForCausalLM", DECODER, {"q_proj", "v_proj"}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", DECODER, {"q_proj", "v_proj"}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(DECODER, head_dim=8), {"q_proj", "v_proj"}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(DECODER, head_dim=8), {"q_proj", "v_proj"}),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(DECODER, head_dim=8), {"q_proj", "v_proj"}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(DECODER, num_key_value_heads=2), {"qkv_proj"}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(COMMON, n_embd=16, n_layer=2, n_head=2, n_positions=64),
             {"c_attn"}),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(COMMON, hidden_size=16, ffn_dim=32, num_hidden_layers=2,
                                               num_attention_heads=2, max_position_embeddings=64,
                                               word_embed_proj_dim=16), {"q_proj", "v_proj"}),
}


def make_model(model_type: str, seed: int = 0):
    import transformers

    config_name, model_name, settings, _ = ARCHITECTURES[model_type]
    config = getattr(transformers, config_name)(**settings)
    assert config.model_type == model_type
    torch.manual_seed(seed)
    return getattr(transformers, model_name)(config).eval()


def make_reclora(model_type: str):
    model = get_peft_model(make_model(model_type), reclora_config(target_modules=None))
    model.eval()
    return model


def adapted_suffixes(model) -> set:
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, RecLoraLayer)}


def inputs():
    generator = torch.Generator().manual_seed(7)
    input_ids = torch.randint(3, TINY_VOCAB, (2, 5), generator=generator)
    crm = torch.randn(2, 6, generator=generator)
    return input_ids, torch.ones_like(input_ids), crm


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_target_modules_none_adapts_the_attention_projections(model_type):
    model = make_reclora(model_type)
    expected = ARCHITECTURES[model_type][3]
    assert adapted_suffixes(model) == expected
    assert model.peft_config["default"].target_modules == expected
    layers = model.base_model.reclora_layers("default")
    assert len(layers) == 2 * len(expected)  # every decoder layer
    if model_type == "gpt2":  # weight stored (in, out): the bank must still be (rank, d_in) and (d_out, rank)
        layer = next(iter(layers.values()))
        assert isinstance(layer.get_base_layer(), Conv1D)
        assert layer.reclora_A["default"].shape[1] == 16 and layer.reclora_B["default"].shape[0] == 48


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_forward_depends_on_crm_and_gradients_reach_the_bank(model_type):
    model = make_reclora(model_type)
    base = make_model(model_type)
    input_ids, mask, crm = inputs()
    with torch.no_grad():
        plain = base(input_ids=input_ids, attention_mask=mask).logits
        first = model(input_ids=input_ids, attention_mask=mask, crm_embeds=crm).logits
        other = model(input_ids=input_ids, attention_mask=mask, crm_embeds=crm.flip(0) + 1.0).logits
        with model.disable_adapter():
            disabled = model(input_ids=input_ids, attention_mask=mask).logits
    assert torch.allclose(disabled, plain, atol=1e-5)
    assert not torch.allclose(first, plain, atol=1e-4)  # the adapter changes the output
    assert not torch.allclose(first, other, atol=1e-5)  # ... differently per user

    model.train()
    loss = model(input_ids=input_ids, attention_mask=mask, crm_embeds=crm, labels=input_ids).loss
    loss.backward()
    for name, layer in model.base_model.reclora_layers("default").items():
        assert layer.reclora_A["default"].grad is not None and layer.reclora_A["default"].grad.abs().sum() > 0, name
        assert layer.reclora_B["default"].grad is not None and layer.reclora_B["default"].grad.abs().sum() > 0, name
    gate = model.base_model.reclora_gate["default"]
    assert gate.fc1_weight.grad is not None and gate.fc1_weight.grad.abs().sum() > 0


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_save_load_round_trip_and_generate(model_type, tmp_path):
    model = make_reclora(model_type)
    input_ids, mask, crm = inputs()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=mask, crm_embeds=crm).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_model(model_type), tmp_path).eval()
    assert loaded.peft_config["default"].target_modules == ARCHITECTURES[model_type][3]
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=input_ids, attention_mask=mask, crm_embeds=crm).logits, expected)

    out = loaded.generate(input_ids=input_ids, attention_mask=mask, crm_embeds=crm, max_new_tokens=3,
                          do_sample=False, pad_token_id=0)
    assert out.shape == (2, input_ids.shape[1] + 3)
    # generation is conditioned on crm_embeds: its first step is the adapted model's greedy choice
    assert torch.equal(out[:, input_ids.shape[1]], expected[:, -1].argmax(-1))


def test_the_conv1d_adapter_is_x_a_b_whatever_the_weight_layout():
    """GPT-2's Conv1D stores its weight (d_in, d_out); the adapter term must still be
    scaling * sum_k a_k x A_k^T B_k^T."""
    model = make_reclora("gpt2")
    name, layer = next(iter(model.base_model.reclora_layers("default").items()))
    x = torch.randn(2, 3, 16)
    crm = torch.randn(2, 6)
    with torch.no_grad(), model.base_model.use_crm_embeds(crm):
        got = layer(x)
    base = layer.get_base_layer()
    alpha = model.base_model.compute_gate(crm)  # (2, num_meta_loras)
    A, B = layer.reclora_A["default"], layer.reclora_B["default"]
    r = layer.r["default"]
    weights = alpha.repeat_interleave(r, dim=1)  # (2, N*r)
    delta = layer.scaling["default"] * ((x @ A.T) * weights[:, None, :]) @ B.T
    assert torch.allclose(got, base(x) + delta, atol=1e-5)
    assert torch.allclose(base(x), x @ base.weight + base.bias, atol=1e-6)


def test_an_unknown_architecture_gets_its_fused_projection_or_a_clear_error():
    fused = ["model", "model.layers.0.attn", "model.layers.0.attn.query_key_value", "model.layers.0.attn.dense"]
    assert default_target_modules(fused, "some-new-model") == ["query_key_value"]
    assert default_target_modules(fused, "phi3") == ["qkv_proj"]  # a mapped type takes the map's names
    with pytest.raises(ValueError, match="model_type 'some-new-model'.*Pass target_modules explicitly"):
        default_target_modules(["model", "model.layers.0.mixer.in_proj"], "some-new-model")


def test_the_config_check_sees_what_target_modules_none_will_adapt():
    """The pipeline's config-only check (before a run writes anything) refuses an architecture RecLoRA has no default
    for, and accepts Phi-3's fused projection."""
    from reclora_pipeline.architecture import Architecture, adapter_target_problem

    phi3 = Architecture(("model.layers.0.self_attn.qkv_proj",), ("qkv_proj",), 1, "phi3")
    assert adapter_target_problem(reclora_config(target_modules=None), phi3) is None
    mapped_but_absent = Architecture(("model.layers.0.self_attn.q_proj",), ("q_proj",), 1, "phi3")
    assert "match no module" in adapter_target_problem(reclora_config(target_modules=None), mapped_but_absent)
    unknown = Architecture(("model.layers.0.mixer.in_proj",), ("in_proj",), 1, "some-new-model")
    assert "Pass target_modules explicitly" in adapter_target_problem(reclora_config(target_modules=None), unknown)


@pytest.mark.parametrize("model_type", ["gpt2", "phi3"])
def test_a_users_exported_lora_computes_the_adapted_model(model_type, tmp_path):
    """Export folds one user's gate into a plain LoRA, also on fused and Conv1D projections."""
    model = make_reclora(model_type)
    input_ids, mask, crm = inputs()
    model.base_model.export_personalized_lora(crm[:1], str(tmp_path))
    lora = PeftModel.from_pretrained(make_model(model_type), tmp_path).eval()
    with torch.no_grad():
        expected = model(input_ids=input_ids[:1], attention_mask=mask[:1], crm_embeds=crm[:1]).logits
        got = lora(input_ids=input_ids[:1], attention_mask=mask[:1]).logits
    assert torch.allclose(got, expected, atol=1e-5)
