"""RecLoraRecommender: a run's RecLoRA model saved with its CRM, vocabulary, catalog and retriever scores new requests
exactly as the run scored its test samples; broken folders fail naming the part; bad requests name the request."""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from reclora_pipeline.data import FieldVocabulary, RecDataset, build_ctr_features, load_dataset
from reclora_pipeline.data.synthetic import make_world, write_ml100k_recbole
from reclora_pipeline.recommender import RecLoraRecommender, Request

MODEL = "RecLoRA"
RECENT = "RecLoRA w/o retrievers"
_CACHE = {}


@dataclass
class TinyRun:
    """A run folder in the pipeline's layout, with the test samples it scored."""

    root: Path
    sample_ids: np.ndarray
    scores: np.ndarray
    requests: list


def build_tiny_run(root: Path) -> TinyRun:
    """A small ML-100K-format dataset, semantic retrieval over random unit vectors, a SIM CRM (1 epoch), a RecLoRA
    adapter on the embedded SmolLM2 with random banks and gate, and the test samples scored by the pipeline's recipe."""
    from reclora_pipeline.crm import CrmEmbeddingTable, CrmTrainingConfig, predict_crm, save_crm, train_crm
    from reclora_pipeline.llm import load_base_model, load_tokenizer
    from reclora_pipeline.prompts import PromptFormatter, build_prompt
    from reclora_pipeline.report import ResultsBook
    from reclora_pipeline.retriever import RetrievalResult, RetrieverConfig, retrieve
    from reclora_pipeline.run_layout import RunLayout
    from reclora_pipeline.scoring import score_yes_probability, tokenize_prompts
    from reclora_pipeline.tune import TuneSettings, build_peft_model

    layout = RunLayout(root)
    source = write_ml100k_recbole(make_world(num_users=16, num_items=30, ratings_per_user=(8, 18), seed=3),
                                  root / "raw")
    load_dataset("ml-100k", source, core=3, min_history=3).save(layout.data)
    dataset = RecDataset.load(layout.data)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(dataset.items), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    retrieve(dataset, RetrieverConfig(mode="semantic", k_long=6, k_short=3, progress=False),
             vectors=vectors).save(layout.retrieval("semantic"))
    recent = RetrieverConfig(mode="recent", k_long=6, k_short=3, progress=False)
    retrieve(dataset, recent).save(layout.retrieval("recent"))
    retrieval = RetrievalResult.load(layout.retrieval("semantic"), dataset)

    splits = {name: build_ctr_features(dataset, retrieval=retrieval, split=name) for name in ("train", "valid")}
    crm_settings = CrmTrainingConfig(epochs=1, batch_size=32, progress=False,
                                     model_kwargs=dict(embed_dim=8, hidden_dims=[16, 8]))
    crm, _ = train_crm("sim", splits["train"], splits["valid"], crm_settings)
    save_crm(crm, layout.crm("sim"), metrics={"auc": 0.5})

    tokenizer = load_tokenizer("embedded")
    tune = TuneSettings(r=2, lora_alpha=4, num_meta_loras=4, gate_hidden_dim=8)
    model = build_peft_model(load_base_model("embedded", dtype=torch.float32), tune, crm_dim=crm.crm_dim)
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: non-zero banks and a gate that varies with R_c
        for name, parameter in model.named_parameters():
            if "reclora_B" in name or "fc2_weight" in name:
                parameter.copy_(torch.randn_like(parameter) * (0.05 if "reclora_B" in name else 2.0))
    model.save_pretrained(str(layout.adapter(MODEL)))

    sample_ids = dataset.sample_ids("test")[:8]  # a part of the test split keeps the suite fast on CPU
    formatter = PromptFormatter(tokenizer, "plain")
    records = dataset.text_records(sample_ids, retrieval=retrieval)
    texts = [formatter.format(build_prompt(dataset.name, record)) for record in records]
    token_ids = tokenize_prompts(tokenizer, texts, None)
    features = build_ctr_features(dataset, retrieval=retrieval, split=None)
    crm_embeds = CrmEmbeddingTable.from_model(crm, features, progress=False).get(sample_ids)
    scores = score_yes_probability(model, token_ids, formatter.yes_id, formatter.no_id, tokenizer.pad_token_id,
                                   crm_embeds, 4, progress=False)

    samples = dataset.samples.set_index("sample_id").loc[sample_ids]
    book = ResultsBook(root, reference=MODEL)
    book.add(MODEL, samples["label"].to_numpy(), scores, kind="reclora", rows=samples)
    test_features = features.subset(features.rows_for(sample_ids))
    book.add("SIM", test_features.labels, predict_crm(crm, test_features)[1], kind="crm")
    layout.write_model_info(MODEL, {
        "name": MODEL, "kind": "reclora", "base_model": "embedded", "dtype": "float32",
        "prompt": {"dataset": dataset.name, "max_length": None, **formatter.to_dict()},
        "short_history": {"mode": "semantic", "k_short": 3}, "long_history": {"mode": "semantic", "k_long": 6},
        "crm": "sim", "adapter": "adapter", "scoring": {"batch_size": 4}, "tune": {"r": 2}, "few_shot": {"size": 0},
    })
    # The "without retrievers" ablation: the same CRM and adapter fed the most recent histories.
    shutil.copytree(layout.adapter(MODEL), layout.adapter(RECENT))
    recent_info = {**layout.read_model_info(MODEL), "name": RECENT, "short_history": {"mode": "recent", "k_short": 3},
                   "long_history": {"mode": "recent", "k_long": 6}}
    layout.write_model_info(RECENT, recent_info)
    layout.write_model_info("SIM-only", {"name": "SIM-only", "kind": "zero-shot", "crm": None, "adapter": None})
    layout.config.write_text(json.dumps({"dataset": "ml-100k"}))
    return TinyRun(root, sample_ids, scores, requests_of(dataset, sample_ids))


