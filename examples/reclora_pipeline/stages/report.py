"""The report: the comparison table of the run's models, written into the run folder from their score artifacts.

    OUT/results.json         per model: kind, method, study, auc, logloss, n, positive_rate, rel_impr, the keys of its
                             stages (score, tune, rc, crm) and what training measured; the run's device, versions,
                             dataset files (sha256), timings and the digest of OUT/config.json
    OUT/results.md           the table
    OUT/predictions/<model>.csv, OUT/eval_samples.json, OUT/plots/*.png
    OUT/results_previous.json  entries of earlier tables of this folder that this run's table no longer holds

The table holds exactly the models of this run's config; every number in it is computed here from the scores the
report writes to predictions/ (never from a summary cached beside them); results.json is written last, so it never
names an artifact that is not finished, and the previous results.json is removed before anything else is written, so
a results.json always describes the predictions and plots beside it. The report removes only files it wrote itself:
the predictions and plots of earlier tables are listed in ``OUT/.report_files.json`` (before they are written), and a
file there that this table does not rewrite is removed; any other file is left alone.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import uncertainty
from ..artifacts import RunFolder, atomic_path, read_json, safe_name, write_json_atomically, write_text_atomically
from ..config import RunConfig
from ..crm.registry import crm_class
from ..data import RecDataset
from ..methods import REFERENCE_NAME, Lora, RecLora
from ..metrics import ctr_metrics, rel_impr
from ..plots import plot_auc_vs_num_meta_loras, plot_gate_usage, plot_model_comparison, plot_sample_efficiency
from ..provenance import run_provenance
from ..sampling import save_index_file


PREDICTION_COLUMNS = ("user_id", "item_id", "timestamp", "label", "score")
PREVIOUS_NAME = "results_previous.json"
WRITTEN_NAME = ".report_files.json"  # the predictions and plots the report wrote (relative paths)


class RunResult(Mapping):
    """The models of a run by name (each entry as in results.json), and what each stage did (``stages``)."""

    def __init__(self, models: dict, stages: list, path: Path):
        self.models, self.stages, self.path = models, stages, path

    def __getitem__(self, name):
        return self.models[name]

    def __iter__(self):
        return iter(self.models)

    def __len__(self):
        return len(self.models)

    def actions(self) -> dict:
        """``{(stage, label): "built" | "reused" | "rebuilt"}``."""
        return {(event.stage, event.label): event.action for event in self.stages}


def run(folder: RunFolder, config: RunConfig, plan, scores: dict, adapters: dict, dataset: RecDataset,
        seconds: float, shuffled: Optional[dict] = None) -> RunResult:
    """``scores``: name -> ``Scores``, in table order; ``adapters``: name -> ``TunedAdapter`` of the tuned models;
    ``shuffled``: name -> ``Scores`` of a model scored with R_c shuffled across the samples
    (``eval.shuffled_gate``)."""
    _check_same_samples({**scores, **{f"{name} (shuffled R_c)": s for name, s in (shuffled or {}).items()}})
    first = next(iter(scores.values()))
    labels = dataset.label[dataset.rows_for(first.sample_ids)]
    models = _entries(plan, scores, adapters, labels)
    add_statistics(models, labels, {name: result.scores for name, result in scores.items()}, config.eval.test_seed)
    add_gate_dependence(models, plan, labels, scores, shuffled or {})
    rows = dataset.samples.set_index("sample_id").loc[first.sample_ids].reset_index()
    _set_aside_previous(folder, models)
    for path in (folder.results_path, folder.root / "results.md"):  # a killed report leaves no table, never an old
        path.unlink(missing_ok=True)  # table beside the predictions and plots of this run
    written = _ReportFiles(folder.root)
    write_predictions(folder.root / "predictions", rows, {name: result.scores for name, result in scores.items()},
                      written)
    save_index_file(folder.root / "eval_samples.json", first.sample_ids, split="test", size=len(first.sample_ids),
                    seed=config.eval.test_seed, of=len(dataset.sample_ids("test")))
    _write_plots(folder.root / "plots", config, plan, models, scores, written)
    written.remove_the_rest()
    payload = {
        "reference_model": REFERENCE_NAME,
        "statistics": STATISTICS_NOTE.format(seed=config.eval.test_seed),
        "config_digest": config.digest(),
        "eval_samples": int(len(first.sample_ids)),
        "test_split_size": int(len(dataset.sample_ids("test"))),
        "device": _device(), **run_provenance(config.data), "date": time.strftime("%Y-%m-%d"),
        "timings": {**_timings(folder), "total_s": seconds},
        "models": models,
    }
    write_text_atomically(folder.root / "results.md", markdown(models, seed=config.eval.test_seed))
    write_json_atomically(folder.results_path, payload)  # last: the commit point of the run
    return RunResult(models, list(folder.events), folder.results_path)


def _entries(plan, scores: dict, adapters: dict, labels) -> dict:
    """Each model's entry; its metrics are computed from ``labels`` and the scores the report writes."""
    info = {m.display_name: {"kind": "crm", "method": m.name, "study": "main",
                             "stages": {"score": m.score.key, "crm": m.crm.key}} for m in plan.crm_models}
    for m in plan.llm_models:
        stages = {"score": m.score.key}
        if m.tune is not None:
            stages["tune"] = m.tune.key
        if m.rc is not None:
            stages["rc"] = m.rc.key
            stages["crm"] = m.rc.upstream[0].key
        info[m.name] = {"kind": "llm", "method": m.method.choice, "study": m.method.study, "stages": stages,
                        "short_history": m.short_history, "long_history": m.long_history}
    metrics = {name: ctr_metrics(labels, result.scores) for name, result in scores.items()}
    models = {}
    for name, result in scores.items():
        entry = {**info[name], **metrics[name]}
        entry["rel_impr"] = (None if REFERENCE_NAME not in metrics or name == REFERENCE_NAME
                             else rel_impr(metrics[REFERENCE_NAME]["auc"], metrics[name]["auc"]))
        if name in adapters:
            summary = adapters[name].summary
            entry.update({key: summary.get(key) for key in ("trainable_parameters", "train_runtime_s", "train_loss")})
        models[name] = entry
    return models


