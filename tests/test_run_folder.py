"""Trusting a run folder against what changes beside it: the base LLM known by its content, one writer at a time,
only complete checkpoints resumed, artifacts verified by sha256, a table computed from the scores it writes, and no
file deleted that the pipeline did not write. Runs are tiny (recent histories, SIM, Zero-shot and RecLoRA on the tiny
Llama) and deterministic, so every difference below is real."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from reclora_pipeline.artifacts import LOCK_NAME, MANIFEST_NAME, RUN_MARKER, RunFolder, RunFolderError
from reclora_pipeline.config import RunConfig
from reclora_pipeline.metrics import auc
from reclora_pipeline.model_identity import base_model_identity
from reclora_pipeline.pipeline import run_pipeline
from reclora_pipeline.plan import plan_run
from reclora_pipeline.serving import RecLoraRecommender
from reclora_pipeline.trainer import discard_checkpoints, last_checkpoint

from support.pipeline_runs import assert_same_results, fast_config, table


MODELS = {"models": ["zero-shot", "reclora"], "crm__baselines": [], "tune__training__learning_rate": 5e-2}
LLM_STAGES = {("tune", "RecLoRA"), ("score", "Zero-shot"), ("score", "RecLoRA")}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def config_of(out, base_model, **changes):
    return fast_config(out, base_model, **{**MODELS, **changes})


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_base_model, one_torch_thread) -> Path:
    out = tmp_path_factory.mktemp("trust") / "base"
    run_pipeline(config_of(out, tiny_base_model))
    return out


def copy_of(base_run: Path, out: Path) -> Path:
    shutil.copytree(base_run, out)
    return out


def computed(result) -> set:
    return {node for node, action in result.actions().items() if action != "reused"}


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


# -- 1. the base model is known by its content ------------------------------------------------------------------------
def test_other_weights_at_the_same_path_recompute_exactly_the_llm_stages(base_run, tiny_base_model,
                                                                          other_tiny_base_model, tmp_path):
    llm = shutil.copytree(tiny_base_model, tmp_path / "llm")
    out = copy_of(base_run, tmp_path / "run")
    config = config_of(out, str(llm))
    assert computed(run_pipeline(config)) == LLM_STAGES  # another path: the LLM stages' keys name it
    before = table(out)
    for path in llm.iterdir():  # another checkpoint copied into the same folder
        path.unlink()
    for path in Path(other_tiny_base_model).iterdir():
        shutil.copy(path, llm / path.name)
    result = run_pipeline(config)
    assert computed(result) == LLM_STAGES  # and nothing else: the data, SIM and its R_c are reused
    assert table(out)["RecLoRA"] != before["RecLoRA"] and table(out)["SIM"] == before["SIM"]
    assert_same_results(out, run_pipeline(config_of(tmp_path / "fresh", other_tiny_base_model)).path.parent)


def test_the_encoding_cache_knows_every_weight(base_run, tiny_base_model, tmp_path):
    """Weights changed in a middle layer (the old fingerprint read only the first and last two tensors) are
    encoded again."""
    from reclora_pipeline.config import RetrievalConfig
    from reclora_pipeline.data import RecDataset
    from reclora_pipeline.retriever import encode_items

    config = config_of(base_run, tiny_base_model)
    dataset = RecDataset.load(RunFolder(base_run).artifact("data", plan_run(config).data.key).path)
    llm = shutil.copytree(tiny_base_model, tmp_path / "llm")
    settings = RetrievalConfig(cache_dir=str(tmp_path / "encodings"), batch_size=256, max_length=16)
    first = encode_items(dataset, settings, encoder=str(llm), progress=False)
    assert encode_items(dataset, settings, encoder=str(llm), progress=False).metadata["cache"] == "hit"
    weights = load_file(str(llm / "model.safetensors"))
    middle = sorted(weights)[len(weights) // 2]
    weights[middle] = weights[middle] * 1.5
    save_file(weights, str(llm / "model.safetensors"), metadata={"format": "pt"})
    again = encode_items(dataset, settings, encoder=str(llm), progress=False)
    assert again.metadata["cache"] == "miss" and again.key != first.key


@pytest.fixture(scope="module")
def same_shape_llm(tmp_path_factory, smollm2_dir) -> str:
    """The tiny Llama's architecture and tokenizer with other weights (another seed): another checkpoint."""
    from support.pipeline_runs import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("same-shape-llm"), smollm2_dir, seed=3)


