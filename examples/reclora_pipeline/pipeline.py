"""The whole Few2Many protocol as one run, top to bottom:

    data -> retrieval (per history mode) -> CRMs: train + R_c (stage 1) -> per LLM model: tune (stage 2) -> score
    -> report (results.json, results.md, predictions/, plots/)

    from reclora_pipeline.config import RunConfig
    from reclora_pipeline.pipeline import run_pipeline

    results = run_pipeline(RunConfig.from_preset("demo", {"out": "runs/demo"}))
    results["RecLoRA"]["auc"]

Each stage's artifact is kept in the run folder under the key of what it was built from (``artifacts.py``), so a run
repeated with other settings recomputes exactly the stages those settings reach and reuses the rest, and an
interrupted run picks up where it stopped. The resolved config is written to ``OUT/config.json`` first.
"""

from __future__ import annotations

import time

from .artifacts import RunFolder
from .config import RunConfig
from .plan import plan_run
from .stages import Runtime
from .stages import crm as crm_stage
from .stages import data as data_stage
from .stages import report as report_stage
from .stages import retrieval as retrieval_stage
from .stages import score as score_stage
from .stages import tune as tune_stage
from .stages.report import RunResult


def run_pipeline(config: RunConfig) -> RunResult:
    """Run every stage ``config`` asks for; returns the table (also in ``OUT/results.json``)."""
    started = time.perf_counter()
    config.validate()
    plan = plan_run(config)  # every key, before anything is computed or written
    folder = RunFolder(config.out, log=_print)
    folder.root.mkdir(parents=True, exist_ok=True)
    config.write(folder.config_path)
    runtime = Runtime(progress=config.progress)

    _section(f"data: {config.data.dataset}")
    dataset = data_stage.run(folder, plan.data)

    _section("retrieval")
    retrievals = {mode: retrieval_stage.run(folder, node, dataset, config.retrieval, runtime)
                  for mode, node in plan.retrievals.items()}

    _section("stage 1: CRMs")
    crms = {key: crm_stage.run(folder, node, dataset, retrievals[key[1]], runtime) for key, node in plan.crms.items()}
    rcs = {key: crm_stage.rc(folder, node, crms[key], dataset, retrievals[key[1]]) for key, node in plan.rcs.items()}
    scores = {}
    for model in plan.crm_models:
        trained = crms[model.name, model.history]
        scores[model.display_name] = score_stage.score_crm(folder, model.score, trained.model, dataset,
                                                           retrievals[model.history])

    _section("stage 2: LLM models")
    adapters = {}
    for model in plan.llm_models:
        _section(model.name)
        short = retrievals[model.short_history]
        rc = rcs[model.gate_crm] if model.gate_crm else None
        if model.tune is not None:
            adapters[model.name] = tune_stage.run(folder, model.tune, dataset, short, rc, runtime)
        adapter_dir = adapters[model.name].adapter_dir if model.name in adapters else None
        scores[model.name] = score_stage.score_llm(folder, model.score, dataset, short, adapter_dir, rc, runtime)

    _section("report")
    result = report_stage.run(folder, config, plan, scores, adapters, dataset, time.perf_counter() - started)
    built = sum(event.action != "reused" for event in folder.events)
    _print(f"{built} stage(s) computed, {len(folder.events) - built} reused; table in {folder.results_path}")
    return result


def _section(title: str) -> None:
    _print(f"\n== {title}")


def _print(message: str) -> None:
    print(message, flush=True)
