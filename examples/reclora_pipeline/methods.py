"""The LLM-based models of a comparison, one class each: how it is tuned (its PEFT config, or none), whether it reads
``crm_embeds``, which histories feed its prompt and its gate, and its label (``label(config)``: its row in the results
table and the label of its stages; the registry key of a method is its ``choice``).

``tune.adapter`` holds keyword arguments of ``RecLoraConfig`` and ``LoraConfig``; a method passes on the keys its
config class takes, unchanged. Adding a method is one subclass of :class:`Method` with a ``choice`` (its name in
``--models``); several classes may share a choice (``ablations``).

    for model in models_of(config):
        model.label(config), model.peft_config(config.tune.adapter, crm_dim=64), model.needs_crm
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Optional


if TYPE_CHECKING:
    from .config import RunConfig

REFERENCE_NAME = "RecLoRA"  # the model whose AUC RelImpr compares with every other model's
METHODS: list = []


def register(cls):
    METHODS.append(cls)
    return cls


def _fields(config_class) -> dict:
    return {item.name: item for item in dataclasses.fields(config_class)}


def _reclora_config_class():
    import peft_reclora

    return peft_reclora.RecLoraConfig


def _lora_config_class():
    from peft import LoraConfig

    return LoraConfig


def declared_default(config_class, name: str):
    """The default of a field as the config class declares it (RecLoraConfig: num_meta_loras 16)."""
    item = _fields(config_class)[name]
    return item.default_factory() if item.default is dataclasses.MISSING else item.default


def adapter_key_problem(key: str) -> Optional[str]:
    """Why ``key`` cannot be a ``tune.adapter`` key, or None when RecLoraConfig or LoraConfig takes it."""
    if key in _fields(_reclora_config_class()) or key in _fields(_lora_config_class()):
        return None
    known = sorted(set(_fields(_reclora_config_class())) | set(_fields(_lora_config_class())))
    close = difflib.get_close_matches(key, known, n=3)
    return ("neither RecLoraConfig nor LoraConfig has this field"
            + (f"; did you mean {', '.join(close)}?" if close else ""))


def keyword_arguments(adapter: Mapping[str, Any], config_class) -> dict:
    """The ``tune.adapter`` entries ``config_class`` takes, as they are."""
    names = _fields(config_class)
    return {key: value for key, value in adapter.items() if key in names}


@dataclass(frozen=True)
class Method:
    """One LLM model of the comparison. Variants of a method change one thing: the few-shot size or adapter keys."""

    choice: ClassVar[str] = ""
    needs_crm: ClassVar[bool] = False  # forward/generate take crm_embeds (the gate reads R_c)
    tuned: ClassVar[bool] = True
    short_history: ClassVar[Optional[str]] = None  # the prompt's history; None: the run's retrieval mode
    long_history: ClassVar[Optional[str]] = None  # the CRM's history (methods that need a CRM); None: idem

    few_shot: Optional[int] = None  # None: tune.few_shot
    adapter: Mapping[str, Any] = field(default_factory=dict)  # tune.adapter keys this model changes
    study: str = "main"  # "main", "ablation", "num_meta_loras" or "few_shot"

    def label(self, config: "RunConfig") -> str:
        """The model's name for people: its row in the results table and its stages' label ("LoRA (r=8)")."""
        raise NotImplementedError

    def peft_config(self, adapter: Mapping[str, Any], crm_dim: Optional[int] = None):
        """The PEFT config this method tunes (None: the frozen LLM)."""
        raise NotImplementedError

    # -- derived --------------------------------------------------------------------------------------------------
    def adapter_settings(self, config: "RunConfig") -> dict:
        return {**config.tune.adapter, **self.adapter}

    def few_shot_size(self, config: "RunConfig") -> int:
        return config.tune.few_shot if self.few_shot is None else self.few_shot

    def short_mode(self, config: "RunConfig") -> str:
        return self.short_history or config.retrieval.mode

    def long_mode(self, config: "RunConfig") -> str:
        return self.long_history or config.retrieval.mode

    def rank(self, config: "RunConfig") -> int:
        return int(self.adapter_settings(config).get("r", declared_default(_reclora_config_class(), "r")))

    def num_meta_loras(self, config: "RunConfig") -> int:
        return _num_meta_loras(self.adapter_settings(config))

    def _suffix(self, config: "RunConfig", *parts: str) -> str:
        if self.few_shot is not None:
            parts = (*parts, f"N={self.few_shot}")
        return f" ({', '.join(parts)})" if parts else ""


@register
@dataclass(frozen=True)
class ZeroShot(Method):
    """The frozen LLM, scored on the same prompts without tuning."""

    choice: ClassVar[str] = "zero-shot"
    tuned: ClassVar[bool] = False

    def label(self, config):
        return "Zero-shot"

    def peft_config(self, adapter, crm_dim=None):
        return None


@register
@dataclass(frozen=True)
class Lora(Method):
    """One LoRA of rank r on the same prompt: the TALLRec/ReLLa setting."""

    choice: ClassVar[str] = "lora"

    def label(self, config):
        return f"LoRA{self._suffix(config, f'r={self.lora_rank(config)}')}"

    def lora_rank(self, config) -> int:
        return int(self.adapter_settings(config).get("r", declared_default(_lora_config_class(), "r")))

    def peft_config(self, adapter, crm_dim=None):
        config_class = _lora_config_class()
        return config_class(**keyword_arguments(adapter, config_class))


@register
@dataclass(frozen=True)
class LoraSameParams(Lora):
    """LoRA with RecLoRA's parameter count: rank num_meta_loras * r. lora_alpha grows by the same factor, so the
    scaling lora_alpha / r is RecLoRA's."""

    choice: ClassVar[str] = "lora-same-params"

    def lora_rank(self, config) -> int:
        return super().lora_rank(config) * self.num_meta_loras(config)

    def peft_config(self, adapter, crm_dim=None):
        config_class = _lora_config_class()
        arguments = keyword_arguments(adapter, config_class)
        factor = _num_meta_loras(adapter)
        for name in ("r", "lora_alpha"):
            arguments[name] = arguments.get(name, declared_default(config_class, name)) * factor
        return config_class(**arguments)