def _check_same_samples(scores: dict) -> None:
    first = next(iter(scores.values()))
    for result in scores.values():
        if not np.array_equal(result.sample_ids, first.sample_ids):
            raise RuntimeError(f"{result.name} was scored on other samples than {first.name} ({result.path})")


STATISTICS_NOTE = ("AUC: 95% DeLong interval; LogLoss: 95% BCa bootstrap interval of the mean per-sample loss "
                   f"({uncertainty.BOOTSTRAP_RESAMPLES} resamples, seed {{seed}}); {REFERENCE_NAME} against each "
                   "model on the same samples: DeLong's paired test (AUC) and the paired t-test with a bootstrap "
                   "interval (LogLoss).")


def add_statistics(models: dict, labels, scores: dict, seed: int) -> None:
    """Each model's AUC and LogLoss intervals, and the paired comparison of the reference model with every other
    (``vs_reference``: reference minus model), into the entries of ``models``."""
    for name, values in scores.items():
        models[name].update(uncertainty.summarize(labels, values, seed))
    if REFERENCE_NAME in scores:
        for name, tests in uncertainty.compare(labels, scores, REFERENCE_NAME, seed).items():
            models[name]["vs_reference"] = tests


def add_gate_dependence(models: dict, plan, labels, scores: dict, shuffled: dict) -> None:
    """For a model that reads R_c: its AUC with R_c shuffled across the samples (the paired drop from its own AUC)
    and the rank correlation of its scores with its gate CRM's, i.e. how much of its score is the CRM's."""
    crm_names = {(m.name, m.history): m.display_name for m in plan.crm_models}
    for model in plan.llm_models:
        if model.gate_crm is None or model.name not in scores:
            continue
        block = {}
        crm = crm_names.get(tuple(model.gate_crm))
        if crm in scores:
            block["gate_crm"] = crm
            block["spearman_with_gate_crm"] = uncertainty.rank_correlation(scores[model.name].scores,
                                                                           scores[crm].scores)
        if model.name in shuffled:
            block["shuffled_rc_auc"] = uncertainty.auc_interval(labels, shuffled[model.name].scores).to_dict()
            block["drop_when_shuffled"] = uncertainty.paired_auc_test(
                labels, scores[model.name].scores, shuffled[model.name].scores, model.name,
                f"{model.name} (shuffled R_c)").to_dict()
            block["shuffled_rc_key"] = shuffled[model.name].key
        if block:
            models[model.name]["gate_dependence"] = block


