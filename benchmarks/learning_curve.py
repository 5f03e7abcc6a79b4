"""Summarise a learning-curve run (``reclora-pipeline run --preset learning-curve``) from its stored score stages.

Reads every ``OUT/stages/score/*`` of the run, so sizes whose report was never written (a run stopped after a size was
scored) count too. Every model was scored on the same evaluation samples; the labels come from the run's prediction
file of the gate CRM (``OUT/predictions/SIM.csv``), whose order is checked against the CRM's score stage. For each
model and few-shot size: AUC with its DeLong interval, LogLoss with its bootstrap interval, the paired DeLong
difference with the CRM, the Spearman correlation with the CRM's scores, and (RecLoRA) the AUC with R_c shuffled
across samples. A least-squares line of (model - CRM) AUC on log2(few-shot size) gives the trend per doubling.

    PYTHONPATH=examples:. python benchmarks/learning_curve.py runs/ml-100k-learning-curve --out DIR

writes ``DIR/learning_curve.json`` and ``DIR/sample_efficiency.png`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from reclora_pipeline import uncertainty
from reclora_pipeline.plots import plot_sample_efficiency


SHUFFLED = " (shuffled R_c)"


def score_stages(run: Path) -> dict:
    """label -> (scores, evaluation sample ids) for every finished score stage of the run."""
    stages = {}
    for manifest in sorted((run / "stages" / "score").glob("*/stage.json")):
        stage = json.loads(manifest.read_text())
        folder = manifest.parent
        samples = json.loads((folder / "eval_samples.json").read_text())["sample_ids"]
        stages[stage["label"]] = (np.load(folder / "scores.npy"), samples)
    return stages


def split_label(label: str, default_size: int) -> tuple[str, int]:
    """'RecLoRA (N=768)' -> ('RecLoRA', 768); 'LoRA (r=8, N=768)' -> ('LoRA (r=8)', 768); no N: the run's size."""
    match = re.search(r"(, |\s\()N=(\d+)\)", label)
    if not match:
        return label, default_size
    name = label[:match.start()] + (")" if match.group(1) == ", " else "")
    return name, int(match.group(2))


def summarise(run: Path, crm: str = "SIM") -> dict:
    config = json.loads((run / "config.json").read_text())
    stages = score_stages(run)
    if crm not in stages:
        raise SystemExit(f"{run}: no score stage of the CRM {crm!r}")
    predictions = pd.read_csv(run / "predictions" / f"{crm}.csv")
    crm_scores, samples = stages[crm]
    if len(predictions) != len(crm_scores) or np.abs(predictions["score"].to_numpy() - crm_scores).max() > 1e-5:
        raise SystemExit(f"{run}: predictions/{crm}.csv does not match the {crm} score stage")
    labels = predictions["label"].to_numpy()
    rows = []
    for label, (scores, ids) in stages.items():
        if label == crm or label.endswith(SHUFFLED):
            continue
        if ids != samples:
            raise SystemExit(f"{label} was scored on other samples than {crm}")
        name, size = split_label(label, int(config["tune"]["few_shot"]))
        row = {"model": name, "few_shot": size, "label": label,
               "auc": uncertainty.auc_interval(labels, scores).to_dict(),
               "logloss": uncertainty.logloss_interval(labels, scores).to_dict(),
               f"minus_{crm}": uncertainty.paired_auc_test(labels, scores, crm_scores, label, crm).to_dict(),
               f"spearman_with_{crm}": uncertainty.rank_correlation(scores, crm_scores),
               "score_quantiles_1_99": [float(np.quantile(scores, 0.01)), float(np.quantile(scores, 0.99))]}
        if label + SHUFFLED in stages:
            row["shuffled_rc_auc"] = uncertainty.auc_interval(labels, stages[label + SHUFFLED][0]).to_dict()
        rows.append(row)
    rows.sort(key=lambda row: (row["model"], row["few_shot"]))
    trends = {}
    for name in sorted({row["model"] for row in rows}):
        points = [(row["few_shot"], row[f"minus_{crm}"]["difference"]) for row in rows if row["model"] == name]
        if len(points) >= 2:
            slope, intercept = np.polyfit(np.log2([size for size, _ in points]), [d for _, d in points], 1)
            trends[name] = {"per_doubling": float(slope), "intercept": float(intercept)}
    return {"run": str(run), "crm": crm, "n": len(labels),
            "crm_auc": uncertainty.auc_interval(labels, crm_scores).to_dict(),
            "crm_logloss": uncertainty.logloss_interval(labels, crm_scores).to_dict(),
            "rows": rows, f"trend_minus_{crm}_auc_vs_log2_few_shot": trends}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the run folder (OUT)")
    parser.add_argument("--out", type=Path, required=True, help="folder for learning_curve.json and the plot")
    parser.add_argument("--crm", default="SIM", help="the gate CRM's label (default SIM)")
    args = parser.parse_args()
    summary = summarise(args.run, args.crm)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning_curve.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    curves: dict = {}
    for row in summary["rows"]:
        auc = row["auc"]
        curves.setdefault(row["model"], []).append(
            (row["few_shot"], auc["estimate"], (auc["estimate"] - auc["low"], auc["high"] - auc["estimate"])))
    crm = summary["crm_auc"]
    plot_sample_efficiency(curves, args.out / "sample_efficiency.png",
                           title=f"MovieLens-100K, {summary['n']:,} test samples",
                           references={f"{args.crm} (CRM)": (crm["estimate"], (crm["estimate"] - crm["low"],
                                                                              crm["high"] - crm["estimate"]))})
    print(f"{args.crm}: AUC {crm['estimate']:.4f} [{crm['low']:.4f}, {crm['high']:.4f}]")
    for row in summary["rows"]:
        auc, diff = row["auc"], row[f"minus_{args.crm}"]
        shuffled = row.get("shuffled_rc_auc", {}).get("estimate")
        print(f"{row['model']:12s} N={row['few_shot']:<5d} AUC {auc['estimate']:.4f} "
              f"[{auc['low']:.4f}, {auc['high']:.4f}]"
              f"  LogLoss {row['logloss']['estimate']:.4f}  - {args.crm} {diff['difference']:+.4f} "
              f"[{diff['low']:+.4f}, {diff['high']:+.4f}] p={diff['p_value']:.3g}"
              f"  Spearman {row[f'spearman_with_{args.crm}']:.3f}"
              + (f"  R_c shuffled {shuffled:.4f}" if shuffled else ""))
    for name, trend in summary[f"trend_minus_{args.crm}_auc_vs_log2_few_shot"].items():
        print(f"trend {name} - {args.crm}: {trend['per_doubling']:+.4f} AUC per doubling of the few-shot size")


if __name__ == "__main__":
    main()
