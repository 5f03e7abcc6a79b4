"""The checks of a run config that only the libraries can make, run before anything is written: the config tree
(``config.py``) checks each setting's type, choices and bounds by itself, but whether a ``tune.adapter`` key is a PEFT
config field, which modules the base model has, whether ``tune.training`` builds ``TrainingArguments`` and which
trackers accelerate knows are for PEFT, transformers and accelerate to say.

    from reclora_pipeline.validation import validate

    config = validate(RunConfig.from_preset("demo"))      # ValueError naming the setting, or the config itself
"""

from __future__ import annotations

import importlib.util

import torch

from peft_reclora.ops import triton_available

from .architecture import adapter_target_problem, architecture_of
from .config import RunConfig
from .methods import adapter_key_problem, models_of
from .tracking import unsupported_trackers
from .trainer import training_arguments_problem


def validate(config: RunConfig) -> RunConfig:
    """Check what the libraries themselves decide: every ``tune.adapter`` key is a RecLoraConfig or LoraConfig field,
    every model's PEFT config builds and adapts modules the base model has (its module names come from its config
    alone), and the kernel backend runs on this machine; every ``tune.training`` key is a TrainingArguments field with
    a value of its type and range, the run trains at least one step and the arguments build; every tracker of
    ``tracking.report_to`` is one accelerate supports. Returns ``config``; a ``ValueError`` names the setting."""
    for key in config.tune.adapter:
        problem = adapter_key_problem(key)
        if problem:
            raise ValueError(f"tune.adapter.{key}: {problem}")
    architecture = architecture_of(config.llm.base_model)
    for model in models_of(config):
        try:
            peft_config = model.peft_config(config.tune.adapter, crm_dim=config.crm.model.crm_dim)
        except (TypeError, ValueError) as error:
            raise ValueError(f"tune.adapter does not give a valid PEFT config for {model.label(config)}: "
                             f"{error}") from None
        problem = peft_config and adapter_target_problem(peft_config, architecture)
        if problem:
            raise ValueError(f"tune.adapter: {problem}, so {model.label(config)} would tune nothing of "
                             f"llm.base_model {config.llm.base_model!r}")
    if config.tune.adapter.get("kernel_backend") == "triton" and not (torch.cuda.is_available()
                                                                     and triton_available()):
        raise ValueError("tune.adapter.kernel_backend: 'triton' needs a CUDA GPU and Triton, and this machine has "
                         "none; use 'auto' (Triton where it runs), 'torch' or 'reference'")
    if config.llm.quantization != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"llm.quantization: {config.llm.quantization!r} needs bitsandbytes: pip install "
                         "'peft-reclora[bnb]'")
    problem = training_arguments_problem(config.tune.training)
    if problem:
        raise ValueError(f"tune.training: {problem}")
    unknown = unsupported_trackers(config.tracking.report_to)
    if unknown:
        raise ValueError(f"tracking.report_to: {', '.join(unknown)} is not a tracker accelerate and transformers "
                         "both support (tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive, ...)")
    return config
