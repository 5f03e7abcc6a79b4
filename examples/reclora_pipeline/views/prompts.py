"""Prompts (the paper's Figure 2) written from a ``TextRecord`` and the dataset's schema, and the Yes/No answer tokens.

A prompt describes the user (the spec's profile fields, when it has any; pure ID fields never appear), the short
history in chronological order with ratings, and asks about the target item (the spec's item noun: movie or book).
Two templates write that text:

- ``"figure-2"`` (default): the paper's wording, word for word.
- ``"compact"``: the same facts (profile, rated history oldest first, target) in about half the tokens, so that a
  CPU tunes on twice the samples in the same time.

and two styles wrap it for the model:

- ``"plain"`` (default): the prompt followed by ``"\\nAnswer:"``; the answer tokens are " Yes" / " No" (with the space
  the tokenizer merges into the word after a colon). Short, which matters on CPU.
- ``"chat"``: the tokenizer's chat template with a generation prompt; the answer tokens are "Yes" / "No".

The answer token ids are taken from the tokenizer and checked to be single tokens, never hard-coded.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional, Sequence


if TYPE_CHECKING:
    from ..config import PromptConfig
    from ..data.raw import DatasetSpec
    from .text import TextRecord

PROMPT_STYLES = ("plain", "chat")
PROMPT_TEMPLATES = ("figure-2", "compact")
# item noun -> (the verb of a past interaction, the plural)
ITEM_WORDS = {"movie": ("watched", "movies"), "book": ("read", "books")}


def _stars(rating: float) -> str:
    value = float(rating)
    text = f"{int(value)}" if value.is_integer() else f"{value:g}"
    return f"{text} star" if value == 1 else f"{text} stars"


def _gender(profile: dict) -> str:
    """'male', 'female', or '' when the profile does not say."""
    return {"m": "male", "male": "male", "f": "female", "female": "female"}.get(
        str(profile.get("gender", "")).strip().lower(), "")


def _pronouns(profile: dict) -> tuple[str, str]:
    return {"male": ("he", "his"), "female": ("she", "her")}.get(_gender(profile), ("the user", "the user's"))


def _occupation(profile: dict) -> str:
    """The profile's occupation, or '' when it says nothing ('none', 'other', 'unknown')."""
    occupation = profile.get("occupation")
    return str(occupation) if occupation and str(occupation).lower() not in ("none", "other", "unknown", "") else ""


def _profile_sentence(profile: dict) -> str:
    subject, possessive = _pronouns(profile)
    parts = []
    if _gender(profile):
        parts.append(f"The user is a {_gender(profile)}.")
    occupation = _occupation(profile)
    if occupation:
        parts.append(f"{possessive.capitalize()} job is {occupation}.")
    age = profile.get("age")
    if age not in (None, ""):
        parts.append(f"{possessive.capitalize()} age is {age}.")
    return " ".join(parts)


def build_prompt(spec: "DatasetSpec", record: "TextRecord", template: str = "figure-2") -> str:
    """The prompt text of ``record`` in ``template`` (see ``PROMPT_TEMPLATES``): by default the Figure 2 prompt of the
    paper for a dataset of movies, or its book variant."""
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"prompt template must be one of {PROMPT_TEMPLATES}, got {template!r}")
    if spec.item_noun not in ITEM_WORDS:
        raise ValueError(f"No prompt template for {spec.name!r} items ({spec.item_noun!r}); known: "
                         f"{', '.join(ITEM_WORDS)}")
    if template == "compact":
        return _compact_prompt(spec, record)
    noun = spec.item_noun
    verb, plural = ITEM_WORDS[noun]
    profile_text = _profile_sentence(record.profile) if spec.profile_fields else ""
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


