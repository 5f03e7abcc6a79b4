"""RecLoraRecommender: a pipeline run's RecLoRA model saved with its CRM, vocabulary, catalog and retriever rescores
the run's test samples exactly; requests become the same typed views training uses; users and items outside the
catalog take the documented path; broken folders fail naming the part; parts of another run are refused."""

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from reclora_pipeline.artifacts import RunFolder, write_json_atomically
from reclora_pipeline.pipeline import run_pipeline
from reclora_pipeline.plan import plan_run
from reclora_pipeline.serving import RecLoraRecommender, RecommenderRecord, Request
from reclora_pipeline.stages.tune import TuneInputs
from reclora_pipeline.views import FieldVocabulary, SampleView, ctr_features, text_records

from support.recommender_run import ATOL, HUB_BASE_MODEL, MODEL, tiny_config


# Every history combination of a run: (model, prompt history, gate history).
HISTORIES = [(MODEL, "semantic", "semantic"), ("RecLoRA w/o long retriever", "semantic", "recent"),
             ("RecLoRA w/o short retriever", "recent", "semantic"),
             ("RecLoRA w/o both retrievers", "recent", "recent")]


@pytest.fixture(scope="session")
def other_run(tiny_run, tmp_path_factory):
    """The same run with another CRM seed, in a copy of its folder: the data and retrieval are reused, the CRM, R_c
    and RecLoRA adapter are new (the copy keeps the first run's artifacts too)."""
    root = tmp_path_factory.mktemp("other-run") / "run"
    shutil.copytree(tiny_run.root, root)
    config = tiny_config(root, tiny_run.base_model, Path(tiny_run.config.retrieval.cache_dir),
                         models=["reclora"], crm__training__seed=7)
    run_pipeline(config)
    return root


# -- scores -----------------------------------------------------------------------------------------------------------
def test_vocabulary_round_trips_through_json(tiny_run):
    vocabulary = FieldVocabulary.from_dataset(tiny_run.dataset)
    again = FieldVocabulary.from_json(json.loads(json.dumps(vocabulary.to_json())))
    assert again == vocabulary
    broken = vocabulary.to_json()
    broken["field_offsets"]["gender"] += 1
    with pytest.raises(ValueError, match="vocabulary: field 'gender' starts at token"):
        FieldVocabulary.from_json(broken)


