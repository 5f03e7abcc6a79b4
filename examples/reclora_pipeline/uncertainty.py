"""Uncertainty of CTR metrics on a finite test sample, and paired comparisons of models scored on the same samples.

- AUC: DeLong's method (DeLong, DeLong & Clarke-Pearson, 1988) in the midrank form of Sun & Xu (2014). Each model's
  AUC gets a normal 95% interval from its DeLong variance; two models scored on the same samples are compared by
  DeLong's paired test, whose variance of the difference includes the covariance the shared samples create. The
  midranks come from ``scipy.stats.rankdata``; the normal quantiles and tails from ``scipy.stats.norm``.
- LogLoss: a mean of per-sample losses, so its interval is a seeded bootstrap of that mean
  (``scipy.stats.bootstrap``, BCa) and a paired comparison is the bootstrap interval of the mean per-sample
  difference with the paired t-test's p-value (``scipy.stats.ttest_rel``).

Every function takes labels in {0, 1} and scores where larger means "more likely 1".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import stats

from .metrics import EPSILON


CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    method: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedComparison:
    """``model`` minus ``baseline`` on the same samples: the difference, its interval and the two-sided p-value."""

    metric: str
    model: str
    baseline: str
    difference: float
    low: float
    high: float
    p_value: float
    method: str

    def to_dict(self) -> dict:
        return asdict(self)


def _check(labels, scores_by_model: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be a 1-d array of 0/1 values")
    if labels.min(initial=1) == labels.max(initial=0):
        raise ValueError("AUC needs both labels (0 and 1) among the samples")
    scores = [np.asarray(s, dtype=np.float64) for s in scores_by_model]
    for s in scores:
        if s.shape != labels.shape:
            raise ValueError(f"scores of shape {s.shape} do not match the {labels.shape[0]} labels")
        if not np.isfinite(s).all():
            raise ValueError("scores contain NaN or Inf")
    return labels, scores


def delong_components(labels, scores_by_model: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their DeLong covariance matrix (k, k) for k models scored on the same samples."""
    labels, scores = _check(labels, scores_by_model)
    positive, negative = labels == 1, labels == 0
    m, n = int(positive.sum()), int(negative.sum())
    aucs, v10, v01 = [], [], []
    for s in scores:
        x, y = s[positive], s[negative]
        tz = stats.rankdata(np.concatenate([x, y]))  # midranks: ties count one half, as in the Mann-Whitney U
        tx, ty = stats.rankdata(x), stats.rankdata(y)
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[:m] - tx) / n)  # per positive: share of negatives it outranks
        v01.append(1.0 - (tz[m:] - ty) / m)  # per negative: share of positives that outrank it
    v10, v01 = np.array(v10), np.array(v01)
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(scores), len(scores)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(scores), len(scores)))
    return np.array(aucs), s10 / m + s01 / n


def auc_interval(labels, scores, confidence: float = CONFIDENCE) -> Interval:
    """AUC with its DeLong normal interval (clipped to [0, 1])."""
    aucs, covariance = delong_components(labels, [scores])
    z = stats.norm.ppf(0.5 + confidence / 2)
    half = z * float(np.sqrt(max(covariance[0, 0], 0.0)))
    return Interval(float(aucs[0]), max(0.0, float(aucs[0]) - half), min(1.0, float(aucs[0]) + half), "DeLong")