def requests_of(dataset: RecDataset, sample_ids) -> list:
    """Requests of the given samples: user, item, and every earlier interaction with its rating, oldest first."""
    samples = dataset.samples.set_index("sample_id")
    requests = []
    for sample, items, ratings, _ in dataset.history(sample_ids):
        history = [(item, int(rating)) for item, rating in zip(items, ratings)]
        requests.append({"user_id": str(samples.at[sample, "user_id"]), "item_id": str(samples.at[sample, "item_id"]),
                         "history": history})
    return requests


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    if "run" not in _CACHE:
        _CACHE["run"] = build_tiny_run(tmp_path_factory.mktemp("run"))
    return _CACHE["run"]


@pytest.fixture(scope="session")
def saved_folder(tiny_run, tmp_path_factory):
    """The folder ``save_pretrained`` writes for the run's RecLoRA model."""
    if "saved" not in _CACHE:
        folder = tmp_path_factory.mktemp("published") / "recommender"
        RecLoraRecommender.from_run(tiny_run.root, model=MODEL, device="cpu").save_pretrained(folder)
        _CACHE["saved"] = folder
    return _CACHE["saved"]


@pytest.fixture(scope="session")
def recommender(saved_folder):
    """The saved recommender loaded back (the LLM loads on the first score)."""
    if "loaded" not in _CACHE:
        _CACHE["loaded"] = RecLoraRecommender.from_pretrained(saved_folder, device="cpu")
    return _CACHE["loaded"]


def test_vocabulary_round_trips_through_json(tiny_run):
    vocabulary = FieldVocabulary.from_dataset(RecDataset.load(tiny_run.root / "data"))
    again = FieldVocabulary.from_json(json.loads(json.dumps(vocabulary.to_json())))
    assert again == vocabulary
    broken = vocabulary.to_json()
    broken["field_offsets"]["gender"] += 1
    with pytest.raises(ValueError, match="vocabulary: field 'gender' starts at token"):
        FieldVocabulary.from_json(broken)