def markdown(models: dict, seed: int = 0) -> str:
    """The table with each model's intervals and the reference's paired comparisons, then what they allow one to
    conclude."""
    lines = [f"| model | kind | AUC [95% CI] | LogLoss [95% CI] | RelImpr of {REFERENCE_NAME} | "
             f"ΔAUC {REFERENCE_NAME} − model [95% CI] | p | n |", "|---|---|---|---|---|---|---|---|"]
    for name, entry in models.items():
        impr = "-" if entry["rel_impr"] is None else f"{100 * entry['rel_impr']:+.2f}%"
        paired = entry.get("vs_reference", {}).get("auc")
        delta = "-" if paired is None else f"{paired['difference']:+.4f} [{paired['low']:+.4f}, {paired['high']:+.4f}]"
        p_value = "-" if paired is None else uncertainty.format_p(paired["p_value"])
        auc = uncertainty.format_interval(entry["auc_ci"]) if "auc_ci" in entry else f"{entry['auc']:.4f}"
        loss = uncertainty.format_interval(entry["logloss_ci"]) if "logloss_ci" in entry else f"{entry['logloss']:.4f}"
        lines.append(f"| {name} | {entry['kind']} | {auc} | {loss} | {impr} | {delta} | {p_value} | {entry['n']} |")
    lines.append("")
    lines.append(STATISTICS_NOTE.format(seed=seed))
    verdicts = [uncertainty.verdict(entry["vs_reference"]["auc"]) for entry in models.values()
                if "vs_reference" in entry]
    if verdicts:
        lines.append("")
        lines.extend(f"- {text}" for text in verdicts)
    dependence = [(name, entry["gate_dependence"]) for name, entry in models.items() if "gate_dependence" in entry]
    if dependence:
        lines.append("")
        lines.append("How much of a model's score is its gate CRM's:")
        lines.append("")
        for name, block in dependence:
            parts = []
            if "spearman_with_gate_crm" in block:
                parts.append(f"Spearman with {block['gate_crm']} {block['spearman_with_gate_crm']:.3f}")
            if "shuffled_rc_auc" in block:
                drop = block["drop_when_shuffled"]
                parts.append(f"AUC with R_c shuffled across samples "
                             f"{uncertainty.format_interval(block['shuffled_rc_auc'])} "
                             f"(drop {drop['difference']:+.4f} [{drop['low']:+.4f}, {drop['high']:+.4f}], "
                             f"p {uncertainty.format_p(drop['p_value'])})")
            lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def read(folder: RunFolder) -> RunResult:
    """The result a finished run wrote (what the processes other than the main one return)."""
    payload = read_json(folder.results_path, "run results")
    return RunResult(payload["models"], [], folder.results_path)


