"""Intervals and paired tests of CTR metrics against cases with a known answer."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from reclora_pipeline import uncertainty


def _brute_force_delong(labels, scores_a, scores_b):
    """The structural components of DeLong et al. (1988) by their definition, O(m n)."""
    x = [np.asarray(s)[labels == 1] for s in (scores_a, scores_b)]
    y = [np.asarray(s)[labels == 0] for s in (scores_a, scores_b)]
    psi = [(xi[:, None] > yi[None, :]) + 0.5 * (xi[:, None] == yi[None, :]) for xi, yi in zip(x, y)]
    v10 = np.array([p.mean(axis=1) for p in psi])
    v01 = np.array([p.mean(axis=0) for p in psi])
    m, n = v10.shape[1], v01.shape[1]
    return np.array([p.mean() for p in psi]), np.cov(v10) / m + np.cov(v01) / n


def test_delong_matches_its_definition_and_sklearn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    a = np.round(labels + rng.normal(0, 1.2, 300), 1)  # rounding creates ties
    b = np.round(0.5 * a + rng.normal(0, 1, 300), 1)
    aucs, covariance = uncertainty.delong_components(labels, [a, b])
    expected_aucs, expected_cov = _brute_force_delong(labels, a, b)
    np.testing.assert_allclose(aucs, expected_aucs, rtol=1e-12)
    np.testing.assert_allclose(covariance, expected_cov, rtol=1e-10)
    assert aucs[0] == pytest.approx(roc_auc_score(labels, a), abs=1e-12)
    assert covariance[0, 1] > 0, "two models on the same samples are correlated"


def test_delong_interval_covers_the_true_auc_at_its_nominal_rate():
    """Binormal scores with a known AUC = Phi(d / sqrt(2)); 95% intervals must cover it about 95% of the time."""
    from scipy.stats import norm

    d, true_auc = 1.0, norm.cdf(1.0 / np.sqrt(2))
    rng = np.random.default_rng(1)
    covered, widths = 0, []
    trials = 400
    for _ in range(trials):
        labels = (rng.random(400) < 0.4).astype(int)
        scores = rng.normal(d * labels, 1.0)
        interval = uncertainty.auc_interval(labels, scores)
        covered += interval.low <= true_auc <= interval.high
        widths.append(interval.high - interval.low)
    assert 0.92 <= covered / trials <= 0.98
    empirical_sd = np.std([uncertainty.auc_interval(labels, rng.normal(d * labels, 1.0)).estimate for _ in range(300)])
    assert np.mean(widths) / (2 * 1.96) == pytest.approx(empirical_sd, rel=0.15)


def test_paired_auc_test_is_calibrated_under_the_null_and_detects_a_real_difference():
    rng = np.random.default_rng(2)
    rejections = 0
    trials = 300
    for _ in range(trials):
        labels = rng.integers(0, 2, 300)
        signal = labels + rng.normal(0, 1, 300)
        a, b = signal + rng.normal(0, 1, 300), signal + rng.normal(0, 1, 300)  # equally good, correlated
        rejections += uncertainty.paired_auc_test(labels, a, b).p_value < 0.05
    assert 0.02 <= rejections / trials <= 0.09
    labels = rng.integers(0, 2, 2000)
    strong, weak = labels + rng.normal(0, 0.8, 2000), labels + rng.normal(0, 2.0, 2000)
    result = uncertainty.paired_auc_test(labels, strong, weak, "strong", "weak")
    assert result.difference > 0.1 and result.p_value < 1e-6 and result.low > 0
    same = uncertainty.paired_auc_test(labels, strong, strong * 3 + 1)  # same ranking
    assert same.difference == 0 and same.p_value == 1.0


def test_logloss_interval_and_paired_test():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 1000)
    calibrated = np.clip(0.5 + 0.3 * (2 * labels - 1) + rng.normal(0, 0.1, 1000), 0.01, 0.99)
    interval = uncertainty.logloss_interval(labels, calibrated, seed=4)
    losses = uncertainty.per_sample_logloss(labels, calibrated)
    assert interval.estimate == pytest.approx(losses.mean())
    half = 1.96 * losses.std(ddof=1) / np.sqrt(len(losses))  # the CLT interval the bootstrap must agree with
    assert interval.low == pytest.approx(losses.mean() - half, abs=half * 0.15)
    assert interval.high == pytest.approx(losses.mean() + half, abs=half * 0.15)
    assert uncertainty.logloss_interval(labels, calibrated, seed=4) == interval, "seeded: reproducible"
    worse = np.full(1000, 0.5)
    comparison = uncertainty.paired_logloss_test(labels, calibrated, worse, seed=4)
    assert comparison.difference < 0 and comparison.high < 0 and comparison.p_value < 1e-6


def test_compare_runs_every_pair_against_the_reference_and_rejects_bad_input():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 200)
    scores = {"RecLoRA": labels + rng.normal(0, 1, 200), "SIM": labels + rng.normal(0, 1, 200),
              "LoRA": rng.normal(0, 1, 200)}
    scores = {k: 1 / (1 + np.exp(-v)) for k, v in scores.items()}
    out = uncertainty.compare(labels, scores, "RecLoRA")
    assert sorted(out) == ["LoRA", "SIM"]
    assert out["LoRA"]["auc"]["p_value"] < 0.001 and out["LoRA"]["auc"]["model"] == "RecLoRA"
    with pytest.raises(ValueError, match="both labels"):
        uncertainty.auc_interval(np.ones(10, dtype=int), np.arange(10.0))
    with pytest.raises(ValueError, match="NaN"):
        uncertainty.auc_interval(labels, np.full(200, np.nan))
    with pytest.raises(ValueError, match="reference"):
        uncertainty.compare(labels, scores, "DIN")
