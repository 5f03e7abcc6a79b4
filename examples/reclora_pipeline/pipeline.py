"""The whole Few2Many protocol as one run, top to bottom:

    data -> retrieval (per history mode) -> CRMs: train + R_c (stage 1) -> per LLM model: tune (stage 2) -> score
    -> report (results.json, results.md, predictions/, plots/)

    from reclora_pipeline.config import RunConfig
    from reclora_pipeline.pipeline import run_pipeline

    results = run_pipeline(RunConfig.from_preset("demo", {"out": "runs/demo"}))
    results["RecLoRA"]["auc"]

Each stage's artifact is kept in the run folder under the key of what it was built from (``artifacts.py``), so a run
repeated with other settings recomputes exactly the stages those settings reach and reuses the rest, and an
interrupted run picks up where it stopped. The run holds the folder as its one writer from before its first write
(``RunFolder.writing``: a folder that is not absent, empty or a run folder of this tool, or one another run is writing,
is refused), then writes the resolved config to ``OUT/config.json`` first.

Under ``torchrun`` / ``accelerate launch`` every process runs this function: the main process builds the stages that
run once while the others wait, tuning is DDP and scoring is sharded (``distributed.py``); one set of outputs.
"""

from __future__ import annotations

import time
from pathlib import Path

from .artifacts import RunFolder, write_json_atomically
from .config import RunConfig
from .distributed import current_processes
from .plan import plan_run
from .stages import Runtime
from .stages import crm as crm_stage
from .stages import data as data_stage
from .stages import report as report_stage
from .stages import retrieval as retrieval_stage
from .stages import score as score_stage
from .stages import tune as tune_stage
from .stages.report import RunResult
from .validation import validate


def run_pipeline(config: RunConfig) -> RunResult:
    """Run every stage ``config`` asks for; returns the table (also in ``OUT/results.json``)."""
    started = time.perf_counter()
    validate(config)
    plan = plan_run(config)  # every key, before anything is computed or written
    processes = current_processes()  # one, or those of torchrun / accelerate launch
    folder = RunFolder(config.out, log=_print, processes=processes)
    with folder.writing():
        return _run(config, plan, folder, started)


def _run(config: RunConfig, plan, folder: RunFolder, started: float) -> RunResult:
    processes = folder.processes
    if processes.main:
        write_json_atomically(folder.config_path, config.to_dict())
    runtime = Runtime(progress=config.progress, processes=processes, report_to=config.tracking.report_to,
                      project=config.tracking.project,
                      tracking_dir=Path(config.tracking.logging_dir or folder.root / "tracking"))

    _section(folder, f"data: {config.data.dataset}")
    dataset = data_stage.run(folder, plan.data, runtime)

    _section(folder, "retrieval")
    retrievals = {mode: retrieval_stage.run(folder, node, dataset, config.retrieval, runtime)
                  for mode, node in plan.retrievals.items()}

    _section(folder, "stage 1: CRMs")
    crms = {key: crm_stage.run(folder, node, dataset, retrievals[key[1]], runtime) for key, node in plan.crms.items()}
    rcs = {key: crm_stage.rc(folder, node, crms[key], dataset, retrievals[key[1]], runtime)
           for key, node in plan.rcs.items()}
    scores = {}
    for model in plan.crm_models:
        trained = crms[model.name, model.history]
        scores[model.display_name] = score_stage.score_crm(folder, model.score, trained.model, dataset,
                                                           retrievals[model.history], runtime)

    _section(folder, "stage 2: LLM models")
    adapters, shuffled = {}, {}
    for model in plan.llm_models:
        _section(folder, model.name)
        short = retrievals[model.short_history]
        rc = rcs[model.gate_crm] if model.gate_crm else None
        if model.tune is not None:
            adapters[model.name] = tune_stage.run(folder, model.tune, dataset, short, rc, runtime)
        adapter_dir = adapters[model.name].adapter_dir if model.name in adapters else None
        scores[model.name] = score_stage.score_llm(folder, model.score, dataset, short, adapter_dir, rc, runtime)
        if model.shuffled is not None:
            shuffled[model.name] = score_stage.score_llm(folder, model.shuffled, dataset, short, adapter_dir, rc,
                                                         runtime)

    _section(folder, "report")
    result = None
    if processes.main:
        result = report_stage.run(folder, config, plan, scores, adapters, dataset, time.perf_counter() - started,
                                  shuffled)
        built = sum(event.action != "reused" for event in folder.events)
        folder.log(f"{built} stage(s) computed, {len(folder.events) - built} reused; table in {folder.results_path}")
    processes.wait()
    return result if processes.main else report_stage.read(folder)


def _section(folder: RunFolder, title: str) -> None:
    folder.log(f"\n== {title}")


def _print(message: str) -> None:
    print(message, flush=True)
