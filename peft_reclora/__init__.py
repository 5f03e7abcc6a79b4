"""RecLoRA for Hugging Face PEFT: personalized low-rank adaptation of LLMs for recommendation.

Importing this package registers the ``RECLORA`` method with PEFT (a ``PeftType`` member and PEFT's method tables; no
PEFT class or function is changed), after which PEFT's own API works with it:

    >>> import peft_reclora
    >>> from peft import get_peft_model
    >>> model = get_peft_model(base_model, peft_reclora.RecLoraConfig(crm_dim=256))
    >>> out = model(input_ids=ids, attention_mask=mask, crm_embeds=crm)  # crm: (batch, 256)
"""

__version__ = "0.1.0"

from .versions import check_supported_versions


check_supported_versions()  # before PEFT is imported: an unsupported release would fail on a private name instead

from .peft_type import ensure_reclora_peft_type  # noqa: E402


ensure_reclora_peft_type()

from .adapter_folder import check_adapter_folder  # noqa: E402
from .config import RecLoraConfig  # noqa: E402
from .export import export_personalized_lora, personalized_lora_model, personalized_lora_weights  # noqa: E402
from .gate import RecLoraGate  # noqa: E402
from .hub import push_to_hub, reclora_card_section  # noqa: E402
from .layer import Linear, RecLoraLayer  # noqa: E402
from .model import RecLoraModel  # noqa: E402
from .ops import meta_lora  # noqa: E402
from .registration import RecLoraNotRegisteredError, explain_missing_registration, register  # noqa: E402
from .sharding import fsdp_auto_wrap_policy  # noqa: E402


register()

__all__ = [
    "Linear",
    "RecLoraConfig",
    "RecLoraGate",
    "RecLoraLayer",
    "RecLoraModel",
    "RecLoraNotRegisteredError",
    "check_adapter_folder",
    "explain_missing_registration",
    "export_personalized_lora",
    "fsdp_auto_wrap_policy",
    "meta_lora",
    "personalized_lora_model",
    "personalized_lora_weights",
    "push_to_hub",
    "reclora_card_section",
    "register",
]
