"""The run's config tree on the command line: files, --set, flags generated from the fields (with help and defaults),
the earlier flags as aliases, layering order, validation before anything runs, and a --help that imports nothing
heavy."""

import json
import subprocess
import sys
import textwrap

import pytest

from reclora_pipeline.cli import build_parser, main, run_config
from reclora_pipeline.config import PRESETS, RunConfig, leaves, read_config_file
from reclora_pipeline.flags import parse_set, resolve_from_args


# Every flag of `run` before the config tree existed, with a value and the setting it must reach.
EARLIER_FLAGS = [
    (["--dataset", "ml-1m"], "data.dataset", "ml-1m"),
    (["--source", "/data/ml-1m"], "data.source", "/data/ml-1m"),
    (["--base-model", "/models/x"], "llm.base_model", "/models/x"),
    (["--dtype", "bfloat16"], "llm.dtype", "bfloat16"),
    (["--models", "zero-shot,reclora"], "models", ("zero-shot", "reclora")),
    (["--crm", "din"], "crm.name", "din"),
    (["--crm-baselines", "deepfm,sasrec"], "crm.baselines", ("deepfm", "sasrec")),
    (["--retrieval", "recent"], "retrieval.mode", "recent"),
    (["--k-long", "30"], "retrieval.k_long", 30),
    (["--k-short", "5"], "retrieval.k_short", 5),
    (["--few-shot", "64"], "tune.few_shot", 64),
    (["--few-shot-seed", "3"], "tune.few_shot_seed", 3),
    (["--num-meta-loras", "4"], "tune.adapter.num_meta_loras", 4),
    (["--r", "4"], "tune.adapter.r", 4),
    (["--epochs", "2"], "tune.training.num_train_epochs", 2.0),
    (["--learning-rate", "3e-4"], "tune.training.learning_rate", 3e-4),
    (["--batch-size", "4"], "tune.training.per_device_train_batch_size", 4),
    (["--gradient-checkpointing"], "tune.training.activation_checkpointing", True),
    (["--loss", "yes_no"], "tune.loss", "yes_no"),
    (["--crm-epochs", "2"], "crm.training.epochs", 2),
    (["--crm-rc-layer", "0"], "crm.model.rc_layer", 0),
    (["--save-steps", "5"], "tune.training.save_steps", 5),
    (["--sweep-num-meta-loras", "2,8"], "study.sweep_num_meta_loras", (2, 8)),
    (["--sweep-few-shot", "32,64"], "study.sweep_few_shot", (32, 64)),
    (["--test-samples", "100"], "eval.test_samples", 100),
    (["--score-batch-size", "8"], "eval.batch_size", 8),
    (["--no-progress"], "progress", False),
]


def config_of(*argv):
    args = build_parser().parse_args(["run", "--out", "unused", *argv])
    return run_config(args)


def resolved_of(*argv):
    """The tree of a command line, before the checks that read the base model (``/models/x`` does not exist)."""
    args = build_parser().parse_args(["run", "--out", "unused", *argv])
    return resolve_from_args(args, args.targets, args.default_preset).config


@pytest.mark.parametrize("argv, path, value", EARLIER_FLAGS, ids=[flags[0] for flags, _, _ in EARLIER_FLAGS])
def test_earlier_flags_are_aliases_of_their_settings(argv, path, value):
    assert resolved_of(*argv).get(path) == value


def test_temperature_flag_sets_the_gate_temperature_and_is_listed_in_help(capsys):
    config = config_of("--temperature", "0.5")
    assert config.tune.adapter["temperature"] == 0.5
    assert "temperature" not in RunConfig().tune.adapter  # unset: RecLoraConfig's own default
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--temperature X softmax temperature of RecLoRA's gate" in text
    assert "(sets tune.adapter.temperature; default: unset: the library's own)" in text


def test_seed_alias_sets_every_seed_it_used_to():
    config = config_of("--seed", "7")
    assert config.crm.training.seed == 7 and config.tune.training["seed"] == 7
    assert config.tune.training["data_seed"] == 7


def test_every_setting_is_a_flag_named_by_its_path_with_help_and_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    demo = RunConfig.from_preset("demo")
    for leaf in leaves():
        if leaf.path in ("tune.adapter", "tune.training"):
            assert f"{leaf.path}: " in text and f"--set {leaf.path}.KEY=VALUE" in text
            continue
        assert f"--{leaf.path}" in text, leaf.path
        assert " ".join(leaf.help.split()) in text, leaf.path
    assert "(default: 192)" in text and demo.tune.few_shot == 192  # defaults shown are the preset's
    for leaf in leaves():
        assert leaf.help, f"{leaf.path} has no help text"


