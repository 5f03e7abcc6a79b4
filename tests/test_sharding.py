"""Sharded training: PyTorch's checkpoint wrapper, FSDP2 and FSDP1 on two gloo processes, FSDP1's wrap policy, and
reading parameters that DeepSpeed ZeRO-3 has partitioned."""

import contextlib
import functools
import socket
import subprocess
import sys

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from support import fsdp_training
from support.tiny_models import make_tiny_llama, reclora_config
from test_distributed import _environment


# FSDP averages the two processes' gradients of half batches: the one-process step up to float32 summation order.
STEP_TOLERANCE = 1e-5


def _wrap_decoder_layers(model, impl) -> None:
    """PyTorch's checkpointing on each decoder layer: the wrapper (``CheckpointImpl``) or the composable API."""
    model.config.use_cache = False  # a recomputed layer would otherwise append its keys and values to the cache again
    if impl == "composable":
        from torch.distributed._composable import checkpoint

        for layer in model.base_model.model.model.layers:
            checkpoint(layer)
        return
    apply_activation_checkpointing(
        model, checkpoint_wrapper_fn=functools.partial(checkpoint_wrapper, checkpoint_impl=impl),
        check_fn=lambda module: isinstance(module, LlamaDecoderLayer),
    )


def _grads(model, batch):
    model.zero_grad()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("gate_sharing", ["shared", "per_module"])
@pytest.mark.parametrize("impl", [CheckpointImpl.NO_REENTRANT, CheckpointImpl.REENTRANT, "composable"])
def test_pytorch_checkpointing_gives_the_unwrapped_gradients(batch, gate_sharing, impl):
    """The recomputation during backward sees its own call's CRM (gate dropout masks included)."""
    model = get_peft_model(make_tiny_llama(), reclora_config(gate_sharing=gate_sharing, gate_dropout=0.3))
    model.train()
    torch.manual_seed(0)
    reference = _grads(model, batch)
    _wrap_decoder_layers(model, impl)
    model.enable_input_require_grads()  # reentrant checkpointing needs an input that requires grad
    torch.manual_seed(0)
    got = _grads(model, batch)
    assert {n.replace("._checkpoint_wrapped_module", "") for n in got} == set(reference)
    for name, grad in got.items():
        torch.testing.assert_close(grad, reference[name.replace("._checkpoint_wrapped_module", "")], rtol=1e-5,
                                   atol=1e-6, msg=name)


def test_checkpoint_wrapper_refuses_two_forwards_before_backward(batch):
    model = get_peft_model(make_tiny_llama(), reclora_config())
    model.train()
    _wrap_decoder_layers(model, CheckpointImpl.NO_REENTRANT)
    first = model(**batch, labels=batch["input_ids"]).loss
    with pytest.raises(RuntimeError, match="backward"):
        model(**batch, labels=batch["input_ids"])
    first.backward()
    model(**batch, labels=batch["input_ids"]).loss.backward()


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory):
    """Every FSDP2 and FSDP1 case, trained once in one two-process group."""
    out = tmp_path_factory.mktemp("fsdp2")
    process = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         fsdp_training.__file__, str(out)],
        env=_environment(), capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def one_process_model():
    return fsdp_training.train_one_process()


@pytest.mark.parametrize("case", fsdp_training.CASES)
def test_sharded_training_takes_the_one_process_step(sharded_results, one_process_model, case):
    expected = fsdp_training.adapter_tensors(one_process_model.state_dict())
    initial = fsdp_training.adapter_tensors(fsdp_training.make_model().state_dict())
    got = torch.load(sharded_results / f"{case}.pt")
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert (value - initial[key]).abs().max() > STEP_TOLERANCE, f"{key} did not move: the test could not fail"
        torch.testing.assert_close(got[key], value, rtol=0, atol=STEP_TOLERANCE, msg=f"{case}: {key}")


def test_full_state_dict_after_fsdp2_saves_a_normal_adapter(sharded_results, one_process_model):
    loaded = PeftModel.from_pretrained(fsdp_training.make_base(), sharded_results / "adapter")
    expected = fsdp_training.adapter_tensors(one_process_model.state_dict())
    got = fsdp_training.adapter_tensors(loaded.state_dict())
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=STEP_TOLERANCE, msg=key)
    batch = fsdp_training.make_batches()[0]
    one_process_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, one_process_model(**batch).logits, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# FSDP1: which modules become units


def _units(model, policy) -> dict:
    """Each FSDP1 unit (the root included) and the parameters it would flatten: those not inside a nested unit."""
    wrapped = {id(module) for module in model.modules() if policy(module=module, recurse=False, nonwrapped_numel=0)}
    units = {}

    def visit(module, owner):
        if id(module) in wrapped:
            owner = module
        units.setdefault(id(owner), []).extend(module.parameters(recurse=False))
        for child in module.children():
            visit(child, owner)

    visit(model, model)
    return units


