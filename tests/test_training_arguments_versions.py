"""Pipeline flags on every supported transformers: --gradient-checkpointing sets ``activation_checkpointing`` (the
name since transformers 5.23) and reaches TrainingArguments under the older ``gradient_checkpointing`` below 5.23."""

import dataclasses

import pytest
import transformers

from reclora_pipeline.cli import build_parser, run_config
from reclora_pipeline.trainer import training_arguments, training_arguments_problem

from support.tiny_models import make_tiny_llama


def _checkpointing_on(arguments) -> bool:
    return bool(getattr(arguments, "activation_checkpointing", None) or getattr(arguments, "gradient_checkpointing"))


def test_gradient_checkpointing_flag_reaches_the_installed_training_arguments(tmp_path):
    base = tmp_path / "base"  # a local model folder: the run config is checked against its architecture
    make_tiny_llama().save_pretrained(base)
    flags = ["run", "--out", str(tmp_path / "out"), "--base-model", str(base), "--gradient-checkpointing"]
    training = dict(run_config(build_parser().parse_args(flags)).tune.training)
    assert training.get("activation_checkpointing") is True
    assert training_arguments_problem(training) is None
    assert _checkpointing_on(training_arguments(training, tmp_path, num_samples=8, progress=False))


@pytest.fixture
def transformers_before_5_23(monkeypatch):
    """TrainingArguments as every transformers 5.x before 5.23 declares it: no ``activation_checkpointing*`` fields."""
    real = transformers.TrainingArguments
    fields = [(f.name, object, dataclasses.field(default=f.default, default_factory=f.default_factory))
              for f in dataclasses.fields(real) if f.init and not f.name.startswith("activation_checkpointing")]
    older = dataclasses.make_dataclass("TrainingArguments", fields)
    monkeypatch.setattr(transformers, "TrainingArguments", older)
    return older


def test_gradient_checkpointing_uses_the_older_name_below_5_23(transformers_before_5_23, tmp_path):
    training = {"activation_checkpointing": True, "activation_checkpointing_kwargs": {"use_reentrant": False}}
    assert training_arguments_problem(training) is None
    arguments = training_arguments(training, tmp_path, num_samples=8, progress=False)
    assert arguments.gradient_checkpointing is True
    assert arguments.gradient_checkpointing_kwargs == {"use_reentrant": False}


def test_an_unknown_training_key_is_still_refused_below_5_23(transformers_before_5_23):
    assert "is not a TrainingArguments field" in training_arguments_problem({"activation_checkpointin": True})
