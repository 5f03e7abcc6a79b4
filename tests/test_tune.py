"""Stage-2 tuning: answer-token loss, only adapter parameters train, exact resume from a checkpoint; the PEFT config
comes from the method and tune.adapter, the TrainingArguments from tune.training, both as given."""

import re

import numpy as np
import pytest
import torch

from reclora_pipeline.config import RunConfig
from reclora_pipeline.methods import Lora, RecLora
from reclora_pipeline.sampling import load_index_file, save_index_file, seeded_sample
from reclora_pipeline.scoring import AnswerTokens
from reclora_pipeline.stages import Runtime
from reclora_pipeline.trainer import (
    AdapterTraining,
    AnswerTokenDataset,
    LeftPadCollator,
    adapter_weights_file,
    build_peft_model,
    train_adapter,
    training_arguments,
    training_arguments_problem,
)

from support.tiny_models import TINY_VOCAB, make_tiny_llama


ADAPTER = dict(r=2, lora_alpha=4, num_meta_loras=4, gate_hidden_dim=8)
QUIET = Runtime(progress=False)
ANSWERS = AnswerTokens(yes=5, no=6)


def _dataset(n=12, with_crm=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    token_ids = [torch.randint(3, TINY_VOCAB, (int(torch.randint(4, 9, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(n)]
    crm = torch.randn(n, 6, generator=g) if with_crm else None
    # answer depends on the CRM sign, so a personalised adapter has something to learn
    answers = [5 if (crm is not None and crm[i, 0] > 0) else 6 for i in range(n)]
    return AnswerTokenDataset(list(range(100, 100 + n)), token_ids, answers, crm)


def _training(loss="vocab", gate_learning_rate=None, **overrides):
    values = dict(num_train_epochs=2, per_device_train_batch_size=4, learning_rate=5e-3, logging_steps=1, seed=3,
                  data_seed=3)
    values.update(overrides)
    return AdapterTraining(values, loss=loss, gate_learning_rate=gate_learning_rate)


def _peft_config(method="reclora"):
    return (RecLora() if method == "reclora" else Lora()).peft_config(ADAPTER, crm_dim=6)


def test_collator_left_pads_and_stacks():
    batch = LeftPadCollator(pad_id=0)([{"input_ids": [5, 6, 7], "answer_ids": 5, "crm_embeds": torch.ones(6)},
                                       {"input_ids": [8], "answer_ids": 6, "crm_embeds": torch.zeros(6)}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["answer_ids"].tolist() == [5, 6] and batch["crm_embeds"].shape == (2, 6)


@pytest.mark.parametrize("method", ["reclora", "lora"])
def test_training_lowers_the_answer_loss_and_only_adapters_change(tmp_path, method):
    dataset = _dataset(with_crm=method == "reclora")
    model = build_peft_model(make_tiny_llama(), _peft_config(method))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    summary = train_adapter(model, dataset, _training(num_train_epochs=6), tmp_path, pad_id=0, runtime=QUIET)
    losses = [entry["loss"] for entry in summary["loss_history"]]
    assert losses[-1] < losses[0]
    assert all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if n in frozen)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_resume_from_checkpoint_reaches_the_same_weights(tmp_path):
    dataset = _dataset(n=16)
    straight = build_peft_model(make_tiny_llama(), _peft_config())
    train_adapter(straight, dataset, _training(save_steps=4), tmp_path / "straight", pad_id=0, runtime=QUIET)

    resumed = build_peft_model(make_tiny_llama(), _peft_config())
    checkpoint = tmp_path / "straight" / "checkpoints" / "checkpoint-4"
    assert checkpoint.is_dir()
    train_adapter(resumed, dataset, _training(save_steps=4), tmp_path / "resumed", pad_id=0, runtime=QUIET,
                  resume_from_checkpoint=checkpoint)
    want = {n: p for n, p in straight.named_parameters() if "reclora_" in n}
    got = {n: p for n, p in resumed.named_parameters() if "reclora_" in n}
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)


def test_dataset_refuses_misaligned_inputs():
    with pytest.raises(ValueError, match="crm_embeds"):
        AnswerTokenDataset([1, 2], [[3], [4]], [5, 6], torch.zeros(3, 6))
    with pytest.raises(ValueError, match="one entry per sample"):
        AnswerTokenDataset([1, 2], [[3]], [5, 6])


def test_few_shot_sample_is_seeded_and_stored(tmp_path):
    ids = np.arange(1000, 2000)
    first, again, other = seeded_sample(ids, 50, 7), seeded_sample(ids, 50, 7), seeded_sample(ids, 50, 8)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert len(set(first.tolist())) == 50 and set(first.tolist()) <= set(ids.tolist())
    save_index_file(tmp_path / "train_ids.json", first, seed=7)
    assert np.array_equal(load_index_file(tmp_path / "train_ids.json"), first)
    with pytest.raises(ValueError, match="few-shot size 5000 exceeds"):
        seeded_sample(ids, 5000, 0, what="few-shot")
    assert np.array_equal(seeded_sample(ids[::-1], None, 0), ids)  # None: all of them, sorted


def test_yes_no_loss_is_the_cross_entropy_over_the_two_answer_logits(tmp_path):
    from transformers import TrainingArguments

    from reclora_pipeline.trainer import _answer_token_trainer_class

    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), use_cpu=True, report_to=[])
    dataset = _dataset(n=8)
    model = build_peft_model(make_tiny_llama(), _peft_config())
    batch = LeftPadCollator(pad_id=0)([dataset[i] for i in range(8)])
    trainer = _answer_token_trainer_class()(model=model, args=args, answers=ANSWERS)
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       crm_embeds=batch["crm_embeds"]).logits[:, -1].double()
    expected = torch.nn.functional.cross_entropy(logits[:, [6, 5]], (batch["answer_ids"] == 5).long())
    assert torch.allclose(loss.double(), expected, atol=1e-5)
    vocab = _answer_token_trainer_class()(model=model, args=args).compute_loss(model, batch)
    assert vocab.item() > loss.item()  # the whole vocabulary competes with the answer token

    with pytest.raises(ValueError, match="answers"):
        train_adapter(model, dataset, _training(loss="yes_no"), tmp_path, pad_id=0, runtime=QUIET)
    with pytest.raises(ValueError, match="loss"):
        train_adapter(model, dataset, _training(loss="hinge"), tmp_path, pad_id=0, runtime=QUIET)
    summary = train_adapter(model, dataset, _training(loss="yes_no", num_train_epochs=4), tmp_path, pad_id=0,
                            runtime=QUIET, answers=ANSWERS)
    losses = [entry["loss"] for entry in summary["loss_history"]]
    assert losses[-1] < losses[0] and losses[0] < 1.5  # two classes: starts near log 2, not near log |vocab|


def test_peft_configs_take_tune_adapter_as_given():
    """Every key reaches the config class that has it, unchanged; LoRA baselines keep the configured lora_alpha."""
    from peft import LoraConfig

    import peft_reclora
    from reclora_pipeline.methods import LoraSameParams

    adapter = {"r": 4, "lora_alpha": 32, "mixing": "weights", "gate_sharing": "per_module", "temperature": 2.0,
               "use_rslora": True, "target_modules": ["q_proj"], "lora_dropout": 0.1}
    reclora = RecLora().peft_config(adapter, crm_dim=6)
    assert isinstance(reclora, peft_reclora.RecLoraConfig)
    assert (reclora.r, reclora.lora_alpha, reclora.mixing, reclora.gate_sharing, reclora.temperature) == \
        (4, 32, "weights", "per_module", 2.0)
    assert reclora.lora_dropout == 0.1 and reclora.target_modules == {"q_proj"}
    lora = Lora().peft_config(adapter)
    assert isinstance(lora, LoraConfig) and (lora.r, lora.lora_alpha, lora.use_rslora) == (4, 32, True)
    same = LoraSameParams().peft_config({**adapter, "num_meta_loras": 8})
    assert (same.r, same.lora_alpha) == (32, 256)  # rank N_m * r, and the same scaling lora_alpha / r as RecLoRA
    assert Lora().peft_config({}).lora_alpha == LoraConfig().lora_alpha  # nothing re-defaulted on the way
    config = RunConfig().override({"tune.adapter.r": 4, "tune.adapter.num_meta_loras": 2})
    assert LoraSameParams().label(config) == "LoRA (r=8)" and Lora().label(config) == "LoRA (r=4)"


def test_training_arguments_come_from_tune_training(tmp_path):
    args = training_arguments({"num_train_epochs": 2.0, "learning_rate": 3e-4, "max_grad_norm": 0.5,
                               "lr_scheduler_type": "cosine", "save_steps": 3}, tmp_path, num_samples=640)
    assert (args.num_train_epochs, args.learning_rate, args.max_grad_norm) == (2.0, 3e-4, 0.5)
    assert getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == "cosine"
    assert getattr(args.save_strategy, "value", args.save_strategy) == "steps"
    assert args.output_dir == str(tmp_path / "checkpoints") and args.remove_unused_columns is False
    assert args.logging_steps == 640 // 8 // 10 and args.use_cpu == (not torch.cuda.is_available())
    assert getattr(training_arguments({}, tmp_path, num_samples=8).save_strategy, "value", None) == "no"
    assert "is not a TrainingArguments field; did you mean learning_rate" in training_arguments_problem(
        {"learnig_rate": 1e-3})
    assert "output_dir cannot be set" in training_arguments_problem({"output_dir": "x"})
    assert "TrainingArguments rejects it" in training_arguments_problem({"lr_scheduler_type": "sideways"})
    assert training_arguments_problem({"optim": "sgd", "gradient_accumulation_steps": 2}) is None
    # Trackers are one setting for both training stages (tracking.report_to), not a TrainingArguments key here.
    assert "set tracking.report_to" in training_arguments_problem({"report_to": "wandb"})


def test_gate_learning_rate_gives_the_gate_its_own_group(tmp_path):
    """With tune.gate_learning_rate the gate's parameters train at their own peak rate, under the same schedule: at
    rate 0 the gate stays as initialised while the meta-LoRA banks train."""
    from reclora_pipeline.trainer import GATE_PARAMETER

    model = build_peft_model(make_tiny_llama(), _peft_config())
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    train_adapter(model, _dataset(n=8), _training(gate_learning_rate=0.0, num_train_epochs=1, learning_rate=5e-3),
                  tmp_path / "a", pad_id=0, runtime=QUIET)
    after = {n: p.detach() for n, p in model.named_parameters() if n in before}
    gate = [n for n in before if GATE_PARAMETER in n]
    banks = [n for n in before if "reclora_B" in n]
    assert gate and all(torch.equal(before[n], after[n]) for n in gate)
    assert banks and all(not torch.equal(before[n], after[n]) for n in banks)
    with pytest.raises(ValueError, match="no RecLoRA gate"):
        train_adapter(build_peft_model(make_tiny_llama(), _peft_config("lora")), _dataset(n=8, with_crm=False),
                      _training(gate_learning_rate=1e-3), tmp_path / "b", pad_id=0, runtime=QUIET)


def test_a_saved_adapter_without_weights_is_named_before_loading(tmp_path):
    """The pipeline checks an adapter folder before it loads the base LLM: an error names the folder and the file."""
    model = build_peft_model(make_tiny_llama(), _peft_config())
    train_adapter(model, _dataset(n=8), _training(num_train_epochs=1), tmp_path, pad_id=0, runtime=QUIET)
    adapter = tmp_path / "adapter"
    assert adapter_weights_file(adapter) == adapter / "adapter_model.safetensors"
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    assert adapter_weights_file(adapter) == adapter / "adapter_model.bin"  # PyTorch's format, as PEFT reads it
    (adapter / "adapter_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"{str(adapter)!r} has adapter_config.json but no weights file: expected adapter_model.safetensors "
            "(or adapter_model.bin)")):
        adapter_weights_file(adapter)


def test_scoring_checks_the_adapter_folder_before_loading_the_llm(tmp_path, monkeypatch):
    from reclora_pipeline.artifacts import RunFolder
    from reclora_pipeline.plan import plan_run
    from reclora_pipeline.stages import score as score_stage

    def no_llm(*args, **kwargs):
        raise AssertionError("the base LLM was loaded before the adapter folder was checked")

    monkeypatch.setattr(score_stage, "load_tokenizer", no_llm)
    monkeypatch.setattr("reclora_pipeline.stages.load_base_model", no_llm)
    node = plan_run(RunConfig.from_preset("demo", {"out": str(tmp_path / "run")})).llm_models[1].score
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{adapter}' has adapter_config.json but no weights file")):
        score_stage.score_llm(RunFolder(tmp_path / "run", log=lambda message: None), node, None, None, adapter, None,
                              Runtime(progress=False))
