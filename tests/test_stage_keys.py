"""Every setting of the config tree, enumerated from the tree itself, changes exactly the keys of the stages that read
it and of those downstream, and nothing upstream (computed from the plan: nothing runs)."""

import dataclasses
import json
import shutil
import typing
from pathlib import Path

import pytest
import torch

from reclora_pipeline.config import RESERVED_ADAPTER_KEYS, RunConfig, leaves
from reclora_pipeline.data import embedded_ml100k_dir
from reclora_pipeline.methods import METHODS, LoraSameParams, RecLora, _lora_config_class, _reclora_config_class
from reclora_pipeline.plan import plan_run
from reclora_pipeline.validation import validate


TRAINING_KEYS = {"max_grad_norm": 0.5, "lr_scheduler_type": "cosine", "weight_decay": 0.01, "optim": "sgd"}
ADAPTER_KEYS = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["q_proj"], "num_meta_loras": 8,
                "gate_hidden_dim": 30, "temperature": 2.0, "gate_dropout": 0.1, "gate_sharing": "per_module",
                "mixing": "weights", "init_weights": False, "use_rslora": True, "use_dora": True, "bias": "all",
                "init_lora_weights": False}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Every stage present: semantic retrieval, every CRM, every model, both studies; the data source given."""
    config = RunConfig.from_preset("full", {"data.source": str(embedded_ml100k_dir()), "eval.test_samples": 300})
    return config


@pytest.fixture(scope="module")
def other_source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ml-100k-copy")
    for path in embedded_ml100k_dir().iterdir():
        shutil.copy(path, folder / path.name)
    return str(folder)


def _optional(hint):
    args = typing.get_args(hint)
    return next(arg for arg in args if arg is not type(None)) if type(None) in args else hint


def fake_model_folder(folder, weights: bytes) -> str:
    """A folder with a model's files (plans only hash them; nothing loads them)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(weights)
    return str(folder)


@pytest.fixture(scope="module")
def other_llm(tmp_path_factory):
    return fake_model_folder(tmp_path_factory.mktemp("another-llm"), b"other weights")


def changed_value(leaf, value, other_source, other_llm=None):
    """Another valid value of a leaf, derived from its type, choices and minimum."""
    if leaf.path == "data.source":
        return other_source
    if leaf.path == "llm.base_model":
        return other_llm
    if leaf.path == "llm.dtype":  # unset means float32 on CPU: another dtype must differ from that
        from reclora_pipeline.llm import dtype_name, resolve_dtype

        return "bfloat16" if dtype_name(resolve_dtype(value)) == "float32" else "float32"
    choices = leaf.field.metadata.get("choices")
    hint = _optional(leaf.hint)
    if choices is not None:
        allowed = list(choices() if callable(choices) else choices)
        if typing.get_origin(hint) is tuple:
            return tuple(value[1:]) if value else (allowed[-1],)
        return next(choice for choice in allowed if choice != value)
    if hint is bool:
        return not value
    if hint is int:
        return 100 if value is None else value + 1
    if hint is float:
        return 3.0 if value is None else (value / 2 if value else 0.1)
    if typing.get_origin(hint) is tuple:
        if typing.get_args(hint)[-1] is Ellipsis:
            item = 7 if typing.get_args(hint)[0] is int else "tensorboard"
            return tuple(value) + (item,) if value else (item,)
        return (0.7, 0.2, 0.1)
    if hint is str:
        return f"{value}-other"
    raise AssertionError(f"no changed value for {leaf.path} ({leaf.hint})")


def compare(before, after):
    """(changed, added, removed) node ids between two plans."""
    old, new = before.nodes(), after.nodes()
    changed = {node_id for node_id in old.keys() & new.keys() if old[node_id].key != new[node_id].key}
    return changed, new.keys() - old.keys(), old.keys() - new.keys()


def check(before, after, stages, what):
    old, new = before.nodes(), after.nodes()
    changed, added, removed = compare(before, after)
    moved = changed | added
    if not stages:
        assert not (moved or removed), f"{what} changes no result, yet {sorted(moved | removed)} changed"
        return
    if stages == ("plan",):
        assert not changed, f"{what} decides which models exist; it must not change {sorted(changed)}"
        assert added or removed, f"{what} changed nothing"
        return

    def rewired(node_id) -> bool:
        return node_id in old and sorted(n.stage + n.label for n in old[node_id].upstream) != \
            sorted(n.stage + n.label for n in new[node_id].upstream)

    explained = set()
    for node_id, node in new.items():  # the plan lists upstream nodes before the nodes that read them
        if node_id not in moved:
            continue
        reads = node.stage in stages
        downstream = any((up.stage, up.label) in moved for up in node.upstream)
        assert reads or downstream or ("plan" in stages and (node_id in added or rewired(node_id))), \
            f"{what}: {node_id} changed, but it neither reads the setting nor is downstream of a stage that does"
        explained.add(node_id)
    for stage in stages:
        if stage != "plan":
            assert any(node_id[0] == stage for node_id in moved | removed), \
                f"{what} is read by {stage}, yet no {stage} changed"
    for node_id, node in new.items():  # downstream of a changed stage, everything changed
        if any((up.stage, up.label) in moved for up in node.upstream):
            assert node_id in moved, f"{what}: {node_id} reads a changed stage but kept its key"


