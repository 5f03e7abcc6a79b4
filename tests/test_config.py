import copy
import json
import pickle
import typing
import warnings

import pytest
from peft import PeftConfig
from peft.utils import PeftType

from peft_reclora import RecLoraConfig
from peft_reclora.config import GATE_SHARING_MODES
from peft_reclora.ops import BACKENDS, MIXING_MODES


def test_defaults_follow_the_paper():
    config = RecLoraConfig(crm_dim=32)
    assert (config.r, config.lora_alpha, config.lora_dropout, config.num_meta_loras) == (8, 16, 0.0, 16)
    assert config.temperature == 1.0
    assert config.target_modules == {"q_proj", "v_proj"}
    assert config.task_type == "CAUSAL_LM"
    assert config.gate_sharing == "shared" and config.mixing == "output"
    assert config.peft_type is PeftType.RECLORA
    assert config.total_rank == 128


@pytest.mark.parametrize(
    "field, value",
    [
        ("crm_dim", None),
        ("crm_dim", 0),
        ("r", 0),
        ("r", 2.5),
        ("num_meta_loras", -1),
        ("gate_hidden_dim", 0),
        ("lora_alpha", 0),
        ("temperature", 0.0),
        ("temperature", -1.0),
        ("lora_dropout", 1.0),
        ("gate_dropout", -0.1),
        ("gate_sharing", "global"),
        ("mixing", "sum"),
        ("kernel_backend", "cuda"),
    ],
)
def test_bad_values_raise_naming_the_field(field, value):
    kwargs = {"crm_dim": 8, field: value}
    with pytest.raises(ValueError, match=field):
        RecLoraConfig(**kwargs)


def test_choice_fields_accept_the_names_their_owners_define():
    """The Literal annotations (for readers and type checkers) list exactly the names validation accepts."""
    hints = typing.get_type_hints(RecLoraConfig)
    assert typing.get_args(hints["mixing"]) == MIXING_MODES
    assert typing.get_args(hints["kernel_backend"]) == BACKENDS
    assert typing.get_args(hints["gate_sharing"]) == GATE_SHARING_MODES


def test_layers_pattern_needs_layers_to_transform():
    with pytest.raises(ValueError, match="layers_to_transform"):
        RecLoraConfig(crm_dim=8, layers_pattern="layers")


def test_json_round_trip_is_exact(tmp_path):
    config = RecLoraConfig(
        crm_dim=24, r=4, lora_alpha=8, num_meta_loras=6, gate_hidden_dim=12, temperature=5.0, gate_dropout=0.1,
        gate_sharing="per_module", mixing="weights", layers_to_transform=[0, 1], layers_pattern="layers",
        exclude_modules=["k_proj"], modules_to_save=["lm_head"],
    )
    config.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "adapter_config.json").read_text())
    assert raw["peft_type"] == "RECLORA" and raw["crm_dim"] == 24
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert type(loaded) is RecLoraConfig
    expected = config.to_dict()
    got = loaded.to_dict()
    expected.pop("inference_mode"), got.pop("inference_mode")  # saved files are always in inference mode
    assert got == expected


def test_unknown_future_keys_warn_and_load(tmp_path):
    RecLoraConfig(crm_dim=8).save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    raw = json.loads(path.read_text())
    raw["a_field_from_the_future"] = 3
    path.write_text(json.dumps(raw))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = RecLoraConfig.from_pretrained(tmp_path)
    assert loaded.crm_dim == 8
    assert any("a_field_from_the_future" in str(w.message) for w in caught)


def test_copy_deepcopy_pickle():
    config = RecLoraConfig(crm_dim=8, num_meta_loras=3)
    for clone in (copy.copy(config), copy.deepcopy(config), pickle.loads(pickle.dumps(config))):
        assert clone.to_dict() == config.to_dict()
        assert clone.peft_type is PeftType.RECLORA


def test_from_peft_type_returns_the_subclass():
    config = PeftConfig.from_peft_type(peft_type="RECLORA", crm_dim=5)
    assert isinstance(config, RecLoraConfig) and config.crm_dim == 5