def test_saved_recommender_scores_the_run_samples_like_the_run(tiny_run, recommender):
    predictions = tiny_run.predictions(MODEL)
    assert [r["user_id"] for r in tiny_run.requests] == predictions["user_id"].tolist()
    assert [r["item_id"] for r in tiny_run.requests] == predictions["item_id"].tolist()
    scores = recommender.score(tiny_run.requests)
    assert scores.dtype == np.float64 and len(scores) == len(tiny_run.sample_ids) == 24
    np.testing.assert_allclose(scores, tiny_run.scores, rtol=0, atol=ATOL)
    np.testing.assert_allclose(scores, predictions["score"].to_numpy(), rtol=0, atol=ATOL + 5e-7)  # CSV: 6 decimals
    assert scores.std() > 1e-4  # the requests really differ
    # Request objects, int ids, another batch size and one request alone give the same scores.
    objects = [Request(r["user_id"], r["item_id"], r["history"]) for r in tiny_run.requests[:2]]
    np.testing.assert_allclose(recommender.score(objects, batch_size=1), tiny_run.scores[:2], rtol=0, atol=1e-5)
    first = tiny_run.requests[0]
    as_ints = {"user_id": int(first["user_id"]), "item_id": int(first["item_id"]),
               "history": [{"item_id": int(item), "rating": rating} for item, rating in first["history"]]}
    np.testing.assert_allclose(recommender.score([as_ints]), tiny_run.scores[:1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("model, short_mode, long_mode", HISTORIES)
def test_requests_become_the_run_views_and_scores(tiny_run, tmp_path, model, short_mode, long_mode):
    """Retrieval over a request's own history picks what the run's retrieval picked for that sample, so the CRM
    features, the text records and the scores are the run's, for every history mode."""
    original = RecLoraRecommender.from_run(tiny_run.root, model=model, device="cpu")
    folder = original.save_pretrained(tmp_path / "r")
    assert (folder / "item_vectors.safetensors").is_file() == ("semantic" in (short_mode, long_mode))
    loaded = RecLoraRecommender.from_pretrained(folder, device="cpu")
    assert (loaded.record.model.short_history, loaded.record.model.long_history) == (short_mode, long_mode)
    assert sorted(loaded.record.lineage.retrieval_keys) == sorted({short_mode, long_mode})
    view = loaded.view(tiny_run.requests)
    short, long = tiny_run.retrieval(short_mode), tiny_run.retrieval(long_mode)
    run = SampleView.from_dataset(tiny_run.dataset, tiny_run.sample_ids, long=long, short=short, split="test")
    for name in ("item", "long_items", "long_ratings", "short_items", "short_ratings"):
        np.testing.assert_array_equal(getattr(view, name), getattr(run, name), err_msg=name)
    assert not view.padded_user_fields.any() and view.label is None
    for index, sample in enumerate(tiny_run.sample_ids):  # the retrievals' own lists, by catalog id
        assert view.short_item_ids(index) == short.short_item_ids(tiny_run.dataset, int(sample))
        assert view.long_item_ids(index) == long.long_item_ids(tiny_run.dataset, int(sample))
    ours = ctr_features(view, loaded.vocabulary)
    theirs = ctr_features(run, FieldVocabulary.from_dataset(tiny_run.dataset))
    for name in ("fields", "hist_items", "hist_ratings", "hist_mask"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name), err_msg=name)
    assert [dataclasses.replace(record, sample_id=0, label=None) for record in text_records(view)] == \
        [dataclasses.replace(record, sample_id=0, label=None) for record in text_records(run)]
    np.testing.assert_allclose(loaded.score(tiny_run.requests), tiny_run.model_scores(model), rtol=0, atol=ATOL)


def test_a_gate_crm_with_recent_histories_rescores_like_the_run(tiny_run, tmp_path):
    """DIN reads the most recent K_long items whatever the retrieval mode: the recommender retrieves the CRM's
    history the way the R_c its adapter was tuned on was computed (the CRM artifact's retrieval), not by the run's
    mode."""
    root = Path(shutil.copytree(tiny_run.root, tmp_path / "run"))
    run_pipeline(tiny_config(root, tiny_run.base_model, Path(tiny_run.config.retrieval.cache_dir), models=["reclora"],
                             crm__name="din"))
    recommender = RecLoraRecommender.from_run(root, model=MODEL, device="cpu")
    assert (recommender.record.model.short_history, recommender.record.model.long_history) == ("semantic", "recent")
    assert recommender.record.lineage.retrieval_keys == {mode: plan_run(tiny_run.config).retrievals[mode].key
                                                         for mode in ("recent", "semantic")}
    key = _results(root)["models"][MODEL]["stages"]["score"]
    np.testing.assert_allclose(recommender.score(tiny_run.requests),
                               np.load(RunFolder(root).artifact("score", key).path / "scores.npy"), rtol=0, atol=ATOL)


def test_the_gate_reads_the_crm(tiny_run, recommender, other_run):
    """The trained gate mixes the meta-LoRAs differently per request, and the R_c of another CRM (the other run's)
    moves the scores far beyond the tolerance of the equality tests: a wrong CRM cannot go unnoticed."""
    from reclora_pipeline.crm import RcTable, load_crm

    scores = recommender.score(tiny_run.requests)
    features = ctr_features(recommender.view(tiny_run.requests), recommender.vocabulary)
    rc = RcTable.from_model(recommender.crm, features, progress=False).get(features.sample_id)
    with torch.no_grad():
        alpha = recommender.model.base_model.compute_gate(rc).numpy()
    assert alpha.shape == (24, 4) and alpha.std(axis=0).max() > 5e-4
    assert np.abs(alpha - 0.25).max() > 1e-2  # trained away from the uniform mix

    other_crm_dir = RunFolder(other_run).artifact("crm", _results(other_run)["models"][MODEL]["stages"]["crm"]).path
    wrong = copy.copy(recommender)
    wrong.crm = load_crm(other_crm_dir)
    assert np.abs(wrong.score(tiny_run.requests) - scores).max() > 100 * ATOL


# -- users and items outside the catalog ------------------------------------------------------------------------------
def test_other_users_new_users_and_short_histories(tiny_run, recommender):
    """Another user with the same history and target gets another R_c and profile, so another score; a user outside
    the catalog scores from a profile; a history of one or no items scores too."""
    request = tiny_run.requests[0]
    other_user = next(u for u in recommender.users["user_id"] if u != request["user_id"])
    profile = recommender.users.iloc[0].drop(["user_id", "zip_code"]).to_dict()  # ID fields may be left out
    scores = recommender.score([
        {**request, "user_id": other_user},
        {"user_id": "someone-new", "item_id": request["item_id"], "history": request["history"], "profile": profile},
        {"user_id": request["user_id"], "item_id": request["item_id"], "history": []},
        {"user_id": request["user_id"], "item_id": request["item_id"], "history": request["history"][-1:]},
    ])
    assert abs(scores[0] - tiny_run.scores[0]) > 1e-6
    assert np.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()
    view = recommender.view([{"user_id": request["user_id"], "item_id": request["item_id"], "history": []}])
    assert (view.long_items == -1).all() and (view.short_items == -1).all()  # nothing earlier: all padding


def test_a_new_user_reads_padding_for_its_id_fields(recommender):
    """The cold-start path of ``serving/requests.py``: the CRM reads the padding token (0) for a new user's id and for
    each pure ID field it lacks or whose value the vocabulary does not hold; its profile fields are encoded, and
    the prompt shows its profile."""
    catalog_user = recommender.users.iloc[0].to_dict()
    profile = {name: catalog_user[name] for name in ("gender", "age", "occupation")}
    item = recommender.items["item_id"].iloc[0]
    view = recommender.view([
        {"user_id": "new", "item_id": item, "profile": profile},
        {"user_id": "new", "item_id": item, "profile": {**profile, "zip_code": catalog_user["zip_code"]}},
        {"user_id": "new", "item_id": item, "profile": {**profile, "zip_code": "no-such-zip"}},
        {"user_id": catalog_user["user_id"], "item_id": item},
    ])
    assert view.padded_user_fields.tolist() == [[True, False, False, False, True], [True, False, False, False, False],
                                                [True, False, False, False, True], [False] * 5]
    fields = ctr_features(view, recommender.vocabulary).fields
    assert fields[0, 0] == 0 and fields[0, 4] == 0 and (fields[0, 1:4] == fields[3, 1:4]).all()
    assert fields[1, 4] == fields[3, 4] != 0 and fields[2, 4] == 0
    assert fields[3, 0] == recommender.vocabulary.encode("user_id", [catalog_user["user_id"]])[0]
    assert text_records(view)[0].profile == text_records(view)[3].profile


def test_a_catalog_users_profile_can_be_replaced(recommender):
    """Profile fields given for a catalog user replace the catalog's, in the CRM features and in the prompt."""
    user = recommender.users.iloc[0].to_dict()
    other = next(value for value in recommender.vocabulary.values["occupation"] if value != user["occupation"])
    item = recommender.items["item_id"].iloc[0]
    view = recommender.view([{"user_id": user["user_id"], "item_id": item},
                             {"user_id": user["user_id"], "item_id": item, "profile": {"occupation": other}}])
    assert view.users["occupation"].tolist() == [user["occupation"], other]
    fields = ctr_features(view, recommender.vocabulary).fields
    assert fields[1, 3] == recommender.vocabulary.encode("occupation", [other])[0] != fields[0, 3]
    assert (fields[1, [0, 1, 2, 4]] == fields[0, [0, 1, 2, 4]]).all()
    assert text_records(view)[1].profile["occupation"] == other


@pytest.mark.parametrize("requests, error, message", [
    ([], ValueError, "no requests"),
    ({"user_id": "1", "item_id": "2"}, ValueError, "wrap a single request in a list"),
    (["1"], ValueError, "request 0: expected a dict or a Request"),
    ([{"user_id": "1"}], ValueError, "request 0: 'item_id' is missing"),
    ([{"user_id": "1", "item_id": "2", "rating": 5}], ValueError, r"request 0: unknown fields \['rating'\]"),
    ([{"user_id": "1", "item_id": "2"}, {"user_id": "1", "item_id": "no-such-item"}], KeyError,
     "request 1: item_id 'no-such-item' is not in the catalog"),
    ([{"user_id": "1", "item_id": "2", "history": [("2", 4), ("nope", 3)]}], KeyError,
     r"request 0: history\[1\] item_id 'nope' is not in the catalog"),
    ([{"user_id": "1", "item_id": "2", "history": [("2", 4.5)]}], ValueError,
     r"request 0: history\[0\] rating 4.5 is not one of the ratings"),
    ([{"user_id": "1", "item_id": "2", "history": [("2", "good")]}], ValueError,
     r"request 0: history\[0\] rating 'good' is not a number"),
    ([{"user_id": "1", "item_id": "2", "history": ["2"]}], ValueError, r"request 0: history\[0\] must be an"),
    ([{"user_id": "1", "item_id": "2", "history": "2"}], ValueError, "request 0: history must be a list"),
    ([{"user_id": "stranger", "item_id": "2"}], KeyError, "request 0: user_id 'stranger' is not in the catalog"),
    ([{"user_id": "stranger", "item_id": "2", "profile": {"gender": "M"}}], ValueError,
     "request 0: profile of new user 'stranger' lacks"),
    ([{"user_id": "1", "item_id": "2", "profile": {"occupation": "astronaut"}}], KeyError,
     "request 0: profile field 'occupation' value 'astronaut' is not in the vocabulary"),
    ([{"user_id": "1", "item_id": "2", "profile": {"planet": "Mars"}}], ValueError,
     r"request 0: profile fields \['planet'\] are not user fields"),
    ([{"user_id": "1", "item_id": "2", "profile": "writer"}], ValueError, "request 0: profile must be a dict"),
    ([Request("1", "2", history=5)], ValueError, "request 0: history must be a list of .* got int"),
    ([Request("1", "2", history=(pair for pair in [("2", 4)]))], ValueError,
     "request 0: history must be a list of .* got generator"),
    ([{"user_id": "1", "item_id": "2"}, Request({"id": 1}, "2")], ValueError,
     "request 1: user_id must be a string .* got dict"),
    ([{"user_id": "1", "item_id": ["2"]}], ValueError, "request 0: item_id must be a string .* got list"),
])
def test_bad_requests_name_the_request_and_field(recommender, requests, error, message):
    with pytest.raises(error, match=message):
        recommender.view(requests)
    with pytest.raises(error, match=message):  # score checks before it loads or runs anything
        recommender.score(requests)


def test_no_history_is_an_empty_history_and_batch_sizes_below_one_are_refused(recommender):
    assert recommender.view([Request("1", "2", history=None)]).short_items.max() == -1
    requests = [{"user_id": "1", "item_id": "2"}]
    for batch_size in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=f"batch_size must be a positive integer .*got {batch_size!r}"):
            recommender.score(requests, batch_size=batch_size)


