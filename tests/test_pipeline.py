"""The whole pipeline on the embedded MovieLens-100K: every stage, every comparison and study, the run folder contract.

The bulk runs on a small random Llama that carries SmolLM2's tokenizer (seconds per model); one run uses the real
embedded SmolLM2-135M. Retrieval is "recent" in the fast runs (no item encoding); the semantic retriever has its own
tests. Reuse, invalidation and interrupted runs are in test_run_cache.py.
"""

import json

import numpy as np
import pandas as pd
import pytest

from reclora_pipeline.artifacts import RunFolder
from reclora_pipeline.cli import main as cli_main
from reclora_pipeline.config import RunConfig
from reclora_pipeline.methods import models_of
from reclora_pipeline.pipeline import run_pipeline
from reclora_pipeline.plan import plan_run
from reclora_pipeline.stages.score import LlmScoreInputs

from support.pipeline_runs import fast_config


def test_presets_and_validation():
    demo = RunConfig.from_preset("demo", {"out": "x"})
    full = RunConfig.from_preset("full", {"out": "x", "tune.few_shot": 64})
    assert demo.models == ("lora", "reclora") and demo.eval.test_samples == 300
    assert demo.tune.training["learning_rate"] == 6e-3 and demo.crm.model.hidden_dims == (128, 64)
    assert demo.tune.training["per_device_train_batch_size"] == 8  # a preset is a partial tree: the rest stays
    curve = RunConfig.from_preset("learning-curve")
    assert demo.prompt.template == "compact" and curve.prompt.template == "figure-2" == RunConfig().prompt.template
    assert curve.tune.few_shot == 192 and curve.study.sweep_few_shot == (768, 3072) and curve.eval.shuffled_gate
    assert full.eval.test_samples is None and full.tune.few_shot == 64 and "ablations" in full.models
    assert {"din", "deepfm", "dcnv2", "sasrec"} <= set(full.crm.baselines)
    with pytest.raises(ValueError, match="preset"):
        RunConfig.from_preset("huge")
    with pytest.raises(ValueError, match="models: 'gpt' is not one of"):
        RunConfig().override({"models": ["gpt"]})
    with pytest.raises(ValueError, match="crm.name: 'xgboost' is not one of"):
        RunConfig().override({"crm.name": "xgboost"})
    with pytest.raises(ValueError, match="tune.few_shot must be at least 1"):
        RunConfig().override({"tune.few_shot": 0})
    with pytest.raises(ValueError, match="unknown setting 'tune.training_rate'; did you mean training"):
        RunConfig.from_preset("demo", {"tune.training_rate": 1.0})


def test_models_cover_every_comparison():
    config = RunConfig.from_preset("full", {"study.sweep_num_meta_loras": [4, 16], "study.sweep_few_shot": [64]})
    models = {model.label(config): model for model in models_of(config)}
    plan = {model.name: model for model in plan_run(config).llm_models}
    assert not models["Zero-shot"].tuned and plan["Zero-shot"].tune is None
    assert models["LoRA (r=8)"].peft_config(config.tune.adapter).r == 8
    same = models["LoRA (r=128)"].peft_config(config.tune.adapter)  # the parameter count of 16 x 8
    assert (same.r, same.lora_alpha) == (128, 256)
    assert models["LoRA (r=8)"].peft_config(config.tune.adapter).lora_alpha == 16  # tune.adapter, not 2r
    assert plan["RecLoRA"].gate_crm == ("sim", "semantic") and models["RecLoRA"].needs_crm
    ablations = {name: (p.long_history, p.short_history) for name, p in plan.items() if p.method.study == "ablation"}
    assert ablations == {"RecLoRA w/o long retriever": ("recent", "semantic"),
                         "RecLoRA w/o short retriever": ("semantic", "recent"),
                         "RecLoRA w/o both retrievers": ("recent", "recent")}
    assert plan["RecLoRA w/o long retriever"].gate_crm == ("sim", "recent")
    assert "RecLoRA (N_m=16)" not in models and models["RecLoRA (N_m=4)"].num_meta_loras(config) == 4
    assert models["RecLoRA (N=64)"].few_shot_size(config) == 64
    assert models["LoRA (r=8, N=64)"].few_shot_size(config) == 64
    with pytest.raises(ValueError, match="LoRA \\(r=8\\) would be tuned twice"):
        models_of(config.override({"models": ["lora", "lora"]}))


