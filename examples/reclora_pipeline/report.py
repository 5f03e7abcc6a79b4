"""Run outputs: ``results.json``, per-model prediction CSVs, a markdown table and plots (PNG).

Layout of a run folder ``OUT``:

    OUT/results.json               per model: auc, logloss, n, positive_rate, rel_impr, kind, settings
    OUT/predictions/<model>.csv    user_id,item_id,timestamp,label,score for every scored test sample
    OUT/results.md                 the comparison table
    OUT/plots/*.png                model comparison, AUC vs num_meta_loras, sample efficiency, gate usage
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .metrics import ctr_metrics, rel_impr

PREDICTION_COLUMNS = ("user_id", "item_id", "timestamp", "label", "score")


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)


def write_predictions(out_dir: Path, model_name: str, rows, scores: Sequence[float]) -> Path:
    """``rows``: a table (pandas) with user_id, item_id, timestamp, label for the scored samples, in score order."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(rows) != len(scores):
        raise ValueError(f"{len(scores)} scores for {len(rows)} samples of {model_name}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{model_name} produced non-finite scores")
    path = Path(out_dir) / "predictions" / f"{safe_name(model_name)}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PREDICTION_COLUMNS)
        for (user_id, item_id, timestamp, label), score in zip(
            zip(rows["user_id"], rows["item_id"], rows["timestamp"], rows["label"]), scores
        ):
            writer.writerow([user_id, item_id, int(timestamp), int(label), f"{score:.6f}"])
    return path


class ResultsBook:
    """Collects model results of one run and writes them out; ``results.json`` is rewritten after every model so an
    interrupted run keeps what it finished."""

    def __init__(self, out_dir: Path, reference: str = "RecLoRA", metadata: Optional[dict] = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.reference = reference
        self.metadata = dict(metadata or {})
        self.models: dict[str, dict] = {}
        existing = self.out_dir / "results.json"
        if existing.is_file():
            previous = json.loads(existing.read_text())
            self.models.update(previous.get("models", {}))

    def add(self, name: str, labels, scores, kind: str, settings: Optional[dict] = None, rows=None) -> dict:
        scores = np.asarray(scores, dtype=np.float64)
        if len(scores) != len(labels):
            raise ValueError(f"{len(scores)} scores for {len(labels)} labels of {name}")
        if not np.isfinite(scores).all():
            raise ValueError(f"{name} produced non-finite scores")
        entry = ctr_metrics(labels, scores)
        entry.update({"kind": kind, "settings": settings or {}})
        self.models[name] = entry
        if rows is not None:
            write_predictions(self.out_dir, name, rows, scores)
        self.write()
        return entry

    def _with_rel_impr(self) -> dict:
        models = {name: dict(entry) for name, entry in self.models.items()}
        reference = models.get(self.reference)
        for name, entry in models.items():
            entry["rel_impr"] = (
                None if reference is None or name == self.reference else rel_impr(reference["auc"], entry["auc"])
            )
        return models

    def write(self) -> None:
        models = self._with_rel_impr()
        payload = {"reference_model": self.reference, **self.metadata, "models": models}
        (self.out_dir / "results.json").write_text(json.dumps(payload, indent=2, default=str))
        (self.out_dir / "results.md").write_text(self.markdown())

    def markdown(self) -> str:
        models = self._with_rel_impr()
        lines = [
            f"| model | kind | AUC | LogLoss | RelImpr of {self.reference} | n |",
            "|---|---|---|---|---|---|",
        ]
        for name, entry in models.items():
            impr = "-" if entry["rel_impr"] is None else f"{100 * entry['rel_impr']:+.2f}%"
            lines.append(
                f"| {name} | {entry['kind']} | {entry['auc']:.4f} | {entry['logloss']:.4f} | {impr} | {entry['n']} |"
            )
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------------
# plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_model_comparison(models: dict, path: Path) -> Path:
    plt = _pyplot()
    names = list(models)
    aucs = [models[n]["auc"] for n in names]
    colors = ["tab:orange" if models[n].get("kind") == "llm" else "tab:blue" for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 3.6))
    ax.bar(range(len(names)), aucs, color=colors)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    low = min(aucs)
    ax.set_ylim(max(0.0, low - 0.05), min(1.0, max(aucs) + 0.03))
    for i, value in enumerate(aucs):
        ax.text(i, value, f"{value:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("test AUC")
    ax.set_title("Test AUC (blue: CRMs, orange: LLMs)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_auc_vs_num_meta_loras(points: Sequence[tuple[int, float]], path: Path) -> Path:
    plt = _pyplot()
    points = sorted(points)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("num_meta_loras (N_m)")
    ax.set_ylabel("test AUC")
    ax.set_title("RecLoRA: AUC vs number of meta-LoRAs")
    fig.tight_layout()
    return _save(fig, path)


def plot_sample_efficiency(curves: dict[str, Sequence[tuple[int, float]]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, points in curves.items():
        points = sorted(points)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("few-shot training samples")
    ax.set_ylabel("test AUC")
    ax.set_title("Sample efficiency")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_gate_usage(alpha: np.ndarray, path: Path, title: str = "Gate usage per meta-LoRA") -> Path:
    """Mean gate weight per expert with the spread over users, and the mean entropy against the uniform maximum."""
    plt = _pyplot()
    alpha = np.asarray(alpha, dtype=np.float64)
    experts = np.arange(alpha.shape[1])
    entropy = float(np.mean(-(alpha * np.log(np.clip(alpha, 1e-12, None))).sum(axis=1)))
    fig, ax = plt.subplots(figsize=(max(4.5, 0.3 * len(experts) + 2), 3.2))
    ax.bar(experts, alpha.mean(axis=0), yerr=alpha.std(axis=0), capsize=2)
    ax.axhline(1.0 / alpha.shape[1], color="gray", linestyle="--", linewidth=1, label="uniform")
    ax.set_xlabel("meta-LoRA k")
    ax.set_ylabel("mean alpha_k (± std over samples)")
    ax.set_title(f"{title}\nmean entropy {entropy:.3f} (uniform {np.log(alpha.shape[1]):.3f})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