def _compact_profile(profile: dict) -> str:
    """'a male writer aged 35-45', 'an engineer', 'a user': the profile as one noun phrase."""
    words = [_gender(profile), _occupation(profile) or "user"]
    phrase = " ".join(word for word in words if word)
    age = profile.get("age")
    if age not in (None, ""):
        phrase += f" aged {age}"
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def _compact_prompt(spec: "DatasetSpec", record: "TextRecord") -> str:
    """Figure 2's facts without its connecting sentences: who, what they rated (oldest first), and the question."""
    noun = spec.item_noun
    verb = ITEM_WORDS[noun][0]
    who = _compact_profile(record.profile) if spec.profile_fields else "a user"
    subject = _pronouns(record.profile)[0] if spec.profile_fields else "the user"
    subject = subject if subject != "the user" else "they"
    lines = []
    if record.history:
        rated = "; ".join(f"{title}: {_stars(rating)}" for title, rating in record.history)
        lines.append(f"{who[0].upper()}{who[1:]} {verb} and rated, oldest first: {rated}.")
    else:
        lines.append(f"{who[0].upper()}{who[1:]}.")
    lines.append(f"Will {subject} like the {noun} {record.target_title}? Yes or no.")
    return "\n".join(lines)


class PromptFormatter:
    """Turns prompt texts into model inputs for one tokenizer and style, and knows the answer token ids."""

    def __init__(self, tokenizer, style: str = "plain", template: str = "figure-2"):
        if style not in PROMPT_STYLES:
            raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")
        if template not in PROMPT_TEMPLATES:
            raise ValueError(f"prompt template must be one of {PROMPT_TEMPLATES}, got {template!r}")
        if style == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt style 'chat' needs a tokenizer with a chat template")
        self.tokenizer = tokenizer
        self.style = style
        self.template = template
        words = (" Yes", " No") if style == "plain" else ("Yes", "No")
        self.yes_id, self.no_id = (self._single_token(word) for word in words)

    @classmethod
    def from_config(cls, tokenizer, prompt: "PromptConfig") -> "PromptFormatter":
        """The formatter of a run's ``prompt`` settings (tuning, scoring and serving read them the same way)."""
        return cls(tokenizer, prompt.style, prompt.template)

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

    def prompt(self, spec: "DatasetSpec", record: "TextRecord") -> str:
        """The model input of one record: its prompt text in this template, wrapped in this style."""
        return self.format(build_prompt(spec, record, self.template))

    def answer_id(self, label: int) -> int:
        return self.yes_id if int(label) == 1 else self.no_id

    def to_dict(self) -> dict:
        return {"style": self.style, "template": self.template, "yes_token_id": self.yes_id, "no_token_id": self.no_id,
                "yes_token": self.tokenizer.decode([self.yes_id]), "no_token": self.tokenizer.decode([self.no_id])}


def prompt_token_ids(spec: "DatasetSpec", records: Sequence["TextRecord"], formatter: PromptFormatter,
                     max_tokens: Optional[int] = None) -> list:
    """Token ids of the prompts of ``records``: the one recipe training, evaluation and serving use.

    With ``max_tokens``, a longer prompt loses history entries, oldest first, until it fits: the question and the
    answer cue always stay, since P(Yes) is read right after them. A prompt that does not fit even without its history
    is refused, naming the smallest ``prompt.max_tokens`` that holds every prompt."""
    def encode(chosen: Sequence["TextRecord"]) -> list:
        texts = [formatter.prompt(spec, record) for record in chosen]
        return formatter.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    token_ids = encode(records)
    if max_tokens is None:
        return token_ids
    for position, record in enumerate(records):
        kept = len(record.history)
        while len(token_ids[position]) > max_tokens and kept > 0:
            kept -= 1
            token_ids[position] = encode([_with_newest_history(record, kept)])[0]
        if len(token_ids[position]) > max_tokens:
            bare = encode([_with_newest_history(record, 0) for record in records])
            raise ValueError(f"prompt.max_tokens={max_tokens} cannot hold the prompt of sample {record.sample_id} "
                             f"even without its history ({len(token_ids[position])} tokens): the question and the "
                             f"answer cue must stay; set prompt.max_tokens to at least {max(map(len, bare))} "
                             "(or none)")
    return token_ids


def _with_newest_history(record: "TextRecord", count: int) -> "TextRecord":
    return dataclasses.replace(record, history=list(record.history[len(record.history) - count:]))
