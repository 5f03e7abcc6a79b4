"""The whole pipeline on two processes (torchrun, gloo on the CPU) gives what one process gives: the stages that run
once run on the main process, tuning is DDP with the global batch of the config, scoring is sharded and gathered, and
one set of outputs is written."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from reclora_pipeline.pipeline import run_pipeline

from support.pipeline_runs import fast_config, table


# DDP averages the two processes' gradients of half batches, which equals the one-process gradient of the whole batch
# up to float32 summation order, and a sharded scoring batch pads its prompts to another length: scores agree to
# about 1e-6.
TOLERANCE = 1e-4


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _environment() -> dict:
    """The children's: one thread each, the tests' support modules importable, and the same code as this process."""
    paths = [str(Path(__file__).parent), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(paths)}


def test_two_processes_give_what_one_process_gives(tmp_path, tiny_base_model):
    settings = dict(models=["zero-shot", "reclora", "lora"], crm__baselines=["din"], retrieval__mode="semantic",
                    retrieval__pca_dim=16, retrieval__cache_dir=str(tmp_path / "encodings"),
                    tune__training__learning_rate=5e-2, tune__training__per_device_train_batch_size=8)
    one = run_pipeline(fast_config(tmp_path / "one", tiny_base_model, **settings))

    config = fast_config(tmp_path / "two", tiny_base_model, **settings)
    config_file = tmp_path / "two.json"
    config_file.write_text(json.dumps(config.to_dict()))
    environment = _environment()
    process = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         "-m", "reclora_pipeline.cli", "run", "--preset", "none", "--config", str(config_file)],
        env=environment, capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert process.stdout.count("== report") == 1, "only the main process speaks for the run"

    two = table(tmp_path / "two")
    assert set(two) == set(one)
    for name in one:
        assert two[name]["n"] == one[name]["n"]
        assert abs(two[name]["auc"] - one[name]["auc"]) < TOLERANCE, name
        assert abs(two[name]["logloss"] - one[name]["logloss"]) < TOLERANCE, name
    for name in ("SIM", "DIN"):  # trained and scored once, on the main process: identical
        assert two[name] == table(tmp_path / "one")[name]
    for path in sorted((tmp_path / "one" / "predictions").glob("*.csv")):
        a, b = pd.read_csv(path), pd.read_csv(tmp_path / "two" / "predictions" / path.name)
        assert a.drop(columns="score").equals(b.drop(columns="score"))
        np.testing.assert_allclose(b["score"], a["score"], atol=TOLERANCE, err_msg=path.name)
    # One set of outputs: every artifact once, no build folder left behind.
    assert not [path for path in (tmp_path / "two" / "stages").glob("*/.building-*") if path.is_dir()]
    tune = json.loads((tmp_path / "two" / "results.json").read_text())["models"]["RecLoRA"]
    few_shot = json.loads(next((tmp_path / "two" / "stages" / "tune").glob("RecLoRA-*/stage.json")).read_text())
    assert few_shot["key"] == tune["stages"]["tune"]
    assert few_shot["summary"]["global_steps"] == 16 // 8  # the config's global batch, not 2 x 8


def test_a_folder_in_use_stops_every_process(tmp_path, tiny_base_model):
    """Only the main process takes the run folder's lock; when another run holds it, every process stops with the
    main process's error instead of waiting for it at the first barrier."""
    import fcntl

    from reclora_pipeline.artifacts import LOCK_NAME

    config = fast_config(tmp_path / "run", tiny_base_model, models=["zero-shot"])
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps(config.to_dict()))
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / LOCK_NAME, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another run (this process) writes the folder
        environment = _environment()
        process = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
             str(_free_port()), "-m", "reclora_pipeline.cli", "run", "--preset", "none", "--config", str(config_file)],
            env=environment, capture_output=True, text=True, timeout=300)
    assert process.returncode != 0
    assert process.stderr.count(f"error: out: {tmp_path / 'run'} is being written by another run") == 2
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == [LOCK_NAME]



def test_two_processes_with_an_8bit_base_give_what_one_process_gives(tmp_path, tiny_base_model):
    """The paper's setting in small: an 8-bit base (bitsandbytes, here on the CPU) under torchrun, each process
    loading its own copy onto its own device; tuning and scoring agree with one process to 1e-3 (int8 matmuls of
    half batches round differently from those of the whole batch)."""
    settings = dict(models=["reclora", "lora"], llm__quantization="8bit", retrieval__mode="semantic",
                    retrieval__pca_dim=16, retrieval__cache_dir=str(tmp_path / "encodings"),
                    tune__training__learning_rate=5e-2, tune__training__per_device_train_batch_size=8)
    run_pipeline(fast_config(tmp_path / "one", tiny_base_model, **settings))
    config = fast_config(tmp_path / "two", tiny_base_model, **settings)
    config_file = tmp_path / "two.json"
    config_file.write_text(json.dumps(config.to_dict()))
    process = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         "-m", "reclora_pipeline.cli", "run", "--preset", "none", "--config", str(config_file)],
        env=_environment(), capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    one, two = table(tmp_path / "one"), table(tmp_path / "two")
    assert set(two) == set(one) >= {"RecLoRA", "LoRA (r=2)"}
    manifest = json.loads(next((tmp_path / "two" / "stages" / "tune").glob("RecLoRA-*/stage.json")).read_text())
    assert manifest["inputs"]["llm"]["quantization"] == "8bit"
    for path in sorted((tmp_path / "one" / "predictions").glob("*.csv")):
        a, b = pd.read_csv(path), pd.read_csv(tmp_path / "two" / "predictions" / path.name)
        assert a.drop(columns="score").equals(b.drop(columns="score"))
        np.testing.assert_allclose(b["score"], a["score"], atol=1e-3, err_msg=path.name)
