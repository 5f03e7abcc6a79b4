"""The whole pipeline on the embedded MovieLens-100K: every stage, every comparison and study, the run folder contract.

The bulk runs on a small random Llama that carries SmolLM2's tokenizer (seconds per model); one run uses the real
embedded SmolLM2-135M. Retrieval is "recent" in the fast runs (no item encoding); the semantic retriever has its own
tests.
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from reclora_pipeline.cli import main as cli_main
from reclora_pipeline.pipeline import PipelineConfig, llm_model_specs, run_pipeline
from reclora_pipeline.run_layout import RunLayout


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory, smollm2_dir):
    """A 2-layer random Llama with SmolLM2's tokenizer, saved as a local model folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    folder = tmp_path_factory.mktemp("tiny-llama-smollm2-tokenizer")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def fast_config(out, base_model, **overrides):
    settings = dict(
        out=str(out), base_model=base_model, retrieval="recent", k_long=8, k_short=3, crm_epochs=1,
        crm_hidden_dims=(32, 16), crm_embed_dim=8, crm_batch_size=4096, few_shot=16, batch_size=8, num_meta_loras=4,
        r=2, test_samples=40, score_batch_size=20, progress=False,
    )
    settings.update(overrides)
    return PipelineConfig(**settings)


def test_presets_and_validation():
    demo = PipelineConfig.from_preset("demo", out="x")
    full = PipelineConfig.from_preset("full", out="x", few_shot=64)
    assert demo.models == ("lora", "reclora") and demo.test_samples is not None
    assert full.test_samples is None and full.few_shot == 64 and "ablations" in full.models
    assert {"din", "deepfm", "dcnv2", "sasrec"} <= set(full.crm_baselines)
    with pytest.raises(ValueError, match="preset"):
        PipelineConfig.from_preset("huge")
    with pytest.raises(ValueError, match="models"):
        PipelineConfig(models=("gpt",))
    with pytest.raises(ValueError, match="crm"):
        PipelineConfig(crm="xgboost")
    with pytest.raises(ValueError, match="few_shot"):
        PipelineConfig(few_shot=0)
    with pytest.raises(ValueError, match="unknown pipeline settings"):
        PipelineConfig.from_preset("demo", learning_rat=1.0)


def test_model_specs_cover_every_comparison():
    config = PipelineConfig.from_preset("full", out="x", sweep_num_meta_loras=(4, 16), sweep_few_shot=(64,))
    specs = {spec.name: spec for spec in llm_model_specs(config)}
    assert specs["Zero-shot"].method is None
    assert specs["LoRA (r=8)"].r == 8 and specs["LoRA (r=128)"].r == 128  # same parameter count as 16 x 8
    assert specs["RecLoRA"].crm_key == "sim"
    ablations = {name: (s.long_mode, s.short_mode) for name, s in specs.items() if s.study == "ablation"}
    assert ablations == {"RecLoRA w/o long retriever": ("recent", "semantic"),
                         "RecLoRA w/o short retriever": ("semantic", "recent"),
                         "RecLoRA w/o both retrievers": ("recent", "recent")}
    assert specs["RecLoRA w/o long retriever"].crm_key == "sim-recent"
    assert "RecLoRA (N_m=16)" not in specs and specs["RecLoRA (N_m=4)"].num_meta_loras == 4
    assert specs["RecLoRA (N=64)"].few_shot == 64 and specs["LoRA (r=8, N=64)"].few_shot == 64


