"""Register RecLoRA with PEFT so that PEFT's public API (get_peft_model, PeftConfig / PeftModel / AutoPeftModel*
from_pretrained, load_adapter) handles it like a built-in method."""

from __future__ import annotations

from peft import mapping
from peft.utils import register_peft_method

from .peft_type import ensure_reclora_peft_type

METHOD_NAME = "reclora"


def register() -> None:
    """Idempotent: a second call (re-import, ``importlib.reload``) re-points PEFT's tables at the current classes."""
    from .config import RecLoraConfig
    from .model import RecLoraModel

    peft_type = ensure_reclora_peft_type()
    if peft_type in mapping.PEFT_TYPE_TO_CONFIG_MAPPING:
        mapping.PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = RecLoraConfig
        mapping.PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = RecLoraModel
        mapping.PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = RecLoraModel.prefix
        return
    register_peft_method(name=METHOD_NAME, config_cls=RecLoraConfig, model_cls=RecLoraModel, prefix=RecLoraModel.prefix)
