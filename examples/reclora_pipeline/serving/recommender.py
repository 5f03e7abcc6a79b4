"""``RecLoraRecommender``: a RecLoRA adapter together with everything that feeds it, as one publishable folder.

A RecLoRA adapter alone cannot score anything: its gate reads R_c from the CRM it was trained with, the CRM reads IDs
through one exact vocabulary and a long history picked by the retriever, and the LLM reads a prompt written from the
item catalog with a short history. This class keeps those parts together:

    recommender = RecLoraRecommender.from_run("runs/ml-100k", model="RecLoRA")
    recommender.save_pretrained("published/")              # or recommender.push_to_hub("me/reclora-ml100k")
    recommender = RecLoraRecommender.from_pretrained("published/")   # a folder or a Hub repo id
    scores = recommender.score([{"user_id": "196", "item_id": "242", "history": [("302", 4), ("377", 1)]}])

Requests become a ``SampleView`` (``requests.py``), and from there the pipeline's own views, R_c and P(Yes) scoring
run, so a request made of a run's test sample scores what the run scored.

The folder (safetensors, JSON and CSV only):

    adapter_config.json, adapter_model.safetensors    the PEFT adapter, as PEFT writes it
    crm/crm_config.json, crm/crm_model.safetensors    the CRM that computes R_c
    vocabulary.json                                   the CRM's full ID vocabulary (values, offsets, ratings)
    catalog/items.csv, catalog/users.csv              titles, attributes and profiles the prompts and features need
    item_vectors.safetensors                          item unit vectors of the semantic retriever (semantic modes)
    recommender.json                                  the typed record (``records.py``): model, run config, lineage
    README.md                                         the model card
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import peft_reclora

from ..artifacts import RunFolder, read_json, sha256_of_file, write_json_atomically
from ..config import RunConfig
from ..crm import CrmSchema, RcTable, crm_fingerprint, load_crm, read_crm_config, save_crm
from ..crm.serialization import CRM_CONFIG_NAME
from ..data import RecDataset
from ..data.raw import DatasetSpec
from ..llm import load_adapter, load_base_model, load_tokenizer
from ..methods import keyword_arguments, models_of
from ..model_identity import base_model_identity
from ..provenance import recorded_provenance
from ..retriever import ITEM_VECTORS_NAME, RetrievalResult
from ..scoring import AnswerTokens, score_yes_probability
from ..stages import LlmInputs
from ..stages.tune import PEFT_BOOKKEEPING, TuneInputs
from ..trainer import ADAPTER_DIR, adapter_weights_file
from ..views import FieldVocabulary, PromptFormatter, SampleView, ctr_features, prompt_token_ids, text_records
from .publish import model_card, public_model_id, push_recommender
from .records import (
    AnswerTokenRecord,
    DatasetSummary,
    Lineage,
    ModelRecord,
    RecommenderRecord,
    RetrieverSummary,
)
from .requests import Catalog, Request


RECOMMENDER_CONFIG_NAME = "recommender.json"
VOCABULARY_NAME = "vocabulary.json"
CATALOG_DIR = "catalog"
CRM_DIR = "crm"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
MODEL_CARD_NAME = "README.md"
logger = logging.getLogger(__name__)
CSV_READ_OPTIONS = dict(dtype=str, keep_default_na=False, na_filter=False)  # as RecDataset.load reads its tables


@dataclass
class RecommenderParts:
    """Where the parts of a recommender come from, before they are checked against each other."""

    record: RecommenderRecord
    vocabulary: FieldVocabulary
    users: pd.DataFrame
    items: pd.DataFrame
    crm_dir: Path
    adapter_dir: Path
    item_vectors: Optional[np.ndarray] = None
    source: str = ""
    files: dict = field(default_factory=dict)


class RecLoraRecommender:
    """A RecLoRA recommender that scores (user, item, history) requests with P(Yes).

    Build it with :meth:`from_run` (a pipeline run folder) or :meth:`from_pretrained` (a saved folder or a Hub repo).
    The base LLM is loaded on the first :meth:`score` (or :meth:`load_model`), so saving and publishing never load it.
    """

    def __init__(self, parts: RecommenderParts, *, base_model: Optional[str] = None, device=None, dtype=None,
                 allow_other_base_model: bool = False):
        """``allow_other_base_model``: load the adapter onto a base LLM whose content differs from the one it was
        trained on (refused otherwise; the log then says which two they are)."""
        self.record = parts.record
        self.vocabulary = parts.vocabulary
        self.adapter_dir = Path(parts.adapter_dir)
        self._crm_dir = Path(parts.crm_dir)
        self.source = parts.source
        self.adapter_config = check_adapter(self.adapter_dir, self.record)
        self.crm = check_parts(parts, self.adapter_config)
        self.catalog = Catalog(self.spec, parts.users, parts.items, parts.vocabulary, parts.item_vectors)
        self.base_model = base_model or self.record.base_model_to_load
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype
        self.allow_other_base_model = allow_other_base_model
        self.model = self.tokenizer = self.formatter = self.answers = None

    def __repr__(self) -> str:
        record, config = self.record, self.record.config
        return (f"RecLoraRecommender({record.model.name!r} on {record.dataset.name!r}: {len(self.users)} users, "
                f"{len(self.items)} items, CRM {config.crm.name!r} (crm_dim {self.adapter_config['crm_dim']}), N_m "
                f"{self.adapter_config['num_meta_loras']}, short {record.model.short_history}/"
                f"{config.retrieval.k_short}, long {record.model.long_history}/{config.retrieval.k_long}, base "
                f"{self.base_model!r})")

    @property
    def spec(self) -> DatasetSpec:
        return DatasetSpec.from_dict(self.record.dataset.spec)

    @property
    def users(self) -> pd.DataFrame:
        return self.catalog.users

    @property
    def items(self) -> pd.DataFrame:
        return self.catalog.items

    @property
    def item_vectors(self) -> Optional[np.ndarray]:
        return self.catalog.item_vectors

    # -- building ----------------------------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run_dir, model: str = "RecLoRA", base_model: Optional[str] = None, device=None,
                 dtype=None, allow_other_base_model: bool = False) -> "RecLoraRecommender":
        """Assemble the recommender of model ``model`` of the last finished run in ``run_dir``, from the artifacts
        its results name (each checked against the sha256 recorded when it was written). ``base_model`` replaces the
        run's base model, both as recorded (e.g. its Hub id, when the run loaded a local folder) and as loaded for
        scoring; the lineage keeps the content identity of the base the adapter was trained on."""
        return cls(parts_of_run(run_dir, model, base_model), base_model=base_model, device=device, dtype=dtype,
                   allow_other_base_model=allow_other_base_model)

    @classmethod
    def from_pretrained(cls, repo_id_or_folder: Union[str, Path], base_model: Optional[str] = None,
                        revision: Optional[str] = None, token=None, device=None, dtype=None,
                        allow_other_base_model: bool = False) -> "RecLoraRecommender":
        """Load a folder written by :meth:`save_pretrained`, or download a Hub repo holding one.

        ``base_model`` replaces the stored base model (e.g. a local copy of it). Every part is checked before the
        LLM is loaded: a missing file or parts that do not fit each other raise an error naming the part. The base
        LLM must have the content the adapter was trained on (``lineage.base_model_identity``), unless
        ``allow_other_base_model``.
        """
        folder = resolve_folder(repo_id_or_folder, revision=revision, token=token)
        return cls(read_parts(folder), base_model=base_model, device=device, dtype=dtype,
                   allow_other_base_model=allow_other_base_model)

    # -- saving and publishing ----------------------------------------------------------------------------------------
    def save_pretrained(self, directory: Union[str, Path], repo_id: Optional[str] = None) -> Path:
        """Write the publishable folder (see the module docstring); ``repo_id`` goes into the model card's snippet."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        adapter_config = dict(self.adapter_config)
        base = self.record.base_model_to_load
        adapter_config["base_model_name_or_path"] = public_model_id(base) or base
        (directory / ADAPTER_CONFIG_NAME).write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
        weights = self.adapter_dir / ADAPTER_WEIGHTS_NAME
        if not (directory / ADAPTER_WEIGHTS_NAME).exists() or not (directory / ADAPTER_WEIGHTS_NAME).samefile(weights):
            shutil.copyfile(weights, directory / ADAPTER_WEIGHTS_NAME)
        save_crm(self.crm, directory / CRM_DIR, metrics=read_crm_config(self.crm_dir).get("metrics"))
        (directory / VOCABULARY_NAME).write_text(json.dumps(self.vocabulary.to_json(), indent=1) + "\n")
        (directory / CATALOG_DIR).mkdir(exist_ok=True)
        (directory / CATALOG_DIR / "items.csv").write_bytes(csv_text(self.items).encode("utf-8"))
        (directory / CATALOG_DIR / "users.csv").write_bytes(csv_text(self.users).encode("utf-8"))
        if self.item_vectors is not None:
            save_file({"item_vectors": torch.as_tensor(np.ascontiguousarray(self.item_vectors))},
                      str(directory / ITEM_VECTORS_NAME))
        elif (directory / ITEM_VECTORS_NAME).exists():
            (directory / ITEM_VECTORS_NAME).unlink()
        write_json_atomically(directory / RECOMMENDER_CONFIG_NAME, self.record.to_dict())
        (directory / MODEL_CARD_NAME).write_text(model_card(self.record, self.adapter_config, repo_id=repo_id,
                                                            example=self.example_request()))
        return directory

    @property
    def crm_dir(self) -> Path:
        return self._crm_dir

    def push_to_hub(self, repo_id: str, private: bool = False, revision: Optional[str] = None, token=None,
                    dry_run: bool = False, commit_message: str = "Upload RecLoRA recommender"):
        """Save into a temporary folder and upload it as one commit; ``dry_run`` lists the files and uploads nothing.

        Returns a :class:`reclora_pipeline.serving.publish.PushResult` (repo id, revision, files, commit url).
        """
        return push_recommender(self, repo_id, private=private, revision=revision, token=token, dry_run=dry_run,
                                commit_message=commit_message)

    def example_request(self) -> dict:
        """A request for the model card: the first catalog user and items (not a sample of the run)."""
        items = self.items["item_id"].tolist()
        ratings = self.vocabulary.rating_values
        history = [(item, _plain_number(ratings[(index * 3) % len(ratings)])) for index, item in enumerate(items[1:3])]
        return {"user_id": str(self.users["user_id"].iloc[0]), "item_id": str(items[0]), "history": history}

    # -- scoring -----------------------------------------------------------------------------------------------------
    def load_model(self) -> "RecLoraRecommender":
        """Load the tokenizer, the base LLM and the adapter (done by the first ``score``); returns ``self``."""
        if self.model is not None:
            return self
        self.check_base_model()
        tokenizer = load_tokenizer(self.base_model)
        formatter = PromptFormatter.from_config(tokenizer, self.record.config.prompt)
        trained, answers = self.record.answer_tokens, AnswerTokens.from_formatter(formatter)
        if answers != trained.ids:
            raise ValueError(
                f"prompt answer tokens: the tokenizer of {self.base_model!r} gives ids {answers.yes}/{answers.no} "
                f"for {trained.yes_token!r}/{trained.no_token!r}, but the adapter was trained with "
                f"{trained.yes_token_id}/{trained.no_token_id}; this is not the base model it was trained on")
        adapter_weights_file(self.adapter_dir)  # before the base LLM is loaded
        dtype = self.dtype or self.record.trained_dtype
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        # quantized (or not) as it was tuned and scored
        base = load_base_model(self.base_model, dtype=dtype, quantization=self.record.config.llm.quantization,
                               device=self.device)
        base.config.pad_token_id = tokenizer.pad_token_id  # as the pipeline scores
        model = load_adapter(base, self.adapter_dir)
        self.tokenizer, self.formatter, self.answers, self.model = tokenizer, formatter, answers, model
        return self

    def check_base_model(self) -> str:
        """The content identity of the base LLM to load; one other than the adapter's is refused (an error naming
        both) unless ``allow_other_base_model``, and then logged."""
        identity = base_model_identity(self.base_model)
        trained = self.record.lineage.base_model_identity
        if identity != trained:
            message = (f"base model: {self.base_model!r} is {identity}, but the adapter was trained on {trained} "
                       f"({self.record.config.llm.base_model!r}); another base computes other scores")
            if not self.allow_other_base_model:
                raise ValueError(f"{message}. Pass allow_other_base_model=True to load it anyway")
            logger.warning("%s; loaded anyway (allow_other_base_model=True)", message)
        return identity

    def view(self, requests: Sequence[Union[dict, Request]]) -> SampleView:
        """The requests as the pipeline's ``SampleView``, with the run's histories (errors name the request)."""
        config = self.record.config
        return self.catalog.view(requests, long_mode=self.record.model.long_history,
                                 short_mode=self.record.model.short_history, k_long=config.retrieval.k_long,
                                 k_short=config.retrieval.k_short, device=str(self.device))

    def score(self, requests: Sequence[Union[dict, Request]], batch_size: Optional[int] = None,
              progress: bool = False) -> np.ndarray:
        """P(Yes) of each request, in request order (float64).

        A request is a :class:`Request` or a dict with ``user_id``, ``item_id``, ``history`` (``(item_id, rating)``
        pairs, oldest first) and optionally ``profile``; see ``serving/requests.py`` for users and items outside the
        catalog.
        """
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer (or None: eval.batch_size), got {batch_size!r}")
        view = self.view(requests)
        self.load_model()
        config = self.record.config
        features = ctr_features(view, self.vocabulary)
        crm_embeds = RcTable.from_model(self.crm, features, batch_size=config.crm.training.eval_batch_size,
                                        progress=progress).get(view.sample_id)
        token_ids = prompt_token_ids(self.spec, text_records(view), self.formatter, config.prompt.max_tokens)
        return score_yes_probability(self.model, token_ids, self.answers, self.tokenizer.pad_token_id, crm_embeds,
                                     config.eval.batch_size if batch_size is None else batch_size,
                                     progress=progress)