# -- the folder -------------------------------------------------------------------------------------------------------
def _results(root: Path) -> dict:
    return json.loads((Path(root) / "results.json").read_text())


def _leaf_keys(tree) -> set:
    if isinstance(tree, dict):
        return set(tree) | {key for value in tree.values() for key in _leaf_keys(value)}
    if isinstance(tree, list):
        return {key for value in tree for key in _leaf_keys(value)}
    return set()


def test_folder_holds_every_part_and_no_pickle(saved_folder, tiny_run):
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
    data = json.loads((saved_folder / "recommender.json").read_text())
    record = RecommenderRecord.from_dict(data)
    assert record.to_dict() == data  # typed: every entry is a field of the record
    assert data["format"] == "reclora-recommender" and data["model"] == {
        "name": MODEL, "method": "reclora", "short_history": "semantic", "long_history": "semantic"}
    # The run's settings are its resolved config tree, as the run wrote it.
    assert record.config == tiny_run.config
    assert record.config.retrieval.k_short == 3 and record.config.retrieval.k_long == 8
    assert record.config.crm.name == "sim" and record.base_model == HUB_BASE_MODEL
    assert data["answer_tokens"]["yes_token"] == " Yes" and data["answer_tokens"]["no_token"] == " No"
    # Each fact once: N_m, r and crm_dim live in adapter_config.json, the CRM's schema in crm/crm_config.json, the
    # history lengths in the config tree; nothing outside the tree repeats them.
    adapter = json.loads((saved_folder / "adapter_config.json").read_text())
    assert adapter["num_meta_loras"] == 4 and adapter["r"] == 2 and adapter["crm_dim"] == 16
    crm_config = json.loads((saved_folder / "crm" / "crm_config.json").read_text())
    assert crm_config["model_name"] == "sim" and crm_config["schema"]["history_length"] == 8
    outside_config = {key: value for key, value in data.items() if key != "config"}
    assert not _leaf_keys(outside_config) & {"num_meta_loras", "r", "crm_dim", "lora_alpha", "k_long", "k_short",
                                             "history_length", "vocab_size", "pca_dim"}
    assert "name" not in data["dataset"]  # the dataset's name is its spec's
    # The metrics are the run's table, each model once, as results.json has them.
    results = tiny_run.results()
    assert set(data["metrics"]) == set(results["models"]) == {"SIM", "LoRA (r=2)"} | {m for m, _, _ in HISTORIES}
    assert data["metrics"][MODEL]["auc"] == results["models"][MODEL]["auc"] and "auc" not in data
    assert data["reference_model"] == MODEL
    assert adapter["base_model_name_or_path"] == HUB_BASE_MODEL


