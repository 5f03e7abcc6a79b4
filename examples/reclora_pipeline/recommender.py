"""``RecLoraRecommender``: a RecLoRA adapter together with everything that feeds it, as one publishable folder.

A RecLoRA adapter alone cannot score anything: its gate reads R_c from the CRM it was trained with, the CRM reads IDs
through one exact vocabulary and a long history picked by the retriever, and the LLM reads a prompt written from the
item catalog with a short history. This class keeps those parts together:

    recommender = RecLoraRecommender.from_run("runs/ml-100k", model="RecLoRA")
    recommender.save_pretrained("published/")              # or recommender.push_to_hub("me/reclora-ml100k")
    recommender = RecLoraRecommender.from_pretrained("published/")   # a folder or a Hub repo id
    scores = recommender.score([{"user_id": "196", "item_id": "242", "history": [("302", 4), ("377", 1)]}])

Scoring a request runs the pipeline's own code on a small dataset built from the requests (one user per request,
its history as earlier interactions, the target last): the same retrieval, text records, prompts, CRM features and
P(Yes) scoring, so a request built from a sample of the run scores what the run scored.

The folder (safetensors, JSON and CSV only):

    adapter_config.json, adapter_model.safetensors    the PEFT adapter, as PEFT writes it
    crm/crm_config.json, crm/crm_model.safetensors    the CRM that computes R_c
    vocabulary.json                                   the CRM's full ID vocabulary (values, offsets, ratings)
    catalog/items.csv, catalog/users.csv              titles, attributes and profiles the prompts and features need
    item_vectors.safetensors                          item unit vectors of the semantic retriever (semantic modes)
    recommender.json                                  base model, dataset and split, prompt, retriever, CRM, metrics
    README.md                                         the model card
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch

from .data.ctr import FieldVocabulary, build_ctr_features
from .data.dataset import SPLITS, RecDataset
from .data.raw import DatasetSpec
from .retriever import ITEM_VECTORS_NAME, RetrievalResult, RetrieverConfig, retrieve

RECOMMENDER_FORMAT = "reclora-recommender"
RECOMMENDER_FORMAT_VERSION = 1
RECOMMENDER_CONFIG_NAME = "recommender.json"
VOCABULARY_NAME = "vocabulary.json"
CATALOG_DIR = "catalog"
CRM_DIR = "crm"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
MODEL_CARD_NAME = "README.md"
CSV_READ_OPTIONS = dict(dtype=str, keep_default_na=False, na_filter=False)  # as RecDataset.load reads its tables
RETRIEVER_SETTINGS = ("model", "dtype", "pooling", "pca_dim", "max_length")


@dataclass
class Request:
    """One (user, item) pair to score.

    Attributes:
        user_id, item_id: catalog ids (compared as strings).
        history: the user's earlier interactions, oldest first, as ``(item_id, rating)`` pairs.
        profile: user fields (the columns of ``catalog/users.csv``, e.g. gender, age, occupation, zip_code) for a
            user who is not in the catalog; for a catalog user, the fields given replace the catalog's.
    """

    user_id: str
    item_id: str
    history: Sequence = ()
    profile: Optional[dict] = None


@dataclass
class RecommenderParts:
    """Where the parts of a recommender come from, before they are checked against each other."""

    config: dict
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

    def __init__(self, parts: RecommenderParts, *, base_model: Optional[str] = None, device=None, dtype=None):
        self.config = parts.config
        self.vocabulary = parts.vocabulary
        self.users = parts.users.reset_index(drop=True)
        self.items = parts.items.reset_index(drop=True)
        self.item_vectors = parts.item_vectors
        self.adapter_dir = Path(parts.adapter_dir)
        self.source = parts.source
        self.adapter_config = check_adapter(self.adapter_dir, self.config)
        check_parts(parts, self.adapter_config)
        self.crm = _load_checked_crm(parts, self.adapter_config)
        self.base_model = base_model or self.config["base_model"]
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = None
        self.tokenizer = None
        self.formatter = None
        self._item_position = {item: position for position, item in enumerate(self.items["item_id"])}
        self._user_position = {user: position for position, user in enumerate(self.users["user_id"])}
        self._known = {name: set(self.vocabulary.values[name]) for name in self.vocabulary.field_names}

    def __repr__(self) -> str:
        retrieval = self.config["retrieval"]
        return (f"RecLoraRecommender({self.config['model_name']!r} on {self.config['dataset']['name']!r}: "
                f"{len(self.users)} users, {len(self.items)} items, CRM {self.config['crm']['name']!r} "
                f"(crm_dim {self.config['crm_dim']}), N_m {self.config['num_meta_loras']}, short "
                f"{retrieval['short']['mode']}/{retrieval['short']['k_short']}, long "
                f"{retrieval['long']['mode']}/{retrieval['long']['k_long']}, base {self.base_model!r})")

    @property
    def spec(self) -> DatasetSpec:
        return DatasetSpec.from_dict(self.config["dataset"]["spec"])

    # -- building ----------------------------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run_dir, model: str = "RecLoRA", base_model: Optional[str] = None, device=None,
                 dtype=None) -> "RecLoraRecommender":
        """Assemble the recommender of model ``model`` from a pipeline run folder (see ``run_layout.py``).

        ``base_model`` replaces the run's base model, both as recorded (e.g. its Hub id, when the run loaded a local
        folder) and as loaded for scoring.
        """
        from .run_layout import RunLayout

        layout = RunLayout(run_dir)
        info = layout.read_model_info(model)
        if info.get("kind") != "reclora":
            raise ValueError(f"model {model!r} of {layout.root} is a {info.get('kind')!r} model; only RecLoRA models "
                             "(kind 'reclora') are published with their CRM, retriever and catalog")
        if not info.get("crm") or not info.get("adapter"):
            raise ValueError(f"{layout.model_info(model)}: a RecLoRA model needs 'crm' and 'adapter'")
        dataset = RecDataset.load(layout.data)
        histories = {}
        for part, k_name in (("short", "k_short"), ("long", "k_long")):
            settings = info[f"{part}_history"]
            if settings["mode"] not in histories:
                histories[settings["mode"]] = RetrievalResult.load(layout.retrieval(settings["mode"]), dataset)
            result = histories[settings["mode"]]
            held = getattr(result, k_name)
            if settings.get(k_name) is not None and int(settings[k_name]) != held:
                raise ValueError(f"{part}_history: {layout.model_info(model)} says {k_name} {settings[k_name]}, but "
                                 f"{layout.retrieval(settings['mode'])} holds lists of {held}")
        item_vectors = None
        if "semantic" in histories:
            item_vectors = histories["semantic"].item_vectors
            if item_vectors is None:
                raise FileNotFoundError(f"item vectors: {layout.item_vectors('semantic')} is missing; the semantic "
                                        "retriever's vectors are needed to retrieve histories of new requests")
        results = json.loads(layout.results.read_text()) if layout.results.is_file() else {}
        crm_dir = layout.crm(info["crm"])
        adapter_dir = layout.model(model) / info["adapter"]
        config = recommender_config(model, info, dataset, histories, crm_dir, adapter_dir, results, base_model)
        parts = RecommenderParts(config=config, vocabulary=FieldVocabulary.from_dataset(dataset), users=dataset.users,
                                 items=dataset.items, crm_dir=crm_dir, adapter_dir=adapter_dir,
                                 item_vectors=item_vectors, source=str(layout.root))
        return cls(parts, base_model=base_model, device=device, dtype=dtype)

    @classmethod
    def from_pretrained(cls, repo_id_or_folder: Union[str, Path], base_model: Optional[str] = None,
                        revision: Optional[str] = None, token=None, device=None, dtype=None) -> "RecLoraRecommender":
        """Load a folder written by :meth:`save_pretrained`, or download a Hub repo holding one.

        ``base_model`` replaces the stored base model (e.g. a local copy of it). Every part is checked before the
        CRM is built: a missing file or parts that do not fit each other raise an error naming the part.
        """
        folder = resolve_folder(repo_id_or_folder, revision=revision, token=token)
        return cls(read_parts(folder), base_model=base_model, device=device, dtype=dtype)

    # -- saving and publishing -----------------------------------------------------------------------------------------
    def save_pretrained(self, directory: Union[str, Path], repo_id: Optional[str] = None) -> Path:
        """Write the publishable folder (see the module docstring); ``repo_id`` goes into the model card's snippet."""
        from safetensors.torch import save_file

        from .crm.serialization import save_crm
        from .publish import model_card

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        adapter_config = dict(self.adapter_config)
        adapter_config["base_model_name_or_path"] = self.config["base_model_id"] or self.config["base_model"]
        (directory / ADAPTER_CONFIG_NAME).write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
        weights = self.adapter_dir / ADAPTER_WEIGHTS_NAME
        if not (directory / ADAPTER_WEIGHTS_NAME).exists() or not (directory / ADAPTER_WEIGHTS_NAME).samefile(weights):
            shutil.copyfile(weights, directory / ADAPTER_WEIGHTS_NAME)
        save_crm(self.crm, directory / CRM_DIR, metrics=self.config["crm"].get("metrics"))
        (directory / VOCABULARY_NAME).write_text(json.dumps(self.vocabulary.to_json(), indent=1) + "\n")
        (directory / CATALOG_DIR).mkdir(exist_ok=True)
        self.items.to_csv(directory / CATALOG_DIR / "items.csv", index=False)
        self.users.to_csv(directory / CATALOG_DIR / "users.csv", index=False)
        if self.item_vectors is not None:
            save_file({"item_vectors": torch.as_tensor(np.ascontiguousarray(self.item_vectors))},
                      str(directory / ITEM_VECTORS_NAME))
        elif (directory / ITEM_VECTORS_NAME).exists():
            (directory / ITEM_VECTORS_NAME).unlink()
        (directory / RECOMMENDER_CONFIG_NAME).write_text(json.dumps(self.config, indent=2, default=str) + "\n")
        example = self.example_request()
        (directory / MODEL_CARD_NAME).write_text(model_card(self.config, repo_id=repo_id, example=example))
        return directory

    def push_to_hub(self, repo_id: str, private: bool = False, revision: Optional[str] = None, token=None,
                    dry_run: bool = False, commit_message: str = "Upload RecLoRA recommender"):
        """Save into a temporary folder and upload it as one commit; ``dry_run`` lists the files and uploads nothing.

        Returns a :class:`reclora_pipeline.publish.PushResult` (repo id, revision, files with sizes, commit url).
        """
        from .publish import push_recommender

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
        import peft_reclora  # noqa: F401  (registers RecLoRA with PEFT before the adapter is read)
        from peft import PeftModel

        from .llm import load_base_model, load_tokenizer
        from .prompts import PromptFormatter

        tokenizer = load_tokenizer(self.base_model)
        prompt = self.config["prompt"]
        formatter = PromptFormatter(tokenizer, prompt["style"])
        stored = (prompt["yes_token_id"], prompt["no_token_id"])
        if (formatter.yes_id, formatter.no_id) != tuple(stored):
            raise ValueError(
                f"prompt answer tokens: the tokenizer of {self.base_model!r} gives ids {formatter.yes_id}/"
                f"{formatter.no_id} for {prompt.get('yes_token')!r}/{prompt.get('no_token')!r}, but the adapter was "
                f"trained with {stored[0]}/{stored[1]}; this is not the base model it was trained on")
        dtype = self.dtype or self.config.get("dtype")
        base = load_base_model(self.base_model, dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        base.config.pad_token_id = tokenizer.pad_token_id  # as the pipeline scores
        model = PeftModel.from_pretrained(base.to(self.device), str(self.adapter_dir))
        model.eval()
        self.tokenizer, self.formatter, self.model = tokenizer, formatter, model
        return self

    def score(self, requests: Sequence[Union[dict, Request]], batch_size: Optional[int] = None,
              progress: bool = False) -> np.ndarray:
        """P(Yes) of each request, in request order (float64).

        A request is a :class:`Request` or a dict with ``user_id``, ``item_id``, ``history`` (``(item_id, rating)``
        pairs, oldest first) and optionally ``profile``. An unknown item, an unknown user without a profile, or a
        rating the CRM does not know raises an error naming the request index and the field.
        """
        from .crm import CrmEmbeddingTable
        from .scoring import sample_prompt_ids, score_yes_probability

        dataset, padded = self.requests_dataset(requests)
        self.load_model()
        short, long = self.retrieve_histories(dataset, progress=progress)
        sample_ids = dataset.sample_ids()
        max_length = self.config["prompt"].get("max_length")
        token_ids = sample_prompt_ids(dataset, sample_ids, short, self.formatter, max_length)
        features = build_ctr_features(dataset, retrieval=long, split=None, vocabulary=self.vocabulary)
        user_columns = features.fields[:, :padded.shape[1]]  # user fields come first
        user_columns[padded] = 0
        crm_embeds = CrmEmbeddingTable.from_model(self.crm, features, progress=progress).get(sample_ids)
        batch_size = batch_size or int(self.config.get("scoring", {}).get("batch_size") or 8)
        prompt = self.config["prompt"]
        return score_yes_probability(self.model, token_ids, prompt["yes_token_id"], prompt["no_token_id"],
                                     self.tokenizer.pad_token_id, crm_embeds, batch_size, progress=progress)

    def retrieve_histories(self, dataset: RecDataset, progress: bool = False) -> tuple:
        """Short and long histories of every sample of ``dataset``, with the run's retriever settings."""
        results = {}
        for part in ("short", "long"):
            settings = self.config["retrieval"][part]
            key = (settings["mode"], int(settings["k_long"]), int(settings["k_short"]))
            if key not in results:
                retriever = RetrieverConfig(mode=key[0], k_long=key[1], k_short=key[2], device=str(self.device),
                                            progress=progress)
                results[key] = retrieve(dataset, retriever, vectors=self.item_vectors)
            results[part] = results[key]
        return results["short"], results["long"]

    def requests_dataset(self, requests: Sequence[Union[dict, Request]]) -> tuple[RecDataset, np.ndarray]:
        """The requests as a processed dataset (request ``i`` is user ``i`` and sample ``i``), and which user fields
        the CRM reads as padding, (n_requests, n_user_fields) bool: the user id of a user outside the catalog, and
        the ID fields (e.g. zip code) its profile leaves out or gives a value the vocabulary lacks."""
        if isinstance(requests, (dict, Request)):
            raise ValueError("score takes a list of requests; wrap a single request in a list")
        requests = list(requests)
        if not requests:
            raise ValueError("no requests to score")
        spec = self.spec
        user_rows, padded = [], []
        user_index, item_index, rating, timestamp, sample_id = [], [], [], [], []
        target_rating = float(self.vocabulary.rating_values[0])  # never read: labels are not scored
        for index, raw in enumerate(requests):
            request = _as_request(raw, index)
            row, padding = self._user_row(request, index, spec)
            user_rows.append(row)
            padded.append(padding)
            for position, entry in enumerate(request.history):
                item, value = _history_entry(entry, index, position)
                item_index.append(self._item(item, index, f"history[{position}] item_id"))
                rating.append(self._rating(value, index, position))
            item_index.append(self._item(request.item_id, index, "item_id"))
            rating.append(target_rating)
            length = len(request.history) + 1
            user_index.extend([index] * length)
            timestamp.extend(range(length))
            sample_id.extend([-1] * (length - 1) + [index])
        sample_id = np.asarray(sample_id, dtype=np.int64)
        dataset = RecDataset(
            spec=spec, users=pd.DataFrame(user_rows, columns=self.users.columns), items=self.items,
            user_index=np.asarray(user_index), item_index=np.asarray(item_index), rating=np.asarray(rating),
            timestamp=np.asarray(timestamp), sample_id=sample_id,
            split_code=np.where(sample_id >= 0, SPLITS.index("test"), -1), options={}, source="requests",
        )
        return dataset, np.asarray(padded, dtype=bool).reshape(len(requests), len(spec.user_fields))

    def _user_row(self, request: Request, index: int, spec: DatasetSpec) -> tuple[dict, list]:
        user_id = str(request.user_id)
        position = self._user_position.get(user_id)
        profile = {str(key): "" if value is None else str(value) for key, value in (request.profile or {}).items()}
        unknown_columns = sorted(set(profile) - set(self.users.columns))
        if unknown_columns:
            raise ValueError(f"request {index}: profile fields {unknown_columns} are not user fields "
                             f"{list(self.users.columns)}")
        padding = [False] * len(spec.user_fields)
        if position is None:
            required = [name for name in spec.user_fields[1:] if name not in spec.id_fields]
            if request.profile is None:
                raise KeyError(f"request {index}: user_id {user_id!r} is not in the catalog; pass a 'profile' with "
                               f"the user fields {required}")
            missing = [name for name in required if name not in profile]
            if missing:
                raise ValueError(f"request {index}: profile of new user {user_id!r} lacks {missing}")
            row = {**{column: "" for column in self.users.columns}, **profile}
            for column, name in enumerate(spec.user_fields):
                if name in spec.id_fields and (name == "user_id" or row[name] not in self._known[name]):
                    # Encodable stand-in; the CRM reads the padding token in this column instead.
                    row[name], padding[column] = self.vocabulary.values[name][0], True
        else:
            row = {**self.users.iloc[position].to_dict(), **profile, "user_id": user_id}
        for name in spec.user_fields[1:]:
            if row[name] not in self._known[name]:
                raise KeyError(f"request {index}: profile field {name!r} value {row[name]!r} is not in the "
                               f"vocabulary (known: {self.vocabulary.values[name][:10]}...)")
        return row, padding

    def _item(self, item, index: int, where: str) -> int:
        position = self._item_position.get(str(item))
        if position is None:
            raise KeyError(f"request {index}: {where} {str(item)!r} is not in the catalog ({len(self.items)} items)")
        return position

    def _rating(self, value, index: int, position: int) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"request {index}: history[{position}] rating {value!r} is not a number") from None
        if number not in self.vocabulary.rating_values:
            raise ValueError(f"request {index}: history[{position}] rating {value!r} is not one of the ratings the "
                             f"CRM knows {self.vocabulary.rating_values}")
        return number