def test_saved_recommender_scores_the_run_samples_like_the_run(tiny_run, recommender):
    predictions = pd.read_csv(tiny_run.root / "predictions" / f"{MODEL}.csv", dtype={"user_id": str, "item_id": str})
    assert [r["user_id"] for r in tiny_run.requests] == predictions["user_id"].tolist()
    assert [r["item_id"] for r in tiny_run.requests] == predictions["item_id"].tolist()
    scores = recommender.score(tiny_run.requests)
    np.testing.assert_allclose(scores, tiny_run.scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(scores, predictions["score"].to_numpy(), rtol=0, atol=1e-5)
    assert scores.std() > 1e-4  # the requests really differ
    # Request objects, another batch size and one request alone give the same scores.
    objects = [Request(r["user_id"], r["item_id"], r["history"]) for r in tiny_run.requests[:2]]
    np.testing.assert_allclose(recommender.score(objects, batch_size=1), tiny_run.scores[:2], rtol=0, atol=1e-5)


@pytest.mark.parametrize("model, mode", [(MODEL, "semantic"), (RECENT, "recent")])
def test_request_histories_are_the_run_histories(tiny_run, tmp_path, model, mode):
    """Retrieval over a request's own history picks the items the run's retrieval picked for that sample."""
    from reclora_pipeline.retriever import RetrievalResult

    folder = RecLoraRecommender.from_run(tiny_run.root, model=model, device="cpu").save_pretrained(tmp_path / "r")
    assert (folder / "item_vectors.safetensors").is_file() == (mode == "semantic")
    loaded = RecLoraRecommender.from_pretrained(folder, device="cpu")
    requests_dataset, padded = loaded.requests_dataset(tiny_run.requests)
    short, long = loaded.retrieve_histories(requests_dataset)
    dataset = RecDataset.load(tiny_run.root / "data")
    run = RetrievalResult.load(tiny_run.root / "retrieval" / mode, dataset)
    for index, sample in enumerate(tiny_run.sample_ids):
        assert short.short_item_ids(requests_dataset, index) == run.short_item_ids(dataset, int(sample))
        assert long.long_item_ids(requests_dataset, index) == run.long_item_ids(dataset, int(sample))
    assert not padded.any()


def test_other_users_new_users_and_short_histories(tiny_run, recommender):
    """Another user with the same history and target gets another R_c, so another gate mix and score; a user outside
    the catalog scores from a profile; a history of one or no items scores too."""
    request = tiny_run.requests[0]
    other_user = next(u for u in recommender.users["user_id"] if u != request["user_id"])
    profile = recommender.users.iloc[0].drop(["user_id", "zip_code"]).to_dict()  # ID fields may be left out
    scores = recommender.score([
        {**request, "user_id": other_user},
        {"user_id": "someone-new", "item_id": request["item_id"], "history": request["history"], "profile": profile},
        {"user_id": request["user_id"], "item_id": request["item_id"], "history": []},
    ])
    assert abs(scores[0] - tiny_run.scores[0]) > 1e-6
    _, padded = recommender.requests_dataset([{"user_id": "new", "item_id": request["item_id"], "profile": profile}])
    assert padded.tolist() == [[True, False, False, False, True]]  # user_id and zip_code (ID fields)
    assert np.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()


@pytest.mark.parametrize("requests, error, message", [
    ([], ValueError, "no requests"),
    ([{"user_id": "1"}], ValueError, "request 0: 'item_id' is missing"),
    ([{"user_id": "1", "item_id": "2"}, {"user_id": "1", "item_id": "no-such-item"}], KeyError,
     "request 1: item_id 'no-such-item' is not in the catalog"),
    ([{"user_id": "1", "item_id": "2", "history": [("2", 4), ("nope", 3)]}], KeyError,
     r"request 0: history\[1\] item_id 'nope' is not in the catalog"),
    ([{"user_id": "1", "item_id": "2", "history": [("2", 4.5)]}], ValueError,
     r"request 0: history\[0\] rating 4.5 is not one of the ratings"),
    ([{"user_id": "1", "item_id": "2", "history": ["2"]}], ValueError, r"request 0: history\[0\] must be an"),
    ([{"user_id": "stranger", "item_id": "2"}], KeyError, "request 0: user_id 'stranger' is not in the catalog"),
    ([{"user_id": "stranger", "item_id": "2", "profile": {"gender": "M"}}], ValueError,
     "request 0: profile of new user 'stranger' lacks"),
    ([{"user_id": "1", "item_id": "2", "profile": {"occupation": "astronaut"}}], KeyError,
     "request 0: profile field 'occupation' value 'astronaut' is not in the vocabulary"),
])
def test_bad_requests_name_the_request_and_field(recommender, requests, error, message):
    with pytest.raises(error, match=message):
        recommender.requests_dataset(requests)


def test_folder_holds_every_part_and_no_pickle(saved_folder):
    files = sorted(p.relative_to(saved_folder).as_posix() for p in saved_folder.rglob("*") if p.is_file())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors", "catalog/items.csv",
                     "catalog/users.csv", "crm/crm_config.json", "crm/crm_model.safetensors",
                     "item_vectors.safetensors", "recommender.json", "vocabulary.json"]
    from safetensors import safe_open

    for name in files:  # weights in safetensors, settings in JSON, tables in CSV: nothing a pickle loader reads
        assert Path(name).suffix in (".json", ".csv", ".md", ".safetensors"), name
        if name.endswith(".safetensors"):
            with safe_open(str(saved_folder / name), framework="pt") as handle:
                assert list(handle.keys())
    config = json.loads((saved_folder / "recommender.json").read_text())
    assert config["format"] == "reclora-recommender" and config["num_meta_loras"] == 4
    assert config["retrieval"]["short"]["k_short"] == 3 and config["retrieval"]["long"]["k_long"] == 6
    assert config["prompt"]["yes_token"] == " Yes" and config["crm"]["key"] == "sim"
    assert set(config["comparison"]) == {MODEL, "SIM"}
    assert config["metrics"]["auc"] == config["comparison"][MODEL]["auc"]
    adapter = json.loads((saved_folder / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _truncate_vocabulary(folder: Path) -> None:
    vocabulary = FieldVocabulary.from_json(json.loads((folder / "vocabulary.json").read_text()))
    values = dict(vocabulary.values, title=vocabulary.values["title"][:-1])
    offsets, cursor = {}, 1
    for name in vocabulary.field_names:
        offsets[name], cursor = cursor, cursor + len(values[name])
    smaller = FieldVocabulary(vocabulary.field_names, values, offsets, vocabulary.rating_values, cursor)
    (folder / "vocabulary.json").write_text(json.dumps(smaller.to_json()))


def _other_num_meta_loras(folder: Path) -> None:
    """Replace the adapter by a consistent one with N_m = 8 (same crm_dim)."""
    import peft_reclora
    from peft import get_peft_model

    from conftest import make_tiny_llama

    config = json.loads((folder / "adapter_config.json").read_text())
    model = get_peft_model(make_tiny_llama(), peft_reclora.RecLoraConfig(
        crm_dim=config["crm_dim"], r=2, lora_alpha=4, num_meta_loras=8, gate_hidden_dim=8))
    model.save_pretrained(str(folder / "other"))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(folder / "other" / name, folder / name)


def _item_vectors_rows(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    vectors = load_file(str(folder / "item_vectors.safetensors"))["item_vectors"]
    save_file({"item_vectors": vectors[:-1].contiguous()}, str(folder / "item_vectors.safetensors"))


BROKEN_PARTS = {
    "crm weights deleted": (lambda f: (f / "crm" / "crm_model.safetensors").unlink(), "CRM weights"),
    "crm config crm_dim": (lambda f: _edit_json(f / "crm" / "crm_config.json", lambda c: c.update(crm_dim=99)),
                           "crm_dim"),
    "vocabulary truncated": (_truncate_vocabulary, "vocabulary"),
    "vocabulary offsets": (lambda f: _edit_json(f / "vocabulary.json", lambda v: v["values"]["gender"].pop()),
                           "vocabulary"),
    "adapter N_m": (_other_num_meta_loras, "num_meta_loras"),
    "adapter weights N_m": (lambda f: [_edit_json(f / name, lambda c: c.update(num_meta_loras=2))
                                       for name in ("adapter_config.json", "recommender.json")],
                            r"num_meta_loras \(N_m\): .*reclora_A has 8 rank slots"),
    "item vectors rows": (_item_vectors_rows, "item vectors"),
    "item vectors deleted": (lambda f: (f / "item_vectors.safetensors").unlink(), "item vectors"),
    "catalog deleted": (lambda f: (f / "catalog" / "users.csv").unlink(), "user catalog"),
    "retriever K_long": (lambda f: _edit_json(f / "recommender.json",
                                              lambda c: c["retrieval"]["long"].update(k_long=5)), "K_long"),
}


@pytest.mark.parametrize("part", list(BROKEN_PARTS))
def test_a_broken_part_is_named(saved_folder, tmp_path, part):
    breaks, message = BROKEN_PARTS[part]
    folder = Path(shutil.copytree(saved_folder, tmp_path / "copy"))
    breaks(folder)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        RecLoraRecommender.from_pretrained(folder, device="cpu")


def test_only_reclora_models_are_published(tiny_run):
    with pytest.raises(ValueError, match="only RecLoRA models"):
        RecLoraRecommender.from_run(tiny_run.root, model="SIM-only")
    with pytest.raises(FileNotFoundError, match="has no model 'nope'"):
        RecLoraRecommender.from_run(tiny_run.root, model="nope")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        RecLoraRecommender.from_pretrained(tiny_run.root / "no-such-folder")
