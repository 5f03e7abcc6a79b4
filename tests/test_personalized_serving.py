"""Many users through plain LoRA machinery: one personalized LoRA per user, served in one batch by PEFT's mixed-batch
inference (``adapter_names=``), equals RecLoRA with those users' ``crm_embeds``."""

import pytest
import torch
from peft import PeftModel, get_peft_model

import peft_reclora

from support.tiny_models import TINY_VOCAB, make_tiny_llama, reclora_config


def _reclora(mixing, gate_sharing):
    model = get_peft_model(make_tiny_llama(), reclora_config(mixing=mixing, gate_sharing=gate_sharing))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "reclora_B" in name:
                param.normal_(std=0.2)
    return model.eval()


@pytest.mark.parametrize("mixing", ["output", "weights"])
@pytest.mark.parametrize("gate_sharing", ["shared", "per_module"])
def test_mixed_batch_of_personalized_loras_equals_reclora(mixing, gate_sharing):
    reclora = _reclora(mixing, gate_sharing)
    generator = torch.Generator().manual_seed(11)
    users = torch.randn(3, 6, generator=generator)
    names = ["alice", "bob", "carol"]
    rows = [0, 1, 0, 2, 1]  # repeated and interleaved users in one batch
    input_ids = torch.randint(3, TINY_VOCAB, (len(rows), 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[3, :2] = 0
    with torch.no_grad():
        expected = reclora(input_ids=input_ids, attention_mask=attention_mask, crm_embeds=users[rows]).logits

    lora = peft_reclora.personalized_lora_model(make_tiny_llama(), reclora, users, names)
    assert isinstance(lora, PeftModel) and sorted(lora.peft_config) == sorted(names)
    rank = 4 * 2 if mixing == "output" else 2
    assert all(config.r == rank for config in lora.peft_config.values())
    with torch.no_grad():
        got = lora(input_ids=input_ids, attention_mask=attention_mask, adapter_names=[names[i] for i in rows]).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # users really differ, so the equality above is per row, not a shared average
    assert (expected[0] - expected[1]).abs().max() > 1e-3


def test_personalized_lora_model_rejects_bad_user_lists():
    reclora = _reclora("output", "shared")
    with pytest.raises(ValueError, match="2 names for 3 rows"):
        peft_reclora.personalized_lora_model(make_tiny_llama(), reclora, torch.randn(3, 6), ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        peft_reclora.personalized_lora_model(make_tiny_llama(), reclora, torch.randn(2, 6), ["a", "a"])
    with pytest.raises(ValueError, match="crm_dim=6"):
        peft_reclora.personalized_lora_model(make_tiny_llama(), reclora, torch.randn(2, 5), ["a", "b"])


def test_personalized_loras_onto_a_base_with_other_weights_are_refused():
    """Another checkpoint of the same architecture (another seed) would give another function without a word: it is
    refused naming both weight digests, unless allowed, and then a warning says so."""
    from peft_reclora.base_weights import base_weights_sha256

    reclora = _reclora("output", "shared")
    users = torch.randn(2, 6, generator=torch.Generator().manual_seed(3))
    trained, other = base_weights_sha256(reclora.base_model.model), base_weights_sha256(make_tiny_llama(seed=1))
    assert trained == base_weights_sha256(make_tiny_llama()) != other  # names PEFT adds are not part of it
    with pytest.raises(ValueError, match=f"sha256 {other[:16]}, but the RecLoRA model's base has {trained[:16]}"):
        peft_reclora.personalized_lora_model(make_tiny_llama(seed=1), reclora, users, ["a", "b"])
    with pytest.warns(UserWarning, match="exported anyway"):
        peft_reclora.personalized_lora_model(make_tiny_llama(seed=1), reclora, users, ["a", "b"],
                                             allow_other_base=True)
