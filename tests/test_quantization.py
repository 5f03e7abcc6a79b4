"""Quantized bases (bitsandbytes 8-bit and 4-bit, on the CPU here) and the device each process loads them onto."""

import pytest
import torch

from reclora_pipeline import llm


bnb = pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def quantizable_base_model(tmp_path_factory, smollm2_dir):
    """A 2-layer random Llama whose every Linear is at least 64 wide: bitsandbytes' CPU 4-bit kernels quantize in
    blocks of 64 input features."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("quantizable-llama")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_rank_one_of_a_multi_gpu_machine_loads_onto_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert llm.process_device() == "cuda:1"
    seen = {}

    def from_pretrained(path, **kwargs):
        seen.update(kwargs)
        return "model"

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", from_pretrained)
    monkeypatch.setattr(llm, "resolve_model_path", lambda name: "/models/llama-7b")
    assert llm.load_base_model("/models/llama-7b", quantization="8bit") == "model"
    assert seen["device_map"] == {"": "cuda:1"}
    assert seen["quantization_config"].load_in_8bit


def test_device_choice_without_launcher_and_on_cpu(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert llm.process_device() == "cuda"
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(RuntimeError, match="LOCAL_RANK=2.*2 CUDA device"):
        llm.process_device()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert llm.process_device() == "cpu"


def test_quantization_config_names():
    assert llm.quantization_config("none", torch.float32) is None
    assert llm.quantization_config(None, torch.float32) is None
    four = llm.quantization_config("4bit", torch.bfloat16)
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_compute_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="llm.quantization must be"):
        llm.quantization_config("3bit", torch.float32)


@pytest.mark.parametrize("quantization, layer_class", [("8bit", "Linear8bitLt"), ("4bit", "Linear4bit")])
def test_quantized_tiny_base_loads_and_trains_reclora_on_cpu(quantizable_base_model, quantization, layer_class):
    from peft import get_peft_model, prepare_model_for_kbit_training

    import peft_reclora

    base = llm.load_base_model(quantizable_base_model, dtype=torch.float32, quantization=quantization)
    assert llm.is_quantized(base)
    assert type(base.model.layers[0].self_attn.q_proj).__name__ == layer_class
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    model = get_peft_model(base, peft_reclora.RecLoraConfig(crm_dim=6, r=4, num_meta_loras=3, task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (2, 7), generator=generator)
    crm_embeds = torch.randn(2, 6, generator=generator)
    out = model(input_ids=ids, crm_embeds=crm_embeds, labels=ids)
    out.loss.backward()
    bank = model.base_model.model.model.layers[0].self_attn.q_proj.reclora_B["default"]
    assert torch.isfinite(out.loss)
    # RecLoRA's B starts at zero, so only its gradient (not the loss) shows the adapter is wired in
    assert bank.grad is not None and bank.grad.abs().sum() > 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "reclora_B" in name:
                param.normal_(generator=generator)
        shifted = model(input_ids=ids, crm_embeds=crm_embeds).logits
        flipped = model(input_ids=ids, crm_embeds=crm_embeds.flip(0)).logits
    assert not torch.allclose(shifted, flipped)  # the output depends on crm_embeds through the quantized base


def _scored_run(out, base_model, quantization, tmp_path, **changes):
    """A finished tiny pipeline run with RecLoRA and LoRA on a quantized base (semantic retrieval: the item encoder
    is the quantized base too); returns its folder, config and RecLoRA's scores with their sample ids."""
    from reclora_pipeline.pipeline import run_pipeline

    from support.pipeline_runs import fast_config

    config = fast_config(out, base_model, models=["reclora", "lora"], llm__quantization=quantization,
                         retrieval__mode="semantic", retrieval__pca_dim=16,
                         retrieval__cache_dir=str(tmp_path / "encodings"), **changes)
    run_pipeline(config)
    return config


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_a_quantized_pipeline_run_completes_and_its_recommender_loads_the_same_way(
        tmp_path, quantizable_base_model, quantization):
    import json

    import numpy as np

    from reclora_pipeline.artifacts import RunFolder
    from reclora_pipeline.data import RecDataset
    from reclora_pipeline.plan import plan_run
    from reclora_pipeline.serving.recommender import RecLoraRecommender

    from support.pipeline_runs import table

    config = _scored_run(tmp_path / "run", quantizable_base_model, quantization, tmp_path)
    results = table(tmp_path / "run")
    assert {"SIM", "RecLoRA", "LoRA (r=2)"} <= set(results), results
    assert all(0.0 <= results[name]["auc"] <= 1.0 and results[name]["n"] == 40 for name in results)
    plan = plan_run(config)
    folder = RunFolder(config.out)
    for node in (plan.retrievals["semantic"], plan.llm_models[0].tune, plan.llm_models[0].score):
        recorded = folder.artifact(node.stage, node.key).manifest["inputs"]
        assert (recorded.get("llm") or recorded.get("encoder"))["quantization"] == quantization, node
    # The unquantized plan of the same settings has other keys for every stage that loads the LLM, and only those.
    plain = plan_run(config.override({"llm.quantization": "none"}))
    assert plain.data.key == plan.data.key
    assert plain.retrievals["semantic"].key != plan.retrievals["semantic"].key
    assert plain.llm_models[0].tune.key != plan.llm_models[0].tune.key

    recommender = RecLoraRecommender.from_run(config.out, device="cpu").load_model()
    assert llm.is_quantized(recommender.model.get_base_model())
    dataset = RecDataset.load(folder.artifact("data", plan.data.key).path)
    samples = np.asarray(json.loads((folder.root / "eval_samples.json").read_text())["sample_ids"])[:8]
    indexed = dataset.samples.set_index("sample_id")
    requests = [{"user_id": str(indexed.at[sample, "user_id"]), "item_id": str(indexed.at[sample, "item_id"]),
                 "history": [(item, int(rating)) for item, rating in zip(items, ratings)]}
                for sample, items, ratings, _ in dataset.history(samples)]
    run_scores = np.load(folder.artifact("score", plan.llm_models[0].score.key).path / "scores.npy")[:8]
    np.testing.assert_allclose(recommender.score(requests), run_scores, rtol=0, atol=1e-4)
