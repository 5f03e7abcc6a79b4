"""Stage-2 tuning: answer-token loss, only adapter parameters train, exact resume from a checkpoint."""

import numpy as np
import pytest
import torch

from reclora_pipeline.tune import (
    AnswerTokenDataset,
    LeftPadCollator,
    TuneSettings,
    build_peft_model,
    few_shot_indices,
    load_index_file,
    save_index_file,
    train_adapter,
)

from conftest import TINY_VOCAB, make_tiny_llama


def _dataset(n=12, with_crm=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    token_ids = [torch.randint(3, TINY_VOCAB, (int(torch.randint(4, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    crm = torch.randn(n, 6, generator=g) if with_crm else None
    # answer depends on the CRM sign, so a personalised adapter has something to learn
    answers = [5 if (crm is not None and crm[i, 0] > 0) else 6 for i in range(n)]
    return AnswerTokenDataset(list(range(100, 100 + n)), token_ids, answers, crm)


def _settings(method="reclora", **overrides):
    values = dict(method=method, r=2, lora_alpha=4, num_meta_loras=4, gate_hidden_dim=8, epochs=2, batch_size=4,
                  learning_rate=5e-3, logging_steps=1, seed=3)
    values.update(overrides)
    return TuneSettings(**values)


def test_collator_left_pads_and_stacks():
    batch = LeftPadCollator(pad_id=0)([{"input_ids": [5, 6, 7], "answer_ids": 5, "crm_embeds": torch.ones(6)},
                                       {"input_ids": [8], "answer_ids": 6, "crm_embeds": torch.zeros(6)}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["answer_ids"].tolist() == [5, 6] and batch["crm_embeds"].shape == (2, 6)


@pytest.mark.parametrize("method", ["reclora", "lora"])
def test_training_lowers_the_answer_loss_and_only_adapters_change(tmp_path, method):
    dataset = _dataset(with_crm=method == "reclora")
    model = build_peft_model(make_tiny_llama(), _settings(method), crm_dim=6 if method == "reclora" else None)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    summary = train_adapter(model, dataset, _settings(method, epochs=6), tmp_path, pad_id=0, progress=False)
    losses = [entry["loss"] for entry in summary["loss_history"]]
    assert losses[-1] < losses[0]
    assert all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if n in frozen)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_resume_from_checkpoint_reaches_the_same_weights(tmp_path):
    dataset = _dataset(n=16)
    straight = build_peft_model(make_tiny_llama(), _settings(), crm_dim=6)
    train_adapter(straight, dataset, _settings(save_steps=4), tmp_path / "straight", pad_id=0, progress=False)

    resumed = build_peft_model(make_tiny_llama(), _settings(), crm_dim=6)
    checkpoint = tmp_path / "straight" / "checkpoints" / "checkpoint-4"
    assert checkpoint.is_dir()
    train_adapter(resumed, dataset, _settings(save_steps=4), tmp_path / "resumed", pad_id=0, progress=False,
                  resume_from_checkpoint=str(checkpoint))
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
    first, again, other = few_shot_indices(ids, 50, 7), few_shot_indices(ids, 50, 7), few_shot_indices(ids, 50, 8)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert len(set(first.tolist())) == 50 and set(first.tolist()) <= set(ids.tolist())
    save_index_file(tmp_path / "train_ids.json", first, seed=7)
    assert np.array_equal(load_index_file(tmp_path / "train_ids.json"), first)
    with pytest.raises(ValueError, match="exceeds"):
        few_shot_indices(ids, 5000, 0)


def test_yes_no_loss_is_the_cross_entropy_over_the_two_answer_logits(tmp_path):
    from transformers import TrainingArguments

    from reclora_pipeline.tune import _answer_token_trainer_class

    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), use_cpu=True, report_to=[])
    dataset = _dataset(n=8)
    model = build_peft_model(make_tiny_llama(), _settings(), crm_dim=6)
    batch = LeftPadCollator(pad_id=0)([dataset[i] for i in range(8)])
    trainer = _answer_token_trainer_class()(model=model, args=args, answer_pair=(6, 5))
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       crm_embeds=batch["crm_embeds"]).logits[:, -1].double()
    expected = torch.nn.functional.cross_entropy(logits[:, [6, 5]], (batch["answer_ids"] == 5).long())
    assert torch.allclose(loss.double(), expected, atol=1e-5)
    vocab = _answer_token_trainer_class()(model=model, args=args).compute_loss(model, batch)
    assert vocab.item() > loss.item()  # the whole vocabulary competes with the answer token

    with pytest.raises(ValueError, match="answer_pair"):
        train_adapter(model, dataset, _settings(loss="yes_no"), tmp_path, pad_id=0, progress=False)
    with pytest.raises(ValueError, match="loss"):
        _settings(loss="hinge")
    summary = train_adapter(model, dataset, _settings(loss="yes_no", epochs=4), tmp_path, pad_id=0, progress=False,
                            answer_pair=(6, 5))
    losses = [entry["loss"] for entry in summary["loss_history"]]
    assert losses[-1] < losses[0] and losses[0] < 1.5  # two classes: starts near log 2, not near log |vocab|