# -- requests ----------------------------------------------------------------------------------------------------------
def _as_request(raw, index: int) -> Request:
    if isinstance(raw, Request):
        request = raw
    elif isinstance(raw, dict):
        missing = [name for name in ("user_id", "item_id") if name not in raw]
        if missing:
            raise ValueError(f"request {index}: {missing[0]!r} is missing")
        unknown = sorted(set(raw) - {"user_id", "item_id", "history", "profile"})
        if unknown:
            raise ValueError(f"request {index}: unknown fields {unknown} (expected user_id, item_id, history, profile)")
        request = Request(raw["user_id"], raw["item_id"], raw.get("history") or (), raw.get("profile"))
    else:
        raise ValueError(f"request {index}: expected a dict or a Request, got {type(raw).__name__}")
    if request.profile is not None and not isinstance(request.profile, dict):
        raise ValueError(f"request {index}: profile must be a dict of user fields, got "
                         f"{type(request.profile).__name__}")
    if isinstance(request.history, (str, bytes, dict)):
        raise ValueError(f"request {index}: history must be a list of (item_id, rating) pairs")
    return request


def _history_entry(entry, index: int, position: int) -> tuple:
    if isinstance(entry, dict) and {"item_id", "rating"} <= set(entry):
        return entry["item_id"], entry["rating"]
    if isinstance(entry, (str, bytes)) or not hasattr(entry, "__len__") or len(entry) != 2:
        raise ValueError(f"request {index}: history[{position}] must be an (item_id, rating) pair, got {entry!r}")
    return entry[0], entry[1]