def test_layers_defaults_preset_file_flags_set(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(textwrap.dedent("""
        preset = "demo"
        models = ["lora", "reclora"]
        [retrieval]
        k_short = 7
        [tune]
        few_shot = 256
        [tune.adapter]
        mixing = "weights"
        gate_sharing = "per_module"
        [tune.training]
        learning_rate = 3e-3
        lr_scheduler_type = "cosine"
    """))
    config = config_of("--config", str(toml), "--few-shot", "128", "--set", "tune.few_shot=64",
                       "--set", "tune.adapter.temperature=2.0", "--set", "tune.training.max_grad_norm=0.5")
    assert config.retrieval.k_short == 7  # file over preset (the demo's 3)
    assert config.crm.model.hidden_dims == (128, 64)  # the preset the file names, under the file
    assert config.tune.few_shot == 64  # --set after the flag, the flag after the file
    assert config.tune.adapter["mixing"] == "weights" and config.tune.adapter["temperature"] == 2.0
    assert config.tune.adapter["r"] == 8  # a mapping setting merges key by key
    assert config.tune.training == {**PRESETS["demo"]["tune"]["training"], "per_device_train_batch_size": 8,
                                    "warmup_steps": 0.05, "seed": 42, "data_seed": 42,
                                    "learning_rate": 3e-3, "lr_scheduler_type": "cosine", "max_grad_norm": 0.5}
    for suffix, text in ((".json", json.dumps({"retrieval": {"k_short": 7}})),
                         (".yaml", "retrieval:\n  k_short: 7\n")):
        path = tmp_path / f"run{suffix}"
        path.write_text(text)
        assert read_config_file(path) == {"retrieval": {"k_short": 7}}


def test_bad_settings_name_the_setting_and_write_nothing(tmp_path, capsys):
    cases = [
        (["--set", "retrieval.k_lnog=3"], "unknown setting 'retrieval.k_lnog'; did you mean retrieval.k_long"),
        (["--k-long", "0"], "retrieval.k_long must be at least 1"),
        (["--dataset", "ml-2m"], "data.dataset: 'ml-2m' is not one of"),
        (["--set", "tune.training.learning_rat=1"], "did you mean learning_rate"),
        (["--set", "tune.adapter.num_meta_loras=0"], "tune.adapter does not give a valid PEFT config"),
        (["--set", "retrieval=3"], "retrieval is a section"),
    ]
    for argv, message in cases:
        assert main(["run", "--out", str(tmp_path / "x"), *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv
    bad = tmp_path / "bad.toml"
    bad.write_text("[retrieval\nk_long = 3")
    assert main(["run", "--out", str(tmp_path / "x"), "--config", str(bad)]) == 2
    assert f"{bad}: not valid TOML" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_no_abbreviated_flags(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--epoch", "3"])
    assert "unrecognized arguments: --epoch 3" in capsys.readouterr().err


def test_parse_set_keeps_setting_values_as_text_and_parses_mapping_keys():
    assert parse_set("retrieval.k_long=30") == ("retrieval.k_long", "30")
    assert parse_set("tune.adapter.target_modules=[\"q_proj\"]") == ("tune.adapter.target_modules", ["q_proj"])
    assert parse_set("tune.adapter.mixing=weights") == ("tune.adapter.mixing", "weights")
    with pytest.raises(ValueError, match="expected PATH=VALUE"):
        parse_set("retrieval.k_long")


def test_help_imports_neither_torch_nor_pandas():
    """The parser (choices of datasets, CRMs, models, prompt styles included) is built from light modules only."""
    code = ("import sys; from reclora_pipeline.cli import build_parser; "
            "p = build_parser(); p.format_help(); "
            "[a.format_help() for a in p._subparsers._group_actions[0].choices.values()]; "
            "print(sorted(m for m in ('torch', 'pandas', 'numpy', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_config_is_a_leaf_that_imports_only_its_machinery():
    """The config tree imports no library and no other module of the pipeline, so every layer may import it."""
    code = ("import sys; import reclora_pipeline.config; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft', "
            "'peft_reclora', 'numpy', 'pandas', 'yaml', 'reclora_pipeline')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(["reclora_pipeline", "reclora_pipeline.config", "reclora_pipeline.config_tree"])


def test_the_config_names_the_choices_its_registries_implement():
    """The config owns the names it checks; each registry that implements them lists the same ones, in order."""
    from reclora_pipeline import config
    from reclora_pipeline.crm.registry import CRMS, available_crms
    from reclora_pipeline.data import DATASET_READERS
    from reclora_pipeline.methods import METHODS, MODEL_CHOICES
    from reclora_pipeline.views.prompts import PROMPT_STYLES, PROMPT_TEMPLATES

    assert config.DATASETS == tuple(DATASET_READERS)
    assert config.CRM_NAMES == tuple(CRMS) == tuple(available_crms())
    assert config.MODEL_CHOICES == MODEL_CHOICES == tuple(dict.fromkeys(method.choice for method in METHODS))
    assert config.PROMPT_TEMPLATES == PROMPT_TEMPLATES
    assert config.PROMPT_STYLES == PROMPT_STYLES


def test_a_missing_extra_names_the_extra(monkeypatch, capsys):
    import reclora_pipeline.cli as cli

    def handler(args):
        raise ModuleNotFoundError("No module named 'pandas'", name="pandas")

    parser = build_parser()
    args = parser.parse_args(["data", "--out", "x"])
    monkeypatch.setattr(cli, "build_parser", lambda: _Returning(parser, args, handler))
    assert cli.main([]) == 2
    assert "pip install -e '.[examples]'" in capsys.readouterr().err


class _Returning:
    def __init__(self, parser, args, handler):
        self.parser, self.args = parser, args
        args.handler = handler

    def parse_args(self, argv):
        return self.args

    def print_help(self, *a):
        pass


# Values that cannot run: each refused by the command line before anything is written, naming the setting.
UNRUNNABLE = [
    (["--set", "tune.gate_learning_rate=nan"], "tune.gate_learning_rate: expected a finite number"),
    (["--set", "crm.training.learning_rate=inf"], "crm.training.learning_rate: expected a finite number"),
    (["--set", "crm.training.min_delta=nan"], "crm.training.min_delta: expected a finite number"),
    (["--set", "crm.training.max_grad_norm=-inf"], "crm.training.max_grad_norm: expected a finite number"),
    (["--set", "tune.training.num_train_epochs=Infinity"], "tune.training: num_train_epochs: expected a finite"),
    (["--set", "tune.training.max_grad_norm=NaN"], "tune.training: max_grad_norm: expected a finite number"),
    (["--set", "tune.training.weight_decay=1e999"], "tune.training: weight_decay: expected a finite number"),
    (["--epochs", "-1"], "tune.training: num_train_epochs: epochs over the few-shot sample: must be at least 0"),
    (["--epochs", "0"], "tune.training: the run would train zero steps"),
    (["--batch-size", "0"], "tune.training: per_device_train_batch_size: samples per step: must be at least 1"),
    (["--set", "tune.training.gradient_accumulation_steps=0"], "gradient_accumulation_steps: micro-batches per"),
    (["--set", "tune.training.learning_rate=fast"], "tune.training: learning_rate: expected a number, got 'fast'"),
    (["--set", 'tune.training.learning_rate="3e-3"'], "learning_rate: expected a number, got '3e-3' (a string"),
    (["--set", "tune.training.per_device_train_batch_size=2.5"], "per_device_train_batch_size: expected an integer"),
    (["--set", "tune.training.bf16=1"], "tune.training: bf16: expected true or false"),
    (["--set", "tune.training.seed=-1"], "tune.training: seed: a seed is in [0, 4294967295]"),
    (["--few-shot-seed", "4294967296"], "tune.few_shot_seed must be at most 4294967295"),
    (["--set", "crm.training.seed=-5"], "crm.training.seed must be at least 0"),
    (["--set", "eval.test_seed=-5"], "eval.test_seed must be at least 0"),
    (["--set", "data.split_ratio=[0.8,NaN,0.1]"], "data.split_ratio[1]: expected a finite number"),
    (["--set", "data.split_ratio=1,0,0"], "data.split_ratio must be three positive shares"),
    (["--set", 'tune.adapter.target_modules=["qproj"]'], "tune.adapter: target_modules ['qproj'] match no module"),
    (["--set", "tune.adapter.layers_to_transform=[1,99]"], "tune.adapter: layers_to_transform [99] is not a layer"),
    (["--base-model", ""], "llm.base_model is empty"),
    (["--base-model", " "], "llm.base_model is empty"),
]


@pytest.fixture
def no_run(monkeypatch):
    """A command line that gets past its checks starts no pipeline here: it fails the test instead."""
    import reclora_pipeline.pipeline

    def started(config):
        raise AssertionError(f"the run started with {config.out}")

    monkeypatch.setattr(reclora_pipeline.pipeline, "run_pipeline", started)


@pytest.mark.parametrize("argv, message", UNRUNNABLE, ids=[" ".join(argv) for argv, _ in UNRUNNABLE])
def test_values_that_cannot_run_are_refused_naming_the_setting(tmp_path, capsys, no_run, argv, message):
    assert main(["run", "--out", str(tmp_path / "x"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_missing_base_model_and_triton_without_a_gpu_are_refused_before_a_run(tmp_path, capsys, monkeypatch,
                                                                               no_run):
    assert main(["run", "--out", str(tmp_path / "x"), "--base-model", str(tmp_path / "no-model")]) == 2
    assert f"llm.base_model: cannot read the model config of '{tmp_path / 'no-model'}'" in capsys.readouterr().err
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["run", "--out", str(tmp_path / "x"), "--set", "tune.adapter.kernel_backend=triton"]) == 2
    assert "tune.adapter.kernel_backend: 'triton' needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_yaml_numbers_are_numbers_and_a_string_learning_rate_is_refused(tmp_path, capsys, no_run):
    path = tmp_path / "run.yaml"
    path.write_text("tune:\n  training:\n    learning_rate: 3e-3\n    weight_decay: 1E-2\n")
    training = config_of("--config", str(path)).tune.training
    assert training["learning_rate"] == 3e-3 and training["weight_decay"] == 0.01
    path.write_text("tune:\n  training:\n    learning_rate: fast\n")
    assert main(["run", "--out", str(tmp_path / "x"), "--config", str(path)]) == 2
    assert "tune.training: learning_rate: expected a number, got 'fast'" in capsys.readouterr().err


MALFORMED_FILES = [
    ("syntax.yaml", "retrieval: [1, 2\n", "not valid YAML"),
    ("tag.yaml", "retrieval: !!python/object/apply:os.system ['echo unsafe']\n", "not valid YAML"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply to be a config"),
    ("deep.yaml", "a:\n" + "".join(f"{'  ' * i}b{i}:\n" for i in range(1, 40)), "nested too deeply to be a config"),
    ("list.toml", 'preset = ["demo"]\n', "preset must be one of demo, full, learning-curve or none"),
    ("unknown.toml", 'preset = "tiny"\n', "preset must be one of demo, full, learning-curve or none"),
    ("twice.json", '{"retrieval": {"k_long": 3, "k_long": 4}}', "the key 'k_long' is given twice"),
    ("twice.yaml", "retrieval:\n  k_long: 3\n  k_long: 4\n", "the key 'k_long' is given twice"),
    ("twice.toml", "[retrieval]\nk_long = 3\nk_long = 4\n", "not valid TOML"),
    ("top.json", "[1, 2]", "the top level must be a table of settings"),
    ("latin1.toml", "# caf\xe9\n", "not UTF-8 text"),
]


@pytest.mark.parametrize("name, text, message", MALFORMED_FILES, ids=[name for name, _, _ in MALFORMED_FILES])
def test_a_malformed_config_file_is_one_error_naming_the_file(tmp_path, capsys, no_run, name, text, message):
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    assert main(["run", "--out", str(tmp_path / "x"), "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: " in err and message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_a_config_file_preset_counts_as_the_preset_flag(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "demo"\n')
    args = build_parser().parse_args(["run", "--config", str(path)])
    config = run_config(args)
    assert config.out == "runs/ml-100k-demo" and args.chosen_preset == "demo"  # not runs/ml-100k-full
    assert config.tune.few_shot == PRESETS["demo"]["tune"]["few_shot"]
    args = build_parser().parse_args(["run", "--config", str(path), "--preset", "full"])
    assert run_config(args).out == "runs/ml-100k-full" and args.chosen_preset == "full"
    assert RunConfig.resolve(files=[path]) == RunConfig.from_preset("demo")  # the library reads it alike
    assert RunConfig.resolve("full", files=[path]) == RunConfig.from_preset("full")
