"""Requests to a recommender, turned into the ``SampleView`` training and evaluation build their features from.

A request is a (user, target item, history) triple, the history oldest first as ``(item_id, rating)`` pairs. Its
histories for the CRM and the prompt are chosen from its own history exactly as the retriever chooses a dataset
sample's from its earlier interactions (semantic: the K most similar by the stored item vectors; recent: the last K),
so a request made of a run's test sample gives that sample's view.

What the catalog does not know takes one documented path:

- a user outside the catalog is a cold-start user: it needs a ``profile`` with the user fields the prompt and the CRM
  read (``gender``, ``age``, ``occupation`` for MovieLens); its user id and any pure ID field it lacks (or whose value
  the vocabulary does not hold, e.g. a new zip code) enter the CRM as the padding token;
- a catalog user's ``profile`` fields replace the catalog's;
- an item outside the catalog (target or history) has no title, attributes, id embedding or vector, so it is refused
  (``KeyError`` naming the request and the position), as is a rating outside the CRM's vocabulary (``ValueError``).
"""

from __future__ import annotations

import collections.abc
import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from ..data.history import history_ends
from ..data.raw import DatasetSpec
from ..retriever import recent_k, semantic_top_k
from ..views import FieldVocabulary, SampleView


@dataclass
class Request:
    """One (user, item) pair to score.

    Attributes:
        user_id, item_id: catalog ids (compared as strings).
        history: the user's earlier interactions, oldest first, as ``(item_id, rating)`` pairs.
        profile: user fields (the columns of ``catalog/users.csv``, e.g. gender, age, occupation, zip_code) for a
            user who is not in the catalog; for a catalog user, the fields given replace the catalog's.
    """

    user_id: str
    item_id: str
    history: Sequence = ()
    profile: Optional[dict] = None


class Catalog:
    """The users, items, vocabulary and item vectors a recommender scores against."""

    def __init__(self, spec: DatasetSpec, users: pd.DataFrame, items: pd.DataFrame, vocabulary: FieldVocabulary,
                 item_vectors: Optional[np.ndarray] = None):
        self.spec, self.vocabulary, self.item_vectors = spec, vocabulary, item_vectors
        self.users = users.reset_index(drop=True)
        self.items = items.reset_index(drop=True)
        self._item_position = {item: position for position, item in enumerate(self.items["item_id"])}
        self._user_position = {user: position for position, user in enumerate(self.users["user_id"])}
        self._known = {name: set(vocabulary.values[name]) for name in vocabulary.field_names}

    def view(self, requests: Sequence[Union[dict, Request]], *, long_mode: str, short_mode: str, k_long: int,
             k_short: int, device=None) -> SampleView:
        """The requests as a ``SampleView`` (request ``i`` is sample ``i``, with its own row of the user table): the
        CRM's history is the long list of a ``long_mode`` retrieval with (``k_long``, ``k_short``), the prompt's the
        short list of a ``short_mode`` one, as in a run."""
        if isinstance(requests, (dict, Request)):
            raise ValueError("score takes a list of requests; wrap a single request in a list")
        requests = [_as_request(raw, index) for index, raw in enumerate(requests)]
        if not requests:
            raise ValueError("no requests to score")
        user_rows, padded, items, ratings, lengths, targets = [], [], [], [], [], []
        for index, request in enumerate(requests):
            row, padding = self._user_row(request, index)
            user_rows.append(row)
            padded.append(padding)
            for position, entry in enumerate(request.history):
                item, value = _history_entry(entry, index, position)
                items.append(self._item(item, index, f"history[{position}] item_id"))
                ratings.append(self._rating(value, index, position))
            targets.append(self._item(request.item_id, index, "item_id"))
            items.append(targets[-1])
            ratings.append(0.0)  # the target's rating is what is predicted; nothing reads it
            lengths.append(len(request.history) + 1)
        item_index = np.asarray(items, dtype=np.int64)
        rating = np.asarray(ratings, dtype=np.float32)
        user_of_row = np.repeat(np.arange(len(requests)), lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        target_rows = offsets[1:] - 1
        # Each request is one user whose rows are its history, then the target one second later.
        history_end = history_ends(user_of_row, (np.arange(len(item_index)) == np.repeat(target_rows, lengths))
                                   .astype(np.int64))
        chosen = {mode: self._retrieve(mode, k_long, k_short, item_index, offsets, history_end, target_rows, device)
                  for mode in {long_mode, short_mode}}
        long_rows, short_rows = chosen[long_mode][0], chosen[short_mode][1]
        long_items, long_ratings = _gather(item_index, rating, long_rows)
        short_items, short_ratings = _gather(item_index, rating, short_rows)
        users = pd.DataFrame(user_rows, columns=self.users.columns)
        return SampleView(spec=self.spec, users=users, items=self.items, sample_id=np.arange(len(requests)),
                          user=np.arange(len(requests)), item=np.asarray(targets, dtype=np.int64),
                          long_items=long_items, long_ratings=long_ratings, short_items=short_items,
                          short_ratings=short_ratings, label=None,
                          padded_user_fields=np.asarray(padded, dtype=bool).reshape(len(requests), -1),
                          metadata={"dataset": self.spec.name, "split": "requests", "history": long_mode,
                                    "k_long": k_long})

    def _retrieve(self, mode, k_long, k_short, item_index, offsets, history_end, rows, device):
        """(long rows, short rows) of the target rows: the retrieval stage's own functions on the request table."""
        if mode == "recent":
            return recent_k(offsets, history_end, rows, k_long, k_short)
        if self.item_vectors is None:
            raise ValueError("item vectors: a history is semantic, but the recommender has no item vectors")
        return semantic_top_k(self.item_vectors, item_index=item_index, user_offsets=offsets, history_end=history_end,
                              rows=rows, k_long=k_long, k_short=k_short, device=device, progress=False)

    def _user_row(self, request: Request, index: int) -> tuple[dict, list]:
        spec = self.spec
        user_id = str(request.user_id)
        position = self._user_position.get(user_id)
        profile = {str(key): "" if value is None else str(value) for key, value in (request.profile or {}).items()}
        unknown_columns = sorted(set(profile) - set(self.users.columns))
        if unknown_columns:
            raise ValueError(f"request {index}: profile fields {unknown_columns} are not user fields "
                             f"{list(self.users.columns)}")
        padding = [False] * len(spec.user_fields)
        if position is None:
            required = [name for name in spec.user_fields[1:] if name not in spec.id_fields]
            if request.profile is None:
                raise KeyError(f"request {index}: user_id {user_id!r} is not in the catalog; pass a 'profile' with "
                               f"the user fields {required}")
            missing = [name for name in required if name not in profile]
            if missing:
                raise ValueError(f"request {index}: profile of new user {user_id!r} lacks {missing}")
            row = {**{column: "" for column in self.users.columns}, **profile, "user_id": user_id}
            for column, name in enumerate(spec.user_fields):
                if name in spec.id_fields and (name == "user_id" or row[name] not in self._known[name]):
                    padding[column] = True  # the cold-start path: the CRM reads the padding token here
        else:
            row = {**self.users.iloc[position].to_dict(), **profile, "user_id": user_id}
        for column, name in enumerate(spec.user_fields):
            if not padding[column] and row[name] not in self._known[name]:
                raise KeyError(f"request {index}: profile field {name!r} value {row[name]!r} is not in the "
                               f"vocabulary (known: {self.vocabulary.values[name][:10]}...)")
        return row, padding

    def _item(self, item, index: int, where: str) -> int:
        position = self._item_position.get(str(item))
        if position is None:
            raise KeyError(f"request {index}: {where} {str(item)!r} is not in the catalog ({len(self.items)} items)")
        return position

    def _rating(self, value, index: int, position: int) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"request {index}: history[{position}] rating {value!r} is not a number") from None
        if number not in self.vocabulary.rating_values:
            raise ValueError(f"request {index}: history[{position}] rating {value!r} is not one of the ratings the "
                             f"CRM knows {self.vocabulary.rating_values}")
        return number