def _plain_number(value: float):
    return int(value) if float(value).is_integer() else float(value)


# -- the folder --------------------------------------------------------------------------------------------------------
def required_files(config: Optional[dict] = None) -> dict:
    """Part name -> path inside the folder (item vectors only when a history mode is semantic)."""
    files = {
        "recommender config": RECOMMENDER_CONFIG_NAME,
        "adapter config": ADAPTER_CONFIG_NAME,
        "adapter weights": ADAPTER_WEIGHTS_NAME,
        "CRM config": f"{CRM_DIR}/crm_config.json",
        "CRM weights": f"{CRM_DIR}/crm_model.safetensors",
        "vocabulary": VOCABULARY_NAME,
        "item catalog": f"{CATALOG_DIR}/items.csv",
        "user catalog": f"{CATALOG_DIR}/users.csv",
    }
    if config is not None and uses_semantic_retrieval(config):
        files["item vectors"] = ITEM_VECTORS_NAME
    return files


def uses_semantic_retrieval(config: dict) -> bool:
    return any(config["retrieval"][part]["mode"] == "semantic" for part in ("short", "long"))


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
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path = folder / RECOMMENDER_CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is missing the recommender config ({RECOMMENDER_CONFIG_NAME}): not a "
                                "folder written by RecLoraRecommender.save_pretrained")
    config = _read_json(config_path, "recommender config")
    if config.get("format") != RECOMMENDER_FORMAT:
        raise ValueError(f"recommender config: {config_path} has format {config.get('format')!r}, expected "
                         f"{RECOMMENDER_FORMAT!r}")
    if int(config.get("format_version", 0)) > RECOMMENDER_FORMAT_VERSION:
        raise ValueError(f"recommender config: {config_path} has format_version {config['format_version']}, newer "
                         f"than this reader ({RECOMMENDER_FORMAT_VERSION})")
    files = required_files(config)
    for part, name in files.items():
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is missing the {part} ({name})")
    vocabulary = FieldVocabulary.from_json(_read_json(folder / VOCABULARY_NAME, "vocabulary"))
    item_vectors = None
    if "item vectors" in files:
        tensors = load_file(str(folder / ITEM_VECTORS_NAME))
        if "item_vectors" not in tensors:
            raise ValueError(f"item vectors: {folder / ITEM_VECTORS_NAME} has no tensor 'item_vectors' "
                             f"(found {sorted(tensors)})")
        item_vectors = tensors["item_vectors"].numpy()
    return RecommenderParts(
        config=config, vocabulary=vocabulary,
        users=pd.read_csv(folder / CATALOG_DIR / "users.csv", **CSV_READ_OPTIONS),
        items=pd.read_csv(folder / CATALOG_DIR / "items.csv", **CSV_READ_OPTIONS),
        crm_dir=folder / CRM_DIR, adapter_dir=folder, item_vectors=item_vectors, source=str(folder),
        files={part: str(folder / name) for part, name in files.items()},
    )


