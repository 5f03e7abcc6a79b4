"""The Long-Short Modality Retriever: exact top-k against a brute-force oracle, item encodings, cache, results."""

import numpy as np
import pytest
import torch

from reclora_pipeline.config import RetrievalConfig
from reclora_pipeline.data import load_dataset
from reclora_pipeline.data.history import history_ends
from reclora_pipeline.retriever import (
    RetrievalResult,
    encode_items,
    encode_texts,
    reduce_and_normalize,
    retrieve,
    semantic_top_k,
)
from reclora_pipeline.views import build_ctr_features
from reclora_pipeline.views.text import item_description

from support.synthetic_data import make_world, write_ml1m
from support.text_views import text_record_of
from support.tiny_models import make_tiny_llama


def unit(rng, n, d):
    vectors = rng.normal(size=(n, d))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def oracle(vectors, item, user_offsets, history_end, user, rows, k):
    """Per sample: sort the earlier items by cosine (a loop, float64) and keep the k best, oldest first."""
    out = []
    for row in rows:
        earlier = np.arange(user_offsets[user[row]], history_end[row])
        scores = vectors[item[earlier]] @ vectors[item[row]]
        out.append(sorted(earlier[np.argsort(-scores, kind="stable")[:k]].tolist()))
    return out


@pytest.fixture(scope="module")
def sequences():
    rng = np.random.default_rng(0)
    n_users, n_items = 25, 300
    lengths = rng.integers(1, 150, n_users)
    lengths[0] = 260  # one long user, to exercise the row-sliced path
    user = np.repeat(np.arange(n_users), lengths)
    timestamps = np.concatenate([np.sort(rng.integers(0, 60, size=n)) for n in lengths])  # many equal timestamps
    item = np.concatenate([rng.choice(n_items, size=n, replace=False) for n in lengths])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return dict(user=user, item=item, offsets=offsets, history_end=history_ends(user, timestamps),
                vectors=unit(rng, n_items, 12), rows=rng.choice(len(user), size=700, replace=False))


@pytest.mark.parametrize("block_elements", [1 << 24, 3000, 1])
def test_semantic_top_k_matches_the_brute_force_oracle(sequences, block_elements):
    s = sequences
    long, short = semantic_top_k(
        s["vectors"], item_index=s["item"], user_offsets=s["offsets"], history_end=s["history_end"], rows=s["rows"],
        k_long=15, k_short=4, block_elements=block_elements, progress=False,
    )
    assert long.shape == (700, 15) and short.shape == (700, 4)
    expected_long = oracle(s["vectors"], s["item"], s["offsets"], s["history_end"], s["user"], s["rows"], 15)
    expected_short = oracle(s["vectors"], s["item"], s["offsets"], s["history_end"], s["user"], s["rows"], 4)
    assert [row[row >= 0].tolist() for row in long] == expected_long
    assert [row[row >= 0].tolist() for row in short] == expected_short
    # Padding only at the end, and only where the history is shorter than K.
    lengths = s["history_end"][s["rows"]] - s["offsets"][s["user"][s["rows"]]]
    assert np.array_equal((long >= 0).sum(axis=1), np.minimum(lengths, 15))
    assert all((row[(row >= 0).sum():] == -1).all() for row in long)


def test_equal_timestamps_are_not_history(sequences):
    s = sequences
    long, _ = semantic_top_k(s["vectors"], item_index=s["item"], user_offsets=s["offsets"],
                             history_end=s["history_end"], rows=s["rows"], k_long=500, k_short=3, progress=False)
    for row, chosen in zip(s["rows"], long):
        chosen = chosen[chosen >= 0]
        assert (chosen < s["history_end"][row]).all()
        assert len(chosen) == s["history_end"][row] - s["offsets"][s["user"][row]]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = write_ml1m(make_world(num_users=30, num_items=40, ratings_per_user=(10, 35), seed=21),
                        tmp_path_factory.mktemp("ml1m"))
    return load_dataset("ml-1m", folder, core=3, min_history=1)


def test_recent_mode_is_the_last_k(dataset):
    result = retrieve(dataset, RetrievalConfig(mode="recent", k_long=6, k_short=2), progress=False)
    ids = dataset.sample_ids()
    for sample_id in ids[::37]:
        assert result.long_item_ids(dataset, sample_id) == list(dataset.history([sample_id], max_len=6).item_id)
        assert result.short_item_ids(dataset, sample_id) == list(dataset.history([sample_id], max_len=2).item_id)