def test_the_record_names_the_artifacts_it_was_built_from(saved_folder, tiny_run):
    """The lineage holds the stage keys the run's results name for the model, and digests of the parts."""
    from reclora_pipeline.artifacts import sha256_of_file as sha256_of
    from reclora_pipeline.crm import crm_fingerprint, load_crm
    from reclora_pipeline.model_identity import base_model_identity
    from reclora_pipeline.serving.recommender import (
        adapter_config_digest,
        catalog_digest,
        vectors_digest,
        vocabulary_digest,
    )

    lineage = json.loads((saved_folder / "recommender.json").read_text())["lineage"]
    stages = tiny_run.results()["models"][MODEL]["stages"]
    assert (lineage["tune_key"], lineage["rc_key"], lineage["crm_key"]) == (stages["tune"], stages["rc"],
                                                                            stages["crm"])
    folder = RunFolder(tiny_run.root)
    tune = folder.artifact("tune", stages["tune"])
    assert tune.upstream["rc"] == [stages["rc"]] and tune.upstream["data"] == [lineage["data_key"]]
    assert folder.artifact("rc", stages["rc"]).upstream["crm"] == [stages["crm"]]
    plan = plan_run(tiny_run.config)
    assert lineage["data_key"] == plan.data.key
    assert lineage["retrieval_keys"] == {"semantic": plan.retrievals["semantic"].key}
    assert tune.upstream["retrieval"] == [plan.retrievals["semantic"].key]
    assert lineage["dataset_fingerprint"] == tiny_run.dataset.fingerprint
    assert lineage["crm_fingerprint"] == folder.artifact("crm", stages["crm"]).summary["fingerprint"] == \
        crm_fingerprint(load_crm(saved_folder / "crm"))
    assert lineage["adapter_sha256"] == sha256_of(tune.path / "adapter" / "adapter_model.safetensors") == \
        sha256_of(saved_folder / "adapter_model.safetensors") == \
        tune.manifest["files"]["adapter/adapter_model.safetensors"]["sha256"]  # as recorded when it was written
    # Every file that changes the scores: the adapter's config too (as trained; publishing renames only its base).
    assert lineage["adapter_config_sha256"] == adapter_config_digest(
        json.loads((tune.path / "adapter" / "adapter_config.json").read_text())) == adapter_config_digest(
        json.loads((saved_folder / "adapter_config.json").read_text()))
    assert lineage["base_model_identity"] == base_model_identity(tiny_run.base_model) == \
        tune.manifest["inputs"]["llm"]["identity"] == tune.inputs_as(TuneInputs).llm.identity  # the content trained
    # on, not the Hub id the card names
    assert lineage["vocabulary_sha256"] == vocabulary_digest(FieldVocabulary.from_dataset(tiny_run.dataset))
    assert lineage["catalog_sha256"] == catalog_digest(tiny_run.dataset.users, tiny_run.dataset.items)
    assert lineage["item_vectors_sha256"] == vectors_digest(tiny_run.retrieval("semantic").item_vectors)


