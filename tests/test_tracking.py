"""Experiment tracking: CRM training (a plain loop, through accelerate's trackers) and LLM tuning (the HF Trainer)
report to the same tracker, here TensorBoard read back from its event files."""

from pathlib import Path

import pytest
import torch

from reclora_pipeline.config import RunConfig
from reclora_pipeline.crm import CrmTrainingConfig, train_crm
from reclora_pipeline.methods import RecLora
from reclora_pipeline.stages import Runtime
from reclora_pipeline.tracking import Trackers, tracker_names
from reclora_pipeline.trainer import AdapterTraining, AnswerTokenDataset, build_peft_model, train_adapter
from reclora_pipeline.validation import validate

from support.synthetic_features import make_synthetic_splits
from support.tiny_models import TINY_VOCAB, make_tiny_llama


pytest.importorskip("tensorboard")


def scalars(folder: Path) -> dict:
    """{tag: [(step, value), ...]} of every event file under ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events.parent))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found.setdefault(tag, []).extend((event.step, event.value) for event in accumulator.Scalars(tag))
    return found


def test_crm_training_reports_losses_and_validation_auc(tmp_path):
    splits = make_synthetic_splits({"train": 2000, "valid": 500}, seed=3)
    trackers = Trackers.start(["tensorboard"], "SIM (semantic)", tmp_path, {"epochs": 2, "hidden_dims": (16, 8)})
    _, report = train_crm("sim", splits["train"], splits["valid"], CrmTrainingConfig(epochs=2, batch_size=128),
                          model_kwargs=dict(embed_dim=8, hidden_dims=(16, 8)), progress=False, tracker=trackers)
    trackers.finish()
    logged = scalars(tmp_path / "SIM (semantic)")
    assert [value for _, value in logged["eval/auc"]] == pytest.approx([e["valid_auc"] for e in report.history])
    assert len(logged["train/loss"]) >= 2 * (2000 // 128) // 10
    steps = [step for step, _ in logged["eval/auc"]]
    assert steps == sorted(steps) and steps[-1] == 2 * -(-2000 // 128)  # by global step, one point per epoch


def test_llm_tuning_reports_to_the_same_tracker(tmp_path):
    g = torch.Generator().manual_seed(0)
    dataset = AnswerTokenDataset(list(range(16)), [torch.randint(7, TINY_VOCAB, (6,), generator=g).tolist()
                                                    for _ in range(16)], [5, 6] * 8, torch.randn(16, 6, generator=g))
    model = build_peft_model(make_tiny_llama(), RecLora().peft_config({"r": 2, "num_meta_loras": 2}, crm_dim=6))
    train_adapter(model, dataset, AdapterTraining({"num_train_epochs": 2, "per_device_train_batch_size": 4,
                                                   "logging_steps": 1}),
                  tmp_path / "tune", pad_id=0, run_name="RecLoRA",
                  runtime=Runtime(progress=False, report_to=("tensorboard",), tracking_dir=tmp_path / "tracking"))
    logged = scalars(tmp_path / "tracking" / "RecLoRA")
    assert len(logged["train/loss"]) == 8  # 16 samples / 4 per step, 2 epochs, every step logged


def test_report_to_is_one_setting_checked_before_a_run():
    config = RunConfig().override({"tracking.report_to": "tensorboard,wandb"})
    assert config.tracking.report_to == ("tensorboard", "wandb")
    assert tracker_names(["none"]) == [] and tracker_names(()) == []
    with pytest.raises(ValueError, match="tracking.report_to: graphite is not a tracker"):
        validate(RunConfig().override({"tracking.report_to": ["graphite"]}))
    with pytest.raises(ValueError, match="set tracking.report_to"):
        validate(RunConfig().override({"tune.training.report_to": "wandb"}))
