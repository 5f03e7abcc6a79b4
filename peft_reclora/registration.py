"""Register RecLoRA with PEFT so that PEFT's public API (get_peft_model, PeftConfig / PeftModel / AutoPeftModel*
from_pretrained, ``PeftModel.load_adapter``) handles it like a built-in method.

PEFT has no plug-in discovery: in a process that has not run ``import peft_reclora`` (or whose PEFT tables were rebuilt
since), PEFT looks the saved ``"peft_type": "RECLORA"`` up in its tables and fails with a bare ``KeyError: 'RECLORA'``.
:func:`explain_missing_registration` turns that into an error that says what to do.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from peft import mapping
from peft.utils import register_peft_method

from .config import RecLoraConfig
from .model import RecLoraModel
from .peft_type import RECLORA, ensure_reclora_peft_type


METHOD_NAME = "reclora"
MISSING_REGISTRATION = (
    "PEFT does not know the adapter type 'RECLORA': run `import peft_reclora` before loading a RecLoRA adapter "
    "(PEFT has no plug-in discovery; the import registers RecLoRA with it), and load it with "
    "PeftModel.from_pretrained, PeftModel.load_adapter or AutoPeftModelForCausalLM.from_pretrained"
)


class RecLoraNotRegisteredError(KeyError):
    """PEFT was asked for RECLORA but has no entry for it. A ``KeyError``, as PEFT's own error is."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def register() -> None:
    """Idempotent: a second call (re-import, ``importlib.reload``) re-points PEFT's tables at the current classes."""
    peft_type = ensure_reclora_peft_type()
    if peft_type in mapping.PEFT_TYPE_TO_CONFIG_MAPPING:
        mapping.PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = RecLoraConfig
        mapping.PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = RecLoraModel
        mapping.PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = RecLoraModel.prefix
        return
    register_peft_method(
        name=METHOD_NAME, config_cls=RecLoraConfig, model_cls=RecLoraModel, prefix=RecLoraModel.prefix
    )


def is_registered() -> bool:
    """Whether PEFT's tables resolve RECLORA to a config and a tuner class."""
    return RECLORA in mapping.PEFT_TYPE_TO_CONFIG_MAPPING and RECLORA in mapping.PEFT_TYPE_TO_TUNER_MAPPING


@contextlib.contextmanager
def explain_missing_registration() -> Iterator[None]:
    """Run the block (a PEFT load of any adapter type) and re-raise PEFT's ``KeyError: 'RECLORA'`` as a
    :class:`RecLoraNotRegisteredError` that says to ``import peft_reclora``."""
    try:
        yield
    except RecLoraNotRegisteredError:
        raise
    except KeyError as error:
        if error.args and str(error.args[0]) == RECLORA:
            raise RecLoraNotRegisteredError(MISSING_REGISTRATION) from error
        raise
