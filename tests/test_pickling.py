"""A whole RecLoRA ``PeftModel`` travels by pickle: ``pickle``, ``torch.save``/``torch.load`` and the pickler that
``multiprocessing`` uses to hand a model to a spawned process. The copy computes the same outputs, ``generate`` keeps
taking ``crm_embeds``, and it is wired to its own CRM context, not the original's."""

import io
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.reduction import ForkingPickler

import pytest
import torch
from peft import get_peft_model

from support.tiny_models import TINY_VOCAB, make_tiny_llama, reclora_config


def _pickle(model):
    return pickle.loads(pickle.dumps(model))


def _torch_save_load(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _forking_pickler(model):
    return pickle.loads(ForkingPickler.dumps(model))


@pytest.fixture(params=["shared", "per_module"])
def trained_model(request):
    model = get_peft_model(make_tiny_llama(), reclora_config(gate_sharing=request.param))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "reclora_B" in name:
                param.normal_(std=0.2)
    return model.eval()


@pytest.mark.parametrize("round_trip", [_pickle, _torch_save_load, _forking_pickler],
                         ids=["pickle", "torch_save", "spawn_pickler"])
def test_a_pickled_model_gives_the_same_outputs_and_generates(trained_model, batch, round_trip):
    model = trained_model
    with torch.no_grad():
        expected = model(**batch).logits
    prompts = batch["input_ids"][:2]
    expected_tokens = model.generate(input_ids=prompts, crm_embeds=batch["crm_embeds"][:2], max_new_tokens=3,
                                     do_sample=False)

    clone = round_trip(model)
    with torch.no_grad():
        torch.testing.assert_close(clone(**batch).logits, expected, rtol=0, atol=0)
    tokens = clone.generate(input_ids=prompts, crm_embeds=batch["crm_embeds"][:2], max_new_tokens=3, do_sample=False)
    assert torch.equal(tokens, expected_tokens)
    # the copy's plumbing is its own: its generate drives its own model, and it still refuses a missing crm_embeds
    assert clone.base_model._crm_context is not model.base_model._crm_context
    wrapped = clone.base_model.model
    assert wrapped.generate.model is wrapped
    with pytest.raises(ValueError, match="needs `crm_embeds`"):
        clone(input_ids=batch["input_ids"])


def test_a_pickled_model_keeps_training(batch):
    model = get_peft_model(make_tiny_llama(), reclora_config()).train()
    clone = _pickle(model)
    clone(**batch, labels=batch["input_ids"]).loss.backward()
    grads = {name: p.grad for name, p in clone.named_parameters() if p.requires_grad}
    assert grads and all(grad is not None and torch.isfinite(grad).all() for grad in grads.values())
    assert any("reclora_gate" in name for name in grads)


def _logits_in_a_spawned_process(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_a_model_runs_in_a_spawned_process(batch):
    """The real thing: multiprocessing's spawn start method pickles the model into a fresh interpreter."""
    model = get_peft_model(make_tiny_llama(), reclora_config()).eval()
    with torch.no_grad():
        expected = model(**batch).logits
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        got = pool.submit(_logits_in_a_spawned_process, model, batch).result(timeout=300)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_unload_after_a_round_trip_restores_the_base_model(batch):
    base_logits = make_tiny_llama()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    clone = _pickle(get_peft_model(make_tiny_llama(), reclora_config()))
    unloaded = clone.unload()
    assert "generate" not in unloaded.__dict__
    torch.testing.assert_close(
        unloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, base_logits
    )
    unloaded.generate(input_ids=torch.randint(3, TINY_VOCAB, (1, 4)), max_new_tokens=2, do_sample=False)