def _plain_number(value: float):
    return int(value) if float(value).is_integer() else float(value)


def csv_text(table: pd.DataFrame) -> str:
    """A catalog table as the folder stores it: the same bytes on every platform, so its digest is portable."""
    return table.to_csv(index=False, lineterminator="\n")


def adapter_config_digest(adapter_config: dict) -> str:
    """sha256 of what an adapter config sets (every field but PEFT's bookkeeping: where and when it was saved), so
    that publishing under another base model name keeps it, and any edit that changes the scores changes it."""
    kept = {key: _comparable(value) for key, value in adapter_config.items() if key not in PEFT_BOOKKEEPING}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def vocabulary_digest(vocabulary: FieldVocabulary) -> str:
    return hashlib.sha256(json.dumps(vocabulary.to_json(), sort_keys=True).encode()).hexdigest()


def catalog_digest(users: pd.DataFrame, items: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for table in (users, items):
        digest.update(csv_text(table).encode())
    return digest.hexdigest()


def vectors_digest(vectors: np.ndarray) -> str:
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    return hashlib.sha256(repr(array.shape).encode() + array.tobytes()).hexdigest()


# -- from a run -------------------------------------------------------------------------------------------------------
def parts_of_run(run_dir, model: str, base_model: Optional[str]) -> RecommenderParts:
    """The parts of model ``model`` of the last finished run of ``run_dir``: found through the stage keys its entry in
    results.json names, and checked to belong together."""
    folder = RunFolder(run_dir)
    with folder.reading():  # no run is writing the folder meanwhile
        return _parts_of_run(folder, model, base_model)


def _parts_of_run(folder: RunFolder, model: str, base_model: Optional[str]) -> RecommenderParts:
    results = read_json(folder.results_path, "run results")
    config = RunConfig.from_dict(read_json(folder.config_path, "run config"))
    if results.get("config_digest") != config.digest():
        raise ValueError(f"{folder.config_path} is not the config of {folder.results_path}: the last run on this "
                         "folder did not finish; run it again to completion (the finished stages are reused) before "
                         "publishing")
    models = results.get("models") or {}
    if model not in models:
        raise FileNotFoundError(f"{folder.root} has no model {model!r} in {folder.results_path.name}; models in this "
                                f"run: {sorted(models)}")
    entry = models[model]
    stages = entry.get("stages") or {}
    if entry.get("kind") != "llm" or "rc" not in stages or "tune" not in stages:
        raise ValueError(f"model {model!r} of {folder.root} is a {entry.get('method')!r} model; only RecLoRA models "
                         "(an adapter with a gate over a CRM) are published with their CRM, retriever and catalog")
    # Each artifact is checked against the sha256 of its files recorded when it was written: a file swapped in since
    # (another adapter or CRM of the same shapes) is refused here, not published with the table.
    tune, rc, crm, score = (folder.artifact(stage, stages[stage]) for stage in ("tune", "rc", "crm", "score"))
    if score.upstream.get("tune") != [tune.key] or score.upstream.get("rc") != [rc.key]:
        raise ValueError(f"{score.path} (the scores of {model!r} in {folder.results_path.name}) were not computed "
                         f"with the adapter of {tune.path} and the R_c of {rc.path}")
    if rc.upstream.get("crm") != [crm.key]:
        raise ValueError(f"{rc.path} holds R_c of another CRM than {crm.path}")
    if tune.upstream.get("rc") != [rc.key]:
        raise ValueError(f"{tune.path} was tuned on another R_c table than {rc.path}")
    if rc.summary.get("crm_fingerprint") != crm.summary.get("fingerprint"):
        raise ValueError(f"{rc.path} was computed by a CRM whose weights differ from {crm.path}")
    data = folder.artifact("data", tune.upstream["data"][0])
    dataset = RecDataset.load(data.path)
    histories, retrieval_keys, modes = {}, {}, {}
    for stage, artifact in (("tune", tune), ("crm", crm)):
        for key in artifact.upstream.get("retrieval", []):
            retrieval = folder.artifact("retrieval", key)
            histories[retrieval.manifest["label"]] = RetrievalResult.load(retrieval.path, dataset)
            retrieval_keys[retrieval.manifest["label"]] = key
            modes[stage] = retrieval.manifest["label"]
    # The histories the artifacts were built from: the prompt's is the tune stage's retrieval, the gate's the CRM's
    # (a CRM that reads recent histories, such as DIN, does so whatever the model's long retriever).
    short, long = modes.get("tune", entry["short_history"]), modes.get("crm", entry["long_history"])
    item_vectors = retriever = None
    if "semantic" in (short, long):
        semantic = histories["semantic"]
        if semantic.item_vectors is None:
            raise FileNotFoundError("item vectors: the semantic retrieval of this run has no "
                                    "item_vectors.safetensors; they are needed to retrieve histories of new requests")
        item_vectors = semantic.item_vectors
        pca = {key: value for key, value in (semantic.metadata.get("pca") or {}).items() if key != "pca_dim"}
        retriever = RetrieverSummary(vector_dim=int(item_vectors.shape[1]), pca=pca,  # pca_dim is vector_dim
                                     encoding_key=semantic.metadata.get("encoding_key"))
    adapter_dir = tune.path / ADAPTER_DIR
    adapter_config = read_json(adapter_dir / ADAPTER_CONFIG_NAME, "adapter config")
    trained_llm: LlmInputs = tune.inputs_as(TuneInputs).llm
    answer_tokens = trained_answer_tokens(config)
    vocabulary = FieldVocabulary.from_dataset(dataset)
    record = RecommenderRecord(
        model=ModelRecord(model, entry["method"], short, long),
        config=config,
        trained_dtype=trained_llm.dtype,
        answer_tokens=answer_tokens,
        lineage=Lineage(tune_key=tune.key, rc_key=rc.key, crm_key=crm.key, data_key=data.key,
                        retrieval_keys={mode: retrieval_keys[mode] for mode in sorted({short, long})},
                        dataset_fingerprint=dataset.fingerprint, crm_fingerprint=crm.summary["fingerprint"],
                        adapter_sha256=tune.manifest["files"][f"adapter/{ADAPTER_WEIGHTS_NAME}"]["sha256"],
                        adapter_config_sha256=adapter_config_digest(adapter_config),
                        base_model_identity=trained_llm.identity,
                        vocabulary_sha256=vocabulary_digest(vocabulary),
                        catalog_sha256=catalog_digest(dataset.users, dataset.items),
                        item_vectors_sha256=None if item_vectors is None else vectors_digest(item_vectors)),
        dataset=dataset_summary(dataset),
        retriever=retriever,
        base_model=base_model,
        metrics={name: {key: item.get(key) for key in ("kind", "auc", "logloss", "rel_impr", "n")}
                 for name, item in models.items()},
        reference_model=results.get("reference_model"),
        provenance=recorded_provenance(results),
    )
    return RecommenderParts(record=record, vocabulary=vocabulary, users=dataset.users,
                            items=dataset.items, crm_dir=crm.path, adapter_dir=adapter_dir, item_vectors=item_vectors,
                            source=str(folder.root))


def trained_answer_tokens(config: RunConfig) -> AnswerTokenRecord:
    """The answer tokens of the run's prompt style, read from the tokenizer (no model is loaded)."""
    formatter = PromptFormatter.from_config(load_tokenizer(config.llm.base_model), config.prompt)
    tokens = formatter.to_dict()
    return AnswerTokenRecord(tokens["yes_token"], tokens["no_token"], int(tokens["yes_token_id"]),
                             int(tokens["no_token_id"]))


def dataset_summary(dataset: RecDataset) -> DatasetSummary:
    stats = dataset.stats if dataset.stats.get("samples") else dataset.compute_stats()
    return DatasetSummary(spec=dataset.spec.to_dict(), users=int(len(dataset.users)), items=int(len(dataset.items)),
                          interactions=int(len(dataset.user_index)), samples=dict(stats.get("samples") or {}),
                          positive_rate=dict(stats.get("positive_rate") or {}),
                          time_range=dict(stats.get("time_range") or {}))


# -- the folder -------------------------------------------------------------------------------------------------------
def required_files(record: Optional[RecommenderRecord] = None) -> dict:
    """Part name -> path inside the folder (item vectors only when a history mode is semantic)."""
    files = {
        "recommender config": RECOMMENDER_CONFIG_NAME,
        "adapter config": ADAPTER_CONFIG_NAME,
        "adapter weights": ADAPTER_WEIGHTS_NAME,
        "CRM config": f"{CRM_DIR}/{CRM_CONFIG_NAME}",
        "CRM weights": f"{CRM_DIR}/crm_model.safetensors",
        "vocabulary": VOCABULARY_NAME,
        "item catalog": f"{CATALOG_DIR}/items.csv",
        "user catalog": f"{CATALOG_DIR}/users.csv",
    }
    if record is not None and "semantic" in record.modes:
        files["item vectors"] = ITEM_VECTORS_NAME
    return files


def resolve_folder(repo_id_or_folder: Union[str, Path], revision: Optional[str] = None, token=None) -> Path:
    """A local folder as it is; anything else is a Hub repo id, downloaded with ``snapshot_download``."""
    path = Path(repo_id_or_folder)
    if path.is_dir():
        return path
    text = str(repo_id_or_folder)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"{text} is not a folder (and not a Hub repo id of the form 'owner/name')")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=text, revision=revision, token=token))


