"""The text view of a sample (what prompts are written from) and the item descriptions the retriever encodes.

Pure ID fields (user id, item id, zip code, ISBN, author id) never reach text: the LLM cannot read them (paper,
Appendix C), and they would only add tokens. Unknown values ("unknown", "") are left out instead of written out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

UNKNOWN_VALUES = ("", "unknown")
GENDER_WORDS = {"M": "male", "F": "female"}


@dataclass
class TextRecord:
    """The text view of one sample, bound to its ``sample_id``.

    The first five attributes have the names of ``reclora_pipeline.prompts.PromptRecord``, so a ``TextRecord`` can be
    passed to ``build_prompt`` as it is.

    Attributes:
        sample_id: the sample key.
        target_title: the display title of the target item, e.g. "Toy Story (1995)".
        history: the short history, oldest first, as ``(title, rating)`` pairs.
        profile: user profile fields with readable values (e.g. gender "male", age "25-34", occupation "writer").
        label: 1 if the user liked the target item, else 0.
        target_attributes: other text fields of the target item (movies: ``genres`` as a list; books: ``author``,
            ``year``, ``publisher``).
    """

    sample_id: int
    target_title: str
    history: list
    profile: dict
    label: Optional[int] = None
    target_attributes: dict = field(default_factory=dict)


def is_known(value) -> bool:
    return str(value).strip().lower() not in UNKNOWN_VALUES


def readable_rating(value: float):
    value = float(value)
    return int(value) if value.is_integer() else value


def profile_of(user_row: dict, fields: tuple) -> dict:
    profile = {}
    for name in fields:
        value = user_row.get(name, "")
        if not is_known(value):
            continue
        profile[name] = GENDER_WORDS.get(value, value) if name == "gender" else value
    return profile


def attributes_of(item_row: dict, fields: tuple) -> dict:
    attributes = {}
    for name in fields:
        value = item_row.get(name, "")
        if name == "genres":
            genres = [genre for genre in str(value).split("|") if is_known(genre)]
            if genres:
                attributes[name] = genres
        elif is_known(value):
            attributes[name] = value
    return attributes


def item_description(noun: str, title: str, attributes: dict) -> str:
    """One sentence group per item, as ReLLa encodes items ("Here is a movie. Its title is ...")."""
    parts = [f"Here is a {noun}."]
    parts.append(f"Its title is {title}." if is_known(title) else "Its title is unknown.")
    genres = attributes.get("genres")
    if genres:
        parts.append(f"The {noun}'s genre is {', '.join(genres)}.")
    if "author" in attributes:
        parts.append(f"Its author is {attributes['author']}.")
    if "year" in attributes and "publisher" in attributes:
        parts.append(f"It was published in {attributes['year']} by {attributes['publisher']}.")
    elif "year" in attributes:
        parts.append(f"It was published in {attributes['year']}.")
    elif "publisher" in attributes:
        parts.append(f"It was published by {attributes['publisher']}.")
    return " ".join(parts)
