"""RecLoRA through PEFT's public API on a tiny random Llama: crm_embeds plumbing, adapters, errors."""

import copy

import pytest
import torch
from peft import get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

import peft_reclora  # noqa: F401  registers RECLORA with PEFT
from peft_reclora import RecLoraLayer

from support.tiny_models import TINY_VOCAB, TokenSamples, make_tiny_llama, reclora_config


@pytest.fixture(params=["CAUSAL_LM", None], ids=["causal_lm", "task_none"])
def task_type(request):
    return request.param


def test_adapter_changes_outputs_and_init_is_the_base(batch, task_type):
    base_logits = make_tiny_llama()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    at_init = get_peft_model(make_tiny_llama(), reclora_config(init_weights=True, task_type=task_type))
    torch.testing.assert_close(at_init(**batch).logits, base_logits)

    model = get_peft_model(make_tiny_llama(), reclora_config(task_type=task_type))
    logits = model(**batch).logits
    assert (logits - base_logits).abs().max() > 1e-3
    other_user = dict(batch, crm_embeds=torch.randn_like(batch["crm_embeds"]))
    assert (model(**other_user).logits - logits).abs().max() > 1e-4, "the CRM must personalise the output"
    with model.disable_adapter():
        torch.testing.assert_close(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                   base_logits)
    torch.testing.assert_close(model(**batch).logits, logits)


def test_rows_are_independent(batch):
    model = get_peft_model(make_tiny_llama(), reclora_config())
    full = model(input_ids=batch["input_ids"], crm_embeds=batch["crm_embeds"]).logits
    single = model(input_ids=batch["input_ids"][2:], crm_embeds=batch["crm_embeds"][2:]).logits
    torch.testing.assert_close(full[2:], single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "crm, message",
    [
        (None, "needs `crm_embeds`"),
        (torch.full((3, 6), float("nan")), "NaN or Inf"),
        (torch.tensor([[float("inf")] * 6] * 3), "NaN or Inf"),
        (torch.randn(3, 5), r"crm_dim=6"),
        (torch.randn(2, 6), "batch size 2"),
        (torch.randn(3, 6, 1), r"\(batch, crm_dim\)"),
        (torch.ones(3, 6, dtype=torch.long), "floating-point"),
        ([[0.0] * 6] * 3, "torch.Tensor"),
    ],
)
def test_bad_crm_embeds_raise_value_error_naming_it(batch, task_type, crm, message):
    model = get_peft_model(make_tiny_llama(), reclora_config(task_type=task_type))
    kwargs = {"input_ids": batch["input_ids"]}
    if crm is not None:
        kwargs["crm_embeds"] = crm
    with pytest.raises(ValueError, match=message) as info:
        model(**kwargs)
    assert "crm_embeds" in str(info.value)
    with pytest.raises(ValueError, match="crm_embeds"):
        model.generate(**kwargs, max_new_tokens=2, do_sample=False)


def test_stale_crm_is_never_reused(batch):
    model = get_peft_model(make_tiny_llama(), reclora_config())
    model(**batch)
    with pytest.raises(ValueError, match="needs `crm_embeds`"):
        model(input_ids=batch["input_ids"])


def test_no_crm_needed_inside_disable_adapter(batch, task_type):
    model = get_peft_model(make_tiny_llama(), reclora_config(task_type=task_type))
    with model.disable_adapter():
        model(input_ids=batch["input_ids"])
        model.generate(input_ids=batch["input_ids"], max_new_tokens=2, do_sample=False)
        model(**batch)  # a CRM given anyway is accepted and ignored


def test_crm_dtype_and_device_follow_the_gate(batch):
    model = get_peft_model(make_tiny_llama(dtype=torch.bfloat16), reclora_config())
    assert model.base_model.reclora_gate["default"].fc1_weight.dtype == torch.float32
    logits = model(input_ids=batch["input_ids"], crm_embeds=batch["crm_embeds"].double()).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def _greedy_steps(model, input_ids, crm, steps):
    """Teacher-forced reference: full forward on the growing sequence, no cache."""
    sequence = input_ids
    logits_per_step = []
    for _ in range(steps):
        logits = model(input_ids=sequence, crm_embeds=crm, use_cache=False).logits[:, -1]
        logits_per_step.append(logits)
        sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
    return sequence, torch.stack(logits_per_step, 1)


