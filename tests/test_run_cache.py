"""The run folder's one cache, end to end on two tiny LLMs: reuse, invalidation, interrupted runs and damaged
artifacts.

Every rerun here is checked against a fresh run of the same settings in a new folder, exactly (the table, every
prediction, the evaluation samples). Runs use semantic retrieval, so the retrieval depends on the LLM (its item
encodings) and SIM, its R_c and RecLoRA depend on the retrieval; DIN reads the recent history, which no LLM setting
reaches. Interrupted runs are child processes killed with SIGKILL at a chosen call (``support.killed_run``).
"""

import json
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from reclora_pipeline.artifacts import BUILDING_PREFIX, MANIFEST_NAME, RunFolder, read_json
from reclora_pipeline.data import embedded_ml100k_dir
from reclora_pipeline.pipeline import run_pipeline
from reclora_pipeline.plan import plan_run

from support.pipeline_runs import assert_same_results, fast_config, kill_server, start_killed, start_run, table


BASE = {"retrieval.mode": "semantic", "retrieval.pca_dim": 16, "crm.baselines": ["din"],
        "models": ["zero-shot", "reclora"]}
OTHER_MODEL = "<the other tiny LLM>"  # stands for other_tiny_base_model in the changes below
SHRUNK_SOURCE = "<ml-100k without every tenth rating>"

DATA = ("data", "ml-100k")
SEMANTIC, RECENT = ("retrieval", "semantic"), ("retrieval", "recent")
SIM, DIN, RC = ("crm", "SIM (semantic)"), ("crm", "DIN (recent)"), ("rc", "SIM (semantic)")
TUNE = ("tune", "RecLoRA")
SCORES = {("score", name) for name in ("SIM", "DIN", "Zero-shot", "RecLoRA")}
EVERY_STAGE = {DATA, SEMANTIC, RECENT, SIM, DIN, RC, TUNE} | SCORES
# What the semantic retrieval reaches: SIM (its long history), R_c, every LLM model (their prompts), and their scores.
SEMANTIC_AND_DOWNSTREAM = {SEMANTIC, SIM, RC, TUNE} | SCORES - {("score", "DIN")}

# name: (changed settings, the stages the rerun computes; all others are reused)
CHANGES = {
    "base_model": ({"llm.base_model": OTHER_MODEL}, SEMANTIC_AND_DOWNSTREAM),
    "data_setting": ({"data.min_history": 6}, EVERY_STAGE),
    "data_source": ({"data.source": SHRUNK_SOURCE}, EVERY_STAGE),
    "pca_dim": ({"retrieval.pca_dim": 8}, SEMANTIC_AND_DOWNSTREAM),
    "crm_setting": ({"crm.training.learning_rate": 3e-3}, {SIM, DIN, RC, TUNE} | SCORES - {("score", "Zero-shot")}),
    "adapter_key": ({"tune.adapter.mixing": "weights"}, {TUNE, ("score", "RecLoRA")}),
    "eval_setting": ({"eval.test_samples": 30}, SCORES),
}


# name: (changed settings, target killed, when); each starts from a copy of the base run's folder.
KILLS = {
    # after the first array of the retrieval reached the disk
    "retrieval_written": ({"retrieval.pca_dim": 8}, "numpy.lib.format:write_array",
                          {"calls": 2, "inside": "reclora_pipeline.retriever:RetrievalResult.save"}),
    "crm_training": ({"crm.training.learning_rate": 3e-3}, "reclora_pipeline.crm.train:_evaluate_tensors",
                     {"calls": 1}),  # SIM, at the end of its first epoch
    "checkpoint_written": ({"tune.training.save_steps": 1}, "transformers.trainer:Trainer._save_rng_state",
                           {"calls": 2}),  # RecLoRA's second checkpoint: weights and optimizer written, state not
    "checkpoints_removed": ({"tune.training.save_steps": 1}, "os:unlink",
                            {"calls": 3, "inside": "reclora_pipeline.stages.tune:discard_checkpoints"}),
    # the adapter is trained, and its checkpoints are being removed: two files gone
    "before_scoring": ({"tune.adapter.mixing": "weights"}, "reclora_pipeline.stages.score:score_llm",
                       {"calls": 2}),  # Zero-shot's scoring, then RecLoRA's
    "while_scoring": ({"tune.adapter.mixing": "weights"}, "reclora_pipeline.stages.score:score_yes_probability",
                      {"when": "after", "calls": 1}),  # RecLoRA's scores computed, not yet written
    "before_results": ({"eval.test_samples": 30}, "reclora_pipeline.stages.report:markdown",
                       {"when": "after", "calls": 1}),  # predictions written, results.md and results.json not
}


