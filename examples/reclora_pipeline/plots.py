"""The plots of a run: model comparison, AUC vs the number of meta-LoRAs, sample efficiency, gate usage (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .artifacts import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _error(entry: dict, key: str = "auc_ci"):
    """(below, above) of an entry's interval around its estimate, or None when it has none."""
    interval = entry.get(key)
    if not interval:
        return None
    return max(0.0, interval["estimate"] - interval["low"]), max(0.0, interval["high"] - interval["estimate"])


def plot_model_comparison(models: dict, path: Path) -> Path:
    """Test AUC per model with its 95% interval; the axis starts at the chance level 0.5 (an AUC below it is drawn
    down from 0.5)."""
    plt = _pyplot()
    names = list(models)
    aucs = [models[n]["auc"] for n in names]
    errors = [_error(models[n]) for n in names]
    colors = ["tab:orange" if models[n].get("kind") == "llm" else "tab:blue" for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 3.8))
    chance = 0.5
    bars = [value - chance for value in aucs]
    yerr = None
    if all(error is not None for error in errors):
        yerr = np.array(errors).T
    ax.bar(range(len(names)), bars, bottom=chance, color=colors, yerr=yerr, capsize=3, ecolor="black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    tops = [value + (error[1] if error else 0.0) for value, error in zip(aucs, errors)]
    lows = [value - (error[0] if error else 0.0) for value, error in zip(aucs, errors)]
    ax.set_ylim(min(chance, min(lows) - 0.02), min(1.0, max(tops) + 0.04))
    ax.axhline(chance, color="gray", linewidth=0.8)
    for i, (value, top) in enumerate(zip(aucs, tops)):
        ax.text(i, top, f"{value:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("test AUC")
    what = "95% intervals (DeLong)" if yerr is not None else "no intervals"
    ax.set_title(f"Test AUC, {what}; axis from chance (0.5)\nblue: CRMs, orange: LLMs", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _curve(ax, points, label=None) -> None:
    """A line through (x, auc) or (x, auc, (below, above)) points, with error bars where intervals are given."""
    points = sorted(points, key=lambda point: point[0])
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    errors = [p[2] if len(p) > 2 else None for p in points]
    yerr = np.array(errors).T if all(error is not None for error in errors) else None
    ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, label=label)


def plot_auc_vs_num_meta_loras(points: Sequence[tuple], path: Path) -> Path:
    """``points``: (N_m, AUC) or (N_m, AUC, (below, above))."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    _curve(ax, points)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("num_meta_loras (N_m)")
    ax.set_ylabel("test AUC")
    ax.set_title("RecLoRA: AUC vs number of meta-LoRAs")
    fig.tight_layout()
    return _save(fig, path)


def plot_sample_efficiency(curves: dict[str, Sequence[tuple]], path: Path, title: str = "Sample efficiency",
                           references: Optional[dict] = None) -> Path:
    """``curves``: name -> points (few-shot size, AUC) or (size, AUC, (below, above)); ``references``: name ->
    (AUC, (below, above)) drawn as horizontal bands (a CRM, which does not depend on the few-shot size); the chance
    level is drawn."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, points in curves.items():
        _curve(ax, points, label=name)
    for index, (name, (value, (below, above))) in enumerate((references or {}).items()):
        color = f"C{len(curves) + index}"
        ax.axhline(value, color=color, linestyle="--", linewidth=1, label=name)
        ax.axhspan(value - below, value + above, color=color, alpha=0.12)
    ax.axhline(0.5, color="gray", linestyle=":", linewidth=1, label="chance")
    ax.set_xscale("log", base=2)
    sizes = sorted({point[0] for points in curves.values() for point in points})
    ax.set_xticks(sizes, [str(size) for size in sizes])  # the sizes that were run, not powers of two
    ax.minorticks_off()
    ax.set_xlabel("few-shot training samples")
    ax.set_ylabel("test AUC (95% interval)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
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
    import matplotlib.pyplot as plt

    with atomic_path(path) as staging:
        fig.savefig(staging, dpi=120, format="png")
    plt.close(fig)
    return Path(path)
