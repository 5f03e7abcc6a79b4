"""``recommender.json``: what a published recommender is, typed, each fact once.

The run's settings are its resolved config tree (``config``), copied as the run wrote it; the adapter's own settings
(N_m, r, crm_dim, ...) live in ``adapter_config.json`` and the CRM's (schema, R_c layer, crm_dim) in
``crm/crm_config.json``, so none of them is repeated here. What is recorded besides is what no file says: which model
of the run it is, the answer tokens it was trained on, the dtype it was trained in, the lineage of its parts (so that
parts of another run are refused), the run's metrics, and what the run was built from (package versions, dataset
file digests).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from ..config import RunConfig

FORMAT = "reclora-recommender"
FORMAT_VERSION = 2


def _from(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"recommender config: {where} must be a table, got {type(data).__name__}")
    names = [item.name for item in fields(cls)]
    unknown = sorted(set(data) - set(names))
    missing = [name for name in names if name not in data]
    if unknown or missing:
        raise ValueError(f"recommender config: {where} has unknown entries {unknown} / lacks {missing}")
    return cls(**data)


@dataclass(frozen=True)
class ModelRecord:
    """Which model of the run: its name in the table, its method and the histories of its prompt and gate."""

    name: str
    method: str
    short_history: str  # "semantic" or "recent"
    long_history: str


@dataclass(frozen=True)
class AnswerTokens:
    """The Yes/No tokens the adapter was trained to answer with (checked against the tokenizer on load)."""

    yes_token: str
    no_token: str
    yes_token_id: int
    no_token_id: int


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
    answer_tokens: AnswerTokens
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
        if data.get("format") != FORMAT:
            raise ValueError(f"recommender config: {where} has format {data.get('format')!r}, expected {FORMAT!r}")
        version = int(data.get("format_version", 0))
        if version != FORMAT_VERSION:
            raise ValueError(f"recommender config: {where} has format_version {version}; this reader reads "
                             f"{FORMAT_VERSION} (save the recommender again with this version)")
        try:
            config = RunConfig.from_dict(data["config"])
        except (KeyError, ValueError) as error:
            raise ValueError(f"recommender config: {where} 'config' is not a run config ({error})") from None
        retriever = data.get("retriever")
        return cls(
            model=_from(ModelRecord, data.get("model"), "model"),
            config=config,
            trained_dtype=str(data.get("trained_dtype")),
            answer_tokens=_from(AnswerTokens, data.get("answer_tokens"), "answer_tokens"),
            lineage=_from(Lineage, data.get("lineage"), "lineage"),
            dataset=_from(DatasetSummary, data.get("dataset"), "dataset"),
            retriever=None if retriever is None else _from(RetrieverSummary, retriever, "retriever"),
            base_model=data.get("base_model"),
            metrics=dict(data.get("metrics") or {}),
            reference_model=data.get("reference_model"),
            provenance=dict(data.get("provenance") or {}),
        )
