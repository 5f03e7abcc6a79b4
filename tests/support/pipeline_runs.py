"""Pipeline runs for tests: tiny random Llamas with SmolLM2's tokenizer, a fast config, runs killed with SIGKILL at a
chosen function, and comparisons of two run folders."""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from reclora_pipeline.config import RunConfig


KILLER = Path(__file__).with_name("killed_run.py")


def save_tiny_llama(folder: Path, tokenizer_dir, seed: int = 0, hidden_size: int = 32) -> str:
    """A 2-layer random Llama with SmolLM2's tokenizer, saved as a local model folder."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=48,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def fast_config(out, base_model, **changes) -> RunConfig:
    """Seconds per model on the embedded MovieLens-100K: recent histories, a small CRM, 16 few-shot samples, 40 test
    samples. ``changes``: dotted paths with ``__`` for dots (``retrieval__mode="semantic"``) or plain names."""
    settings = {
        "out": str(out), "llm.base_model": base_model, "retrieval.mode": "recent", "retrieval.k_long": 8,
        "retrieval.k_short": 3, "crm.training.epochs": 1, "crm.model.hidden_dims": [32, 16], "crm.model.embed_dim": 8,
        "crm.training.batch_size": 4096, "tune.few_shot": 16, "tune.training.per_device_train_batch_size": 8,
        "tune.adapter.num_meta_loras": 4, "tune.adapter.r": 2, "eval.test_samples": 40, "eval.batch_size": 20,
        "progress": False,
    }
    settings.update({key.replace("__", "."): value for key, value in changes.items()})
    return RunConfig().override(settings)


class ChildRun:
    """A pipeline run submitted to the kill server: ``wait()`` returns its exit status (``-SIGKILL`` when it was
    killed as asked, 0 when it finished); ``output`` is what it printed."""

    def __init__(self, server: "KillServer", number: int, log: Path):
        self.server, self.number, self.log = server, number, log
        self.status = None

    def wait(self) -> int:
        if self.status is None:
            self.status = self.server.status_of(self.number)
            if self.status not in (0, -signal.SIGKILL):  # a failing test shows why the child failed
                print(self.output[-10000:], file=sys.stderr)
        return self.status

    @property
    def output(self) -> str:
        return self.log.read_text() if self.log.is_file() else ""


class KillServer:
    """``killed_run.py --serve``: one process that imports the pipeline once and forks a child per killed run, so a
    killed run costs its own work, not seconds of imports. Requests run one after another, in the background of the
    test process, in submission order."""

    def __init__(self):
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(KILLER.parent.parent),
                                                                                  os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen([sys.executable, str(KILLER), "--serve"], env=environment, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.submitted, self.answers = 0, {}
        atexit.register(self.close)

    def submit(self, config: RunConfig, target: str, when: str, calls: int, inside: str) -> ChildRun:
        out = Path(config.out)
        config_file = out.parent / f".{out.name}-killed-config.json"
        config_file.write_text(json.dumps(config.to_dict()))
        self.submitted += 1
        run = ChildRun(self, self.submitted, out.parent / f".{out.name}-killed-output.txt")
        request = {"id": run.number, "args": [str(config_file), target, when, str(calls), inside],
                   "log": str(run.log), "threads": torch.get_num_threads()}  # the same numbers as this process
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return run

    def status_of(self, number: int) -> int:
        while number not in self.answers:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the kill server ended (exit status {self.process.wait()}) before run {number}")
            answer = json.loads(line)
            self.answers[answer["id"]] = answer["status"]
        return self.answers.pop(number)

    def close(self) -> None:
        """End the server and the run in progress (what no test waited for is not needed)."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


_server = None


def kill_server() -> KillServer:
    """The kill server of this test session, started on first use."""
    global _server
    if _server is None or _server.process.poll() is not None:
        _server = KillServer()
    return _server


def start_killed(config: RunConfig, target: str, *, when: str = "before", calls: int = 1,
                 inside: str = "") -> ChildRun:
    """Start the pipeline in a child process that kills itself with SIGKILL at the ``calls``-th call of ``target``
    (``"module:attribute"``, the attribute may be dotted), ``before`` or ``after`` the original runs; with ``inside``
    (another target) only calls made while it runs count. The child computes with this process's number of torch
    threads, so that what it finishes equals what this process would compute."""
    return kill_server().submit(config, target, when, calls, inside)


def start_run(config: RunConfig) -> ChildRun:
    """Start the pipeline in a child process of the kill server, not killed: ``wait()`` gives 0 when it finished."""
    return kill_server().submit(config, "", "before", 1, "")


def run_killed(config: RunConfig, target: str, *, when: str = "before", calls: int = 1, inside: str = "") -> int:
    """``start_killed``, waited for: the child's exit status."""
    return start_killed(config, target, when=when, calls=calls, inside=inside).wait()


def table(out) -> dict:
    """The metrics of a run folder's table, by model."""
    models = json.loads((Path(out) / "results.json").read_text())["models"]
    return {name: {key: entry[key] for key in ("auc", "logloss", "n", "kind")} for name, entry in models.items()}


def assert_same_results(a, b) -> None:
    """Two run folders hold the same table and the same predictions, exactly."""
    assert table(a) == table(b)
    names = sorted(path.name for path in (Path(a) / "predictions").glob("*.csv"))
    assert names == sorted(path.name for path in (Path(b) / "predictions").glob("*.csv"))
    for name in names:
        pd.testing.assert_frame_equal(pd.read_csv(Path(a) / "predictions" / name),
                                      pd.read_csv(Path(b) / "predictions" / name))
    first = json.loads((Path(a) / "eval_samples.json").read_text())["sample_ids"]
    assert np.array_equal(first, json.loads((Path(b) / "eval_samples.json").read_text())["sample_ids"])