def test_saving_a_loaded_recommender_writes_the_same_folder(recommender, saved_folder, tmp_path):
    again = recommender.save_pretrained(tmp_path / "again")
    names = sorted(p.relative_to(saved_folder).as_posix() for p in saved_folder.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(again).as_posix() for p in again.rglob("*") if p.is_file())
    for name in names:
        assert (again / name).read_bytes() == (saved_folder / name).read_bytes(), name
    assert "RecLoRA" in repr(recommender) and "N_m 4" in repr(recommender)


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _truncate_vocabulary(folder: Path) -> None:
    """A consistent vocabulary with one title fewer: it no longer fits the CRM's embedding table."""
    vocabulary = FieldVocabulary.from_json(json.loads((folder / "vocabulary.json").read_text()))
    values = dict(vocabulary.values, title=vocabulary.values["title"][:-1])
    offsets, cursor = {}, 1
    for name in vocabulary.field_names:
        offsets[name], cursor = cursor, cursor + len(values[name])
    smaller = FieldVocabulary(vocabulary.field_names, values, offsets, vocabulary.rating_values, cursor)
    (folder / "vocabulary.json").write_text(json.dumps(smaller.to_json()))


def _other_num_meta_loras(folder: Path) -> None:
    """Replace the adapter by a consistent one with N_m = 8 (same crm_dim, rank and targets)."""
    from peft import get_peft_model

    import peft_reclora

    from support.tiny_models import make_tiny_llama  # the run's tiny Llama has the same attention shapes

    config = json.loads((folder / "adapter_config.json").read_text())
    model = get_peft_model(make_tiny_llama(), peft_reclora.RecLoraConfig(
        crm_dim=config["crm_dim"], r=config["r"], lora_alpha=config["lora_alpha"], num_meta_loras=8,
        gate_hidden_dim=config["gate_hidden_dim"], target_modules=config["target_modules"]))
    model.save_pretrained(str(folder / "other"))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(folder / "other" / name, folder / name)
    shutil.rmtree(folder / "other")