def write_predictions(directory: Path, rows, scores: dict, written: Optional["_ReportFiles"] = None) -> None:
    """``<model>.csv`` with user_id, item_id, timestamp, label (``rows``, one per evaluation sample) and each model's
    score; ``written`` records them (and removes, at its end, the CSVs of earlier tables that are not rewritten)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, values in scores.items():
        if len(values) != len(rows):
            raise ValueError(f"{len(values)} scores of {name} for {len(rows)} samples")
    paths = {name: directory / f"{safe_name(name)}.csv" for name in scores}
    if written is not None:
        written.will_write(paths.values())
    for name, values in scores.items():
        path = paths[name]
        with atomic_path(path) as staging, open(staging, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(PREDICTION_COLUMNS)
            for user_id, item_id, timestamp, label, score in zip(rows["user_id"], rows["item_id"], rows["timestamp"],
                                                                 rows["label"], values):
                writer.writerow([user_id, item_id, int(timestamp), int(label), f"{score:.6f}"])


def _write_plots(directory: Path, config: RunConfig, plan, models: dict, scores: dict,
                 written: "_ReportFiles") -> None:
    def keep(path: Path) -> Path:  # listed before it is written
        written.will_write([path])
        return path

    by_name = {m.name: m.method for m in plan.llm_models}
    main = {name: entry for name, entry in models.items()
            if entry["kind"] == "crm" or entry["study"] in ("main", "ablation")}
    if main:
        plot_model_comparison(main, keep(directory / "model_comparison.png"))

    def plain(method) -> bool:  # the run's own histories and few-shot size
        return (method.short_mode(config) == config.retrieval.mode
                and method.few_shot_size(config) == config.tune.few_shot
                and (not method.needs_crm or method.long_mode(config) == config.retrieval.mode))

    def point(x, entry: dict, key: str = "auc_ci") -> tuple:
        interval = entry[key]
        return x, interval["estimate"], (interval["estimate"] - interval["low"],
                                         interval["high"] - interval["estimate"])

    points = [point(by_name[n].num_meta_loras(config), models[n]) for n in models
              if type(by_name.get(n)) is RecLora and plain(by_name[n])]
    if len(points) > 1:
        plot_auc_vs_num_meta_loras(points, keep(directory / "auc_vs_num_meta_loras.png"))
    curves: dict = {}
    main_n_m = RecLora().num_meta_loras(config)
    for name in models:
        method = by_name.get(name)
        if type(method) not in (RecLora, Lora) or method.study not in ("main", "few_shot"):
            continue
        if method.num_meta_loras(config) != main_n_m or method.short_mode(config) != config.retrieval.mode:
            continue
        label = REFERENCE_NAME if type(method) is RecLora else f"LoRA (r={method.lora_rank(config)})"
        curves.setdefault(label, []).append(point(method.few_shot_size(config), models[name]))
        dependence = models[name].get("gate_dependence", {})
        if "shuffled_rc_auc" in dependence:
            curves.setdefault(f"{label}, R_c shuffled", []).append(
                point(method.few_shot_size(config), dependence, "shuffled_rc_auc"))
    if any(len(points) > 1 for points in curves.values()):
        gate = crm_class(config.crm.name).display_name
        references = {f"{gate} (CRM)": point(None, models[gate])[1:]} if gate in models else {}
        plot_sample_efficiency(curves, keep(directory / "sample_efficiency.png"), references=references,
                               title=f"AUC against few-shot size on {next(iter(models.values()))['n']} test "
                                     "samples (95% DeLong intervals)")
    for name, result in scores.items():
        if result.gate is not None:
            plot_gate_usage(result.gate, keep(directory / f"gate_usage_{safe_name(name)}.png"),
                            title=f"{name}: gate usage over {len(result.gate)} test samples")


class _ReportFiles:
    """The predictions and plots the report writes, listed in ``OUT/.report_files.json`` before each is written, so
    that the next table removes exactly the files an earlier one wrote and this one does not (even after a kill), and
    never a file of anyone else."""

    def __init__(self, root: Path):
        self.root, self.path = root, root / WRITTEN_NAME
        self.earlier = set(self._read())
        self.now: set = set()

    def _read(self) -> list:
        try:
            listed = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return [name for name in listed if isinstance(name, str)] if isinstance(listed, list) else []

    def will_write(self, paths) -> None:
        self.now.update(Path(path).relative_to(self.root).as_posix() for path in paths)
        write_json_atomically(self.path, sorted(self.earlier | self.now))

    def remove_the_rest(self) -> None:
        for name in sorted(self.earlier - self.now):
            path = self.root / name
            if path.is_file() and not path.is_symlink():
                path.unlink()
        write_json_atomically(self.path, sorted(self.now))


def _set_aside_previous(folder: RunFolder, models: dict) -> None:
    """Entries of the previous results.json that this table does not hold (another model, or the same name scored
    with other settings) are kept in results_previous.json instead of being lost."""
    if not folder.results_path.is_file():
        return
    try:
        previous = json.loads(folder.results_path.read_text())["models"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as error:
        folder.log(f"report: {folder.results_path} is not a readable results file ({type(error).__name__}: {error}); "
                   "it is replaced and none of it is kept")
        return
    stale = {name: entry for name, entry in previous.items()
             if not isinstance(entry, dict) or name not in models
             or (entry.get("stages") or {}).get("score") != models[name]["stages"]["score"]}
    if not stale:
        return
    path = folder.root / PREVIOUS_NAME
    kept: dict = {}
    if path.is_file():
        try:
            kept = json.loads(path.read_text())
        except json.JSONDecodeError:
            folder.log(f"report: {path} is not valid JSON; it is started again")
    kept.update(stale)
    write_json_atomically(path, kept)
    folder.log(f"report: {len(stale)} result(s) of an earlier table kept in {PREVIOUS_NAME}: {', '.join(stale)}")


def _timings(folder: RunFolder) -> dict:
    timings: dict = {}
    for event in folder.events:
        timings[f"{event.stage}_s"] = timings.get(f"{event.stage}_s", 0.0) + event.seconds
    return timings


def _device() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