def test_every_setting_changes_exactly_the_stages_that_read_it(base, other_source, other_llm):
    before = plan_run(base)
    covered = []
    for leaf in leaves():
        if typing.get_origin(leaf.hint) is dict:
            continue  # tune.adapter and tune.training: key by key below
        start = base
        if leaf.path == "data.time_field":
            start = base.override({"data.dataset": "goodreads"})  # the only dataset with a choice of time field
        if leaf.path == "retrieval.cache_dir":
            start = base
        value = changed_value(leaf, start.get(leaf.path), other_source, other_llm)
        after = start.override({leaf.path: value})
        assert after.get(leaf.path) != start.get(leaf.path), leaf.path
        check(plan_run(start), plan_run(after), leaf.stages, f"{leaf.path} = {value!r}")
        covered.append(leaf.path)
    assert set(covered) == {leaf.path for leaf in leaves()} - {"tune.adapter", "tune.training"}
    # A setting only the semantic retriever reads changes nothing when the run retrieves the most recent items.
    recent = base.override({"retrieval.mode": "recent"})
    for path, value in (("retrieval.pca_dim", 16), ("retrieval.pooling", "last"), ("llm.base_model", other_llm)):
        changed, added, removed = compare(plan_run(recent), plan_run(recent.override({path: value})))
        assert all(node_id[0] != "retrieval" for node_id in changed | added | removed), path
    _ = before


def test_every_training_key_reaches_every_tuned_model_only(base):
    before = plan_run(base)
    keys = dict(TRAINING_KEYS, **{key: changed(value) for key, value in base.tune.training.items()})
    for key, value in keys.items():
        after = plan_run(validate(base.override({f"tune.training.{key}": value})))
        changed_nodes, added, removed = compare(before, after)
        assert not added and not removed
        assert {n for n in changed_nodes if n[0] == "tune"} == {n for n in before.nodes() if n[0] == "tune"}, key
        assert {n[0] for n in changed_nodes} == {"tune", "score"}, key
        assert all(n in changed_nodes for n in before.nodes() if n[0] == "score" and
                   any(m.name == n[1] and m.tune is not None for m in before.llm_models)), key


def changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 if value else 1
    raise AssertionError(value)


def test_every_adapter_key_reaches_the_models_whose_config_has_it(base):
    before = plan_run(base)
    for key, value in ADAPTER_KEYS.items():
        config = validate(base.override({f"tune.adapter.{key}": value}))
        after = plan_run(config)
        changed_nodes, added, removed = compare(before, after)
        names = {m.name for m in before.llm_models}
        if added or removed:  # r and num_meta_loras rename the LoRA-same-params / sweep models they size
            assert key in ("r", "num_meta_loras"), key
            names = {m.name for m in before.llm_models} & {m.name for m in after.llm_models}
        expected = set()
        for model in before.llm_models:
            if model.name not in names or model.tune is None:
                continue
            config_class = _reclora_config_class() if model.method.needs_crm else _lora_config_class()
            takes = key in {f.name for f in dataclasses.fields(config_class)} and key not in model.method.adapter
            sized = isinstance(model.method, LoraSameParams) and key == "num_meta_loras"
            if takes or sized:
                expected.add(("tune", model.name))
        assert {n for n in changed_nodes if n[0] == "tune"} == expected, key
        assert expected, key
        assert {n[0] for n in changed_nodes} <= {"tune", "score"}, key


def test_every_field_of_the_peft_configs_is_settable():
    """Each RecLoraConfig / LoraConfig field reaches the config that has it as given (its own default value, which is
    valid by definition, set explicitly)."""
    for config_class, method in ((_reclora_config_class(), RecLora()), (_lora_config_class(), METHODS[1]())):
        for item in dataclasses.fields(config_class):
            if item.name in RESERVED_ADAPTER_KEYS or not item.init:
                continue
            value = item.default_factory() if item.default is dataclasses.MISSING else item.default
            if value is dataclasses.MISSING or (item.name == "target_modules" and value is None):
                continue
            config = validate(RunConfig().override({f"tune.adapter.{item.name}": value}))
            built = method.peft_config(config.tune.adapter, crm_dim=config.crm.model.crm_dim)
            assert getattr(built, item.name) == (set(value) if isinstance(value, list) and item.name.endswith(
                "modules") else value), (config_class.__name__, item.name)
    with pytest.raises(ValueError, match="tune.adapter.crm_dim cannot be set: it is the CRM's R_c width"):
        RunConfig().override({"tune.adapter.crm_dim": 8})