class Runs:
    """The base run, fresh runs of changed settings (each in a new folder, computed once) and the killed runs.

    The base run is computed here; the fresh and killed runs are started at once in the background (a child of the
    kill server each, on the second core) and waited for by the tests that read them."""

    def __init__(self, root: Path, model: str, other_model: str, shrunk_source: str):
        self.root, self.model = root, model
        self.stand_ins = {OTHER_MODEL: other_model, SHRUNK_SOURCE: shrunk_source}
        self.fresh_runs: dict = {}
        self.kills: dict = {}

    def start(self) -> None:
        kill_server()  # its imports overlap the base run
        self.fresh()
        for changes, _ in CHANGES.values():
            self.fresh(changes, wait=False)
        for name, (changes, target, how) in KILLS.items():
            config = self.config(self.copy_of_base(self.root / f"killed-{name}"), changes)
            self.kills[name] = config, start_killed(config, target, **how)

    def config(self, out, changes=None):
        """The base settings with ``changes``; item encodings are cached next to ``out``."""
        changes = {path: self.stand_ins.get(value, value) if isinstance(value, str) else value
                   for path, value in (changes or {}).items()}
        return fast_config(out, self.model).override({**BASE, "retrieval.cache_dir": f"{out}-encodings", **changes})

    def fresh(self, changes=None, *, wait: bool = True) -> Path:
        """The folder of a fresh run of the base settings with ``changes`` (the base run is computed in this
        process, the others by the kill server)."""
        name = json.dumps(changes or {}, sort_keys=True)
        if name not in self.fresh_runs:
            out = self.root / f"fresh-{len(self.fresh_runs)}"
            if changes:
                self.fresh_runs[name] = out, start_run(self.config(out, changes))
            else:
                assert set(run_pipeline(self.config(out)).actions().values()) == {"built"}
                self.fresh_runs[name] = out, None
        out, child = self.fresh_runs[name]
        if wait and child is not None:
            assert child.wait() == 0, f"the fresh run of {name} failed"
        return out

    def copy_of_base(self, out: Path) -> Path:
        """A copy of the base run's folder (and its item encodings) at ``out``."""
        base = self.fresh()
        shutil.copytree(base, out, symlinks=True)
        shutil.copytree(f"{base}-encodings", f"{out}-encodings")
        return out

    def killed(self, name: str):
        """The config and folder of a killed run, once it was killed."""
        config, child = self.kills[name]
        assert child.wait() == -signal.SIGKILL, f"the run was not killed at {KILLS[name][1]}"
        return config, RunFolder(config.out)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny models gain nothing from a second thread, and on a busy two-core machine two threads wait for each
    other (runs several times slower); the kill server's children use this process's count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def shrunk_source(tmp_path_factory):
    """The embedded MovieLens-100K files with every tenth rating left out: another data source."""
    folder = tmp_path_factory.mktemp("ml-100k-shrunk")
    for path in embedded_ml100k_dir().iterdir():
        shutil.copy(path, folder / path.name)
    inter = folder / "ml-100k.inter"
    header, *rows = inter.read_text().splitlines()
    inter.write_text("\n".join([header] + [row for i, row in enumerate(rows) if i % 10 != 9]) + "\n")
    return str(folder)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_base_model, other_tiny_base_model, shrunk_source, one_torch_thread):
    runs = Runs(tmp_path_factory.mktemp("runs"), tiny_base_model, other_tiny_base_model, shrunk_source)
    runs.start()
    yield runs
    kill_server().close()  # and what no selected test waited for


def computed(result) -> set:
    return {node for node, action in result.actions().items() if action != "reused"}