def _read_json(path: Path, part: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{part}: {path} is not valid JSON ({error})") from None


# -- checks ------------------------------------------------------------------------------------------------------------
def check_adapter(adapter_dir: Path, config: dict) -> dict:
    """Read the adapter config and its weights' shapes (header only) and check N_m and crm_dim against both the
    weights and the recommender config; returns the adapter config."""
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    for part, name in (("adapter config", ADAPTER_CONFIG_NAME), ("adapter weights", ADAPTER_WEIGHTS_NAME)):
        if not (adapter_dir / name).is_file():
            raise FileNotFoundError(f"{adapter_dir} is missing the {part} ({name})")
    adapter_config = _read_json(adapter_dir / ADAPTER_CONFIG_NAME, "adapter config")
    if str(adapter_config.get("peft_type", "")).upper() != "RECLORA":
        raise ValueError(f"adapter: {adapter_dir / ADAPTER_CONFIG_NAME} is a {adapter_config.get('peft_type')!r} "
                         "adapter, not a RecLoRA one")
    num_meta_loras, rank, crm_dim = (int(adapter_config[name]) for name in ("num_meta_loras", "r", "crm_dim"))
    if int(config["num_meta_loras"]) != num_meta_loras:
        raise ValueError(f"num_meta_loras (N_m): {RECOMMENDER_CONFIG_NAME} says {config['num_meta_loras']}, but the "
                         f"adapter has {num_meta_loras} meta-LoRAs")
    if int(config["crm_dim"]) != crm_dim:
        raise ValueError(f"crm_dim: {RECOMMENDER_CONFIG_NAME} says {config['crm_dim']}, but the adapter's gate reads "
                         f"R_c of width {crm_dim}")
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
    return adapter_config


def check_parts(parts: RecommenderParts, adapter_config: dict) -> None:
    """Check the CRM config, vocabulary, catalog, item vectors and retriever settings against each other."""
    from .crm.serialization import CRM_CONFIG_NAME, read_crm_config

    config, vocabulary = parts.config, parts.vocabulary
    spec = DatasetSpec.from_dict(config["dataset"]["spec"])
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
    k_long = int(config["retrieval"]["long"]["k_long"])
    if int(schema["history_length"]) != k_long:
        raise ValueError(f"retriever: the long history has K_long {k_long}, but the CRM ({crm_path}) reads "
                         f"history_length {schema['history_length']}")
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
    if uses_semantic_retrieval(config):
        vectors = parts.item_vectors
        if vectors is None:
            raise ValueError("item vectors: a history mode is semantic, but no item vectors were given")
        if vectors.ndim != 2 or len(vectors) != len(parts.items):
            raise ValueError(f"item vectors: shape {tuple(vectors.shape)}, but {CATALOG_DIR}/items.csv lists "
                             f"{len(parts.items)} items (one row per item, in catalog order)")


def _load_checked_crm(parts: RecommenderParts, adapter_config: dict):
    from .crm import CrmSchema, load_crm

    vocabulary = parts.vocabulary
    spec = DatasetSpec.from_dict(parts.config["dataset"]["spec"])
    schema = CrmSchema(vocab_size=vocabulary.vocab_size, field_names=tuple(vocabulary.field_names),
                       item_field=len(spec.user_fields),
                       history_length=int(parts.config["retrieval"]["long"]["k_long"]))
    return load_crm(parts.crm_dir, expected_schema=schema, expected_crm_dim=int(adapter_config["crm_dim"]))


# -- the config of a run's model ---------------------------------------------------------------------------------------
def recommender_config(model: str, info: dict, dataset: RecDataset, histories: dict, crm_dir: Path,
                       adapter_dir: Path, results: dict, base_model: Optional[str]) -> dict:
    """``recommender.json`` of one model of a run: everything needed to score, and what the model card reports."""
    from .crm.serialization import read_crm_config
    crm_config = read_crm_config(crm_dir)
    adapter_config = _read_json(Path(adapter_dir) / ADAPTER_CONFIG_NAME, "adapter config") \
        if (Path(adapter_dir) / ADAPTER_CONFIG_NAME).is_file() else {}
    base = base_model or info["base_model"]
    models = results.get("models", {})
    comparison = {name: {key: entry.get(key) for key in ("kind", "auc", "logloss", "rel_impr", "n")}
                  for name, entry in models.items()}
    return {
        "format": RECOMMENDER_FORMAT,
        "format_version": RECOMMENDER_FORMAT_VERSION,
        "model_name": model,
        "kind": info["kind"],
        "base_model": base,
        "base_model_id": public_model_id(base),
        "dtype": info.get("dtype"),
        "dataset": dataset_summary(dataset),
        "prompt": dict(info["prompt"]),
        "retrieval": {
            "short": retrieval_summary(histories[info["short_history"]["mode"]]),
            "long": retrieval_summary(histories[info["long_history"]["mode"]]),
        },
        "crm": {"key": info["crm"], "name": crm_config["model_name"], "crm_dim": crm_config["crm_dim"],
                "rc_layer": crm_config["rc_layer"], "schema": crm_config["schema"],
                "hyper_parameters": crm_config["hyper_parameters"], "metrics": crm_config.get("metrics")},
        "adapter": {key: adapter_config.get(key) for key in ("peft_type", "r", "lora_alpha", "num_meta_loras",
                                                             "crm_dim", "gate_hidden_dim", "temperature",
                                                             "gate_sharing", "mixing", "target_modules")},
        "num_meta_loras": adapter_config.get("num_meta_loras"),
        "crm_dim": adapter_config.get("crm_dim"),
        "scoring": dict(info.get("scoring") or {}),
        "settings": info.get("settings"),
        "tune": info.get("tune"),
        "few_shot": info.get("few_shot"),
        "study": info.get("study"),
        "metrics": models.get(model),
        "reference_model": results.get("reference_model"),
        "comparison": comparison,
    }


def public_model_id(base_model: str) -> Optional[str]:
    """The Hub id a base model is known by: the embedded SmolLM2's id, a Hub id as it is, ``None`` for a local
    folder (its path means nothing elsewhere; ``--base-model`` records an id instead)."""
    from .llm import EMBEDDED_HUB_ID, is_embedded

    if is_embedded(base_model):
        return EMBEDDED_HUB_ID
    text = str(base_model)
    if Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
        return None
    return text


def dataset_summary(dataset: RecDataset) -> dict:
    stats = dataset.stats if dataset.stats.get("samples") else dataset.compute_stats()
    return {
        "name": dataset.name,
        "fingerprint": dataset.fingerprint,
        "spec": dataset.spec.to_dict(),
        "label_rule": dataset.spec.label_rule,
        "options": dataset.options,
        "users": int(len(dataset.users)),
        "items": int(len(dataset.items)),
        "interactions": int(len(dataset.user_index)),
        "samples": stats.get("samples"),
        "positive_rate": stats.get("positive_rate"),
        "time_range": stats.get("time_range"),
        "metrics_split": "test",
    }


def retrieval_summary(result: RetrievalResult) -> dict:
    metadata = result.metadata or {}
    settings = metadata.get("config") or {}
    summary = {"mode": result.mode, "k_long": result.k_long, "k_short": result.k_short}
    if result.mode == "semantic":
        summary.update({name: settings.get(name) for name in RETRIEVER_SETTINGS})
        summary["pca"] = metadata.get("pca")
        summary["encoding_key"] = metadata.get("encoding_key")
        if result.item_vectors is not None:
            summary["vector_dim"] = int(np.asarray(result.item_vectors).shape[1])
    return summary