def test_full_study_on_a_tiny_model(tmp_path, tiny_base_model):
    out = tmp_path / "run"
    config = fast_config(out, tiny_base_model, crm__baselines=["din", "deepfm"],
                         models=["zero-shot", "lora", "lora-same-params", "reclora", "ablations"],
                         study__sweep_num_meta_loras=[2], study__sweep_few_shot=[8], eval__shuffled_gate=True)
    results = run_pipeline(config)
    expected = {"SIM", "DIN", "DeepFM", "Zero-shot", "LoRA (r=2)", "LoRA (r=8)", "RecLoRA",
                "RecLoRA w/o long retriever", "RecLoRA w/o short retriever", "RecLoRA w/o both retrievers",
                "RecLoRA (N_m=2)", "RecLoRA (N=8)", "LoRA (r=2, N=8)"}
    assert set(results) == expected
    assert set(results.actions().values()) == {"built"}

    folder = RunFolder(out)
    saved = json.loads(folder.results_path.read_text())
    assert saved["reference_model"] == "RecLoRA" and saved["eval_samples"] == 40
    assert saved["config_digest"] == config.digest()
    assert RunConfig.from_dict(json.loads(folder.config_path.read_text())) == config  # the one record of settings
    for name, entry in saved["models"].items():
        assert 0.0 <= entry["auc"] <= 1.0 and entry["logloss"] > 0 and entry["n"] == 40, name
        assert "settings" not in entry and entry["stages"]["score"]
        if name == "RecLoRA":
            assert entry["rel_impr"] is None and "vs_reference" not in entry
        else:
            assert entry["rel_impr"] == pytest.approx(saved["models"]["RecLoRA"]["auc"] / entry["auc"] - 1)
            paired = entry["vs_reference"]["auc"]  # RecLoRA minus this model, on the same samples
            assert paired["difference"] == pytest.approx(saved["models"]["RecLoRA"]["auc"] - entry["auc"])
            assert paired["low"] <= paired["difference"] <= paired["high"] and 0 <= paired["p_value"] <= 1
            assert "logloss" in entry["vs_reference"]
        interval = entry["auc_ci"]
        assert interval["estimate"] == pytest.approx(entry["auc"]) and \
            interval["low"] < entry["auc"] < interval["high"]
        assert entry["logloss_ci"]["low"] < entry["logloss"] < entry["logloss_ci"]["high"]
        reads_rc = "RecLoRA" in name
        assert ("gate_dependence" in entry) == reads_rc, name
        if reads_rc:
            dependence = entry["gate_dependence"]
            assert dependence["drop_when_shuffled"]["difference"] == pytest.approx(
                entry["auc"] - dependence["shuffled_rc_auc"]["estimate"])
            assert -1 <= dependence["spearman_with_gate_crm"] <= 1 and dependence["gate_crm"] == "SIM"
            shuffled = folder.artifact("score", dependence["shuffled_rc_key"])
            assert shuffled.manifest["inputs"]["shuffled_rc_seed"] == config.eval.test_seed
            assert shuffled.inputs_as(LlmScoreInputs).shuffled_rc_seed == config.eval.test_seed
    # Predictions: one row per scored test sample, the same samples for every model, labels from the dataset.
    eval_ids = np.asarray(json.loads((out / "eval_samples.json").read_text())["sample_ids"])
    data_dir = folder.artifact("data", plan_run(config).data.key).path
    samples = pd.read_csv(data_dir / "test.csv").set_index("sample_id").loc[eval_ids]
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
    # Each tuned model's artifact: its few-shot sample (training samples) and a real PEFT adapter.
    entries = saved["models"]
    tuned = folder.artifact("tune", entries["RecLoRA"]["stages"]["tune"])
    index = json.loads((tuned.path / "few_shot.json").read_text())
    train = set(pd.read_csv(data_dir / "train.csv")["sample_id"])
    assert len(index["sample_ids"]) == 16 and set(index["sample_ids"]) <= train
    assert entries["RecLoRA"]["short_history"] == "recent" and entries["RecLoRA"]["trainable_parameters"] > 0
    adapter_config = json.loads((tuned.path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "RECLORA" and adapter_config["num_meta_loras"] == 4
    assert adapter_config["crm_dim"] == 16  # the CRM's last hidden layer
    sweep = folder.artifact("tune", entries["RecLoRA (N_m=2)"]["stages"]["tune"]).path
    assert json.loads((sweep / "adapter" / "adapter_config.json").read_text())["num_meta_loras"] == 2
    lora = folder.artifact("tune", entries["LoRA (r=8)"]["stages"]["tune"]).path
    lora_config = json.loads((lora / "adapter" / "adapter_config.json").read_text())
    assert lora_config["peft_type"] == "LORA" and (lora_config["r"], lora_config["lora_alpha"]) == (8, 64)
    # The adapter knows its CRM and R_c: the tune artifact's upstream is the R_c table of the gate CRM.
    assert tuned.upstream["rc"] == [entries["RecLoRA"]["stages"]["rc"]]
    assert folder.artifact("rc", entries["RecLoRA"]["stages"]["rc"]).upstream["crm"] == \
        [entries["SIM"]["stages"]["crm"]]

    # A second run with the same settings reuses every stage and rewrites nothing.
    stamps = {path: path.stat().st_mtime_ns for path in out.glob("stages/tune/*/adapter/adapter_model.safetensors")}
    assert len(stamps) == 9  # every tuned LLM model (not the CRMs or the zero-shot LLM)
    again = run_pipeline(config)
    assert again.keys() == results.keys() and set(again.actions().values()) == {"reused"}
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    # A changed setting retrains only what it affects; the table holds exactly this run's models.
    changed = fast_config(out, tiny_base_model, crm__baselines=["din", "deepfm"],
                          models=["zero-shot", "lora", "reclora"], tune__training__learning_rate=5e-3)
    again = run_pipeline(changed)
    actions = again.actions()
    assert again["SIM"]["auc"] == results["SIM"]["auc"] and again["Zero-shot"]["auc"] == results["Zero-shot"]["auc"]
    assert actions[("crm", "SIM (recent)")] == "reused" and actions[("score", "Zero-shot")] == "reused"
    assert actions[("tune", "RecLoRA")] == "built" and actions[("tune", "LoRA (r=2)")] == "built"
    assert json.loads(folder.config_path.read_text())["tune"]["training"]["learning_rate"] == 5e-3
    assert set(json.loads(folder.results_path.read_text())["models"]) == set(again)
    # Another evaluation sample rescores every model, on the same new samples.
    other = run_pipeline(fast_config(out, tiny_base_model, crm__baselines=["din"], models=["zero-shot"],
                                     eval__test_samples=30))
    assert other["SIM"]["n"] == other["DIN"]["n"] == other["Zero-shot"]["n"] == 30
    assert len(pd.read_csv(out / "predictions" / "SIM.csv")) == 30
    assert set(json.loads(folder.results_path.read_text())["models"]) == {"SIM", "DIN", "Zero-shot"}
    assert sorted(path.stem for path in (out / "predictions").glob("*.csv")) == ["DIN", "SIM", "Zero-shot"]
    previous = json.loads((out / "results_previous.json").read_text())
    assert "RecLoRA (N_m=2)" in previous and previous["SIM"]["n"] == 40  # earlier tables are kept, not mixed in


def test_demo_command_on_smollm2(tmp_path, capsys):
    out = tmp_path / "demo"
    status = cli_main([
        "demo", "--out", str(out), "--retrieval", "recent", "--k-short", "2", "--few-shot", "8",
        "--test-samples", "16", "--crm-epochs", "1", "--num-meta-loras", "2", "--models", "zero-shot,reclora",
        "--no-progress",
    ])
    assert status == 0
    printed = capsys.readouterr().out
    assert "| SIM |" in printed and "| RecLoRA |" in printed and "| Zero-shot |" in printed
    results = json.loads((out / "results.json").read_text())
    settings = json.loads((out / "config.json").read_text())
    assert settings["llm"]["base_model"] == "embedded" and settings["tune"]["adapter"]["num_meta_loras"] == 2
    assert settings["tune"]["training"]["learning_rate"] == 6e-3  # the demo preset under the flags
    assert results["models"]["RecLoRA"]["trainable_parameters"] > 0
    zero_shot = pd.read_csv(out / "predictions" / "Zero-shot.csv")["score"]
    assert zero_shot.std() > 0  # the real model's P(Yes) varies with the prompt


def test_run_command_reports_bad_settings(tmp_path, capsys):
    assert cli_main(["run", "--out", str(tmp_path / "x"), "--models", "gpt4"]) == 2
    assert "models: 'gpt4' is not one of" in capsys.readouterr().err
    assert cli_main(["run", "--out", str(tmp_path / "x"), "--set", "tune.adapter.mixin=weights"]) == 2
    assert "tune.adapter.mixin: neither RecLoraConfig nor LoraConfig has this field; did you mean mixing" in \
        capsys.readouterr().err
    assert cli_main(["run", "--out", str(tmp_path / "x"), "--set", "tune.adapter.mixing=sideways"]) == 2
    assert "RecLoraConfig.mixing must be one of" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # settings are checked before anything is written


def test_published_recommender_scores_like_the_pipeline_run(tmp_path, tiny_base_model):
    """Pipeline run (semantic retrieval) -> publishable folder -> one call back -> the run's test scores."""
    from reclora_pipeline.data import RecDataset
    from reclora_pipeline.serving import RecLoraRecommender

    out = tmp_path / "run"
    config = fast_config(out, tiny_base_model, retrieval__mode="semantic", models=["reclora"], eval__test_samples=24,
                         tune__training__learning_rate=5e-2, retrieval__pca_dim=16,
                         retrieval__cache_dir=str(tmp_path / "encodings"))
    run_pipeline(config)
    folder = RunFolder(out)
    plan = plan_run(config)
    assert (folder.artifact("retrieval", plan.retrievals["semantic"].key).path / "item_vectors.safetensors").is_file()
    predictions = pd.read_csv(out / "predictions" / "RecLoRA.csv")
    eval_ids = np.asarray(json.loads((out / "eval_samples.json").read_text())["sample_ids"])

    RecLoraRecommender.from_run(out).save_pretrained(tmp_path / "published")
    recommender = RecLoraRecommender.from_pretrained(tmp_path / "published", base_model=tiny_base_model)
    dataset = RecDataset.load(folder.artifact("data", plan.data.key).path)
    samples = dataset.samples.set_index("sample_id")
    requests = []
    for sample, items, ratings, _ in dataset.history(eval_ids):
        requests.append({"user_id": str(samples.at[sample, "user_id"]), "item_id": str(samples.at[sample, "item_id"]),
                         "history": [(item, int(rating)) for item, rating in zip(items, ratings)]})
    scores = recommender.score(requests)
    assert predictions["score"].std() > 0
    np.testing.assert_allclose(scores, predictions["score"].to_numpy(), atol=2e-6)
