"""Per-user export at its edges: user names PEFT treats specially or cannot hold are refused before anything is built,
and a trained ``modules_to_save`` copy (e.g. ``lm_head``) travels into every exported LoRA."""

import re

import pytest
import torch
from peft import PeftModel, get_peft_model

import peft_reclora

from support.tiny_models import TINY_VOCAB, make_tiny_llama, reclora_config


def _reclora(**overrides):
    model = get_peft_model(make_tiny_llama(), reclora_config(**overrides))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "reclora_B" in name:
                param.normal_(std=0.2)
            elif "modules_to_save" in name:  # a trained copy: no longer the base's weights
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    return model.eval()


@pytest.mark.parametrize(
    "names, named",
    [
        (["__base__", "bob"], "'__base__'"),  # PEFT's mixed batch serves this name with the bare base model
        (["alice", "b.o.b"], "'b.o.b'"),
        (["", "bob"], "''"),
        ([7, "bob"], "7"),
        ([None, "bob"], "None"),
        (["alice", "keys"], "'keys'"),  # an attribute of the ModuleDict that would hold it
        (["bob", "alice", "bob"], "'bob'"),
        ("ab", "'ab'"),  # one string, not a list of two names
    ],
    ids=["base", "dot", "empty", "int", "none", "moduledict-attribute", "duplicate", "string"],
)
def test_user_names_peft_cannot_use_are_refused_naming_the_name(names, named, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a user's weights were built before the names were checked")

    reclora = _reclora()
    monkeypatch.setattr(peft_reclora.export, "personalized_lora_weights", never)
    with pytest.raises(ValueError, match=r"user_names.*" + re.escape(named)):
        peft_reclora.personalized_lora_model(make_tiny_llama(), reclora, torch.randn(len(names), 6), names)


def test_usual_user_names_are_accepted():
    reclora = _reclora()
    names = ["user_42", "42", "Zoë", "default", "a"]
    lora = peft_reclora.personalized_lora_model(make_tiny_llama(), reclora, torch.randn(len(names), 6), names)
    assert sorted(lora.peft_config) == sorted(names)


def _batch(rows, seed=11):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, TINY_VOCAB, (len(rows), 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, :2] = 0
    return input_ids, attention_mask


@pytest.mark.parametrize("mixing", ["output", "weights"])
def test_modules_to_save_travel_into_every_personalized_lora(mixing):
    reclora = _reclora(mixing=mixing, modules_to_save=["lm_head"])
    users = torch.randn(3, 6, generator=torch.Generator().manual_seed(2))
    names, rows = ["alice", "bob", "carol"], [0, 1, 0, 2, 1]
    input_ids, attention_mask = _batch(rows)
    with torch.no_grad():
        expected = reclora(input_ids=input_ids, attention_mask=attention_mask, crm_embeds=users[rows]).logits
        base = make_tiny_llama()(input_ids=input_ids, attention_mask=attention_mask).logits

    lora = peft_reclora.personalized_lora_model(make_tiny_llama(), reclora, users, names)
    trained_head = reclora.base_model.model.lm_head.modules_to_save["default"].weight
    for name in names:
        assert lora.peft_config[name].modules_to_save == ["lm_head"]
        assert torch.equal(lora.base_model.model.lm_head.modules_to_save[name].weight, trained_head)
    with torch.no_grad():
        got = lora(input_ids=input_ids, attention_mask=attention_mask, adapter_names=[names[i] for i in rows]).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert (expected - base).abs().max() > 0.1  # the trained head matters, so dropping it would show


def test_export_of_one_user_carries_modules_to_save(tmp_path):
    reclora = _reclora(modules_to_save=["lm_head"])
    user = torch.randn(1, 6)
    input_ids, attention_mask = _batch([0, 0])
    with torch.no_grad():
        expected = reclora(input_ids=input_ids, attention_mask=attention_mask, crm_embeds=user.expand(2, -1)).logits
    reclora.base_model.export_personalized_lora(user, tmp_path / "lora")
    lora = PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "lora")
    with torch.no_grad():
        got = lora(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
