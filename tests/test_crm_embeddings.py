"""R_c for stage 2: precomputed in eval mode, equal to represent(), cached with a fingerprint, looked up by id."""

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from reclora_pipeline.crm import (
    RcTable,
    StaleCrmCacheError,
    assert_frozen_eval,
    build_crm,
    crm_fingerprint,
    features_to_batch,
    freeze_crm,
    precompute_crm_embeds,
)

from support.synthetic_features import make_synthetic_splits


SMALL = dict(embed_dim=16, hidden_dims=(32, 24), dropout=0.5)


@pytest.fixture(scope="module")
def splits():
    return make_synthetic_splits({"train": 800, "valid": 300}, seed=2)


def _model(splits, name="sim", seed=0):
    torch.manual_seed(seed)
    return build_crm(name, schema=splits["train"], **SMALL)


@pytest.mark.parametrize("name", ["sim", "deepfm", "sasrec"])
def test_precomputed_rc_equals_represent_in_eval_mode(splits, name):
    model = _model(splits, name)
    model.train()  # as a freshly trained model might be left: dropout on
    sample_ids, embeds = precompute_crm_embeds(model, splits["valid"], batch_size=64, progress=False)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert np.array_equal(sample_ids, splits["valid"].sample_id)
    assert embeds.dtype == np.float32 and embeds.shape == (len(splits["valid"]), model.crm_dim)
    with torch.no_grad():
        expected = model.represent(features_to_batch(splits["valid"])).numpy()
    np.testing.assert_allclose(embeds, expected, rtol=1e-5, atol=1e-6)
    # and again: eval mode makes it reproducible
    _, again = precompute_crm_embeds(model, splits["valid"], batch_size=100, progress=False)
    np.testing.assert_allclose(again, embeds, rtol=1e-5, atol=1e-6)


def test_assert_frozen_eval_names_the_problem(splits):
    model = _model(splits)
    with pytest.raises(RuntimeError, match="training mode"):
        assert_frozen_eval(model.train())
    model.eval()
    with pytest.raises(RuntimeError, match="trainable parameters"):
        assert_frozen_eval(model)
    assert_frozen_eval(freeze_crm(model))


def test_table_lookup_by_sample_id(splits):
    model = _model(splits)
    table = RcTable.from_model(model, splits["valid"], batch_size=128, progress=False)
    assert len(table) == len(splits["valid"]) and table.crm_dim == 24
    assert table.fingerprint == crm_fingerprint(model)
    ids = splits["valid"].sample_id[[17, 3, 250, 3]]
    rows = table.get(ids)
    assert rows.dtype == torch.float32 and rows.shape == (4, 24)
    with torch.no_grad():
        expected = model.represent(features_to_batch(splits["valid"], rows=[17, 3, 250, 3]))
    torch.testing.assert_close(rows, expected)
    torch.testing.assert_close(table.get(torch.as_tensor(ids)), rows)
    missing = int(splits["train"].sample_id[0])
    with pytest.raises(KeyError, match=f"sample_id {missing} has no precomputed R_c"):
        table.get([ids[0], missing])
    with pytest.raises(KeyError, match="sample_id 10000000"):
        table.get([10_000_000])
    assert ids[0] in table and missing not in table


def test_merge_tables_of_two_splits(splits):
    model = freeze_crm(_model(splits))
    train = RcTable.from_model(model, splits["train"], progress=False)
    valid = RcTable.from_model(model, splits["valid"], progress=False)
    both = RcTable.merge([train, valid])
    ids = [splits["train"].sample_id[5], splits["valid"].sample_id[9]]
    torch.testing.assert_close(both.get(ids), torch.cat([train.get(ids[:1]), valid.get(ids[1:])]))
    with pytest.raises(ValueError, match="appears twice"):
        RcTable.merge([train, train])
    other = RcTable.from_model(_model(splits, seed=1), splits["valid"], progress=False)
    with pytest.raises(StaleCrmCacheError):
        RcTable.merge([train, other])


def test_cache_is_reused_and_stale_cache_is_detected(splits, tmp_path, monkeypatch):
    path = tmp_path / "rc" / "valid.safetensors"
    model = _model(splits)
    _, embeds = precompute_crm_embeds(model, splits["valid"], cache_path=path, progress=False)
    stored = load_file(str(path))
    assert set(stored) == {"sample_id", "embeds"}

    # A second call with the same CRM reads the cache: represent() is never called.
    def fail(*args, **kwargs):
        raise AssertionError("recomputed although the cache is valid")

    monkeypatch.setattr(type(model), "represent", fail)
    _, cached = precompute_crm_embeds(model, splits["valid"], cache_path=path, progress=False)
    np.testing.assert_array_equal(cached, embeds)
    monkeypatch.undo()

    # Loading with another CRM's fingerprint fails loudly ...
    changed = _model(splits, seed=1)
    with pytest.raises(StaleCrmCacheError, match="another CRM"):
        RcTable.load(path, expected_fingerprint=crm_fingerprint(changed))
    # ... and precompute recomputes (and rewrites) instead of returning stale vectors.
    _, fresh = precompute_crm_embeds(changed, splits["valid"], cache_path=path, progress=False)
    assert not np.allclose(fresh, embeds)
    assert RcTable.load(path).fingerprint == crm_fingerprint(changed)

    # Another R_c layer is another cache too.
    assert crm_fingerprint(changed, layer=0) != crm_fingerprint(changed)
    _, first_layer = precompute_crm_embeds(changed, splits["valid"], layer=0, cache_path=path, progress=False)
    assert first_layer.shape[1] == 32

    # A cache that lacks some samples is completed by recomputing.
    _, train_embeds = precompute_crm_embeds(changed, splits["train"], cache_path=path, progress=False)
    assert train_embeds.shape == (len(splits["train"]), 24)


def test_fingerprint_tracks_weights(splits):
    model = _model(splits)
    before = crm_fingerprint(model)
    assert before == crm_fingerprint(model)
    with torch.no_grad():
        model.tower.output.bias.add_(1e-3)
    assert crm_fingerprint(model) != before
