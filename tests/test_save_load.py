"""Saving, loading, publishing and per-user export of RecLoRA adapters."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

import peft_reclora  # noqa: F401  registers RECLORA with PEFT
from peft_reclora import RecLoraConfig

from support.tiny_models import make_tiny_llama, reclora_config, trained_reclora


@pytest.mark.parametrize("gate_sharing", ["shared", "per_module"])
def test_save_writes_only_reclora_weights_and_reload_is_identical(tmp_path, batch, gate_sharing):
    model = trained_reclora(reclora_config(gate_sharing=gate_sharing))
    expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert tensors and all("reclora_" in key for key in tensors)
    assert not any(".default." in key or key.endswith(".default") for key in tensors)
    gate_keys = [key for key in tensors if "reclora_gate" in key]
    assert len(gate_keys) == (6 if gate_sharing == "shared" else 6 * 4)
    n_params = sum(p.numel() for n, p in model.named_parameters() if "reclora_" in n)
    assert sum(t.numel() for t in tensors.values()) == n_params

    loaded = PeftModel.from_pretrained(make_tiny_llama(), tmp_path)
    torch.testing.assert_close(loaded(**batch).logits, expected, rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.parameters()), "loaded adapters are in inference mode"
    trainable = PeftModel.from_pretrained(make_tiny_llama(), tmp_path, is_trainable=True)
    names = {n for n, p in trainable.named_parameters() if p.requires_grad}
    assert any("reclora_gate" in n for n in names) and any("reclora_A" in n for n in names)


def test_load_under_another_name_and_load_adapter(tmp_path, batch):
    model = trained_reclora()
    expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    renamed = PeftModel.from_pretrained(make_tiny_llama(), tmp_path, adapter_name="user_model")
    torch.testing.assert_close(renamed(**batch).logits, expected, rtol=0, atol=0)

    other = trained_reclora(seed=1)
    other_logits = other(**batch).logits
    other.save_pretrained(tmp_path / "other")
    result = renamed.load_adapter(tmp_path / "other", adapter_name="other")
    assert not result.missing_keys
    renamed.set_adapter("other")
    torch.testing.assert_close(renamed(**batch).logits, other_logits, rtol=0, atol=0)
    renamed.set_adapter("user_model")
    torch.testing.assert_close(renamed(**batch).logits, expected, rtol=0, atol=0)


def test_low_cpu_mem_usage_load(tmp_path, batch):
    model = trained_reclora()
    expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_tiny_llama(), tmp_path, low_cpu_mem_usage=True)
    assert not any(p.device.type == "meta" for p in loaded.parameters())
    torch.testing.assert_close(loaded(**batch).logits, expected, rtol=0, atol=0)


def test_peft_config_and_auto_peft_model(tmp_path, batch):
    base_dir = tmp_path / "base"
    make_tiny_llama().save_pretrained(base_dir)
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), reclora_config())
    expected = model(**batch).logits
    model.save_pretrained(tmp_path / "adapter")
    config = PeftConfig.from_pretrained(tmp_path / "adapter")
    assert isinstance(config, RecLoraConfig) and config.base_model_name_or_path == str(base_dir)
    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")
    torch.testing.assert_close(auto(**batch).logits, expected, rtol=0, atol=0)


def _rewrite_config(path, **changes):
    config_path = path / "adapter_config.json"
    raw = json.loads(config_path.read_text())
    raw.update(changes)
    config_path.write_text(json.dumps(raw))


@pytest.mark.parametrize(
    "changes, fragment",
    [({"num_meta_loras": 8}, "num_meta_loras"), ({"r": 4}, "num_meta_loras \\* r"), ({"crm_dim": 9}, "crm_dim")],
)
def test_mismatched_adapter_files_raise(tmp_path, changes, fragment):
    trained_reclora().save_pretrained(tmp_path)
    _rewrite_config(tmp_path, **changes)
    with pytest.raises(ValueError, match=fragment) as info:
        PeftModel.from_pretrained(make_tiny_llama(), tmp_path)
    assert "do not match" in str(info.value)


def test_missing_keys_raise(tmp_path):
    trained_reclora().save_pretrained(tmp_path)
    weights_path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(weights_path)
    dropped = next(key for key in tensors if "reclora_gate" in key)
    del tensors[dropped]
    save_file(tensors, weights_path)
    with pytest.raises(ValueError, match="missing key"):
        PeftModel.from_pretrained(make_tiny_llama(), tmp_path)
    model = get_peft_model(make_tiny_llama(), reclora_config())
    with pytest.raises(ValueError, match="missing key"):
        model.load_adapter(tmp_path, adapter_name="broken")


@pytest.mark.parametrize("mixing", ["output", "weights"])
@pytest.mark.parametrize("gate_sharing", ["shared", "per_module"])
def test_export_personalized_lora_loads_in_plain_peft_with_the_same_outputs(tmp_path, mixing, gate_sharing):
    base_dir = tmp_path / "base"
    make_tiny_llama().save_pretrained(base_dir)
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir), reclora_config(mixing=mixing, gate_sharing=gate_sharing)
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "reclora_B" in name:
                param.normal_(std=0.2)
    user = torch.randn(1, 6)
    input_ids = torch.randint(3, 60, (2, 6), generator=torch.Generator().manual_seed(3))
    expected = model(input_ids=input_ids, crm_embeds=user.expand(2, -1)).logits
    model.base_model.export_personalized_lora(user, tmp_path / "lora")
    torch.save({"input_ids": input_ids, "expected": expected}, tmp_path / "check.pt")

    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["r"] == (4 * 2 if mixing == "output" else 2)

    # A fresh interpreter that never imports peft_reclora.
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        from peft import PeftModel
        base = AutoModelForCausalLM.from_pretrained({str(base_dir)!r})
        model = PeftModel.from_pretrained(base, {str(tmp_path / 'lora')!r})
        check = torch.load({str(tmp_path / 'check.pt')!r})
        logits = model(input_ids=check["input_ids"]).logits
        assert "peft_reclora" not in sys.modules
        torch.testing.assert_close(logits, check["expected"], rtol=1e-4, atol=1e-5)
        print("OK")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")


def test_export_refuses_more_than_one_user(tmp_path):
    model = trained_reclora()
    with pytest.raises(ValueError, match="one user"):
        model.base_model.export_personalized_lora(torch.randn(2, 6), tmp_path)
