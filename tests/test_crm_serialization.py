"""Saving and loading a CRM: safetensors + JSON, identical logits after the round trip, mismatches named."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from reclora_pipeline.crm import (
    CRM_CONFIG_NAME,
    CRM_WEIGHTS_NAME,
    CrmSchema,
    available_crms,
    build_crm,
    crm_fingerprint,
    features_to_batch,
    load_crm,
    save_crm,
)

from support.synthetic_features import make_synthetic_splits


SMALL = dict(embed_dim=16, hidden_dims=(32, 24))


@pytest.fixture(scope="module")
def splits():
    return make_synthetic_splits({"train": 400, "other": 100}, seed=4)


def _trained_like(splits, name):
    """A model with non-initial weights (a few optimizer steps), including batch-norm running statistics."""
    torch.manual_seed(0)
    model = build_crm(name, schema=splits["train"], rc_layer=0, **SMALL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = features_to_batch(splits["train"])
    for _ in range(3):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("name", available_crms())
def test_round_trip_gives_identical_logits_and_rc(splits, name, tmp_path):
    model = _trained_like(splits, name)
    save_crm(model, tmp_path, metrics={"valid_auc": 0.7})
    loaded = load_crm(tmp_path, expected_schema=splits["other"], expected_crm_dim=32)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.rc_layer == 0 and loaded.crm_dim == 32
    batch = features_to_batch(splits["other"])
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
        assert torch.equal(loaded.represent(batch), model.represent(batch))
    assert crm_fingerprint(loaded) == crm_fingerprint(model)


def test_saved_files_are_safetensors_and_json(splits, tmp_path):
    model = _trained_like(splits, "sim")
    save_crm(model, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([CRM_CONFIG_NAME, CRM_WEIGHTS_NAME])
    weights = load_file(str(tmp_path / CRM_WEIGHTS_NAME))  # no pickle involved
    assert set(weights) == set(model.state_dict())
    config = json.loads((tmp_path / CRM_CONFIG_NAME).read_text())
    assert config["model_name"] == "sim"
    assert config["schema"] == {
        "vocab_size": splits["train"].vocab_size,
        "field_names": list(splits["train"].field_names),
        "item_field": 2,
        "history_length": splits["train"].history_length,
    }
    assert config["rc_layer"] == 0 and config["crm_dim"] == 32
    assert config["hyper_parameters"]["hidden_dims"] == [32, 24]
    assert config["hyper_parameters"]["attention"] == "multihead"


def test_mismatches_are_named(splits, tmp_path):
    model = _trained_like(splits, "din")
    save_crm(model, tmp_path)
    schema = CrmSchema.from_features(splits["train"])

    bigger_vocab = CrmSchema(schema.vocab_size + 10, schema.field_names, schema.item_field, schema.history_length)
    with pytest.raises(ValueError, match=rf"vocab_size: {schema.vocab_size} vs {schema.vocab_size + 10}"):
        load_crm(tmp_path, expected_schema=bigger_vocab)
    longer = CrmSchema(schema.vocab_size, schema.field_names, schema.item_field, schema.history_length + 1)
    with pytest.raises(ValueError, match="history_length"):
        load_crm(tmp_path, expected_schema=longer)
    renamed = CrmSchema(schema.vocab_size, ("a", "b", "c", "d"), schema.item_field, schema.history_length)
    with pytest.raises(ValueError, match="field_names"):
        load_crm(tmp_path, expected_schema=renamed)
    with pytest.raises(ValueError, match="crm_dim: .* width 32 .* but 256 is expected"):
        load_crm(tmp_path, expected_crm_dim=256)

    # weights that do not fit the config: the error names the part
    config_path = tmp_path / CRM_CONFIG_NAME
    config = json.loads(config_path.read_text())
    config["schema"]["vocab_size"] += 10
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"embedding.weight .* the embedding table \(vocab_size="):
        load_crm(tmp_path)
    config["schema"]["vocab_size"] -= 10
    config["hyper_parameters"]["hidden_dims"] = [64, 24]
    config["crm_dim"] = 64
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"tower.blocks.0.0.weight .* the MLP \(hidden_dims=\[64, 24\]\)"):
        load_crm(tmp_path)
    config["hyper_parameters"]["hidden_dims"] = [32, 24]
    config["hyper_parameters"]["mystery"] = 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hyper_parameters do not fit din"):
        load_crm(tmp_path)

    del config["hyper_parameters"]["mystery"]
    config["crm_dim"] = 32
    config_path.write_text(json.dumps(config))
    weights = load_file(str(tmp_path / CRM_WEIGHTS_NAME))
    weights.pop("tower.output.bias")
    save_file(weights, str(tmp_path / CRM_WEIGHTS_NAME))
    with pytest.raises(ValueError, match=r"missing \['tower.output.bias'\]"):
        load_crm(tmp_path)


def test_not_a_crm_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=CRM_CONFIG_NAME):
        load_crm(tmp_path)
    (tmp_path / CRM_CONFIG_NAME).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a CRM config"):
        load_crm(tmp_path)
