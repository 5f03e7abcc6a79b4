"""RecLoRA training steps on a tiny Llama: one process on the whole batch, or (run with ``torchrun``) FSDP2 or FSDP1
with each process on its share of the batch.

``python -m torch.distributed.run --nproc_per_node 2 fsdp_training.py OUT`` runs every sharded case in one process
group and writes, per case, the full adapter state dict gathered after training (``OUT/<case>.pt``); the plain case is
also saved with ``save_pretrained`` (``OUT/adapter``). The test compares them with ``train_one_process``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from peft import get_peft_model

import peft_reclora


FSDP2_CASES = ("plain", "transformers_checkpointing", "checkpoint_wrapper")
CASES = (*FSDP2_CASES, "fsdp1")
GLOBAL_BATCH, SEQUENCE_LENGTH, STEPS, LEARNING_RATE = 4, 9, 2, 0.5
VOCAB, CRM_DIM = 64, 6


def make_base(seed: int = 0):
    """A 2-layer random Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ))


def make_model(seed: int = 0):
    """``make_base`` with a RecLoRA adapter whose B starts non-zero (every parameter gets a gradient)."""
    config = peft_reclora.RecLoraConfig(crm_dim=CRM_DIM, r=2, lora_alpha=4, num_meta_loras=4, gate_hidden_dim=8,
                                        init_weights=False)
    return get_peft_model(make_base(seed), config)


def make_batches():
    """``STEPS`` global batches; rows have equal length, so the mean of the per-process mean losses is the global
    mean loss."""
    generator = torch.Generator().manual_seed(7)
    return [
        {"input_ids": torch.randint(3, VOCAB, (GLOBAL_BATCH, SEQUENCE_LENGTH), generator=generator),
         "crm_embeds": torch.randn(GLOBAL_BATCH, CRM_DIM, generator=generator)}
        for _ in range(STEPS)
    ]


def process_batches(rank: int, world_size: int):
    """This process's rows of every global batch."""
    share = GLOBAL_BATCH // world_size
    rows = slice(rank * share, (rank + 1) * share)
    return [{key: value[rows] for key, value in batch.items()} for batch in make_batches()]


def adapter_tensors(state_dict: dict) -> dict:
    return {key: value.detach().cpu().clone() for key, value in state_dict.items() if "reclora_" in key}


def _train(model, batches) -> None:
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    for batch in batches:
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def train_one_process():
    """The reference: one process, the whole batch, no checkpointing."""
    model = make_model()
    _train(model, make_batches())
    return model


def _apply_checkpointing(model, case: str) -> None:
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    if case == "transformers_checkpointing":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif case == "checkpoint_wrapper":
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            apply_activation_checkpointing,
            checkpoint_wrapper,
        )

        model.config.use_cache = False  # a recomputed layer would otherwise append to the key/value cache again
        apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper,
                                       check_fn=lambda module: isinstance(module, LlamaDecoderLayer))


def train_sharded(case: str, rank: int, world_size: int):
    """FSDP2: ``fully_shard`` on each decoder layer, then on the root (the PEFT model, which holds the shared gate)."""
    from torch.distributed.fsdp import fully_shard

    model = make_model()
    _apply_checkpointing(model, case)
    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    _train(model, process_batches(rank, world_size))
    return model


def train_fsdp1(rank: int, world_size: int):
    """FSDP1 with ``peft_reclora.fsdp_auto_wrap_policy`` and flat parameters (``use_orig_params=False``, the strict
    kind: one dtype and one ``requires_grad`` per unit)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = make_model()
    model = FullyShardedDataParallel(model, auto_wrap_policy=peft_reclora.fsdp_auto_wrap_policy(model),
                                     device_id=torch.device("cpu"), use_orig_params=False)
    _train(model, process_batches(rank, world_size))
    return model


def main(out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    for case in CASES:
        if case == "fsdp1":
            # FSDP1 offloading a full state dict segfaults in CPU-only processes (torch 2.13); it is on the CPU
            # already.
            model = train_fsdp1(rank, world_size)
            options = StateDictOptions(full_state_dict=True)
        else:
            model = train_sharded(case, rank, world_size)
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(model, options=options)
        if rank == 0:
            torch.save(adapter_tensors(full), out / f"{case}.pt")
            if case == "plain":
                model.save_pretrained(out / "adapter", state_dict=full)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