def _bf16_base_with_fp32_adapter(gate_sharing: str):
    model = get_peft_model(make_tiny_llama(dtype=torch.bfloat16), reclora_config(gate_sharing=gate_sharing))
    assert {p.dtype for n, p in model.named_parameters() if "reclora_" in n} == {torch.float32}
    return model


@pytest.mark.parametrize("gate_sharing", ["shared", "per_module"])
def test_fsdp1_policy_gives_every_unit_one_dtype_and_one_requires_grad(gate_sharing):
    from peft.utils.other import fsdp_auto_wrap_policy as peft_policy

    import peft_reclora

    model = _bf16_base_with_fp32_adapter(gate_sharing)
    mixed = [params for params in _units(model, peft_policy(model)).values() if len({p.dtype for p in params}) > 1]
    assert mixed, "PEFT's policy mixes RecLoRA's fp32 weights into a bf16 unit: what FSDP1 refuses"
    units = _units(model, peft_reclora.fsdp_auto_wrap_policy(model))
    for params in units.values():
        assert len({p.dtype for p in params}) <= 1
        assert len({p.requires_grad for p in params}) <= 1
    trainable_units = [params for params in units.values() if params and params[0].requires_grad]
    assert sum(len(params) for params in trainable_units) == len([p for p in model.parameters() if p.requires_grad])


# ---------------------------------------------------------------------------------------------------------------------
# DeepSpeed ZeRO-3, simulated: a partitioned parameter is an empty placeholder with its real shape in `ds_shape`


class Partitioned:
    """Partitions every parameter of a model as ZeRO-3 does between forwards, and stands in for DeepSpeed's gather."""

    def __init__(self, model):
        self.full = {}
        for index, param in enumerate(model.parameters()):
            param.ds_id, param.ds_shape = index, param.shape
            self.full[index] = param.data
            param.data = torch.empty(0, dtype=param.dtype)
        self.gathered = 0

    @contextlib.contextmanager
    def gather_params_ctx(self, params, modifier_rank=0, fwd_module=None):
        params = [p for p in params if hasattr(p, "ds_id")]
        for param in params:
            param.data = self.full[param.ds_id]
        self.gathered += len(params)
        try:
            yield
        finally:
            for param in params:
                param.data = torch.empty(0, dtype=param.dtype)


@pytest.mark.parametrize("mixing", ["output", "weights"])
def test_export_and_gate_read_partitioned_parameters_gathered(tmp_path, monkeypatch, mixing):
    from safetensors.torch import load_file

    import peft_reclora.sharding
    from peft_reclora.export import personalized_lora_model, personalized_lora_weights

    model = get_peft_model(make_tiny_llama(), reclora_config(mixing=mixing))
    model.eval()
    crm = torch.randn(2, 6, generator=torch.Generator().manual_seed(3))
    tuner = model.base_model
    expected_gate = tuner.compute_gate(crm)
    expected_weights = personalized_lora_weights(tuner, crm[:1])
    tuner.export_personalized_lora(crm[0], tmp_path / "whole")
    model.save_pretrained(tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    users, prompt = ["u1", "u2"], torch.tensor([[5, 6, 7]])
    served = personalized_lora_model(make_tiny_llama(), model, crm, users)
    with torch.no_grad():
        expected_logits = [served(input_ids=prompt, adapter_names=[user]).logits for user in users]

    partitioned = Partitioned(model)
    monkeypatch.setattr(peft_reclora.sharding, "gather_params_ctx", partitioned.gather_params_ctx)
    assert tuner.reclora_gate["default"].fc1_weight.shape == (0,)

    torch.testing.assert_close(tuner.compute_gate(crm), expected_gate)
    got = personalized_lora_weights(tuner, crm[:1])
    assert set(got) == set(expected_weights)
    for name, (lora_a, lora_b) in expected_weights.items():
        torch.testing.assert_close(got[name][0], lora_a)
        torch.testing.assert_close(got[name][1], lora_b)
    tuner.export_personalized_lora(crm[0], tmp_path / "gathered")
    whole, gathered = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("whole", "gathered"))
    assert set(whole) == set(gathered) and all(torch.equal(whole[k], gathered[k]) for k in whole)

    def load_time_check(state_dict):  # what PEFT runs when it loads an adapter into this model
        type(tuner)._remap_adapter_state_dict_for_load(model=model, config=tuner.peft_config["default"],
                                                       adapter_name="default", state_dict=dict(state_dict))

    load_time_check(saved)
    key = next(k for k in saved if k.endswith("reclora_A"))
    with pytest.raises(ValueError, match="shape of"):
        load_time_check({**saved, key: saved[key][:-1]})

    served = personalized_lora_model(make_tiny_llama(), model, crm, users)  # the base digest is read gathered
    with torch.no_grad():
        for user, logits in zip(users, expected_logits):
            torch.testing.assert_close(served(input_ids=prompt, adapter_names=[user]).logits, logits)
    assert all(param.shape == (0,) for param in model.parameters()), "everything is partitioned again afterwards"
    assert partitioned.gathered