def test_full_study_on_a_tiny_model(tmp_path, tiny_base_model):
    out = tmp_path / "run"
    config = fast_config(out, tiny_base_model, crm_baselines=("din", "deepfm"),
                         models=("zero-shot", "lora", "lora-same-params", "reclora", "ablations"),
                         sweep_num_meta_loras=(2,), sweep_few_shot=(8,))
    results = run_pipeline(config)
    expected = {"SIM", "DIN", "DeepFM", "Zero-shot", "LoRA (r=2)", "LoRA (r=8)", "RecLoRA",
                "RecLoRA w/o long retriever", "RecLoRA w/o short retriever", "RecLoRA w/o both retrievers",
                "RecLoRA (N_m=2)", "RecLoRA (N=8)", "LoRA (r=2, N=8)"}
    assert set(results) == expected

    layout = RunLayout(out)
    saved = json.loads(layout.results.read_text())
    assert saved["reference_model"] == "RecLoRA" and saved["eval_samples"] == 40
    for name, entry in saved["models"].items():
        assert 0.0 <= entry["auc"] <= 1.0 and entry["logloss"] > 0 and entry["n"] == 40, name
        assert "settings" in entry
        assert (entry["rel_impr"] is None) == (name == "RecLoRA")
    # Predictions: one row per scored test sample, the same samples for every model, labels from the dataset.
    eval_ids = np.asarray(json.loads((out / "eval_samples.json").read_text())["sample_ids"])
    samples = pd.read_csv(layout.data / "test.csv").set_index("sample_id").loc[eval_ids]
    frames = {path.stem: pd.read_csv(path) for path in (out / "predictions").glob("*.csv")}
    assert len(frames) == len(expected)
    for name, frame in frames.items():
        assert list(frame.columns) == ["user_id", "item_id", "timestamp", "label", "score"]
        assert frame["label"].tolist() == samples["label"].tolist(), name
        assert frame["item_id"].astype(str).tolist() == samples["item_id"].astype(str).tolist(), name
        assert frame["score"].between(0, 1).all()
    assert "| RecLoRA |" in (out / "results.md").read_text()
    plots = {path.name for path in (out / "plots").glob("*.png")}
    assert {"model_comparison.png", "auc_vs_num_meta_loras.png", "sample_efficiency.png",
            "gate_usage_RecLoRA.png"} <= plots
    # Few-shot sample stored as an index file of training samples; the adapters are real PEFT adapters.
    index = json.loads((out / "few_shot" / "n16-seed42.json").read_text())
    train = set(pd.read_csv(layout.data / "train.csv")["sample_id"])
    assert len(index["sample_ids"]) == 16 and set(index["sample_ids"]) <= train
    info = layout.read_model_info("RecLoRA")
    assert info["crm"] == "sim-recent" and info["short_history"] == {"mode": "recent", "k_short": 3}
    adapter_config = json.loads((layout.adapter("RecLoRA") / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "RECLORA" and adapter_config["num_meta_loras"] == 4
    assert adapter_config["crm_dim"] == 16  # the CRM's last hidden layer
    assert json.loads((layout.adapter("RecLoRA (N_m=2)") / "adapter_config.json").read_text())["num_meta_loras"] == 2
    lora_config = json.loads((layout.adapter("LoRA (r=8)") / "adapter_config.json").read_text())
    assert lora_config["peft_type"] == "LORA" and lora_config["r"] == 8
    assert (layout.crm("sim-recent") / "crm_model.safetensors").is_file()  # recent-history CRM of the ablations

    # A second run with the same settings reuses every result; a changed setting retrains only what it affects.
    before = {name: entry["auc"] for name, entry in saved["models"].items()}
    stamps = {path: path.stat().st_mtime_ns for path in out.glob("models/*/adapter/adapter_model.safetensors")}
    assert len(stamps) == 9  # every tuned LLM model (not the CRMs or the zero-shot LLM)
    assert run_pipeline(config).keys() == results.keys()
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    again = run_pipeline(fast_config(out, tiny_base_model, crm_baselines=("din", "deepfm"),
                                     models=("zero-shot", "lora", "reclora"), learning_rate=5e-3))
    assert again["SIM"]["auc"] == before["SIM"] and again["Zero-shot"]["auc"] == before["Zero-shot"]
    assert again["RecLoRA"]["settings"]["tune"]["learning_rate"] == 5e-3
    # Another evaluation sample rescores every model, on the same new samples.
    other = run_pipeline(fast_config(out, tiny_base_model, crm_baselines=("din",), models=("zero-shot",),
                                     test_samples=30))
    assert other["SIM"]["n"] == other["DIN"]["n"] == other["Zero-shot"]["n"] == 30
    assert len(pd.read_csv(out / "predictions" / "SIM.csv")) == 30
    saved = json.loads(layout.results.read_text())["models"]
    assert set(saved) == {"SIM", "DIN", "Zero-shot"}  # no result of the 40 earlier samples left in the table
    assert "RecLoRA (N_m=2)" in json.loads((out / "results_previous.json").read_text())


def test_demo_command_on_smollm2(tmp_path, capsys):
    out = tmp_path / "demo"
    status = cli_main([
        "demo", "--out", str(out), "--retrieval", "recent", "--k-short", "2", "--few-shot", "8", "--test-samples", "16",
        "--crm-epochs", "1", "--num-meta-loras", "2", "--models", "zero-shot,reclora", "--no-progress",
    ])
    assert status == 0
    printed = capsys.readouterr().out
    assert "| SIM |" in printed and "| RecLoRA |" in printed and "| Zero-shot |" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["models"]["RecLoRA"]["settings"]["base_model"] == "embedded"
    assert results["models"]["RecLoRA"]["settings"]["trainable_parameters"] > 0
    zero_shot = pd.read_csv(out / "predictions" / "Zero-shot.csv")["score"]
    assert zero_shot.std() > 0  # the real model's P(Yes) varies with the prompt


def test_run_command_reports_bad_settings(tmp_path, capsys):
    assert cli_main(["run", "--out", str(tmp_path / "x"), "--models", "gpt4"]) == 2
    assert "models" in capsys.readouterr().err


def test_published_recommender_scores_like_the_pipeline_run(tmp_path, tiny_base_model):
    """Pipeline run (semantic retrieval) -> publishable folder -> one call back -> the run's test scores."""
    from reclora_pipeline.data import RecDataset
    from reclora_pipeline.recommender import RecLoraRecommender

    out = tmp_path / "run"
    run_pipeline(fast_config(out, tiny_base_model, retrieval="semantic", models=("reclora",), test_samples=24,
                             learning_rate=5e-2, pca_dim=16))
    layout = RunLayout(out)
    assert (layout.item_vectors("semantic")).is_file()
    predictions = pd.read_csv(out / "predictions" / "RecLoRA.csv")
    eval_ids = np.asarray(json.loads((out / "eval_samples.json").read_text())["sample_ids"])

    RecLoraRecommender.from_run(out).save_pretrained(tmp_path / "published")
    recommender = RecLoraRecommender.from_pretrained(tmp_path / "published", base_model=tiny_base_model)
    dataset = RecDataset.load(layout.data)
    samples = dataset.samples.set_index("sample_id")
    requests = []
    for sample, items, ratings, _ in dataset.history(eval_ids):
        requests.append({"user_id": str(samples.at[sample, "user_id"]), "item_id": str(samples.at[sample, "item_id"]),
                         "history": [(item, int(rating)) for item, rating in zip(items, ratings)]})
    scores = recommender.score(requests)
    assert predictions["score"].std() > 0
    np.testing.assert_allclose(scores, predictions["score"].to_numpy(), atol=2e-6)


def test_interrupted_tuning_resumes_from_its_checkpoints(tmp_path, tiny_base_model, capsys):
    out = tmp_path / "run"
    config = fast_config(out, tiny_base_model, models=("reclora",), save_steps=1, learning_rate=5e-2)
    first = run_pipeline(config)["RecLoRA"]
    layout = RunLayout(out)
    checkpoints = layout.model("RecLoRA") / "checkpoints"
    assert sorted(path.name for path in checkpoints.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    layout.model_info("RecLoRA").unlink()  # as if the run had stopped before the model was scored
    capsys.readouterr()
    again = run_pipeline(config)["RecLoRA"]
    assert "resuming RecLoRA from its last checkpoint" in capsys.readouterr().out
    assert again["auc"] == first["auc"] and again["logloss"] == first["logloss"]
    # Checkpoints of other settings are never resumed: they are removed before training.
    run_pipeline(fast_config(out, tiny_base_model, models=("reclora",), save_steps=1, learning_rate=1e-2))
    assert "resuming" not in capsys.readouterr().out
    settings = json.loads((checkpoints / "settings.json").read_text())
    assert settings["tune"]["learning_rate"] == 1e-2