def changed_nodes(before, after) -> set:
    """Nodes of ``after`` whose key ``before`` does not have."""
    old = before.nodes()
    return {node_id for node_id, node in after.nodes().items() if node_id not in old or old[node_id].key != node.key}


def assert_finished(config, result) -> None:
    """Every stage of ``config`` is a finished artifact of its key (no build folder left for it), and every stage the
    run used was read from a finished artifact, never from a build folder."""
    folder = RunFolder(config.out)
    used = {(event.stage, event.key): Path(event.path) for event in result.stages}
    for node in plan_run(config).nodes().values():
        artifact = folder.artifact(node.stage, node.key)
        assert used[node.stage, node.key] == artifact.path
        assert not folder.building_dir(node).exists(), node
    assert not any(part.startswith(BUILDING_PREFIX) for path in used.values() for part in path.parts)


# -- reuse and invalidation -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change", list(CHANGES))
def test_rerun_with_a_changed_setting_gives_what_a_fresh_run_gives(change, runs, tmp_path):
    changes, expected = CHANGES[change]
    base = runs.fresh()
    out = runs.copy_of_base(tmp_path / "run")
    config = runs.config(out, changes)
    result = run_pipeline(config)
    assert computed(result) == expected
    assert computed(result) == changed_nodes(plan_run(runs.config(out)), plan_run(config))
    assert set(result.actions().values()) <= {"built", "reused"}
    assert_finished(config, result)
    assert table(out) != table(base)  # the change reaches the table
    assert_same_results(out, runs.fresh(changes))
    # The earlier settings' artifacts are all still there: going back computes nothing and gives the base table.
    again = run_pipeline(runs.config(out))
    assert set(again.actions().values()) == {"reused"}
    assert_same_results(out, base)


def test_a_base_model_change_reaches_the_semantic_retrieval_and_everything_it_feeds(runs, tmp_path):
    """SIM reads the semantic retrieval, which the LLM encodes: another LLM retrains SIM and so recomputes R_c and
    retrains RecLoRA, while DIN (recent history) stays; in recent mode the LLM reaches no retrieval and no CRM."""
    config = runs.config(tmp_path / "run")
    other = runs.config(tmp_path / "run", {"llm.base_model": OTHER_MODEL})
    before, after = plan_run(config), plan_run(other)
    assert after.retrievals["semantic"].inputs.encoder.base_model == runs.stand_ins[OTHER_MODEL]
    assert changed_nodes(before, after) == SEMANTIC_AND_DOWNSTREAM
    tune, rc, crm = after.llm_models[1].tune, after.rcs["sim", "semantic"], after.crms["sim", "semantic"]
    assert [node.key for node in tune.upstream if node.stage == "rc"] == [rc.key]
    assert [node.key for node in rc.upstream if node.stage == "crm"] == [crm.key]
    assert [node.key for node in crm.upstream if node.stage == "retrieval"] == [after.retrievals["semantic"].key]
    recent = {"retrieval.mode": "recent"}
    moved = changed_nodes(plan_run(runs.config(tmp_path / "run", recent)),
                          plan_run(runs.config(tmp_path / "run", {**recent, "llm.base_model": OTHER_MODEL})))
    assert moved == {TUNE, ("score", "Zero-shot"), ("score", "RecLoRA")}