def test_the_base_model_is_known_by_its_content(base, tmp_path):
    """Other weights at the same path change exactly the stages that read the LLM (the semantic retrieval, which it
    encodes, and everything downstream: the same nodes as another path); the same files at another path, or the
    same files touched again, keep every key."""
    from reclora_pipeline.model_identity import UnknownBaseModel, base_model_identity

    folder = tmp_path / "llm"
    config = base.override({"llm.base_model": fake_model_folder(folder, b"weights one")})
    before = plan_run(config)
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert base_model_identity(str(copy)) == base_model_identity(str(folder))
    (folder / "model.safetensors").write_bytes(b"weights two")  # the same size: only the content tells
    after = plan_run(config)
    changed, added, removed = compare(before, after)
    elsewhere, _, _ = compare(before, plan_run(base.override({"llm.base_model": fake_model_folder(
        tmp_path / "other", b"weights two")})))
    assert changed and not added and not removed and changed == elsewhere
    assert {stage for stage, _ in changed} == {"retrieval", "crm", "rc", "tune", "score"}
    assert all(node.inputs.llm.identity == base_model_identity(str(folder))
               for node in after.nodes().values() if node.stage == "tune")
    (folder / "model.safetensors").touch()  # a new mtime, the same bytes: hashed again, the same identity
    assert not any(compare(after, plan_run(config)))
    with pytest.raises(UnknownBaseModel, match="llm.base_model: .*not a folder"):
        base_model_identity(str(tmp_path / "missing" / "llm"))


# The stage keys four configs had when the stage inputs were string-keyed dicts (tests/data/stage_keys.json): a
# change to how inputs are declared, built or serialized must leave every one of them as it was.
STORED_KEYS = Path(__file__).parent / "data" / "stage_keys.json"
# What the data stage stamped of the embedded ml-100k files when those keys were planned (name, size, mtime_ns): a
# fresh install of the files has other modification times, which change the data key and every key downstream.
STORED_SOURCE_FILES = [["ml-100k.inter", 1979230, 1796645953588662051], ["ml-100k.item", 66632, 1796645953592313250],
                       ["ml-100k.kg", 3515608, 1796645953596662052], ["ml-100k.link", 21507, 1796645953602048635],
                       ["ml-100k.user", 22697, 1796645953602236334]]


@pytest.mark.parametrize("name", sorted(json.loads(STORED_KEYS.read_text())))
def test_stage_keys_are_the_stored_ones(name, monkeypatch):
    """Every node of the plan of a stored config has the key stored for it (planned on a CPU machine)."""
    from reclora_pipeline.stages import data as data_stage

    stored = json.loads(STORED_KEYS.read_text())[name]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    stamp = data_stage.source_stamp
    monkeypatch.setattr(data_stage, "source_stamp", lambda data: STORED_SOURCE_FILES if data.source is None and
                        [entry[:2] for entry in stamp(data)] == [entry[:2] for entry in STORED_SOURCE_FILES]
                        else stamp(data))
    planned = {f"{stage}/{label}": node.key
               for (stage, label), node in plan_run(RunConfig.from_dict(stored["config"])).nodes().items()}
    assert planned == stored["keys"]


def test_stage_inputs_read_back_typed_from_their_dict(base):
    """What a manifest records of a node's inputs (their JSON form) reads back as the same typed inputs."""
    from reclora_pipeline.artifacts import Artifact

    plan = plan_run(base.override({"eval.shuffled_gate": True, "tune.gate_learning_rate": 1e-4}))
    kinds = set()
    for node in plan.nodes().values():
        recorded = json.loads(json.dumps(node.inputs.to_dict()))
        again = Artifact(Path("unused"), {"inputs": recorded}).inputs_as(type(node.inputs))
        assert again == node.inputs and again.to_dict() == recorded, node
        kinds.add(type(node.inputs).__name__)
    assert kinds == {"DataInputs", "RetrievalInputs", "CrmInputs", "RcInputs", "TuneInputs", "CrmScoreInputs",
                     "LlmScoreInputs"}
    tunes = {model.name: model.tune.inputs for model in plan.llm_models if model.tune is not None}
    assert tunes["RecLoRA"].gate_learning_rate == 1e-4 and "gate_learning_rate" not in tunes["LoRA (r=8)"].to_dict()
    assert tunes["RecLoRA"].adapter_training.gate_learning_rate == 1e-4
    assert "encoder" not in plan.retrievals["recent"].inputs.to_dict()