def paired_auc_test(labels, model_scores, baseline_scores, model: str = "model", baseline: str = "baseline",
                    confidence: float = CONFIDENCE) -> PairedComparison:
    """DeLong's paired test of AUC(model) - AUC(baseline) on the same samples."""
    aucs, covariance = delong_components(labels, [model_scores, baseline_scores])
    difference = float(aucs[0] - aucs[1])
    variance = float(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    if variance <= 1e-300:  # identical rankings: no evidence of a difference
        return PairedComparison("auc", model, baseline, difference, difference, difference,
                                1.0 if difference == 0 else 0.0, "DeLong paired")
    sd = np.sqrt(variance)
    z = stats.norm.ppf(0.5 + confidence / 2)
    p_value = float(2 * stats.norm.sf(abs(difference) / sd))
    return PairedComparison("auc", model, baseline, difference, difference - z * sd, difference + z * sd, p_value,
                            "DeLong paired")


def per_sample_logloss(labels, scores) -> np.ndarray:
    p = np.clip(np.asarray(scores, dtype=np.float64), EPSILON, 1 - EPSILON)
    y = np.asarray(labels, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def _bootstrap_mean(values: np.ndarray, seed: int, confidence: float) -> tuple[float, float]:
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    result = stats.bootstrap((values,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
                             method="BCa", rng=np.random.default_rng(seed), vectorized=True)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def logloss_interval(labels, scores, seed: int = 0, confidence: float = CONFIDENCE) -> Interval:
    """LogLoss with a seeded BCa bootstrap interval of the mean per-sample loss."""
    losses = per_sample_logloss(labels, scores)
    low, high = _bootstrap_mean(losses, seed, confidence)
    return Interval(float(losses.mean()), low, high, f"bootstrap BCa, {BOOTSTRAP_RESAMPLES} resamples, seed {seed}")


def paired_logloss_test(labels, model_scores, baseline_scores, model: str = "model", baseline: str = "baseline",
                        seed: int = 0, confidence: float = CONFIDENCE) -> PairedComparison:
    """LogLoss(model) - LogLoss(baseline): bootstrap interval of the mean per-sample difference, paired t-test p."""
    differences = per_sample_logloss(labels, model_scores) - per_sample_logloss(labels, baseline_scores)
    low, high = _bootstrap_mean(differences, seed, confidence)
    if np.ptp(differences) == 0:
        p_value = 1.0 if differences[0] == 0 else 0.0
    else:
        p_value = float(stats.ttest_1samp(differences, 0.0).pvalue)
    return PairedComparison("logloss", model, baseline, float(differences.mean()), low, high, p_value,
                            f"paired t-test; bootstrap BCa interval, seed {seed}")


def summarize(labels, scores, seed: int = 0) -> dict:
    """The per-model uncertainty block written into results: AUC and LogLoss with their intervals."""
    return {"auc_ci": auc_interval(labels, scores).to_dict(),
            "logloss_ci": logloss_interval(labels, scores, seed).to_dict()}


def compare(labels, scores: dict, reference: str, seed: int = 0) -> dict[str, dict]:
    """Paired tests of ``reference`` against every other model: {other: {"auc": ..., "logloss": ...}}."""
    if reference not in scores:
        raise ValueError(f"reference model {reference!r} has no scores; scored: {sorted(scores)}")
    out = {}
    for name, other in scores.items():
        if name == reference:
            continue
        out[name] = {
            "auc": paired_auc_test(labels, scores[reference], other, reference, name).to_dict(),
            "logloss": paired_logloss_test(labels, scores[reference], other, reference, name, seed).to_dict(),
        }
    return out


def format_interval(interval: dict, digits: int = 4) -> str:
    return f"{interval['estimate']:.{digits}f} [{interval['low']:.{digits}f}, {interval['high']:.{digits}f}]"


def format_p(p_value: Optional[float]) -> str:
    if p_value is None:
        return "-"
    return "< 0.001" if p_value < 1e-3 else f"{p_value:.3f}"


def verdict(comparison: dict, level: float = 0.05) -> str:
    """One sentence on a paired AUC comparison: what its interval and p-value allow one to conclude."""
    model, baseline = comparison["model"], comparison["baseline"]
    difference = (f"AUC {model} - {baseline} = {comparison['difference']:+.4f} "
                  f"[{comparison['low']:+.4f}, {comparison['high']:+.4f}], p {_p_clause(comparison['p_value'])}")
    if comparison["p_value"] >= level:
        return f"{difference}: no significant difference at the {level:.0%} level."
    better = model if comparison["difference"] > 0 else baseline
    worse = baseline if better == model else model
    return f"{difference}: {better} ranks better than {worse} (paired DeLong test, {level:.0%} level)."


def _p_clause(p_value: float) -> str:
    text = format_p(p_value)
    return text if text.startswith("<") else f"= {text}"


def rank_correlation(scores_a, scores_b) -> float:
    """Spearman's rank correlation of two models' scores on the same samples (``scipy.stats.spearmanr``)."""
    return float(stats.spearmanr(np.asarray(scores_a, dtype=np.float64),
                                 np.asarray(scores_b, dtype=np.float64)).statistic)
