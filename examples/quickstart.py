"""RecLoRA in a few lines, on the embedded SmolLM2-135M-Instruct (no download needed).

Adds RecLoRA to q_proj and v_proj, scores two recommendation prompts with per-user CRM embeddings, takes one training
step on the answer token, saves the adapter, reloads it and checks that the reloaded model scores identically.

    python examples/quickstart.py [--model embedded|<hub id or folder>] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from peft import PeftModel, get_peft_model

import peft_reclora
from reclora_pipeline.llm import load_base_model, load_tokenizer


PROMPTS = [
    "The user is a female. Her job is writer. She watched Antz (1998) (4 stars) and Titanic (1997) (5 stars). "
    "Will she like Sense and Sensibility (1995)? Answer with Yes or No.\nAnswer:",
    "The user is a male. His job is student. He watched Scream (1996) (2 stars) and Heat (1995) (5 stars). "
    "Will he like Toy Story (1995)? Answer with Yes or No.\nAnswer:",
]
LABELS = [1, 0]
CRM_DIM = 32


def yes_no_ids(tokenizer) -> tuple[int, int]:
    """Token ids of the answers as they follow 'Answer:' (with a leading space); each must be a single token."""
    ids = []
    for word in (" Yes", " No"):
        tokens = tokenizer.encode(word, add_special_tokens=False)
        if len(tokens) != 1:
            raise ValueError(f"{word!r} is not a single token for this tokenizer: {tokens}")
        ids.append(tokens[0])
    return ids[0], ids[1]


@torch.no_grad()
def p_yes(model, batch, crm_embeds, yes_id, no_id) -> torch.Tensor:
    logits = model(**batch, crm_embeds=crm_embeds, logits_to_keep=1).logits[:, -1]
    return torch.softmax(logits[:, [no_id, yes_id]].float(), dim=-1)[:, 1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="'embedded' (SmolLM2-135M), a Hub id or a local folder")
    parser.add_argument("--out", default=None, help="where to save the adapter (default: a temporary folder)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    start = time.perf_counter()
    tokenizer = load_tokenizer(args.model)
    base = load_base_model(args.model)
    print(f"loaded {base.config.model_type} with {base.num_parameters():,} parameters "
          f"in {time.perf_counter() - start:.1f}s")

    config = peft_reclora.RecLoraConfig(crm_dim=CRM_DIM, r=8, lora_alpha=16, num_meta_loras=16)
    model = get_peft_model(base, config)
    model.print_trainable_parameters()

    batch = dict(tokenizer(PROMPTS, return_tensors="pt", padding=True))
    batch = {key: value.to(model.device) for key, value in batch.items()}
    crm_embeds = torch.randn(len(PROMPTS), CRM_DIM, device=model.device)  # one CRM user representation per prompt
    yes_id, no_id = yes_no_ids(tokenizer)
    print("gate weights (user 0):", [round(v, 3) for v in model.base_model.compute_gate(crm_embeds)[0].tolist()])
    print("P(Yes) before training:", [round(v, 4) for v in p_yes(model, batch, crm_embeds, yes_id, no_id).tolist()])

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    logits = model(**batch, crm_embeds=crm_embeds, logits_to_keep=1).logits[:, -1]
    targets = torch.tensor([yes_id if label else no_id for label in LABELS], device=model.device)
    loss = torch.nn.functional.cross_entropy(logits.float(), targets)
    loss.backward()
    optimizer.step()
    model.eval()
    scores = p_yes(model, batch, crm_embeds, yes_id, no_id)
    print(f"one training step: loss {loss.item():.4f}; P(Yes) after:", [round(v, 4) for v in scores.tolist()])

    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or scratch
        model.save_pretrained(out)
        reloaded = PeftModel.from_pretrained(load_base_model(args.model), out)
        reloaded_scores = p_yes(reloaded, batch, crm_embeds, yes_id, no_id)
        print(f"saved to {out}; reloaded P(Yes):", [round(v, 4) for v in reloaded_scores.tolist()])
    if not torch.equal(scores, reloaded_scores):
        raise SystemExit("reloaded scores differ from the trained model's scores")
    print("OK: the reloaded adapter scores identically")


if __name__ == "__main__":
    main()
