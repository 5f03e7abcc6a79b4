"""RecLoraModel: the PEFT tuner that injects RecLoRA layers and routes ``crm_embeds`` to them."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Optional, Union

import torch
from peft.tuners.tuners_utils import (
    BaseTuner,
    BaseTunerLayer,
    _filter_state_dict_by_key_prefixes,
    _get_tuner_state_dict_key_prefixes,
)
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, resolve_quantization_backend
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import RecLoraConfig
from .crm_context import (
    CONTEXT_ATTR,
    CrmContext,
    GenerateWithCrm,
    capture_crm_embeds_hook,
    finish_call_hook,
)
from .export import export_personalized_lora
from .gate import RecLoraGate
from .layer import MERGE_ERROR, Linear, RecLoraLayer
from .saving import check_tensors_to_save
from .sharding import gathered
from .tags import MODEL_TAGS


# RecLoRA adapts the attention query/value projections, like LoRA's defaults; PEFT's map lacks the architectures whose
# query, key and value share one fused projection (Phi-3) and Gemma 3's multimodal wrapper, whose text decoder
# names them as Gemma 2 does.
TRANSFORMERS_MODELS_TO_RECLORA_TARGET_MODULES_MAPPING = {
    "phi3": ["qkv_proj"],
    "gemma3": ["q_proj", "v_proj"],
    **TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
}
# For a model type neither map knows: the first of these attention-projection namings the model has (separate q/v,
# fused as in Phi-3, fused as in GPT-NeoX/Falcon/BLOOM, fused as in GPT-2, fused as in MPT).
FALLBACK_TARGET_MODULES = (["q_proj", "v_proj"], ["qkv_proj"], ["query_key_value"], ["c_attn"], ["Wqkv"])


def _is_supported_base(module: nn.Module) -> bool:
    if isinstance(module, (nn.Linear, Conv1D)):
        return True
    backend = resolve_quantization_backend(module)
    return backend is not None and backend.layer_type == "linear"


class RecLoraModel(BaseTuner):
    """Creates a RecLoRA model from a transformers model (use it through ``peft.get_peft_model``).

    Example:

        ```py
        >>> import peft_reclora  # registers RecLoRA with PEFT
        >>> from peft import get_peft_model
        >>> model = get_peft_model(base_model, peft_reclora.RecLoraConfig(crm_dim=256))
        >>> logits = model(input_ids=ids, attention_mask=mask, crm_embeds=crm).logits  # crm: (batch, 256)
        ```

    **Attributes**:
        - **model** -- the adapted transformers model.
        - **peft_config** -- dict of adapter name to ``RecLoraConfig``.
        - **reclora_gate** -- the shared gates (``gate_sharing="shared"``), one per adapter.
    """

    prefix: str = "reclora_"
    tuner_layer_cls = RecLoraLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_RECLORA_TARGET_MODULES_MAPPING
    uses_shared_state: bool = True

    def __init__(self, model, config, adapter_name, low_cpu_mem_usage: bool = False, state_dict=None) -> None:
        # Plain attribute: survives the nn.Module re-initialisation inside BaseTuner.__init__.
        self._crm_context = CrmContext()
        super().__init__(model, config, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)
        self._install_crm_plumbing()

    # ----------------------------------------------------------------------------------------------------------------
    # crm_embeds plumbing on the wrapped model

    def _install_crm_plumbing(self) -> None:
        model = self.model
        setattr(model, CONTEXT_ATTR, self._crm_context)
        self._crm_hook_handles = [
            model.register_forward_pre_hook(capture_crm_embeds_hook, with_kwargs=True),
            model.register_forward_hook(finish_call_hook, with_kwargs=True, always_call=True),
        ]
        if hasattr(type(model), "generate"):
            # Instance-level override: transformers' generate rejects unknown kwargs, and PEFT's task_type=None path
            # calls the wrapped model's generate directly.
            model.generate = GenerateWithCrm(model)
        if hasattr(model, "add_model_tags"):
            model.add_model_tags(MODEL_TAGS)

    def _remove_crm_plumbing(self) -> None:
        for handle in getattr(self, "_crm_hook_handles", []):
            handle.remove()
        self._crm_hook_handles = []
        model = self.model
        model.__dict__.pop("generate", None)
        if CONTEXT_ATTR in model.__dict__:
            delattr(model, CONTEXT_ATTR)
        tags = getattr(model, "model_tags", None)
        if tags:
            model.model_tags = [tag for tag in tags if tag not in MODEL_TAGS] or None

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    @property
    def check_crm_finite(self) -> bool:
        """Refuse NaN/Inf ``crm_embeds`` (one device-to-host synchronisation per model call or ``generate``; on by
        default). Set to False to skip the check in a serving loop whose inputs are already validated."""
        return self._crm_context.check_finite

    @check_crm_finite.setter
    def check_crm_finite(self, value: bool) -> None:
        self._crm_context.check_finite = bool(value)

    @contextlib.contextmanager
    def use_crm_embeds(self, crm_embeds: torch.Tensor) -> Iterator[None]:
        """Condition every call inside the block on ``crm_embeds``, also calls of inner modules (the decoder alone,
        one attention block) that the model's own ``crm_embeds=`` keyword cannot reach. Scoped to the current thread
        or asyncio task, like a model call."""
        context = self._crm_context
        call = context.open_call(self.model, "scope", context.validate(crm_embeds))
        try:
            yield
        finally:
            context.release(call)

    def generate(self, *args, **kwargs):
        """``generate`` of the wrapped model; ``crm_embeds`` (batch, crm_dim) conditions every decoding step, beams and
        ``num_return_sequences`` included."""
        return self.model.generate(*args, **kwargs)

    # ----------------------------------------------------------------------------------------------------------------
    # injection

    def _prepare_adapter_config(self, peft_config: RecLoraConfig, model_config: dict) -> RecLoraConfig:
        if peft_config.target_modules is None:
            module_names = (name for name, _ in self.model.named_modules())
            target_modules = default_target_modules(module_names, model_config.get("model_type"))
            peft_config.target_modules = target_modules if isinstance(target_modules, str) else set(target_modules)
        return peft_config

    def _check_new_adapter_config(self, config: RecLoraConfig) -> None:
        super()._check_new_adapter_config(config)
        if not isinstance(config, RecLoraConfig):
            raise TypeError(f"RecLoraModel takes RecLoraConfig adapters, got {type(config).__name__}")

    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict=None,
    ) -> None:
        config: RecLoraConfig = self.peft_config[adapter_name]
        if "reclora_gate" not in self._modules:
            self.reclora_gate = nn.ModuleDict({})
        created_gate = False
        if config.gate_sharing == "shared" and adapter_name not in self.reclora_gate:
            device, dtype = self._gate_device_and_dtype(model)
            gate = RecLoraGate(
                config.crm_dim, config.gate_hidden_dim, config.num_meta_loras, config.temperature, config.gate_dropout
            )
            if gate.fc1_weight.device.type == "meta":  # low_cpu_mem_usage: weights arrive with the state dict
                gate.to(dtype=dtype)
            else:
                gate.to(device=device, dtype=dtype)
            gate.requires_grad_(not config.inference_mode)
            self.reclora_gate[adapter_name] = gate
            self._crm_context.gates.setdefault(adapter_name, []).append(gate)
            created_gate = True
        self._crm_context.gate_dropout[adapter_name] = (config.gate_hidden_dim, config.gate_dropout)
        try:
            super().inject_adapter(
                model,
                adapter_name,
                autocast_adapter_dtype=autocast_adapter_dtype,
                low_cpu_mem_usage=low_cpu_mem_usage,
                state_dict=state_dict,
            )
        except Exception:
            # add_adapter rolls back peft_config; roll back the tuner-level state too.
            if created_gate:
                del self.reclora_gate[adapter_name]
            self._crm_context.gate_dropout.pop(adapter_name, None)
            self._crm_context.gates.pop(adapter_name, None)
            raise
        self._freeze_inactive_shared_gates(inference_mode=config.inference_mode)

    @staticmethod
    def _gate_device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
        """The shared gate sits with the input embeddings (where crm_embeds usually is) in the model's float dtype."""
        reference = None
        if hasattr(model, "get_input_embeddings"):
            embeddings = model.get_input_embeddings()
            reference = getattr(embeddings, "weight", None)
        if reference is None or not reference.is_floating_point():
            reference = next((p for p in model.parameters() if p.is_floating_point()), None)
        if reference is None:
            return torch.device("cpu"), torch.float32
        if reference.device.type == "meta":
            return torch.device("cpu"), reference.dtype
        return reference.device, reference.dtype

    def _create_and_replace(
        self, config: RecLoraConfig, adapter_name, target, target_name, parent, current_key, **kwargs
    ):
        if current_key is None:
            raise ValueError("current_key must not be None")
        if isinstance(target, RecLoraLayer):
            target.update_layer(adapter_name, config, inference_mode=config.inference_mode)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not _is_supported_base(base):
            raise TypeError(
                f"Target module '{current_key}' ({type(base).__name__}) is not supported by RecLoRA: only "
                "torch.nn.Linear, transformers Conv1D and quantized linear layers (bitsandbytes 8-bit/4-bit, ...) can "
                "be adapted. Check `target_modules`."
            )
        new_module = Linear(target, adapter_name, config, self._crm_context, self.reclora_gate)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    # ----------------------------------------------------------------------------------------------------------------
    # adapter management that involves the tuner-level (shared) gates

    def _freeze_inactive_shared_gates(self, inference_mode: bool = False) -> None:
        for name, gate in self.reclora_gate.items():
            gate.requires_grad_(name in self.active_adapters and not inference_mode)

    def set_adapter(self, adapter_name: Union[str, list[str]], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        self._freeze_inactive_shared_gates(inference_mode=inference_mode)

    def set_requires_grad(self, adapter_names, requires_grad: bool = True) -> None:
        super().set_requires_grad(adapter_names, requires_grad=requires_grad)
        names = {adapter_names} if isinstance(adapter_names, str) else set(adapter_names)
        for name in names & set(self.reclora_gate.keys()):
            self.reclora_gate[name].requires_grad_(requires_grad)

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        super()._enable_adapter_layers(enabled)
        if enabled:
            self._freeze_inactive_shared_gates()
        else:
            for gate in self.reclora_gate.values():
                gate.requires_grad_(False)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        if adapter_name in self.reclora_gate:
            del self.reclora_gate[adapter_name]
        self._crm_context.gate_dropout.pop(adapter_name, None)
        self._crm_context.gates.pop(adapter_name, None)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
        if autocast_adapter_dtype and adapter_name in self.reclora_gate:
            gate = self.reclora_gate[adapter_name]
            if gate.fc1_weight.dtype in (torch.float16, torch.bfloat16):
                gate.float()

    def _check_merge_allowed(self):
        raise ValueError(MERGE_ERROR)

    def _unload_and_optionally_merge(self, merge=True, progressbar=False, safe_merge=False, adapter_names=None):
        if merge:
            self._check_merge_allowed()
        model = super()._unload_and_optionally_merge(
            merge=False, progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names
        )
        self._remove_crm_plumbing()
        return model

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        check_adapter_state_dict(model, config, adapter_name, remapped)
        return remapped

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        to_save = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        check_tensors_to_save(model, config, adapter_name, to_save)
        return to_save

    # ----------------------------------------------------------------------------------------------------------------
    # gate inspection and per-user export

    def reclora_layers(self, adapter_name: Optional[str] = None) -> dict[str, RecLoraLayer]:
        """Adapted modules by name (relative to the wrapped model), optionally only those holding ``adapter_name``."""
        return {
            name: module
            for name, module in self.model.named_modules()
            if isinstance(module, RecLoraLayer) and (adapter_name is None or adapter_name in module.reclora_A)
        }

    def compute_gate(
        self, crm_embeds: torch.Tensor, adapter_name: str = "default", module_name: Optional[str] = None
    ) -> torch.Tensor:
        """Mixing weights alpha, (batch, num_meta_loras), that ``adapter_name`` gives each row of ``crm_embeds``.

        Gate dropout is not applied (it is a training-time regulariser). With ``gate_sharing="per_module"`` every
        adapted module has its own gate; pass ``module_name`` (a key of ``reclora_layers()``) to pick one.
        """
        if adapter_name not in self.peft_config:
            raise ValueError(f"Adapter {adapter_name} does not exist")
        config: RecLoraConfig = self.peft_config[adapter_name]
        crm_embeds = self._crm_context.validate(crm_embeds)
        if config.gate_sharing == "shared":
            gate = self.reclora_gate[adapter_name]
        else:
            layers = self.reclora_layers(adapter_name)
            if module_name is None or module_name not in layers:
                raise ValueError(
                    f"Adapter '{adapter_name}' uses gate_sharing='per_module': pass module_name=<one of "
                    f"{sorted(layers)[:4]}...> to compute_gate"
                )
            gate = layers[module_name].reclora_gate[adapter_name]
        if crm_embeds.shape[1] != config.crm_dim:
            raise ValueError(
                f"`crm_embeds` has width {crm_embeds.shape[1]} but adapter '{adapter_name}' expects "
                f"(batch, crm_dim={config.crm_dim})"
            )
        with gathered(gate.parameters()):  # partitioned under ZeRO-3
            return gate(crm_embeds)

    def export_personalized_lora(
        self, crm_embeds: torch.Tensor, save_directory: str, adapter_name: str = "default"
    ) -> None:
        """Write one user's personalized adapter as a standard PEFT LoRA adapter (loadable without this package).

        See ``peft_reclora.export.export_personalized_lora``.
        """
        export_personalized_lora(self, crm_embeds, save_directory, adapter_name=adapter_name)


def default_target_modules(module_names: Iterable[str], model_type: Optional[str]) -> Union[list[str], str]:
    """The modules ``target_modules=None`` adapts: the query/value projections PEFT's LoRA map names for
    ``model_type``, else the first attention-projection naming in ``FALLBACK_TARGET_MODULES`` among the model's
    ``module_names``."""
    mapped = TRANSFORMERS_MODELS_TO_RECLORA_TARGET_MODULES_MAPPING.get(model_type)
    if mapped is not None:
        return mapped
    suffixes = {name.rsplit(".", 1)[-1] for name in module_names}
    for candidate in FALLBACK_TARGET_MODULES:
        if set(candidate) <= suffixes:
            return list(candidate)
    raise ValueError(
        f"RecLoraConfig.target_modules=None: no default target modules are known for model_type {model_type!r}, and "
        "the model has none of the usual attention projections "
        f"({', '.join('/'.join(c) for c in FALLBACK_TARGET_MODULES)}). "
        "Pass target_modules explicitly."
    )


def check_adapter_state_dict(model: nn.Module, config: RecLoraConfig, adapter_name: str, state_dict: dict) -> None:
    """Refuse adapter weights that do not fit the model built from the adapter's config.

    PEFT only warns about missing keys and torch reports a bare size mismatch; a RecLoRA adapter with a missing bank or
    gate, or saved with another num_meta_loras, rank or crm_dim than its config says, would then run with random or
    partial weights. The error names the keys and the config fields that disagree.
    """
    prefix = "base_model.model."
    adapter_parameters = [param for name, param in model.named_parameters() if RecLoraModel.prefix in name]
    with gathered(adapter_parameters):  # under ZeRO-3 the model's own tensors read as shape [0] otherwise
        expected = {
            key.removeprefix(prefix): value
            for key, value in _filter_state_dict_by_key_prefixes(
                model.state_dict(), _get_tuner_state_dict_key_prefixes(model, adapter_name=adapter_name)
            ).items()
        }
    provided = {key.removeprefix(prefix): value for key, value in state_dict.items() if RecLoraModel.prefix in key}
    problems = []
    missing = sorted(set(expected) - set(provided))
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
    unexpected = sorted(set(provided) - set(expected))
    if unexpected:
        problems.append(f"{len(unexpected)} key(s) the model does not have, e.g. {unexpected[:3]}")
    for key in sorted(set(expected) & set(provided)):
        if tuple(expected[key].shape) != tuple(provided[key].shape):
            problems.append(
                f"shape of {key}: file {tuple(provided[key].shape)}, model {tuple(expected[key].shape)} "
                f"({_field_hint(key)})"
            )
            break
    if not problems:
        non_finite = [
            key for key in sorted(provided)
            if provided[key].is_floating_point() and not bool(torch.isfinite(provided[key]).all())
        ]
        if non_finite:
            problems.append(
                f"non-finite values (NaN or Inf) in {len(non_finite)} tensor(s): {', '.join(non_finite[:3])}"
            )
    if problems:
        raise ValueError(
            f"The RecLoRA adapter weights for '{adapter_name}' do not match its adapter_config.json "
            f"(num_meta_loras={config.num_meta_loras}, r={config.r}, crm_dim={config.crm_dim}, "
            f"gate_hidden_dim={config.gate_hidden_dim}, gate_sharing={config.gate_sharing!r}): " + "; ".join(problems)
        )


def _field_hint(key: str) -> str:
    if ".reclora_A." in key or key.endswith(".reclora_A"):
        return "num_meta_loras * r, or the target module's input width"
    if ".reclora_B." in key or key.endswith(".reclora_B"):
        return "num_meta_loras * r, or the target module's output width"
    if key.endswith("fc1_weight"):
        return "crm_dim or gate_hidden_dim"
    if key.endswith("fc2_weight") or key.endswith("fc2_bias"):
        return "num_meta_loras or gate_hidden_dim"
    return "gate_hidden_dim"
