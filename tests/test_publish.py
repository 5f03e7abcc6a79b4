"""Publishing: the upload is intercepted at the huggingface_hub boundary, what would have been uploaded is loaded back
and scores like the run; dry runs list the files and call nothing; the model card carries metrics, split and usage."""

import argparse
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from huggingface_hub import ModelCard

from reclora_pipeline.publish import add_push_command, run_push
from reclora_pipeline.recommender import RecLoraRecommender

from test_recommender import MODEL, recommender, saved_folder, tiny_run  # noqa: F401  (shared session fixtures)


class FakeHub:
    """Stands in for the Hub API: records every call and keeps a copy of each uploaded folder."""

    def __init__(self, monkeypatch, store: Path):
        self.calls = []
        self.uploads = []
        self.store = store
        hub = self

        def create_repo(api, repo_id, *, private=None, exist_ok=False, **kwargs):
            hub.calls.append(("create_repo", repo_id, {"private": private, "exist_ok": exist_ok}))
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}", endpoint="https://huggingface.co")

        def create_branch(api, repo_id, *, branch, exist_ok=False, **kwargs):
            hub.calls.append(("create_branch", repo_id, {"branch": branch, "exist_ok": exist_ok}))

        def upload_folder(api, *, repo_id, folder_path, revision=None, commit_message=None, **kwargs):
            copy = hub.store / f"upload{len(hub.uploads)}"
            shutil.copytree(folder_path, copy)
            hub.uploads.append(copy)
            hub.calls.append(("upload_folder", repo_id, {"revision": revision, "commit_message": commit_message}))
            return None

        def snapshot_download(repo_id, *, revision=None, token=None, **kwargs):
            hub.calls.append(("snapshot_download", repo_id, {"revision": revision}))
            return str(hub.uploads[-1])

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)

    def names(self) -> list:
        return [call[0] for call in self.calls]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    return FakeHub(monkeypatch, tmp_path)


def test_pushed_folder_loads_back_and_scores_like_the_run(tiny_run, hub):  # noqa: F811
    result = RecLoraRecommender.from_run(tiny_run.root, model=MODEL, device="cpu").push_to_hub(
        "me/reclora-tiny", private=True, revision="v1", token="secret")
    assert hub.names() == ["create_repo", "create_branch", "upload_folder"]
    assert hub.calls[0][1:] == ("me/reclora-tiny", {"private": True, "exist_ok": True})
    assert hub.calls[1][2] == {"branch": "v1", "exist_ok": True}
    assert hub.calls[2][2]["revision"] == "v1"
    assert result.repo_id == "me/reclora-tiny" and result.private and not result.dry_run
    uploaded = sorted(p.relative_to(hub.uploads[0]).as_posix() for p in hub.uploads[0].rglob("*") if p.is_file())
    assert [path for path, _ in result.files] == uploaded and "recommender.json" in uploaded

    restored = RecLoraRecommender.from_pretrained("me/reclora-tiny", revision="v1", device="cpu")
    assert hub.calls[-1] == ("snapshot_download", "me/reclora-tiny", {"revision": "v1"})
    scores = restored.score(tiny_run.requests[:4])
    np.testing.assert_allclose(scores, tiny_run.scores[:4], rtol=0, atol=1e-5)


def test_dry_run_lists_the_files_and_calls_nothing(recommender, hub, capsys):  # noqa: F811
    result = recommender.push_to_hub("me/reclora-tiny", dry_run=True)
    assert hub.calls == []
    names = [path for path, _ in result.files]
    assert {"adapter_config.json", "adapter_model.safetensors", "crm/crm_model.safetensors", "vocabulary.json",
            "catalog/items.csv", "item_vectors.safetensors", "README.md"} <= set(names)
    assert all(size > 0 for _, size in result.files)
    assert "dry run: would upload" in result.describe()


def _parser():
    parser = argparse.ArgumentParser()
    add_push_command(parser.add_subparsers(dest="command"))
    return parser


def test_push_command(tiny_run, hub, capsys):  # noqa: F811
    args = _parser().parse_args(["push", "--run", str(tiny_run.root), "--repo-id", "me/tiny", "--dry-run"])
    assert args.handler is run_push
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert hub.calls == [] and "dry run" in out and "crm/crm_model.safetensors" in out

    args = _parser().parse_args(["push", "--run", str(tiny_run.root), "--repo-id", "me/tiny", "--model", MODEL,
                                 "--private", "--revision", "dev", "--base-model", "embedded"])
    assert args.handler(args) == 0
    assert hub.names() == ["create_repo", "create_branch", "upload_folder"]
    assert hub.calls[0][2]["private"] is True and hub.calls[2][2]["revision"] == "dev"
    assert (hub.uploads[0] / "adapter_model.safetensors").is_file()
    assert "uploaded" in capsys.readouterr().out


def test_model_card(saved_folder, hub, tiny_run):  # noqa: F811
    RecLoraRecommender.from_run(tiny_run.root, model=MODEL, device="cpu").push_to_hub("me/card-check")
    card = ModelCard.load(hub.uploads[0] / "README.md")
    assert card.data.library_name == "peft"
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {"reclora", "recommendation", "peft"} <= set(card.data.tags)
    text = card.text
    assert "| **RecLoRA** | reclora |" in text and "| SIM | crm |" in text  # the metrics table, both models
    assert "ml-100k" in text and "split: by global time, 0.8:0.1:0.1" in text
    assert 'RecLoraRecommender.from_pretrained("me/card-check")' in text and "recommender.score([" in text
    local = (saved_folder / "README.md").read_text()
    assert "path/to/this/folder" in local
