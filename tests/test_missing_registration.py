"""A RecLoRA adapter loaded where PEFT has no RECLORA entry (the process never ran ``import peft_reclora``, or PEFT's
tables were rebuilt) fails with an error that says ``import peft_reclora``, not PEFT's bare ``KeyError: 'RECLORA'``."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, mapping

from peft_reclora import RecLoraNotRegisteredError, explain_missing_registration
from reclora_pipeline import cli
from reclora_pipeline.llm import load_adapter

from support.tiny_models import make_tiny_llama, reclora_config


TABLES = ("PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING", "PEFT_TYPE_TO_PREFIX_MAPPING")


@pytest.fixture
def saved_adapter(tmp_path):
    get_peft_model(make_tiny_llama(), reclora_config()).save_pretrained(tmp_path / "reclora")
    return tmp_path / "reclora"


@pytest.fixture
def unregistered(monkeypatch):
    """PEFT's tables as in a process that never imported peft_reclora."""
    for table in TABLES:
        monkeypatch.delitem(getattr(mapping, table), "RECLORA")


def test_peft_load_inside_the_guard_names_the_import(saved_adapter, unregistered):
    with pytest.raises(RecLoraNotRegisteredError, match="`import peft_reclora`") as caught:
        with explain_missing_registration():
            PeftModel.from_pretrained(make_tiny_llama(), str(saved_adapter))
    assert isinstance(caught.value, KeyError)


def test_the_pipelines_loader_names_the_import(saved_adapter, unregistered):
    with pytest.raises(KeyError, match="`import peft_reclora`"):
        load_adapter(make_tiny_llama(), saved_adapter)


def test_the_cli_prints_the_import_hint(saved_adapter, unregistered, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "run_every_stage", lambda args: load_adapter(make_tiny_llama(), saved_adapter))
    assert cli.main(["run", "--out", str(tmp_path / "run")]) == 2
    assert "`import peft_reclora`" in capsys.readouterr().err


def test_a_lora_adapter_loads_without_the_registration(tmp_path, unregistered):
    model = get_peft_model(make_tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    model.save_pretrained(tmp_path)
    ids = torch.tensor([[3, 4, 5]])
    expected = model(input_ids=ids).logits
    assert torch.equal(load_adapter(make_tiny_llama(), tmp_path)(input_ids=ids).logits, expected)


def test_the_card_snippet_imports_peft_reclora_and_loads_through_peft():
    from peft_reclora import reclora_card_section

    section = reclora_card_section(get_peft_model(make_tiny_llama(), reclora_config()))
    snippet = section.split("```python", 1)[1]
    assert snippet.index("import peft_reclora") < snippet.index("from peft import")
    assert "AutoPeftModelForCausalLM.from_pretrained" in snippet
    assert "`import peft_reclora`" in section and "transformers' `model.load_adapter` refuses RecLoRA" in section
