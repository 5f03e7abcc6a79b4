"""The base LLM's modules, known from its config alone: the model is built on the meta device (no weight is read or
allocated), so that the adapter's ``target_modules`` and ``layers_to_transform`` are checked against the real module
names before a run writes anything, in well under a second.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Optional

import torch
from accelerate import init_empty_weights
from peft.tuners.tuners_utils import check_target_module_exists
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from peft_reclora.model import default_target_modules

from .llm import converted_checkpoint_dir, gguf_file, is_converted


@dataclass(frozen=True)
class Architecture:
    """What a PEFT config is matched against: every module name, the names of the Linear modules' last parts, the
    number of decoder layers (``None`` when the config does not say) and the config's ``model_type``."""

    module_names: tuple
    linear_suffixes: tuple
    num_layers: Optional[int]
    model_type: Optional[str] = None


@functools.lru_cache(maxsize=8)
def architecture_of(base_model: str) -> Architecture:
    """The modules of ``base_model`` (``llm.base_model``: 'embedded', 'gemma3-270m', a .gguf file, a Hub id or a
    local folder); ``ValueError`` naming the setting when its config cannot be read."""
    config = _config_of(base_model)
    try:
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as error:
        raise ValueError(f"llm.base_model: {base_model!r} is not a causal language model transformers can build "
                         f"({error})") from None
    modules = dict(model.named_modules())
    linear = sorted({name.rsplit(".", 1)[-1] for name, module in modules.items()
                     if isinstance(module, (torch.nn.Linear, Conv1D))})
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return Architecture(tuple(name for name in modules if name), tuple(linear),
                        getattr(text_config, "num_hidden_layers", None), getattr(config, "model_type", None))


def _config_of(base_model: str):
    try:
        gguf = gguf_file(base_model)
        if gguf is not None:
            converted = converted_checkpoint_dir(gguf)
            if is_converted(converted):
                return AutoConfig.from_pretrained(str(converted))
            # The GGUF header holds the config; nothing is converted yet.
            return AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        return AutoConfig.from_pretrained(base_model)
    except (OSError, ValueError) as error:
        raise ValueError(f"llm.base_model: cannot read the model config of {base_model!r} (expected 'embedded', "
                         f"'gemma3-270m', a .gguf file, a Hub id or a local model folder with config.json): "
                         f"{' '.join(str(error).split())}") from None


def adapter_target_problem(peft_config, architecture: Architecture) -> Optional[str]:
    """Why ``peft_config`` would adapt nothing of the base model (``target_modules`` that match no module,
    ``layers_to_transform`` outside its layers), or None. Matching is PEFT's own."""
    layers = getattr(peft_config, "layers_to_transform", None)
    if layers is not None and architecture.num_layers is not None:
        indices = [layers] if isinstance(layers, int) else list(layers)
        outside = [index for index in indices if not 0 <= index < architecture.num_layers]
        if outside:
            return (f"layers_to_transform {outside} is not a layer of the base model (its layers are 0 to "
                    f"{architecture.num_layers - 1})")
    targets = getattr(peft_config, "target_modules", None)
    if targets is None and getattr(peft_config, "peft_type", None) == "RECLORA":
        try:  # what RecLoRA's injection will pick, so that the check below sees it
            targets = default_target_modules(architecture.module_names, architecture.model_type)
        except ValueError as error:
            return str(error)
        peft_config = copy.copy(peft_config)
        peft_config.target_modules = targets if isinstance(targets, str) else set(targets)
    if targets is None or targets == "all-linear":
        return None
    if not any(check_target_module_exists(peft_config, name) for name in architecture.module_names):
        shown = sorted(targets) if isinstance(targets, (set, list, tuple)) else targets
        return (f"target_modules {shown} match no module of the base model"
                + (" in the layers_to_transform" if layers is not None else "")
                + f" (its Linear modules: {', '.join(architecture.linear_suffixes)})")
    return None