def _gather(item_index: np.ndarray, rating: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.asarray(rows, dtype=np.int64)
    filled = rows >= 0
    safe = np.where(filled, rows, 0)
    return np.where(filled, item_index[safe], -1), np.where(filled, rating[safe], 0.0).astype(np.float32)


def _as_request(raw, index: int) -> Request:
    if isinstance(raw, Request):
        request = raw
    elif isinstance(raw, dict):
        missing = [name for name in ("user_id", "item_id") if name not in raw]
        if missing:
            raise ValueError(f"request {index}: {missing[0]!r} is missing")
        unknown = sorted(set(raw) - {"user_id", "item_id", "history", "profile"})
        if unknown:
            raise ValueError(f"request {index}: unknown fields {unknown} "
                             "(expected user_id, item_id, history, profile)")
        request = Request(raw["user_id"], raw["item_id"], raw.get("history") or (), raw.get("profile"))
    else:
        raise ValueError(f"request {index}: expected a dict or a Request, got {type(raw).__name__}")
    for name in ("user_id", "item_id"):
        value = getattr(request, name)
        if isinstance(value, bool) or not isinstance(value, (str, int, np.integer)):
            raise ValueError(f"request {index}: {name} must be a string (or an integer id), got "
                             f"{type(value).__name__} {value!r}")
    if request.profile is not None and not isinstance(request.profile, dict):
        raise ValueError(f"request {index}: profile must be a dict of user fields, got "
                         f"{type(request.profile).__name__}")
    history = request.history
    if history is None:  # as a dict without 'history': no earlier interactions
        return dataclasses.replace(request, history=())
    if isinstance(history, (str, bytes, dict)) or not isinstance(history, (collections.abc.Sequence, np.ndarray)):
        raise ValueError(f"request {index}: history must be a list of (item_id, rating) pairs, got "
                         f"{type(history).__name__}")
    return request


def _history_entry(entry, index: int, position: int) -> tuple:
    if isinstance(entry, dict) and {"item_id", "rating"} <= set(entry):
        return entry["item_id"], entry["rating"]
    if isinstance(entry, (str, bytes)) or not hasattr(entry, "__len__") or len(entry) != 2:
        raise ValueError(f"request {index}: history[{position}] must be an (item_id, rating) pair, got {entry!r}")
    return entry[0], entry[1]
