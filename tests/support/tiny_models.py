"""Tiny models for fast tests: a 2-layer random Llama, a small RecLoRA config, a RecLoRA model whose adapter weights
are nonzero (as after training), and a token dataset for ``Trainer`` runs."""

from __future__ import annotations

from typing import Optional

import torch
from peft import PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import peft_reclora


TINY_VOCAB = 64


def make_tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> LlamaForCausalLM:
    """A 2-layer Llama with random weights; q_proj is 32->32 and v_proj 32->16 (grouped-query attention)."""
    settings = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**settings))
    return model.to(dtype).eval()


def reclora_config(**overrides) -> peft_reclora.RecLoraConfig:
    """crm_dim 6, rank 2, 4 meta-LoRAs; ``init_weights=False`` so that a fresh adapter already changes the output."""
    settings = dict(crm_dim=6, r=2, lora_alpha=4, num_meta_loras=4, gate_hidden_dim=8, init_weights=False)
    settings.update(overrides)
    return peft_reclora.RecLoraConfig(**settings)


def trained_reclora(
    config: Optional[peft_reclora.RecLoraConfig] = None, seed: int = 0, adapter_name: str = "default"
) -> PeftModel:
    """RecLoRA on the tiny Llama (``reclora_config()`` unless ``config``), every adapter weight moved by seeded noise,
    as training would: a saved and reloaded model that matches it has kept every adapter tensor."""
    model = get_peft_model(make_tiny_llama(), config or reclora_config(), adapter_name=adapter_name)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "reclora_" in name:
                param.add_(0.05 * torch.randn_like(param))
    return model


class TokenSamples(torch.utils.data.Dataset):
    """Eight seeded rows of 6 random tokens (labels = inputs) and a 6-wide ``crm_embeds``, for ``Trainer`` runs."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(3, TINY_VOCAB, (6,), generator=g)
        return {"input_ids": ids, "labels": ids, "crm_embeds": torch.randn(6, generator=g)}
