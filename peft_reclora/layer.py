"""RecLoRA layers: a bank of meta-LoRA pairs around a frozen linear base layer."""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, _get_in_out_features
from peft.utils import quantization_extra_repr, resolve_quantization_backend
from torch import nn

from .config import RecLoraConfig
from .crm_context import CrmContext
from .gate import RecLoraGate
from .ops import compute_dtype, meta_lora


MERGE_ERROR = (
    "RecLoRA adapters cannot be merged into the base weights: the adapter update depends on each sample's "
    "`crm_embeds` through the gate, so there is no single weight to fold in. Use `unload()` to get the base model "
    "back, or `export_personalized_lora(crm_embeds, path)` to write a plain LoRA adapter for one user."
)


class RecLoraLayer(BaseTunerLayer):
    """Meta-LoRA banks of one adapted module.

    Per adapter the banks are stored concatenated along the rank axis, the layout the fused kernels consume directly:
    ``reclora_A[name]`` is (num_meta_loras * r, d_in) and ``reclora_B[name]`` is (d_out, num_meta_loras * r); rank slot
    j belongs to meta-LoRA j // r. With ``gate_sharing="per_module"`` the layer also owns a gate (``reclora_gate``);
    with ``"shared"`` it reads the adapter's gate from the tuner through the CRM context.
    """

    adapter_layer_names = ("reclora_A", "reclora_B", "reclora_gate")
    other_param_names = ("r", "lora_alpha", "scaling", "num_meta_loras", "mixing", "kernel_backend", "reclora_dropout")

    def __init__(self, base_layer: nn.Module, crm_context: CrmContext, shared_gates: nn.ModuleDict, **kwargs) -> None:
        self.base_layer = base_layer
        self.quantization_backend = resolve_quantization_backend(self.get_base_layer())
        self.reclora_A = nn.ParameterDict({})
        self.reclora_B = nn.ParameterDict({})
        self.reclora_gate = nn.ModuleDict({})
        self.reclora_dropout = nn.ModuleDict({})
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.num_meta_loras: dict[str, int] = {}
        self.mixing: dict[str, str] = {}
        self.kernel_backend: dict[str, str] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        # Plain references (not submodules): the context carries crm_embeds; shared gates belong to the tuner.
        self._crm_context = crm_context
        self._shared_gates = [shared_gates]
        self.kwargs = kwargs

        in_features, out_features = _get_in_out_features(self.get_base_layer())
        if in_features is None or out_features is None:
            raise TypeError(f"RecLoRA cannot adapt a layer of type {type(self.get_base_layer()).__name__}")
        self.in_features = in_features
        self.out_features = out_features

    def update_layer(self, adapter_name: str, config: RecLoraConfig, inference_mode: bool = False) -> None:
        self.r[adapter_name] = config.r
        self.lora_alpha[adapter_name] = config.lora_alpha
        self.scaling[adapter_name] = config.lora_alpha / config.r
        self.num_meta_loras[adapter_name] = config.num_meta_loras
        self.mixing[adapter_name] = config.mixing
        self.kernel_backend[adapter_name] = config.kernel_backend
        self.reclora_dropout[adapter_name] = (
            nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        )
        self.reclora_A[adapter_name] = nn.Parameter(torch.empty(config.total_rank, self.in_features))
        self.reclora_B[adapter_name] = nn.Parameter(torch.empty(self.out_features, config.total_rank))
        if config.gate_sharing == "per_module":
            gate = RecLoraGate(
                config.crm_dim, config.gate_hidden_dim, config.num_meta_loras, config.temperature, config.gate_dropout
            )
            self.reclora_gate[adapter_name] = gate
            self._crm_context.gates.setdefault(adapter_name, []).append(gate)
        self.reset_reclora_parameters(adapter_name, config.init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def reset_reclora_parameters(self, adapter_name: str, init_weights: bool = True) -> None:
        """A_k Kaiming-uniform per meta-LoRA (every A_k has fan-in d_in, so one call over the concatenated bank draws
        each A_k from exactly the distribution of a plain LoRA A), B zero so the adapter starts as a no-op."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.reclora_A[adapter_name], a=math.sqrt(5))
            if init_weights:
                nn.init.zeros_(self.reclora_B[adapter_name])
            else:
                nn.init.normal_(self.reclora_B[adapter_name], std=0.1)

    # ----------------------------------------------------------------------------------------------------------------

    def gate_module(self, adapter_name: str) -> RecLoraGate:
        if adapter_name in self.reclora_gate:
            return self.reclora_gate[adapter_name]
        shared = self._shared_gates[0]
        if adapter_name not in shared:
            raise KeyError(f"No gate found for RecLoRA adapter '{adapter_name}'")
        return shared[adapter_name]

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        raise ValueError(MERGE_ERROR)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")


class Linear(nn.Module, RecLoraLayer):
    """RecLoRA on a linear base layer: ``nn.Linear``, transformers' ``Conv1D``, or a quantized linear layer
    (bitsandbytes 8-bit / 4-bit and the other backends PEFT resolves), whose output is treated as opaque."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: RecLoraConfig,
        crm_context: CrmContext,
        shared_gates: nn.ModuleDict,
        **kwargs,
    ) -> None:
        super().__init__()
        RecLoraLayer.__init__(self, base_layer, crm_context, shared_gates, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, inference_mode=config.inference_mode)

    def _can_fuse_base(self, adapter_names: list[str], args: tuple, kwargs: dict) -> bool:
        """The base GEMM can join the adapter computation when the base is a plain, hook-free ``nn.Linear`` and a
        single adapter runs without input dropout; anything else gets the base output first and the delta added."""
        if len(adapter_names) != 1 or args or kwargs:
            return False
        base = self.get_base_layer()
        if type(base) is not nn.Linear or self.quantization_backend is not None:
            return False
        if base._forward_hooks or base._forward_pre_hooks or hasattr(base, "_hf_hook"):
            return False
        dropout = self.reclora_dropout[adapter_names[0]]
        return isinstance(dropout, nn.Identity) or not dropout.training

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters or self.merged:
            return self.base_layer(x, *args, **kwargs)
        adapter_names = [name for name in self.active_adapters if name in self.reclora_A]
        if not adapter_names:
            return self.base_layer(x, *args, **kwargs)

        context = self._crm_context
        context.mark_layer_run()
        call = context.require_call(adapter_names[0])
        batch_size = x.shape[0] if x.dim() >= 2 else 1
        if self._can_fuse_base(adapter_names, args, kwargs):
            name = adapter_names[0]
            base = self.get_base_layer()
            return meta_lora(
                x,
                self.reclora_A[name],
                self.reclora_B[name],
                context.gate(call, name, self.gate_module(name), batch_size, x.device),
                self.scaling[name],
                self.num_meta_loras[name],
                mixing=self.mixing[name],
                base_weight=base.weight,
                base_bias=base.bias,
                backend=call.backend(self.kernel_backend[name], x.device, compute_dtype(x)),
            )

        result = self.base_layer(x, *args, **kwargs)
        result_dtype = result.dtype
        if self.quantization_backend is not None:
            result = self.quantization_backend.maybe_clone_base_result(result)
        compute_x = x if x.dtype.is_floating_point else x.float()
        for name in adapter_names:
            gate = context.gate(call, name, self.gate_module(name), batch_size, x.device)
            result = meta_lora(
                self.reclora_dropout[name](compute_x),
                self.reclora_A[name],
                self.reclora_B[name],
                gate,
                self.scaling[name],
                self.num_meta_loras[name],
                mixing=self.mixing[name],
                base_output=result,
                backend=call.backend(self.kernel_backend[name], compute_x.device, compute_dtype(compute_x)),
            )
        return result.to(result_dtype)

    def __repr__(self) -> str:
        return "reclora." + super().__repr__()

    def extra_repr(self) -> str:
        return quantization_extra_repr(self)
