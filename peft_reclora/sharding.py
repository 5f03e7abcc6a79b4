"""What sharded training needs from RecLoRA: FSDP1 units that keep its fp32 parameters apart, and reading parameters
that DeepSpeed ZeRO-3 has partitioned.

- FSDP1 flattens every module it wraps into one flat parameter, which must have one dtype (and, without
  ``use_orig_params``, one ``requires_grad``). PEFT's ``fsdp_auto_wrap_policy`` gives a module its own unit only when
  it has a trainable ``.weight``, so RecLoRA's banks and gates (fp32, trainable) would land in the decoder layer's
  (bf16, frozen) flat parameter. ``fsdp_auto_wrap_policy`` below also wraps each RecLoRA layer, its base layer and
  every gate on their own. FSDP2 (``fully_shard``) shards each parameter separately and needs none of this.
- Under ZeRO-3 a parameter outside its module's forward is an empty placeholder (shape ``[0]``, the real shape in
  ``ds_shape``). Code that reads RecLoRA weights outside a forward (per-user export, gate inspection, the adapter
  checks) reads them inside ``gathered(...)``, PEFT's ``gather_params_ctx`` (a no-op without ZeRO-3). Every process
  has to run that code: gathering is a collective.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterable, Iterator

import torch
from peft.utils.integrations import gather_params_ctx
from peft.utils.other import fsdp_auto_wrap_policy as peft_fsdp_auto_wrap_policy
from torch import nn

from .gate import RecLoraGate
from .layer import RecLoraLayer


@contextlib.contextmanager
def gathered(tensors: Iterable[torch.Tensor]) -> Iterator[None]:
    """Inside the block, ZeRO-3-partitioned ``tensors`` hold their full values (read-only; nothing is written back)."""
    with gather_params_ctx(list(tensors), modifier_rank=None):
        yield


def fsdp_auto_wrap_policy(model: nn.Module):
    """FSDP1 ``auto_wrap_policy`` for a RecLoRA model: PEFT's policy (decoder layers, trainable leaf modules) plus one
    unit per RecLoRA layer, per base layer inside it and per gate, so no flat parameter mixes RecLoRA's fp32 trainable
    weights with the base's frozen ones.

        >>> from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        >>> model = FSDP(model, auto_wrap_policy=peft_reclora.fsdp_auto_wrap_policy(model), use_orig_params=True)
    """
    # torch.distributed.fsdp is missing from PyTorch builds without distributed support; only FSDP users get here.
    from torch.distributed.fsdp.wrap import _or_policy, lambda_auto_wrap_policy

    base_layers = {id(module.base_layer) for module in model.modules() if isinstance(module, RecLoraLayer)}

    def own_unit(module: nn.Module) -> bool:
        return isinstance(module, (RecLoraLayer, RecLoraGate)) or id(module) in base_layers

    reclora_policy = functools.partial(lambda_auto_wrap_policy, lambda_fn=own_unit)
    return functools.partial(_or_policy, policies=[peft_fsdp_auto_wrap_policy(model), reclora_policy])