# -- interrupted runs -------------------------------------------------------------------------------------------------
def test_kill_while_the_retrieval_is_written(runs):
    """A retrieval.npz cut short would fail every later run (an EOFError naming no file): the bytes written so far
    are under a temporary name in the build folder, which no run reads as finished."""
    config, folder = runs.killed("retrieval_written")
    node = plan_run(config).retrievals["semantic"]
    partial = list(folder.building_dir(node).glob(".retrieval.npz.*"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0
    assert not folder.artifact_dir(node).exists()
    with pytest.raises(FileNotFoundError, match="holds no finished retrieval artifact"):
        folder.artifact("retrieval", node.key)

    result = run_pipeline(config)
    assert computed(result) == SEMANTIC_AND_DOWNSTREAM
    assert_finished(config, result)
    assert_same_results(config.out, runs.fresh(KILLS["retrieval_written"][0]))


def test_kill_during_crm_training(runs):
    config, folder = runs.killed("crm_training")
    node = plan_run(config).crms["sim", "semantic"]
    assert folder.building_dir(node).is_dir() and not folder.artifact_dir(node).exists()

    result = run_pipeline(config)
    assert computed(result) == CHANGES["crm_setting"][1]
    assert_finished(config, result)
    assert_same_results(config.out, runs.fresh(KILLS["crm_training"][0]))


def test_kill_while_a_tune_checkpoint_is_written(runs, capsys):
    """Tuning resumes from the last complete checkpoint in its build folder (the same key: the same settings), not
    from the half-written one, and ends where an uninterrupted tuning ends."""
    config, folder = runs.killed("checkpoint_written")
    tune = plan_run(config).llm_models[1].tune
    checkpoints = folder.building_dir(tune) / "checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert not (checkpoints / "checkpoint-2" / "trainer_state.json").exists()
    capsys.readouterr()

    result = run_pipeline(config)
    assert "resuming RecLoRA from its last checkpoint (checkpoint-1)" in capsys.readouterr().out
    assert computed(result) == {TUNE, ("score", "RecLoRA")}
    assert_finished(config, result)
    assert not (folder.artifact_dir(tune) / "checkpoints").exists()
    assert folder.artifact("tune", tune.key).summary["resumed_from"] == "checkpoint-1"
    assert_same_results(config.out, runs.fresh(KILLS["checkpoint_written"][0]))


def test_kill_while_the_checkpoints_are_removed(runs, capsys):
    """A checkpoint half removed (its trainer state still there, its optimizer gone) would be resumed with a
    restarted schedule: the removal first renames the folder, so no resumable-looking half is ever left, and the rerun
    trains from the start, as an uninterrupted run does."""
    config, folder = runs.killed("checkpoints_removed")
    tune = plan_run(config).llm_models[1].tune
    building = folder.building_dir(tune)
    assert not (building / "checkpoints").exists()
    assert [path.name.split("-")[1] for path in building.glob(".discarded-checkpoints-*")] == ["checkpoints"]
    capsys.readouterr()

    result = run_pipeline(config)
    assert "resuming" not in capsys.readouterr().out
    assert computed(result) == {TUNE, ("score", "RecLoRA")}
    assert_finished(config, result)
    assert folder.artifact("tune", tune.key).summary["resumed_from"] is None
    assert not any(".discarded" in name for name in folder.artifact("tune", tune.key).manifest["files"])
    assert_same_results(config.out, runs.fresh(KILLS["checkpoints_removed"][0]))


def test_kill_between_the_tune_artifact_and_its_scoring(runs):
    """The finished adapter is kept and scored; it is not trained again."""
    config, folder = runs.killed("before_scoring")
    reclora = plan_run(config).llm_models[1]
    assert folder.artifact("tune", reclora.tune.key)
    assert not folder.artifact_dir(reclora.score).exists() and not folder.building_dir(reclora.score).exists()

    result = run_pipeline(config)
    assert result.actions()[TUNE] == "reused" and computed(result) == {("score", "RecLoRA")}
    assert_finished(config, result)
    assert_same_results(config.out, runs.fresh(KILLS["before_scoring"][0]))


def test_kill_during_scoring_of_a_changed_rerun(runs):
    """The new adapter never ends up under the old results: the old table still names the old adapter (which is
    still there), the next run scores the new one, and the old settings still get the old table."""
    base = runs.fresh()
    config, folder = runs.killed("while_scoring")
    reclora = plan_run(config).llm_models[1]
    assert folder.building_dir(reclora.score).is_dir() and not folder.artifact_dir(reclora.score).exists()
    old = json.loads(folder.results_path.read_text())["models"]["RecLoRA"]["stages"]
    assert old == json.loads((base / "results.json").read_text())["models"]["RecLoRA"]["stages"]
    assert old["tune"] != reclora.tune.key and folder.artifact("tune", old["tune"])
    assert folder.artifact("tune", reclora.tune.key)  # the new adapter, finished, in no table yet

    result = run_pipeline(config)
    assert computed(result) == {("score", "RecLoRA")}
    assert_finished(config, result)
    assert_same_results(config.out, runs.fresh(KILLS["while_scoring"][0]))
    assert set(run_pipeline(runs.config(config.out)).actions().values()) == {"reused"}
    assert_same_results(config.out, base)


def test_kill_just_before_the_results_are_written(runs):
    """Every score is finished; the new predictions are written, so the previous table is gone (set aside whole in
    results_previous.json), never left beside them; the next run computes nothing."""
    base = runs.fresh()
    config, folder = runs.killed("before_results")
    assert not folder.results_path.exists() and not (folder.root / "results.md").exists()
    assert {name: {key: entry[key] for key in ("auc", "logloss", "n", "kind")} for name, entry in
            json.loads((folder.root / "results_previous.json").read_text()).items()} == table(base)
    assert len((folder.root / "predictions" / "RecLoRA.csv").read_text().splitlines()) == 1 + 30
    plan = plan_run(config)
    for model in plan.crm_models + plan.llm_models:
        assert folder.artifact("score", model.score.key)

    result = run_pipeline(config)
    assert set(result.actions().values()) == {"reused"}
    assert_finished(config, result)
    assert_same_results(config.out, runs.fresh(KILLS["before_results"][0]))


def test_a_build_folder_is_never_taken_as_finished(runs, tmp_path):
    """A build killed after its manifest was written but before the rename looks complete; it is built again."""
    config = runs.config(runs.copy_of_base(tmp_path / "run"))
    folder = RunFolder(config.out)
    for node in (plan_run(config).crms["sim", "semantic"], plan_run(config).llm_models[1].score):
        folder.artifact_dir(node).rename(folder.building_dir(node))
        assert (folder.building_dir(node) / MANIFEST_NAME).is_file()
        with pytest.raises(FileNotFoundError, match=re.escape(str(folder.stage_root(node.stage)))):
            folder.artifact(node.stage, node.key)
    result = run_pipeline(config)
    assert computed(result) == {SIM, ("score", "RecLoRA")}
    assert_finished(config, result)
    assert_same_results(config.out, runs.fresh())


# -- damaged artifacts ------------------------------------------------------------------------------------------------
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def scramble(path: Path) -> None:
    """The same size, other bytes: only the sha256 recorded when it was written tells."""
    path.write_bytes(bytes(255 - byte for byte in path.read_bytes()))


# name: (stage node, file of its artifact, damage, what the log says)
DAMAGES = {
    "data_arrays_truncated": (DATA, "interactions.npz", truncate, "interactions.npz has"),
    "retrieval_arrays_emptied": (SEMANTIC, "retrieval.npz", empty, "retrieval.npz has 0 bytes"),
    "retrieval_arrays_scrambled": (SEMANTIC, "retrieval.npz", scramble, "retrieval.npz is not the file that was"),
    "scores_truncated": (("score", "RecLoRA"), "scores.npy", truncate, "scores.npy has"),
    "scores_scrambled": (("score", "SIM"), "scores.npy", scramble, "its sha256 differs"),
    "crm_manifest_truncated": (SIM, MANIFEST_NAME, truncate, "is not the manifest of key"),
    "rc_scrambled": (RC, "rc.safetensors", scramble, "rc.safetensors is not the file that was written"),
    "adapter_emptied": (TUNE, "adapter/adapter_model.safetensors", empty, "adapter_model.safetensors has 0 bytes"),
    "adapter_scrambled": (TUNE, "adapter/adapter_model.safetensors", scramble, "its sha256 differs"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_artifact_is_recomputed_and_its_path_logged(damage, runs, tmp_path, capsys):
    node_id, name, spoil, says = DAMAGES[damage]
    config = runs.config(runs.copy_of_base(tmp_path / "run"))
    node = plan_run(config).nodes()[node_id]
    folder = RunFolder(config.out)
    spoil(folder.artifact_dir(node) / name)
    capsys.readouterr()

    result = run_pipeline(config)
    log = capsys.readouterr().out
    assert f"{folder.artifact_dir(node)} is damaged" in log and says in log
    assert computed(result) == {node_id} and result.actions()[node_id] == "rebuilt"  # same key: nothing downstream
    assert_finished(config, result)
    assert_same_results(config.out, runs.fresh())


def test_a_truncated_results_file_is_replaced_and_named(runs, tmp_path, capsys):
    config = runs.config(runs.copy_of_base(tmp_path / "run"))
    folder = RunFolder(config.out)
    truncate(folder.results_path)
    with pytest.raises(ValueError, match=re.escape(f"{folder.results_path} is not valid JSON")):
        read_json(folder.results_path, "run results")  # what every reader of results.json goes through
    capsys.readouterr()

    result = run_pipeline(config)
    assert f"{folder.results_path} is not a readable results file" in capsys.readouterr().out
    assert set(result.actions().values()) == {"reused"}
    assert_same_results(config.out, runs.fresh())


# -- lineage ----------------------------------------------------------------------------------------------------------
def test_each_artifact_records_what_it_was_built_from(runs):
    base = runs.fresh()
    config = runs.config(base)
    plan, folder = plan_run(config), RunFolder(base)
    reclora = plan.llm_models[1]
    tune, rc = folder.artifact("tune", reclora.tune.key), folder.artifact("rc", reclora.rc.key)
    crm = folder.artifact("crm", plan.crms["sim", "semantic"].key)
    assert tune.upstream == {"data": [plan.data.key], "retrieval": [plan.retrievals["semantic"].key],
                             "rc": [rc.key]}  # the adapter knows its R_c ...
    assert rc.upstream["crm"] == [crm.key]  # ... and R_c its CRM
    assert rc.summary["crm_fingerprint"] == crm.summary["fingerprint"]
    assert crm.upstream == {"data": [plan.data.key], "retrieval": [plan.retrievals["semantic"].key]}
    score = folder.artifact("score", reclora.score.key)
    assert score.upstream["tune"] == [tune.key] and score.upstream["rc"] == [rc.key]
    entry = json.loads(folder.results_path.read_text())["models"]["RecLoRA"]["stages"]
    assert entry == {"score": score.key, "tune": tune.key, "rc": rc.key, "crm": crm.key}
    for artifact in (tune, rc, crm, score):
        assert artifact.manifest["inputs"] and artifact.manifest["schema_version"] >= 1


def test_a_crm_change_never_reuses_an_adapter_trained_on_the_old_crm(runs, tmp_path):
    """Retraining SIM (another setting, another LLM, another retrieval) changes the keys of its R_c and of every
    RecLoRA reading it: an adapter is reused only with the CRM and R_c it was trained with."""
    config = runs.config(tmp_path / "run")
    before = plan_run(config)
    for changes in ({"crm.training.learning_rate": 3e-3}, {"crm.model.hidden_dims": [24, 16]},
                    {"llm.base_model": OTHER_MODEL}, {"retrieval.pca_dim": 8}):
        after = plan_run(runs.config(tmp_path / "run", changes))
        for plan_of in (lambda p: p.crms["sim", "semantic"], lambda p: p.rcs["sim", "semantic"],
                        lambda p: p.llm_models[1].tune, lambda p: p.llm_models[1].score):
            assert plan_of(before).key != plan_of(after).key, changes
        assert after.data.key == before.data.key


def test_missing_and_damaged_artifacts_are_named(runs, tmp_path):
    config = runs.config(runs.copy_of_base(tmp_path / "run"))
    folder = RunFolder(config.out)
    missing = f"{folder.stage_root('tune')} holds no finished tune artifact"
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        folder.artifact("tune", "0" * 64)
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder.stage_root("nothing")))):
        folder.artifact("nothing", "0" * 64)
    node = plan_run(config).rcs["sim", "semantic"]
    manifest = folder.artifact_dir(node) / MANIFEST_NAME
    truncate(manifest)
    with pytest.raises(ValueError, match=re.escape(str(manifest))):
        folder.artifact("rc", node.key)
    scores = folder.artifact_dir(plan_run(config).llm_models[1].score) / "scores.npy"
    np.save(scores, np.zeros(3))  # another size than the manifest records
    with pytest.raises(ValueError, match=re.escape(f"{scores.parent} is damaged: scores.npy has")):
        folder.artifact("score", plan_run(config).llm_models[1].score.key)
