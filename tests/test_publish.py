"""Publishing: the upload is intercepted at the huggingface_hub boundary, what would have been uploaded is loaded back
and scores like the run; dry runs list the files and call nothing; the model card carries metrics, split and usage."""

import argparse
import json
import re
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from huggingface_hub import ModelCard

from reclora_pipeline.cli import add_push_command, run_push
from reclora_pipeline.cli import main as cli_main
from reclora_pipeline.serving import RecLoraRecommender

from support.recommender_run import ATOL, HUB_BASE_MODEL, MODEL


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


def _publishable(tiny_run):  # noqa: F811
    """The run's RecLoRA model, recording the Hub id of its base model (the run loaded a local copy)."""
    return RecLoraRecommender.from_run(tiny_run.root, model=MODEL, base_model=HUB_BASE_MODEL, device="cpu")


def test_pushed_folder_loads_back_and_scores_like_the_run(tiny_run, hub):  # noqa: F811
    result = _publishable(tiny_run).push_to_hub("me/reclora-tiny", private=True, revision="v1", token="secret")
    assert hub.names() == ["create_repo", "create_branch", "upload_folder"]
    assert hub.calls[0][1:] == ("me/reclora-tiny", {"private": True, "exist_ok": True})
    assert hub.calls[1][2] == {"branch": "v1", "exist_ok": True}
    assert hub.calls[2][2] == {"revision": "v1", "commit_message": "Upload RecLoRA recommender"}
    assert result.repo_id == "me/reclora-tiny" and result.private and not result.dry_run
    uploaded = sorted(p.relative_to(hub.uploads[0]).as_posix() for p in hub.uploads[0].rglob("*") if p.is_file())
    assert [path for path, _ in result.files] == uploaded and "recommender.json" in uploaded
    assert "uploaded 10 files" in result.describe() and "(revision v1)" in result.describe()

    restored = RecLoraRecommender.from_pretrained("me/reclora-tiny", revision="v1", base_model=tiny_run.base_model,
                                                  device="cpu")
    assert hub.calls[-1] == ("snapshot_download", "me/reclora-tiny", {"revision": "v1"})
    assert restored.record.lineage == _publishable(tiny_run).record.lineage
    scores = restored.score(tiny_run.requests[:4])
    np.testing.assert_allclose(scores, tiny_run.scores[:4], rtol=0, atol=ATOL)


def test_dry_run_lists_the_files_and_calls_nothing(recommender, hub, capsys):  # noqa: F811
    result = recommender.push_to_hub("me/reclora-tiny", dry_run=True)
    assert hub.calls == []
    names = [path for path, _ in result.files]
    assert {"adapter_config.json", "adapter_model.safetensors", "crm/crm_model.safetensors", "vocabulary.json",
            "catalog/items.csv", "item_vectors.safetensors", "recommender.json", "README.md"} <= set(names)
    assert all(size > 0 for _, size in result.files)
    assert "dry run: would upload" in result.describe()
    assert result.commit_url is None and result.repo_id == "me/reclora-tiny" and not result.private


def test_push_leaves_the_llm_unloaded(tiny_run, hub):  # noqa: F811
    """Saving and pushing never load the base LLM: the folder is assembled from files."""
    publishable = _publishable(tiny_run)
    publishable.push_to_hub("me/reclora-tiny", dry_run=True)
    assert publishable.model is None and publishable.tokenizer is None


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
                                 "--private", "--revision", "dev", "--base-model", HUB_BASE_MODEL,
                                 "--commit-message", "first"])
    assert args.handler(args) == 0
    assert hub.names() == ["create_repo", "create_branch", "upload_folder"]
    assert hub.calls[0][2]["private"] is True and hub.calls[2][2] == {"revision": "dev", "commit_message": "first"}
    assert (hub.uploads[0] / "adapter_model.safetensors").is_file()
    adapter = json.loads((hub.uploads[0] / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == HUB_BASE_MODEL
    assert "uploaded" in capsys.readouterr().out


def test_reclora_pipeline_push_command(tiny_run, hub, capsys):  # noqa: F811
    """The installed ``reclora-pipeline push``: a dry run prints the files; a model that cannot be published is a
    one-line error, not a traceback."""
    assert cli_main(["push", "--run", str(tiny_run.root), "--repo-id", "me/tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: would upload 10 files" in out and "recommender.json" in out and hub.calls == []
    assert cli_main(["push", "--run", str(tiny_run.root), "--repo-id", "me/tiny", "--model", "SIM"]) != 0
    assert "only RecLoRA models" in capsys.readouterr().err and hub.calls == []


def test_model_card(saved_folder, hub, tiny_run, recommender):  # noqa: F811
    _publishable(tiny_run).push_to_hub("me/card-check")
    card = ModelCard.load(hub.uploads[0] / "README.md")
    assert card.data.library_name == "peft"
    assert card.data.base_model == HUB_BASE_MODEL
    assert {"reclora", "recommendation", "peft"} <= set(card.data.tags)
    text = card.text
    assert "| **RecLoRA** | llm |" in text and "| SIM | crm |" in text  # the metrics table, every model of the run
    assert "| RecLoRA w/o both retrievers | llm |" in text and "| LoRA (r=2) | llm |" in text
    assert "ml-100k" in text and "split: by global time, 0.8:0.1:0.1" in text
    assert "N_m 4 meta-LoRAs of rank 2" in text and "semantic, K 3" in text and "semantic, K 8" in text
    assert tiny_run.base_model not in text  # the Hub id stands for the local copy the run loaded, encoder included
    assert 'RecLoraRecommender.from_pretrained("me/card-check")' in text and "recommender.score([" in text
    assert "A user outside the catalog needs a `profile`" in text and "An item outside the catalog" in text
    local = (saved_folder / "README.md").read_text()
    assert "path/to/this/folder" in local
    # The usage snippet's request is a real catalog request: it scores.
    example = json.loads(re.search(r"recommender\.score\(\[(.*)\]\)", text).group(1))
    scores = recommender.score([example])
    assert scores.shape == (1,) and 0 < scores[0] < 1