def _perturb_adapter(folder: Path) -> None:
    """The same shapes and config, other values: what a retrained or edited adapter looks like."""
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "adapter_model.safetensors"))
    key = next(name for name in weights if "fc2_weight" in name)
    weights[key] = weights[key] + 0.1
    save_file(weights, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})


def _item_vectors(folder: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    vectors = load_file(str(folder / "item_vectors.safetensors"))["item_vectors"]
    save_file({"item_vectors": change(vectors).contiguous()}, str(folder / "item_vectors.safetensors"))


def _catalog_csv(folder: Path, name: str, change) -> None:
    path = folder / "catalog" / f"{name}.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    change(table)
    table.to_csv(path, index=False)


def _swap_vocabulary_values(folder: Path) -> None:
    """A consistent vocabulary of the same size with two occupations swapped: every check of shapes passes."""
    def swap(vocabulary):
        values = vocabulary["values"]["occupation"]
        values[0], values[1] = values[1], values[0]

    _edit_json(folder / "vocabulary.json", swap)


BROKEN_PARTS = {
    "crm weights deleted": (lambda f: (f / "crm" / "crm_model.safetensors").unlink(), "CRM weights"),
    "crm config deleted": (lambda f: (f / "crm" / "crm_config.json").unlink(), "CRM config"),
    "crm config crm_dim": (lambda f: _edit_json(f / "crm" / "crm_config.json", lambda c: c.update(crm_dim=99)),
                           "crm_dim"),
    "vocabulary truncated": (_truncate_vocabulary, "vocabulary"),
    "vocabulary offsets": (lambda f: _edit_json(f / "vocabulary.json", lambda v: v["values"]["gender"].pop()),
                           "vocabulary"),
    "vocabulary deleted": (lambda f: (f / "vocabulary.json").unlink(), "vocabulary"),
    "adapter N_m": (_other_num_meta_loras, r"num_meta_loras \(N_m\) is 8, the run's config gives 4"),
    "adapter weights N_m": (lambda f: _edit_json(f / "adapter_config.json", lambda c: c.update(num_meta_loras=2)),
                            r"num_meta_loras \(N_m\): .*reclora_A has 8 rank slots"),
    "adapter crm_dim": (lambda f: _edit_json(f / "adapter_config.json", lambda c: c.update(crm_dim=8)),
                        r"crm_dim: the gate .* reads 16 inputs"),
    "adapter weights changed": (_perturb_adapter, "adapter: .* is not the adapter this recommender was made with"),
    "adapter temperature edited": (lambda f: _edit_json(f / "adapter_config.json",
                                                        lambda c: c.update(temperature=3.0)),
                                   "adapter config: .* a setting in it was changed"),
    "adapter mixing edited": (lambda f: _edit_json(f / "adapter_config.json", lambda c: c.update(mixing="weights")),
                              "adapter config: .* a setting in it was changed"),
    "adapter weights deleted": (lambda f: (f / "adapter_model.safetensors").unlink(), "adapter weights"),
    "item vectors rows": (lambda f: _item_vectors(f, lambda v: v[:-1]), "item vectors: shape"),
    "item vectors width": (lambda f: _item_vectors(f, lambda v: v[:, :-1]), "item vectors: 15 wide"),
    "item vectors deleted": (lambda f: (f / "item_vectors.safetensors").unlink(), "item vectors"),
    "catalog deleted": (lambda f: (f / "catalog" / "users.csv").unlink(), "user catalog"),
    "item catalog deleted": (lambda f: (f / "catalog" / "items.csv").unlink(), "item catalog"),
    "catalog value outside the vocabulary": (
        lambda f: _catalog_csv(f, "users", lambda u: u.__setitem__("occupation", "astronaut")),
        "vocabulary: field 'occupation' lacks values of catalog/users.csv"),
    "catalog user twice": (
        lambda f: _catalog_csv(f, "users", lambda u: u.__setitem__("user_id", u["user_id"].iloc[0])),
        "catalog: an item_id or user_id appears twice"),
    "catalog genres edited": (  # prompt text only, no CRM field: only the lineage sees it
        lambda f: _catalog_csv(f, "items", lambda i: i.loc.__setitem__((0, "genres"), "Western")),
        "catalog: .* are not the tables of the run"),
    "vocabulary reordered": (_swap_vocabulary_values, "vocabulary: vocabulary.json is not the token layout"),
    "item vectors reordered": (lambda f: _item_vectors(f, lambda v: v.flip(0)),
                               "item vectors: .* are not the vectors of the run's semantic retrieval"),
    "retriever K_long": (lambda f: _edit_json(f / "recommender.json",
                                              lambda c: c["config"]["retrieval"].update(k_long=5)), "K_long"),
    "lineage CRM": (lambda f: _edit_json(f / "recommender.json", lambda c: c["lineage"].update(crm_fingerprint="0")),
                    "CRM: .* is not the CRM the adapter was trained with"),
    "lineage adapter": (lambda f: _edit_json(f / "recommender.json",
                                             lambda c: c["lineage"].update(adapter_sha256="0")),
                        "adapter: .* is not the adapter this recommender was made with"),
    "lineage incomplete": (lambda f: _edit_json(f / "recommender.json", lambda c: c["lineage"].pop("crm_key")),
                           r"lineage has unknown entries \[\] / lacks \['crm_key'\]"),
    "record untyped entry": (lambda f: _edit_json(f / "recommender.json", lambda c: c["model"].update(n_m=4)),
                             r"model has unknown entries \['n_m'\]"),
    "record format version": (lambda f: _edit_json(f / "recommender.json", lambda c: c.update(format_version=1)),
                              "format_version 1"),
    "record config": (lambda f: _edit_json(f / "recommender.json", lambda c: c["config"]["crm"].update(nme="sim")),
                      "'config' is not a run config"),
    "record deleted": (lambda f: (f / "recommender.json").unlink(), "recommender config"),
    "record trained_dtype": (lambda f: _edit_json(f / "recommender.json",
                                                  lambda c: c.update(trained_dtype="manual_seed")),
                             "recommender.json trained_dtype must be one of float32, bfloat16, float16, got "
                             "'manual_seed'"),
    "record trained_dtype null": (lambda f: _edit_json(f / "recommender.json", lambda c: c.update(trained_dtype=None)),
                                  "recommender.json trained_dtype must be one of .* got None"),
    "record typed entry": (lambda f: _edit_json(f / "recommender.json", lambda c: c["answer_tokens"].update(
        yes_token_id="5")), "recommender.json answer_tokens.yes_token_id must be an integer, got '5'"),
    "record format version text": (lambda f: _edit_json(f / "recommender.json",
                                                        lambda c: c.update(format_version="x")),
                                   "recommender.json has format_version x"),
    "crm config truncated": (lambda f: (f / "crm" / "crm_config.json").write_text(
        (f / "crm" / "crm_config.json").read_text()[:40]), r"crm_config.json is not valid JSON"),
    "crm config embed_dim float": (lambda f: _edit_json(f / "crm" / "crm_config.json", lambda c: c[
        "hyper_parameters"].update(embed_dim=1e7)), r"crm_config.json: hyper_parameters.embed_dim must be positive"),
    # a terabyte of embeddings: refused by the weights' shapes before anything is allocated
    "crm config embed_dim huge": (lambda f: _edit_json(f / "crm" / "crm_config.json", lambda c: c[
        "hyper_parameters"].update(embed_dim=10**8)), r"crm_model.safetensors: .* has shape .* the embedding table"),
    "crm config crm_dim text": (lambda f: _edit_json(f / "crm" / "crm_config.json", lambda c: c.update(crm_dim="16")),
                                r"crm_config.json: crm_dim must be a positive integer, got '16'"),
    "adapter config without r": (lambda f: _edit_json(f / "adapter_config.json", lambda c: c.pop("r")),
                                 r"adapter config: .*adapter_config.json lacks the field 'r'"),
    "adapter config r text": (lambda f: _edit_json(f / "adapter_config.json", lambda c: c.update(r="8")),
                              r"adapter config: .*adapter_config.json field 'r' must be a positive integer"),
}


@pytest.mark.parametrize("part", list(BROKEN_PARTS))
def test_a_broken_part_is_named(saved_folder, tmp_path, part):
    breaks, message = BROKEN_PARTS[part]
    folder = Path(shutil.copytree(saved_folder, tmp_path / "copy"))
    breaks(folder)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        RecLoraRecommender.from_pretrained(folder, device="cpu")


def test_answer_tokens_of_another_tokenizer_are_refused(saved_folder, tiny_run, tmp_path):
    folder = Path(shutil.copytree(saved_folder, tmp_path / "copy"))
    _edit_json(folder / "recommender.json", lambda c: c["answer_tokens"].update(yes_token_id=1))
    recommender = RecLoraRecommender.from_pretrained(folder, base_model=tiny_run.base_model, device="cpu")
    with pytest.raises(ValueError, match="prompt answer tokens: .* adapter was trained with 1/"):
        recommender.score(tiny_run.requests[:1])


def test_an_adapter_without_weights_is_named_before_the_llm_loads(saved_folder, tiny_run, tmp_path, monkeypatch):
    import reclora_pipeline.serving.recommender

    folder = Path(shutil.copytree(saved_folder, tmp_path / "copy"))
    recommender = RecLoraRecommender.from_pretrained(folder, base_model=tiny_run.base_model, device="cpu")
    (folder / "adapter_model.safetensors").unlink()  # gone after the checks of loading, before the first score

    def no_llm(*args, **kwargs):
        raise AssertionError("the base LLM was loaded before the adapter folder was checked")

    monkeypatch.setattr(reclora_pipeline.serving.recommender, "load_base_model", no_llm)
    with pytest.raises(FileNotFoundError, match=f"{folder}' has adapter_config.json but no weights file"):
        recommender.load_model()


# -- parts of another run ---------------------------------------------------------------------------------------------
def test_a_crm_of_another_run_is_refused(saved_folder, other_run, tmp_path):
    """The other run (another CRM seed) publishes fine on its own; its CRM in this folder is refused, as its adapter
    is: the gate would read another R_c than it was trained on."""
    other = RecLoraRecommender.from_run(other_run, model=MODEL, device="cpu").save_pretrained(tmp_path / "other")
    mine = json.loads((saved_folder / "recommender.json").read_text())["lineage"]
    theirs = json.loads((other / "recommender.json").read_text())["lineage"]
    assert theirs["crm_key"] != mine["crm_key"] and theirs["data_key"] == mine["data_key"]
    assert RecLoraRecommender.from_pretrained(other, device="cpu").record.lineage.crm_key == theirs["crm_key"]

    folder = Path(shutil.copytree(saved_folder, tmp_path / "mixed-crm"))
    shutil.rmtree(folder / "crm")
    shutil.copytree(other / "crm", folder / "crm")
    with pytest.raises(ValueError, match=f"CRM: .* is not the CRM the adapter was trained with .*crm artifact "
                                         f"{mine['crm_key'][:16]}"):
        RecLoraRecommender.from_pretrained(folder, device="cpu")

    folder = Path(shutil.copytree(saved_folder, tmp_path / "mixed-adapter"))
    shutil.copyfile(other / "adapter_model.safetensors", folder / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=f"adapter: .* is not the adapter this recommender was made with "
                                         f"\\(tune artifact {mine['tune_key'][:16]}\\)"):
        RecLoraRecommender.from_pretrained(folder, device="cpu")


def test_a_run_whose_crm_was_swapped_is_refused(tiny_run, other_run, tmp_path):
    """``from_run`` follows the stage keys results.json names: an R_c table of another CRM than the one named, or a
    CRM artifact whose weights were replaced, is refused."""
    first_crm = tiny_run.results()["models"][MODEL]["stages"]["crm"]
    root = Path(shutil.copytree(other_run, tmp_path / "run", ignore=shutil.ignore_patterns("plots", "predictions")))
    results = _results(root)
    own_crm = results["models"][MODEL]["stages"]["crm"]
    assert own_crm != first_crm

    results["models"][MODEL]["stages"]["crm"] = first_crm  # the results name the first run's CRM
    (root / "results.json").write_text(json.dumps(results))
    with pytest.raises(ValueError, match="holds R_c of another CRM than"):
        RecLoraRecommender.from_run(root, model=MODEL)

    results["models"][MODEL]["stages"]["crm"] = own_crm
    (root / "results.json").write_text(json.dumps(results))
    folder = RunFolder(root)
    shutil.copyfile(folder.artifact("crm", first_crm).path / "crm_model.safetensors",
                    folder.artifact("crm", own_crm).path / "crm_model.safetensors")  # same size, other sha256
    with pytest.raises(ValueError, match="crm artifact .* is damaged: crm_model.safetensors is not the file that was "
                                         "written"):
        RecLoraRecommender.from_run(root, model=MODEL)


def test_only_reclora_models_of_finished_runs_are_published(tiny_run, tmp_path):
    for model in ("SIM", "LoRA (r=2)"):
        with pytest.raises(ValueError, match="only RecLoRA models"):
            RecLoraRecommender.from_run(tiny_run.root, model=model)
    with pytest.raises(FileNotFoundError, match="has no model 'nope'"):
        RecLoraRecommender.from_run(tiny_run.root, model="nope")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        RecLoraRecommender.from_pretrained(tiny_run.root / "no-such-folder")
    unfinished = tmp_path / "unfinished"  # a run that started with other settings and did not finish
    unfinished.mkdir()
    shutil.copyfile(tiny_run.root / "results.json", unfinished / "results.json")
    write_json_atomically(unfinished / "config.json", tiny_run.config.override({"tune.few_shot": 17}).to_dict())
    with pytest.raises(ValueError, match="did not finish"):
        RecLoraRecommender.from_run(unfinished)
