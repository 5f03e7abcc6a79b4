"""Synthetic ``CTRFeatures`` with a learnable signal, for tests and CPU benchmarks of the CRMs.

Items belong to genres and users have a taste per genre; a user likes an item with probability sigmoid(affinity),
affinity = signal * taste . item + user bias + item bias. Each sample's history
lists items the user rated, with ratings that follow the same affinity, so the signal is reachable three ways: the
user and item ids, the item attribute (a genre derived from the item's latent vector) and the rated history.
"""

from __future__ import annotations

import numpy as np

from reclora_pipeline.data.features import CTRFeatures


def make_synthetic_splits(
    sizes: dict[str, int],
    *,
    num_users: int = 200,
    num_items: int = 300,
    num_genres: int = 8,
    history_length: int = 20,
    extra_fields: int = 0,
    signal: float = 1.5,
    empty_history_fraction: float = 0.02,
    seed: int = 0,
) -> dict[str, CTRFeatures]:
    """Splits (e.g. ``{"train": 6000, "valid": 2000, "test": 2000}``) drawn from one synthetic world.

    Fields: user id, user gender, target item id, item genre, then ``extra_fields`` uninformative attributes
    (8 values each). Sample ids are unique across splits. Histories are right-padded with token 0.
    """
    rng = np.random.default_rng(seed)
    genres = rng.integers(0, num_genres, size=num_items)
    # An item's latent vector is mostly its genre, so a user's taste shows in how they rate each genre.
    items = np.eye(num_genres)[genres] + rng.normal(scale=0.3, size=(num_items, num_genres))
    users = rng.normal(size=(num_users, num_genres))
    user_bias = rng.normal(scale=0.8, size=num_users)
    item_bias = rng.normal(scale=0.8, size=num_items)
    genders = rng.integers(0, 2, size=num_users)

    offsets = {}
    cursor = 1  # token 0 is padding
    for name, count in [("user", num_users), ("gender", 2), ("item", num_items), ("genre", num_genres)]:
        offsets[name] = cursor
        cursor += count
    extra_names = [f"attribute_{index}" for index in range(extra_fields)]
    for name in extra_names:
        offsets[name] = cursor
        cursor += 8
    offsets["rating"] = cursor
    vocab_size = cursor + 5
    field_names = ["user_id", "gender", "item_id", "genre", *extra_names]

    def affinity(user_index, item_index):
        dot = np.einsum("...d,...d->...", users[user_index], items[item_index])
        return signal * dot + user_bias[user_index] + item_bias[item_index]

    splits = {}
    next_id = 0
    for split, n in sizes.items():
        user = rng.integers(0, num_users, size=n)
        target = rng.integers(0, num_items, size=n)
        labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-affinity(user, target)))).astype(np.float32)
        columns = [
            offsets["user"] + user,
            offsets["gender"] + genders[user],
            offsets["item"] + target,
            offsets["genre"] + genres[target],
        ]
        columns += [offsets[name] + rng.integers(0, 8, size=n) for name in extra_names]
        fields = np.stack(columns, axis=1).astype(np.int64)

        history = rng.integers(0, num_items, size=(n, history_length))
        scores = affinity(user[:, None], history) + rng.normal(scale=0.5, size=history.shape)
        ratings = np.clip(np.round(3.0 + 1.2 * scores), 1, 5).astype(np.int64)
        lengths = rng.integers(history_length // 2, history_length + 1, size=n)
        lengths[rng.random(n) < empty_history_fraction] = 0
        mask = np.arange(history_length)[None, :] < lengths[:, None]
        splits[split] = CTRFeatures(
            sample_id=np.arange(next_id, next_id + n, dtype=np.int64),
            fields=fields,
            field_names=list(field_names),
            item_field=2,
            hist_items=np.where(mask, offsets["item"] + history, 0).astype(np.int64),
            hist_ratings=np.where(mask, offsets["rating"] + ratings - 1, 0).astype(np.int64),
            hist_mask=mask,
            labels=labels,
            vocab_size=vocab_size,
            metadata={"synthetic": True, "seed": seed},
        )
        next_id += n
    return splits