def test_results_are_keyed_by_sample_id_and_bound_to_their_dataset(tmp_path, dataset):
    rng = np.random.default_rng(1)
    vectors, _ = reduce_and_normalize(rng.normal(size=(len(dataset.items), 24)), dim=16)
    subset = dataset.sample_ids("test")
    result = retrieve(dataset, RetrievalConfig(k_long=5, k_short=2), vectors=vectors, sample_ids=subset[::-1],
                      progress=False)
    assert np.array_equal(result.sample_id, subset)
    loaded = RetrievalResult.load(result.save(tmp_path / "semantic"), dataset)
    shuffled = rng.permutation(subset)
    assert np.array_equal(loaded.long_rows(shuffled, dataset), result.long[np.searchsorted(subset, shuffled)])
    with pytest.raises(KeyError, match=f"sample_id {int(dataset.sample_ids('train')[0])} has no retrieval result"):
        loaded.short_rows(dataset.sample_ids("train")[:1])
    # The text view and the CRM features read the lists by key.
    sample_id = int(subset[3])
    record = text_record_of(dataset, sample_id, retrieval=loaded)
    titles = dataset.items.set_index("item_id")["title"]
    assert [title for title, _ in record.history] == [titles[i] for i in loaded.short_item_ids(dataset, sample_id)]
    features = build_ctr_features(dataset, loaded, "test")
    assert features.history_length == 5 and features.metadata["history"] == "semantic"
    row = int(np.flatnonzero(features.sample_id == sample_id)[0])
    item_tokens = features.hist_items[row][features.hist_mask[row]]
    target_tokens = build_ctr_features(dataset, None, None, history_length=0).fields[:, features.item_field]
    id_of_token = dict(zip(target_tokens, dataset.samples["item_id"]))
    assert [id_of_token[t] for t in item_tokens] == loaded.long_item_ids(dataset, sample_id)
    with pytest.raises(KeyError):
        build_ctr_features(dataset, loaded, "train")
    other = load_dataset("ml-1m", dataset.source, core=3, min_history=2)
    with pytest.raises(ValueError, match="computed on another dataset"):
        RetrievalResult.load(tmp_path / "semantic", other)


def test_pca_and_normalisation():
    rng = np.random.default_rng(2)
    common = 50.0 * rng.normal(size=32)
    vectors = common + rng.normal(size=(20, 32))  # a large shared direction, as LLM hidden states have
    reduced, info = reduce_and_normalize(vectors, dim=512)
    assert reduced.shape == (20, 19) and info["pca_dim"] == 19
    assert np.allclose(np.linalg.norm(reduced, axis=1), 1.0, atol=1e-5)
    raw_cosine = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)) @ (vectors[0] / np.linalg.norm(vectors[0]))
    assert raw_cosine[1:].min() > 0.99  # uncentred, every item looks like every other
    assert (reduced @ reduced[0])[1:].max() < 0.9
    big, info = reduce_and_normalize(rng.normal(size=(600, 576)), dim=512)
    assert big.shape == (600, 512) and info["explained_variance"] < 1.0


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from reclora_pipeline.llm import load_tokenizer

    return load_tokenizer(str(smollm2_dir))


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    return make_tiny_llama(seed=3, vocab_size=len(tokenizer))


TEXTS = [item_description("movie", title, {"genres": genres}) for title, genres in [
    ("Toy Story (1995)", ["Animation", "Comedy"]), ("Heat (1995)", ["Action", "Crime", "Thriller"]),
    ("Fargo (1996)", ["Crime", "Drama", "Thriller"]), ("Emma (1996)", ["Comedy", "Drama", "Romance"]),
    ("Alien (1979)", ["Action", "Horror", "Sci-Fi", "Thriller"])]]


def test_encodings_do_not_depend_on_batching(tiny_model, tokenizer):
    for pooling in ("mean", "last"):
        batched = encode_texts(TEXTS, tiny_model, tokenizer, pooling=pooling, batch_size=3, progress=False)
        single = np.concatenate([encode_texts([t], tiny_model, tokenizer, pooling=pooling, progress=False)
                                 for t in TEXTS])
        assert batched.shape == (5, 32) and batched.dtype == np.float32
        np.testing.assert_allclose(batched, single, atol=1e-5)
    # "last" is the final-norm state of the last token, "mean" the average over the tokens.
    ids = torch.tensor([tokenizer(TEXTS[1])["input_ids"]])
    with torch.no_grad():
        states = tiny_model.model(input_ids=ids).last_hidden_state[0]
    last = encode_texts(TEXTS[1:2], tiny_model, tokenizer, pooling="last", progress=False)[0]
    mean = encode_texts(TEXTS[1:2], tiny_model, tokenizer, pooling="mean", progress=False)[0]
    np.testing.assert_allclose(last, states[-1].numpy(), atol=1e-5)
    np.testing.assert_allclose(mean, states.mean(dim=0).numpy(), atol=1e-5)
    assert not np.allclose(last, mean, atol=1e-3)


