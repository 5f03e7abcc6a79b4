"""Sharded training: PyTorch's checkpoint wrapper, FSDP2 on two gloo processes, FSDP1's wrap policy, and reading
parameters that DeepSpeed ZeRO-3 has partitioned."""

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

from conftest import make_tiny_llama, reclora_config
from support import fsdp_training
from test_distributed import _environment

# FSDP2 averages the two processes' gradients of half batches: the one-process step up to float32 summation order.
STEP_TOLERANCE = 1e-5


def _wrap_decoder_layers(model, impl: CheckpointImpl) -> None:
    model.config.use_cache = False  # a recomputed layer would otherwise append its keys and values to the cache again
    apply_activation_checkpointing(
        model, checkpoint_wrapper_fn=functools.partial(checkpoint_wrapper, checkpoint_impl=impl),
        check_fn=lambda module: isinstance(module, LlamaDecoderLayer),
    )


def _grads(model, batch):
    model.zero_grad()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("gate_sharing", ["shared", "per_module"])
@pytest.mark.parametrize("impl", [CheckpointImpl.NO_REENTRANT, CheckpointImpl.REENTRANT])
def test_pytorch_checkpoint_wrapper_gives_the_unwrapped_gradients(batch, gate_sharing, impl):
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
def fsdp2_results(tmp_path_factory):
    """Every FSDP2 case, trained once in one two-process group."""
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
def test_fsdp2_takes_the_one_process_step(fsdp2_results, one_process_model, case):
    expected = fsdp_training.adapter_tensors(one_process_model.state_dict())
    initial = fsdp_training.adapter_tensors(fsdp_training.make_model().state_dict())
    got = torch.load(fsdp2_results / f"{case}.pt")
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert (value - initial[key]).abs().max() > STEP_TOLERANCE, f"{key} did not move: the test could not fail"
        torch.testing.assert_close(got[key], value, rtol=0, atol=STEP_TOLERANCE, msg=f"{case}: {key}")


def test_full_state_dict_after_fsdp2_saves_a_normal_adapter(fsdp2_results, one_process_model):
    loaded = PeftModel.from_pretrained(fsdp_training.make_base(), fsdp2_results / "adapter")
    expected = fsdp_training.adapter_tensors(one_process_model.state_dict())
    got = fsdp_training.adapter_tensors(loaded.state_dict())
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=STEP_TOLERANCE, msg=key)
    batch = fsdp_training.make_batches()[0]
    one_process_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, one_process_model(**batch).logits, rtol=0, atol=1e-4)
