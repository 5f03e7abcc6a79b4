"""P(Yes) scoring: softmax over the Yes/No logits at the answer position (paper, Eq. 16), batched, last position only.

Prompts (``views.prompt_token_ids``) are sorted by length so that each batch carries little padding, left-padded so
that the answer position is the last column, and run with ``logits_to_keep=1`` (the LM head is a large share of a
small model's cost). Scores come back in the input order. The Yes/No token ids travel as one :class:`AnswerTokens`,
which also owns the order of the two logits that scoring and the ``yes_no`` training loss read.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm


if TYPE_CHECKING:
    from .views import PromptFormatter


@dataclass(frozen=True)
class AnswerTokens:
    """The token ids of the prompt's two answers, as the tokenizer of the base LLM spells them in the prompt style."""

    yes: int
    no: int

    @classmethod
    def from_formatter(cls, formatter: "PromptFormatter") -> "AnswerTokens":
        """The answers of a prompt formatter (its tokenizer and prompt style decide the ids)."""
        return cls(yes=int(formatter.yes_id), no=int(formatter.no_id))

    def pair_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(n, 2) logits of No then Yes out of (n, vocab): softmax column 1 is P(Yes), class 1 is Yes."""
        return logits[:, [self.no, self.yes]]

    def yes_labels(self, answer_ids: torch.Tensor) -> torch.Tensor:
        """1 where ``answer_ids`` is Yes, 0 where No; an id that is neither raises an error."""
        if not bool(((answer_ids == self.yes) | (answer_ids == self.no)).all()):
            raise ValueError(f"the yes_no loss needs answer ids {self.yes} (Yes) or {self.no} (No)")
        return (answer_ids == self.yes).long()


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:
            ids[row, width - len(sequence):] = torch.tensor(sequence, dtype=torch.long)
            mask[row, width - len(sequence):] = 1
    return ids, mask


@torch.no_grad()
def score_yes_probability(
    model,
    token_ids: Sequence[Sequence[int]],
    answers: AnswerTokens,
    pad_id: int,
    crm_embeds: Optional[torch.Tensor] = None,
    batch_size: int = 8,
    desc: str = "scoring",
    progress: bool = True,
) -> np.ndarray:
    """P(Yes | prompt) for each tokenized prompt. ``crm_embeds`` (n, crm_dim) goes with the prompts row by row."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if crm_embeds is not None and len(crm_embeds) != len(token_ids):
        raise ValueError(f"crm_embeds has {len(crm_embeds)} rows for {len(token_ids)} prompts")
    was_training = model.training
    model.eval()
    device = next(p for p in model.parameters()).device
    order = np.argsort([len(ids) for ids in token_ids], kind="stable")
    scores = np.empty(len(token_ids), dtype=np.float64)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
            rows = order[start : start + batch_size]
            ids, mask = left_pad([token_ids[i] for i in rows], pad_id)
            kwargs = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "logits_to_keep": 1}
            if crm_embeds is not None:
                kwargs["crm_embeds"] = crm_embeds[torch.as_tensor(rows)].to(device)
            pair = answers.pair_logits(model(**kwargs).logits[:, -1]).float()
            scores[rows] = torch.softmax(pair, dim=-1)[:, 1].cpu().numpy()
    finally:
        model.train(was_training)
    return scores