def read_parts(folder: Path) -> RecommenderParts:
    """Read a saved folder; a missing file raises ``FileNotFoundError`` naming the part."""
    folder = Path(folder)
    config_path = folder / RECOMMENDER_CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is missing the recommender config ({RECOMMENDER_CONFIG_NAME}): not a "
                                "folder written by RecLoraRecommender.save_pretrained")
    record = RecommenderRecord.from_dict(read_json(config_path, "recommender config"), str(config_path))
    files = required_files(record)
    for part, name in files.items():
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is missing the {part} ({name})")
    vocabulary = FieldVocabulary.from_json(read_json(folder / VOCABULARY_NAME, "vocabulary"))
    item_vectors = None
    if "item vectors" in files:
        tensors = load_file(str(folder / ITEM_VECTORS_NAME))
        if "item_vectors" not in tensors:
            raise ValueError(f"item vectors: {folder / ITEM_VECTORS_NAME} has no tensor 'item_vectors' "
                             f"(found {sorted(tensors)})")
        item_vectors = tensors["item_vectors"].numpy()
    return RecommenderParts(
        record=record, vocabulary=vocabulary,
        users=pd.read_csv(folder / CATALOG_DIR / "users.csv", **CSV_READ_OPTIONS),
        items=pd.read_csv(folder / CATALOG_DIR / "items.csv", **CSV_READ_OPTIONS),
        crm_dir=folder / CRM_DIR, adapter_dir=folder, item_vectors=item_vectors, source=str(folder),
        files={part: str(folder / name) for part, name in files.items()},
    )