@register
@dataclass(frozen=True)
class RecLora(Method):
    """RecLoRA: a bank of meta-LoRAs mixed per sample by a gate over the CRM's R_c."""

    choice: ClassVar[str] = "reclora"
    needs_crm: ClassVar[bool] = True

    def label(self, config):
        parts = [f"N_m={self.adapter['num_meta_loras']}"] if "num_meta_loras" in self.adapter else []
        return f"{REFERENCE_NAME}{self._suffix(config, *parts)}"

    def peft_config(self, adapter, crm_dim=None):
        if crm_dim is None:
            raise ValueError("RecLoRA needs crm_dim, the width of the CRM's R_c")
        config_class = _reclora_config_class()
        return config_class(crm_dim=crm_dim, **keyword_arguments(adapter, config_class))


@register
@dataclass(frozen=True)
class RecLoraWithoutLongRetriever(RecLora):
    """The ablation without the long retriever: the CRM reads the most recent K_long items."""

    choice: ClassVar[str] = "ablations"
    long_history: ClassVar[Optional[str]] = "recent"

    def label(self, config):
        return "RecLoRA w/o long retriever"


@register
@dataclass(frozen=True)
class RecLoraWithoutShortRetriever(RecLora):
    """The ablation without the short retriever: the prompt shows the most recent K_short items."""

    choice: ClassVar[str] = "ablations"
    short_history: ClassVar[Optional[str]] = "recent"

    def label(self, config):
        return "RecLoRA w/o short retriever"


@register
@dataclass(frozen=True)
class RecLoraWithoutRetrievers(RecLora):
    """The ablation without both retrievers."""

    choice: ClassVar[str] = "ablations"
    short_history: ClassVar[Optional[str]] = "recent"
    long_history: ClassVar[Optional[str]] = "recent"

    def label(self, config):
        return "RecLoRA w/o both retrievers"


def _num_meta_loras(adapter: Mapping[str, Any]) -> int:
    return int(adapter.get("num_meta_loras", declared_default(_reclora_config_class(), "num_meta_loras")))


MODEL_CHOICES = tuple(dict.fromkeys(method.choice for method in METHODS))


def models_of(config: "RunConfig") -> list[Method]:
    """The LLM models a config asks for: the main comparison (in ``models`` order), then the studies."""
    models = [method(study="ablation" if method.choice == "ablations" else "main")
              for choice in config.models for method in METHODS if method.choice == choice]
    main_n_m = RecLora().num_meta_loras(config)
    models += [RecLora(adapter={"num_meta_loras": n}, study="num_meta_loras")
               for n in config.study.sweep_num_meta_loras if n != main_n_m]
    for size in config.study.sweep_few_shot:
        if size != config.tune.few_shot:
            models += [RecLora(few_shot=size, study="few_shot"), Lora(few_shot=size, study="few_shot")]
    names = [model.label(config) for model in models]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"models: {', '.join(duplicated)} would be tuned twice; list each model once")
    return models