def test_a_recommender_refuses_a_base_model_with_other_content(base_run, tiny_base_model, same_shape_llm, tmp_path,
                                                               caplog):
    """Same tokenizer, same answer-token ids, same shapes, other weights: refused with both identities named,
    unless overridden (and then logged)."""
    other_tiny_base_model = same_shape_llm
    recommender = RecLoraRecommender.from_run(base_run, base_model=other_tiny_base_model, device="cpu")
    trained, other = base_model_identity(tiny_base_model), base_model_identity(other_tiny_base_model)
    assert recommender.record.lineage.base_model_identity == trained != other
    with pytest.raises(ValueError, match=f"is {other}, but the adapter was trained on {trained}"):
        recommender.load_model()
    folder = RecLoraRecommender.from_run(base_run, device="cpu").save_pretrained(tmp_path / "published")
    with pytest.raises(ValueError, match="allow_other_base_model=True"):
        RecLoraRecommender.from_pretrained(folder, base_model=other_tiny_base_model, device="cpu").load_model()
    allowed = RecLoraRecommender.from_pretrained(folder, base_model=other_tiny_base_model, device="cpu",
                                                 allow_other_base_model=True)
    with caplog.at_level("WARNING"):
        allowed.load_model()
    assert f"is {other}, but the adapter was trained on {trained}" in caplog.text and "loaded anyway" in caplog.text
    assert RecLoraRecommender.from_pretrained(folder, base_model=tiny_base_model,
                                              device="cpu").check_base_model() == trained