# -- checks -----------------------------------------------------------------------------------------------------------
def check_adapter(adapter_dir: Path, record: RecommenderRecord) -> dict:
    """Read the adapter config and its weights' shapes (header only), check them against each other and the weights
    against the adapter the run trained; returns the adapter config."""
    adapter_dir = Path(adapter_dir)
    for part, name in (("adapter config", ADAPTER_CONFIG_NAME), ("adapter weights", ADAPTER_WEIGHTS_NAME)):
        if not (adapter_dir / name).is_file():
            raise FileNotFoundError(f"{adapter_dir} is missing the {part} ({name})")
    adapter_config = read_adapter_config(adapter_dir / ADAPTER_CONFIG_NAME)
    num_meta_loras, rank, crm_dim = (adapter_config[name] for name in ADAPTER_SIZE_FIELDS)
    with safe_open(str(adapter_dir / ADAPTER_WEIGHTS_NAME), framework="pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    banks = {key: shape for key, shape in shapes.items() if key.endswith("reclora_A") or ".reclora_A." in key}
    gates = {key: shape for key, shape in shapes.items() if key.endswith(("fc1_weight", "fc2_weight"))}
    if not banks or not gates:
        raise ValueError(f"adapter weights: {adapter_dir / ADAPTER_WEIGHTS_NAME} holds no RecLoRA bank or gate")
    for key, shape in banks.items():
        if shape[0] != num_meta_loras * rank:
            raise ValueError(f"num_meta_loras (N_m): {key} has {shape[0]} rank slots, but {ADAPTER_CONFIG_NAME} says "
                             f"N_m {num_meta_loras} x r {rank} = {num_meta_loras * rank}")
    for key, shape in gates.items():
        if key.endswith("fc2_weight") and shape[0] != num_meta_loras:
            raise ValueError(f"num_meta_loras (N_m): the gate {key} has {shape[0]} outputs, but "
                             f"{ADAPTER_CONFIG_NAME} says N_m {num_meta_loras}")
        if key.endswith("fc1_weight") and shape[1] != crm_dim:
            raise ValueError(f"crm_dim: the gate {key} reads {shape[1]} inputs, but {ADAPTER_CONFIG_NAME} says "
                             f"crm_dim {crm_dim}")
    differences = run_adapter_differences(adapter_config, record)
    if differences:
        raise ValueError(f"adapter config: {adapter_dir / ADAPTER_CONFIG_NAME} does not match how the run tuned "
                         f"model {record.model.name!r}: {'; '.join(differences)}")
    if sha256_of_file(adapter_dir / ADAPTER_WEIGHTS_NAME) != record.lineage.adapter_sha256:
        raise ValueError(f"adapter: {adapter_dir / ADAPTER_WEIGHTS_NAME} is not the adapter this recommender was "
                         f"made with (tune artifact {record.lineage.tune_key[:16]}); it comes from another model")
    if adapter_config_digest(adapter_config) != record.lineage.adapter_config_sha256:
        raise ValueError(f"adapter config: {adapter_dir / ADAPTER_CONFIG_NAME} is not the config the adapter was "
                         f"trained with (tune artifact {record.lineage.tune_key[:16]}): a setting in it was changed, "
                         "and the adapter would score differently")
    return adapter_config


ADAPTER_SIZE_FIELDS = ("num_meta_loras", "r", "crm_dim")  # what the weights' shapes are checked against


def read_adapter_config(path: Path) -> dict:
    """``adapter_config.json`` of a RecLoRA adapter, with the fields the recommender sizes things by checked: errors
    name the file and the field."""
    adapter_config = read_json(path, "adapter config")
    if not isinstance(adapter_config, dict):
        raise ValueError(f"adapter config: {path} must hold a JSON object, got {type(adapter_config).__name__}")
    if str(adapter_config.get("peft_type", "")).upper() != "RECLORA":
        raise ValueError(f"adapter: {path} is a {adapter_config.get('peft_type')!r} adapter, not a RecLoRA one")
    for name in ADAPTER_SIZE_FIELDS:
        if name not in adapter_config:
            raise ValueError(f"adapter config: {path} lacks the field {name!r}")
        value = adapter_config[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"adapter config: {path} field {name!r} must be a positive integer, got {value!r}")
    return adapter_config


def run_adapter_differences(adapter_config: dict, record: RecommenderRecord) -> list:
    """The adapter settings the run's config fixes for this model (the ``tune.adapter`` keys its method passes to
    PEFT) that ``adapter_config`` contradicts (the R_c width is checked once, against the CRM, in
    :func:`check_parts`). Unset keys are not compared: their defaults belong to the
    PEFT version that trained the adapter, not to the one reading it."""
    config = record.config
    methods = [method for method in models_of(config) if method.label(config) == record.model.name]
    if not methods:
        return []
    expected = keyword_arguments(methods[0].adapter_settings(config), peft_reclora.RecLoraConfig)
    labels = {"num_meta_loras": "num_meta_loras (N_m)", "r": "r (rank)"}
    return [f"{labels.get(key, key)} is {adapter_config[key]!r}, the run's config gives {value!r}"
            for key, value in expected.items()
            if key in adapter_config and _comparable(adapter_config[key]) != _comparable(value)]


def _comparable(value):
    """Lists of names compare as sets (PEFT writes ``target_modules`` in set order)."""
    if isinstance(value, (list, tuple, set)) and all(isinstance(item, str) for item in value):
        return sorted(set(value))
    return value


def check_parts(parts: RecommenderParts, adapter_config: dict):
    """Check the CRM, vocabulary, catalog and item vectors against each other and against the adapter's lineage;
    returns the CRM (frozen, eval mode)."""
    record, vocabulary = parts.record, parts.vocabulary
    spec = DatasetSpec.from_dict(record.dataset.spec)
    crm_config = read_crm_config(parts.crm_dir)
    schema = crm_config["schema"]
    crm_path = f"{CRM_DIR}/{CRM_CONFIG_NAME}"
    if int(crm_config["crm_dim"]) != int(adapter_config["crm_dim"]):
        raise ValueError(f"crm_dim: the CRM ({crm_path}) gives R_c of width {crm_config['crm_dim']}, but the "
                         f"adapter's gate reads crm_dim {adapter_config['crm_dim']}")
    expected_fields = list(spec.user_fields) + list(spec.item_fields)
    if list(vocabulary.field_names) != expected_fields:
        raise ValueError(f"vocabulary: fields {vocabulary.field_names}, but the dataset's user and item fields are "
                         f"{expected_fields}")
    if vocabulary.vocab_size != int(schema["vocab_size"]):
        raise ValueError(f"vocabulary: {vocabulary.vocab_size} tokens, but the CRM ({crm_path}) was built for "
                         f"vocab_size {schema['vocab_size']}")
    if list(vocabulary.field_names) != list(schema["field_names"]):
        raise ValueError(f"vocabulary: fields {vocabulary.field_names}, but the CRM ({crm_path}) reads "
                         f"{schema['field_names']}")
    k_long = record.config.retrieval.k_long
    if int(schema["history_length"]) != k_long:
        raise ValueError(f"retriever: the long history has K_long {k_long} (retrieval.k_long of the run config), but "
                         f"the CRM ({crm_path}) reads history_length {schema['history_length']}")
    for table, fields, name in ((parts.users, spec.user_fields, "users"), (parts.items, spec.item_fields, "items")):
        for column in fields:
            if column not in table.columns:
                raise ValueError(f"catalog: {CATALOG_DIR}/{name}.csv has no column {column!r}")
            unknown = sorted(set(table[column]) - set(vocabulary.values[column]))
            if unknown:
                raise ValueError(f"vocabulary: field {column!r} lacks values of {CATALOG_DIR}/{name}.csv, e.g. "
                                 f"{unknown[:5]}")
    if parts.items["item_id"].duplicated().any() or parts.users["user_id"].duplicated().any():
        raise ValueError("catalog: an item_id or user_id appears twice")
    if "semantic" in record.modes:
        vectors = parts.item_vectors
        if vectors is None:
            raise ValueError("item vectors: a history mode is semantic, but no item vectors were given")
        if vectors.ndim != 2 or len(vectors) != len(parts.items):
            raise ValueError(f"item vectors: shape {tuple(vectors.shape)}, but {CATALOG_DIR}/items.csv lists "
                             f"{len(parts.items)} items (one row per item, in catalog order)")
        if record.retriever is not None and vectors.shape[1] != record.retriever.vector_dim:
            raise ValueError(f"item vectors: {vectors.shape[1]} wide, but the run's retriever made "
                             f"{record.retriever.vector_dim}-d vectors (retriever.vector_dim of "
                             f"{RECOMMENDER_CONFIG_NAME})")
    expected = CrmSchema(vocab_size=vocabulary.vocab_size, field_names=tuple(vocabulary.field_names),
                         item_field=len(spec.user_fields), history_length=k_long)
    lineage = record.lineage
    if vocabulary_digest(vocabulary) != lineage.vocabulary_sha256:
        raise ValueError(f"vocabulary: {VOCABULARY_NAME} is not the token layout the CRM was trained with (its "
                         "values, their order or the ratings differ from the run's); the CRM would read other tokens")
    if catalog_digest(parts.users, parts.items) != lineage.catalog_sha256:
        raise ValueError(f"catalog: {CATALOG_DIR}/users.csv and items.csv are not the tables of the run (dataset "
                         f"{lineage.dataset_fingerprint[:16]}); prompts and features would differ from training")
    if parts.item_vectors is not None and vectors_digest(parts.item_vectors) != lineage.item_vectors_sha256:
        raise ValueError(f"item vectors: {ITEM_VECTORS_NAME} are not the vectors of the run's semantic retrieval "
                         f"({', '.join(f'{mode} {key[:16]}' for mode, key in lineage.retrieval_keys.items())}); "
                         "histories would be picked differently")
    crm = load_crm(parts.crm_dir, expected_schema=expected)  # its R_c width was compared with the gate's above
    if crm_fingerprint(crm) != lineage.crm_fingerprint:
        raise ValueError(f"CRM: {parts.crm_dir} is not the CRM the adapter was trained with (its weights or config "
                         f"differ from the CRM of crm artifact {record.lineage.crm_key[:16]}); the gate would read "
                         "another R_c")
    return crm

