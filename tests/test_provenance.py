"""What a run was built from: results.json records the sha256 of every dataset file the data stage read and the
versions of Python and the packages that change results; the recommender's record and model card carry the same."""

import hashlib
import json
import platform
from importlib import metadata

import pytest
from peft import mapping

import peft_reclora
from reclora_pipeline.config import RunConfig
from reclora_pipeline.provenance import RECORDED_PACKAGES, run_provenance
from reclora_pipeline.serving import RecLoraRecommender
from reclora_pipeline.stages.data import source_folder

from support.recommender_run import MODEL


def _expected_versions() -> dict:
    versions = {"python": platform.python_version(), "peft_reclora": peft_reclora.__version__}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _expected_files(folder) -> list:
    return [{"path": path.relative_to(folder).as_posix(), "bytes": path.stat().st_size,
             "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
            for path in sorted(folder.rglob("*")) if path.is_file()]


def test_a_changed_dataset_file_changes_its_recorded_digest(tmp_path):
    for name, text in (("u.data", "1\t2\t5\t881250949\n"), ("u.item", "2|Toy Story (1995)|\n")):
        (tmp_path / name).write_text(text)
    data = RunConfig().override({"data.source": str(tmp_path)}).data
    before = run_provenance(data)
    assert before["dataset_files"] == _expected_files(tmp_path)
    (tmp_path / "u.data").write_text("1\t2\t4\t881250949\n")  # same size, other content
    after = run_provenance(data)
    assert after["dataset_files"] == _expected_files(tmp_path) != before["dataset_files"]
    assert [item["path"] for item in after["dataset_files"]] == ["u.data", "u.item"]
    assert after["versions"] == _expected_versions()


def test_results_record_dataset_digests_and_versions(tiny_run):
    results = tiny_run.results()
    assert results["dataset_files"] == _expected_files(source_folder(tiny_run.config.data))
    versions = results["versions"]
    assert versions == _expected_versions()
    assert {"python", "torch", "transformers", "peft", "accelerate", "torch-rechub"} <= set(versions)


def test_the_recommender_record_and_card_carry_the_provenance(tiny_run, saved_folder):
    results = tiny_run.results()
    expected = {"versions": results["versions"], "dataset_files": results["dataset_files"]}
    assert RecLoraRecommender.from_run(tiny_run.root, model=MODEL, device="cpu").record.provenance == expected
    assert json.loads((saved_folder / "recommender.json").read_text())["provenance"] == expected
    assert RecLoraRecommender.from_pretrained(saved_folder, device="cpu").record.provenance == expected
    card = (saved_folder / "README.md").read_text()
    assert "## Reproducibility" in card
    assert f"- transformers {results['versions']['transformers']}" in card
    assert all(f"`{item['sha256']}`" in card for item in results["dataset_files"])


def test_the_recommender_names_the_missing_import(tiny_run, saved_folder, monkeypatch):
    for table in ("PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING", "PEFT_TYPE_TO_PREFIX_MAPPING"):
        monkeypatch.delitem(getattr(mapping, table), "RECLORA")
    recommender = RecLoraRecommender.from_pretrained(saved_folder, base_model=tiny_run.base_model, device="cpu")
    with pytest.raises(KeyError, match="`import peft_reclora`"):
        recommender.load_model()
