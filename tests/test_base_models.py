"""``llm.base_model`` accepts a local .gguf file (converted once, cached by content) and the named Gemma 3 270M."""

import hashlib
import importlib
import shutil
import sys
import textwrap

import pytest
import torch

from reclora_pipeline import llm
from reclora_pipeline.architecture import architecture_of
from reclora_pipeline.model_identity import UnknownBaseModel, base_model_identity


PROMPTS = [
    "The user watched Toy Story (1995) and GoldenEye (1995). Will they like Heat (1995)? Answer:",
    "The user rated Fargo (1996) with 5 stars. Will they like Scream (1996)? Answer:",
    "Will the user enjoy Casablanca (1942)? Answer:",
]


@pytest.fixture(scope="module")
def gguf_copy(tmp_path_factory):
    """The embedded SmolLM2 GGUF under another path and name."""
    copy = tmp_path_factory.mktemp("models") / "my-model.Q4_1.gguf"
    shutil.copyfile(llm.embedded_gguf_path(), copy)
    return copy


def logits_of(name_or_path):
    tokenizer = llm.load_tokenizer(name_or_path)
    model = llm.load_base_model(name_or_path, dtype=torch.float32).eval()
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**encoded).logits[:, -1]


def test_a_gguf_file_is_known_by_its_content(gguf_copy, smollm2_dir):
    assert base_model_identity(str(gguf_copy)) == base_model_identity("embedded")
    assert llm.resolve_model_path(str(gguf_copy)) == llm.resolve_model_path("embedded") == str(smollm2_dir)
    embedded = architecture_of("embedded")
    from_path = architecture_of(str(gguf_copy))
    assert from_path == embedded and "q_proj" in from_path.linear_suffixes


def test_a_missing_or_non_gguf_file_is_refused_naming_the_setting(tmp_path):
    missing = tmp_path / "absent.gguf"
    with pytest.raises(UnknownBaseModel, match="llm.base_model: .*absent.gguf is not a file"):
        base_model_identity(str(missing))
    with pytest.raises(ValueError, match="llm.base_model: cannot read the model config of .*absent.gguf"):
        architecture_of(str(missing))
    other = tmp_path / "weights.npz"
    other.write_bytes(b"\0")
    with pytest.raises(UnknownBaseModel, match="neither a model folder nor a .gguf file"):
        base_model_identity(str(other))


@pytest.mark.slow
def test_a_gguf_path_converts_once_to_the_embedded_model(gguf_copy, smollm2_dir, tmp_path, monkeypatch):
    """Converted from the path into an empty cache, the file gives the predictions of ``embedded``."""
    expected = logits_of("embedded")
    monkeypatch.setenv("PEFT_RECLORA_CACHE", str(tmp_path / "cache"))
    folder = llm.resolve_model_path(str(gguf_copy))
    assert folder.startswith(str(tmp_path / "cache")) and folder != str(smollm2_dir)
    assert torch.equal(logits_of(str(gguf_copy)), expected)
    # converted once, into a folder named by the file's content, with no staging leftovers beside it
    converted = tmp_path / "cache" / (llm.CONVERTED_PREFIX
                                      + base_model_identity("embedded").removeprefix("sha256:")[:24])
    assert folder == str(converted)
    assert not [path for path in converted.parent.iterdir() if path.name.startswith(".staging")]
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    assert llm.resolve_model_path(str(gguf_copy)) == folder
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp


def test_gemma3_without_its_extra_names_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == llm.GEMMA3_MODULE else real_find_spec(name, *args))
    with pytest.raises(FileNotFoundError, match=r"pip install 'peft-reclora\[gemma\]'.*Gemma Terms of Use"):
        llm.resolve_model_path("gemma3-270m")
    with pytest.raises(UnknownBaseModel, match=r"peft-reclora\[gemma\]"):
        base_model_identity("gemma-3-270m")


def test_gemma3_resolves_to_the_file_its_package_assembles(tmp_path, monkeypatch):
    """The name maps to the package's assembled GGUF, written once into the cache root (a stand-in package whose
    'assembled' file is a few bytes, so the test needs neither the extra nor its 250 MB)."""
    content = b"GGUF stand-in"
    package = tmp_path / "site" / llm.GEMMA3_MODULE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
        EXPECTED_SHA256 = "{hashlib.sha256(content).hexdigest()}"
        calls = []
        def assemble(output_path=None, overwrite=False):
            calls.append(output_path)
            Path(output_path).write_bytes({content!r})
            return Path(output_path)
    """))
    spec = importlib.util.spec_from_file_location(llm.GEMMA3_MODULE, package / "__init__.py")
    stand_in = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stand_in)
    monkeypatch.setitem(sys.modules, llm.GEMMA3_MODULE, stand_in)  # restored (or removed) after the test
    monkeypatch.setenv("PEFT_RECLORA_CACHE", str(tmp_path / "cache"))
    path = llm.gguf_file("gemma3-270m")
    assert path == tmp_path / "cache" / "gemma-3-270m-q4_k_m.gguf" and path.read_bytes() == content
    assert llm.gguf_file("gemma-3-270m") == path
    assert len(stand_in.calls) == 1  # assembled once
    assert base_model_identity("gemma3-270m") == "sha256:" + hashlib.sha256(content).hexdigest()
    path.write_bytes(b"damaged")  # a damaged copy is assembled again
    assert llm.gguf_file("gemma3-270m").read_bytes() == content


def test_published_cards_name_the_hub_id_of_a_named_model_and_no_local_file():
    from reclora_pipeline.serving.publish import public_model_id

    assert public_model_id("gemma3-270m") == "google/gemma-3-270m"
    assert public_model_id("embedded") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert public_model_id("model.Q4_K_M.gguf") is None


@pytest.mark.skipif(importlib.util.find_spec(llm.GEMMA3_MODULE) is None, reason="the optional 'gemma' extra")
def test_gemma3_270m_is_a_gemma3_text_model_with_query_value_projections():
    architecture = architecture_of("gemma3-270m")
    assert architecture.num_layers == 18 and {"q_proj", "v_proj"} <= set(architecture.linear_suffixes)