def test_generate_conditions_every_cached_step(task_type):
    model = get_peft_model(make_tiny_llama(), reclora_config(task_type=task_type))
    input_ids = torch.randint(3, TINY_VOCAB, (2, 5), generator=torch.Generator().manual_seed(1))
    crm = torch.randn(2, 6)
    out = model.generate(
        input_ids=input_ids, crm_embeds=crm, max_new_tokens=4, do_sample=False, output_logits=True,
        return_dict_in_generate=True, min_new_tokens=4,
    )
    expected_sequence, expected_logits = _greedy_steps(model, input_ids, crm, 4)
    assert torch.equal(out.sequences, expected_sequence)
    torch.testing.assert_close(torch.stack(out.logits, 1), expected_logits, rtol=1e-4, atol=1e-4)
    with model.disable_adapter():
        base = model.generate(input_ids=input_ids, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    other = model.generate(input_ids=input_ids, crm_embeds=-3 * crm, max_new_tokens=4, do_sample=False,
                           min_new_tokens=4, output_logits=True, return_dict_in_generate=True)
    assert not torch.allclose(torch.stack(other.logits, 1), expected_logits)
    assert base.shape == out.sequences.shape


def test_generate_with_beams_and_multiple_returns():
    model = get_peft_model(make_tiny_llama(), reclora_config())
    input_ids = torch.randint(3, TINY_VOCAB, (2, 5), generator=torch.Generator().manual_seed(2))
    crm = torch.randn(2, 6)
    beams = model.generate(input_ids=input_ids, crm_embeds=crm, max_new_tokens=3, num_beams=3, do_sample=False)
    assert beams.shape[0] == 2
    # each prompt's beams must be conditioned on its own CRM: same result as generating it alone
    alone = model.generate(input_ids=input_ids[1:], crm_embeds=crm[1:], max_new_tokens=3, num_beams=3, do_sample=False)
    assert torch.equal(beams[1:], alone)
    many = model.generate(
        input_ids=input_ids, crm_embeds=crm, max_new_tokens=3, num_beams=3, num_return_sequences=3, do_sample=False
    )
    assert many.shape[0] == 6
    assert torch.equal(many[3], alone[0])


def test_generate_rejects_a_crm_batch_that_does_not_match_the_prompts():
    model = get_peft_model(make_tiny_llama(), reclora_config())
    with pytest.raises(ValueError, match="crm_embeds"):
        model.generate(input_ids=torch.randint(3, TINY_VOCAB, (2, 4)), crm_embeds=torch.randn(3, 6), max_new_tokens=2)


def test_trainable_parameters_follow_the_formula(capsys):
    config = reclora_config(num_meta_loras=5, r=3, gate_hidden_dim=7)
    model = get_peft_model(make_tiny_llama(), config)
    q, v = (32, 32), (32, 16)  # (d_in, d_out) of q_proj and v_proj in the tiny Llama
    banks = 2 * sum(5 * 3 * (d_in + d_out) for d_in, d_out in (q, v))  # 2 decoder layers
    gate = (6 * 7 + 7) + 2 * 7 + (7 * 5 + 5)
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == banks + gate
    model.print_trainable_parameters()
    assert f"trainable params: {banks + gate:,}" in capsys.readouterr().out
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("reclora_" in n for n in names)

    per_module = get_peft_model(make_tiny_llama(), reclora_config(num_meta_loras=5, r=3, gate_hidden_dim=7,
                                                                  gate_sharing="per_module"))
    assert per_module.get_nb_trainable_parameters()[0] == banks + 4 * gate


def test_training_step_updates_only_adapter_parameters(batch):
    model = get_peft_model(make_tiny_llama(), reclora_config())
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        assert changed == ("reclora_" in name), name


def _grads(model, batch):
    model.zero_grad()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("gate_sharing", ["shared", "per_module"])
@pytest.mark.parametrize("gate_dropout", [0.0, 0.3])
def test_gradient_checkpointing_reentrant_and_not_give_the_same_gradients(batch, gate_sharing, gate_dropout):
    model = get_peft_model(make_tiny_llama(), reclora_config(gate_sharing=gate_sharing, gate_dropout=gate_dropout))
    model.train()
    torch.manual_seed(0)
    reference = _grads(model, batch)
    assert all(g.abs().sum() > 0 for g in reference.values())
    for reentrant in (True, False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        model.enable_input_require_grads()
        torch.manual_seed(0)
        got = _grads(model, batch)
        assert got.keys() == reference.keys()
        for name in reference:
            torch.testing.assert_close(got[name], reference[name], rtol=1e-5, atol=1e-6, msg=f"{name} {reentrant}")
        model.gradient_checkpointing_disable()


def test_checkpointing_refuses_two_forwards_before_backward(batch):
    model = get_peft_model(make_tiny_llama(), reclora_config())
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    first = model(**batch, labels=batch["input_ids"]).loss
    with pytest.raises(RuntimeError, match="backward"):
        model(**batch, labels=batch["input_ids"])
    first.backward()
    model(**batch, labels=batch["input_ids"]).loss.backward()  # the normal pattern keeps working
    with torch.no_grad():
        model(**batch)
        model(**batch)


def test_gate_dropout_is_one_mask_per_call_shared_by_all_layers(batch):
    model = get_peft_model(make_tiny_llama(), reclora_config(gate_dropout=0.5))
    model.train()
    context = model.base_model._crm_context
    layers = [m for m in model.modules() if isinstance(m, RecLoraLayer)]
    seen = []

    def record(layer, args):
        call = context.current_call()
        alpha = context.gate(call, "default", layer.gate_module("default"), 3, torch.device("cpu"))
        seen.append((call.dropout_masks.get("default"), alpha.detach()))

    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    model(**batch)
    masks = [mask for mask, _ in seen]
    assert len(seen) == len(layers) and all(mask is masks[0] for mask in masks)
    assert masks[0].shape == (3, 8) and set(masks[0].unique().tolist()) <= {0.0, 2.0}
    for _, alpha in seen[1:]:
        torch.testing.assert_close(alpha, seen[0][1])
    seen.clear()
    model(**batch)
    assert not torch.equal(seen[0][0], masks[0]), "a new call draws new masks"
    seen.clear()
    model.eval()
    model(**batch)
    assert all(mask is None for mask, _ in seen)
    for hook in hooks:
        hook.remove()


def test_multiple_adapters(batch):
    model = get_peft_model(make_tiny_llama(), reclora_config(), adapter_name="first")
    model.add_adapter("second", reclora_config(num_meta_loras=3, gate_sharing="per_module"))
    assert model.active_adapters == ["first"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".first" in n for n in trainable), "add_adapter must not change trainability"
    first = model(**batch).logits
    model.set_adapter("second")
    second = model(**batch).logits
    assert (first - second).abs().max() > 1e-4
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".second" in n for n in trainable)
    with pytest.raises(ValueError):
        model.add_adapter("second", reclora_config())
    model.set_adapter("first")
    torch.testing.assert_close(model(**batch).logits, first)
    model.delete_adapter("second")
    assert "second" not in model.peft_config
    for module in model.modules():
        if isinstance(module, RecLoraLayer):
            for attr in module.adapter_layer_names + module.other_param_names:
                assert "second" not in getattr(module, attr)
    assert "second" not in model.base_model.reclora_gate
    assert "second" not in model.base_model._crm_context.gate_dropout
    with pytest.raises(ValueError, match="does not exist"):
        model.delete_adapter("second")
    torch.testing.assert_close(model(**batch).logits, first)


def test_failed_add_adapter_rolls_back_the_shared_gate():
    model = get_peft_model(make_tiny_llama(), reclora_config())
    with pytest.raises(ValueError):
        model.add_adapter("broken", reclora_config(target_modules=["does_not_exist"]))
    assert "broken" not in model.base_model.reclora_gate
    assert "broken" not in model.peft_config


def test_unknown_target_modules_raise():
    with pytest.raises(ValueError, match="not found"):
        get_peft_model(make_tiny_llama(), reclora_config(target_modules=["query_proj"]))
    with pytest.raises(TypeError, match="not supported"):
        get_peft_model(make_tiny_llama(), reclora_config(target_modules=["embed_tokens"]))


def test_target_modules_none_uses_the_architecture_mapping():
    model = get_peft_model(make_tiny_llama(), reclora_config(target_modules=None))
    adapted = sorted(model.base_model.reclora_layers())
    assert adapted and all(n.endswith(("q_proj", "v_proj")) for n in adapted)


def test_layers_to_transform_and_exclude_modules():
    model = get_peft_model(make_tiny_llama(), reclora_config(layers_to_transform=[1], layers_pattern="layers"))
    assert sorted(model.base_model.reclora_layers()) == ["model.layers.1.self_attn.q_proj",
                                                         "model.layers.1.self_attn.v_proj"]
    model = get_peft_model(make_tiny_llama(), reclora_config(exclude_modules=["model.layers.0.self_attn.v_proj"]))
    assert "model.layers.0.self_attn.v_proj" not in model.base_model.reclora_layers()


def test_merge_is_refused_and_leaves_the_model_untouched(batch):
    model = get_peft_model(make_tiny_llama(), reclora_config())
    before = model(**batch).logits
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    for call in (model.merge_and_unload, model.merge_adapter,
                 lambda: model.base_model.merge_and_unload(safe_merge=True)):
        with pytest.raises(ValueError, match="cannot be merged"):
            call()
    assert all(torch.equal(weights[n], p) for n, p in model.named_parameters())
    assert any(isinstance(m, RecLoraLayer) for m in model.modules())
    torch.testing.assert_close(model(**batch).logits, before)


def test_unload_restores_the_base_model(batch):
    base = make_tiny_llama()
    reference = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    keys = set(base.state_dict())
    model = get_peft_model(base, reclora_config())
    unloaded = model.unload()
    assert not any(isinstance(m, BaseTunerLayer) for m in unloaded.modules())
    assert set(unloaded.state_dict()) == keys
    assert "generate" not in unloaded.__dict__ and not hasattr(unloaded, "_reclora_crm_context")
    assert not unloaded._forward_pre_hooks
    torch.testing.assert_close(unloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                               reference)
    unloaded.generate(input_ids=batch["input_ids"], max_new_tokens=2, do_sample=False)


def test_deepcopy_keeps_its_own_crm_plumbing(batch):
    model = get_peft_model(make_tiny_llama(), reclora_config())
    clone = copy.deepcopy(model)
    torch.testing.assert_close(clone(**batch).logits, model(**batch).logits)
    with pytest.raises(ValueError, match="needs `crm_embeds`"):
        clone(input_ids=batch["input_ids"])
    assert clone.base_model._crm_context is not model.base_model._crm_context


def test_adapter_dtype_follows_autocast_convention():
    model = get_peft_model(make_tiny_llama(dtype=torch.bfloat16), reclora_config(gate_sharing="per_module"))
    dtypes = {p.dtype for n, p in model.named_parameters() if "reclora_" in n}
    assert dtypes == {torch.float32}
    model = get_peft_model(make_tiny_llama(dtype=torch.bfloat16), reclora_config(), autocast_adapter_dtype=False)
    dtypes = {p.dtype for n, p in model.named_parameters() if "reclora_" in n}
    assert dtypes == {torch.bfloat16}


def test_fp32_storage_computes_in_the_base_dtype(batch):
    """fp32 adapters on a bf16 base give the same result as bf16 adapters (the math runs in bf16 either way)."""
    fp32_adapters = get_peft_model(make_tiny_llama(dtype=torch.bfloat16), reclora_config())
    bf16_adapters = get_peft_model(make_tiny_llama(dtype=torch.bfloat16), reclora_config(),
                                   autocast_adapter_dtype=False)
    state = {k: v.to(torch.bfloat16) for k, v in fp32_adapters.state_dict().items() if "reclora_" in k}
    bf16_adapters.load_state_dict(state, strict=False)
    fp32_adapters.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    torch.testing.assert_close(fp32_adapters(**batch).logits, bf16_adapters(**batch).logits, rtol=0.02, atol=0.02)


def test_compute_gate_per_module_needs_a_module_name(batch):
    model = get_peft_model(make_tiny_llama(), reclora_config(gate_sharing="per_module"))
    with pytest.raises(ValueError, match="module_name"):
        model.base_model.compute_gate(batch["crm_embeds"])
    alpha = model.base_model.compute_gate(batch["crm_embeds"], module_name="model.layers.1.self_attn.v_proj")
    assert alpha.shape == (3, 4)
    with pytest.raises(ValueError, match="crm_dim"):
        model.base_model.compute_gate(torch.randn(3, 2), module_name="model.layers.1.self_attn.v_proj")


def test_trainer_passes_crm_embeds_through_a_collator(tmp_path):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = get_peft_model(make_tiny_llama(), reclora_config(init_weights=True))

    def collate(rows):
        return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}

    seen = []
    hook = model.base_model.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("crm_embeds")), with_kwargs=True, prepend=True
    )
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
        report_to=[], save_strategy="no", use_cpu=True, logging_strategy="no", remove_unused_columns=False,
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    Trainer(model=model, args=args, train_dataset=TokenSamples(), data_collator=collate).train()
    hook.remove()
    assert seen and all(crm is not None and crm.shape == (4, 6) for crm in seen)
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(before[n], p.detach())]
    assert any("reclora_B" in n for n in changed)


def test_trainer_dropping_crm_embeds_gives_an_error_that_names_the_fix(tmp_path):
    """With the Trainer's default remove_unused_columns=True the column never reaches the model; the error says why."""
    from transformers import Trainer, TrainingArguments

    model = get_peft_model(make_tiny_llama(), reclora_config())

    class Samples(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            ids = torch.arange(3, 9)
            return {"input_ids": ids, "labels": ids, "crm_embeds": torch.randn(6)}

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, report_to=[],
                             save_strategy="no", use_cpu=True, logging_strategy="no")
    assert args.remove_unused_columns  # the default this test is about
    trainer = Trainer(model=model, args=args, train_dataset=Samples(),
                      data_collator=lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]})
    with pytest.raises(ValueError, match=r"crm_embeds[\s\S]*remove_unused_columns=False[\s\S]*collator|"
                                         r"crm_embeds[\s\S]*collator[\s\S]*remove_unused_columns=False"):
        trainer.train()
