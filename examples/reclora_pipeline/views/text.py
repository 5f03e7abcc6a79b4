"""The LLM's view of a sample: ``TextRecord`` (what a prompt is written from), built from a ``SampleView``, and the
item descriptions the retriever encodes.

Pure ID fields (user id, item id, zip code, ISBN, author id) never reach text: the LLM cannot read them (paper,
Appendix C), and they would only add tokens. Unknown values ("unknown", "") are left out instead of written out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import numpy as np

from .samples import SampleView


if TYPE_CHECKING:
    from ..data.dataset import RecDataset

UNKNOWN_VALUES = ("", "unknown")
GENDER_WORDS = {"M": "male", "F": "female"}


@dataclass
class TextRecord:
    """The text view of one sample, bound to its ``sample_id``: what ``build_prompt`` writes a prompt from.

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
    profile: dict = field(default_factory=dict)
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


def item_texts(dataset: "RecDataset") -> list:
    """One description per row of ``dataset.items`` (what the retriever encodes); no pure ID field appears in it."""
    spec = dataset.spec
    records = dataset.items[["title", *spec.item_text_fields]].to_dict("records")
    return [item_description(spec.item_noun, record["title"], attributes_of(record, spec.item_text_fields))
            for record in records]


def text_records(view: SampleView) -> list:
    """One ``TextRecord`` per sample of ``view``: its target's title and attributes, its user's profile and its short
    history (titles and ratings, oldest first)."""
    spec = view.spec
    titles = view.items["title"].to_numpy(dtype=object)
    profiles = {}
    for user in np.unique(view.user):
        profiles[int(user)] = profile_of(view.users.iloc[int(user)].to_dict(), spec.profile_fields)
    attributes = {}
    for item in np.unique(view.item):
        attributes[int(item)] = attributes_of(view.items.iloc[int(item)].to_dict(), spec.item_text_fields)
    records = []
    for position in range(len(view)):
        items, ratings = view.short_items[position], view.short_ratings[position]
        filled = items >= 0
        label = None if view.label is None else int(view.label[position])
        records.append(TextRecord(
            sample_id=int(view.sample_id[position]),
            target_title=titles[view.item[position]],
            history=[(titles[item], readable_rating(rating)) for item, rating in zip(items[filled], ratings[filled])],
            profile=dict(profiles[int(view.user[position])]),
            label=label,
            target_attributes=dict(attributes[int(view.item[position])]),
        ))
    return records
