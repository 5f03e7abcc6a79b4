"""Prompt templates (the paper's Figure 2, per dataset) and the Yes/No answer tokens.

A prompt describes the user (profile fields where the dataset has them; pure ID fields never appear), the short
history in chronological order with ratings, and asks about the target item. Two prompt styles:

- ``"plain"`` (default): the prompt followed by ``"\\nAnswer:"``; the answer tokens are " Yes" / " No" (with the space
  the tokenizer merges into the word after a colon). Short, which matters on CPU.
- ``"chat"``: the tokenizer's chat template with a generation prompt; the answer tokens are "Yes" / "No".

The answer token ids are taken from the tokenizer and checked to be single tokens, never hard-coded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

PROMPT_STYLES = ("plain", "chat")

MOVIE_DATASETS = ("ml-100k", "ml-1m", "ml-25m")
BOOK_DATASETS = ("goodreads",)


@dataclass
class PromptRecord:
    """The text view of one sample, bound to its ``sample_id``."""

    sample_id: int
    target_title: str
    history: Sequence[tuple[str, float]]  # (title, rating), oldest first
    profile: dict = field(default_factory=dict)  # e.g. gender, age, occupation (no pure ID fields)
    label: Optional[int] = None


def _stars(rating: float) -> str:
    value = float(rating)
    text = f"{int(value)}" if value.is_integer() else f"{value:g}"
    return f"{text} star" if value == 1 else f"{text} stars"


def _pronouns(profile: dict) -> tuple[str, str]:
    gender = str(profile.get("gender", "")).strip().lower()
    if gender in ("m", "male"):
        return "he", "his"
    if gender in ("f", "female"):
        return "she", "her"
    return "the user", "the user's"


def _profile_sentence(profile: dict) -> str:
    subject, possessive = _pronouns(profile)
    parts = []
    gender = str(profile.get("gender", "")).strip().lower()
    if gender in ("m", "male", "f", "female"):
        parts.append(f"The user is a {'male' if gender in ('m', 'male') else 'female'}.")
    occupation = profile.get("occupation")
    if occupation and str(occupation).lower() not in ("none", "other", "unknown", ""):
        parts.append(f"{possessive.capitalize()} job is {occupation}.")
    age = profile.get("age")
    if age not in (None, ""):
        parts.append(f"{possessive.capitalize()} age is {age}.")
    return " ".join(parts)


def build_prompt(dataset: str, record: PromptRecord) -> str:
    """The Figure 2 prompt of the paper for ``dataset`` (movie datasets), or its book variant (GoodReads)."""
    if dataset in BOOK_DATASETS:
        noun, verb, plural = "book", "read", "books"
    elif dataset in MOVIE_DATASETS:
        noun, verb, plural = "movie", "watched", "movies"
    else:
        raise ValueError(f"No prompt template for dataset {dataset!r}; known: {MOVIE_DATASETS + BOOK_DATASETS}")
    profile_text = _profile_sentence(record.profile) if dataset in ("ml-100k", "ml-1m") else ""
    subject, _ = _pronouns(record.profile) if profile_text else ("the user", "the user's")
    history = [f"{i}. {title} ({_stars(rating)})" for i, (title, rating) in enumerate(record.history)]
    lines = []
    if profile_text:
        lines.append(profile_text)
    if history:
        lines.append(f"{subject.capitalize()} {verb} the following {plural} in order in the past, and rated them:")
        lines.append(repr(history))
        lines.append(
            f"Based on the {plural} {subject} has {verb}, deduce if {subject} will like the {noun} "
            f"***{record.target_title}***."
        )
    else:
        lines.append(f"Deduce if {subject} will like the {noun} ***{record.target_title}***.")
    lines.append(f"Note that more stars the user rated the {noun}, the user like the {noun} more.")
    lines.append("You should ONLY tell me yes or no.")
    return "\n".join(lines)


class PromptFormatter:
    """Turns prompt texts into model inputs for one tokenizer and style, and knows the answer token ids."""

    def __init__(self, tokenizer, style: str = "plain"):
        if style not in PROMPT_STYLES:
            raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")
        if style == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt style 'chat' needs a tokenizer with a chat template")
        self.tokenizer = tokenizer
        self.style = style
        words = (" Yes", " No") if style == "plain" else ("Yes", "No")
        self.yes_id, self.no_id = (self._single_token(word) for word in words)

    def _single_token(self, word: str) -> int:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"The answer {word!r} is {len(ids)} tokens for this tokenizer ({ids}); it must be one")
        return ids[0]

    def format(self, prompt: str) -> str:
        if self.style == "plain":
            return prompt + "\nAnswer:"
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    def answer_id(self, label: int) -> int:
        return self.yes_id if int(label) == 1 else self.no_id

    def to_dict(self) -> dict:
        return {"style": self.style, "yes_token_id": self.yes_id, "no_token_id": self.no_id,
                "yes_token": self.tokenizer.decode([self.yes_id]), "no_token": self.tokenizer.decode([self.no_id])}
