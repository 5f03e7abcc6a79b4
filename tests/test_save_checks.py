"""Saving refuses RecLoRA tensors that are empty or not their configured shapes (what a sharded trainer writes when it
saves parameters it did not gather), naming the tensor, and writes nothing."""

import pytest
import torch
from peft import get_peft_model

import peft_reclora  # noqa: F401  registers RECLORA with PEFT

from support.tiny_models import make_tiny_llama, reclora_config


LAYER = "base_model.model.model.layers.1.self_attn.v_proj"


def _model(gate_sharing="shared"):
    return get_peft_model(make_tiny_llama(), reclora_config(gate_sharing=gate_sharing))


def _shard(state_dict, key, tensor):
    changed = dict(state_dict)
    changed[key] = tensor
    return changed


@pytest.mark.parametrize("key, shard", [
    (f"{LAYER}.reclora_A.default", torch.empty(0)),                         # ZeRO-3: not gathered
    (f"{LAYER}.reclora_B.default", torch.zeros(8, 8)),                      # FSDP: one process's half of (16, 8)
    ("base_model.reclora_gate.default.fc1_weight", torch.empty(0)),
    ("base_model.reclora_gate.default.fc2_bias", torch.zeros(2)),
])
def test_save_refuses_an_ungathered_or_misshapen_tensor(tmp_path, key, shard):
    model = _model()
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as caught:
        model.save_pretrained(tmp_path, state_dict=_shard(model.state_dict(), key, shard))
    assert ("is empty" if shard.numel() == 0 else f"has shape {tuple(shard.shape)}") in str(caught.value)
    assert not (tmp_path / "adapter_model.safetensors").exists()


def test_save_refuses_a_per_module_gate_missing_from_the_state_dict(tmp_path):
    model = _model("per_module")
    key = f"{LAYER}.reclora_gate.default.norm_weight"
    state_dict = model.state_dict()
    assert key in state_dict
    del state_dict[key]
    with pytest.raises(ValueError, match=f"has no {key}"):
        model.save_pretrained(tmp_path, state_dict=state_dict)


@pytest.mark.parametrize("gate_sharing", ["shared", "per_module"])
def test_a_gathered_state_dict_saves(tmp_path, gate_sharing):
    model = _model(gate_sharing)
    model.save_pretrained(tmp_path, state_dict=model.state_dict())
    assert (tmp_path / "adapter_model.safetensors").exists()
