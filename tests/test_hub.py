"""`import peft_reclora` leaves PEFT's classes alone; the RecLoRA card and Hub push work through this package's own
extension points with every argument of PEFT's save_pretrained / push_to_hub keeping its meaning."""

import inspect
import shutil
import subprocess
import sys
import textwrap

import huggingface_hub
import pytest
import torch
from peft import PeftModel, get_peft_model

import peft_reclora

from support.tiny_models import make_tiny_llama, reclora_config, trained_reclora


def test_import_changes_no_peft_class():
    script = textwrap.dedent(
        """
        import inspect, peft, peft.peft_model, peft.tuners.tuners_utils, peft.config, peft.mixed_model
        from peft.utils import PeftType

        def classes():
            found = {}
            for module in (peft, peft.peft_model, peft.tuners.tuners_utils, peft.config, peft.mixed_model):
                for name, value in vars(module).items():
                    if inspect.isclass(value) and value.__module__.startswith("peft") and value is not PeftType:
                        found[f"{value.__module__}.{value.__qualname__}"] = value
            return found

        before = {name: dict(vars(cls)) for name, cls in classes().items()}
        members = list(PeftType.__members__)
        import peft_reclora
        after = {name: dict(vars(cls)) for name, cls in classes().items()}
        assert before.keys() == after.keys()
        changed = sorted(
            f"{cls}.{attr}" for cls in before for attr in set(before[cls]) | set(after[cls])
            if before[cls].get(attr) is not after[cls].get(attr)
        )
        assert not changed, changed
        assert list(PeftType.__members__) == members + ["RECLORA"], "only the RECLORA member is added"
        print(len(before), "classes unchanged")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "classes unchanged" in result.stdout
    assert int(result.stdout.split()[0]) > 20


def test_save_pretrained_writes_the_reclora_card_section_per_adapter(tmp_path):
    model = trained_reclora()
    model.add_adapter("second", reclora_config(num_meta_loras=3, crm_dim=5))
    model.save_pretrained(tmp_path)
    card = huggingface_hub.ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "peft" and {"reclora", "recommendation"} <= set(card.data.tags)
    assert card.text.count("<!-- reclora-adapter-card -->") == 1
    assert "| default | 4 | 2 | 4 | 6 |" in card.text and "| second | 3 | 2 | 4 | 5 |" in card.text
    assert "import peft_reclora" in card.text and "KeyError: 'RECLORA'" in card.text
    model.save_pretrained(tmp_path)  # saving again refreshes rows, never duplicates them
    text = huggingface_hub.ModelCard.load(tmp_path / "README.md").text
    assert text.count("| default |") == 1 and text.count("| second |") == 1


def test_a_bare_config_save_never_touches_an_unrelated_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# my project\n")
    reclora_config().save_pretrained(tmp_path)
    assert readme.read_text() == "# my project\n"
    assert (tmp_path / "adapter_config.json").exists()


def test_peft_save_pretrained_arguments_keep_their_meaning(tmp_path):
    model = trained_reclora()
    model.add_adapter("second", reclora_config(num_meta_loras=3))
    model.save_pretrained(tmp_path / "bin", safe_serialization=False, selected_adapters=["second"])
    assert (tmp_path / "bin" / "second" / "adapter_model.bin").exists()
    assert not (tmp_path / "bin" / "adapter_model.safetensors").exists()
    assert "| second |" in (tmp_path / "bin" / "README.md").read_text()
    assert "| default |" not in (tmp_path / "bin" / "README.md").read_text()
    model.save_pretrained(tmp_path / "worker", is_main_process=False)
    assert not [p for p in (tmp_path / "worker").rglob("*") if p.is_file()], "only the main process writes files"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The Hub API intercepted at huggingface_hub's boundary; what would be uploaded is copied to a folder."""
    calls = {"uploaded": tmp_path / "uploaded"}

    def create_repo(self, repo_id, *, private=None, token=None, exist_ok=False, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, "private": private, "token": token}
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id, *, branch, **kwargs):
        calls["create_branch"] = branch

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, calls["uploaded"])
        calls["upload_folder"] = {"repo_id": repo_id, **kwargs}
        return "https://huggingface.co/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_uploads_a_loadable_adapter_with_its_reclora_card(hub, batch):
    model = trained_reclora()
    expected = model(**batch).logits
    peft_reclora.push_to_hub(
        model, "someone/reclora-tiny", private=True, revision="v1", tags=["movies"], commit_message="first",
        commit_description="details", create_pr=True, token="secret",
    )
    assert hub["create_repo"] == {"repo_id": "someone/reclora-tiny", "private": True, "token": "secret"}
    upload = hub["upload_folder"]
    assert hub["create_branch"] == "v1" and upload["revision"] == "v1" and upload["create_pr"] is True
    assert upload["commit_message"] == "first" and upload["commit_description"] == "details"
    assert upload["token"] == "secret"
    card = huggingface_hub.ModelCard.load(hub["uploaded"] / "README.md")
    assert card.data.library_name == "peft"
    assert {"reclora", "recommendation", "movies"} <= set(card.data.tags)
    assert "import peft_reclora" in card.text and 'from_pretrained("someone/reclora-tiny")' in card.text
    assert "| default | 4 | 2 | 4 | 6 |" in card.text
    loaded = PeftModel.from_pretrained(make_tiny_llama(), hub["uploaded"])
    torch.testing.assert_close(loaded(**batch).logits, expected, rtol=0, atol=0)


def test_push_to_hub_passes_save_pretrained_arguments_through(hub):
    model = trained_reclora()
    model.add_adapter("second", reclora_config(num_meta_loras=3))
    peft_reclora.push_to_hub(model, "someone/second-only", safe_serialization=False, selected_adapters=["second"])
    files = sorted(str(p.relative_to(hub["uploaded"])) for p in hub["uploaded"].rglob("*") if p.is_file())
    assert files == ["README.md", "second/adapter_config.json", "second/adapter_model.bin"]


def test_push_to_hub_takes_every_argument_of_peft_push_and_save():
    ours = inspect.signature(peft_reclora.push_to_hub).parameters
    for method in (PeftModel.push_to_hub, PeftModel.save_pretrained):
        for name, parameter in inspect.signature(method).parameters.items():
            if name in ("self", "save_directory") or parameter.kind is parameter.VAR_KEYWORD:
                continue
            assert name in ours or any(p.kind is p.VAR_KEYWORD for p in ours.values()), name
            if name in ours:
                assert ours[name].default == parameter.default, name
    assert list(ours)[:2] == ["model", "repo_id"]
    push = inspect.signature(PeftModel.push_to_hub).parameters
    assert all(name in ours for name in push if name != "self")


def test_push_to_hub_refuses_models_without_reclora():
    from peft import LoraConfig

    lora = get_peft_model(make_tiny_llama(), LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="RecLoRA"):
        peft_reclora.push_to_hub(lora, "someone/lora")