def test_item_encodings_are_cached_under_model_dataset_pooling_and_text(tmp_path, dataset, tiny_model, tokenizer):
    calls = []
    handle = tiny_model.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        config = RetrievalConfig(cache_dir=str(tmp_path), batch_size=16)
        first = encode_items(dataset, config, model=tiny_model, tokenizer=tokenizer, progress=False)
        forward_calls = len(calls)
        assert first.metadata["cache"] == "miss" and forward_calls == -(-len(dataset.items) // 16)
        again = encode_items(dataset, config, model=tiny_model, tokenizer=tokenizer, progress=False)
        assert again.metadata["cache"] == "hit" and len(calls) == forward_calls
        np.testing.assert_array_equal(first.vectors, again.vectors)
        last = encode_items(dataset, RetrievalConfig(cache_dir=str(tmp_path), pooling="last"),
                            model=tiny_model, tokenizer=tokenizer, progress=False)
        other_model = encode_items(dataset, config, model=make_tiny_llama(seed=4, vocab_size=len(tokenizer)),
                                   tokenizer=tokenizer, progress=False)
        assert len({first.key, last.key, other_model.key}) == 3 and last.metadata["cache"] == "miss"
        assert len(list(tmp_path.glob("*.npz"))) == 3
    finally:
        handle.remove()


def test_semantic_retrieval_end_to_end_with_a_tiny_model(tmp_path, dataset, tiny_model, tokenizer):
    config = RetrievalConfig(k_long=8, k_short=3, cache_dir=str(tmp_path))
    result = retrieve(dataset, config, model=tiny_model, tokenizer=tokenizer, progress=False)
    assert len(result) == len(dataset) and result.mode == "semantic"
    assert result.metadata["pca"]["pca_dim"] == min(512, len(dataset.items) - 1, 32)
    encodings = encode_items(dataset, config, model=tiny_model, tokenizer=tokenizer, progress=False)
    vectors, _ = reduce_and_normalize(encodings.vectors, 512)
    expected = retrieve(dataset, config, vectors=vectors, progress=False)
    np.testing.assert_array_equal(result.long, expected.long)
    start, end = dataset.history_bounds(result.sample_id)
    filled = result.long >= 0
    assert ((result.long >= start[:, None]) & (result.long < end[:, None]))[filled].all()
    assert np.array_equal(filled.sum(axis=1), np.minimum(end - start, 8))


@pytest.mark.slow
def test_real_smollm2_encodings(smollm2_dir, tokenizer):
    from reclora_pipeline.llm import load_base_model

    model = load_base_model(str(smollm2_dir))
    texts = [item_description("movie", title, {"genres": genres}) for title, genres in [
        ("Toy Story (1995)", ["Animation", "Children's", "Comedy"]), ("Schindler's List (1993)", ["Drama", "War"]),
        ("Toy Story 2 (1999)", ["Animation", "Children's", "Comedy"]),
        ("Alien (1979)", ["Action", "Horror", "Sci-Fi"]), ("Saving Private Ryan (1998)", ["Action", "Drama", "War"]),
        ("Heat (1995)", ["Action", "Crime", "Thriller"])]]
    batched = encode_texts(texts, model, tokenizer, batch_size=6, progress=False)
    single = np.concatenate([encode_texts([t], model, tokenizer, progress=False) for t in texts])
    assert batched.shape == (6, 576) and np.isfinite(batched).all()
    np.testing.assert_allclose(batched, single, atol=1e-3, rtol=1e-4)
    vectors, _ = reduce_and_normalize(batched)
    # One user who watched items 1..5 in order, then Toy Story (item 0): its most similar earlier item is Toy Story 2.
    item = np.array([1, 2, 3, 4, 5, 0])
    long, short = semantic_top_k(vectors, item_index=item, user_offsets=np.array([0, 6]),
                                 history_end=np.arange(6), rows=np.array([5]), k_long=2, k_short=1, progress=False)
    assert item[short[0][0]] == 2


DISTRIBUTED_SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from support.tiny_models import make_tiny_llama
from reclora_pipeline.llm import load_tokenizer
from reclora_pipeline.retriever import _process_state, encode_texts

state = _process_state()
tokenizer = load_tokenizer(sys.argv[2])
model = make_tiny_llama(seed=1, vocab_size=len(tokenizer))
texts = [f"Here is a movie. Its title is Movie {i}." + " Sequel." * (i % 5) for i in range(23)]
vectors = encode_texts(texts, model, tokenizer, batch_size=4, progress=False)
if state.is_main_process:
    np.save(sys.argv[3], vectors)
    print("processes", state.num_processes)
"""


@pytest.mark.slow
def test_encoding_split_across_processes_matches_one_process(tmp_path, smollm2_dir, tokenizer):
    """Two CPU processes under torchrun (what ``accelerate launch`` does per GPU) split the items and gather them."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "encode.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    tests = Path(__file__).resolve().parent
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests.parent / "examples"), str(tests)])}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
         str(script), str(tests), str(smollm2_dir), str(tmp_path / "two.npy")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "processes 2" in completed.stdout
    model = make_tiny_llama(seed=1, vocab_size=len(tokenizer))
    texts = [f"Here is a movie. Its title is Movie {i}." + " Sequel." * (i % 5) for i in range(23)]
    one = encode_texts(texts, model, tokenizer, batch_size=4, progress=False)
    np.testing.assert_allclose(np.load(tmp_path / "two.npy"), one, atol=1e-5)
