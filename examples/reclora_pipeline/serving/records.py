"""``recommender.json``: what a published recommender is, typed, each fact once.

The run's settings are its resolved config tree (``config``), copied as the run wrote it; the adapter's own settings
(N_m, r, crm_dim, ...) live in ``adapter_config.json`` and the CRM's (schema, R_c layer, crm_dim) in
``crm/crm_config.json``, so none of them is repeated here. What is recorded besides is what no file says: which model
of the run it is, the answer tokens it was trained on, the dtype it was trained in, the lineage of its parts (so that
parts of another run are refused), the run's metrics, and what the run was built from (package versions, dataset
file digests).
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from ..config import DTYPES, RunConfig
from ..scoring import AnswerTokens


FORMAT = "reclora-recommender"
FORMAT_VERSION = 3  # 3: the lineage names the base model by content and covers adapter_config.json


def _from(cls, data: dict, where: str):
    """``cls`` from the table ``data``; an unknown, missing or mistyped entry is a ``ValueError`` naming ``where``
    (the file and the table) and the field."""
    if not isinstance(data, dict):
        raise ValueError(f"recommender config: {where} must be a table, got {type(data).__name__}")
    names = [item.name for item in fields(cls)]
    unknown = sorted(set(data) - set(names))
    missing = [name for name in names if name not in data]
    if unknown or missing:
        raise ValueError(f"recommender config: {where} has unknown entries {unknown} / lacks {missing}")
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        problem = _type_problem(value, hints[name])
        if problem:
            raise ValueError(f"recommender config: {where}.{name} must be {problem}, got {value!r}")
    return cls(**data)


def _type_problem(value, hint) -> Optional[str]:
    """What ``value`` should be for the annotation ``hint`` (str, int, dict, Optional of them), or None."""
    if typing.get_origin(hint) is typing.Union:
        if value is None:
            return None
        hint = next(option for option in typing.get_args(hint) if option is not type(None))
    kinds = {str: "a string", int: "an integer", dict: "a table"}
    if hint not in kinds:
        return None
    fits = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    return None if fits else kinds[hint]


def _trained_dtype(value, where: str) -> str:
    if value not in DTYPES:
        raise ValueError(f"recommender config: {where} trained_dtype must be one of {', '.join(DTYPES)}, "
                         f"got {value!r}")
    return value


@dataclass(frozen=True)
class ModelRecord:
    """Which model of the run: its name in the table, its method and the histories of its prompt and gate."""

    name: str
    method: str
    short_history: str  # "semantic" or "recent"
    long_history: str


@dataclass(frozen=True)
class AnswerTokenRecord:
    """The Yes/No tokens the adapter was trained to answer with, as text and ids (the ids are checked against the
    tokenizer on load)."""

    yes_token: str
    no_token: str
    yes_token_id: int
    no_token_id: int

    @property
    def ids(self) -> AnswerTokens:
        return AnswerTokens(yes=self.yes_token_id, no=self.no_token_id)


@dataclass(frozen=True)
class Lineage:
    """The artifacts the parts come from: the run's stage keys, and digests that identify the parts themselves, so
    that a part of another run (same shapes, other values) is refused, not silently mixed in."""

    tune_key: str
    rc_key: str
    crm_key: str
    data_key: str
    retrieval_keys: dict  # history mode -> key of the retrieval that picked this model's histories
    dataset_fingerprint: str
    crm_fingerprint: str  # of the CRM whose R_c the adapter was trained on
    adapter_sha256: str  # of adapter_model.safetensors as trained
    adapter_config_sha256: str  # of adapter_config.json as trained, less PEFT's bookkeeping (adapter_config_digest)
    base_model_identity: str  # the content of the base LLM the adapter was trained on (``model_identity``)
    vocabulary_sha256: str  # of the token layout the CRM was trained with (values, order, offsets, ratings)
    catalog_sha256: str  # of the user and item tables the prompts and features were written from
    item_vectors_sha256: Optional[str] = None  # of the semantic retriever's item vectors (semantic modes)


@dataclass(frozen=True)
class DatasetSummary:
    """Facts of the processed dataset, for the model card (its settings are ``config.data``, its name
    ``spec["name"]``)."""

    spec: dict
    users: int
    items: int
    interactions: int
    samples: dict
    positive_rate: dict
    time_range: dict

    @property
    def name(self) -> str:
        return self.spec["name"]


@dataclass(frozen=True)
class RetrieverSummary:
    """Facts of the semantic retrieval (its settings are ``config.retrieval``), when a history is semantic:
    ``vector_dim`` is the width of the stored item vectors (the effective PCA width), ``pca`` what PCA reported
    besides (input width, explained variance)."""

    vector_dim: int
    pca: dict
    encoding_key: Optional[str]


@dataclass(frozen=True)
class RecommenderRecord:
    model: ModelRecord
    config: RunConfig
    trained_dtype: str
    answer_tokens: AnswerTokenRecord
    lineage: Lineage
    dataset: DatasetSummary
    retriever: Optional[RetrieverSummary] = None
    base_model: Optional[str] = None  # what to load instead of config.llm.base_model (e.g. its Hub id)
    metrics: dict = field(default_factory=dict)  # the run's table: model -> kind, auc, logloss, rel_impr, n
    reference_model: Optional[str] = None
    provenance: dict = field(default_factory=dict)  # the run's package versions and dataset file digests

    @property
    def base_model_to_load(self) -> str:
        return self.base_model or self.config.llm.base_model

    @property
    def modes(self) -> set:
        return {self.model.short_history, self.model.long_history}

    def to_dict(self) -> dict:
        data = {"format": FORMAT, "format_version": FORMAT_VERSION}
        for item in fields(self):
            value = getattr(self, item.name)
            data[item.name] = value.to_dict() if isinstance(value, RunConfig) else (
                asdict(value) if hasattr(value, "__dataclass_fields__") else value)
        return data

    @classmethod
    def from_dict(cls, data: dict, where: str = "recommender.json") -> "RecommenderRecord":
        if not isinstance(data, dict):
            raise ValueError(f"recommender config: {where} must hold a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ValueError(f"recommender config: {where} has format {data.get('format')!r}, expected {FORMAT!r}")
        version = data.get("format_version", 0)
        if version != FORMAT_VERSION:
            raise ValueError(f"recommender config: {where} has format_version {version}; this reader reads "
                             f"{FORMAT_VERSION} (save the recommender again with this version)")
        try:
            config = RunConfig.from_dict(data["config"])
        except (KeyError, ValueError) as error:
            raise ValueError(f"recommender config: {where} 'config' is not a run config ({error})") from None
        retriever = data.get("retriever")
        for name in ("base_model", "reference_model"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise ValueError(f"recommender config: {where} {name} must be a string, got {data[name]!r}")
        if not isinstance(data.get("metrics") or {}, dict):
            raise ValueError(f"recommender config: {where} metrics must be a table, got {data['metrics']!r}")
        return cls(
            model=_from(ModelRecord, data.get("model"), f"{where} model"),
            config=config,
            trained_dtype=_trained_dtype(data.get("trained_dtype"), where),
            answer_tokens=_from(AnswerTokenRecord, data.get("answer_tokens"), f"{where} answer_tokens"),
            lineage=_from(Lineage, data.get("lineage"), f"{where} lineage"),
            dataset=_from(DatasetSummary, data.get("dataset"), f"{where} dataset"),
            retriever=None if retriever is None else _from(RetrieverSummary, retriever, f"{where} retriever"),
            base_model=data.get("base_model"),
            metrics=dict(data.get("metrics") or {}),
            reference_model=data.get("reference_model"),
            provenance=dict(data.get("provenance") or {}),
        )