# -- 2. one writer at a time ------------------------------------------------------------------------------------------
HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "w")
handle.write("pid 4242 (the first run)")
handle.flush()
fcntl.flock(handle, fcntl.LOCK_EX)
print("holding", flush=True)
time.sleep(600)
"""


def test_a_second_run_on_a_folder_in_use_is_refused_before_it_writes(base_run, tiny_base_model, tmp_path):
    out = copy_of(base_run, tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / LOCK_NAME)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        before = snapshot(out)
        with pytest.raises(RunFolderError, match=f"out: {out} is being written by another run.*last writer: pid 4242"):
            run_pipeline(config_of(out, tiny_base_model, eval__test_samples=30))
        with pytest.raises(RunFolderError, match="is being written by a run"):
            RecLoraRecommender.from_run(out, device="cpu")  # whose files may describe two runs meanwhile
        assert snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()
    result = run_pipeline(config_of(out, tiny_base_model))  # the lock went with the process
    assert set(result.actions().values()) == {"reused"}


def test_the_folder_level_files_describe_one_run(base_run, tiny_base_model, tmp_path):
    """While a run holds the folder, another is refused, so config.json, results.json, eval_samples.json and the
    predictions always come from the same run."""
    out = copy_of(base_run, tmp_path / "run")
    config = config_of(out, tiny_base_model)
    folder = RunFolder(out)
    with folder.writing():
        with pytest.raises(RunFolderError, match="is being written by another run"):
            run_pipeline(config_of(out, tiny_base_model, eval__test_samples=30))
    run_pipeline(config)
    results = json.loads(folder.results_path.read_text())
    written = RunConfig.from_dict(json.loads(folder.config_path.read_text()))
    assert results["config_digest"] == config.digest() == written.digest()
    for name, entry in results["models"].items():
        predictions = pd.read_csv(out / "predictions" / f"{name}.csv")
        assert len(predictions) == entry["n"] == results["eval_samples"]
        assert auc(predictions["label"], predictions["score"]) == pytest.approx(entry["auc"], abs=1e-6)


# -- 3. only complete checkpoints are resumed -------------------------------------------------------------------------
def write_checkpoint(folder: Path, step: int, skip=(), cut=()) -> Path:
    """A Trainer checkpoint as the Trainer writes one for a PEFT model (``skip``: files left out, ``cut``: files
    truncated)."""
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.ones(2, 2) * step}, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text("{}")
    torch.save({"state": {}, "param_groups": [{"lr": 0.1}]}, path / "optimizer.pt")
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    torch.save({"python": [1, 2], "numpy": np.random.get_state(), "cpu": torch.get_rng_state()},
               path / "rng_state.pth")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    for name in skip:
        (path / name).unlink()
    for name in cut:
        (path / name).write_bytes((path / name).read_bytes()[:10])
    return path


def test_only_a_complete_checkpoint_is_resumed(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    complete = write_checkpoint(checkpoints, 1)
    write_checkpoint(checkpoints, 2, cut=["optimizer.pt"])
    write_checkpoint(checkpoints, 3, skip=["optimizer.pt", "scheduler.pt"])  # half deleted: its state is still there
    write_checkpoint(checkpoints, 4, skip=["adapter_model.safetensors"])
    said = []
    assert last_checkpoint(checkpoints, log=said.append) == complete
    assert [message.split(" (")[0] for message in said] == [
        f"checkpoint {checkpoints}/checkpoint-{step} is incomplete" for step in (4, 3, 2)]
    assert "no adapter_model.safetensors" in said[0] and "no optimizer.pt" in said[1]
    assert "optimizer.pt cannot be read" in said[2]
    assert last_checkpoint(checkpoints, processes=2, log=said.append) is None  # one RNG state per process needed
    assert last_checkpoint(checkpoints, log=said.append, discard=True) == complete
    assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint-1"]  # never a dead end again


def test_removing_checkpoints_never_leaves_a_resumable_half(tmp_path, monkeypatch):
    checkpoints = tmp_path / "checkpoints"
    write_checkpoint(checkpoints, 1)
    write_checkpoint(checkpoints, 2)

    def killed_midway(path, *args, **kwargs):  # the process dies after removing one file
        next(Path(path).rglob("optimizer.pt")).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        discard_checkpoints(checkpoints)
    assert not checkpoints.exists() and last_checkpoint(checkpoints) is None


# -- 4. artifacts verified by content ---------------------------------------------------------------------------------
def test_same_size_scores_swapped_in_are_recomputed(base_run, tiny_base_model, tmp_path, capsys):
    out = copy_of(base_run, tmp_path / "run")
    config = config_of(out, tiny_base_model)
    score = RunFolder(out).artifact_dir(plan_run(config).llm_models[1].score)
    scores = np.load(score / "scores.npy")
    np.save(score / "scores.npy", scores[::-1].copy())  # the same size, other values
    capsys.readouterr()
    result = run_pipeline(config)
    assert "scores.npy is not the file that was written (its sha256 differs)" in capsys.readouterr().out
    assert computed(result) == {("score", "RecLoRA")}
    assert_same_results(out, base_run)


def test_the_table_is_computed_from_the_scores_it_writes(base_run, tiny_base_model, tmp_path):
    """A summary in a manifest is not a source of numbers: the table, its intervals and the predictions all come
    from the scores."""
    out = copy_of(base_run, tmp_path / "run")
    config = config_of(out, tiny_base_model)
    manifest_path = RunFolder(out).artifact_dir(plan_run(config).llm_models[1].score) / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["summary"].update(auc=0.99, logloss=0.01)
    manifest_path.write_text(json.dumps(manifest))
    run_pipeline(config)
    entry = json.loads((out / "results.json").read_text())["models"]["RecLoRA"]
    predictions = pd.read_csv(out / "predictions" / "RecLoRA.csv")
    assert entry["auc"] == pytest.approx(auc(predictions["label"], predictions["score"]), abs=1e-6)
    assert entry["auc"] == entry["auc_ci"]["estimate"] and table(out) == table(base_run)


def perturb_adapter(adapter: Path) -> None:
    """The same shapes, other values (another adapter of the same settings)."""
    from safetensors import safe_open

    path = str(adapter / "adapter_model.safetensors")
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
    size = Path(path).stat().st_size
    save_file({key: value + 0.25 for key, value in load_file(path).items()}, path, metadata=metadata)
    assert Path(path).stat().st_size == size


def test_an_adapter_swapped_into_the_run_is_refused_by_from_run_and_rebuilt_by_a_rerun(base_run, tiny_base_model,
                                                                                      tmp_path):
    out = copy_of(base_run, tmp_path / "run")
    config = config_of(out, tiny_base_model)
    tune = RunFolder(out).artifact_dir(plan_run(config).llm_models[1].tune)
    perturb_adapter(tune / "adapter")
    with pytest.raises(ValueError, match="adapter/adapter_model.safetensors is not the file that was written"):
        RecLoraRecommender.from_run(out, device="cpu")
    result = run_pipeline(config)
    assert result.actions()[("tune", "RecLoRA")] == "rebuilt"
    assert RecLoraRecommender.from_run(out, device="cpu").record.lineage.adapter_sha256 == \
        json.loads((tune / MANIFEST_NAME).read_text())["files"]["adapter/adapter_model.safetensors"]["sha256"]


def test_the_lineage_covers_the_adapter_config(base_run, tmp_path):
    folder = RecLoraRecommender.from_run(base_run, device="cpu").save_pretrained(tmp_path / "published")
    assert RecLoraRecommender.from_pretrained(folder, device="cpu")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["temperature"] = float(config.get("temperature") or 1.0) * 2
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="adapter config: .* a setting in it was changed"):
        RecLoraRecommender.from_pretrained(folder, device="cpu")


# -- 5. never delete a file the pipeline did not write ----------------------------------------------------------------
def test_out_must_be_empty_absent_or_a_run_folder(tiny_base_model, tmp_path):
    mine = tmp_path / "mine"
    (mine / "predictions").mkdir(parents=True)
    (mine / "predictions" / "important.csv").write_text("a,b\n1,2\n")
    (mine / "results.md").write_text("my notes")
    before = snapshot(mine)
    with pytest.raises(RunFolderError, match=f"out: {mine} is neither empty nor a run folder of this tool"):
        run_pipeline(config_of(mine, tiny_base_model))
    assert snapshot(mine) == before and not (mine / RUN_MARKER).exists()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        run_pipeline(config_of(tmp_path / "a-file", tiny_base_model))
    empty = tmp_path / "empty"
    empty.mkdir()
    run_pipeline(config_of(empty, tiny_base_model, models=["zero-shot"], crm__baselines=[]))
    assert (empty / RUN_MARKER).is_file() and (empty / "results.json").is_file()


def test_the_report_removes_only_files_it_wrote(base_run, tiny_base_model, tmp_path):
    out = copy_of(base_run, tmp_path / "run")
    (out / "predictions" / "my analysis.csv").write_text("kept")
    (out / "plots" / "my plot.png").write_bytes(b"kept")
    run_pipeline(config_of(out, tiny_base_model, models=["reclora"]))  # Zero-shot leaves the table
    assert not (out / "predictions" / "Zero-shot.csv").exists()  # written by an earlier table of this folder
    assert (out / "predictions" / "my analysis.csv").read_text() == "kept"
    assert (out / "plots" / "my plot.png").read_bytes() == b"kept"
    assert sorted(path.name for path in (out / "predictions").iterdir()) == [
        "RecLoRA.csv", "SIM.csv", "my analysis.csv"]


def test_a_damaged_artifact_behind_a_symlink_is_refused_cleanly(base_run, tiny_base_model, tmp_path):
    out = copy_of(base_run, tmp_path / "run")
    config = config_of(out, tiny_base_model)
    artifact = RunFolder(out).artifact_dir(plan_run(config).llm_models[1].score)
    elsewhere = shutil.move(artifact, tmp_path / "kept-elsewhere")
    artifact.symlink_to(elsewhere, target_is_directory=True)
    assert set(run_pipeline(config).actions().values()) == {"reused"}  # an intact one is read through the link
    scores = Path(elsewhere) / "scores.npy"
    scores.write_bytes(scores.read_bytes()[:-8])
    before = snapshot(Path(elsewhere))
    with pytest.raises(RunFolderError, match=f"{artifact} is a symbolic link .* remove the link"):
        run_pipeline(config)
    assert snapshot(Path(elsewhere)) == before and artifact.is_symlink()


def test_a_hub_id_is_known_by_its_commit(tmp_path, monkeypatch):
    """Without the Hub (offline, or the repo unknown to it), a Hub id is the commit of its local snapshot, so a new
    snapshot of the same id is another model; an id neither the Hub nor the cache knows is an error naming it."""
    import huggingface_hub

    from reclora_pipeline.model_identity import UnknownBaseModel

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    repo = tmp_path / "hub" / "models--someone--tiny-llm"

    def snapshot(commit: str) -> None:
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)

    snapshot("a" * 40)
    assert base_model_identity("someone/tiny-llm") == f"hub:someone/tiny-llm@{'a' * 40}"
    snapshot("b" * 40)
    assert base_model_identity("someone/tiny-llm") == f"hub:someone/tiny-llm@{'b' * 40}"
    with pytest.raises(UnknownBaseModel, match="'someone/unknown' is not a local folder"):
        base_model_identity("someone/unknown")


def test_finished_files_get_the_mode_an_ordinary_write_gives(tmp_path):
    """Atomic writes stage in a mkstemp file (owner-only); the finished file must not stay unreadable to the group."""
    import os
    import stat

    from reclora_pipeline.artifacts import write_json_atomically

    umask = os.umask(0)
    os.umask(umask)
    written = write_json_atomically(tmp_path / "results.json", {"auc": 0.5})
    assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask
