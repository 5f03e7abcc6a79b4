"""Bad numbers are refused where they enter: crm_embeds, the config, adapter files (weights and their presence)."""

import math

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from peft_reclora import RecLoraConfig, check_adapter_folder

from support.tiny_models import make_tiny_llama, reclora_config, trained_reclora


@pytest.mark.parametrize("value", [1e300, -1e39])
def test_crm_finite_in_float64_but_not_in_the_gate_dtype_is_refused(batch, value):
    model = get_peft_model(make_tiny_llama(), reclora_config())
    crm = batch["crm_embeds"].double()
    crm[1, 2] = value
    assert torch.isfinite(crm).all()
    with pytest.raises(ValueError, match="crm_embeds.*too large for the gate's dtype \\(float32\\)"):
        model(input_ids=batch["input_ids"], crm_embeds=crm)
    with pytest.raises(ValueError, match="crm_embeds"):
        model.generate(input_ids=batch["input_ids"], crm_embeds=crm, max_new_tokens=2)
    with pytest.raises(ValueError, match="crm_embeds"):
        model.base_model.compute_gate(crm)
    ok = batch["crm_embeds"].double() * 1e3  # large but representable: accepted, finite logits
    assert torch.isfinite(model(input_ids=batch["input_ids"], crm_embeds=ok).logits).all()


def test_half_precision_gate_refuses_what_overflows_float16(batch):
    model = get_peft_model(make_tiny_llama(dtype=torch.float16), reclora_config(), autocast_adapter_dtype=False)
    assert model.base_model.reclora_gate["default"].fc1_weight.dtype == torch.float16
    crm = batch["crm_embeds"].clone()
    crm[0, 0] = 1e5  # finite in float32, inf in float16
    with pytest.raises(ValueError, match="float16"):
        model(input_ids=batch["input_ids"], crm_embeds=crm)


@pytest.mark.parametrize(
    "field, value",
    [
        ("lora_alpha", math.inf), ("lora_alpha", math.nan), ("temperature", math.inf), ("temperature", math.nan),
        ("lora_dropout", math.nan), ("lora_dropout", math.inf), ("gate_dropout", math.nan),
        ("gate_dropout", -math.inf),
    ],
)
def test_non_finite_config_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"RecLoraConfig.{field}"):
        RecLoraConfig(crm_dim=4, **{field: value})


def test_non_finite_adapter_weights_are_refused_at_load_naming_the_tensor(tmp_path):
    trained_reclora().save_pretrained(tmp_path)
    weights_path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(weights_path)
    poisoned = sorted(key for key in tensors if "reclora_B" in key)[1]
    tensors[poisoned][0, 0] = float("nan")
    save_file(tensors, weights_path)
    with pytest.raises(ValueError, match="non-finite") as info:
        PeftModel.from_pretrained(make_tiny_llama(), tmp_path)
    assert poisoned.removeprefix("base_model.model.").split(".reclora_B")[0] in str(info.value)
    model = get_peft_model(make_tiny_llama(), reclora_config())
    with pytest.raises(ValueError, match="non-finite"):
        model.load_adapter(tmp_path, adapter_name="poisoned")


def test_missing_weights_file_names_the_file_and_the_folder(tmp_path):
    base_dir = tmp_path / "base"
    make_tiny_llama().save_pretrained(base_dir)
    from transformers import AutoModelForCausalLM

    adapter_dir = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), reclora_config()).save_pretrained(adapter_dir)
    check_adapter_folder(adapter_dir)  # a complete folder passes
    (adapter_dir / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors") as info:
        check_adapter_folder(adapter_dir)
    assert str(adapter_dir) in str(info.value)
    # PEFT's own loaders still refuse the folder, but their error (PEFT takes the folder for a Hub repository id and
    # raises HFValidationError) names neither the file nor the folder: loaders call check_adapter_folder first.
    for load in (
        lambda: PeftModel.from_pretrained(make_tiny_llama(), adapter_dir),
        lambda: get_peft_model(make_tiny_llama(), reclora_config()).load_adapter(adapter_dir, adapter_name="other"),
        lambda: AutoPeftModelForCausalLM.from_pretrained(adapter_dir),
    ):
        with pytest.raises(Exception):
            load()
    # reading the config alone (to build a fresh adapter from it) still works
    assert RecLoraConfig.from_pretrained(adapter_dir).crm_dim == 6


def test_check_adapter_folder_names_a_missing_folder_or_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        check_adapter_folder(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)
    with pytest.raises(FileNotFoundError, match="has no adapter_config.json"):
        check_adapter_folder(tmp_path)
