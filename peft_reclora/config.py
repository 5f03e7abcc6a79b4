"""Configuration of RecLoRA adapters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from peft.config import PeftConfig
from peft.utils import PeftType

from .ops import BACKENDS, MIXING_MODES
from .peft_type import ensure_reclora_peft_type


GATE_SHARING_MODES = ("shared", "per_module")


@dataclass
class RecLoraConfig(PeftConfig):
    """Configuration of a RecLoRA adapter: banks of meta-LoRA pairs mixed per sample by a gate over a CRM embedding.

    For each adapted linear layer W (d_in -> d_out), RecLoRA keeps ``num_meta_loras`` LoRA pairs (A_k, B_k) of rank
    ``r``. A gate network turns the conventional recommender's user representation R_c (``crm_dim`` wide, passed as
    ``crm_embeds=`` to ``forward``/``generate``) into mixing weights alpha = softmax(beta / temperature) with
    beta = W2 ReLU(LN(W1 R_c + b1)) + b2 (paper, Eq. 13-14), and the layer computes

        y_b = x_b W^T + (lora_alpha / r) * sum_k alpha_{b,k} (x_b A_k^T) B_k^T          (paper, Eq. 11)

    Defaults follow the paper (Section 4 and Appendix C): r=8, lora_alpha=16, no dropout, 16 meta-LoRAs on q_proj and
    v_proj.

    Args:
        crm_dim (`int`): Width of the CRM representation fed to the gate. Required.
        r (`int`): Rank of each meta-LoRA pair. The bank has ``num_meta_loras * r`` rank slots in total.
        lora_alpha (`int`): Scaling numerator; the adapter output is scaled by ``lora_alpha / r``.
        lora_dropout (`float`): Dropout on the adapter input.
        num_meta_loras (`int`): Number of meta-LoRA pairs N_m per adapted layer.
        gate_hidden_dim (`int`): Hidden width of the gate network (the published code used 60).
        temperature (`float`): Softmax temperature t_p of the gate; larger is smoother.
        gate_dropout (`float`): Dropout inside the gate (after the ReLU). One mask per sample and forward call is
            shared by every layer, so a shared gate still yields one alpha per sample.
        gate_sharing (`str`): ``"shared"``: one gate per adapter, used by every adapted layer (the paper);
            ``"per_module"``: one gate per adapted module (the published code).
        mixing (`str`): ``"output"``: sum_k alpha_k (x A_k) B_k (the paper's Eq. 11, rank up to N_m * r);
            ``"weights"``: (sum_k alpha_k A_k)(sum_k alpha_k B_k) as in the published code (rank up to r, squared
            weights and cross terms). Only for reproducing that code.
        kernel_backend (`str`): ``"auto"`` (Triton on CUDA, else fused PyTorch), ``"torch"``, ``"triton"`` or
            ``"reference"`` (per-meta-LoRA loop, for debugging). The environment variable ``PEFT_RECLORA_BACKEND``
            overrides ``"auto"``.
        target_modules (`Union[list[str], str]`): Names (suffix match) or a regex of the modules to adapt. ``None``
            picks the query/value projections of the architecture (``q_proj``/``v_proj`` for Llama-style models).
        exclude_modules (`Union[list[str], str]`): Modules never to adapt.
        layers_to_transform (`Union[list[int], int]`): Only adapt these layer indices.
        layers_pattern (`Union[list[str], str]`): Name of the layer list, used with ``layers_to_transform``.
        modules_to_save (`list[str]`): Extra modules to train and save in full.
        init_weights (`bool`): B is zero at init, so the adapted model equals the base model. Set False only for tests
            that need a non-trivial adapter at init.
    """

    crm_dim: Optional[int] = field(default=None, metadata={"help": "Width of the CRM embedding (required)."})
    r: int = field(default=8, metadata={"help": "Rank of each meta-LoRA pair."})
    lora_alpha: int = field(default=16, metadata={"help": "Scaling numerator (scaling = lora_alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout probability on the adapter input."})
    num_meta_loras: int = field(default=16, metadata={"help": "Number of meta-LoRA pairs per adapted layer."})
    gate_hidden_dim: int = field(default=60, metadata={"help": "Hidden width of the gate network."})
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the gate."})
    gate_dropout: float = field(default=0.0, metadata={"help": "Dropout probability inside the gate."})
    gate_sharing: Literal["shared", "per_module"] = field(
        default="shared", metadata={"help": "'shared' (one gate per adapter) or 'per_module' (one per module)."}
    )
    mixing: Literal["output", "weights"] = field(
        default="output", metadata={"help": "'output' (paper, Eq. 11) or 'weights' (published code)."}
    )
    kernel_backend: Literal["auto", "torch", "triton", "reference"] = field(
        default="auto", metadata={"help": "Adapter compute backend: 'auto', 'torch', 'triton' or 'reference'."}
    )
    target_modules: Optional[Union[list[str], str]] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "Module names or regex to adapt; None picks the architecture's query/value projections."},
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or regex to exclude from adaptation."}
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None, metadata={"help": "Layer indices to adapt."}
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Name of the layer list, used with layers_to_transform."}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Extra modules to train and save in full."}
    )
    init_weights: bool = field(default=True, metadata={"help": "Zero B at init so the adapter starts as a no-op."})
    task_type: Optional[str] = field(default="CAUSAL_LM", metadata={"help": "PEFT task type."})

    def __post_init__(self):
        ensure_reclora_peft_type()
        super().__post_init__()
        self.peft_type = PeftType.RECLORA
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, (list, tuple)):
            self.exclude_modules = set(self.exclude_modules)
        self._validate()

    def _validate(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RecLoraConfig.{name} must be a positive integer, got {value!r}")

        if self.crm_dim is None:
            raise ValueError("RecLoraConfig.crm_dim is required: the width of the CRM embedding fed to the gate")
        for name in ("crm_dim", "r", "num_meta_loras", "gate_hidden_dim"):
            positive_int(name)
        def finite_number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"RecLoraConfig.{name} must be a finite number, got {value!r}")
            return value

        if finite_number("lora_alpha") <= 0:
            raise ValueError(f"RecLoraConfig.lora_alpha must be a positive number, got {self.lora_alpha!r}")
        if finite_number("temperature") <= 0:
            raise ValueError(f"RecLoraConfig.temperature must be > 0, got {self.temperature!r}")
        for name in ("lora_dropout", "gate_dropout"):
            if not 0.0 <= finite_number(name) < 1.0:
                raise ValueError(f"RecLoraConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.gate_sharing not in GATE_SHARING_MODES:
            raise ValueError(
                f"RecLoraConfig.gate_sharing must be one of {GATE_SHARING_MODES}, got {self.gate_sharing!r}"
            )
        if self.mixing not in MIXING_MODES:
            raise ValueError(f"RecLoraConfig.mixing must be one of {MIXING_MODES}, got {self.mixing!r}")
        if self.kernel_backend not in BACKENDS:
            raise ValueError(f"RecLoraConfig.kernel_backend must be one of {BACKENDS}, got {self.kernel_backend!r}")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("RecLoraConfig.layers_pattern needs RecLoraConfig.layers_to_transform as well")
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("RecLoraConfig.layers_to_transform cannot be used when target_modules is a regex string")

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """PEFT's config save, then this adapter's row in the RecLoRA section of the model card PEFT has just written
        next to it (``PeftModel.save_pretrained`` writes the card first, then each adapter's config)."""
        super().save_pretrained(save_directory, **kwargs)
        # Local import: hub imports this module (it reads RecLoraConfig); the card hook is the one edge back.
        from .hub import add_adapter_to_card

        add_adapter_to_card(save_directory, self)

    @property
    def total_rank(self) -> int:
        """Rank slots of one concatenated bank, num_meta_loras * r."""
        return self.num_meta_loras * self.r

