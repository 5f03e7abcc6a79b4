"""Stage-1 training: early stopping keeps the best epoch, runs are reproducible, metrics match scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from reclora_pipeline.crm import (
    CrmTrainingConfig,
    build_crm,
    evaluate_crm,
    predict_crm,
    train_crm,
)

from support.synthetic_features import make_synthetic_splits


SMALL = dict(embed_dim=16, hidden_dims=(32, 16))


@pytest.fixture(scope="module")
def splits():
    return make_synthetic_splits({"train": 3000, "valid": 1000, "test": 1000}, seed=11)


def _config(**overrides):
    values = dict(epochs=3, batch_size=256, learning_rate=3e-3)
    values.update(overrides)
    return CrmTrainingConfig(**values)


def _train(name, train, valid, config, model_kwargs=SMALL):
    return train_crm(name, train, valid, config, model_kwargs=model_kwargs, progress=False)


def test_early_stopping_restores_best_epoch(splits):
    # Overfit on purpose (large learning rate, no dropout, few samples): validation AUC peaks early, then falls.
    train = splits["train"].subset(np.arange(1500))
    config = _config(epochs=15, patience=2, learning_rate=2e-2)
    model, report = _train("din", train, splits["valid"], config, model_kwargs=dict(SMALL, dropout=0.0))
    aucs = [epoch["valid_auc"] for epoch in report.history]
    assert report.stopped_early and report.epochs_run < 15
    assert report.best_epoch == int(np.argmax(aucs)) + 1
    assert report.epochs_run == report.best_epoch + config.patience
    assert aucs[-1] < report.valid_auc  # the last epoch was worse, so restoring matters
    restored = evaluate_crm(model, splits["valid"])
    assert restored["auc"] == pytest.approx(report.valid_auc, abs=1e-12)
    assert restored["logloss"] == pytest.approx(report.valid_logloss, abs=1e-12)
    assert not model.training


def test_training_runs_every_epoch_without_early_stop(splits):
    model, report = _train("deepfm", splits["train"], splits["valid"], _config(epochs=3, patience=5))
    assert report.epochs_run == 3 and not report.stopped_early
    assert [epoch["epoch"] for epoch in report.history] == [1, 2, 3]
    assert report.num_train == len(splits["train"]) and report.crm_dim == 16
    assert report.config["model"]["model_name"] == "deepfm"


def test_training_is_deterministic_on_cpu(splits):
    first_model, first = _train("sim", splits["train"], splits["valid"], _config(epochs=2, seed=5))
    second_model, second = _train("sim", splits["train"], splits["valid"], _config(epochs=2, seed=5))
    assert [e["train_loss"] for e in first.history] == [e["train_loss"] for e in second.history]
    for (name, a), (_, b) in zip(first_model.state_dict().items(), second_model.state_dict().items()):
        assert torch.equal(a, b), name
    _, other = _train("sim", splits["train"], splits["valid"], _config(epochs=2, seed=6))
    assert other.history[0]["train_loss"] != first.history[0]["train_loss"]


def test_evaluation_matches_sklearn(splits):
    model = build_crm("dcnv2", schema=splits["train"], **SMALL).eval()
    sample_ids, probabilities = predict_crm(model, splits["test"], batch_size=300)
    assert np.array_equal(sample_ids, splits["test"].sample_id)
    assert probabilities.shape == (len(splits["test"]),) and ((probabilities > 0) & (probabilities < 1)).all()
    metrics = evaluate_crm(model, splits["test"], batch_size=300)
    labels = splits["test"].labels
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, probabilities))
    assert metrics["logloss"] == pytest.approx(log_loss(labels, probabilities))


def test_a_trailing_single_row_is_trained_not_dropped(splits):
    """257 rows at batch 256: the last row joins the previous batch (batch-norm cannot train on one row)."""
    train = splits["train"].subset(np.arange(257))
    _, report = _train("deepfm", train, splits["valid"], _config(epochs=1))
    assert report.num_train == 257 and np.isfinite(report.history[0]["train_loss"])


def test_mismatched_or_bad_features_are_rejected(splits):
    valid = splits["valid"]
    narrow = type(valid)(**{**valid.__dict__, "vocab_size": valid.vocab_size - 5})
    with pytest.raises(ValueError, match="vocab_size"):
        _train("sim", splits["train"], narrow, _config(epochs=1))

    bad_labels = valid.subset(np.arange(len(valid)))
    bad_labels.labels[3] = 0.5
    with pytest.raises(ValueError, match=f"label 0.5 of sample_id {valid.sample_id[3]}"):
        _train("sim", splits["train"], bad_labels, _config(epochs=1))

    one_class = valid.subset(np.arange(100))
    one_class.labels[:] = 1.0
    model = build_crm("din", schema=valid, **SMALL)
    with pytest.raises(ValueError, match="AUC needs both labels"):
        evaluate_crm(model, one_class)

    masked_item = valid.subset(np.arange(50))
    row = int(np.argmax(~masked_item.hist_mask.all(axis=1)))
    column = int(np.argmin(masked_item.hist_mask[row]))
    masked_item.hist_items[row, column] = masked_item.hist_items[row, 0]
    with pytest.raises(ValueError, match=f"sample_id {masked_item.sample_id[row]} has a non-padding hist_items"):
        evaluate_crm(model, masked_item)

    out_of_vocab = valid.subset(np.arange(50))
    out_of_vocab.fields[7, 1] = -3
    with pytest.raises(ValueError, match=r"field 'gender' \(column 1\) has token -3"):
        predict_crm(model, out_of_vocab)
